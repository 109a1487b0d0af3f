//! The `grpc` probe (the kubelet's `pkg/probe/grpc`): one unary `grpc.health.v1.Health/Check`
//! call over HTTP/2 without TLS (h2c, prior knowledge), from inside the pod's network
//! namespace; `SERVING` is a success. The messages are the kubelet's.
//!
//! Written by hand over `hyper`'s HTTP/2 client rather than with tonic: the call is one
//! request with a five-byte frame header and a one-field protobuf message each way, which is
//! less code than tonic's generated client and keeps prost, tonic and a build script out of
//! the node.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use super::{KUBE_VERSION, Outcome, Target, join_host_port};
use crate::node::restart::go_duration;

/// The largest response read (a health response is a few bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// How long to wait between connection attempts (gRPC keeps dialing until its deadline).
const REDIAL: Duration = Duration::from_millis(200);

/// `grpc.health.v1.HealthCheckResponse.ServingStatus` names.
const SERVING_STATUS: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/// gRPC status code names, by number.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Checks `service` on the pod's IP and `port`.
pub(super) async fn probe(target: &Target, port: u16, service: &str, timeout: Duration) -> Outcome {
    let shown = join_host_port(&target.pod_ip, port);
    let deadline = Instant::now() + timeout;
    let connected = tokio::time::timeout_at(deadline, async {
        loop {
            match connect(target, port).await {
                Ok(sender) => return sender,
                Err(_) => tokio::time::sleep(REDIAL).await,
            }
        }
    })
    .await;
    let Ok(mut sender) = connected else {
        return Outcome::Failure(format!(
            "timeout: failed to connect service {shown:?} within {}: context deadline exceeded",
            go_duration(timeout)
        ));
    };
    match tokio::time::timeout_at(deadline, check(&mut sender, service, timeout)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {}",
            go_duration(timeout)
        )),
    }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(target: &Target, port: u16) -> Result<Sender, String> {
    let addr = target
        .address(None, port)
        .await
        .map_err(|e| e.to_string())?;
    let stream = target.connect(addr).await.map_err(|e| e.to_string())?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    // Ends when the sender is dropped (the connection closes).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The unary call and what its answer means.
async fn check(sender: &mut Sender, service: &str, timeout: Duration) -> Outcome {
    let request = http::Request::post("/grpc.health.v1.Health/Check")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(
            http::header::USER_AGENT,
            format!("kube-probe/{KUBE_VERSION}"),
        )
        .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)))
        .body(Full::new(request_message(service)));
    let request = match request {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let failed = |e: String| Outcome::Failure(format!("error: health rpc probe failed: {e}"));
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => return failed(format!("rpc error: code = Unavailable desc = {e}")),
    };
    let (head, body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return failed(format!(
            "rpc error: code = Unknown desc = unexpected HTTP status code received from server: {}",
            head.status.as_u16()
        ));
    }
    let collected = match Limited::new(body, MAX_RESPONSE).collect().await {
        Ok(c) => c,
        Err(e) => return failed(format!("rpc error: code = Internal desc = {e}")),
    };
    let trailers = collected.trailers().cloned();
    let message = collected.to_bytes();
    // A trailers-only answer carries its status in the headers.
    let field = |name: &str| {
        trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| head.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let code: usize = field("grpc-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let description = percent_decode(&field("grpc-message").unwrap_or_default());
    match code {
        0 => {}
        12 => {
            return Outcome::Failure(format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {description}"
            ));
        }
        4 => {
            return Outcome::Failure(format!(
                "timeout: health rpc did not complete within {}",
                go_duration(timeout)
            ));
        }
        other => {
            return failed(format!(
                "rpc error: code = {} desc = {description}",
                CODES.get(other).copied().unwrap_or("Unknown")
            ));
        }
    }
    match response_status(&message) {
        Some(1) => Outcome::Success("service healthy".into()),
        Some(s) => Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            SERVING_STATUS
                .get(s as usize)
                .map_or_else(|| s.to_string(), |n| (*n).to_owned())
        )),
        None => failed("rpc error: code = Internal desc = malformed health response".into()),
    }
}

/// A length-prefixed `HealthCheckRequest { service }`.
fn request_message(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 when absent, as protobuf
/// defaults it); `None` when the frame is malformed or compressed.
fn response_status(framed: &[u8]) -> Option<u64> {
    let (&flag, rest) = framed.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while let Some((&tag, after)) = msg.split_first() {
        msg = after;
        let (value, after) = varint(msg)?;
        match tag & 7 {
            0 => {
                msg = after;
                if tag >> 3 == 1 {
                    status = value;
                }
            }
            2 => msg = after.get(value as usize..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::path::PathBuf;

    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::*;

    fn host_target() -> Target {
        Target {
            exec: None,
            sandbox: imc_runtime::PodSandbox {
                uid: "u".into(),
                dir: PathBuf::from("/nonexistent"),
                hostname: "h".into(),
                namespaces: imc_runtime::PodNamespaces::default(),
                ips: Vec::new(),
            },
            pod_ip: "127.0.0.1".into(),
        }
    }

    type Body =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    /// A health service: "" is SERVING, "db" NOT_SERVING, "slow" never answers; any other
    /// method is Unimplemented.
    async fn serve(
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let service = String::from_utf8_lossy(body.get(7..).unwrap_or_default()).into_owned();
        let mut trailers = http::HeaderMap::new();
        let mut frames = Vec::new();
        if path != "/grpc.health.v1.Health/Check" {
            trailers.insert("grpc-status", "12".parse().unwrap());
            trailers.insert("grpc-message", "unknown%20service".parse().unwrap());
        } else {
            if service == "slow" {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let status = if service == "db" { 2u8 } else { 1 };
            frames.push(Ok(Frame::data(Bytes::from(vec![
                0, 0, 0, 0, 2, 0x08, status,
            ]))));
            trailers.insert("grpc-status", "0".parse().unwrap());
        }
        frames.push(Ok(Frame::trailers(trailers)));
        Ok(http::Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap())
    }

    #[tokio::test]
    async fn health_checks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), hyper::service::service_fn(serve)),
                );
            }
        });
        let t = host_target();
        let second = Duration::from_secs(1);
        let rows = [
            ("", Outcome::Success("service healthy".into())),
            (
                "db",
                Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into()),
            ),
            (
                "slow",
                Outcome::Failure("timeout: health rpc did not complete within 1s".into()),
            ),
        ];
        for (service, want) in rows {
            assert_eq!(probe(&t, port, service, second).await, want, "{service:?}");
        }

        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = free.local_addr().unwrap().port();
        drop(free);
        assert_eq!(
            probe(&t, closed, "", second).await,
            Outcome::Failure(format!(
                "timeout: failed to connect service \"127.0.0.1:{closed}\" within 1s: context deadline exceeded"
            ))
        );
    }

    #[test]
    fn messages_encode_and_decode() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("db")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(
            response_status(&[0, 0, 0, 0, 0]),
            Some(0),
            "defaults to UNKNOWN"
        );
        assert_eq!(response_status(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(percent_decode("a%20b"), "a b");
    }
}
