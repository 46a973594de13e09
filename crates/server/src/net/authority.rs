//! Repairs the HTTP/2 `:authority` of clients that put a whole URL there.
//!
//! etcd's Go clients of 3.4 (Debian's `etcdctl`) dial some connections — `endpoint status`,
//! `snapshot save`, `move-leader`, `endpoint hashkv` — with the endpoint string as the gRPC
//! target, so the request's `:authority` reads `http://127.0.0.1:2379`; clientv3 3.5.0 sent
//! `#initially=[...]`. Go's HTTP/2 server takes any string there, but `h2` (under tonic) resets
//! such a stream with PROTOCOL_ERROR, and the command fails against ferrokv while it works
//! against etcd. Nothing in ferrokv reads the authority, so this layer sits between the
//! socket and `h2` and, on a connection whose first request carries an authority that is not
//! one, rewrites every request header block with a repaired authority (the part after the
//! scheme, or none at all).
//!
//! Connections that send a valid authority — every other client — are inspected up to their
//! first HEADERS frame and then passed through untouched. Anything that is not HTTP/2 in the
//! clear (TLS, HTTP/1 on the client port) is passed through from the first byte.
//!
//! Re-encoding keeps the two HPACK contexts apart: a decoder follows the client's dynamic
//! table, and our own encoder builds the table `h2` decodes with. Both sides use the protocol
//! default table size (neither the client port nor `h2` changes it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce; frames we emit never exceed it.
const MAX_FRAME: usize = 16_384;
/// A header block that grows past this (client frames are limited by h2's max header list
/// size anyway) is refused rather than buffered without bound.
const MAX_BLOCK: usize = 1 << 20;
const AUTHORITY: &[u8] = b":authority";

enum Mode {
    /// Waiting for the client preface.
    Preface,
    /// HTTP/2 frames until the first HEADERS frame decides.
    Inspect(Box<hpack::Decoder<'static>>),
    /// Every header block is decoded and re-encoded.
    Rewrite(Box<Rewriter>),
    /// Bytes go through untouched.
    Passthrough,
}

struct Rewriter {
    decoder: hpack::Decoder<'static>,
    encoder: hpack::Encoder<'static>,
    /// A HEADERS frame waiting for its CONTINUATION frames.
    pending: Option<PendingBlock>,
}

/// A header block split over HEADERS + CONTINUATION frames, gathered until it ends.
struct PendingBlock {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// An IO stream whose read side repairs `:authority` as described in the module docs; the
/// write side is the inner stream's.
pub struct AuthorityFix<T> {
    inner: T,
    mode: Mode,
    /// Bytes read from `inner` not yet looked at.
    raw: BytesMut,
    /// Bytes ready for the reader (h2).
    ready: BytesMut,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> Self {
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// Moves what can be decided from `raw` to `ready`. Returns false when more input is
    /// needed to go on.
    fn process(&mut self) -> io::Result<bool> {
        match &mut self.mode {
            Mode::Passthrough => {
                if self.raw.is_empty() {
                    return Ok(false);
                }
                let all = self.raw.split();
                self.ready.unsplit(all);
                Ok(true)
            }
            Mode::Preface => {
                let n = self.raw.len().min(PREFACE.len());
                if self.raw[..n] != PREFACE[..n] {
                    self.mode = Mode::Passthrough;
                    return Ok(true);
                }
                if n < PREFACE.len() {
                    return Ok(false);
                }
                let preface = self.raw.split_to(PREFACE.len());
                self.ready.unsplit(preface);
                self.mode = Mode::Inspect(Box::new(hpack::Decoder::new()));
                Ok(true)
            }
            Mode::Inspect(_) | Mode::Rewrite(_) => {
                let Some(len) = frame_len(&self.raw) else {
                    return Ok(false);
                };
                if self.raw.len() < FRAME_HEADER_LEN + len {
                    return Ok(false);
                }
                let frame = self.raw.split_to(FRAME_HEADER_LEN + len);
                self.frame(frame)?;
                Ok(true)
            }
        }
    }

    fn frame(&mut self, frame: BytesMut) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        match &mut self.mode {
            Mode::Inspect(decoder) => {
                if kind != TYPE_HEADERS {
                    self.ready.unsplit(frame);
                    return Ok(());
                }
                // The first request decides for the whole connection: gRPC clients use one
                // authority per connection.
                let fields = match (flags & FLAG_END_HEADERS != 0)
                    .then(|| headers_payload(&frame[FRAME_HEADER_LEN..], flags))
                    .flatten()
                {
                    Some((_, block)) => decoder.decode(block).ok(),
                    None => None,
                };
                let needs_fix = fields.as_ref().is_some_and(|f| {
                    f.iter()
                        .any(|(n, v)| n.as_slice() == AUTHORITY && !is_authority(v))
                });
                if !needs_fix {
                    self.mode = Mode::Passthrough;
                    self.ready.unsplit(frame);
                    return Ok(());
                }
                let decoder = match std::mem::replace(&mut self.mode, Mode::Passthrough) {
                    Mode::Inspect(d) => *d,
                    _ => return Err(invalid("authority repair lost its decoder")),
                };
                let mut rewriter = Rewriter {
                    decoder,
                    encoder: hpack::Encoder::new(),
                    pending: None,
                };
                let priority =
                    headers_payload(&frame[FRAME_HEADER_LEN..], flags).and_then(|(p, _)| p);
                let fields = fields.unwrap_or_default();
                tracing::debug!(
                    "client sent an HTTP/2 :authority that is not one; repairing this connection"
                );
                rewriter.emit(&mut self.ready, stream, flags, priority, fields);
                self.mode = Mode::Rewrite(Box::new(rewriter));
                Ok(())
            }
            Mode::Rewrite(rw) => rw.frame(&mut self.ready, frame, kind, flags, stream),
            Mode::Preface | Mode::Passthrough => {
                self.ready.unsplit(frame);
                Ok(())
            }
        }
    }
}

impl Rewriter {
    fn frame(
        &mut self,
        out: &mut BytesMut,
        frame: BytesMut,
        kind: u8,
        flags: u8,
        stream: u32,
    ) -> io::Result<()> {
        let payload = &frame[FRAME_HEADER_LEN..];
        match kind {
            TYPE_HEADERS => {
                if self.pending.is_some() {
                    return Err(invalid("HEADERS frame inside a header block"));
                }
                let (priority, block) = headers_payload(payload, flags)
                    .ok_or_else(|| invalid("malformed HEADERS frame"))?;
                if flags & FLAG_END_HEADERS == 0 {
                    self.pending = Some(PendingBlock {
                        stream,
                        flags,
                        priority,
                        block: block.to_vec(),
                    });
                    return Ok(());
                }
                self.finish(out, stream, flags, priority, block)
            }
            TYPE_CONTINUATION => {
                let Some(PendingBlock {
                    stream: id,
                    flags: hflags,
                    priority,
                    mut block,
                }) = self.pending.take()
                else {
                    // Not ours to judge; h2 rejects a stray CONTINUATION itself.
                    out.unsplit(frame);
                    return Ok(());
                };
                if id != stream {
                    return Err(invalid("CONTINUATION for another stream"));
                }
                block.extend_from_slice(payload);
                if block.len() > MAX_BLOCK {
                    return Err(invalid("header block too large"));
                }
                if flags & FLAG_END_HEADERS == 0 {
                    self.pending = Some(PendingBlock {
                        stream: id,
                        flags: hflags,
                        priority,
                        block,
                    });
                    return Ok(());
                }
                self.finish(out, id, hflags, priority, &block)
            }
            _ => {
                out.unsplit(frame);
                Ok(())
            }
        }
    }

    fn finish(
        &mut self,
        out: &mut BytesMut,
        stream: u32,
        flags: u8,
        priority: Option<[u8; 5]>,
        block: &[u8],
    ) -> io::Result<()> {
        // Once the two tables are apart there is no way back to pass-through: a block the
        // decoder cannot read ends the connection.
        let fields = self
            .decoder
            .decode(block)
            .map_err(|e| invalid(&format!("undecodable header block: {e:?}")))?;
        self.emit(out, stream, flags, priority, fields);
        Ok(())
    }

    /// Encodes `fields` with the authority repaired and writes HEADERS (+ CONTINUATION)
    /// frames for them.
    fn emit(
        &mut self,
        out: &mut BytesMut,
        stream: u32,
        flags: u8,
        priority: Option<[u8; 5]>,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let mut kept: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            if name.as_slice() != AUTHORITY || is_authority(&value) {
                kept.push((name, value));
            } else if let Some(fixed) = repair(&value) {
                kept.push((name, fixed));
            }
            // else: no usable authority; a request without one is valid HTTP/2.
        }
        let block = self
            .encoder
            .encode(kept.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = true;
        let mut rest: &[u8] = &block;
        loop {
            let prio_len = if first && priority.is_some() { 5 } else { 0 };
            let take = rest.len().min(MAX_FRAME - prio_len);
            let (chunk, tail) = rest.split_at(take);
            let last = tail.is_empty();
            let (kind, mut f) = if first {
                (
                    TYPE_HEADERS,
                    flags & FLAG_END_STREAM | if prio_len > 0 { FLAG_PRIORITY } else { 0 },
                )
            } else {
                (TYPE_CONTINUATION, 0)
            };
            if last {
                f |= FLAG_END_HEADERS;
            }
            let len = chunk.len() + prio_len;
            out.put_uint(len as u64, 3);
            out.put_u8(kind);
            out.put_u8(f);
            out.put_u32(stream);
            if let (true, Some(p)) = (prio_len > 0, priority) {
                out.put_slice(&p);
            }
            out.put_slice(chunk);
            first = false;
            rest = tail;
            if last {
                break;
            }
        }
    }
}

fn frame_len(raw: &[u8]) -> Option<usize> {
    (raw.len() >= FRAME_HEADER_LEN)
        .then(|| (usize::from(raw[0]) << 16) | (usize::from(raw[1]) << 8) | usize::from(raw[2]))
}

/// Splits a HEADERS payload into its priority bytes and header block fragment, dropping
/// padding. None when the lengths do not add up.
fn headers_payload(payload: &[u8], flags: u8) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let bytes: [u8; 5] = p.get(..5)?.try_into().ok()?;
        priority = Some(bytes);
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

fn is_authority(v: &[u8]) -> bool {
    !v.is_empty() && http::uri::Authority::try_from(v).is_ok()
}

/// `scheme://host:port[/...]` → `host:port`; None when nothing usable is left.
fn repair(v: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(v).ok()?;
    let after = s.rsplit_once("://").map_or(s, |(_, rest)| rest);
    let host = after.split('/').next().unwrap_or_default();
    is_authority(host.as_bytes()).then(|| host.as_bytes().to_vec())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Passthrough) && this.raw.is_empty() {
                // The common case after the first request: no copies.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.process()? {
                continue;
            }
            if this.eof {
                // A truncated frame at EOF: hand it over as it is; h2 reports it.
                if this.raw.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.mode = Mode::Passthrough;
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
        f.push(TYPE_HEADERS);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(block);
        f
    }

    fn request(path: &str, authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// Runs `input` through the layer and decodes the header blocks h2 would see.
    async fn through(input: Vec<u8>) -> (Vec<u8>, Vec<Vec<(Vec<u8>, Vec<u8>)>>) {
        let mut fix = AuthorityFix::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.expect("read");
        let mut dec = hpack::Decoder::new();
        let mut blocks = Vec::new();
        if !out.starts_with(PREFACE) {
            return (out, blocks);
        }
        let mut rest = &out[PREFACE.len()..];
        while let Some(len) = frame_len(rest).filter(|l| FRAME_HEADER_LEN + l <= rest.len()) {
            let (frame, tail) = rest.split_at(FRAME_HEADER_LEN + len);
            if frame[3] == TYPE_HEADERS {
                // Blocks passed through untouched may be anything; only good ones count.
                if let Some(Ok(fields)) = headers_payload(&frame[FRAME_HEADER_LEN..], frame[4])
                    .map(|(_, block)| dec.decode(block))
                {
                    blocks.push(fields);
                }
            }
            rest = tail;
        }
        (out, blocks)
    }

    fn authority_of(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<String> {
        fields
            .iter()
            .find(|(n, _)| n.as_slice() == AUTHORITY)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    #[tokio::test]
    async fn url_authority_is_repaired_on_every_request_of_the_connection() {
        let mut enc = hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        // A SETTINGS frame first, as clients send it; it must go through as it is.
        input.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        for (i, path) in ["/a/Status", "/a/Status", "/a/Range"].iter().enumerate() {
            let req = request(path, "http://127.0.0.1:2379");
            let block = enc.encode(req.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            input.extend(headers_frame(1 + 2 * i as u32, FLAG_END_HEADERS, &block));
        }
        let (out, blocks) = through(input).await;
        assert_eq!(
            &out[PREFACE.len()..PREFACE.len() + 9],
            &[0, 0, 0, 4, 0, 0, 0, 0, 0]
        );
        assert_eq!(blocks.len(), 3);
        for b in &blocks {
            assert_eq!(authority_of(b).as_deref(), Some("127.0.0.1:2379"));
        }
        assert_eq!(blocks[2][2].1, b"/a/Range".to_vec());
    }

    #[tokio::test]
    async fn hopeless_authority_is_dropped() {
        let mut enc = hpack::Encoder::new();
        let req = request("/a/Status", "#initially=[http://h:1]/x y");
        let block = enc.encode(req.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS | FLAG_END_STREAM, &block));
        let (out, blocks) = through(input).await;
        assert_eq!(authority_of(&blocks[0]), None);
        assert_eq!(out[PREFACE.len() + 4], FLAG_END_HEADERS | FLAG_END_STREAM);
    }

    #[tokio::test]
    async fn valid_authority_and_non_h2_pass_through_untouched() {
        let mut enc = hpack::Encoder::new();
        let req = request("/a/Status", "127.0.0.1:2379");
        let block = enc.encode(req.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, FLAG_END_HEADERS, &block));
        input.extend(headers_frame(3, FLAG_END_HEADERS, &[0xff, 0xff]));
        let (out, _) = through(input.clone()).await;
        assert_eq!(out, input);

        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let (out, _) = through(http1.clone()).await;
        assert_eq!(out, http1);
    }

    #[tokio::test]
    async fn continuation_frames_are_joined() {
        let mut enc = hpack::Encoder::new();
        let mut req = request("/a/Status", "https://example.com:2379");
        req.push((b"x-big".to_vec(), vec![b'v'; 20_000]));
        let first = request("/a/Status", "https://example.com:2379");
        let mut input = PREFACE.to_vec();
        let b1 = enc.encode(first.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        input.extend(headers_frame(1, FLAG_END_HEADERS, &b1));
        let block = enc.encode(req.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let (head, tail) = block.split_at(100);
        input.extend(headers_frame(3, 0, head));
        let mut cont = headers_frame(3, FLAG_END_HEADERS, tail);
        cont[3] = TYPE_CONTINUATION;
        input.extend(cont);
        let mut fix = AuthorityFix::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.expect("read");
        // Rebuild each block from its HEADERS + CONTINUATION frames and decode it.
        let mut rest = &out[PREFACE.len()..];
        let mut dec = hpack::Decoder::new();
        let mut block = Vec::new();
        let mut decoded = Vec::new();
        while let Some(len) = frame_len(rest) {
            let (frame, tail) = rest.split_at(FRAME_HEADER_LEN + len);
            assert!(len <= MAX_FRAME);
            block.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
            if frame[4] & FLAG_END_HEADERS != 0 {
                decoded.push(dec.decode(&block).expect("decodes"));
                block.clear();
            }
            rest = tail;
        }
        assert_eq!(decoded.len(), 2);
        for fields in &decoded {
            assert_eq!(authority_of(fields).as_deref(), Some("example.com:2379"));
        }
        assert_eq!(decoded[1].last().map(|f| f.1.len()), Some(20_000));
    }
}
