//! Request bodies: read with a size limit (413 past [`MAX_BODY_BYTES`]), decoded by the media
//! type the client declares (415 for any other) and refused when nested too deep (422), before
//! anything else looks at them.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use serde_json::Value;

use crate::error::{ApiError, Result};
use crate::limits::{self, MAX_BODY_BYTES};

/// A body's media type, among those kube-apiserver decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json` (also assumed when no Content-Type is given, as kube-apiserver does).
    Json,
    /// `application/yaml`.
    Yaml,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

/// The media type part of a Content-Type header value, lower-cased (`application/json`).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Format {
    /// The format of an object body (POST, PUT, DELETE options); 415 for anything else.
    pub fn of(headers: &HeaderMap) -> Result<Self> {
        match media_type(headers).as_str() {
            "" | "application/json" => Ok(Format::Json),
            "application/yaml" => Ok(Format::Yaml),
            "application/vnd.kubernetes.protobuf" => Ok(Format::Protobuf),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other:?})"
            ))),
        }
    }
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] (by its Content-Length before
/// reading, by what arrives otherwise).
pub async fn read(headers: &HeaderMap, body: Body) -> Result<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(limits::body_too_large());
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let too_long =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.to_string().contains("length limit exceeded"));
            if too_long {
                limits::body_too_large()
            } else {
                ApiError::BadRequest(format!("reading the request body: {e}"))
            }
        })
}

/// Parses JSON text after checking its nesting without parsing it.
pub fn json(bytes: &[u8], what: &str) -> Result<Value> {
    limits::check_body_text(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("{what} is not valid JSON: {e}")))
}

/// What a YAML body may expand to, in nodes plus string bytes: twice the largest body, so any
/// body without aliases fits, and aliases cannot multiply it (a "billion laughs" document of a
/// few KiB would otherwise expand to gigabytes before any other check sees it; go-yaml, which
/// kube-apiserver uses, refuses such excessive aliasing too).
const YAML_EXPANSION_BUDGET: usize = 2 * MAX_BODY_BYTES;

/// Parses YAML (or JSON, which YAML includes), refusing a document whose aliases expand it past
/// [`YAML_EXPANSION_BUDGET`] (413) while it is being built, and checks the nesting of the result.
pub fn yaml(bytes: &[u8], what: &str) -> Result<Value> {
    use serde::de::DeserializeSeed;
    let budget = yaml_value::Budget::new(YAML_EXPANSION_BUDGET);
    let parsed = yaml_value::Seed(&budget).deserialize(serde_yaml::Deserializer::from_slice(bytes));
    if budget.exceeded() {
        return Err(ApiError::TooLarge(format!(
            "{what} expands (through YAML aliases) to more than {YAML_EXPANSION_BUDGET} bytes"
        )));
    }
    let v = parsed.map_err(|e| ApiError::BadRequest(format!("{what} is not valid YAML: {e}")))?;
    limits::check_body_value(&v)?;
    Ok(v)
}

/// A JSON value built from a YAML deserializer within a budget of nodes and string bytes.
mod yaml_value {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    /// What is left to spend; set once spent past zero.
    pub struct Budget {
        left: Cell<usize>,
        exceeded: Cell<bool>,
    }

    impl Budget {
        pub fn new(total: usize) -> Self {
            Budget {
                left: Cell::new(total),
                exceeded: Cell::new(false),
            }
        }

        pub fn exceeded(&self) -> bool {
            self.exceeded.get()
        }

        fn spend<E: de::Error>(&self, n: usize) -> Result<(), E> {
            match self.left.get().checked_sub(n) {
                Some(left) => {
                    self.left.set(left);
                    Ok(())
                }
                None => {
                    self.exceeded.set(true);
                    Err(E::custom("the document expands past its budget"))
                }
            }
        }
    }

    /// Deserializes one value, spending from the budget.
    pub struct Seed<'b>(pub &'b Budget);

    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Value;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(ValueVisitor(self.0))
        }
    }

    struct ValueVisitor<'b>(&'b Budget);

    impl<'de> Visitor<'de> for ValueVisitor<'_> {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any YAML value")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
            self.0.spend(1)?;
            Ok(Value::Bool(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
            self.0.spend(1)?;
            Ok(Value::from(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
            self.0.spend(1)?;
            Ok(Value::from(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
            self.0.spend(1)?;
            // Not finite (.inf, .nan) has no JSON form: null, as serde_json's own Value.
            Ok(Value::from(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
            self.0.spend(1 + v.len())?;
            Ok(Value::String(v.to_owned()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
            self.0.spend(1 + v.len())?;
            Ok(Value::String(v))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
            self.0.spend(1)?;
            Ok(Value::Null)
        }

        fn visit_none<E: de::Error>(self) -> Result<Value, E> {
            self.visit_unit()
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            Seed(self.0).deserialize(d)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            self.0.spend(1)?;
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(Seed(self.0))? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            self.0.spend(1)?;
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                self.0.spend(key.len())?;
                let value = map.next_value_seed(Seed(self.0))?;
                object.insert(key, value);
            }
            Ok(Value::Object(object))
        }
    }
}

/// Decodes an object body of `format`.
pub fn decode(format: Format, bytes: &[u8]) -> Result<Value> {
    match format {
        Format::Json => json(bytes, "the request body"),
        Format::Yaml => yaml(bytes, "the request body"),
        Format::Protobuf => crate::protobuf::decode_body(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        h
    }

    #[test]
    fn content_types_are_honoured() {
        for (ct, want) in [
            (None, Some(Format::Json)),
            (Some("application/json"), Some(Format::Json)),
            (Some("application/json; charset=utf-8"), Some(Format::Json)),
            (Some("Application/YAML"), Some(Format::Yaml)),
            (
                Some("application/vnd.kubernetes.protobuf"),
                Some(Format::Protobuf),
            ),
            (Some("text/plain"), None),
            (Some("application/xml"), None),
            (Some("application/merge-patch+json"), None),
        ] {
            assert_eq!(Format::of(&headers(ct)).ok(), want, "{ct:?}");
        }
        assert!(matches!(
            Format::of(&headers(Some("text/plain"))),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn json_is_json_and_yaml_is_yaml() {
        assert!(decode(Format::Json, b"a: 1").is_err());
        assert_eq!(decode(Format::Yaml, b"a: 1").unwrap()["a"], 1);
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert!(matches!(
            decode(Format::Json, deep.as_bytes()),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            decode(Format::Yaml, deep.as_bytes()),
            Err(ApiError::Unprocessable(_))
        ));
    }

    #[test]
    fn yaml_aliases_cannot_multiply_a_body() {
        // A flat list of 10,000 strings of 100 bytes, referred to 10,000 times: 1 MiB of text
        // that would expand to 10 GB.
        let item = "x".repeat(100);
        let mut doc = String::from("a: &a [");
        doc.push_str(&vec![item.as_str(); 10_000].join(", "));
        doc.push_str("]\nb: [");
        doc.push_str(&vec!["*a"; 10_000].join(", "));
        doc.push_str("]\n");
        let err = decode(Format::Yaml, doc.as_bytes()).unwrap_err();
        assert!(matches!(err, ApiError::TooLarge(_)), "{err}");
        // Aliases within reason (a merge key, a repeated value) still work.
        let ok = decode(
            Format::Yaml,
            b"base: &base {a: 1}\nx: *base\ny: {<<: *base, b: 2}\nn: .inf\nk: ~",
        )
        .unwrap();
        assert_eq!(ok["x"]["a"], 1);
        assert_eq!(ok["n"], Value::Null);
        assert_eq!(ok["k"], Value::Null);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let err = read(&headers(None), Body::from(big)).await.unwrap_err();
        assert!(matches!(err, ApiError::TooLarge(_)), "{err}");
        let ok = read(&headers(None), Body::from("{}")).await.unwrap();
        assert_eq!(&ok[..], b"{}");
    }
}
