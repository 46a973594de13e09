//! Scheduled and on-demand backups: when one is due, taking it (a member's
//! `Maintenance.Snapshot` streamed to the store through `ferrokv-backup`), retention, and what
//! status, Events and metrics say about it.
//!
//! The operator takes backups itself rather than through a Job: it already reaches every
//! member with a client certificate, and one process holding the per-cluster "one backup at a
//! time" rule needs no lease. A backup runs in its own task so a slow upload never holds up
//! the membership pipeline; the reconcile only asks [`Backups::due`] and folds the outcome
//! into status with [`Backups::decorate`], the only writer of `status.lastBackup` and
//! `BackupReady` (status has one writer, the reconcile, so nothing races on the condition list).
//!
//! Schedule state lives in status, not in memory: `status.lastBackupAttempt` is the schedule
//! time of the last attempt, so an operator that was down sees the fire times it slept
//! through, reports them (`BackupReady=False`, reason `MissedSchedule`) and takes one now.

use crate::members::MemberClient;
use crate::recorder::Recorder;
use crate::resources::{self, Names};
use chrono::{DateTime, Utc};
use ferrokv_cluster_api::{
    condition, BackupCompression, BackupRecord, BackupSpec, BackupStore, EtcdCluster,
    EtcdClusterStatus, VerifiedBackup,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A parsed `spec.backup.schedule` in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Five cron fields, or six with seconds first; an IANA zone (default UTC).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> std::result::Result<Self, String> {
        let fields = schedule.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "spec.backup.schedule {schedule:?} must have 5 fields (6 with seconds first)"
            ));
        }
        let cron = croner::Cron::from_str(schedule)
            .map_err(|e| format!("spec.backup.schedule {schedule:?}: {e}"))?;
        let tz = match time_zone {
            None => chrono_tz::UTC,
            Some(z) => z
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("spec.backup.timeZone {z:?} is not an IANA time zone"))?,
        };
        Ok(Self { cron, tz })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest fire time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Time between the two fire times after `t` (for "two intervals without a backup").
    pub fn interval_after(&self, t: DateTime<Utc>) -> Option<Duration> {
        let a = self.next_after(t)?;
        let b = self.next_after(a)?;
        (b - a).to_std().ok()
    }
}

/// What the schedule asks of this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing to do until the next fire time (`None`: no schedule).
    Wait(Option<Duration>),
    /// Take the backup of fire time `at`; `missed` fire times before it had no attempt.
    Now { at: DateTime<Utc>, missed: u32 },
}

/// When the scheduled backup is due: the newest fire time after the last attempt (or after
/// the cluster's creation) that has passed. Pure.
pub fn due(schedule: &Schedule, last_attempt: DateTime<Utc>, now: DateTime<Utc>) -> Due {
    let Some(first) = schedule.next_after(last_attempt) else {
        return Due::Wait(None);
    };
    if first > now {
        return Due::Wait((first - now).to_std().ok());
    }
    // Every fire time in (last_attempt, now] but the newest was missed; counted up to a
    // bound, as a per-second schedule could have thousands.
    let mut missed = 0u32;
    let mut t = first;
    while let Some(next) = schedule.next_after(t) {
        if next > now || missed >= 1000 {
            break;
        }
        missed += 1;
        t = next;
    }
    let at = schedule.latest_at_or_before(now).unwrap_or(t);
    Due::Now { at, missed }
}

/// A duration like `90m`, `36h`, `7d` or `1d12h` (`spec.backup.retention.maxAge`), in the
/// grammar of the operator's duration flags, with the field named in the error.
pub fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    crate::parse_duration(s)
        .map_err(|_| format!("spec.backup.retention.maxAge {s:?} is not a duration like 36h or 7d"))
}

/// The spec checks the schema cannot express; the message goes to `Degraded`.
pub fn validate(spec: &BackupSpec) -> std::result::Result<(), String> {
    if let Some(s) = &spec.schedule {
        Schedule::parse(s, spec.time_zone.as_deref())?;
    }
    if let Some(a) = &spec.retention.max_age {
        parse_age(a)?;
    }
    if let Some(v) = &spec.verify {
        Schedule::parse(&v.schedule, spec.time_zone.as_deref())
            .map_err(|e| e.replace("spec.backup.schedule", "spec.backup.verify.schedule"))?;
    }
    validate_store(&spec.store, "spec.backup")
}

/// Store checks shared by backup and restore.
pub fn validate_store(store: &BackupStore, at: &str) -> std::result::Result<(), String> {
    let scheme = store.destination.split("://").next().unwrap_or_default();
    if !["s3", "gs", "az", "file"].contains(&scheme) || !store.destination.contains("://") {
        return Err(format!(
            "{at}.destination {:?} must be an s3://, gs://, az:// or file:// URL",
            store.destination
        ));
    }
    if scheme != "file" && store.credentials_secret.is_none() {
        return Err(format!(
            "{at}.credentialsSecret is required for a {scheme}:// destination"
        ));
    }
    if store.endpoint.is_some() && scheme != "s3" {
        return Err(format!(
            "{at}.endpoint is for S3-compatible servers; {scheme}:// takes it from the credentials Secret"
        ));
    }
    Ok(())
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(BackupRecord),
    /// `reason` is the condition reason (`BackupFailed`, `CredentialsMissing`, `NoHealthyMember`).
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// Per-cluster backup state of this operator process.
#[derive(Debug, Default, Clone)]
struct ClusterJobs {
    running: bool,
    /// Set when an attempt starts late; cleared by its outcome.
    missed: Option<String>,
    last: Option<Outcome>,
    /// Fire time of the running or last scheduled attempt, for `status.lastBackupAttempt`.
    attempt: Option<DateTime<Utc>>,
    /// Fire time of the running or last drill.
    drill_attempt: Option<DateTime<Utc>>,
    /// How the last drill ended.
    drill: Option<std::result::Result<VerifiedBackup, String>>,
}

/// Backups of every cluster: at most one running per cluster. Cheap to clone.
#[derive(Clone, Default)]
pub struct Backups {
    jobs: Arc<Mutex<HashMap<(String, String), ClusterJobs>>>,
    /// Woken with the cluster when an attempt ends, so its status is written at once.
    wake: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

fn key(ec: &EtcdCluster) -> (String, String) {
    (ec.namespace().unwrap_or_default(), ec.name_any())
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn created(ec: &EtcdCluster) -> DateTime<Utc> {
    ec.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
        .unwrap_or_else(Utc::now)
}

impl Backups {
    pub fn with_wake(wake: tokio::sync::mpsc::UnboundedSender<()>) -> Self {
        Self {
            jobs: Arc::default(),
            wake: Some(wake),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ClusterJobs>> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the cluster for one attempt; false when one is already running.
    pub fn try_start(
        &self,
        ec: &EtcdCluster,
        attempt: Option<DateTime<Utc>>,
        missed: Option<String>,
    ) -> bool {
        let mut jobs = self.lock();
        let j = jobs.entry(key(ec)).or_default();
        if j.running {
            return false;
        }
        j.running = true;
        if attempt.is_some() {
            j.attempt = attempt;
        }
        if missed.is_some() {
            j.missed = missed;
        }
        true
    }

    /// Records how the attempt ended and wakes the cluster's reconcile.
    pub fn finish(&self, ec: &EtcdCluster, outcome: Outcome) {
        {
            let mut jobs = self.lock();
            let j = jobs.entry(key(ec)).or_default();
            j.running = false;
            j.missed = None;
            j.last = Some(outcome);
        }
        if let Some(w) = &self.wake {
            let _ = w.send(());
        }
    }

    /// Claims the cluster for a drill of fire time `at`; false when anything is running.
    pub fn try_start_drill(&self, ec: &EtcdCluster, at: DateTime<Utc>) -> bool {
        let mut jobs = self.lock();
        let j = jobs.entry(key(ec)).or_default();
        if j.running {
            return false;
        }
        j.running = true;
        j.drill_attempt = Some(at);
        true
    }

    /// Records how the drill ended and wakes the cluster's reconcile.
    pub fn finish_drill(
        &self,
        ec: &EtcdCluster,
        result: std::result::Result<VerifiedBackup, String>,
    ) {
        {
            let mut jobs = self.lock();
            let j = jobs.entry(key(ec)).or_default();
            j.running = false;
            j.drill = Some(result);
        }
        if let Some(w) = &self.wake {
            let _ = w.send(());
        }
    }

    /// Whether a drill is due (`spec.backup.verify.schedule`): the fire time to run now.
    pub fn drill_due(&self, ec: &EtcdCluster, now: DateTime<Utc>) -> Due {
        let Some(spec) = &ec.spec.backup else {
            return Due::Wait(None);
        };
        let Some(Ok(schedule)) = spec
            .verify
            .as_ref()
            .map(|v| Schedule::parse(&v.schedule, spec.time_zone.as_deref()))
        else {
            return Due::Wait(None);
        };
        let in_memory = self.lock().get(&key(ec)).and_then(|j| j.drill_attempt);
        let recorded = ec
            .status
            .as_ref()
            .and_then(|s| s.last_verified_backup.as_ref())
            .and_then(|v| parse_time(&v.time));
        let last = in_memory.max(recorded).unwrap_or_else(|| created(ec));
        due(&schedule, last, now)
    }

    pub fn running(&self, ec: &EtcdCluster) -> bool {
        self.lock().get(&key(ec)).is_some_and(|j| j.running)
    }

    /// What the schedule asks now (`Due::Wait(None)` without `spec.backup.schedule`).
    pub fn due(&self, ec: &EtcdCluster, now: DateTime<Utc>) -> Due {
        let Some(spec) = &ec.spec.backup else {
            return Due::Wait(None);
        };
        let Some(Ok(schedule)) = spec
            .schedule
            .as_deref()
            .map(|s| Schedule::parse(s, spec.time_zone.as_deref()))
        else {
            return Due::Wait(None);
        };
        let in_memory = self.lock().get(&key(ec)).and_then(|j| j.attempt);
        let recorded = ec
            .status
            .as_ref()
            .and_then(|s| s.last_backup_attempt.as_deref())
            .and_then(parse_time);
        let last = in_memory.max(recorded).unwrap_or_else(|| created(ec));
        due(&schedule, last, now)
    }

    /// Folds this process's backup state into `status`: `lastBackup`, `lastBackupAttempt`
    /// and `BackupReady`. Without `spec.backup` and with no backup ever taken, status is
    /// left as it is.
    pub fn decorate(&self, ec: &EtcdCluster, status: &mut EtcdClusterStatus) {
        let jobs = self.lock().get(&key(ec)).cloned().unwrap_or_default();
        if let Some(a) = jobs.attempt {
            let a = a.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            status.last_backup_attempt = Some(a);
        }
        if let Some(Outcome::Succeeded(r)) = &jobs.last {
            let newer = status
                .last_backup
                .as_ref()
                .is_none_or(|old| parse_time(&old.time) <= parse_time(&r.time));
            if newer {
                status.last_backup = Some(r.clone());
            }
        }
        let ready = match (&jobs.missed, &jobs.last) {
            (Some(m), _) => Some((false, "MissedSchedule", m.clone())),
            (None, Some(Outcome::Failed { reason, message })) => {
                Some((false, *reason, message.clone()))
            }
            (None, Some(Outcome::Succeeded(r))) => Some((
                true,
                "BackupSucceeded",
                format!(
                    "backup at revision {} ({} bytes): {}",
                    r.revision, r.size, r.uri
                ),
            )),
            (None, None) => None,
        };
        let ready = ready.or_else(|| {
            // Nothing happened in this process yet: a cluster with a schedule and no
            // condition says so rather than staying silent.
            let has = status
                .conditions
                .iter()
                .any(|c| c.type_ == condition::BACKUP_READY);
            (ec.spec
                .backup
                .as_ref()
                .is_some_and(|b| b.schedule.is_some())
                && !has)
                .then(|| {
                    (
                        false,
                        "NoBackupYet",
                        "no backup has been taken yet".to_string(),
                    )
                })
        });
        if let Some((ok, reason, message)) = ready {
            set_condition(
                status,
                condition::BACKUP_READY,
                ok,
                reason,
                message,
                ec.metadata.generation,
            );
        }
        match &jobs.drill {
            Some(Ok(v)) => {
                status.last_verified_backup = Some(v.clone());
                let msg = format!(
                    "restored {} at revision {}: {} keys, HashKV {}, as recorded",
                    v.uri, v.revision, v.keys, v.hash_kv
                );
                set_condition(
                    status,
                    condition::BACKUP_VERIFIED,
                    true,
                    "DrillPassed",
                    msg,
                    ec.metadata.generation,
                );
            }
            Some(Err(m)) => {
                set_condition(
                    status,
                    condition::BACKUP_VERIFIED,
                    false,
                    "DrillFailed",
                    m.clone(),
                    ec.metadata.generation,
                );
            }
            None => {}
        }
    }
}

/// Replaces (or adds) condition `type_`, keeping its transition time while its status holds.
pub fn set_condition(
    status: &mut EtcdClusterStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) {
    let value = if ok { "True" } else { "False" };
    let last = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == value)
        .map(|c| c.last_transition_time.clone());
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(Condition {
        type_: type_.into(),
        status: value.into(),
        reason: reason.into(),
        message,
        last_transition_time: last.unwrap_or_else(|| Time(Timestamp::now())),
        observed_generation: generation,
    });
}

/// Why the store could not be set up: a condition reason and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

impl From<Failure> for Outcome {
    fn from(f: Failure) -> Self {
        Outcome::Failed {
            reason: f.reason,
            message: f.message,
        }
    }
}

/// The store configuration for `ferrokv-backup`, with the Secrets it names read from the
/// cluster's namespace.
pub async fn store_config(
    client: &kube::Client,
    namespace: &str,
    store: &BackupStore,
) -> std::result::Result<
    (
        ferrokv_backup::StoreConfig,
        Option<ferrokv_backup::Encryption>,
    ),
    Failure,
> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |name: String| {
        let secrets = secrets.clone();
        async move {
            match secrets.get_opt(&name).await {
                Ok(Some(s)) => Ok(s.data.unwrap_or_default()),
                Ok(None) => Err(Failure {
                    reason: "SecretMissing",
                    message: format!("Secret {namespace}/{name} does not exist"),
                }),
                Err(e) => Err(Failure {
                    reason: "SecretMissing",
                    message: format!("reading Secret {namespace}/{name}: {e}"),
                }),
            }
        }
    };
    let mut cfg = ferrokv_backup::StoreConfig::new(store.destination.clone());
    if let Some(name) = &store.credentials_secret {
        let data = read(name.clone()).await?;
        cfg.credentials = data
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).trim_end().to_string()))
            .collect::<BTreeMap<_, _>>();
    }
    cfg.endpoint = store.endpoint.clone();
    cfg.path_style = store.path_style;
    cfg.region = store.region.clone();
    let value = |data: &BTreeMap<String, k8s_openapi::ByteString>, name: &str, key: &str| {
        data.get(key).map(|v| v.0.clone()).ok_or_else(|| Failure {
            reason: "SecretMissing",
            message: format!("Secret {namespace}/{name} has no key {key:?}"),
        })
    };
    if let Some(r) = &store.ca_secret {
        let data = read(r.name.clone()).await?;
        let pem = value(&data, &r.name, &r.key)?;
        cfg.ca_pem = Some(String::from_utf8_lossy(&pem).into_owned());
    }
    let encryption = match &store.encryption_key_secret {
        Some(r) => {
            let data = read(r.name.clone()).await?;
            let v = value(&data, &r.name, &r.key)?;
            Some(
                ferrokv_backup::Encryption::from_secret_value(&v).map_err(|e| Failure {
                    reason: "BadEncryptionKey",
                    message: format!("Secret {namespace}/{}: {e}", r.name),
                })?,
            )
        }
        None => None,
    };
    Ok((cfg, encryption))
}

/// The member to snapshot: a healthy follower where there is one (the leader's disk and
/// network are the cluster's bottleneck), else the healthy leader.
pub fn pick_member(view: &crate::members::ClusterView) -> Option<String> {
    let leader = view.leader().map(|l| l.id);
    let healthy: Vec<&crate::members::MemberInfo> = view
        .members
        .iter()
        .filter(|(m, h)| {
            !m.learner && !m.name.is_empty() && h.as_ref().is_some_and(|h| h.errors.is_empty())
        })
        .map(|(m, _)| m)
        .collect();
    healthy
        .iter()
        .find(|m| Some(m.id) != leader)
        .or_else(|| healthy.first())
        .map(|m| m.name.clone())
}

/// Everything one attempt needs; built by the reconcile (or the `EtcdBackup` controller)
/// from its observation.
#[derive(Clone)]
pub struct Job {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: crate::metrics::Metrics,
    pub ec: EtcdCluster,
    pub members: MemberClient,
    pub view: Option<crate::members::ClusterView>,
    pub store: BackupStore,
    pub compression: BackupCompression,
    pub endpoint_overrides: BTreeMap<String, String>,
    /// The `EtcdBackup` this job is for, as the Events' related object.
    pub related: Option<k8s_openapi::api::core::v1::ObjectReference>,
}

/// The Event API caps notes at 1 kB. A store's message keeps its start (what failed) and its
/// end (the hint), as the middle is usually a server's XML body.
pub fn cap_note(note: &str) -> String {
    let chars: Vec<char> = note.chars().collect();
    if chars.len() <= 1000 {
        return note.to_string();
    }
    let head: String = chars[..500].iter().collect();
    let tail: String = chars[chars.len() - 450..].iter().collect();
    format!("{head} … {tail}")
}

/// Object-store path of a cluster's backups under the destination: `<namespace>/<name>`, so
/// two clusters of one name in different namespaces never share (or prune) each other's.
pub fn store_cluster(ec: &EtcdCluster) -> String {
    format!("{}/{}", ec.namespace().unwrap_or_default(), ec.name_any())
}

impl Job {
    /// Takes one backup, applies retention, publishes the Event and records the metrics.
    pub async fn run(&self, retention: Option<&ferrokv_cluster_api::RetentionSpec>) -> Outcome {
        let started = Instant::now();
        let cluster = store_cluster(&self.ec);
        let outcome = self.take(retention).await;
        let m = &self.metrics;
        match &outcome {
            Outcome::Succeeded(r) => {
                m.backup_succeeded(&cluster, started.elapsed(), r.stored_size);
                info!(cluster, uri = %r.uri, revision = r.revision, "backup succeeded");
                self.event(
                    EventType::Normal,
                    "BackupSucceeded",
                    format!(
                        "backup of revision {} from {} ({} bytes, sha256 {}): {}",
                        r.revision,
                        r.member.as_deref().unwrap_or("?"),
                        r.size,
                        r.sha256,
                        r.uri
                    ),
                )
                .await;
            }
            Outcome::Failed { reason, message } => {
                m.backup_failed(&cluster, started.elapsed());
                warn!(cluster, reason, %message, "backup failed");
                self.event(EventType::Warning, "BackupFailed", message.clone())
                    .await;
            }
        }
        outcome
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(cap_note(&note)),
            action: "Backup".into(),
            // An on-demand backup names its `EtcdBackup` as the related object.
            secondary: self.related.clone(),
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &self.ec.object_ref(&()))
            .await
        {
            warn!(error = %e, reason, "could not publish event");
        }
    }

    async fn take(&self, retention: Option<&ferrokv_cluster_api::RetentionSpec>) -> Outcome {
        let ns = self.ec.namespace().unwrap_or_default();
        let (cfg, encryption) = match store_config(&self.client, &ns, &self.store).await {
            Ok(v) => v,
            Err(f) => return f.into(),
        };
        let failed = |message: String| Outcome::Failed {
            reason: "BackupFailed",
            message,
        };
        let Some(view) = &self.view else {
            return Outcome::Failed {
                reason: "NoHealthyMember",
                message: "no member answered; nothing to back up from".into(),
            };
        };
        let Some(member) = pick_member(view) else {
            return Outcome::Failed {
                reason: "NoHealthyMember",
                message: "no healthy voting member to take the snapshot from".into(),
            };
        };
        let endpoint = match Names::of(&self.ec) {
            Ok(names) => self
                .endpoint_overrides
                .get(&member)
                .cloned()
                .unwrap_or_else(|| resources::client_url(&self.ec, &names, &member)),
            Err(e) => return failed(e.to_string()),
        };
        let dest = match ferrokv_backup::Destination::open(&cfg) {
            Ok(d) => d,
            Err(e) => return failed(format!("opening {}: {e}", self.store.destination)),
        };
        // Wrong credentials and a missing bucket are said before a member streams anything.
        if let Err(e) = dest.check().await {
            return failed(format!("{}: {e}", self.store.destination));
        }
        let compression = match self.compression {
            BackupCompression::None => ferrokv_backup::Compression::None,
            BackupCompression::Zstd => ferrokv_backup::Compression::Zstd,
        };
        let cluster = store_cluster(&self.ec);
        let (manifest, counted) = match crate::backup_io::snapshot_to_store(
            &self.members,
            &endpoint,
            &dest,
            &cluster,
            compression,
            encryption.as_ref(),
        )
        .await
        {
            Ok(m) => m,
            Err(e) => {
                return failed(format!(
                    "backup from {member} to {}: {e}",
                    self.store.destination
                ))
            }
        };
        if let Some(r) = retention {
            let max_age = match r.max_age.as_deref().map(parse_age).transpose() {
                Ok(a) => a,
                Err(e) => return failed(e),
            };
            if r.keep_last.is_some() || max_age.is_some() {
                if let Err(e) = ferrokv_backup::apply_retention(
                    &dest,
                    &cluster,
                    r.keep_last,
                    max_age,
                    Utc::now(),
                )
                .await
                {
                    // The backup itself is stored; retention is retried after the next one.
                    warn!(error = %e, "retention failed");
                }
            }
        }
        let mut record = record_of(&dest, &manifest, Some(member));
        record.keys = counted.keys;
        record.hash_kv = counted.hash_kv;
        Outcome::Succeeded(record)
    }
}

/// Starts the drill when it is due and nothing is running; how long until it is due.
fn on_drill(
    backups: &Backups,
    job: impl FnOnce() -> Option<Job>,
    ec: &EtcdCluster,
    now: DateTime<Utc>,
) -> Option<Duration> {
    match backups.drill_due(ec, now) {
        Due::Wait(d) => d,
        Due::Now { at, .. } => {
            let Some(job) = job() else {
                return Some(Duration::from_secs(10));
            };
            if !backups.try_start_drill(ec, at) {
                return Some(Duration::from_secs(5));
            }
            let backups = backups.clone();
            tokio::spawn(async move {
                let result = job.verify().await;
                backups.finish_drill(&job.ec, result);
            });
            Some(Duration::from_secs(5))
        }
    }
}

impl Job {
    /// Restores the newest backup of the cluster in a scratch member and checks it
    /// ([`crate::drill`]); publishes the Event.
    pub async fn verify(&self) -> std::result::Result<VerifiedBackup, String> {
        let result = async {
            let ns = self.ec.namespace().unwrap_or_default();
            let (cfg, encryption) = store_config(&self.client, &ns, &self.store)
                .await
                .map_err(|f| f.message)?;
            let dest = ferrokv_backup::Destination::open(&cfg)
                .map_err(|e| format!("opening {}: {e}", self.store.destination))?;
            let newest = ferrokv_backup::select(
                &dest,
                &store_cluster(&self.ec),
                &ferrokv_backup::Selector::Latest,
            )
            .await
            .map_err(|e| e.to_string())?;
            let recorded = self.ec.status.as_ref().and_then(|s| s.last_backup.as_ref());
            crate::drill::drill(&dest, &newest, recorded, encryption.as_ref()).await
        }
        .await;
        match &result {
            Ok(v) => {
                self.event(
                    EventType::Normal,
                    "BackupVerified",
                    format!(
                        "restore drill of {} passed: revision {}, {} keys, HashKV {}",
                        v.uri, v.revision, v.keys, v.hash_kv
                    ),
                )
                .await
            }
            Err(m) => {
                warn!(cluster = %store_cluster(&self.ec), message = %m, "restore drill failed");
                self.event(EventType::Warning, "BackupVerificationFailed", m.clone())
                    .await
            }
        }
        result
    }
}

/// `status.lastBackup` from a manifest.
pub fn record_of(
    dest: &ferrokv_backup::Destination,
    m: &ferrokv_backup::Manifest,
    member: Option<String>,
) -> BackupRecord {
    BackupRecord {
        time: m.created.clone(),
        uri: dest.url_of(&m.object),
        revision: m.revision,
        raft_index: m.raft_index,
        size: m.size,
        stored_size: m.stored_size,
        sha256: m.sha256.clone(),
        cluster_id: format!("{:x}", m.cluster_id),
        member,
        keys: None,
        hash_kv: None,
    }
}

/// Starts the scheduled backup when it is due and none is running; returns how long the
/// controller may wait before looking again.
pub fn on_reconcile(
    backups: &Backups,
    metrics: &crate::metrics::Metrics,
    job: impl FnOnce() -> Option<Job>,
    ec: &EtcdCluster,
) -> Option<Duration> {
    let spec = ec.spec.backup.as_ref()?;
    let now = Utc::now();
    if let Some(Ok(s)) = spec
        .schedule
        .as_deref()
        .map(|s| Schedule::parse(s, spec.time_zone.as_deref()))
    {
        if let Some(interval) = s.interval_after(now) {
            let last = ec
                .status
                .as_ref()
                .and_then(|st| st.last_backup.as_ref())
                .and_then(|r| parse_time(&r.time))
                .map(|t| t.timestamp() as f64);
            metrics.backup_schedule(&store_cluster(ec), interval.as_secs_f64(), last);
        }
    }
    match backups.due(ec, now) {
        Due::Wait(d) => {
            let drill_wait = on_drill(backups, job, ec, now);
            match (d, drill_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Due::Now { at, missed } => {
            if backups.running(ec) {
                return Some(Duration::from_secs(5));
            }
            let Some(job) = job() else {
                return Some(Duration::from_secs(10));
            };
            let missed_msg = (missed > 0).then(|| {
                format!(
                    "{missed} scheduled backup(s) before {} were missed (operator not running or a backup took longer than the schedule); taking one now",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            });
            if !backups.try_start(ec, Some(at), missed_msg.clone()) {
                return Some(Duration::from_secs(5));
            }
            let backups = backups.clone();
            let retention = spec.retention.clone();
            tokio::spawn(async move {
                if let Some(m) = missed_msg {
                    job.event(EventType::Warning, "BackupScheduleMissed", m)
                        .await;
                    job.metrics.backup_missed(&job.ec.name_any());
                }
                let outcome = job.run(Some(&retention)).await;
                backups.finish(&job.ec, outcome);
            });
            Some(Duration::from_secs(5))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::{ClusterView, MemberHealth, MemberInfo};
    use crate::resources::fixtures::cluster;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).expect("time")
    }

    #[test]
    fn schedules_parse_with_seconds_and_time_zones() {
        let s = Schedule::parse("0 3 * * *", Some("Europe/Berlin")).expect("parse");
        // 03:00 in Berlin in winter is 02:00 UTC.
        assert_eq!(
            s.next_after(t("2026-01-10T12:00:00Z")),
            Some(t("2026-01-11T02:00:00Z"))
        );
        let s = Schedule::parse("*/15 * * * * *", None).expect("seconds");
        assert_eq!(
            s.interval_after(t("2026-01-10T12:00:01Z")),
            Some(Duration::from_secs(15))
        );
        for bad in ["* * *", "61 * * * *", "a b c d e"] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
        let e = Schedule::parse("0 * * * *", Some("Mars/Olympus")).expect_err("zone");
        assert!(e.contains("timeZone"), "{e}");
    }

    #[test]
    fn due_waits_for_the_next_fire_time_and_counts_missed_ones() {
        let s = Schedule::parse("0 * * * *", None).expect("hourly");
        let last = t("2026-01-10T10:00:00Z");
        assert_eq!(
            due(&s, last, t("2026-01-10T10:59:00Z")),
            Due::Wait(Some(Duration::from_secs(60)))
        );
        assert_eq!(
            due(&s, last, t("2026-01-10T11:00:30Z")),
            Due::Now {
                at: t("2026-01-10T11:00:00Z"),
                missed: 0
            }
        );
        // The operator was down from 10:30 to 13:10: 11:00 and 12:00 were missed.
        assert_eq!(
            due(&s, last, t("2026-01-10T13:10:00Z")),
            Due::Now {
                at: t("2026-01-10T13:00:00Z"),
                missed: 2
            }
        );
    }

    #[test]
    fn long_notes_keep_their_start_and_end() {
        let long = format!(
            "listing failed: {} (check the credentials)",
            "x".repeat(2000)
        );
        let n = cap_note(&long);
        assert!(n.chars().count() <= 1000, "{}", n.len());
        assert!(n.starts_with("listing failed: "));
        assert!(n.ends_with("(check the credentials)"));
        assert_eq!(cap_note("short"), "short");
    }

    #[test]
    fn ages_and_stores_are_validated() {
        assert_eq!(parse_age("36h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_age("7w").is_err());
        assert!(parse_age("h").is_err());
        let store = |d: &str, creds: bool| BackupStore {
            destination: d.into(),
            credentials_secret: creds.then(|| "c".into()),
            ..BackupStore::default()
        };
        assert!(validate_store(&store("file:///backups", false), "spec.backup").is_ok());
        assert!(validate_store(&store("s3://b/p", true), "spec.backup").is_ok());
        let e = validate_store(&store("s3://b/p", false), "spec.backup").expect_err("creds");
        assert!(e.contains("credentialsSecret"), "{e}");
        assert!(validate_store(&store("ftp://x", true), "spec.backup").is_err());
    }

    #[test]
    fn a_healthy_follower_is_picked_over_the_leader() {
        let m = |id, name: &str| MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![],
            client_urls: vec![],
            learner: false,
        };
        let h = |id, errors: Vec<String>| {
            Some(MemberHealth {
                member_id: id,
                leader: 1,
                raft_index: 1,
                version: "x".into(),
                db_size: 1,
                errors,
            })
        };
        let view = ClusterView {
            cluster_id: 1,
            members: vec![
                (m(1, "kv-0"), h(1, vec![])),
                (m(2, "kv-1"), h(2, vec!["NOSPACE".into()])),
                (m(3, "kv-2"), h(3, vec![])),
            ],
            alarms: vec![],
        };
        assert_eq!(pick_member(&view).as_deref(), Some("kv-2"));
        let solo = ClusterView {
            cluster_id: 1,
            members: vec![(m(1, "kv-0"), h(1, vec![]))],
            alarms: vec![],
        };
        assert_eq!(pick_member(&solo).as_deref(), Some("kv-0"));
    }

    #[test]
    fn status_reports_the_last_outcome() {
        let mut ec = cluster("kv", 3);
        ec.spec.backup = Some(BackupSpec {
            schedule: Some("0 * * * *".into()),
            store: BackupStore {
                destination: "file:///b".into(),
                ..BackupStore::default()
            },
            ..BackupSpec::default()
        });
        let b = Backups::default();
        let mut st = EtcdClusterStatus::default();
        b.decorate(&ec, &mut st);
        let ready = |st: &EtcdClusterStatus| {
            st.conditions
                .iter()
                .find(|c| c.type_ == condition::BACKUP_READY)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        assert_eq!(ready(&st), Some(("False".into(), "NoBackupYet".into())));
        assert!(b.try_start(&ec, Some(t("2026-01-10T11:00:00Z")), None));
        assert!(!b.try_start(&ec, None, None), "one at a time");
        let record = BackupRecord {
            time: "2026-01-10T11:00:02Z".into(),
            uri: "file:///b/prod/kv/x".into(),
            revision: 42,
            size: 100,
            sha256: "ab".into(),
            ..BackupRecord::default()
        };
        b.finish(&ec, Outcome::Succeeded(record.clone()));
        b.decorate(&ec, &mut st);
        assert_eq!(ready(&st), Some(("True".into(), "BackupSucceeded".into())));
        assert_eq!(st.last_backup, Some(record.clone()));
        assert_eq!(
            st.last_backup_attempt.as_deref(),
            Some("2026-01-10T11:00:00Z")
        );
        assert!(b.try_start(&ec, None, None));
        b.finish(
            &ec,
            Outcome::Failed {
                reason: "BackupFailed",
                message: "access denied".into(),
            },
        );
        b.decorate(&ec, &mut st);
        assert_eq!(ready(&st), Some(("False".into(), "BackupFailed".into())));
        // The last good backup stays reported.
        assert_eq!(st.last_backup, Some(record));
        assert_eq!(
            st.conditions
                .iter()
                .filter(|c| c.type_ == condition::BACKUP_READY)
                .count(),
            1
        );
    }
}
