//! The gateway's wire format: proto3 JSON bodies in and out (the serde impls generated in
//! `ferrokv-proto` with etcd's grpc-gateway settings), gRPC status → HTTP status, etcd's
//! error bodies, and the length-prefixed gRPC frames that feed a JSON request stream into a
//! gRPC streaming handler.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

/// The response of one gateway call.
pub type HttpResponse = ::http::Response<tonic::body::Body>;

/// The HTTP status grpc-gateway (v2, as in etcd 3.6) answers for a gRPC code.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        // Not a standard HTTP status; grpc-gateway uses nginx's "client closed request".
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

/// etcd's error body: the status as `google.rpc.Status` in JSON, empty `details` omitted.
pub fn status_json(status: &Status) -> serde_json::Value {
    serde_json::json!({ "code": status.code() as i32, "message": status.message() })
}

/// A whole-body JSON error reply.
pub fn error_response(status: &Status) -> HttpResponse {
    json_response(
        http_status(status.code()),
        status_json(status).to_string().into_bytes(),
        false,
    )
}

/// The one stream line grpc-gateway writes for an error: `{"error":{...}}`.
pub fn error_line(status: &Status) -> Bytes {
    let mut line = serde_json::json!({ "error": status_json(status) }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The one stream line of a message: `{"result":{...}}`.
pub fn result_line<T: Serialize>(msg: &T) -> Result<Bytes, Status> {
    #[derive(Serialize)]
    struct Line<'a, T> {
        result: &'a T,
    }
    let mut line = serde_json::to_vec(&Line { result: msg })
        .map_err(|e| Status::internal(format!("encoding the response: {e}")))?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(msg).map_err(|e| Status::internal(format!("encoding the response: {e}")))
}

/// A unary request body. An empty body is the empty message, as grpc-gateway reads it (it
/// treats EOF as "no fields"); anything else must be one JSON object.
pub fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A JSON response with the headers etcd's gateway sends; `grpc_ok` adds the
/// `Grpc-Metadata-Content-Type` header grpc-gateway copies from a successful call's metadata.
pub fn json_response(status: u16, body: Vec<u8>, grpc_ok: bool) -> HttpResponse {
    let mut b = ::http::Response::builder()
        .status(status)
        .header(::http::header::CONTENT_TYPE, "application/json");
    if grpc_ok {
        b = b.header("grpc-metadata-content-type", "application/grpc");
    }
    b.body(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from(body),
    )))
    .unwrap_or_default()
}

/// One message as an uncompressed gRPC frame (flag byte, big-endian length, protobuf).
pub fn grpc_frame<T: prost::Message>(msg: &T) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    // A decoded JSON object larger than 4 GiB cannot reach here: request bodies are bounded.
    b.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    msg.encode_raw(&mut b);
    b.freeze()
}

/// Splits the JSON objects a streaming request body carries, as they arrive: `feed` the
/// body's bytes, then `next` yields every complete object. grpc-gateway reads such bodies
/// with a JSON decoder, so objects may be separated by whitespace or nothing at all.
#[derive(Default)]
pub struct JsonStream {
    buf: Vec<u8>,
}

impl JsonStream {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete object, `Ok(None)` when more bytes are needed, or the parse error
    /// that ends the stream.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, serde_json::Error> {
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<T>();
        match it.next() {
            Some(Ok(v)) => {
                let used = it.byte_offset();
                self.buf.drain(..used);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(e),
            None => {
                self.buf.clear();
                Ok(None)
            }
        }
    }

    /// Whether only whitespace is left (a clean end of the body).
    pub fn is_drained(&self) -> bool {
        self.buf.iter().all(u8::is_ascii_whitespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_proto::etcdserverpb::{PutRequest, RangeResponse, ResponseHeader, WatchRequest};
    use ferrokv_proto::mvccpb::KeyValue;

    #[test]
    fn bodies_use_etcds_json_mapping() {
        let put: PutRequest = decode(br#"{"key":"Zm9v","value":"YmFy","lease":"7"}"#).unwrap();
        assert_eq!(put.key, b"foo");
        assert_eq!(put.value, b"bar");
        assert_eq!(put.lease, 7);
        // Unknown fields are dropped, numbers may be plain numbers, empty body = empty message.
        let put: PutRequest = decode(br#"{"key":"Zm9v","lease":7,"bogus":1}"#).unwrap();
        assert_eq!(put.lease, 7);
        assert_eq!(decode::<PutRequest>(b" ").unwrap(), PutRequest::default());
        let err = decode::<PutRequest>(b"nope").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 0,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            String::from_utf8(encode(&resp).unwrap()).unwrap(),
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn errors_look_like_etcds() {
        let st = Status::invalid_argument("etcdserver: key is not provided");
        assert_eq!(
            status_json(&st).to_string(),
            r#"{"code":3,"message":"etcdserver: key is not provided"}"#
        );
        assert_eq!(http_status(Code::OutOfRange), 400);
        assert_eq!(http_status(Code::Unavailable), 503);
        assert_eq!(
            &error_line(&Status::unavailable("etcdserver: no leader"))[..],
            b"{\"error\":{\"code\":14,\"message\":\"etcdserver: no leader\"}}\n"
        );
    }

    #[test]
    fn request_streams_split_into_objects() {
        let mut s = JsonStream::default();
        s.feed(br#"{"create_request":{"key":"Zm9v"}} {"cancel_re"#);
        let first: WatchRequest = s.next().unwrap().unwrap();
        assert!(first.request_union.is_some());
        assert!(s.next::<WatchRequest>().unwrap().is_none());
        s.feed(br#"quest":{"watch_id":"1"}}"#);
        assert!(s.next::<WatchRequest>().unwrap().is_some());
        assert!(s.next::<WatchRequest>().unwrap().is_none());
        assert!(s.is_drained());
        s.feed(b"xx");
        assert!(s.next::<WatchRequest>().is_err());
    }
}
