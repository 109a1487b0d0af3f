//! Names that become paths or runc ids (pod uids, container names). The API validates them
//! where they enter; the runtime checks again where it uses them (defence in depth), so a name
//! that slipped through can never reach outside `DIR/pods`.

use crate::RuntimeError;

/// The longest name accepted as one path component (a Kubernetes uid is 36 characters and a
/// DNS-1123 label 63; the margin leaves room for other API servers' uids).
const MAX_LEN: usize = 253;

/// Checks that `name` (a `what`: "pod uid", "container name", ...) is one plain path component
/// that is also a valid runc id part: ASCII letters, digits, `-`, `_` and `.`, not starting
/// with `.` (so never `.` or `..`, nor one of the runtime's own hidden names), at most 253
/// bytes.
pub fn check_component(what: &'static str, name: &str) -> Result<(), RuntimeError> {
    let invalid = |reason: &str| RuntimeError::InvalidName {
        what,
        name: name.escape_debug().to_string(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_LEN {
        return Err(invalid("it is longer than 253 bytes"));
    }
    if name.starts_with('.') {
        return Err(invalid("it starts with '.'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(&format!(
            "{:?} is not allowed (only letters, digits, '-', '_' and '.')",
            c
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_components_pass() {
        let ok = ["app", "a-b_c.d", "0f3c9a2e-1b2c-4d5e-8f90-123456789abc"];
        for n in ok {
            assert!(check_component("container name", n).is_ok(), "{n}");
        }
        let bad = [
            "",
            ".",
            "..",
            "../../../../tmp/x",
            "/some/dir",
            "a/b",
            ".new-x",
            "a\0b",
            "a b",
            "ä",
        ];
        for n in bad {
            let e = check_component("container name", n)
                .unwrap_err()
                .to_string();
            assert!(e.contains("container name"), "{n}: {e}");
        }
        assert!(check_component("pod uid", &"a".repeat(254)).is_err());
    }
}
