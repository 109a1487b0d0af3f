//! `portforward` as kubectl 1.31+ speaks it: a WebSocket (subprotocol
//! `SPDY/3.1+portforward.k8s.io`) whose binary messages carry a SPDY/3.1 byte stream, the
//! protocol the kubelet serves (`portforward.k8s.io`, v2 of the port-forward protocol).
//!
//! Per forwarded connection the client opens two streams with the same `requestid` header and
//! a `port` header: `streamtype: error` (it sends nothing on it) and `streamtype: data`.
//! Once both are there the node connects to the port in the pod; bytes then flow on the data
//! stream both ways, the end of each direction is the stream's FIN, and a failure is written
//! as text on the error stream (`error forwarding port P to pod NAME, uid U: why`). The error
//! stream is closed last: kubectl waits for it before it forgets the connection. Several
//! connections run at once, each in a task of its own.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::PodStreams;
use super::channels::{CHUNK, QUEUE};
use super::spdy::{self, Frame, FrameReader, FrameWriter};

/// Connections waiting for their second stream, and data streams open, at most.
const MAX_PENDING: usize = 128;
const MAX_OPEN: usize = 256;

/// Chunks of client data waiting for the pod per connection.
const PER_STREAM: usize = 8;

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

/// Runs one upgraded port-forward connection to its end.
pub(crate) async fn run(socket: WebSocket, provider: Arc<dyn PodStreams>, pod: Value) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut queue) = mpsc::channel::<Vec<u8>>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if sink.send(Message::binary(frame)).await.is_err() {
                return;
            }
        }
        // A normal close: kubectl reads its streams to their end, and any other close is
        // an error to it.
        let _ = sink.send(super::normal_close()).await;
        let _ = sink.close().await;
    });
    let mut reader = FrameReader::default();
    let mut frames = FrameWriter::default();
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut open: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    'connection: while let Some(message) = incoming.next().await {
        let bytes = match message {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        reader.push(&bytes);
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "port-forward: ending the connection");
                    break 'connection;
                }
            };
            match frame {
                Frame::SynStream { id, fin, headers } => {
                    let get = |k: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.as_str())
                    };
                    let port = get("port").and_then(|p| p.parse::<u16>().ok());
                    let request = get("requestid").unwrap_or("").to_owned();
                    let kind = get("streamtype").unwrap_or("");
                    let Some(port) = port.filter(|p| *p > 0) else {
                        let _ = out.send(spdy::rst_stream(id, spdy::REFUSED_STREAM)).await;
                        continue;
                    };
                    if (pending.len() >= MAX_PENDING && !pending.contains_key(&request))
                        || open.len() >= MAX_OPEN
                    {
                        let _ = out.send(spdy::rst_stream(id, spdy::REFUSED_STREAM)).await;
                        continue;
                    }
                    if out.send(frames.syn_reply(id)).await.is_err() {
                        break 'connection;
                    }
                    let pair = pending.entry(request.clone()).or_default();
                    pair.port = port;
                    match kind {
                        "error" => pair.error = Some(id),
                        "data" => pair.data = Some(id),
                        _ => {
                            let _ = out.send(spdy::rst_stream(id, spdy::REFUSED_STREAM)).await;
                            continue;
                        }
                    }
                    if let (Some(error), Some(data)) = (pair.error, pair.data) {
                        let port = pair.port;
                        pending.remove(&request);
                        let (to_pod, from_client) = mpsc::channel(PER_STREAM);
                        if !fin {
                            open.insert(data, to_pod);
                        }
                        tasks.spawn(forward(
                            provider.clone(),
                            pod.clone(),
                            port,
                            data,
                            error,
                            from_client,
                            out.clone(),
                        ));
                    }
                }
                Frame::Data { id, fin, data } => {
                    if let Some(tx) = open.get(&id)
                        && !data.is_empty()
                        && tx.send(data).await.is_err()
                    {
                        open.remove(&id);
                    }
                    if fin {
                        // Dropping the sender ends the pod side's input.
                        open.remove(&id);
                    }
                }
                Frame::RstStream { id } => {
                    open.remove(&id);
                }
                Frame::Ping { id } => {
                    let _ = out.send(spdy::ping(id)).await;
                }
                Frame::GoAway => break 'connection,
                Frame::Ignored => {}
            }
        }
        // Finished connections.
        while tasks.try_join_next().is_some() {}
    }
    // The client went away: every forwarded connection ends.
    drop(open);
    tasks.abort_all();
    drop(out);
    writer.abort();
}

/// One forwarded connection: connects to `port` in the pod and copies both ways.
async fn forward(
    provider: Arc<dyn PodStreams>,
    pod: Value,
    port: u16,
    data: u32,
    error: u32,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Vec<u8>>,
) {
    match provider.port_forward(pod.clone(), port).await {
        Err(why) => {
            let text = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("");
            let message = format!(
                "error forwarding port {port} to pod {}, uid {}: {why}",
                text("/metadata/name"),
                text("/metadata/uid")
            );
            let _ = out.send(spdy::data(error, false, message.as_bytes())).await;
        }
        Ok(conn) => {
            let (mut pod_read, mut pod_write) = tokio::io::split(conn);
            let to_pod = tokio::spawn(async move {
                while let Some(chunk) = from_client.recv().await {
                    if pod_write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = pod_write.shutdown().await;
            });
            let mut buf = vec![0u8; CHUNK];
            loop {
                match pod_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.send(spdy::data(data, false, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
            to_pod.abort();
        }
    }
    let _ = out.send(spdy::data(data, true, &[])).await;
    let _ = out.send(spdy::data(error, true, &[])).await;
}
