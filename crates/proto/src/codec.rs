//! The gRPC codec of every generated service: prost's encoding, and a decoder that fails the
//! way etcd (grpc-go with gogoproto's generated `Unmarshal`) fails on bad bytes, so a client
//! sees the same status from ferrokv as from etcd 3.6:
//!
//! - undecodable bytes: `INTERNAL` with grpc-go's prefix (`grpc: error unmarshalling request: `
//!   for a unary request, `grpc: failed to unmarshal the received message: ` for a stream
//!   message or a response) and gogo's error text after it, reproduced by [`gogo_check`]
//!   walking the message's descriptor as gogo's code walks the bytes;
//! - a `string` field that is not UTF-8: gogo does not check, etcd takes the bytes as they are
//!   and its own validation answers (for peer URLs "given member URLs are invalid"). A Rust
//!   `String` cannot hold such bytes, so they are replaced lossily (U+FFFD) and the request
//!   goes on to ferrokv's validation like any other.
//! - a txn nested deeper than [`MAX_NESTING`] messages is refused before prost recurses into
//!   it (prost is built without its recursion limit so that the depths etcd accepts decode):
//!   etcd refuses every txn nested more than 128 levels ("too many operations in txn
//!   request", its op budget shrinks by each level's ops), so that is the answer.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use bytes::Buf;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// Message nesting (each txn level is a `TxnRequest` and a `RequestOp`) beyond which a request
/// is refused undecoded. Far above the 2 × 128 + 2 levels of the deepest txn etcd accepts, far
/// below what would strain a 2 MiB stack in prost's recursive decode and drop.
pub const MAX_NESTING: usize = 600;

/// etcd's answer to a txn nested deeper than its op budget allows.
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

/// The codec the generated services and clients use (`codec_path` in build.rs).
#[derive(Debug, Clone)]
pub struct EtcdCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for EtcdCodec<T, U> {
    fn default() -> Self {
        EtcdCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for EtcdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = EtcdDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        EtcdDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, failing as etcd does (see the module docs).
#[derive(Debug)]
pub struct EtcdDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default + 'static> Decoder for EtcdDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        decode_as_etcd::<U>(&bytes).map(Some)
    }
}

/// Decodes `bytes` as `U` with etcd's outcome for bad input: the request or the status etcd 3.6
/// answers before its handlers run. Public so the fuzz harness checks exactly this path.
pub fn decode_as_etcd<U: Message + Default + 'static>(bytes: &[u8]) -> Result<U, Status> {
    let name = proto_name::<U>();
    let desc = name.as_deref().and_then(message);
    if let Some(d) = desc.filter(|d| d.recursive) {
        if nesting(d, bytes, 1).is_err() {
            return Err(Status::invalid_argument(TOO_MANY_OPS));
        }
    }
    let err = match U::decode(bytes) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    let prefix = match name.as_deref() {
        Some(n) if n.ends_with("Request") && !STREAMED.contains(&n) => {
            "grpc: error unmarshalling request: "
        }
        _ => "grpc: failed to unmarshal the received message: ",
    };
    let Some(desc) = desc else {
        return Err(Status::internal(format!("{prefix}{}", prost_text(&err))));
    };
    match gogo_check(desc, bytes, 1) {
        Err(Gogo::Error(text)) => Err(Status::internal(format!("{prefix}{text}"))),
        Err(Gogo::TooDeep) => Err(Status::invalid_argument(TOO_MANY_OPS)),
        Ok(repaired) => U::decode(repaired.as_slice())
            .map_err(|e| Status::internal(format!("{prefix}{}", prost_text(&e)))),
    }
}

/// Request types that arrive as stream messages (grpc-go words their decode failure as any
/// received message's).
const STREAMED: &[&str] = &[
    ".etcdserverpb.WatchRequest",
    ".etcdserverpb.LeaseKeepAliveRequest",
];

/// prost's error without its "failed to decode Protobuf message: " and field path.
fn prost_text(e: &prost::DecodeError) -> String {
    let s = e.to_string();
    let s = s
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&s);
    let last = s.rsplit(": ").next().unwrap_or(s);
    match last {
        "buffer underflow" => "unexpected EOF".to_string(),
        "invalid varint" => "proto: integer overflow".to_string(),
        other => format!("proto: {other}"),
    }
}

/// `.package.Message` of a generated type, from its Rust path (`ferrokv_proto::pkg::Message`).
fn proto_name<U>() -> Option<String> {
    let path = std::any::type_name::<U>();
    let mut parts = path.rsplit("::");
    let msg = parts.next()?;
    let pkg = parts.next()?;
    Some(format!(".{pkg}.{msg}"))
}

/// One message of the descriptor set, with what the walkers need.
struct Msg {
    /// gogo's name of the message in its errors (the short name).
    short: String,
    fields: HashMap<u32, Field>,
    /// Whether a chain of message fields leads back to this message (only those can nest
    /// without bound).
    recursive: bool,
}

struct Field {
    go_name: String,
    kind: Type,
    repeated: bool,
    /// The field's message type, for message fields.
    type_name: String,
}

fn messages() -> &'static HashMap<String, Msg> {
    static MSGS: OnceLock<HashMap<String, Msg>> = OnceLock::new();
    MSGS.get_or_init(|| {
        let set = FileDescriptorSet::decode(
            &include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..],
        )
        .unwrap_or_default();
        let mut out = HashMap::new();
        for file in &set.file {
            let pkg = file.package.clone().unwrap_or_default();
            for m in &file.message_type {
                add_message(&mut out, &format!(".{pkg}"), m);
            }
        }
        let names: Vec<String> = out.keys().cloned().collect();
        for n in names {
            let rec = reaches(&out, &n, &n, &mut Vec::new());
            if let Some(m) = out.get_mut(&n) {
                m.recursive = rec;
            }
        }
        out
    })
}

fn add_message(out: &mut HashMap<String, Msg>, scope: &str, m: &DescriptorProto) {
    let name = m.name.clone().unwrap_or_default();
    let full = format!("{scope}.{name}");
    let fields = m
        .field
        .iter()
        .map(|f: &FieldDescriptorProto| {
            (
                f.number.unwrap_or(0) as u32,
                Field {
                    go_name: camel_case(f.name.as_deref().unwrap_or("")),
                    kind: f.r#type(),
                    repeated: f.label() == Label::Repeated,
                    type_name: f.type_name.clone().unwrap_or_default(),
                },
            )
        })
        .collect();
    for nested in &m.nested_type {
        add_message(out, &full, nested);
    }
    out.insert(
        full,
        Msg {
            short: name,
            fields,
            recursive: false,
        },
    );
}

/// Whether `from`'s message fields lead to `target`.
fn reaches(all: &HashMap<String, Msg>, from: &str, target: &str, seen: &mut Vec<String>) -> bool {
    let Some(m) = all.get(from) else {
        return false;
    };
    for f in m.fields.values() {
        if f.kind != Type::Message {
            continue;
        }
        if f.type_name == target {
            return true;
        }
        if !seen.contains(&f.type_name) {
            seen.push(f.type_name.clone());
            if reaches(all, &f.type_name, target, seen) {
                return true;
            }
        }
    }
    false
}

fn message(name: &str) -> Option<&'static Msg> {
    messages().get(name)
}

/// protoc-gen-go's CamelCase: the Go field name gogo's errors use (`peerURLs` → `PeerURLs`,
/// `range_end` → `RangeEnd`).
fn camel_case(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    if b.first() == Some(&b'_') {
        out.push('X');
        i = 1;
    }
    while i < b.len() {
        let c = b[i];
        if c == b'_' && i + 1 < b.len() && b[i + 1].is_ascii_lowercase() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            out.push(c as char);
            i += 1;
            continue;
        }
        out.push(c.to_ascii_uppercase() as char);
        while i + 1 < b.len() && b[i + 1].is_ascii_lowercase() {
            i += 1;
            out.push(b[i] as char);
        }
        i += 1;
    }
    out
}

/// Why gogo's walk stopped.
enum Gogo {
    /// gogo's error text.
    Error(String),
    /// Nested deeper than [`MAX_NESTING`].
    TooDeep,
}

const EOF: &str = "unexpected EOF";
const OVERFLOW: &str = "proto: integer overflow";
const NEG_LEN: &str = "proto: negative length found during unmarshaling";

fn err<T>(s: impl Into<String>) -> Result<T, Gogo> {
    Err(Gogo::Error(s.into()))
}

/// gogo's varint loop: at most 10 bytes, `unexpected EOF` when the bytes end first.
fn varint(b: &[u8], i: &mut usize) -> Result<u64, Gogo> {
    let mut v: u64 = 0;
    let mut shift = 0u32;
    loop {
        if shift >= 64 {
            return err(OVERFLOW);
        }
        let Some(&byte) = b.get(*i) else {
            return err(EOF);
        };
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
        shift += 7;
    }
}

/// The end of a length-delimited payload starting at `i` with length `len` (a Go `int`).
fn payload_end(b: &[u8], i: usize, len: u64) -> Result<usize, Gogo> {
    if (len as i64) < 0 {
        return err(NEG_LEN);
    }
    let end = i
        .checked_add(len as usize)
        .ok_or(Gogo::Error(NEG_LEN.into()))?;
    if end > b.len() {
        return err(EOF);
    }
    Ok(end)
}

/// gogo's `skipRpc`: the length of the unknown field at the start of `b`.
fn skip(b: &[u8]) -> Result<usize, Gogo> {
    let mut i = 0usize;
    let mut depth = 0u32;
    while i < b.len() {
        let wire = varint(b, &mut i)? & 7;
        match wire {
            0 => {
                varint(b, &mut i)?;
            }
            1 => i = i.saturating_add(8),
            2 => {
                let len = varint(b, &mut i)?;
                if (len as i64) < 0 {
                    return err(NEG_LEN);
                }
                i = i.saturating_add(len as usize);
            }
            3 => depth += 1,
            4 => {
                if depth == 0 {
                    return err("proto: unexpected end of group");
                }
                depth -= 1;
            }
            5 => i = i.saturating_add(4),
            w => return err(format!("proto: illegal wireType {w}")),
        }
        if depth == 0 {
            return Ok(i);
        }
    }
    err(EOF)
}

/// Walks `b` as gogo's generated `Unmarshal` of `m` does and returns its first error, or the
/// message re-encoded with every non-UTF-8 `string` made valid (lossily).
fn gogo_check(m: &Msg, b: &[u8], depth: usize) -> Result<Vec<u8>, Gogo> {
    if depth > MAX_NESTING {
        return Err(Gogo::TooDeep);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0usize;
    while i < b.len() {
        let start = i;
        let tag = varint(b, &mut i)?;
        let num = (tag >> 3) as i32;
        let wire = (tag & 7) as u8;
        if wire == 4 {
            return err(format!(
                "proto: {}: wiretype end group for non-group",
                m.short
            ));
        }
        if num <= 0 {
            return err(format!(
                "proto: {}: illegal tag {num} (wire type {wire})",
                m.short
            ));
        }
        let Some(f) = m.fields.get(&(num as u32)) else {
            let n = skip(&b[start..])?;
            let end = start.checked_add(n).ok_or(Gogo::Error(NEG_LEN.into()))?;
            if end > b.len() {
                return err(EOF);
            }
            out.extend_from_slice(&b[start..end]);
            i = end;
            continue;
        };
        let want = match f.kind {
            Type::Double | Type::Fixed64 | Type::Sfixed64 => 1,
            Type::Float | Type::Fixed32 | Type::Sfixed32 => 5,
            Type::String | Type::Bytes | Type::Message | Type::Group => 2,
            _ => 0,
        };
        let packed = f.repeated && want != 2 && wire == 2;
        if wire != want && !packed {
            return err(format!(
                "proto: wrong wireType = {wire} for field {}",
                f.go_name
            ));
        }
        match wire {
            0 => {
                varint(b, &mut i)?;
                out.extend_from_slice(&b[start..i]);
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if i + n > b.len() {
                    return err(EOF);
                }
                i += n;
                out.extend_from_slice(&b[start..i]);
            }
            _ => {
                let len = varint(b, &mut i)?;
                let end = payload_end(b, i, len)?;
                let body = &b[i..end];
                let fixed: Vec<u8> = match f.kind {
                    Type::String => match std::str::from_utf8(body) {
                        Ok(_) => body.to_vec(),
                        Err(_) => String::from_utf8_lossy(body).into_owned().into_bytes(),
                    },
                    Type::Message => match message(&f.type_name) {
                        Some(sub) => gogo_check(sub, body, depth + 1)?,
                        None => body.to_vec(),
                    },
                    _ => body.to_vec(),
                };
                prost::encoding::encode_key(
                    num as u32,
                    prost::encoding::WireType::LengthDelimited,
                    &mut out,
                );
                prost::encoding::encode_varint(fixed.len() as u64, &mut out);
                out.extend_from_slice(&fixed);
                i = end;
            }
        }
    }
    Ok(out)
}

/// Fails when `b`, as message `m`, nests messages deeper than [`MAX_NESTING`]; anything else
/// wrong with the bytes is left to the decode.
fn nesting(m: &Msg, b: &[u8], depth: usize) -> Result<(), ()> {
    if depth > MAX_NESTING {
        return Err(());
    }
    let mut i = 0usize;
    while i < b.len() {
        let Ok(tag) = varint(b, &mut i) else {
            return Ok(());
        };
        let ok = match tag & 7 {
            0 => varint(b, &mut i).is_ok(),
            1 => {
                i = i.saturating_add(8);
                true
            }
            5 => {
                i = i.saturating_add(4);
                true
            }
            2 => {
                let Ok(len) = varint(b, &mut i) else {
                    return Ok(());
                };
                let Ok(end) = payload_end(b, i, len) else {
                    return Ok(());
                };
                if let Some(sub) = m
                    .fields
                    .get(&((tag >> 3) as u32))
                    .filter(|f| f.kind == Type::Message)
                    .and_then(|f| message(&f.type_name))
                {
                    nesting(sub, &b[i..end], depth + 1)?;
                }
                i = end;
                true
            }
            _ => false,
        };
        if !ok {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::{LeaseKeepAliveRequest, MemberAddRequest, WatchRequest};

    #[test]
    fn gogo_texts() {
        let e = decode_as_etcd::<WatchRequest>(&[0x07, 0x01]).unwrap_err();
        assert_eq!(
            e.message(),
            "grpc: failed to unmarshal the received message: proto: WatchRequest: illegal tag 0 (wire type 7)"
        );
        let e = decode_as_etcd::<LeaseKeepAliveRequest>(&[0x0a, 0x05, 0x01]).unwrap_err();
        assert_eq!(
            e.message(),
            "grpc: failed to unmarshal the received message: proto: wrong wireType = 2 for field ID"
        );
        let m = decode_as_etcd::<MemberAddRequest>(&[0x0a, 2, 0xff, 0xfe]).unwrap();
        assert_eq!(m.peer_ur_ls, vec!["\u{fffd}\u{fffd}".to_string()]);
        assert_eq!(camel_case("peerURLs"), "PeerURLs");
        assert_eq!(camel_case("range_end"), "RangeEnd");
        assert_eq!(camel_case("ID"), "ID");
    }
}
