//! The part of SPDY/3.1 a port-forward server needs (the framing kubectl's `spdystream`
//! client speaks): frames in and out, and the zlib-compressed header blocks of `SYN_STREAM`
//! and `SYN_REPLY` (one compression context per direction for the whole connection, with
//! the SPDY/3 dictionary).
//!
//! Flow control (`WINDOW_UPDATE`) is neither sent nor honoured, as `spdystream` does not
//! implement it either; memory stays bounded because frames larger than [`MAX_FRAME`] are
//! refused and each stream's data is handed on before the next frame is read.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The zlib dictionary of SPDY/3 header blocks (from the SPDY/3 specification).
const DICTIONARY: &[u8] = include_bytes!("spdy3_dictionary.bin");

/// The largest frame accepted (kubectl sends at most 32 KiB of data at once).
pub const MAX_FRAME: usize = 1 << 20;

/// Most headers accepted in one block, and the largest decompressed block.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Flag of the last frame of a stream from its sender.
pub const FLAG_FIN: u8 = 0x01;

/// Control frame types.
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// `RST_STREAM` status: the stream was refused.
pub const REFUSED_STREAM: u32 = 3;

/// A frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new stream from the client, with its headers (names lowercase).
    SynStream {
        /// The stream.
        id: u32,
        /// Its last frame (nothing more comes from the client on it).
        fin: bool,
        /// Its headers.
        headers: Vec<(String, String)>,
    },
    /// Data of a stream.
    Data {
        /// The stream.
        id: u32,
        /// Its last frame.
        fin: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The client reset a stream.
    RstStream {
        /// The stream.
        id: u32,
    },
    /// A ping to answer with the same id.
    Ping {
        /// Its id.
        id: u32,
    },
    /// The client goes away.
    GoAway,
    /// A frame this server has no use for (settings, window updates, headers, replies).
    Ignored,
}

/// Why the frames cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A frame larger than [`MAX_FRAME`].
    #[error("SPDY frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
    /// Not SPDY/3, or a frame that does not parse.
    #[error("invalid SPDY frame: {0}")]
    Invalid(String),
}

/// Reads frames out of the bytes received so far, decompressing header blocks.
pub struct FrameReader {
    inflate: Decompress,
    /// Bytes received and not yet a whole frame.
    pending: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            inflate: Decompress::new(true),
            pending: Vec::new(),
        }
    }
}

impl FrameReader {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole frame received, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.pending.len() < 8 {
            return Ok(None);
        }
        let head = &self.pending[..8];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if length > MAX_FRAME {
            return Err(SpdyError::TooLarge(length));
        }
        if self.pending.len() < 8 + length {
            return Ok(None);
        }
        let frame: Vec<u8> = self.pending.drain(..8 + length).collect();
        let flags = frame[4];
        let body = &frame[8..];
        let fin = flags & FLAG_FIN != 0;
        if frame[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            return Ok(Some(Frame::Data {
                id,
                fin,
                data: body.to_vec(),
            }));
        }
        let version = u16::from_be_bytes([frame[0] & 0x7f, frame[1]]);
        if version != 3 {
            return Err(SpdyError::Invalid(format!("version {version}, not 3")));
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        let word = |at: usize| -> Result<u32, SpdyError> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| SpdyError::Invalid(format!("frame type {kind} too short")))
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                let id = word(0)? & 0x7fff_ffff;
                let block = body
                    .get(10..)
                    .ok_or_else(|| SpdyError::Invalid("SYN_STREAM too short".into()))?;
                let headers = self.headers(block)?;
                Frame::SynStream { id, fin, headers }
            }
            SYN_REPLY | HEADERS => {
                // Still decompressed: the compression context runs through every block.
                if let Some(block) = body.get(4..) {
                    self.headers(block)?;
                }
                Frame::Ignored
            }
            RST_STREAM => Frame::RstStream {
                id: word(0)? & 0x7fff_ffff,
            },
            PING => Frame::Ping { id: word(0)? },
            GOAWAY => Frame::GoAway,
            SETTINGS | WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        }))
    }

    /// Decompresses and parses one header block.
    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut out = Vec::with_capacity(1024);
        let mut input = block;
        loop {
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(SpdyError::Invalid("header block too large".into()));
            }
            out.reserve(4096);
            let before_in = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Invalid(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(SpdyError::Invalid(format!("header block: {e}"))),
            }
        }
        parse_block(&out)
    }
}

/// Parses a decompressed header block: a count, then (length, name, length, value) each.
fn parse_block(block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = || SpdyError::Invalid("malformed header block".into());
    let mut at = 0usize;
    let word = |at: &mut usize| -> Result<usize, SpdyError> {
        let b = block.get(*at..*at + 4).ok_or_else(bad)?;
        *at += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(&mut at)?;
    if count > MAX_HEADERS {
        return Err(SpdyError::Invalid(format!("{count} headers in one block")));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = word(&mut at)?;
        let name = block.get(at..at + n).ok_or_else(bad)?;
        at += n;
        let n = word(&mut at)?;
        let value = block.get(at..at + n).ok_or_else(bad)?;
        at += n;
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(headers)
}

/// Writes frames; header blocks share one compression context, so the frames it makes must
/// be sent in the order they were made.
pub struct FrameWriter {
    deflate: Compress,
}

impl Default for FrameWriter {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // The dictionary is part of the protocol: the client's reader expects it.
        let _ = deflate.set_dictionary(DICTIONARY);
        FrameWriter { deflate }
    }
}

impl FrameWriter {
    /// A `SYN_REPLY` (no headers) accepting stream `id`.
    pub fn syn_reply(&mut self, id: u32) -> Vec<u8> {
        let block = self.compress(&0u32.to_be_bytes());
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&block);
        control(SYN_REPLY, 0, &body)
    }

    fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut input = input;
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// A control frame.
fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&(0x8000u16 | 3).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(body);
    frame
}

/// A data frame of stream `id` (`fin`: the last one).
pub fn data(id: u32, fin: bool, bytes: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + bytes.len());
    frame.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    frame.push(if fin { FLAG_FIN } else { 0 });
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(bytes);
    frame
}

/// A `RST_STREAM` of stream `id`.
pub fn rst_stream(id: u32, status: u32) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &body)
}

/// The answer to a `PING`.
pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN_STREAM as a client writes it (its own compression context).
    fn syn_stream(deflate: &mut Compress, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            block.extend_from_slice(&(k.len() as u32).to_be_bytes());
            block.extend_from_slice(k.as_bytes());
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(4096);
        deflate
            .compress_vec(&block, &mut out, FlushCompress::Sync)
            .unwrap();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&out);
        control(SYN_STREAM, 0, &body)
    }

    #[test]
    fn frames_are_read_across_chunks_with_compressed_headers() {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(DICTIONARY).unwrap();
        let mut bytes = syn_stream(
            &mut deflate,
            1,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
        );
        bytes.extend(syn_stream(
            &mut deflate,
            3,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
        ));
        bytes.extend(data(3, true, b"GET /"));
        bytes.extend(ping(7));
        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        // One byte at a time: frames span messages.
        for b in bytes {
            reader.push(&[b]);
            while let Some(f) = reader.next_frame().unwrap() {
                frames.push(f);
            }
        }
        let h = |t: &str| {
            vec![
                ("streamtype".to_string(), t.to_string()),
                ("port".into(), "80".into()),
                ("requestid".into(), "0".into()),
            ]
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    id: 1,
                    fin: false,
                    headers: h("error")
                },
                Frame::SynStream {
                    id: 3,
                    fin: false,
                    headers: h("data")
                },
                Frame::Data {
                    id: 3,
                    fin: true,
                    data: b"GET /".to_vec()
                },
                Frame::Ping { id: 7 },
            ]
        );
    }

    #[test]
    fn replies_decompress_with_the_dictionary() {
        let mut writer = FrameWriter::default();
        let mut inflate = Decompress::new(true);
        for id in [1u32, 3] {
            let frame = writer.syn_reply(id);
            assert_eq!(&frame[..4], &[0x80, 3, 0, 2]);
            assert_eq!(&frame[8..12], &id.to_be_bytes());
            let mut out = Vec::with_capacity(64);
            let block = &frame[12..];
            match inflate.decompress_vec(block, &mut out, FlushDecompress::Sync) {
                Err(e) if e.needs_dictionary().is_some() => {
                    inflate.set_dictionary(DICTIONARY).unwrap();
                    let done = (inflate.total_in() as usize).min(block.len());
                    inflate
                        .decompress_vec(&block[done..], &mut out, FlushDecompress::Sync)
                        .unwrap();
                }
                r => {
                    r.unwrap();
                }
            }
            assert_eq!(out, 0u32.to_be_bytes());
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut reader = FrameReader::default();
        reader.push(&data(1, false, &[])[..5]);
        reader.push(&[0xff, 0xff, 0xff]);
        assert!(matches!(reader.next_frame(), Err(SpdyError::TooLarge(_))));
    }
}
