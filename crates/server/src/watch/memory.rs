//! A tiny in-memory MVCC event log for tests: a real revision counter, key versions, prev_kv
//! and compaction, implementing [`EventSource`] with the store's rules. Writes commit to the
//! log first and then publish to the hub, the order the apply loop uses.

use std::collections::HashMap;
use std::sync::Mutex;

use ferrokv_proto::mvccpb::event::EventType;
use ferrokv_proto::mvccpb::{Event, KeyValue};

use super::hub::WatchHub;
use super::source::{EventSource, WatchSourceError};

#[derive(Default)]
pub(crate) struct MemoryLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    revision: i64,
    compacted: i64,
    latest: HashMap<Vec<u8>, KeyValue>,
    events: Vec<Event>,
    /// Committed but not yet published (revision, events).
    unpublished: Vec<(i64, Vec<Event>)>,
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

impl Inner {
    /// Applies one revision of puts (`Some(value)`) and deletes (`None`).
    fn commit(&mut self, ops: &[(&[u8], Option<&[u8]>)]) -> (i64, Vec<Event>) {
        self.revision += 1;
        let rev = self.revision;
        let mut out = Vec::new();
        for (key, value) in ops {
            let prev = self.latest.get(*key).cloned();
            let ev = match value {
                Some(v) => {
                    let kv = KeyValue {
                        key: key.to_vec(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: v.to_vec(),
                        lease: 0,
                    };
                    self.latest.insert(key.to_vec(), kv.clone());
                    Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv),
                        prev_kv: prev,
                    }
                }
                None => {
                    let Some(prev) = self.latest.remove(*key) else {
                        continue;
                    };
                    Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: key.to_vec(),
                            mod_revision: rev,
                            ..Default::default()
                        }),
                        prev_kv: Some(prev),
                    }
                }
            };
            out.push(ev);
        }
        self.events.extend(out.iter().cloned());
        (rev, out)
    }
}

impl MemoryLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn commit_and_publish(&self, hub: &WatchHub, ops: &[(&[u8], Option<&[u8]>)]) -> i64 {
        let (rev, events) = self.lock().commit(ops);
        hub.publish(events, rev);
        rev
    }

    pub(crate) fn put(&self, hub: &WatchHub, key: &[u8], value: &[u8]) -> i64 {
        self.commit_and_publish(hub, &[(key, Some(value))])
    }

    pub(crate) fn delete(&self, hub: &WatchHub, key: &[u8]) -> i64 {
        self.commit_and_publish(hub, &[(key, None)])
    }

    /// Many puts in one revision (a txn).
    pub(crate) fn put_many(&self, hub: &WatchHub, kvs: &[(Vec<u8>, Vec<u8>)]) -> i64 {
        let ops: Vec<(&[u8], Option<&[u8]>)> = kvs
            .iter()
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
            .collect();
        self.commit_and_publish(hub, &ops)
    }

    /// Commits without publishing, as between the apply loop's commit and its publish.
    pub(crate) fn put_unpublished(&self, key: &[u8], value: &[u8]) -> i64 {
        let mut inner = self.lock();
        let (rev, events) = inner.commit(&[(key, Some(value))]);
        inner.unpublished.push((rev, events));
        rev
    }

    pub(crate) fn publish_pending(&self, hub: &WatchHub) {
        let pending = std::mem::take(&mut self.lock().unpublished);
        for (rev, events) in pending {
            hub.publish(events, rev);
        }
    }

    /// Forgets events before `rev` (etcd keeps the state at `rev` readable).
    pub(crate) fn compact(&self, rev: i64) {
        let mut inner = self.lock();
        inner.compacted = rev;
        inner
            .events
            .retain(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= rev));
    }
}

impl EventSource for MemoryLog {
    fn current_revision(&self) -> i64 {
        self.lock().revision
    }

    fn compacted_revision(&self) -> i64 {
        self.lock().compacted
    }

    fn events_since(
        &self,
        start_rev: i64,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
        max_revisions: usize,
    ) -> Result<Vec<Event>, WatchSourceError> {
        let inner = self.lock();
        if start_rev < inner.compacted {
            return Err(WatchSourceError::Compacted);
        }
        let mut out: Vec<Event> = Vec::new();
        let mut revisions = 0;
        let mut last = None;
        for ev in &inner.events {
            let Some(kv) = ev.kv.as_ref() else { continue };
            if kv.mod_revision < start_rev || !in_range(&kv.key, key, range_end) {
                continue;
            }
            if last != Some(kv.mod_revision) {
                if revisions == max_revisions {
                    break;
                }
                revisions += 1;
                last = Some(kv.mod_revision);
            }
            let mut ev = ev.clone();
            if !prev_kv {
                ev.prev_kv = None;
            }
            out.push(ev);
        }
        Ok(out)
    }
}
