//! Content digests (`sha256:<64 hex>`), parsed once at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A verified-form content digest. Only `sha256` is accepted: it is what every registry and
/// runtime imc talks to uses, and accepting others would let a manifest pick a weaker hash.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<64 hex digits>)")]
    NoAlgorithm(String),
    /// An algorithm other than `sha256`.
    #[error("digest {0:?} uses an unsupported algorithm (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
    /// The hex part is not 64 lowercase hex digits.
    #[error("digest {0:?} is not 64 lowercase hex digits")]
    BadHex(String),
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(data).into())
    }

    /// A digest from a finished sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Self {
            hex: hex::encode(hash),
        }
    }

    /// A digest from its 64 hex digits, without the `sha256:` prefix.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self {
                hex: hex.to_owned(),
            })
        } else {
            Err(DigestError::BadHex(hex.to_owned()))
        }
    }

    /// The algorithm name (always `sha256`).
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 lowercase hex digits. Safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A short form for humans (`sha256:` + first 12 hex digits).
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex[..12])
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError::NoAlgorithm(s.to_owned()));
        };
        if algo != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(s.to_owned()));
        }
        Self::from_hex(hex).map_err(|_| DigestError::BadHex(s.to_owned()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental sha256 hasher that yields a [`Digest`].
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self(Sha256::new())
    }
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        let mut h = Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), d);
    }

    #[test]
    fn rejects_bad_input() {
        for (input, want) in [
            ("abc", DigestError::NoAlgorithm("abc".into())),
            (
                "md5:abc",
                DigestError::UnsupportedAlgorithm("md5:abc".into()),
            ),
            ("sha256:XYZ", DigestError::BadHex("sha256:XYZ".into())),
            (
                "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
                DigestError::BadHex(
                    "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"
                        .into(),
                ),
            ),
        ] {
            assert_eq!(input.parse::<Digest>().unwrap_err(), want, "{input}");
        }
    }
}
