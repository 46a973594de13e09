//! Streaming calls over the gateway (`/v3/watch`, `/v3/lease/keepalive`,
//! `/v3/maintenance/snapshot`), shaped as grpc-gateway shapes them: the request body is a
//! sequence of JSON objects fed into the gRPC handler as a `Streaming` of messages, and the
//! response is one line per message, `{"result":{...}}`, with an error as a last line
//! `{"error":{...}}`. Nothing is sent before the first message, so an error that comes first
//! is answered with its HTTP status instead of 200.

use std::convert::Infallible;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Codec;
use tonic::{Status, Streaming};

use super::codec::{error_line, error_response, grpc_frame, result_line, HttpResponse, JsonStream};

/// Frames of a streaming request body in flight between the JSON reader and the handler.
const REQUEST_QUEUE: usize = 16;

/// Turns a streaming HTTP request body into the `Streaming` a tonic handler reads. A task
/// reads the body, splits it into JSON objects and hands each over as a gRPC frame; a body
/// that stops being JSON ends the stream there (grpc-gateway half-closes the call then).
pub fn request_stream<T>(body: tonic::body::Body) -> Streaming<T>
where
    T: DeserializeOwned + prost::Message + Default + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(REQUEST_QUEUE);
    tokio::spawn(forward_objects::<T>(body, tx));
    let frames = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let decoder = tonic_prost::ProstCodec::<T, T>::default().decoder();
    Streaming::new_request(decoder, StreamBody::new(frames), None, None)
}

async fn forward_objects<T>(mut body: tonic::body::Body, tx: mpsc::Sender<Bytes>)
where
    T: DeserializeOwned + prost::Message + Default,
{
    let mut objects = JsonStream::default();
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "gateway request body failed");
                return;
            }
            None => break,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        objects.feed(&data);
        loop {
            match objects.next::<T>() {
                Ok(Some(msg)) => {
                    if tx.send(grpc_frame(&msg)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway request stream is not JSON; closing it");
                    return;
                }
            }
        }
    }
    if !objects.is_drained() {
        tracing::debug!("gateway request stream ended inside a JSON object");
    }
}

/// Answers a server stream as grpc-gateway does: waits for the first message to choose
/// between 200 and the error's status, then one line per message.
pub async fn response_stream<S, T>(called: Result<tonic::Response<S>, Status>) -> HttpResponse
where
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    T: Serialize + Send + 'static,
{
    let mut stream = match called {
        Ok(resp) => resp.into_inner(),
        Err(status) => return first_error(&status),
    };
    let first = match stream.next().await {
        Some(Ok(msg)) => match result_line(&msg) {
            Ok(line) => line,
            Err(status) => return first_error(&status),
        },
        Some(Err(status)) => return first_error(&status),
        None => Bytes::new(),
    };
    // After an error line the stream ends, as grpc-gateway stops forwarding there.
    let rest = stream
        .scan(false, |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            let line = match item.and_then(|msg| result_line(&msg)) {
                Ok(line) => line,
                Err(status) => {
                    *ended = true;
                    error_line(&status)
                }
            };
            futures::future::ready(Some(line))
        })
        .map(|line| Ok::<_, Infallible>(Frame::data(line)));
    let lines = futures::stream::once(futures::future::ready(Ok::<_, Infallible>(Frame::data(
        first,
    ))))
    .chain(rest);
    ::http::Response::builder()
        .status(200)
        .header(::http::header::CONTENT_TYPE, "application/json")
        .header("grpc-metadata-content-type", "application/grpc")
        .body(tonic::body::Body::new(StreamBody::new(lines)))
        .unwrap_or_default()
}

/// An error before any message: its HTTP status, and the error line as the whole body.
fn first_error(status: &Status) -> HttpResponse {
    let mut resp = error_response(status);
    *resp.body_mut() = tonic::body::Body::new(http_body_util::Full::new(error_line(status)));
    resp
}
