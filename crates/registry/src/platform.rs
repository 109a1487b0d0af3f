//! Platforms (`os/architecture[/variant]`) and how an index entry is matched against the one wanted.

use std::fmt;
use std::str::FromStr;

/// The platform an image is for, as in an OCI index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// Go architecture name: `amd64`, `arm64`, `arm`, `386`, ...
    pub architecture: String,
    /// CPU variant: `v7`, `v8`, ...
    pub variant: Option<String>,
}

/// Why a string is not a platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?} (expected os/arch[/variant], e.g. linux/amd64)")]
pub struct PlatformError(pub String);

impl Platform {
    /// A platform from its parts, normalised (`x86_64` → `amd64`, `aarch64` → `arm64`).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, implied_variant) = normalize_arch(architecture);
        Platform {
            os: os.to_ascii_lowercase(),
            architecture,
            variant: variant.map(str::to_owned).or(implied_variant),
        }
    }

    /// The platform of this machine (always linux; the architecture imc was built for).
    pub fn host() -> Self {
        Platform::new("linux", std::env::consts::ARCH, None)
    }

    /// Whether an index entry for `candidate` serves this (wanted) platform: same os and
    /// architecture after normalisation, and the same variant when this platform names one.
    /// `arm64` without a variant is the same as `arm64/v8`.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let wanted = Platform::new(&self.os, &self.architecture, self.variant.as_deref());
        let cand = Platform::new(
            &candidate.os,
            &candidate.architecture,
            candidate.variant.as_deref(),
        );
        if wanted.os != cand.os || wanted.architecture != cand.architecture {
            return false;
        }
        match &wanted.variant {
            None => true,
            Some(v) => {
                let default_variant = (wanted.architecture == "arm64").then_some("v8");
                let cand_variant = cand.variant.as_deref().or(default_variant);
                cand_variant == Some(v.as_str())
            }
        }
    }
}

/// Maps the names kernels and distributions use to Go/OCI names, with any variant they imply.
fn normalize_arch(arch: &str) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".to_owned(), None),
        "aarch64" | "arm64" => ("arm64".to_owned(), None),
        "armhf" | "armv7l" | "armv7" => ("arm".to_owned(), Some("v7".to_owned())),
        "armel" | "armv6l" | "armv6" => ("arm".to_owned(), Some("v6".to_owned())),
        "i386" | "i686" | "x86" => ("386".to_owned(), None),
        _ => (arch, None),
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    /// `linux/amd64`, `linux/arm64/v8`, or just `arm64` (os defaults to linux).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformError(s.to_owned()));
        }
        match parts.as_slice() {
            [arch] => Ok(Platform::new("linux", arch, None)),
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(PlatformError(s.to_owned())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let rows = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/armhf", "linux/arm/v7"),
            ("windows/amd64", "windows/amd64"),
        ];
        for (input, shown) in rows {
            let p: Platform = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.to_string(), shown, "{input}");
        }
        for bad in ["", "/", "linux/", "a/b/c/d"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn matching_rules() {
        let p = |s: &str| s.parse::<Platform>().expect("platform");
        // (wanted, candidate, matches)
        let rows = [
            ("linux/amd64", "linux/amd64", true),
            ("linux/x86_64", "linux/amd64", true),
            ("linux/amd64", "linux/arm64", false),
            ("linux/amd64", "windows/amd64", false),
            ("linux/arm64", "linux/arm64/v8", true),
            ("linux/arm64/v8", "linux/arm64", true),
            ("linux/arm/v7", "linux/arm/v6", false),
            ("linux/arm", "linux/arm/v6", true),
            ("linux/arm/v7", "linux/arm/v7", true),
        ];
        for (wanted, cand, expect) in rows {
            assert_eq!(p(wanted).matches(&p(cand)), expect, "{wanted} vs {cand}");
        }
    }

    #[test]
    fn host_is_linux() {
        assert_eq!(Platform::host().os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(Platform::host().to_string(), "linux/amd64");
    }
}
