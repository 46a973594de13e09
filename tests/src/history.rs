//! A history-recording etcd client: the clients and the watcher whose recorded operations and
//! events go through `linearizability`'s checks.
//!
//! Owns the loops that tests/tests/robustness.rs, tests/tests/faults.rs and the operator
//! scenarios share: connecting with failover over a set of endpoints that may change while it
//! runs (member pods get new addresses when they are restarted), one request with its outcome
//! (known, or unknown when the answer was lost), the random single-key workload, and a
//! resuming prefix watch. It records; it asserts nothing but what the watch itself promises
//! (no cancellation, events with their key-value). The checks are `linearizability`'s.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::linearizability::{EventKind, Op, Outcome, Request, Response, Rev, WatchEvent};

/// xorshift64*: enough randomness for op mixes without a dependency; tests print their seed
/// so a failing run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed in environment variable `var` (a replay), else one from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The client URLs the loops connect to, shared so that a test can replace them while the
/// loops run (a restarted member pod has a new address), and the TLS they are reached with.
/// Each connection takes one of them, moving on to the next after a failure, as a client
/// library's failover does.
#[derive(Clone, Default)]
pub struct Endpoints {
    urls: Arc<Mutex<Vec<String>>>,
    tls: Option<etcd_client::TlsOptions>,
}

impl Endpoints {
    pub fn new(urls: Vec<String>) -> Self {
        Endpoints {
            urls: Arc::new(Mutex::new(urls)),
            tls: None,
        }
    }

    /// `https://` endpoints verified and authenticated with `tls`.
    pub fn with_tls(urls: Vec<String>, tls: etcd_client::TlsOptions) -> Self {
        Endpoints {
            tls: Some(tls),
            ..Endpoints::new(urls)
        }
    }

    pub fn set(&self, urls: Vec<String>) {
        *self.urls.lock().unwrap_or_else(|e| e.into_inner()) = urls;
    }

    /// The `at`-th URL, wrapping; `None` while there is none.
    pub fn pick(&self, at: usize) -> Option<String> {
        let urls = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        (!urls.is_empty()).then(|| urls[at % urls.len()].clone())
    }

    /// A client of the `at`-th URL within `timeout`; `None` when there is none or it fails.
    pub async fn connect(&self, at: usize, timeout: Duration) -> Option<Client> {
        let url = self.pick(at)?;
        let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
        if let Some(tls) = &self.tls {
            opts = opts.with_tls(tls.clone());
        }
        tokio::time::timeout(timeout, Client::connect([url], Some(opts)))
            .await
            .ok()?
            .ok()
    }
}

/// Connects to one URL within `timeout`. No per-request timeout: it would also cut a watch
/// stream; requests are bounded by `execute`'s timeout instead.
pub async fn connect(url: &str, timeout: Duration) -> Option<Client> {
    Endpoints::new(vec![url.to_string()])
        .connect(0, timeout)
        .await
}

/// The header's revision; -1 when there is no header.
pub fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Rev {
    h.map(|h| h.revision()).unwrap_or(-1)
}

/// The (value, mod_revision) of the first key-value, if any.
pub fn first_kv(kvs: &[etcd_client::KeyValue]) -> Option<(String, Rev)> {
    kvs.first().map(|kv| {
        (
            String::from_utf8_lossy(kv.value()).into_owned(),
            kv.mod_revision(),
        )
    })
}

/// One request; `None` = no answer within `timeout` (error or timeout): outcome unknown.
pub async fn execute(c: &mut Client, req: &Request, timeout: Duration) -> Option<Response> {
    let fut = async {
        Ok::<_, etcd_client::Error>(match req {
            Request::Put { key, value } => {
                let r = c.put(key.as_str(), value.as_str(), None).await?;
                Response::Put {
                    revision: header_rev(r.header()),
                }
            }
            Request::Get { key } => {
                let r = c.get(key.as_str(), None).await?;
                Response::Get {
                    kv: first_kv(r.kvs()),
                    revision: header_rev(r.header()),
                }
            }
            Request::Delete { key } => {
                let r = c.delete(key.as_str(), None).await?;
                Response::Delete {
                    deleted: r.deleted(),
                    revision: header_rev(r.header()),
                }
            }
            Request::Cas {
                key,
                expected_mod_revision,
                new_value,
            } => {
                // The kube-apiserver update: MOD(key) == expected → put, else read it.
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        *expected_mod_revision,
                    )])
                    .and_then([TxnOp::put(key.as_str(), new_value.as_str(), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let r = c.txn(txn).await?;
                let kv = r.op_responses().into_iter().find_map(|o| match o {
                    TxnOpResponse::Get(g) => Some(first_kv(g.kvs())),
                    _ => None,
                });
                Response::Cas {
                    succeeded: r.succeeded(),
                    revision: header_rev(r.header()),
                    kv: kv.flatten(),
                }
            }
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => Some(r),
        _ => None,
    }
}

/// A watch event as the checker takes it; `None` for an event without a key-value.
pub fn to_event(e: &etcd_client::Event) -> Option<WatchEvent> {
    let kv = e.kv()?;
    Some(WatchEvent {
        kind: match e.event_type() {
            EventType::Put => EventKind::Put,
            EventType::Delete => EventKind::Delete,
        },
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        version: kv.version(),
        prev: e.prev_kv().map(|p| {
            (
                String::from_utf8_lossy(p.value()).into_owned(),
                p.mod_revision(),
            )
        }),
    })
}

/// The random single-key workload of one client.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Keys are `<prefix>k<n>`, n below `keys`.
    pub prefix: String,
    pub keys: u64,
    /// Percent of Gets, then Puts up to `put_until`, CAS txns up to `cas_until`, the rest
    /// Deletes (of 100).
    pub get_until: u64,
    pub put_until: u64,
    pub cas_until: u64,
    /// A CAS sometimes guesses a stale mod_revision (last seen - 1), not only create (0).
    pub stale_cas: bool,
    /// Bound of one request (and of one connection attempt).
    pub op_timeout: Duration,
    /// Pause after a failed request before the next one, on the next endpoint.
    pub retry_pause: Duration,
    /// Pause between requests (0: as fast as answers come).
    pub pace: Duration,
}

impl Workload {
    /// Gets 35%, Puts 25%, CAS 30%, Deletes 10%, 1 s per request.
    pub fn new(prefix: &str, keys: u64) -> Self {
        Workload {
            prefix: prefix.to_string(),
            keys,
            get_until: 35,
            put_until: 60,
            cas_until: 90,
            stale_cas: false,
            op_timeout: Duration::from_secs(1),
            retry_pause: Duration::ZERO,
            pace: Duration::ZERO,
        }
    }
}

/// One recording client: random requests of `w` until `stop`, each recorded with its call and
/// return times (nanoseconds since `t0`). A write whose answer was lost is recorded with an
/// unknown outcome; a failed read has no effect and proves nothing, so it is only counted in
/// `failed_reads`. After any failure the client reconnects to the next endpoint.
pub async fn client_loop(
    id: u32,
    endpoints: Endpoints,
    w: Workload,
    seed: u64,
    t0: Instant,
    stop: Arc<AtomicBool>,
    failed_reads: Arc<AtomicU64>,
) -> Vec<Op> {
    let mut rng = Rng(seed ^ (u64::from(id) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut ops = Vec::new();
    // The mod_revision this client last saw per key: CAS mostly uses it (a realistic
    // read-modify-write), sometimes 0 (create) or a stale guess.
    let mut last_seen: Vec<Rev> = vec![0; usize::try_from(w.keys).unwrap_or(0)];
    let mut at = id as usize;
    let mut client: Option<Client> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = endpoints.connect(at, w.op_timeout).await;
            if client.is_none() {
                at += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let k = rng.below(w.keys) as usize;
        let key = format!("{}k{k}", w.prefix);
        seq += 1;
        // Values are unique per write so observations identify their write.
        let value = format!("c{id}-{seq}");
        let roll = rng.below(100);
        let req = if roll < w.get_until {
            Request::Get { key }
        } else if roll < w.put_until {
            Request::Put { key, value }
        } else if roll < w.cas_until {
            let guess = rng.below(10);
            Request::Cas {
                key,
                expected_mod_revision: match guess {
                    0 => 0,
                    1 if w.stale_cas => last_seen[k].saturating_sub(1),
                    _ => last_seen[k],
                },
                new_value: value,
            }
        } else {
            Request::Delete { key }
        };
        let call = t0.elapsed().as_nanos();
        let resp = execute(c, &req, w.op_timeout).await;
        let ret = t0.elapsed().as_nanos();
        match resp {
            Some(resp) => {
                last_seen[k] = match &resp {
                    Response::Get { kv, .. } | Response::Cas { kv, .. } => {
                        kv.as_ref().map_or(0, |(_, m)| *m)
                    }
                    Response::Put { revision } => *revision,
                    Response::Delete { .. } => 0,
                };
                if let Response::Cas {
                    succeeded: true,
                    revision,
                    ..
                } = resp
                {
                    last_seen[k] = revision;
                }
                ops.push(Op {
                    client: id,
                    call,
                    ret,
                    req,
                    outcome: Outcome::Known(resp),
                });
                if !w.pace.is_zero() {
                    tokio::time::sleep(w.pace).await;
                }
            }
            None => {
                if matches!(req, Request::Get { .. }) {
                    failed_reads.fetch_add(1, Ordering::Relaxed);
                } else {
                    ops.push(Op {
                        client: id,
                        call,
                        ret,
                        req,
                        outcome: Outcome::Unknown,
                    });
                }
                client = None;
                at += 1;
                if !w.retry_pause.is_zero() {
                    tokio::time::sleep(w.retry_pause).await;
                }
            }
        }
    }
    ops
}

/// How the watcher follows its endpoints.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub prefix: String,
    /// Bound of connecting and of opening the stream.
    pub op_timeout: Duration,
    /// A stream silent this long moves to the next endpoint (a stream on a cut member goes
    /// silent rather than breaking); `None` keeps a silent stream.
    pub quiet_failover: Option<Duration>,
    /// Pause after a failed connection or stream open.
    pub retry_pause: Duration,
}

/// The watcher: a prefix watch from revision `last_rev + 1` (1 at first) with prev_kv,
/// resuming after every break from the last revision seen + 1, on the next endpoint. Events
/// go to `events` as they come, so the test can wait until it has caught up; returns how many
/// streams it opened.
pub async fn watch_loop(
    endpoints: Endpoints,
    cfg: WatchConfig,
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<WatchEvent>>>,
    last_rev: Arc<AtomicI64>,
) -> usize {
    let mut streams = 0;
    let mut at = 0;
    while !stop.load(Ordering::Relaxed) {
        let client = endpoints.connect(at, cfg.op_timeout).await;
        at += 1;
        let Some(mut c) = client else {
            tokio::time::sleep(cfg.retry_pause).await;
            continue;
        };
        let start = last_rev.load(Ordering::SeqCst) + 1;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key();
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(cfg.op_timeout, c.watch(cfg.prefix.as_str(), Some(opts))).await
        else {
            tokio::time::sleep(cfg.retry_pause).await;
            continue;
        };
        streams += 1;
        let mut quiet_since = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return streams;
            }
            // A short poll so `stop` is noticed.
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Err(_)
                    if cfg
                        .quiet_failover
                        .is_some_and(|q| quiet_since.elapsed() > q) =>
                {
                    break
                }
                Err(_) => continue,
                Ok(Ok(Some(resp))) => {
                    quiet_since = Instant::now();
                    assert!(
                        !resp.canceled(),
                        "watch from {start} canceled: {:?}",
                        resp.cancel_reason()
                    );
                    let mut evs = events.lock().unwrap_or_else(|e| e.into_inner());
                    for e in resp.events() {
                        let ev = to_event(e).expect("watch event without kv");
                        last_rev.fetch_max(ev.mod_revision, Ordering::SeqCst);
                        evs.push(ev);
                    }
                }
                // Stream ended or broke (member killed): resume from last revision + 1.
                Ok(_) => break,
            }
        }
    }
    streams
}

/// The longest stretch without an answered request, over all clients of `ops` (nanoseconds as
/// recorded), from the first answer to the last: how long the store was unavailable to them.
pub fn longest_gap(ops: &[Op]) -> Duration {
    let mut rets: Vec<u128> = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Known(_)))
        .map(|o| o.ret)
        .collect();
    rets.sort_unstable();
    let gap = rets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    Duration::from_nanos(u64::try_from(gap).unwrap_or(u64::MAX))
}
