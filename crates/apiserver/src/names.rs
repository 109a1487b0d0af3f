//! The name formats of Kubernetes (`k8s.io/apimachinery/pkg/util/validation`): DNS-1123 labels
//! and subdomains, qualified names, label values, IANA service names (port names), environment
//! variable names, and the Linux capability names a container may add or drop. Each check
//! returns upstream's messages, one per broken rule; empty means valid.

/// The DNS-1123 label rule's message.
pub const DNS_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// The DNS-1123 subdomain rule's message.
pub const DNS_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// A DNS-1123 label: at most 63 of `[a-z0-9-]`, alphanumeric at both ends. Never contains `/`
/// or `.`, so it is safe as a single path component.
pub fn dns_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(too_long(63));
    }
    if !label_pattern(s) {
        out.push(DNS_LABEL_MSG.to_owned());
    }
    out
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, whatever the length.
fn label_pattern(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated labels.
pub fn dns_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push(too_long(253));
    }
    if !s.split('.').all(label_pattern) {
        out.push(DNS_SUBDOMAIN_MSG.to_owned());
    }
    out
}

/// The name part of a qualified name or a label value: alphanumerics with `-`, `_`, `.` inside.
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A qualified name (label and annotation keys, resource names): `[prefix/]name`, the prefix a
/// DNS subdomain, the name at most 63 characters.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".to_owned());
            } else {
                out.extend(
                    dns_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            out.push(String::from("a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return out;
        }
    };
    if name.is_empty() {
        out.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        out.push(format!("name part {}", too_long(63)));
    }
    if !name.is_empty() && !is_name_part(name) {
        out.push(QUALIFIED_NAME_MSG.to_owned());
    }
    out
}

/// A label value: empty, or at most 63 name-part characters.
pub fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(too_long(63));
    }
    if !s.is_empty() && !is_name_part(s) {
        out.push(LABEL_VALUE_MSG.to_owned());
    }
    out
}

/// An IANA service name (container port names): at most 15 of `[a-z0-9-]`, a letter somewhere,
/// no `--`, no hyphen at either end.
pub fn port_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 15 {
        out.push(too_long(15));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen".into());
    }
    out
}

/// An environment variable name (relaxed rule, the default since Kubernetes 1.32): printable
/// ASCII other than `=`, not empty.
pub fn env_var_name(s: &str) -> Vec<String> {
    if !s.is_empty() && s.bytes().all(|c| (b' '..=b'~').contains(&c) && c != b'=') {
        Vec::new()
    } else {
        vec!["a valid environment variable name must consist only of printable ASCII characters other than '='".into()]
    }
}

/// The Linux capabilities (without `CAP_`), as runc knows them.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Whether `s` names a Linux capability (`NET_ADMIN` or `CAP_NET_ADMIN`, any case) or is `ALL`.
pub fn is_capability(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare == "ALL" || CAPABILITIES.contains(&bare)
}

/// The messages for a path that must be relative and stay below its root (`subPath`, item
/// paths of secret and configMap volumes): not absolute, no `..` component.
pub fn local_descending_path(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.starts_with('/') {
        out.push("must be a relative path".to_owned());
    }
    if s.split('/').any(|c| c == "..") {
        out.push("must not contain '..'".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        // (what a user writes, which check, whether it passes)
        type Check = fn(&str) -> Vec<String>;
        let rows: &[(&str, Check, bool)] = &[
            ("app", dns_label, true),
            ("my-app-2", dns_label, true),
            ("../x", dns_label, false),
            ("..", dns_label, false),
            ("App", dns_label, false),
            ("", dns_label, false),
            (&"a".repeat(64), dns_label, false),
            ("web.example", dns_subdomain, true),
            ("web_example", dns_subdomain, false),
            ("app", qualified_name, true),
            ("example.com/tier", qualified_name, true),
            ("a/b/c", qualified_name, false),
            ("-app", qualified_name, false),
            ("/app", qualified_name, false),
            ("", label_value, true),
            ("X.y_z", label_value, true),
            ("has space", label_value, false),
            ("http", port_name, true),
            ("http-alt", port_name, true),
            ("8080", port_name, false),
            ("a--b", port_name, false),
            ("HTTP", port_name, false),
            ("-http", port_name, false),
            ("averyveryverylongname", port_name, false),
            ("MY_VAR", env_var_name, true),
            ("my.var-1", env_var_name, true),
            ("A=B", env_var_name, false),
            ("", env_var_name, false),
            ("a/b", local_descending_path, true),
            ("/etc", local_descending_path, false),
            ("a/../../b", local_descending_path, false),
        ];
        for (value, check, ok) in rows {
            assert_eq!(
                check(value).is_empty(),
                *ok,
                "{value:?}: {:?}",
                check(value)
            );
        }
        assert_eq!(dns_label("../x"), [DNS_LABEL_MSG]);
    }

    #[test]
    fn capabilities_are_known_by_either_spelling() {
        for ok in [
            "NET_ADMIN",
            "CAP_NET_ADMIN",
            "net_bind_service",
            "ALL",
            "SYS_ADMIN",
        ] {
            assert!(is_capability(ok), "{ok}");
        }
        for bad in ["NET_ADMINS", "", "CAP_", "FOO"] {
            assert!(!is_capability(bad), "{bad}");
        }
    }
}
