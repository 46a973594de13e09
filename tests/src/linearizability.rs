//! Recorded-history checking of the KV guarantees, in the spirit of etcd's `tests/robustness`.
//!
//! Pure and synchronous: a test records a [`History`] of operations (call time, return time,
//! request, and a response or "unknown" when the client lost the answer), plus the events a
//! watcher received, and then runs:
//!
//! - [`check_revisions`] (check A): rebuilds the state of the store at every revision from the
//!   writes whose revisions are known, resolves unknown-outcome writes from what reads and the
//!   watch observed, and checks unique/ordered revisions, reads, CAS decisions and deletes.
//! - [`check_linearizable`] (check B): a Wing & Gong search with memoisation of (linearized set,
//!   model state), partitioned per key (linearizability is compositional), under a time budget.
//! - [`check_watch`]: ordered, unique, gap-free watch events whose kv / prev_kv match the state.
//!
//! Assumes every operation touches one key (single-key txns), so a revision holds at most one
//! change. Must not depend on any ferrokv crate: the store is a black box.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

/// A store revision as reported in response headers and `mod_revision`s.
pub type Rev = i64;

/// A (value, mod_revision) pair as a read returns it.
pub type ValueRev = (String, Rev);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// `Txn{ MOD(key) == expected_mod_revision → Put(key, new_value) else Range(key) }`, the
    /// kube-apiserver update; `expected_mod_revision == 0` means "create if absent".
    Cas {
        key: String,
        expected_mod_revision: Rev,
        new_value: String,
    },
}

impl Request {
    pub fn key(&self) -> &str {
        match self {
            Request::Put { key, .. }
            | Request::Get { key }
            | Request::Delete { key }
            | Request::Cas { key, .. } => key,
        }
    }

    fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Put {
        revision: Rev,
    },
    /// `revision` is the header revision the read was served at.
    Get {
        kv: Option<ValueRev>,
        revision: Rev,
    },
    Delete {
        deleted: i64,
        revision: Rev,
    },
    /// On failure `kv` is what the else-branch Range returned; on success it is ignored.
    Cas {
        succeeded: bool,
        revision: Rev,
        kv: Option<ValueRev>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Known(Response),
    /// Timeout or lost connection: the op may have taken effect at any time after its call,
    /// or never.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: u32,
    /// Nanoseconds since some common start (monotonic clock).
    pub call: u128,
    /// Ignored for unknown outcomes (treated as "never returned").
    pub ret: u128,
    pub req: Request,
    pub outcome: Outcome,
}

impl Op {
    fn ret_or_never(&self) -> u128 {
        match self.outcome {
            Outcome::Known(_) => self.ret,
            Outcome::Unknown => u128::MAX,
        }
    }

    /// The revision this op reports and whether it changed the store.
    fn known_revision(&self) -> Option<(Rev, bool)> {
        match &self.outcome {
            Outcome::Unknown => None,
            Outcome::Known(r) => Some(match r {
                Response::Put { revision } => (*revision, true),
                Response::Get { revision, .. } => (*revision, false),
                Response::Delete { deleted, revision } => (*revision, *deleted > 0),
                Response::Cas {
                    succeeded,
                    revision,
                    ..
                } => (*revision, *succeeded),
            }),
        }
    }
}

/// The recorded history. The store is assumed empty at `initial_revision` for the keys used.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub initial_revision: Rev,
    pub ops: Vec<Op>,
}

impl History {
    pub fn new(initial_revision: Rev) -> History {
        History {
            initial_revision,
            ops: Vec::new(),
        }
    }

    /// One line describing op `i`, for violation reports.
    pub fn describe(&self, i: usize) -> String {
        let Some(op) = self.ops.get(i) else {
            return format!("#{i} <no such op>");
        };
        let secs = |t: u128| t as f64 / 1e9;
        let req = match &op.req {
            Request::Put { key, value } => format!("Put({key}={value})"),
            Request::Get { key } => format!("Get({key})"),
            Request::Delete { key } => format!("Delete({key})"),
            Request::Cas {
                key,
                expected_mod_revision,
                new_value,
            } => format!("Cas({key}: mod=={expected_mod_revision} -> {new_value})"),
        };
        let kv = |kv: &Option<ValueRev>| match kv {
            Some((v, m)) => format!("{v}@{m}"),
            None => "<absent>".into(),
        };
        let out = match &op.outcome {
            Outcome::Unknown => "UNKNOWN".to_string(),
            Outcome::Known(Response::Put { revision }) => format!("rev {revision}"),
            Outcome::Known(Response::Get { kv: v, revision }) => {
                format!("{} (header rev {revision})", kv(v))
            }
            Outcome::Known(Response::Delete { deleted, revision }) => {
                format!("deleted {deleted}, rev {revision}")
            }
            Outcome::Known(Response::Cas {
                succeeded,
                revision,
                kv: v,
            }) => {
                if *succeeded {
                    format!("succeeded, rev {revision}")
                } else {
                    format!("failed, saw {} (header rev {revision})", kv(v))
                }
            }
        };
        let ret = match op.outcome {
            Outcome::Known(_) => format!("{:.6}s", secs(op.ret)),
            Outcome::Unknown => "?".into(),
        };
        format!(
            "#{i} client {} [{:.6}s..{ret}] {req} -> {out}",
            op.client,
            secs(op.call)
        )
    }

    fn describe_all(&self, ops: &[usize]) -> String {
        ops.iter()
            .map(|&i| format!("\n    {}", self.describe(i)))
            .collect()
    }
}

/// A broken guarantee: which rule, and the ops involved (already formatted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {detail}")]
pub struct Violation {
    pub rule: Rule,
    pub detail: String,
}

/// The rules the checkers enforce; tests match on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A request and its response do not belong together, or a revision is below the start.
    Malformed,
    DuplicateRevision,
    /// An op that started after another returned saw an older (or, for a write, equal) revision.
    RevisionOrder,
    /// A read or watch shows a value at a revision where a different write is recorded.
    ConflictingObservation,
    /// A value or delete was observed that no recorded write could have produced.
    PhantomWrite,
    /// Revisions were consumed that no write (known or unknown) can account for.
    RevisionGap,
    /// A read disagrees with the state at its header revision.
    StaleRead,
    /// A CAS decision disagrees with the key's mod_revision before it.
    CasDecision,
    /// A delete disagrees with the key's presence.
    DeleteDecision,
    /// No linearization exists (check B).
    NotLinearizable,
    WatchOrder,
    WatchMissedEvent,
    WatchUnexpectedEvent,
    WatchContent,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

fn violation(rule: Rule, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        detail: detail.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Watch events
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One event as a watcher received it (with `prev_kv` requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub key: String,
    /// Empty for deletes.
    pub value: String,
    pub mod_revision: Rev,
    /// 0 for deletes (etcd zeroes them).
    pub create_revision: Rev,
    pub version: i64,
    pub prev: Option<ValueRev>,
}

// ---------------------------------------------------------------------------------------------
// Check A: the revision model
// ---------------------------------------------------------------------------------------------

/// The change made at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub key: String,
    /// `None` = delete.
    pub value: Option<String>,
    /// The op that made it (a known write, or an unknown one resolved from observations).
    pub op: usize,
}

/// A key's value as the state model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub value: String,
    pub mod_revision: Rev,
    /// `(create_revision, version)`, unknown after an unexplained revision touched the key.
    pub meta: Option<(Rev, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Known(Option<Kv>),
    /// An unexplained revision may have changed this key.
    Uncertain,
}

/// The store's history rebuilt by [`check_revisions`].
#[derive(Debug, Clone, Default)]
pub struct StateHistory {
    pub initial_revision: Rev,
    pub max_revision: Rev,
    pub effects: BTreeMap<Rev, Effect>,
    /// Revisions that no op could be tied to (each needs an unresolved unknown write).
    pub gaps: Vec<Rev>,
    /// Unknown-outcome ops that observations prove took effect, with their revision.
    pub resolved: HashMap<usize, Rev>,
    per_key: HashMap<String, Vec<(Rev, KeyState)>>,
}

impl StateHistory {
    /// The state of `key` after all changes up to and including `rev`.
    pub fn state_at(&self, key: &str, rev: Rev) -> KeyState {
        let Some(versions) = self.per_key.get(key) else {
            return KeyState::Known(None);
        };
        let n = versions.partition_point(|(r, _)| *r <= rev);
        if n == 0 {
            KeyState::Known(None)
        } else {
            versions[n - 1].1.clone()
        }
    }
}

fn same_vr(kv: &Option<Kv>, seen: &Option<ValueRev>) -> bool {
    match (kv, seen) {
        (None, None) => true,
        (Some(a), Some((v, m))) => a.value == *v && a.mod_revision == *m,
        _ => false,
    }
}

fn show_kv(kv: &Option<Kv>) -> String {
    match kv {
        Some(k) => format!("{}@{}", k.value, k.mod_revision),
        None => "<absent>".into(),
    }
}

/// Check A. `evidence` are watch events (any watcher, any range); they help resolve which
/// unknown-outcome writes took effect and are themselves checked against the recorded writes.
pub fn check_revisions(h: &History, evidence: &[WatchEvent]) -> Result<StateHistory, Violation> {
    let init = h.initial_revision;
    let mut effects: BTreeMap<Rev, Effect> = BTreeMap::new();
    let add_effect = |effects: &mut BTreeMap<Rev, Effect>, rev: Rev, e: Effect| {
        if rev <= init {
            return Err(violation(
                Rule::Malformed,
                format!(
                    "write at revision {rev}, not above the initial revision {init}:{}",
                    h.describe_all(&[e.op])
                ),
            ));
        }
        if let Some(prev) = effects.get(&rev) {
            return Err(violation(
                Rule::DuplicateRevision,
                format!(
                    "two writes share revision {rev}:{}",
                    h.describe_all(&[prev.op, e.op])
                ),
            ));
        }
        effects.insert(rev, e);
        Ok(())
    };

    // 1. Writes with known revisions.
    for (i, op) in h.ops.iter().enumerate() {
        if op.ret < op.call && matches!(op.outcome, Outcome::Known(_)) {
            return Err(violation(
                Rule::Malformed,
                format!("returns before its call:{}", h.describe_all(&[i])),
            ));
        }
        let Outcome::Known(resp) = &op.outcome else {
            continue;
        };
        let key = op.req.key().to_string();
        let e = |value: Option<&String>| Effect {
            key: key.clone(),
            value: value.cloned(),
            op: i,
        };
        match (&op.req, resp) {
            (Request::Put { value, .. }, Response::Put { revision }) => {
                add_effect(&mut effects, *revision, e(Some(value)))?
            }
            (Request::Get { .. }, Response::Get { revision, .. }) => {
                if *revision < init {
                    return Err(violation(
                        Rule::Malformed,
                        format!("read below the initial revision:{}", h.describe_all(&[i])),
                    ));
                }
            }
            (Request::Delete { .. }, Response::Delete { deleted, revision }) => match deleted {
                0 => {}
                1 => add_effect(&mut effects, *revision, e(None))?,
                _ => {
                    return Err(violation(
                        Rule::DeleteDecision,
                        format!(
                            "a one-key delete deleted {deleted}:{}",
                            h.describe_all(&[i])
                        ),
                    ))
                }
            },
            (
                Request::Cas { new_value, .. },
                Response::Cas {
                    succeeded,
                    revision,
                    ..
                },
            ) => {
                if *succeeded {
                    add_effect(&mut effects, *revision, e(Some(new_value)))?
                }
            }
            _ => {
                return Err(violation(
                    Rule::Malformed,
                    format!("response does not match request:{}", h.describe_all(&[i])),
                ))
            }
        }
    }

    // 2. Observations: what reads and watch events saw, used to resolve unknown writes.
    enum Seen<'a> {
        Value(&'a str, &'a str, Rev),
        Deleted(&'a str, Rev),
    }
    let mut seen: Vec<(Seen, String)> = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        let kv = match &op.outcome {
            Outcome::Known(Response::Get { kv: Some(kv), .. }) => kv,
            Outcome::Known(Response::Cas {
                succeeded: false,
                kv: Some(kv),
                ..
            }) => kv,
            _ => continue,
        };
        seen.push((Seen::Value(op.req.key(), &kv.0, kv.1), h.describe_all(&[i])));
    }
    for ev in evidence {
        let what = format!("\n    watch event {ev:?}");
        match ev.kind {
            EventKind::Put => seen.push((Seen::Value(&ev.key, &ev.value, ev.mod_revision), what)),
            EventKind::Delete => seen.push((Seen::Deleted(&ev.key, ev.mod_revision), what)),
        }
        if let Some((v, m)) = &ev.prev {
            seen.push((
                Seen::Value(&ev.key, v, *m),
                format!("\n    prev_kv of watch event {ev:?}"),
            ));
        }
    }
    let mut resolved: HashMap<usize, Rev> = HashMap::new();
    for (s, who) in &seen {
        let (key, value, rev) = match s {
            Seen::Value(k, v, r) => (*k, Some(*v), *r),
            Seen::Deleted(k, r) => (*k, None, *r),
        };
        if let Some(e) = effects.get(&rev) {
            if e.key != key || e.value.as_deref() != value {
                return Err(violation(
                    Rule::ConflictingObservation,
                    format!(
                        "{key}={} observed at revision {rev}, but revision {rev} is recorded as:{}\n  observed by:{who}",
                        value.unwrap_or("<deleted>"),
                        h.describe_all(&[e.op])
                    ),
                ));
            }
            continue;
        }
        // An unknown write on this key that can explain it: same value for puts/CAS; for
        // deletes, the earliest-called unresolved one (unknown deletes are interchangeable).
        let candidate = h
            .ops
            .iter()
            .enumerate()
            .filter(|(i, op)| {
                op.outcome == Outcome::Unknown
                    && op.req.key() == key
                    && !resolved.contains_key(i)
                    && match (&op.req, value) {
                        (Request::Put { value: w, .. }, Some(v)) => w == v,
                        (Request::Cas { new_value: w, .. }, Some(v)) => w == v,
                        (Request::Delete { .. }, None) => true,
                        _ => false,
                    }
            })
            .min_by_key(|(_, op)| op.call)
            .map(|(i, _)| i);
        let Some(i) = candidate else {
            return Err(violation(
                Rule::PhantomWrite,
                format!(
                    "{key}={} observed at revision {rev}, which no recorded write explains\n  observed by:{who}",
                    value.unwrap_or("<deleted>")
                ),
            ));
        };
        resolved.insert(i, rev);
        add_effect(
            &mut effects,
            rev,
            Effect {
                key: key.to_string(),
                value: value.map(str::to_string),
                op: i,
            },
        )?;
    }

    // 3. Every consumed revision must be explained.
    let mut max_revision = init;
    for op in &h.ops {
        if let Some((r, _)) = op.known_revision() {
            max_revision = max_revision.max(r);
        }
    }
    if let Some((r, _)) = effects.last_key_value() {
        max_revision = max_revision.max(*r);
    }
    let gaps: Vec<Rev> = (init + 1..=max_revision)
        .filter(|r| !effects.contains_key(r))
        .collect();
    let unresolved: Vec<usize> = h
        .ops
        .iter()
        .enumerate()
        .filter(|(i, op)| {
            op.outcome == Outcome::Unknown && op.req.is_write() && !resolved.contains_key(i)
        })
        .map(|(i, _)| i)
        .collect();
    if gaps.len() > unresolved.len() {
        return Err(violation(
            Rule::RevisionGap,
            format!(
                "revisions {gaps:?} were consumed but only {} unknown-outcome writes could explain them{}",
                unresolved.len(),
                h.describe_all(&unresolved)
            ),
        ));
    }

    // 4. Real time: if A returned before B was called, rev(A) <= rev(B), strictly if B wrote.
    struct Timed {
        call: u128,
        ret: u128,
        rev: Rev,
        write: bool,
        op: usize,
    }
    let mut timed: Vec<Timed> = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let Some((rev, write)) = op.known_revision() {
            timed.push(Timed {
                call: op.call,
                ret: op.ret,
                rev,
                write,
                op: i,
            });
        } else if let Some(&rev) = resolved.get(&i) {
            timed.push(Timed {
                call: op.call,
                ret: u128::MAX,
                rev,
                write: true,
                op: i,
            });
        }
    }
    let mut by_ret: Vec<usize> = (0..timed.len()).collect();
    by_ret.sort_by_key(|&t| timed[t].ret);
    let mut by_call: Vec<usize> = (0..timed.len()).collect();
    by_call.sort_by_key(|&t| timed[t].call);
    let mut done = 0;
    let mut floor: Option<usize> = None; // index into `timed` of the max revision returned so far
    for &b in &by_call {
        while done < by_ret.len() && timed[by_ret[done]].ret < timed[b].call {
            let a = by_ret[done];
            if floor.is_none_or(|f| timed[a].rev > timed[f].rev) {
                floor = Some(a);
            }
            done += 1;
        }
        if let Some(a) = floor {
            let (ra, rb) = (timed[a].rev, timed[b].rev);
            if rb < ra || (timed[b].write && rb == ra) {
                return Err(violation(
                    Rule::RevisionOrder,
                    format!(
                        "revision {rb} of a later op is not after revision {ra} of an op that returned before it was called:{}",
                        h.describe_all(&[timed[a].op, timed[b].op])
                    ),
                ));
            }
        }
    }

    // 5. Replay the changes, checking each against the state before it.
    let uncertain_keys: HashSet<&str> = unresolved.iter().map(|&i| h.ops[i].req.key()).collect();
    let mut state = StateHistory {
        initial_revision: init,
        max_revision,
        effects: BTreeMap::new(),
        gaps: gaps.clone(),
        resolved,
        per_key: HashMap::new(),
    };
    let mut current: HashMap<String, KeyState> = HashMap::new();
    for rev in init + 1..=max_revision {
        let Some(e) = effects.get(&rev) else {
            for k in &uncertain_keys {
                current.insert(k.to_string(), KeyState::Uncertain);
                state
                    .per_key
                    .entry(k.to_string())
                    .or_default()
                    .push((rev, KeyState::Uncertain));
            }
            continue;
        };
        let before = current
            .get(&e.key)
            .cloned()
            .unwrap_or(KeyState::Known(None));
        let op = &h.ops[e.op];
        if let KeyState::Known(prev) = &before {
            match &op.req {
                Request::Delete { .. } if prev.is_none() => {
                    return Err(violation(
                        Rule::DeleteDecision,
                        format!(
                            "delete of absent key {} produced revision {rev}:{}",
                            e.key,
                            h.describe_all(&[e.op])
                        ),
                    ))
                }
                Request::Cas {
                    expected_mod_revision,
                    ..
                } => {
                    let m = prev.as_ref().map_or(0, |k| k.mod_revision);
                    if m != *expected_mod_revision {
                        return Err(violation(
                            Rule::CasDecision,
                            format!(
                                "CAS took effect at revision {rev} although {} had mod_revision {m} (state {}):{}",
                                e.key,
                                show_kv(prev),
                                h.describe_all(&[e.op])
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        let after = match &e.value {
            None => KeyState::Known(None),
            Some(v) => {
                let meta = match &before {
                    KeyState::Known(Some(k)) => k.meta.map(|(c, ver)| (c, ver + 1)),
                    KeyState::Known(None) => Some((rev, 1)),
                    KeyState::Uncertain => None,
                };
                KeyState::Known(Some(Kv {
                    value: v.clone(),
                    mod_revision: rev,
                    meta,
                }))
            }
        };
        current.insert(e.key.clone(), after.clone());
        state
            .per_key
            .entry(e.key.clone())
            .or_default()
            .push((rev, after));
    }
    state.effects = effects;

    // 6. Reads and failed conditions against the state at their header revision.
    for (i, op) in h.ops.iter().enumerate() {
        let Outcome::Known(resp) = &op.outcome else {
            continue;
        };
        let key = op.req.key();
        match (&op.req, resp) {
            (Request::Get { .. }, Response::Get { kv, revision }) => {
                if let KeyState::Known(expect) = state.state_at(key, *revision) {
                    if !same_vr(&expect, kv) {
                        let writer = expect
                            .as_ref()
                            .and_then(|k| state.effects.get(&k.mod_revision))
                            .map(|e| h.describe_all(&[e.op]))
                            .unwrap_or_default();
                        return Err(violation(
                            Rule::StaleRead,
                            format!(
                                "{key} at revision {revision} is {}, but the read returned something else:{}\n  state written by:{writer}",
                                show_kv(&expect),
                                h.describe_all(&[i])
                            ),
                        ));
                    }
                }
            }
            (
                Request::Cas {
                    expected_mod_revision,
                    ..
                },
                Response::Cas {
                    succeeded: false,
                    revision,
                    kv,
                },
            ) => {
                if let KeyState::Known(expect) = state.state_at(key, *revision) {
                    let m = expect.as_ref().map_or(0, |k| k.mod_revision);
                    if m == *expected_mod_revision || !same_vr(&expect, kv) {
                        return Err(violation(
                            Rule::CasDecision,
                            format!(
                                "CAS failed at revision {revision} where {key} is {}:{}",
                                show_kv(&expect),
                                h.describe_all(&[i])
                            ),
                        ));
                    }
                }
            }
            (
                Request::Delete { .. },
                Response::Delete {
                    deleted: 0,
                    revision,
                },
            ) => {
                if let KeyState::Known(Some(k)) = state.state_at(key, *revision) {
                    return Err(violation(
                        Rule::DeleteDecision,
                        format!(
                            "delete found nothing at revision {revision} where {key} is {}@{}:{}",
                            k.value,
                            k.mod_revision,
                            h.describe_all(&[i])
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(state)
}

// ---------------------------------------------------------------------------------------------
// Watch checks
// ---------------------------------------------------------------------------------------------

/// What [`check_watch`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSummary {
    pub events: usize,
    /// The last revision the watcher saw (the start revision - 1 when it saw none).
    pub last_revision: Rev,
}

/// Checks one watcher's events (watching keys where `in_range(key)`, from `start_revision`,
/// with `prev_kv`) against the rebuilt state: ordered by revision, unique, every change in
/// `[start_revision, last event revision]` present, and kv / prev_kv as the state says.
/// Whether the watcher caught up to the end is the caller's check (`last_revision`).
pub fn check_watch(
    h: &History,
    state: &StateHistory,
    events: &[WatchEvent],
    start_revision: Rev,
    in_range: &dyn Fn(&str) -> bool,
) -> Result<WatchSummary, Violation> {
    let mut last: Option<&WatchEvent> = None;
    for ev in events {
        if ev.mod_revision < start_revision || !in_range(&ev.key) {
            return Err(violation(
                Rule::WatchUnexpectedEvent,
                format!("event outside the watch (from {start_revision}): {ev:?}"),
            ));
        }
        if let Some(p) = last {
            // One change per revision here, so revisions must strictly increase.
            if ev.mod_revision <= p.mod_revision {
                return Err(violation(
                    Rule::WatchOrder,
                    format!("event {ev:?}\n  came after {p:?}"),
                ));
            }
        }
        last = Some(ev);
    }
    let last_revision = last.map_or(start_revision - 1, |e| e.mod_revision);

    let mut got = events.iter().peekable();
    for (rev, e) in state.effects.range(start_revision..=last_revision) {
        if !in_range(&e.key) {
            continue;
        }
        // Events at unexplained revisions (gaps) cannot be verified; skip them.
        while let Some(ev) = got.peek() {
            if ev.mod_revision < *rev && state.gaps.binary_search(&ev.mod_revision).is_ok() {
                got.next();
            } else {
                break;
            }
        }
        let Some(ev) = got.next() else {
            return Err(violation(
                Rule::WatchMissedEvent,
                format!("no event for revision {rev}:{}", h.describe_all(&[e.op])),
            ));
        };
        if ev.mod_revision != *rev {
            let rule = if ev.mod_revision > *rev {
                Rule::WatchMissedEvent
            } else {
                Rule::WatchUnexpectedEvent
            };
            return Err(violation(
                rule,
                format!(
                    "expected the event of revision {rev}:{}\n  got {ev:?}",
                    h.describe_all(&[e.op])
                ),
            ));
        }
        let kind = if e.value.is_some() {
            EventKind::Put
        } else {
            EventKind::Delete
        };
        let mut wrong = Vec::new();
        if ev.key != e.key || ev.kind != kind {
            wrong.push("key/type");
        }
        if let (Some(v), KeyState::Known(Some(kv))) = (&e.value, state.state_at(&e.key, *rev)) {
            if ev.value != *v {
                wrong.push("value");
            }
            if let Some((c, ver)) = kv.meta {
                if ev.create_revision != c || ev.version != ver {
                    wrong.push("create_revision/version");
                }
            }
        }
        if let KeyState::Known(prev) = state.state_at(&e.key, rev - 1) {
            if !same_vr(&prev, &ev.prev) {
                wrong.push("prev_kv");
            }
        }
        if !wrong.is_empty() {
            return Err(violation(
                Rule::WatchContent,
                format!(
                    "event {ev:?} has wrong {wrong:?}; state before: {:?}; written by:{}",
                    state.state_at(&e.key, rev - 1),
                    h.describe_all(&[e.op])
                ),
            ));
        }
    }
    if let Some(ev) = got.find(|ev| state.gaps.binary_search(&ev.mod_revision).is_err()) {
        return Err(violation(
            Rule::WatchUnexpectedEvent,
            format!("event with no matching write: {ev:?}"),
        ));
    }
    Ok(WatchSummary {
        events: events.len(),
        last_revision,
    })
}

// ---------------------------------------------------------------------------------------------
// Check B: linearizability search (Wing & Gong / porcupine), per key
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linearizability {
    Ok {
        keys: usize,
        ops: usize,
    },
    /// Found by an exhausted search on some key: never the result of the budget running out.
    Violation(Violation),
    /// The time budget ran out on this key before a verdict (and no other key was found
    /// violating): undecided, which callers must not report as a violation.
    Unknown {
        key: String,
    },
}

/// A mod_revision the model does not know (the write's outcome was unknown).
const UNKNOWN_REV: Rev = -1;

/// The per-key model: the value (interned) with its mod_revision, and the highest revision
/// seen so far in the linearization (later writes must be above it, later reads at or above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Model {
    kv: Option<(u32, Rev)>,
    floor: Rev,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Put {
        v: u32,
        rev: Option<Rev>,
    },
    Get {
        kv: Option<(u32, Rev)>,
        rev: Rev,
    },
    /// A delete that removed the key (`rev` None: unknown outcome, unresolved).
    Del {
        rev: Option<Rev>,
    },
    /// A delete that found nothing.
    DelNone {
        rev: Rev,
    },
    CasOk {
        exp: Rev,
        v: u32,
        rev: Option<Rev>,
    },
    CasFail {
        exp: Rev,
        kv: Option<(u32, Rev)>,
        rev: Rev,
    },
}

struct KOp {
    idx: usize,
    /// Search heuristic: (revision, 0 for a change / 1 for a read); unknown revisions last.
    order: (Rev, u8),
    call: u128,
    ret: u128,
    known: bool,
    step: Step,
}

fn kv_match(model: Option<(u32, Rev)>, seen: Option<(u32, Rev)>) -> Option<Option<(u32, Rev)>> {
    match (model, seen) {
        (None, None) => Some(None),
        (Some((a, m)), Some((b, r))) if a == b && (m == UNKNOWN_REV || m == r) => {
            Some(Some((b, r)))
        }
        _ => None,
    }
}

fn mod_matches(model: Option<(u32, Rev)>, exp: Rev) -> Option<bool> {
    match model {
        None => Some(exp == 0),
        Some((_, UNKNOWN_REV)) => None,
        Some((_, m)) => Some(m == exp),
    }
}

fn step(s: Model, st: Step) -> Option<Model> {
    match st {
        Step::Put { v, rev: Some(r) } => (r > s.floor).then_some(Model {
            kv: Some((v, r)),
            floor: r,
        }),
        Step::Put { v, rev: None } => Some(Model {
            kv: Some((v, UNKNOWN_REV)),
            floor: s.floor,
        }),
        Step::Get { kv, rev } => {
            if rev < s.floor {
                return None;
            }
            kv_match(s.kv, kv).map(|kv| Model { kv, floor: rev })
        }
        Step::Del { rev } => {
            s.kv?;
            match rev {
                Some(r) => (r > s.floor).then_some(Model { kv: None, floor: r }),
                None => Some(Model {
                    kv: None,
                    floor: s.floor,
                }),
            }
        }
        Step::DelNone { rev } => (s.kv.is_none() && rev >= s.floor).then_some(Model {
            kv: None,
            floor: rev,
        }),
        Step::CasOk { exp, v, rev } => {
            if mod_matches(s.kv, exp) == Some(false) {
                return None;
            }
            match rev {
                Some(r) => (r > s.floor).then_some(Model {
                    kv: Some((v, r)),
                    floor: r,
                }),
                None => Some(Model {
                    kv: Some((v, UNKNOWN_REV)),
                    floor: s.floor,
                }),
            }
        }
        Step::CasFail { exp, kv, rev } => {
            if rev < s.floor || mod_matches(s.kv, exp) == Some(true) {
                return None;
            }
            kv_match(s.kv, kv).map(|kv| Model { kv, floor: rev })
        }
    }
}

/// Check B over every key. With `state` (from [`check_revisions`]) the revision of unknown
/// writes that were observed is pinned, and when every revision up to the last one observed is
/// explained (no gaps), unknown writes that were never observed are left out: had one taken
/// effect at or below that revision it would have been observed, and one taking effect later
/// is linearized after everything, where it changes nothing. Without `state`, unknown writes
/// are modelled with an unknown revision (sound, but the search may run out of budget).
pub fn check_linearizable(
    h: &History,
    state: Option<&StateHistory>,
    budget: Duration,
) -> Linearizability {
    let resolved = state.map(|s| &s.resolved);
    let drop_unresolved = state.is_some_and(|s| s.gaps.is_empty());
    let deadline = Instant::now() + budget;
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &String| -> u32 {
        if let Some(&n) = values.get(v.as_str()) {
            return n;
        }
        let n = values.len() as u32;
        values.insert(v.clone(), n);
        n
    };
    let mut per_key: BTreeMap<&str, Vec<KOp>> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        let pinned = resolved.and_then(|r| r.get(&i).copied());
        if drop_unresolved && op.outcome == Outcome::Unknown && pinned.is_none() {
            continue;
        }
        let step = match (&op.req, &op.outcome) {
            (Request::Get { .. }, Outcome::Unknown) => continue,
            (Request::Get { .. }, Outcome::Known(Response::Get { kv, revision })) => Step::Get {
                kv: kv.as_ref().map(|(v, m)| (intern(v), *m)),
                rev: *revision,
            },
            (Request::Put { value, .. }, Outcome::Known(Response::Put { revision })) => Step::Put {
                v: intern(value),
                rev: Some(*revision),
            },
            (Request::Put { value, .. }, Outcome::Unknown) => Step::Put {
                v: intern(value),
                rev: pinned,
            },
            (Request::Delete { .. }, Outcome::Known(Response::Delete { deleted, revision })) => {
                if *deleted > 0 {
                    Step::Del {
                        rev: Some(*revision),
                    }
                } else {
                    Step::DelNone { rev: *revision }
                }
            }
            (Request::Delete { .. }, Outcome::Unknown) => Step::Del { rev: pinned },
            (
                Request::Cas {
                    expected_mod_revision,
                    new_value,
                    ..
                },
                Outcome::Known(Response::Cas {
                    succeeded,
                    revision,
                    kv,
                }),
            ) => {
                if *succeeded {
                    Step::CasOk {
                        exp: *expected_mod_revision,
                        v: intern(new_value),
                        rev: Some(*revision),
                    }
                } else {
                    Step::CasFail {
                        exp: *expected_mod_revision,
                        kv: kv.as_ref().map(|(v, m)| (intern(v), *m)),
                        rev: *revision,
                    }
                }
            }
            (
                Request::Cas {
                    expected_mod_revision,
                    new_value,
                    ..
                },
                Outcome::Unknown,
            ) => Step::CasOk {
                exp: *expected_mod_revision,
                v: intern(new_value),
                rev: pinned,
            },
            _ => {
                return Linearizability::Violation(violation(
                    Rule::Malformed,
                    format!("response does not match request:{}", h.describe_all(&[i])),
                ))
            }
        };
        let order = match step {
            Step::Put { rev: Some(r), .. }
            | Step::Del { rev: Some(r) }
            | Step::CasOk { rev: Some(r), .. } => (r, 0),
            Step::Get { rev, .. } | Step::DelNone { rev } | Step::CasFail { rev, .. } => (rev, 1),
            _ => (Rev::MAX, 0),
        };
        per_key.entry(op.req.key()).or_default().push(KOp {
            idx: i,
            order,
            call: op.call,
            ret: op.ret_or_never(),
            known: matches!(op.outcome, Outcome::Known(_)),
            step,
        });
    }
    let mut total = 0;
    let keys = per_key.len();
    // The first key the budget ran out on. Undecided is never a violation: only an exhausted
    // search (`Search::Fail`) is. The other keys are still searched (each gets at least one
    // slice of iterations past the deadline), so a violation the search can decide on another
    // key is reported rather than hidden behind the undecided one.
    let mut undecided: Option<&str> = None;
    for (key, mut ops) in per_key {
        ops.sort_by_key(|o| o.call);
        total += ops.len();
        match search(&ops, deadline) {
            Search::Ok => {}
            Search::Timeout => {
                undecided.get_or_insert(key);
            }
            Search::Fail { stuck } => {
                let idx: Vec<usize> = stuck.iter().map(|&k| ops[k].idx).collect();
                return Linearizability::Violation(violation(
                    Rule::NotLinearizable,
                    format!(
                        "key {key}: no linearization; the longest linearizable prefix cannot be extended by any of:{}",
                        h.describe_all(&idx)
                    ),
                ));
            }
        }
    }
    match undecided {
        Some(key) => Linearizability::Unknown {
            key: key.to_string(),
        },
        None => Linearizability::Ok { keys, ops: total },
    }
}

enum Search {
    Ok,
    Timeout,
    /// Candidate ops (indices into the partition) at the deepest point reached.
    Fail {
        stuck: Vec<usize>,
    },
}

struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn first_clear(&self) -> usize {
        self.0
            .iter()
            .position(|w| *w != u64::MAX)
            .map_or(self.0.len() * 64, |w| {
                w * 64 + self.0[w].trailing_ones() as usize
            })
    }
    fn flip(&mut self, i: usize) {
        self.0[i / 64] ^= 1 << (i % 64);
    }
}

/// Depth-first Wing & Gong over one key's ops (sorted by call time). An op may be linearized
/// next if its call is not after the earliest return among the known ops still pending.
/// Unknown ops never have to be linearized (returning "never" puts them after everything).
fn search(ops: &[KOp], deadline: Instant) -> Search {
    let n = ops.len();
    let known_total = ops.iter().filter(|o| o.known).count();
    let mut lin = Bits(vec![0; n.div_ceil(64)]);
    let mut state = Model { kv: None, floor: 0 };
    let mut known_done = 0;
    let mut seen: HashSet<(Vec<u64>, Model)> = HashSet::new();

    let candidates = |lin: &Bits| -> Vec<usize> {
        // Ops are sorted by call, so the scan can stop at the first call after the earliest
        // pending return: every later op returns later still.
        let mut min_ret = u128::MAX;
        let mut c: Vec<usize> = Vec::new();
        for (i, op) in ops.iter().enumerate().skip(lin.first_clear()) {
            if op.call > min_ret {
                break;
            }
            if lin.get(i) {
                continue;
            }
            c.push(i);
            if op.known {
                min_ret = min_ret.min(op.ret);
            }
        }
        c.retain(|&i| ops[i].call <= min_ret);
        // Try ops in revision order first (a write before the reads at its revision): in a
        // linearizable history that order is nearly always right, so the search rarely
        // backtracks. Order only affects speed, never the verdict.
        c.sort_by_key(|&i| ops[i].order);
        c
    };
    struct Level {
        cands: Vec<usize>,
        pos: usize,
        chosen: Option<(usize, Model)>,
    }
    let mut levels = vec![Level {
        cands: candidates(&lin),
        pos: 0,
        chosen: None,
    }];
    let mut deepest = (0usize, levels[0].cands.clone());
    let mut iterations: u64 = 0;
    loop {
        if known_done == known_total {
            return Search::Ok;
        }
        iterations += 1;
        if iterations.is_multiple_of(1024) && Instant::now() > deadline {
            return Search::Timeout;
        }
        let Some(top) = levels.last_mut() else {
            return Search::Fail { stuck: deepest.1 };
        };
        if top.pos < top.cands.len() {
            let i = top.cands[top.pos];
            top.pos += 1;
            if let Some(next) = step(state, ops[i].step) {
                lin.flip(i);
                if seen.insert((lin.0.clone(), next)) {
                    let prev = std::mem::replace(&mut state, next);
                    if ops[i].known {
                        known_done += 1;
                    }
                    let cands = candidates(&lin);
                    if known_done > deepest.0 {
                        deepest = (known_done, cands.clone());
                    }
                    levels.push(Level {
                        cands,
                        pos: 0,
                        chosen: Some((i, prev)),
                    });
                    continue;
                }
                lin.flip(i);
            }
        } else {
            let done = levels.pop();
            if let Some(Level {
                chosen: Some((i, prev)),
                ..
            }) = done
            {
                lin.flip(i);
                state = prev;
                if ops[i].known {
                    known_done -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u128 = 1_000_000;

    /// A tiny builder: `ok(client, call_ms, ret_ms, req, resp)` / `unknown(client, call_ms, req)`.
    struct H(History);

    impl H {
        fn new() -> H {
            H(History::new(1))
        }
        fn ok(mut self, client: u32, call: u128, ret: u128, req: Request, resp: Response) -> H {
            self.0.ops.push(Op {
                client,
                call: call * MS,
                ret: ret * MS,
                req,
                outcome: Outcome::Known(resp),
            });
            self
        }
        fn unknown(mut self, client: u32, call: u128, req: Request) -> H {
            self.0.ops.push(Op {
                client,
                call: call * MS,
                ret: 0,
                req,
                outcome: Outcome::Unknown,
            });
            self
        }
    }

    fn put(k: &str, v: &str) -> Request {
        Request::Put {
            key: k.into(),
            value: v.into(),
        }
    }
    fn get(k: &str) -> Request {
        Request::Get { key: k.into() }
    }
    fn del(k: &str) -> Request {
        Request::Delete { key: k.into() }
    }
    fn cas(k: &str, exp: Rev, v: &str) -> Request {
        Request::Cas {
            key: k.into(),
            expected_mod_revision: exp,
            new_value: v.into(),
        }
    }
    fn rput(rev: Rev) -> Response {
        Response::Put { revision: rev }
    }
    fn rget(kv: Option<(&str, Rev)>, rev: Rev) -> Response {
        Response::Get {
            kv: kv.map(|(v, m)| (v.to_string(), m)),
            revision: rev,
        }
    }
    fn rdel(deleted: i64, rev: Rev) -> Response {
        Response::Delete {
            deleted,
            revision: rev,
        }
    }
    fn rcas(succeeded: bool, rev: Rev, kv: Option<(&str, Rev)>) -> Response {
        Response::Cas {
            succeeded,
            revision: rev,
            kv: kv.map(|(v, m)| (v.to_string(), m)),
        }
    }
    fn ev_put(
        k: &str,
        v: &str,
        rev: Rev,
        create: Rev,
        ver: i64,
        prev: Option<(&str, Rev)>,
    ) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            key: k.into(),
            value: v.into(),
            mod_revision: rev,
            create_revision: create,
            version: ver,
            prev: prev.map(|(v, m)| (v.to_string(), m)),
        }
    }
    fn ev_del(k: &str, rev: Rev, prev: Option<(&str, Rev)>) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Delete,
            key: k.into(),
            value: String::new(),
            mod_revision: rev,
            create_revision: 0,
            version: 0,
            prev: prev.map(|(v, m)| (v.to_string(), m)),
        }
    }

    /// The verdicts of check A and check B (None = passed).
    fn verdicts(h: &History, evidence: &[WatchEvent]) -> (Option<Rule>, Option<Rule>) {
        let a = check_revisions(h, evidence);
        let b = match check_linearizable(h, a.as_ref().ok(), Duration::from_secs(5)) {
            Linearizability::Ok { .. } => None,
            Linearizability::Violation(v) => Some(v.rule),
            Linearizability::Unknown { key } => panic!("budget ran out on {key}"),
        };
        (a.err().map(|v| v.rule), b)
    }

    #[test]
    fn good_histories_pass_both_checks() {
        let cases: Vec<(&str, History)> = vec![
            (
                "sequential put/get/delete",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 3, get("a"), rget(Some(("1", 2)), 2))
                    .ok(1, 4, 5, del("a"), rdel(1, 3))
                    .ok(1, 6, 7, get("a"), rget(None, 3))
                    .ok(1, 8, 9, del("a"), rdel(0, 3))
                    .0,
            ),
            (
                "concurrent read may see old or new",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 10, put("a", "2"), rput(3))
                    .ok(2, 3, 4, get("a"), rget(Some(("1", 2)), 2))
                    .ok(3, 5, 6, get("a"), rget(Some(("2", 3)), 3))
                    .0,
            ),
            (
                "concurrent writes order by revision, not by call",
                H::new()
                    .ok(1, 0, 10, put("a", "x"), rput(3))
                    .ok(2, 1, 9, put("a", "y"), rput(2))
                    .ok(3, 11, 12, get("a"), rget(Some(("x", 3)), 3))
                    .0,
            ),
            (
                "cas success and failure",
                H::new()
                    .ok(1, 0, 1, cas("a", 0, "1"), rcas(true, 2, None))
                    .ok(2, 2, 3, cas("a", 0, "2"), rcas(false, 2, Some(("1", 2))))
                    .ok(2, 4, 5, cas("a", 2, "3"), rcas(true, 3, None))
                    .ok(1, 6, 7, get("a"), rget(Some(("3", 3)), 3))
                    .0,
            ),
            (
                "unknown write that never happened",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .unknown(2, 2, put("a", "lost"))
                    .ok(1, 3, 4, get("a"), rget(Some(("1", 2)), 2))
                    .0,
            ),
            (
                "unknown write observed later, revision gap explained",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .unknown(2, 2, put("b", "maybe"))
                    .ok(1, 10, 11, get("b"), rget(Some(("maybe", 3)), 3))
                    .ok(1, 12, 13, put("a", "2"), rput(4))
                    .0,
            ),
            (
                "unknown write that consumed a revision nobody read",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .unknown(2, 2, put("b", "unseen"))
                    .ok(1, 10, 11, put("a", "2"), rput(4))
                    .0,
            ),
            (
                "two keys interleaved",
                H::new()
                    .ok(1, 0, 5, put("a", "1"), rput(2))
                    .ok(2, 1, 6, put("b", "1"), rput(3))
                    .ok(3, 7, 8, get("a"), rget(Some(("1", 2)), 3))
                    .ok(3, 9, 10, get("b"), rget(Some(("1", 3)), 3))
                    .0,
            ),
        ];
        for (name, h) in cases {
            assert_eq!(verdicts(&h, &[]), (None, None), "{name}");
            // Without check A's resolution, unknown writes have unknown revisions: still Ok.
            let b = check_linearizable(&h, None, Duration::from_secs(5));
            assert!(matches!(b, Linearizability::Ok { .. }), "{name}: {b:?}");
        }
    }

    #[test]
    fn bad_histories_are_rejected() {
        // (name, history, watch evidence, rule of check A, whether check B must also reject).
        let cases: Vec<(&str, History, Vec<WatchEvent>, Rule, bool)> = vec![
            (
                "stale read after an acknowledged write",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 3, put("a", "2"), rput(3))
                    .ok(2, 4, 5, get("a"), rget(Some(("1", 2)), 2))
                    .0,
                vec![],
                Rule::RevisionOrder,
                true,
            ),
            (
                "stale value at a current header revision",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 3, put("a", "2"), rput(3))
                    .ok(2, 4, 5, get("a"), rget(Some(("1", 2)), 3))
                    .0,
                vec![],
                Rule::StaleRead,
                true,
            ),
            (
                "lost acknowledged write (read after restart misses it)",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 3, put("b", "1"), rput(3))
                    .ok(2, 10, 11, get("a"), rget(None, 3))
                    .0,
                vec![],
                Rule::StaleRead,
                true,
            ),
            (
                "duplicate revision",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(2, 0, 1, put("b", "1"), rput(2))
                    .0,
                vec![],
                Rule::DuplicateRevision,
                false,
            ),
            (
                "revisions reordered against real time",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(3))
                    .ok(1, 2, 3, put("b", "1"), rput(2))
                    .0,
                vec![],
                Rule::RevisionOrder,
                false,
            ),
            (
                "revisions reordered on one key",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(3))
                    .ok(1, 2, 3, put("a", "2"), rput(2))
                    .0,
                vec![],
                Rule::RevisionOrder,
                true,
            ),
            (
                "cas succeeded against an old revision",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 3, put("a", "2"), rput(3))
                    .ok(2, 4, 5, cas("a", 2, "3"), rcas(true, 4, None))
                    .0,
                vec![],
                Rule::CasDecision,
                true,
            ),
            (
                "cas failed although the revision matched",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(2, 4, 5, cas("a", 2, "3"), rcas(false, 2, Some(("1", 2))))
                    .0,
                vec![],
                Rule::CasDecision,
                true,
            ),
            (
                "delete of an absent key consumed a revision",
                H::new().ok(1, 0, 1, del("a"), rdel(1, 2)).0,
                vec![],
                Rule::DeleteDecision,
                true,
            ),
            (
                "phantom value",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(2, 2, 3, get("a"), rget(Some(("zz", 2)), 2))
                    .0,
                vec![],
                Rule::ConflictingObservation,
                true,
            ),
            (
                "unexplained revision gap",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 3, put("a", "2"), rput(4))
                    .0,
                vec![],
                Rule::RevisionGap,
                false,
            ),
            (
                "unknown cas observed although its precondition was false",
                H::new()
                    .ok(1, 0, 1, put("a", "1"), rput(2))
                    .ok(1, 2, 3, put("a", "2"), rput(3))
                    .unknown(2, 4, cas("a", 2, "bad"))
                    .ok(1, 10, 11, get("a"), rget(Some(("bad", 4)), 4))
                    .0,
                vec![],
                Rule::CasDecision,
                true,
            ),
            (
                "watch shows a different write at an acknowledged revision",
                H::new().ok(1, 0, 1, put("a", "1"), rput(2)).0,
                vec![ev_put("a", "other", 2, 2, 1, None)],
                Rule::ConflictingObservation,
                false,
            ),
        ];
        for (name, h, evidence, rule, b_rejects) in cases {
            let (a, b) = verdicts(&h, &evidence);
            assert_eq!(a, Some(rule), "{name}: check A");
            if b_rejects {
                assert_eq!(b, Some(Rule::NotLinearizable), "{name}: check B");
            }
        }
    }

    #[test]
    fn read_of_unobserved_unknown_delete_is_explained_by_the_watch() {
        let h = H::new()
            .ok(1, 0, 1, put("a", "1"), rput(2))
            .unknown(2, 2, del("a"))
            .ok(1, 10, 11, get("a"), rget(None, 3))
            .0;
        // Without the watch, revision 3 is a gap that the unknown delete may fill.
        let s = check_revisions(&h, &[]).expect("gap explained by the unknown delete");
        assert_eq!(s.gaps, vec![3]);
        assert_eq!(s.state_at("a", 3), KeyState::Uncertain);
        // With it, the delete is resolved and the state is certain.
        let evs = vec![
            ev_put("a", "1", 2, 2, 1, None),
            ev_del("a", 3, Some(("1", 2))),
        ];
        let s = check_revisions(&h, &evs).expect("resolved");
        assert_eq!(s.resolved.get(&1), Some(&3));
        assert_eq!(s.state_at("a", 3), KeyState::Known(None));
        assert!(check_watch(&h, &s, &evs, 1, &|_| true).is_ok());
        assert_eq!(
            check_linearizable(&h, Some(&s), Duration::from_secs(5)),
            Linearizability::Ok { keys: 1, ops: 3 }
        );
    }

    #[test]
    fn watch_checks() {
        let h = H::new()
            .ok(1, 0, 1, put("a", "1"), rput(2))
            .ok(1, 2, 3, put("a", "2"), rput(3))
            .ok(1, 4, 5, del("a"), rdel(1, 4))
            .ok(1, 6, 7, put("b", "1"), rput(5))
            .0;
        let s = check_revisions(&h, &[]).expect("good history");
        let good = vec![
            ev_put("a", "1", 2, 2, 1, None),
            ev_put("a", "2", 3, 2, 2, Some(("1", 2))),
            ev_del("a", 4, Some(("2", 3))),
            ev_put("b", "1", 5, 5, 1, None),
        ];
        let all = |_: &str| true;
        assert_eq!(
            check_watch(&h, &s, &good, 1, &all),
            Ok(WatchSummary {
                events: 4,
                last_revision: 5
            })
        );
        // Resumed from revision 4, watching only "b".
        assert!(check_watch(&h, &s, &good[3..], 4, &|k| k == "b").is_ok());

        let mut missed = good.clone();
        missed.remove(1);
        let mut dup = good.clone();
        dup.insert(2, good[1].clone());
        let mut reordered = good.clone();
        reordered.swap(1, 2);
        let mut bad_prev = good.clone();
        bad_prev[1].prev = Some(("0".into(), 1));
        let mut bad_value = good.clone();
        bad_value[3].value = "9".into();
        let mut bad_version = good.clone();
        bad_version[1].version = 1;
        let cases = vec![
            ("missed event", missed, Rule::WatchMissedEvent),
            ("duplicate event", dup, Rule::WatchOrder),
            ("reordered events", reordered, Rule::WatchOrder),
            ("wrong prev_kv", bad_prev, Rule::WatchContent),
            ("wrong value", bad_value, Rule::WatchContent),
            ("wrong version", bad_version, Rule::WatchContent),
        ];
        for (name, evs, rule) in cases {
            let got = check_watch(&h, &s, &evs, 1, &all).map_err(|v| v.rule);
            assert_eq!(got, Err(rule), "{name}");
        }
    }

    #[test]
    fn search_handles_many_concurrent_ops_within_budget() {
        // 12 clients each putting then reading their own key-free value on one key, all
        // overlapping: many interleavings, memoisation must keep this fast.
        let mut h = H::new();
        for c in 0..12u32 {
            let rev = 2 + c as Rev;
            h = h.ok(c, 0, 100, put("a", &format!("v{c}")), rput(rev));
        }
        h = h.ok(99, 101, 102, get("a"), rget(Some(("v11", 13)), 13));
        let started = Instant::now();
        assert_eq!(verdicts(&h.0, &[]), (None, None));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn budget_exhaustion_reports_unknown() {
        // Many overlapping unknown puts and a read no linearization explains force a search over
        // 2^20 subsets; with a zero budget the verdict must be Unknown, not a hang or a false Ok.
        let mut h = H::new().ok(1, 0, 1, put("a", "1"), rput(2));
        for c in 0..20u32 {
            h = h.unknown(c + 2, 2, put("a", &format!("u{c}")));
        }
        h = h.ok(1, 3, 4, get("a"), rget(Some(("nobody", 40)), 40));
        let got = check_linearizable(&h.0, None, Duration::ZERO);
        assert_eq!(got, Linearizability::Unknown { key: "a".into() });
    }

    /// Key "a" needs an exhaustive search over 2^20 subsets (and has a real violation that only
    /// that search could prove); `extra` adds ops on key "b".
    fn hard_a(extra: impl FnOnce(H) -> H) -> History {
        let mut h = H::new().ok(1, 0, 1, put("a", "1"), rput(2));
        for c in 0..20u32 {
            h = h.unknown(c + 2, 2, put("a", &format!("u{c}")));
        }
        h = h.ok(1, 3, 4, get("a"), rget(Some(("nobody", 40)), 40));
        extra(h).0
    }

    #[test]
    fn running_out_of_budget_is_never_a_violation() {
        // A linearizable key next to the undecidable one: undecided, not a violation, not Ok.
        let h = hard_a(|h| {
            h.ok(30, 0, 1, put("b", "1"), rput(3))
                .ok(30, 2, 3, get("b"), rget(Some(("1", 3)), 3))
        });
        let got = check_linearizable(&h, None, Duration::ZERO);
        assert_eq!(got, Linearizability::Unknown { key: "a".into() });

        // A cheap, decidable violation on "b" (a lost acknowledged write) is still reported
        // although "a" ran out of budget first: it comes from an exhausted search on "b".
        let h = hard_a(|h| {
            h.ok(30, 0, 1, put("b", "1"), rput(3))
                .ok(30, 2, 3, get("b"), rget(None, 3))
        });
        match check_linearizable(&h, None, Duration::ZERO) {
            Linearizability::Violation(v) => {
                assert_eq!(v.rule, Rule::NotLinearizable);
                assert!(v.detail.contains("key b"), "{}", v.detail);
            }
            other => panic!("the violation on b was hidden: {other:?}"),
        }

        // Over every small history of the unit tests: a zero budget only ever turns a verdict
        // into undecided, never Ok into a violation (nor a violation into Ok).
        let small = [
            H::new()
                .ok(1, 0, 1, put("a", "1"), rput(2))
                .ok(2, 2, 3, get("a"), rget(Some(("1", 2)), 2))
                .0,
            H::new()
                .ok(1, 0, 1, put("a", "1"), rput(2))
                .ok(1, 2, 3, put("a", "2"), rput(3))
                .ok(2, 4, 5, get("a"), rget(Some(("1", 2)), 3))
                .0,
            H::new()
                .ok(1, 0, 10, put("a", "x"), rput(3))
                .ok(2, 1, 9, put("a", "y"), rput(2))
                .unknown(3, 1, put("a", "z"))
                .ok(3, 11, 12, get("a"), rget(Some(("x", 3)), 3))
                .0,
        ];
        for h in &small {
            let full = check_linearizable(h, None, Duration::from_secs(5));
            assert!(!matches!(full, Linearizability::Unknown { .. }), "{full:?}");
            match check_linearizable(h, None, Duration::ZERO) {
                Linearizability::Unknown { .. } => {}
                short => assert_eq!(short, full),
            }
        }
    }
}
