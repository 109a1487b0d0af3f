//! Cache identifiers: `imc-` followed by 20 lowercase alphanumerics.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identifier of one cache disk (`status.imageCacheId`). Unique and never reused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheId(String);

/// The suffix length after `imc-`.
pub const CACHE_ID_SUFFIX_LEN: usize = 20;

/// Why a string is not a cache id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not an image cache id (expected imc- followed by 20 lowercase letters or digits)"
)]
pub struct CacheIdError(pub String);

impl CacheId {
    /// A cache id built from 20 suffix characters taken from `entropy` (any bytes; each is mapped
    /// onto `[a-z0-9]`). The caller supplies randomness so this stays pure.
    pub fn from_entropy(entropy: &[u8; CACHE_ID_SUFFIX_LEN]) -> Self {
        const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let suffix: String = entropy
            .iter()
            .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
            .collect();
        Self(format!("imc-{suffix}"))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CacheId {
    type Err = CacheIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("imc-") {
            Some(rest)
                if rest.len() == CACHE_ID_SUFFIX_LEN
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(CacheIdError(s.to_owned())),
        }
    }
}

impl fmt::Display for CacheId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CacheId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheId({})", self.0)
    }
}

impl Serialize for CacheId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CacheId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let id = CacheId::from_entropy(&[7u8; 20]);
        assert_eq!(id.as_str().len(), 24);
        assert_eq!(id.as_str().parse::<CacheId>().unwrap(), id);
        for bad in [
            "imc-",
            "imc-ABCDEFGHIJKLMNOPQRST",
            "abc-abcdefghijklmnopqrst",
            "imc-abc",
        ] {
            assert!(bad.parse::<CacheId>().is_err(), "{bad}");
        }
    }
}
