//! The synchronous core of watch delivery: watchers, per-stream response queues, publish,
//! catch-up bookkeeping and progress. No async and no gRPC here, so every rule is unit-tested
//! by calling these functions directly; `service.rs` is the thin async shell around it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ferrokv_proto::etcdserverpb::watch_create_request::FilterType;
use ferrokv_proto::etcdserverpb::watch_request::RequestUnion;
use ferrokv_proto::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use ferrokv_proto::mvccpb::event::EventType;
use ferrokv_proto::mvccpb::Event;
use prost::Message;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::source::{EventSource, WatchSourceError};

/// etcd's default `--max-request-bytes` (1.5 MiB): the size above which a response of a
/// watcher that asked for `fragment` is split.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The watch id etcd puts on progress responses that belong to no single watcher.
const PROGRESS_WATCH_ID: i64 = -1;

// Cancel reasons the etcd client shows to users; the text is etcd's.
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// Sizes that bound what the hub holds for slow clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Responses of `fragment` watchers larger than this are split.
    pub max_response_bytes: usize,
    /// Byte budget of one stream's queue. A publish that finds the queue at or above it turns
    /// the watchers it would feed into unsynced ones, which later catch up from the store; so a
    /// slow client costs memory bounded by roughly this plus one batch, never a blocked publish.
    pub max_pending_bytes: usize,
    /// Revisions one catch-up read may return (etcd reads 1000 per round too).
    pub catch_up_max_revisions: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            max_response_bytes: MAX_REQUEST_BYTES,
            max_pending_bytes: 8 << 20,
            catch_up_max_revisions: 1000,
        }
    }
}

/// All watchers of all Watch streams of this member.
pub struct WatchHub {
    source: Arc<dyn EventSource>,
    progress_interval: Duration,
    limits: WatchLimits,
    state: Mutex<HubState>,
}

struct HubState {
    /// The revision of the last `publish`: every event up to it has been handed to the synced
    /// watchers. It is what "current revision" means for watch replies, because an event the
    /// store committed but the hub has not yet seen must not be promised as delivered.
    published: i64,
    next_stream: u64,
    next_serial: u64,
    streams: HashMap<u64, StreamState>,
}

struct StreamState {
    watchers: BTreeMap<i64, Watcher>,
    /// etcd's auto id: the lowest free id at or above this.
    next_watch_id: i64,
    /// Responses with their encoded size (counted once, for the byte budget).
    queue: VecDeque<(WatchResponse, usize)>,
    queued_bytes: usize,
    /// A progress request waits until every watcher of the stream is synced.
    progress_requested: bool,
    notify: Arc<Notify>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRange {
    Single(Vec<u8>),
    /// `range_end = "\0"`: every key >= the key.
    FromKey(Vec<u8>),
    /// `[key, end)`.
    Range(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    /// The same range rules as Range; an empty key means "\0", the smallest key, as in etcd.
    fn from_request(key: &[u8], range_end: &[u8]) -> Self {
        let key = if key.is_empty() {
            vec![0]
        } else {
            key.to_vec()
        };
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::FromKey(key),
            end => KeyRange::Range(key, end.to_vec()),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Range(k, e) if k >= e)
    }

    fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => k == key.as_slice(),
            KeyRange::FromKey(key) => k >= key.as_slice(),
            KeyRange::Range(key, end) => k >= key.as_slice() && k < end.as_slice(),
        }
    }

    /// The range in etcd wire form, for the store.
    fn wire(&self) -> (&[u8], &[u8]) {
        match self {
            KeyRange::Single(key) => (key, b""),
            KeyRange::FromKey(key) => (key, b"\0"),
            KeyRange::Range(key, end) => (key, end),
        }
    }
}

#[derive(Debug)]
struct Watcher {
    /// Hub-unique, so a catch-up result is never applied to a newer watcher that reused the id.
    serial: u64,
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// The first revision not yet delivered (or queued) to the client.
    next_rev: i64,
    synced: bool,
    /// Events were queued since the last progress tick (etcd skips the notify then).
    active: bool,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        let is_delete = ev.r#type == EventType::Delete as i32;
        if (is_delete && self.no_delete) || (!is_delete && self.no_put) {
            return false;
        }
        ev.kv
            .as_ref()
            .is_some_and(|kv| self.range.contains(&kv.key))
    }

    /// The events of `events` this watcher gets, shaped for it.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|ev| event_revision(ev) >= self.next_rev && self.wants(ev))
            .map(|ev| {
                let mut ev = ev.clone();
                if !self.prev_kv {
                    ev.prev_kv = None;
                }
                ev
            })
            .collect()
    }
}

/// The revision an event happened at (a delete's kv carries the delete revision).
fn event_revision(ev: &Event) -> i64 {
    ev.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// What a stream's sender should do next.
pub(crate) enum Next {
    Send(WatchResponse),
    CatchUp(CatchUpJob),
    Idle,
    /// The stream was closed (its client is gone).
    Gone,
}

/// One bounded read of past events for one unsynced watcher; run outside the hub lock.
#[derive(Debug, Clone)]
pub(crate) struct CatchUpJob {
    watch_id: i64,
    serial: u64,
    start_rev: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
}

impl StreamState {
    fn push(&mut self, resp: WatchResponse) {
        let size = resp.encoded_len();
        self.queued_bytes += size;
        self.queue.push_back((resp, size));
        self.notify.notify_one();
    }

    fn all_synced(&self) -> bool {
        self.watchers.values().all(|w| w.synced)
    }

    /// Sends a deferred progress response once nothing is behind any more.
    fn answer_progress_if_synced(&mut self, published: i64) {
        if self.progress_requested && self.all_synced() {
            self.progress_requested = false;
            self.push(WatchResponse {
                header: header(published),
                watch_id: PROGRESS_WATCH_ID,
                ..Default::default()
            });
        }
    }

    /// Queues `events` for one watcher. Whole revisions are packed into responses of less than
    /// `max_bytes` (a catch-up of many revisions must not make one message the client cannot
    /// decode); one revision is never split across responses unless the watcher asked for
    /// fragments and the revision alone is too large.
    fn push_events(
        &mut self,
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
        fragment: bool,
        max_bytes: usize,
    ) {
        let template = WatchResponse {
            header: header(revision),
            watch_id,
            ..Default::default()
        };
        let base = template.encoded_len() + 8;
        let mut batch: Vec<Event> = Vec::new();
        let mut batch_size = base;
        let mut events = events.into_iter().peekable();
        while let Some(first) = events.next() {
            let rev = event_revision(&first);
            let mut one_rev = vec![first];
            while let Some(ev) = events.next_if(|ev| event_revision(ev) == rev) {
                one_rev.push(ev);
            }
            let size: usize = one_rev.iter().map(event_wire_size).sum();
            if !batch.is_empty() && batch_size + size >= max_bytes {
                self.push(WatchResponse {
                    events: std::mem::take(&mut batch),
                    ..template.clone()
                });
                batch_size = base;
            }
            if base + size >= max_bytes && fragment && one_rev.len() > 1 {
                let resp = WatchResponse {
                    events: one_rev,
                    ..template.clone()
                };
                for part in split_fragments(resp, max_bytes) {
                    self.push(part);
                }
            } else {
                batch_size += size;
                batch.extend(one_rev);
            }
        }
        if !batch.is_empty() {
            self.push(WatchResponse {
                events: batch,
                ..template
            });
        }
    }
}

/// Bytes an event adds to a WatchResponse: tag of field 11, length prefix, body.
fn event_wire_size(ev: &Event) -> usize {
    let len = ev.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// etcd's fragmentation: fill each part until one more event would reach `max_bytes` (a part
/// always holds at least one event); `fragment = true` on all parts but the last.
fn split_fragments(mut resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    let events = std::mem::take(&mut resp.events);
    resp.fragment = true;
    let base = resp.encoded_len();
    let mut parts = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut size = base;
    for ev in events {
        let ev_size = event_wire_size(&ev);
        if !cur.is_empty() && size + ev_size >= max_bytes {
            let mut part = resp.clone();
            part.events = std::mem::take(&mut cur);
            parts.push(part);
            size = base;
        }
        size += ev_size;
        cur.push(ev);
    }
    let mut last = resp;
    last.events = cur;
    last.fragment = false;
    parts.push(last);
    parts
}

impl WatchHub {
    /// A hub whose "now" starts at the source's current revision.
    pub fn new(source: Arc<dyn EventSource>, progress_interval: Duration) -> Arc<WatchHub> {
        Self::with_limits(source, progress_interval, WatchLimits::default())
    }

    pub fn with_limits(
        source: Arc<dyn EventSource>,
        progress_interval: Duration,
        limits: WatchLimits,
    ) -> Arc<WatchHub> {
        let published = source.current_revision();
        Arc::new(WatchHub {
            source,
            progress_interval,
            limits,
            state: Mutex::new(HubState {
                published,
                next_stream: 0,
                next_serial: 0,
                streams: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping all watches would, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last published revision.
    pub fn revision(&self) -> i64 {
        self.lock().published
    }

    /// Bytes of responses waiting in all streams' queues (for metrics and tests).
    pub fn queued_bytes(&self) -> usize {
        self.lock().streams.values().map(|s| s.queued_bytes).sum()
    }

    pub(crate) fn progress_interval(&self) -> Duration {
        self.progress_interval
    }

    /// Number of open streams (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    /// Called by the apply loop after each storage commit, in revision order, with the events
    /// of the committed batch (ascending revision) and the store's revision after the batch.
    /// Takes only the hub lock; a slow client is turned unsynced here rather than waited for.
    pub fn publish(&self, events: Vec<Event>, revision: i64) {
        let limits = self.limits;
        let mut st = self.lock();
        let before = st.published;
        if revision < before {
            warn!(
                revision,
                published = before,
                "watch publish went backwards; ignored"
            );
            return;
        }
        st.published = revision;
        for stream in st.streams.values_mut() {
            let ids: Vec<i64> = stream.watchers.keys().copied().collect();
            for id in ids {
                let Some(w) = stream.watchers.get(&id) else {
                    continue;
                };
                if !w.synced {
                    continue;
                }
                let selected = if events.is_empty() {
                    Vec::new()
                } else {
                    w.select(&events)
                };
                let fragment = w.fragment;
                let has_events = !selected.is_empty();
                let over_budget = has_events && stream.queued_bytes >= limits.max_pending_bytes;
                if has_events && !over_budget {
                    stream.push_events(id, revision, selected, fragment, limits.max_response_bytes);
                }
                let Some(w) = stream.watchers.get_mut(&id) else {
                    continue;
                };
                if over_budget {
                    // Everything up to `before` is queued; the rest will be read from the store.
                    w.synced = false;
                    w.next_rev = w.next_rev.max(before + 1);
                    debug!(watch_id = id, next_rev = w.next_rev, "watcher fell behind");
                    stream.notify.notify_one();
                } else {
                    if has_events {
                        w.active = true;
                    }
                    w.next_rev = w.next_rev.max(revision + 1);
                }
            }
        }
    }

    /// The keyspace was replaced by a snapshot from the leader (this member was too far
    /// behind for the log): the events between what was published and `revision` were never
    /// applied here one by one, so every watcher reads them from the new keyspace, or is
    /// canceled with the compact revision if they are gone, as after any catch-up.
    pub fn resync_all(&self, revision: i64) {
        let mut st = self.lock();
        st.published = st.published.max(revision);
        for stream in st.streams.values_mut() {
            let mut behind = false;
            for w in stream.watchers.values_mut() {
                if w.synced {
                    w.synced = false;
                    behind = true;
                }
            }
            if behind {
                stream.notify.notify_one();
            }
        }
    }

    /// Registers a new stream; returns its id and the notifier its sender waits on.
    pub(crate) fn open_stream(&self) -> (u64, Arc<Notify>) {
        let mut st = self.lock();
        let id = st.next_stream;
        st.next_stream += 1;
        let notify = Arc::new(Notify::new());
        st.streams.insert(
            id,
            StreamState {
                watchers: BTreeMap::new(),
                next_watch_id: 0,
                queue: VecDeque::new(),
                queued_bytes: 0,
                progress_requested: false,
                notify: notify.clone(),
            },
        );
        (id, notify)
    }

    /// Drops a stream and all its watchers (client gone or stream ended).
    pub(crate) fn close_stream(&self, stream: u64) {
        let removed = self.lock().streams.remove(&stream);
        if let Some(s) = removed {
            debug!(stream, watchers = s.watchers.len(), "watch stream closed");
            // Wake a sender that may be waiting so it sees `Gone`.
            s.notify.notify_one();
        }
    }

    /// Handles one client request of a stream; replies are queued in request order.
    pub(crate) fn handle_request(&self, stream: u64, req: WatchRequest) {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(stream, create),
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(stream, cancel.watch_id),
            Some(RequestUnion::ProgressRequest(_)) => self.request_progress(stream),
            // etcd ignores an empty request too.
            None => {}
        }
    }

    /// Answers a create the caller may not make (auth) the way etcd refuses one: created and
    /// canceled at once, watch id -1, in the stream's order of create replies.
    pub fn refuse_create(&self, stream_id: u64, reason: &str) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let published = st.published;
        if let Some(stream) = st.streams.get_mut(&stream_id) {
            stream.push(WatchResponse {
                header: header(published),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            });
        }
    }

    fn create(&self, stream_id: u64, req: WatchCreateRequest) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&stream_id) else {
            return;
        };
        let refuse = |stream: &mut StreamState, reason: &str| {
            stream.push(WatchResponse {
                header: header(published),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            });
        };
        let range = KeyRange::from_request(&req.key, &req.range_end);
        if range.is_empty() {
            refuse(stream, ERR_EMPTY_RANGE);
            return;
        }
        let id = if req.watch_id != 0 {
            if stream.watchers.contains_key(&req.watch_id) {
                refuse(stream, ERR_DUPLICATE_ID);
                return;
            }
            req.watch_id
        } else {
            while stream.watchers.contains_key(&stream.next_watch_id) {
                stream.next_watch_id += 1;
            }
            let id = stream.next_watch_id;
            stream.next_watch_id += 1;
            id
        };
        let next_rev = if req.start_revision == 0 {
            published + 1
        } else {
            req.start_revision
        };
        let synced = next_rev > published;
        st.next_serial += 1;
        let watcher = Watcher {
            serial: st.next_serial,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            range,
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            next_rev,
            synced,
            active: false,
        };
        debug!(
            stream = stream_id,
            watch_id = id,
            next_rev,
            synced,
            "watch created"
        );
        stream.watchers.insert(id, watcher);
        stream.push(WatchResponse {
            header: header(published),
            watch_id: id,
            created: true,
            ..Default::default()
        });
    }

    fn cancel(&self, stream_id: u64, watch_id: i64) {
        let mut st = self.lock();
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&stream_id) else {
            return;
        };
        // etcd answers nothing for an id it does not know.
        if stream.watchers.remove(&watch_id).is_some() {
            stream.push(WatchResponse {
                header: header(published),
                watch_id,
                canceled: true,
                ..Default::default()
            });
            stream.answer_progress_if_synced(published);
        }
    }

    fn request_progress(&self, stream_id: u64) {
        let mut st = self.lock();
        let published = st.published;
        if let Some(stream) = st.streams.get_mut(&stream_id) {
            stream.progress_requested = true;
            stream.answer_progress_if_synced(published);
        }
    }

    /// The `progress_notify` tick of one stream: an empty response at the current revision for
    /// each synced watcher that got no events since the previous tick.
    pub(crate) fn progress_tick(&self, stream_id: u64) {
        let mut st = self.lock();
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&stream_id) else {
            return;
        };
        let mut due = Vec::new();
        for (id, w) in stream.watchers.iter_mut() {
            if w.progress_notify && w.synced && !w.active {
                due.push(*id);
            }
            w.active = false;
        }
        for id in due {
            stream.push(WatchResponse {
                header: header(published),
                watch_id: id,
                ..Default::default()
            });
        }
    }

    /// The next thing a stream's sender should do: send a queued response, read past events
    /// for an unsynced watcher (only when the queue is short, so catch-up is paced by the
    /// client), or wait.
    pub(crate) fn next(&self, stream_id: u64) -> Next {
        let mut st = self.lock();
        let Some(stream) = st.streams.get_mut(&stream_id) else {
            return Next::Gone;
        };
        if let Some((resp, size)) = stream.queue.pop_front() {
            stream.queued_bytes = stream.queued_bytes.saturating_sub(size);
            return Next::Send(resp);
        }
        let behind = stream
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .min_by_key(|(_, w)| w.next_rev);
        match behind {
            Some((id, w)) => {
                let (key, range_end) = w.range.wire();
                Next::CatchUp(CatchUpJob {
                    watch_id: *id,
                    serial: w.serial,
                    start_rev: w.next_rev,
                    key: key.to_vec(),
                    range_end: range_end.to_vec(),
                    prev_kv: w.prev_kv,
                })
            }
            None => Next::Idle,
        }
    }

    /// Runs one catch-up read (blocking: call it off the async runtime) and queues its result.
    pub(crate) fn catch_up(&self, stream_id: u64, job: CatchUpJob) {
        // Read the revision before the events: the read then covers at least up to it.
        let current = self.source.current_revision();
        let result = self.source.events_since(
            job.start_rev,
            &job.key,
            &job.range_end,
            job.prev_kv,
            self.limits.catch_up_max_revisions,
        );
        let compacted = match result {
            Err(WatchSourceError::Compacted) => self.source.compacted_revision(),
            _ => 0,
        };
        self.finish_catch_up(stream_id, &job, current, compacted, result);
    }

    fn finish_catch_up(
        &self,
        stream_id: u64,
        job: &CatchUpJob,
        current: i64,
        compacted: i64,
        result: Result<Vec<Event>, WatchSourceError>,
    ) {
        let limits = self.limits;
        let mut st = self.lock();
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&stream_id) else {
            return;
        };
        let Some(w) = stream.watchers.get_mut(&job.watch_id) else {
            return;
        };
        if w.serial != job.serial {
            return;
        }
        let events = match result {
            Ok(events) => events,
            Err(err) => {
                stream.watchers.remove(&job.watch_id);
                let resp = match err {
                    // etcd sends this with an empty header and no cancel reason; clients turn
                    // the compact revision into ErrCompacted themselves.
                    WatchSourceError::Compacted => WatchResponse {
                        header: Some(ResponseHeader::default()),
                        watch_id: job.watch_id,
                        canceled: true,
                        compact_revision: compacted,
                        ..Default::default()
                    },
                    WatchSourceError::Storage(msg) => {
                        warn!(watch_id = job.watch_id, error = %msg, "watch catch-up failed");
                        WatchResponse {
                            header: header(published),
                            watch_id: job.watch_id,
                            canceled: true,
                            cancel_reason: msg,
                            ..Default::default()
                        }
                    }
                };
                stream.push(resp);
                stream.answer_progress_if_synced(published);
                return;
            }
        };
        let last_event = events.last().map_or(0, event_revision);
        let mut revisions = 0usize;
        let mut prev = None;
        for ev in &events {
            let r = event_revision(ev);
            if prev != Some(r) {
                revisions += 1;
                prev = Some(r);
            }
        }
        let read_up_to = if revisions >= limits.catch_up_max_revisions {
            // Possibly cut short: only the returned revisions are known complete.
            last_event
        } else {
            last_event.max(current)
        };
        // Never run ahead of the published revision: events the store has but the hub has
        // not yet published are left to `publish`, which keeps progress revisions honest.
        let next_rev = (read_up_to + 1).min(published + 1).max(job.start_rev);
        let selected: Vec<Event> = w
            .select(&events)
            .into_iter()
            .filter(|ev| event_revision(ev) < next_rev)
            .collect();
        w.next_rev = next_rev;
        w.synced = next_rev > published;
        let fragment = w.fragment;
        if !selected.is_empty() {
            w.active = true;
            stream.push_events(
                job.watch_id,
                published,
                selected,
                fragment,
                limits.max_response_bytes,
            );
        }
        if stream.watchers.get(&job.watch_id).is_some_and(|w| w.synced) {
            stream.answer_progress_if_synced(published);
        } else {
            // More to read: wake the sender for another round.
            stream.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::memory::MemoryLog;
    use ferrokv_proto::etcdserverpb::{WatchCancelRequest, WatchProgressRequest};

    fn create(key: &[u8], end: &[u8], start: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            start_revision: start,
            ..Default::default()
        }
    }

    fn req(create: WatchCreateRequest) -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        }
    }

    fn cancel(id: i64) -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest {
                watch_id: id,
            })),
        }
    }

    fn progress() -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
        }
    }

    /// Drains a stream the way the async sender does, running catch-ups inline.
    fn drain(hub: &WatchHub, stream: u64) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        loop {
            match hub.next(stream) {
                Next::Send(r) => out.push(r),
                Next::CatchUp(job) => hub.catch_up(stream, job),
                Next::Idle | Next::Gone => return out,
            }
        }
    }

    /// Only the responses carrying events, flattened to (watch_id, key, revision).
    fn events_of(resps: &[WatchResponse]) -> Vec<(i64, Vec<u8>, i64)> {
        resps
            .iter()
            .flat_map(|r| {
                r.events.iter().map(move |e| {
                    let kv = e.kv.clone().unwrap_or_default();
                    (r.watch_id, kv.key, kv.mod_revision)
                })
            })
            .collect()
    }

    fn setup() -> (Arc<MemoryLog>, Arc<WatchHub>, u64) {
        let log = Arc::new(MemoryLog::default());
        let hub = WatchHub::new(log.clone(), Duration::from_secs(600));
        let (stream, _) = hub.open_stream();
        (log, hub, stream)
    }

    /// (key, range_end, probe, contained)
    type RangeRow = (&'static [u8], &'static [u8], &'static [u8], bool);

    #[test]
    fn key_range_rules() {
        let rows: &[RangeRow] = &[
            (b"a", b"", b"a", true),
            (b"a", b"", b"ab", false),
            (b"a", b"\0", b"zzz", true),
            (b"b", b"\0", b"a", false),
            (b"a", b"c", b"b", true),
            (b"a", b"c", b"c", false),
            (b"a", b"c", b"a", true),
            (b"", b"\0", b"", false),
            (b"", b"\0", b"\0", true),
            (b"", b"\0", b"any", true),
            (b"", b"", b"\0", true),
        ];
        for (key, end, probe, want) in rows {
            let r = KeyRange::from_request(key, end);
            assert_eq!(
                r.contains(probe),
                *want,
                "{key:?}..{end:?} contains {probe:?}"
            );
        }
        assert!(KeyRange::from_request(b"c", b"b").is_empty());
        assert!(KeyRange::from_request(b"b", b"b").is_empty());
        assert!(!KeyRange::from_request(b"b", b"\0").is_empty());
    }

    #[test]
    fn created_replies_in_order_with_auto_and_explicit_ids() {
        let (log, hub, s) = setup();
        log.put(&hub, b"x", b"1");
        hub.handle_request(s, req(create(b"a", b"", 0)));
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                watch_id: 1,
                ..create(b"b", b"", 0)
            }),
        );
        hub.handle_request(s, req(create(b"c", b"", 0)));
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                watch_id: 1,
                ..create(b"d", b"", 0)
            }),
        );
        hub.handle_request(s, req(create(b"z", b"a", 0)));
        let out = drain(&hub, s);
        let got: Vec<(i64, bool, bool, &str, i64)> = out
            .iter()
            .map(|r| {
                (
                    r.watch_id,
                    r.created,
                    r.canceled,
                    r.cancel_reason.as_str(),
                    r.header.as_ref().map_or(0, |h| h.revision),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, true, false, "", 1),
                (1, true, false, "", 1),
                (2, true, false, "", 1),
                (-1, true, true, ERR_DUPLICATE_ID, 1),
                (-1, true, true, ERR_EMPTY_RANGE, 1),
            ]
        );
    }

    #[test]
    fn live_events_filters_and_prev_kv() {
        let (log, hub, s) = setup();
        log.put(&hub, b"k", b"0");
        hub.handle_request(s, req(create(b"k", b"", 0)));
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                filters: vec![FilterType::Noput as i32],
                prev_kv: true,
                ..create(b"k", b"", 0)
            }),
        );
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                filters: vec![FilterType::Nodelete as i32],
                ..create(b"k", b"l", 0)
            }),
        );
        drain(&hub, s);
        log.put(&hub, b"k", b"1");
        log.put(&hub, b"other", b"1");
        log.delete(&hub, b"k");
        let out = drain(&hub, s);
        assert_eq!(
            events_of(&out),
            vec![
                (0, b"k".to_vec(), 2),
                (2, b"k".to_vec(), 2),
                (0, b"k".to_vec(), 4),
                (1, b"k".to_vec(), 4),
            ]
        );
        for r in &out {
            for e in &r.events {
                assert_eq!(
                    e.prev_kv.is_some(),
                    r.watch_id == 1,
                    "prev_kv only when asked"
                );
            }
        }
        let del = out.iter().find(|r| r.watch_id == 1).map(|r| &r.events[0]);
        let prev = del.and_then(|e| e.prev_kv.clone()).unwrap_or_default();
        assert_eq!(prev.value, b"1".to_vec());
        assert_eq!(out[0].header.as_ref().map(|h| h.revision), Some(2));
    }

    #[test]
    fn catch_up_then_live_without_gap_or_duplicate() {
        let log = Arc::new(MemoryLog::default());
        // Tiny catch-up rounds so the hand-over happens after several reads.
        let hub = WatchHub::with_limits(
            log.clone(),
            Duration::from_secs(600),
            WatchLimits {
                catch_up_max_revisions: 3,
                ..Default::default()
            },
        );
        let (s, _) = hub.open_stream();
        for i in 0..10 {
            log.put(&hub, format!("p/{i}").as_bytes(), b"v");
        }
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                prev_kv: true,
                ..create(b"p/", b"p0", 2)
            }),
        );
        // Interleave: one catch-up round, then live writes, then the rest.
        let mut out = Vec::new();
        let mut rounds = 0;
        loop {
            match hub.next(s) {
                Next::Send(r) => out.push(r),
                Next::CatchUp(job) => {
                    hub.catch_up(s, job);
                    rounds += 1;
                    if rounds == 1 {
                        log.put(&hub, b"p/live1", b"v");
                    }
                    if rounds == 2 {
                        // Committed in the store but not yet published: the catch-up that
                        // reads it must leave it to publish.
                        log.put_unpublished(b"p/late", b"v");
                    }
                }
                Next::Idle | Next::Gone => break,
            }
        }
        hub.handle_request(s, progress());
        out.extend(drain(&hub, s));
        log.publish_pending(&hub);
        log.put(&hub, b"p/live2", b"v");
        out.extend(drain(&hub, s));
        let revs: Vec<i64> = events_of(&out).iter().map(|e| e.2).collect();
        assert_eq!(revs, (2..=13).collect::<Vec<_>>());
        assert!(rounds >= 3, "several catch-up rounds, got {rounds}");
        let progress: Vec<i64> = out
            .iter()
            .filter(|r| r.watch_id == -1)
            .filter_map(|r| r.header.as_ref().map(|h| h.revision))
            .collect();
        assert_eq!(progress, vec![11], "progress at the published revision");
    }

    #[test]
    fn compacted_start_is_created_then_canceled() {
        let (log, hub, s) = setup();
        for _ in 0..5 {
            log.put(&hub, b"k", b"v");
        }
        log.compact(4);
        hub.handle_request(s, req(create(b"k", b"", 3)));
        hub.handle_request(s, req(create(b"k", b"", 4)));
        let out = drain(&hub, s);
        assert!(out[0].created && !out[0].canceled && out[0].watch_id == 0);
        assert!(out[1].created && out[1].watch_id == 1);
        let cancel = out.iter().find(|r| r.canceled).cloned().unwrap_or_default();
        assert_eq!(cancel.watch_id, 0);
        assert_eq!(cancel.compact_revision, 4);
        assert_eq!(
            events_of(&out),
            vec![(1, b"k".to_vec(), 4), (1, b"k".to_vec(), 5)]
        );
    }

    #[test]
    fn progress_is_deferred_until_synced_and_never_goes_back() {
        let (log, hub, s) = setup();
        log.put(&hub, b"a", b"v");
        hub.handle_request(s, progress());
        let out = drain(&hub, s);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].watch_id, out[0].header.unwrap_or_default().revision),
            (-1, 1)
        );
        // An unsynced watcher holds the progress response back until it caught up.
        hub.handle_request(s, req(create(b"a", b"", 1)));
        hub.handle_request(s, progress());
        let mut seen = Vec::new();
        loop {
            match hub.next(s) {
                Next::Send(r) => seen.push(r),
                Next::CatchUp(job) => {
                    assert!(
                        seen.iter().all(|r| r.watch_id != -1),
                        "progress before sync"
                    );
                    hub.catch_up(s, job)
                }
                Next::Idle | Next::Gone => break,
            }
        }
        let kinds: Vec<(i64, bool, usize)> = seen
            .iter()
            .map(|r| (r.watch_id, r.created, r.events.len()))
            .collect();
        assert_eq!(kinds, vec![(0, true, 0), (0, false, 1), (-1, false, 0)]);
        // A cancel of the last unsynced watcher also releases a waiting progress request.
        hub.handle_request(s, req(create(b"a", b"", 1)));
        hub.handle_request(s, progress());
        hub.handle_request(s, cancel(1));
        let kinds: Vec<(i64, bool, bool)> = drain(&hub, s)
            .iter()
            .map(|r| (r.watch_id, r.created, r.canceled))
            .collect();
        assert_eq!(
            kinds,
            vec![(1, true, false), (1, false, true), (-1, false, false)]
        );
    }

    #[test]
    fn cancel_known_and_unknown() {
        let (_log, hub, s) = setup();
        hub.handle_request(s, req(create(b"a", b"", 0)));
        hub.handle_request(s, cancel(0));
        hub.handle_request(s, cancel(7));
        let kinds: Vec<(i64, bool, bool)> = drain(&hub, s)
            .iter()
            .map(|r| (r.watch_id, r.created, r.canceled))
            .collect();
        assert_eq!(kinds, vec![(0, true, false), (0, false, true)]);
        // Auto ids keep counting past a canceled id, as etcd's nextID does.
        hub.handle_request(s, req(create(b"a", b"", 0)));
        let out = drain(&hub, s);
        assert_eq!(out[0].watch_id, 1, "auto ids keep counting like etcd");
    }

    #[test]
    fn progress_notify_only_when_idle_and_synced() {
        let (log, hub, s) = setup();
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                progress_notify: true,
                ..create(b"a", b"", 0)
            }),
        );
        hub.handle_request(s, req(create(b"b", b"", 0)));
        drain(&hub, s);
        log.put(&hub, b"a", b"v");
        drain(&hub, s);
        hub.progress_tick(s);
        assert!(
            drain(&hub, s).is_empty(),
            "active since last tick: no notify"
        );
        log.put(&hub, b"b", b"v");
        hub.progress_tick(s);
        let out = drain(&hub, s);
        let kinds: Vec<(i64, usize)> = out.iter().map(|r| (r.watch_id, r.events.len())).collect();
        assert_eq!(
            kinds,
            vec![(1, 1), (0, 0)],
            "b's event, then a's idle notify"
        );
        assert_eq!(out[1].header.unwrap_or_default().revision, 2);
    }

    #[test]
    fn fragments_split_one_huge_revision() {
        let log = Arc::new(MemoryLog::default());
        let hub = WatchHub::with_limits(
            log.clone(),
            Duration::from_secs(600),
            WatchLimits {
                max_response_bytes: 10_000,
                ..Default::default()
            },
        );
        let (s, _) = hub.open_stream();
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                fragment: true,
                ..create(b"f/", b"f0", 0)
            }),
        );
        hub.handle_request(s, req(create(b"f/", b"f0", 0)));
        drain(&hub, s);
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = (0..50)
            .map(|i| (format!("f/{i:03}").into_bytes(), vec![b'x'; 1000]))
            .collect();
        log.put_many(&hub, &kvs);
        let out = drain(&hub, s);
        let frag: Vec<&WatchResponse> = out.iter().filter(|r| r.watch_id == 0).collect();
        let whole: Vec<&WatchResponse> = out.iter().filter(|r| r.watch_id == 1).collect();
        assert_eq!(whole.len(), 1, "no fragment asked: one response");
        assert_eq!(whole[0].events.len(), 50);
        assert!(frag.len() >= 5, "got {} parts", frag.len());
        for (i, part) in frag.iter().enumerate() {
            assert_eq!(part.fragment, i + 1 < frag.len());
            assert!(part.encoded_len() < 10_000);
        }
        let n: usize = frag.iter().map(|r| r.events.len()).sum();
        assert_eq!(n, 50);
    }

    #[test]
    fn slow_stream_goes_unsynced_and_catches_up_from_store() {
        let log = Arc::new(MemoryLog::default());
        let hub = WatchHub::with_limits(
            log.clone(),
            Duration::from_secs(600),
            WatchLimits {
                max_pending_bytes: 2_000,
                ..Default::default()
            },
        );
        let (slow, _) = hub.open_stream();
        let (fast, _) = hub.open_stream();
        hub.handle_request(slow, req(create(b"k", b"", 0)));
        hub.handle_request(fast, req(create(b"k", b"", 0)));
        drain(&hub, slow);
        let mut fast_out = drain(&hub, fast);
        for i in 0..200 {
            log.put(&hub, b"k", format!("{i:050}").as_bytes());
            fast_out.extend(drain(&hub, fast));
        }
        let queued = hub.lock().streams[&slow].queued_bytes;
        assert!(queued < 4_000, "slow queue stayed bounded: {queued}");
        let slow_out = drain(&hub, slow);
        let want: Vec<i64> = (1..=200).collect();
        let slow_revs: Vec<i64> = events_of(&slow_out).iter().map(|e| e.2).collect();
        let fast_revs: Vec<i64> = events_of(&fast_out).iter().map(|e| e.2).collect();
        assert_eq!(slow_revs, want);
        assert_eq!(fast_revs, want);
        // Fell behind and then compacted away: canceled with the compact revision.
        for _ in 0..50 {
            log.put(&hub, b"k", &[b'y'; 100]);
        }
        log.compact(240);
        let out = drain(&hub, slow);
        let last = out.last().cloned().unwrap_or_default();
        assert!(last.canceled);
        assert_eq!(last.compact_revision, 240);
    }

    #[test]
    fn catch_up_and_live_over_the_real_store() {
        use ferrokv_proto::etcdserverpb::PutRequest;
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(ferrokv_storage::Store::open(&dir.path().join("db")).expect("open store"));
        let source: Arc<dyn EventSource> = store.clone();
        let hub = WatchHub::with_limits(
            source,
            Duration::from_secs(600),
            WatchLimits {
                catch_up_max_revisions: 4,
                ..Default::default()
            },
        );
        let put = |key: &str| {
            let mut batch = store.write_batch().expect("batch");
            let (_, events) = batch
                .put(&PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                })
                .expect("put");
            let rev = batch.revision();
            batch.commit(false).expect("commit");
            hub.publish(events, rev);
            rev
        };
        let first = put("w/0");
        for i in 1..10 {
            put(&format!("w/{i}"));
        }
        let (s, _) = hub.open_stream();
        hub.handle_request(
            s,
            req(WatchCreateRequest {
                prev_kv: true,
                ..create(b"w/", b"w0", first + 1)
            }),
        );
        let mut out = drain(&hub, s);
        let last = put("w/0");
        out.extend(drain(&hub, s));
        let revs: Vec<i64> = events_of(&out).iter().map(|e| e.2).collect();
        assert_eq!(revs, (first + 1..=last).collect::<Vec<_>>());
        let overwrite = out
            .last()
            .and_then(|r| r.events.last())
            .cloned()
            .unwrap_or_default();
        assert!(
            overwrite.prev_kv.is_some(),
            "live event keeps prev_kv when asked"
        );
    }

    #[test]
    fn catch_up_packs_whole_revisions_into_bounded_responses() {
        let log = Arc::new(MemoryLog::default());
        let hub = WatchHub::with_limits(
            log.clone(),
            Duration::from_secs(600),
            WatchLimits {
                max_response_bytes: 10_000,
                ..Default::default()
            },
        );
        for i in 0..30 {
            // Two keys per revision, ~1 KiB each.
            let kvs = vec![
                (format!("a/{i}").into_bytes(), vec![b'x'; 1000]),
                (format!("b/{i}").into_bytes(), vec![b'x'; 1000]),
            ];
            log.put_many(&hub, &kvs);
        }
        let (s, _) = hub.open_stream();
        hub.handle_request(s, req(create(b"\0", b"\0", 1)));
        let out: Vec<WatchResponse> = drain(&hub, s).into_iter().skip(1).collect();
        assert!(out.len() >= 6, "{} responses", out.len());
        let mut seen = Vec::new();
        for r in &out {
            assert!(r.encoded_len() < 10_000 && !r.fragment);
            let revs: Vec<i64> = r.events.iter().map(event_revision).collect();
            assert_eq!(revs.len() % 2, 0, "a revision was split: {revs:?}");
            seen.extend(revs);
        }
        let want: Vec<i64> = (1..=30).flat_map(|r| [r, r]).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn closing_a_stream_drops_its_watchers() {
        let (log, hub, s) = setup();
        hub.handle_request(s, req(create(b"a", b"", 0)));
        hub.close_stream(s);
        log.put(&hub, b"a", b"v");
        assert!(matches!(hub.next(s), Next::Gone));
        assert_eq!(hub.stream_count(), 0);
    }
}
