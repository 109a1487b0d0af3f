//! containerd's filter language, as far as snapshot listings use it.
//!
//! `Walk`/`List` take filters like `labels."containerd.io/snapshot.ref"==sha256:…,parent=="x"`:
//! selectors joined by `,` must all hold, and a snapshot is listed when any one filter holds.
//! Fields are `name`, `parent`, `kind` and `labels.<key>` (key bare or quoted); operators `==`,
//! `!=`, or none (the field is present and not empty). containerd's regular-expression operator
//! `~=` is refused with a clear error rather than ignored.

use std::collections::HashMap;

/// A parsed filter: every selector must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    selectors: Vec<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    field: Field,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Name,
    Parent,
    Kind,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

/// What a filter looks at in a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The snapshot's name (key).
    pub name: &'a str,
    /// Its parent's name, empty for none.
    pub parent: &'a str,
    /// `active`, `view` or `committed`.
    pub kind: &'a str,
    /// Its labels.
    pub labels: &'a HashMap<String, String>,
}

/// Why a filter string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {filter:?}: {reason}")]
pub struct FilterError {
    /// The filter as given.
    pub filter: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Filter {
    /// Parses one filter string.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let err = |reason: &str| FilterError {
            filter: text.to_string(),
            reason: reason.to_string(),
        };
        let mut selectors = Vec::new();
        let mut rest = text.trim();
        if rest.is_empty() {
            return Ok(Filter { selectors });
        }
        loop {
            let (fields, after) = parse_fieldpath(rest).map_err(|r| err(&r))?;
            let field = match fields.as_slice() {
                [f] if f == "name" => Field::Name,
                [f] if f == "parent" => Field::Parent,
                [f] if f == "kind" => Field::Kind,
                [f, key @ ..] if f == "labels" && !key.is_empty() => Field::Label(key.join(".")),
                _ => return Err(err(&format!("unknown field {:?}", fields.join(".")))),
            };
            let after = after.trim_start();
            let (op, after) = if let Some(v) = after.strip_prefix("==") {
                let (value, after) = parse_value(v).map_err(|r| err(&r))?;
                (Op::Equal(value), after)
            } else if let Some(v) = after.strip_prefix("!=") {
                let (value, after) = parse_value(v).map_err(|r| err(&r))?;
                (Op::NotEqual(value), after)
            } else if after.starts_with("~=") {
                return Err(err("the regular-expression operator ~= is not supported"));
            } else {
                (Op::Present, after)
            };
            selectors.push(Selector { field, op });
            let after = after.trim_start();
            if after.is_empty() {
                break;
            }
            rest = after
                .strip_prefix(',')
                .ok_or_else(|| err(&format!("unexpected {after:?}")))?
                .trim_start();
        }
        Ok(Filter { selectors })
    }

    /// Whether the snapshot matches every selector.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        self.selectors.iter().all(|sel| {
            let value = match &sel.field {
                Field::Name => Some(s.name),
                Field::Parent => Some(s.parent),
                Field::Kind => Some(s.kind),
                Field::Label(key) => s.labels.get(key).map(String::as_str),
            };
            match &sel.op {
                Op::Present => value.is_some_and(|v| !v.is_empty()),
                Op::Equal(want) => value == Some(want.as_str()),
                Op::NotEqual(want) => value != Some(want.as_str()),
            }
        })
    }
}

/// Whether a snapshot is listed by `filters` (any one matching; no filter lists everything).
pub fn any_matches(filters: &[Filter], s: &Subject<'_>) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(s))
}

/// Parses `field(.field)*`, each field bare (`[A-Za-z0-9_-]+`) or double-quoted.
fn parse_fieldpath(text: &str) -> Result<(Vec<String>, &str), String> {
    let mut fields = Vec::new();
    let mut rest = text;
    loop {
        let (field, after) = if rest.starts_with('"') {
            parse_quoted(rest)?
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Err(format!("expected a field name at {rest:?}"));
            }
            (rest[..end].to_string(), &rest[end..])
        };
        fields.push(field);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None => return Ok((fields, after)),
        }
    }
}

/// Parses a value: double-quoted, or bare up to the next `,`.
fn parse_value(text: &str) -> Result<(String, &str), String> {
    let text = text.trim_start();
    if text.starts_with('"') {
        return parse_quoted(text);
    }
    let end = text.find(',').unwrap_or(text.len());
    let value = text[..end].trim_end();
    if value.is_empty() {
        return Err("missing value after the operator".to_string());
    }
    Ok((value.to_string(), &text[end..]))
}

/// Parses a double-quoted string with backslash escapes; returns it and what follows.
fn parse_quoted(text: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, e)) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("unterminated quote in {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_select_what_containerd_asks_for() {
        let ref_label = labels(&[("containerd.io/snapshot.ref", "sha256:abc")]);
        let none = labels(&[]);
        let committed = Subject {
            name: "sha256:abc",
            parent: "default/3/sha256:def",
            kind: "committed",
            labels: &ref_label,
        };
        let active = Subject {
            name: "default/7/extract-1 sha256:abc",
            parent: "",
            kind: "active",
            labels: &none,
        };
        // (filter, matches committed, matches active)
        let cases = [
            // What containerd's metadata store sends after an AlreadyExists from Prepare.
            (
                r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/3/sha256:def""#,
                true,
                false,
            ),
            (
                r##"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""##,
                false,
                false,
            ),
            ("kind==committed", true, false),
            ("kind==active", false, true),
            ("kind!=active", true, false),
            ("parent", true, false),
            (r#"name=="default/7/extract-1 sha256:abc""#, false, true),
            (r#"labels."containerd.io/snapshot.ref""#, true, false),
            ("", true, true),
        ];
        for (text, want_committed, want_active) in cases {
            let f = Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f.matches(&committed), want_committed, "{text} on committed");
            assert_eq!(f.matches(&active), want_active, "{text} on active");
        }
    }

    #[test]
    fn any_filter_of_several_lists_a_snapshot() {
        let none = labels(&[]);
        let s = Subject {
            name: "a",
            parent: "",
            kind: "view",
            labels: &none,
        };
        let fs = [
            Filter::parse("kind==active").unwrap(),
            Filter::parse("kind==view").unwrap(),
        ];
        assert!(any_matches(&fs, &s));
        assert!(!any_matches(&fs[..1], &s));
        assert!(any_matches(&[], &s));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let cases = [
            ("labels.a~=x", "~= is not supported"),
            ("size==3", "unknown field \"size\""),
            ("name==", "missing value"),
            (r#"name=="x"#, "unterminated quote"),
            ("name==a,,kind==x", "expected a field name"),
            ("labels", "unknown field"),
        ];
        for (text, want) in cases {
            let e = Filter::parse(text).expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }
}
