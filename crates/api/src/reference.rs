//! Image references (`[registry/]repository[:tag][@digest]`), normalised the way Docker and
//! containerd normalise them: no registry means `docker.io`, a one-part Docker Hub name gains
//! `library/`, and no tag and no digest means `:latest`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestError};

/// The registry host used when a reference names none.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's API actually answers on.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not an image reference. The parts are checked in reading order (registry
/// host, repository name, tag, digest), so the first malformed part is the one named.
#[derive(Debug, PartialEq, Eq)]
pub enum ReferenceError {
    /// The reference is empty.
    Empty,
    /// The reference is longer than 255 characters.
    TooLong(String),
    /// The repository path is malformed.
    BadName {
        /// The whole reference.
        reference: String,
        /// The repository path found in it.
        name: String,
    },
    /// The registry host is malformed.
    BadHost {
        /// The whole reference.
        reference: String,
        /// The host (and port) found in it.
        host: String,
    },
    /// The tag is malformed.
    BadTag {
        /// The whole reference.
        reference: String,
        /// The text after the name's `:`.
        tag: String,
    },
    /// The digest is malformed.
    BadDigest {
        /// The whole reference.
        reference: String,
        /// Why the text after `@` is not a digest (it names that text).
        cause: DigestError,
    },
}

impl ReferenceError {
    /// What is wrong, without repeating the reference (for messages that show it already,
    /// such as a validation error on `spec.images[i]`).
    pub fn problem(&self) -> String {
        match self {
            ReferenceError::Empty => "image reference is empty".to_owned(),
            ReferenceError::TooLong(_) => {
                "image reference is longer than 255 characters".to_owned()
            }
            ReferenceError::BadName { name, .. } if is_repository(&name.to_ascii_lowercase()) => {
                format!("repository name {name:?} must be lowercase")
            }
            ReferenceError::BadName { name, .. } => format!(
                "invalid repository name {name:?}: path components of lowercase letters and digits, separated by '.', '_', '__' or dashes, joined by '/'"
            ),
            ReferenceError::BadHost { host, .. } => format!(
                "invalid registry host {host:?}: a DNS name or IP address with an optional :port"
            ),
            ReferenceError::BadTag { tag, .. } => format!(
                "invalid tag {tag:?}: up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
            ),
            ReferenceError::BadDigest { cause, .. } => format!("invalid digest: {cause}"),
        }
    }
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReferenceError::Empty => f.write_str("image reference is empty"),
            ReferenceError::TooLong(reference)
            | ReferenceError::BadName { reference, .. }
            | ReferenceError::BadHost { reference, .. }
            | ReferenceError::BadTag { reference, .. }
            | ReferenceError::BadDigest { reference, .. } => {
                let problem = self.problem();
                let problem = problem.strip_prefix("image reference ").unwrap_or(&problem);
                write!(f, "image reference {reference:?}: {problem}")
            }
        }
    }
}

impl std::error::Error for ReferenceError {}

impl Reference {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }
    /// The tag, if any. A reference with neither tag nor digest gets `latest` at parse time.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
    /// What to ask the registry's manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
    /// The host to contact: Docker Hub's API host for `docker.io`, else the registry itself.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
    /// `registry/repository`, the part two tags of one image share.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
    /// The same image pinned to `digest` (keeping the tag for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

fn is_name_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_repository(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(is_name_component)
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > 255 {
            return Err(ReferenceError::TooLong(s.to_owned()));
        }
        let (named, digest) = match s.split_once('@') {
            Some((named, d)) => (named, Some(d)),
            None => (s, None),
        };
        // The tag starts at the first ':' after the last '/': a repository name holds no ':'.
        let last_slash = named.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match named[last_slash..].find(':') {
            Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
            None => (named, None),
        };
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                if !is_host(first) {
                    return Err(ReferenceError::BadHost {
                        reference: s.to_owned(),
                        host: first.to_owned(),
                    });
                }
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), path.to_owned()),
        };
        if !is_repository(&repository) {
            return Err(ReferenceError::BadName {
                reference: s.to_owned(),
                name: repository,
            });
        }
        if let Some(t) = tag
            && !is_tag(t)
        {
            return Err(ReferenceError::BadTag {
                reference: s.to_owned(),
                tag: t.to_owned(),
            });
        }
        let digest = match digest {
            Some(d) => Some(d.parse().map_err(|cause| ReferenceError::BadDigest {
                reference: s.to_owned(),
                cause,
            })?),
            None => None,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let d = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        for (input, registry, repo, tag, digest) in [
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "busybox:1.30",
                "docker.io",
                "library/busybox",
                Some("1.30"),
                false,
            ),
            ("user/app", "docker.io", "user/app", Some("latest"), false),
            ("localhost/app:v1", "localhost", "app", Some("v1"), false),
            (
                "127.0.0.1:5000/a/b/c:t",
                "127.0.0.1:5000",
                "a/b/c",
                Some("t"),
                false,
            ),
            (
                "registry.cn-shanghai.aliyuncs.com/eci_open/nginx:1.14.2",
                "registry.cn-shanghai.aliyuncs.com",
                "eci_open/nginx",
                Some("1.14.2"),
                false,
            ),
            (&format!("quay.io/x/y@{d}"), "quay.io", "x/y", None, true),
            (
                &format!("quay.io/x/y:t@{d}"),
                "quay.io",
                "x/y",
                Some("t"),
                true,
            ),
        ] {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repo, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest().is_some(), digest, "{input}");
            assert_eq!(
                r.to_string().parse::<Reference>().unwrap(),
                r,
                "{input} round trip"
            );
        }
        assert_eq!(
            "busybox".parse::<Reference>().unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn rejects_malformed() {
        for input in [
            "",
            "UPPER/case",
            "a//b",
            "a/b:",
            "a/b:-bad",
            "a/b@sha256:short",
            "a b",
            "host:notaport/x",
            "-x",
            "x-",
        ] {
            assert!(input.parse::<Reference>().is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_part_that_is_wrong() {
        let hex = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        for (input, want) in [
            ("", "image reference is empty"),
            (
                "Busy Box::@@",
                "invalid repository name \"Busy Box\": path components of lowercase letters and digits, separated by '.', '_', '__' or dashes, joined by '/'",
            ),
            (
                "Busybox:1.30",
                "repository name \"Busybox\" must be lowercase",
            ),
            (
                "r.io/Team/app:1",
                "repository name \"Team/app\" must be lowercase",
            ),
            (
                "busybox:1.30:x",
                "invalid tag \"1.30:x\": up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ),
            (
                "busybox:-1",
                "invalid tag \"-1\": up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ),
            (
                "busybox@@",
                "invalid digest: digest \"@\" has no algorithm prefix (expected sha256:<64 hex digits>)",
            ),
            (
                &format!("busybox@md5:{hex}"),
                &format!(
                    "invalid digest: digest \"md5:{hex}\" uses an unsupported algorithm (only sha256 is supported)"
                ),
            ),
            (
                "busybox@sha256:abc",
                "invalid digest: digest \"sha256:abc\" is not 64 lowercase hex digits",
            ),
            (
                "my_host.io:x/app:1",
                "invalid registry host \"my_host.io:x\": a DNS name or IP address with an optional :port",
            ),
        ] {
            let err = input.parse::<Reference>().expect_err(input);
            assert_eq!(err.problem(), want, "{input:?}");
            if !input.is_empty() {
                assert!(
                    err.to_string()
                        .starts_with(&format!("image reference {input:?}: ")),
                    "{err}"
                );
            }
        }
    }
}
