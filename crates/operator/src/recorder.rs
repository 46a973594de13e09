//! Publishes the operator's Events (`events.k8s.io/v1`), one Event per distinct note.
//!
//! kube-runtime's `Recorder` folds every Event of equal type, reason, action and objects into
//! one series and keeps the first note: the sixth scheduled backup then shows as "backup of
//! revision 1 ... (x6)" and a user reads the wrong revision, member and object. This recorder
//! keys a series on the note as well, as client-go's correlator does: the same sentence again
//! within the cache's lifetime counts up the series, a different one is a new Event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use tokio::sync::Mutex;

/// How long a series stays open: a repeat after that is a new Event (the API server keeps
/// Events for an hour by default; a series that old is not what `kubectl describe` shows).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    action: String,
    reason: String,
    note: Option<String>,
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    related: Option<(Option<String>, Option<String>, Option<String>)>,
}

impl Key {
    fn of(ev: &Event, regarding: &ObjectReference) -> Self {
        Self {
            warning: matches!(ev.type_, EventType::Warning),
            action: ev.action.clone(),
            reason: ev.reason.clone(),
            note: ev.note.clone(),
            regarding: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            related: ev
                .secondary
                .as_ref()
                .map(|r| (r.kind.clone(), r.name.clone(), r.uid.clone())),
        }
    }
}

/// What an open series knows: the Event object written last and when.
struct Open {
    event: K8sEvent,
    count: i32,
    last: Instant,
}

/// What to send for one publish.
#[derive(Debug, PartialEq, Eq)]
enum Emit {
    Create,
    /// A repeat: the series' Event with this count.
    Repeat(i32),
}

#[derive(Default)]
struct Cache {
    open: HashMap<Key, Open>,
}

impl Cache {
    /// Closes series older than the TTL, then says whether `key` continues one.
    fn decide(&mut self, key: &Key, now: Instant) -> Emit {
        self.open
            .retain(|_, o| now.saturating_duration_since(o.last) < SERIES_TTL);
        match self.open.get(key) {
            Some(o) => Emit::Repeat(o.count + 1),
            None => Emit::Create,
        }
    }
}

/// Cheap to clone; clones share the series cache.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Arc::default(),
        }
    }

    /// Publishes `ev` about `regarding`, in its namespace ("default" for cluster objects).
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = Key::of(ev, regarding);
        // Held across the write, so two publishes of one sentence cannot both create.
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        let stamp = Timestamp::now();
        match (cache.decide(&key, now), cache.open.get(&key)) {
            (Emit::Repeat(count), Some(open)) => {
                let mut event = open.event.clone();
                event.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(stamp),
                });
                let name = event.metadata.name.clone().unwrap_or_default();
                let patch = serde_json::json!({ "series": event.series });
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    // The Event may be gone (deleted, or expired on the API server): the next
                    // one of this sentence starts a new series instead of failing the same way.
                    cache.open.remove(&key);
                    return Err(e);
                }
                cache.open.insert(
                    key,
                    Open {
                        event,
                        count,
                        last: now,
                    },
                );
            }
            _ => {
                let event = self.event(ev, regarding, stamp);
                let created = api.create(&PostParams::default(), &event).await?;
                cache.open.insert(
                    key,
                    Open {
                        event: created,
                        count: 1,
                        last: now,
                    },
                );
            }
        }
        Ok(())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, stamp: Timestamp) -> K8sEvent {
        let object = regarding
            .name
            .clone()
            .unwrap_or_else(|| self.reporter.controller.clone());
        K8sEvent {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                // The name only has to be unique: the object's name and the time, as
                // client-go names Events.
                name: Some(format!("{object}.{:x}", stamp.as_nanosecond())),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(MicroTime(stamp)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Backup".into(),
            secondary: None,
        }
    }

    fn cluster() -> ObjectReference {
        ObjectReference {
            kind: Some("EtcdCluster".into()),
            namespace: Some("default".into()),
            name: Some("bk".into()),
            uid: Some("u1".into()),
            ..Default::default()
        }
    }

    fn open(cache: &mut Cache, key: Key, count: i32, last: Instant) {
        cache.open.insert(
            key,
            Open {
                event: K8sEvent::default(),
                count,
                last,
            },
        );
    }

    #[test]
    fn a_new_note_is_a_new_event_and_the_same_note_counts_up() {
        let mut cache = Cache::default();
        let t = Instant::now();
        let first = Key::of(&ev("BackupSucceeded", "backup of revision 1"), &cluster());
        assert_eq!(cache.decide(&first, t), Emit::Create);
        open(&mut cache, first.clone(), 1, t);
        let second = Key::of(&ev("BackupSucceeded", "backup of revision 21"), &cluster());
        assert_eq!(cache.decide(&second, t), Emit::Create);
        assert_eq!(cache.decide(&first, t), Emit::Repeat(2));
    }

    #[test]
    fn a_series_closes_after_its_ttl() {
        let mut cache = Cache::default();
        let t = Instant::now();
        let key = Key::of(&ev("BackupFailed", "bucket missing"), &cluster());
        open(&mut cache, key.clone(), 3, t);
        assert_eq!(
            cache.decide(&key, t + SERIES_TTL - Duration::from_secs(1)),
            Emit::Repeat(4)
        );
        assert_eq!(cache.decide(&key, t + SERIES_TTL), Emit::Create);
        assert!(cache.open.is_empty());
    }

    #[test]
    fn events_of_other_objects_never_share_a_series() {
        let mut other = cluster();
        other.uid = Some("u2".into());
        let a = Key::of(&ev("MemberAdded", "added learner kv-1"), &cluster());
        let b = Key::of(&ev("MemberAdded", "added learner kv-1"), &other);
        assert_ne!(a, b);
    }
}
