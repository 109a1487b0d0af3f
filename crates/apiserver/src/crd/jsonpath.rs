//! The JSONPath subset of `additionalPrinterColumns` (`.spec.replicas`, `.spec.items[0].name`,
//! `.status.conditions[?(@.type=="Ready")].status`, `.metadata.labels['app']`, `[*]`).

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// An object field.
    Field(String),
    /// A list index.
    Index(usize),
    /// Every item of a list or value of an object.
    All,
    /// List items whose `field` path equals `value`.
    Filter(Vec<String>, Value),
}

/// Parses a path; `None` when it is not in the supported subset.
fn parse(path: &str) -> Option<Vec<Step>> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut steps = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_owned()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = bracket_end(r)?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            steps.push(bracket(inner)?);
        } else {
            return None;
        }
    }
    Some(steps)
}

/// The index of the `]` closing a bracket, quotes respected.
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
}

fn bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::All);
    }
    if let Ok(i) = inner.parse::<usize>() {
        return Some(Step::Index(i));
    }
    if let Some(name) = unquote(inner) {
        // `['serving\.knative\.dev/configuration']`: a dot escaped with a backslash is a dot.
        return Some(Step::Field(name.replace("\\.", ".")));
    }
    let cond = inner.strip_prefix("?(").and_then(|c| c.strip_suffix(')'))?;
    let (lhs, rhs) = cond.split_once("==")?;
    let field: Vec<String> = lhs
        .trim()
        .strip_prefix("@.")?
        .split('.')
        .map(str::to_owned)
        .collect();
    let rhs = rhs.trim();
    let value = match unquote(rhs) {
        Some(s) => Value::String(s.to_owned()),
        None => serde_json::from_str(rhs).ok()?,
    };
    Some(Step::Filter(field, value))
}

/// Every value `path` reaches in `obj`.
pub fn find<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse(path) else {
        return Vec::new();
    };
    let mut current = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter(field, want) => {
                    if let Value::Array(items) = v {
                        next.extend(items.iter().filter(|item| {
                            field
                                .iter()
                                .try_fold(*item, |cur, seg| cur.get(seg.as_str()))
                                == Some(want)
                        }));
                    }
                }
            }
        }
        current = next;
    }
    current
}

/// Whether `path` is in the supported subset.
pub fn is_supported(path: &str) -> bool {
    parse(path).is_some()
}

/// A table cell: the single value `path` reaches, several joined by `,`, or null.
pub fn cell(obj: &Value, path: &str) -> Value {
    let found = find(obj, path);
    match found.as_slice() {
        [] => Value::Null,
        [one] => (*one).clone(),
        many => Value::String(
            many.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths() {
        let o = json!({"spec": {"replicas": 3, "items": [{"name": "a"}, {"name": "b"}]},
            "metadata": {"labels": {"app.kubernetes.io/name": "web"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Issuing", "status": "False"}]}});
        let table = [
            (".spec.replicas", json!(3)),
            ("{.spec.replicas}", json!(3)),
            (".spec.items[1].name", json!("b")),
            (".spec.items[*].name", json!("a,b")),
            (".metadata.labels['app.kubernetes.io/name']", json!("web")),
            (
                ".metadata.labels['app\\.kubernetes\\.io/name']",
                json!("web"),
            ),
            (
                ".status.conditions[?(@.type==\"Ready\")].status",
                json!("True"),
            ),
            (
                ".status.conditions[?(@.type=='Issuing')].status",
                json!("False"),
            ),
            (".status.missing", Value::Null),
            (".spec.items[7]", Value::Null),
        ];
        for (path, want) in table {
            assert_eq!(cell(&o, path), want, "{path}");
        }
        assert!(!is_supported("spec.x"));
        assert!(!is_supported(".spec[?(@.a>1)]"));
    }
}
