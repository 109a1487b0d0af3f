//! Size and nesting limits on everything a client can make the server parse or store, as
//! kube-apiserver has them: a request body of at most 3 MiB (`MaxRequestBodyBytes`), at most
//! 10,000 operations in a JSON patch, a stored object of at most 1.5 MiB (etcd's default
//! request limit, the largest object a Kubernetes cluster can hold) and at most
//! [`MAX_DEPTH`] levels of nesting.
//!
//! Why 100 levels: serde_json refuses to parse anything nested deeper than 128, so an object
//! stored deeper could never be read back (the server would not start again). Watch events, lists
//! and Table rows wrap an object in two or three more levels, an AdmissionReview in three. The
//! deepest objects Kubernetes itself defines (a Pod with affinity terms, a CRD's schema of a
//! twenty-level type) stay far below 100. kube-apiserver's own decoder stops at 10,000 levels,
//! which its Go parser can afford; ours cannot.

use serde_json::Value;

use crate::error::ApiError;

/// The largest request body accepted (kube-apiserver's `MaxRequestBodyBytes`, 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The largest object stored, serialized (etcd's default `--max-request-bytes`, 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024 / 2;

/// The deepest nesting of objects and arrays accepted in a body or stored (the outermost
/// object is level 1).
pub const MAX_DEPTH: usize = 100;

/// The most operations one JSON patch may have (kube-apiserver's `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The 413 answer for a body larger than [`MAX_BODY_BYTES`], in kube-apiserver's words.
pub fn body_too_large() -> ApiError {
    ApiError::TooLarge(format!(
        "Request entity too large: limit is {MAX_BODY_BYTES}"
    ))
}

/// The 422 answer for something nested deeper than [`MAX_DEPTH`].
fn too_deep(what: &str) -> ApiError {
    ApiError::Unprocessable(format!(
        "{what} is nested deeper than the {MAX_DEPTH} levels this server accepts"
    ))
}

/// How deeply the JSON text `bytes` nests objects and arrays, counted without parsing (brackets
/// inside strings do not count). Stops counting once past `limit` and returns `limit + 1`.
pub fn text_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return limit + 1;
                    }
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// How deeply `value` nests objects and arrays (a scalar is 0), without recursion. Stops once
/// past `limit` and returns `limit + 1`.
pub fn value_depth(value: &Value, limit: usize) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((v, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Object(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        if level > max {
            max = level;
            if max > limit {
                return limit + 1;
            }
        }
        stack.extend(children.map(|c| (c, level + 1)));
    }
    max
}

/// The size of `value` serialized as compact JSON, counted without building the text. Stops
/// once past `budget` and returns `budget + 1`.
pub fn value_size(value: &Value, budget: usize) -> usize {
    let mut total = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null => 4,
            Value::Bool(b) => 4 + usize::from(!*b),
            Value::Number(n) => n.to_string().len(),
            Value::String(s) => string_size(s),
            Value::Array(a) => {
                stack.extend(a.iter());
                2 + a.len().saturating_sub(1)
            }
            Value::Object(m) => {
                stack.extend(m.values());
                2 + m.len().saturating_sub(1) + m.keys().map(|k| string_size(k) + 1).sum::<usize>()
            }
        };
        if total > budget {
            return budget + 1;
        }
    }
    total
}

/// A JSON string's encoded size, as serde_json escapes it: quotes, `\"`, `\\`, `\n` and the
/// like, `\u00XX` for other control characters.
fn string_size(s: &str) -> usize {
    2 + s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 1,
                0..0x20 => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Refuses a JSON body nested deeper than [`MAX_DEPTH`], before it is parsed.
pub fn check_body_text(bytes: &[u8]) -> Result<(), ApiError> {
    if text_depth(bytes, MAX_DEPTH) > MAX_DEPTH {
        return Err(too_deep("the request body"));
    }
    Ok(())
}

/// Refuses a decoded body (YAML, or JSON from another source) nested deeper than [`MAX_DEPTH`].
pub fn check_body_value(value: &Value) -> Result<(), ApiError> {
    if value_depth(value, MAX_DEPTH) > MAX_DEPTH {
        return Err(too_deep("the request body"));
    }
    Ok(())
}

/// Refuses an object about to be stored that is nested deeper than [`MAX_DEPTH`] or whose JSON
/// text (`encoded_len` bytes) is larger than [`MAX_OBJECT_BYTES`]: whatever is stored must be
/// readable again.
pub fn check_object(value: &Value, encoded_len: usize) -> Result<(), ApiError> {
    if encoded_len > MAX_OBJECT_BYTES {
        return Err(ApiError::TooLarge(format!(
            "Request entity too large: the object would be {encoded_len} bytes, the limit is {MAX_OBJECT_BYTES}"
        )));
    }
    if value_depth(value, MAX_DEPTH) > MAX_DEPTH {
        return Err(too_deep("the object"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_is_counted_like_a_parser_would() {
        for (text, depth) in [
            ("1", 0),
            ("{}", 1),
            (r#"{"a": [1, {"b": 2}]}"#, 3),
            (r#"{"a": "[[[[[[", "b": "\"{{{{"}"#, 1),
            (r#"[[], [[]], []]"#, 3),
        ] {
            assert_eq!(text_depth(text.as_bytes(), 10), depth, "{text}");
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(value_depth(&v, 10), depth, "{text}");
        }
        assert_eq!(text_depth(nested(500).as_bytes(), 100), 101);
        let deep: Value = serde_json::from_str(&nested(120)).unwrap();
        assert_eq!(value_depth(&deep, 100), 101);
        assert!(check_body_text(nested(100).as_bytes()).is_ok());
        assert!(matches!(
            check_body_text(nested(101).as_bytes()),
            Err(ApiError::Unprocessable(_))
        ));
    }

    #[test]
    fn size_matches_the_serialized_text() {
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(-12.5),
            json!("a\"b\\c\nd\u{1}"),
            json!({"k": [1, 2, {"x": "y"}], "e": {}, "l": []}),
        ] {
            assert_eq!(value_size(&v, usize::MAX / 2), v.to_string().len(), "{v}");
        }
        let big = json!({"data": "x".repeat(1000)});
        assert_eq!(value_size(&big, 100), 101);
    }

    #[test]
    fn objects_too_big_or_too_deep_are_refused() {
        let ok = json!({"metadata": {"name": "a"}});
        assert!(check_object(&ok, 30).is_ok());
        assert!(matches!(
            check_object(&ok, MAX_OBJECT_BYTES + 1),
            Err(ApiError::TooLarge(_))
        ));
        let deep: Value = serde_json::from_str(&nested(101)).unwrap();
        assert!(matches!(
            check_object(&deep, 300),
            Err(ApiError::Unprocessable(_))
        ));
    }
}
