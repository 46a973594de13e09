//! The etcd `Watch` gRPC service: a thin async shell around the hub. Each stream has one task
//! reading client requests into the hub and one response stream that tonic polls; the response
//! stream pops the stream's queue, runs catch-up reads off the runtime, and otherwise waits, so
//! a client that does not read only stops its own stream.

use std::pin::Pin;
use std::sync::Arc;

use ferrokv_proto::etcdserverpb::watch_request::RequestUnion;
use ferrokv_proto::etcdserverpb::watch_server::Watch;
use ferrokv_proto::etcdserverpb::{WatchRequest, WatchResponse};
use futures::Stream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::hub::{Next, WatchHub};
use crate::header::HeaderSource;

/// The error etcd ends a `hasleader=true` stream with while the member has no leader.
fn no_leader() -> Status {
    Status::from(crate::error::Error::NoLeader)
}

/// Decides whether a stream's caller may watch `[key, range_end)`; `Err` carries the cancel
/// reason.
pub type WatchCheck = Box<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send>;
/// Makes the [`WatchCheck`] of a stream from its request (metadata, TLS connection info) when
/// the stream opens. Set by the node.
pub type WatchAuthorizer =
    Arc<dyn Fn(&tonic::metadata::MetadataMap, &tonic::Extensions) -> WatchCheck + Send + Sync>;

/// The gRPC Watch service; register it with `WatchServer::new(service)`.
pub struct WatchService {
    hub: Arc<WatchHub>,
    header: HeaderSource,
    has_leader: watch::Receiver<bool>,
    /// False once open `hasleader=true` streams are to be canceled; by default the same
    /// signal as `has_leader`, see [`WatchService::cancel_streams_with`].
    keep_streams: watch::Receiver<bool>,
    authorize: Option<WatchAuthorizer>,
}

impl WatchService {
    /// Cancels open `hasleader=true` streams when `keep` turns false, instead of the moment
    /// the leader is unknown. etcd refuses new such streams at once but cancels open ones
    /// only after about three election timeouts without a leader (its `monitorLeader`):
    /// re-watching and relisting costs a client far more than a refused request.
    pub fn cancel_streams_with(mut self, keep: watch::Receiver<bool>) -> Self {
        self.keep_streams = keep;
        self
    }

    /// Checks every create request of a stream with `authorize` (etcd checks the range
    /// permission once, when the watch is created).
    pub fn with_authorizer(mut self, authorize: WatchAuthorizer) -> WatchService {
        self.authorize = Some(authorize);
        self
    }
}

impl WatchHub {
    /// The gRPC service; `has_leader` lets streams opened with metadata `hasleader=true` be
    /// canceled with "etcdserver: no leader" while the member has no leader.
    pub fn service(
        self: &Arc<Self>,
        header: HeaderSource,
        has_leader: watch::Receiver<bool>,
    ) -> WatchService {
        WatchService {
            hub: self.clone(),
            header,
            keep_streams: has_leader.clone(),
            has_leader,
            authorize: None,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    #[tracing::instrument(skip_all, name = "watch_stream")]
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = request
            .metadata()
            .get("hasleader")
            .and_then(|v| v.to_str().ok())
            == Some("true");
        if require_leader && !*self.has_leader.borrow() {
            return Err(no_leader());
        }
        // The token is the stream's: creates later on it are checked against it.
        let authorize = self
            .authorize
            .as_ref()
            .map(|a| a(request.metadata(), request.extensions()));
        let mut inbound = request.into_inner();
        let (stream, notify) = self.hub.open_stream();
        debug!(stream, require_leader, "watch stream opened");

        let hub = self.hub.clone();
        // The status a failed receive ends the stream with: etcd returns the receive error
        // (for bytes that do not decode, INTERNAL "grpc: failed to unmarshal ..."), it does
        // not end the stream as if the client had finished.
        let failed: Arc<std::sync::OnceLock<Status>> = Arc::default();
        let failed_rx = failed.clone();
        let receiver = tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(req)) => {
                        if let (Some(check), Some(RequestUnion::CreateRequest(c))) =
                            (&authorize, &req.request_union)
                        {
                            if let Err(reason) = check(&c.key, &c.range_end) {
                                hub.refuse_create(stream, &reason);
                                continue;
                            }
                        }
                        hub.handle_request(stream, req)
                    }
                    // A half-closed stream keeps delivering events, as in etcd.
                    Ok(None) => break,
                    Err(status) => {
                        debug!(stream, %status, "watch stream receive failed");
                        let _ = failed_rx.set(status);
                        hub.close_stream(stream);
                        break;
                    }
                }
            }
        });

        let interval = self.hub.progress_interval();
        let ticker = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(Instant::now() + interval, interval);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let sender = Sender {
            hub: self.hub.clone(),
            stream,
            notify,
            header: self.header.clone(),
            leader: require_leader.then(|| self.keep_streams.clone()),
            ticker,
            done: false,
            failed,
            _guard: StreamGuard {
                hub: self.hub.clone(),
                stream,
                receiver,
            },
        };
        let out = futures::stream::unfold(sender, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Removes the stream's watchers and stops its receiver when tonic drops the response stream
/// (client gone, connection closed, or stream finished).
struct StreamGuard {
    hub: Arc<WatchHub>,
    stream: u64,
    receiver: JoinHandle<()>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.receiver.abort();
        self.hub.close_stream(self.stream);
    }
}

struct Sender {
    hub: Arc<WatchHub>,
    stream: u64,
    notify: Arc<Notify>,
    header: HeaderSource,
    leader: Option<watch::Receiver<bool>>,
    ticker: Option<Interval>,
    done: bool,
    /// Set by the receiver when reading the client's side failed.
    failed: Arc<std::sync::OnceLock<Status>>,
    _guard: StreamGuard,
}

impl Sender {
    async fn next(&mut self) -> Option<Result<WatchResponse, Status>> {
        if self.done {
            return None;
        }
        loop {
            if self.leader.as_ref().is_some_and(|rx| !*rx.borrow()) {
                self.done = true;
                return Some(Err(no_leader()));
            }
            match self.hub.next(self.stream) {
                Next::Send(mut resp) => {
                    self.header.fill(&mut resp.header);
                    return Some(Ok(resp));
                }
                Next::CatchUp(job) => {
                    let hub = self.hub.clone();
                    let stream = self.stream;
                    // The store read is blocking I/O; keep it off the async workers.
                    let joined =
                        tokio::task::spawn_blocking(move || hub.catch_up(stream, job)).await;
                    if let Err(err) = joined {
                        warn!(stream, error = %err, "watch catch-up task failed");
                        self.done = true;
                        return Some(Err(Status::internal("watch catch-up failed")));
                    }
                }
                Next::Gone => {
                    self.done = true;
                    return self.failed.get().cloned().map(Err);
                }
                Next::Idle => {
                    let notify = self.notify.clone();
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = tick(&mut self.ticker) => self.hub.progress_tick(self.stream),
                        _ = leader_changed(&mut self.leader) => {}
                    }
                }
            }
        }
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves when the leader flag changes; never, when the stream did not ask for it or the
/// flag's owner is gone.
async fn leader_changed(leader: &mut Option<watch::Receiver<bool>>) {
    let Some(rx) = leader.as_mut() else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *leader = None;
    }
}
