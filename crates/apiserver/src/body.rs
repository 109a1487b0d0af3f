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

/// Parses YAML (or JSON, which YAML includes) and checks the nesting of the result.
pub fn yaml(bytes: &[u8], what: &str) -> Result<Value> {
    let v: Value = serde_yaml::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("{what} is not valid YAML: {e}")))?;
    limits::check_body_value(&v)?;
    Ok(v)
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

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let err = read(&headers(None), Body::from(big)).await.unwrap_err();
        assert!(matches!(err, ApiError::TooLarge(_)), "{err}");
        let ok = read(&headers(None), Body::from("{}")).await.unwrap();
        assert_eq!(&ok[..], b"{}");
    }
}
