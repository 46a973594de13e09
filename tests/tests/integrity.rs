//! Data integrity (issue 11): a flipped value byte in a stopped member's `member/snap/db`,
//! against etcd 3.6 as the control.
//!
//! - initial check: in a 3-member cluster the corrupted member must refuse to start (etcd
//!   3.6 with `--experimental-initial-corrupt-check=true` does: `checkInitialHashKV failed`,
//!   `found data inconsistency with peers`);
//! - periodic check: the corrupted follower restarted without the initial check; the leader's
//!   periodic check (`--experimental-corrupt-check-time=2s`) raises CORRUPT for it, writes
//!   are refused with `etcdserver: corrupt cluster` and `etcdctl alarm list` shows the alarm;
//! - `ferrokv check --data-dir` on a good and a corrupted data dir;
//! - lease expiry at etcd's rate (1,000 revocations per second).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use ferrokv_tests::{Backend, Cluster, Member, MemberOpts};

const KEY: &str = "integrity/key";
const VALUE: &str = "integrity-value-7f3a9c21e4b85d06";

/// Flips one byte of every stored copy of `value` in the db file at `db` that is a served
/// value: for ferrokv every copy not inside a `history` record (those are preceded by the
/// key's length and the key), i.e. the `latest` rows; for etcd every copy (bolt keeps the
/// value once, in its revision record). Returns how many copies were flipped.
fn flip_value_bytes(db: &Path, key: &str, value: &str, backend: Backend) -> usize {
    let mut bytes = std::fs::read(db).unwrap_or_else(|e| panic!("reading {}: {e}", db.display()));
    let v = value.as_bytes();
    let mut history_prefix = (key.len() as u32).to_le_bytes().to_vec();
    history_prefix.extend_from_slice(key.as_bytes());
    let mut flipped = 0;
    let mut i = 0;
    while i + v.len() <= bytes.len() {
        if &bytes[i..i + v.len()] == v {
            let in_history = i >= history_prefix.len()
                && bytes[i - history_prefix.len()..i] == history_prefix[..];
            if backend != Backend::Ferrokv || !in_history {
                // Last byte: '6' -> 'v', still printable, so the wrong value is easy to spot.
                bytes[i + v.len() - 1] ^= 0x40;
                flipped += 1;
            }
            i += v.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(db, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", db.display()));
    flipped
}

fn backend_opts(b: Backend, extra: &[&str]) -> MemberOpts {
    let mut o = MemberOpts {
        heartbeat_ms: Some(50),
        election_ms: Some(500),
        ..MemberOpts::default()
    };
    o.extra_args = extra.iter().map(|s| s.to_string()).collect();
    if b == Backend::Ferrokv {
        // Never left to the default in these tests, so each says which check it exercises.
        o.extra_args.push("--log-format=console".into());
    }
    o
}

/// A 3-member cluster holding KEY=VALUE (and some other keys) on every member.
async fn cluster_with_value(b: Backend, extra: &[&str]) -> Cluster {
    let mut c = Cluster::start(b, 3, backend_opts(b, extra))
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
    let mut cl = c.client().await.expect("client");
    for i in 0..20 {
        cl.put(format!("integrity/other/{i}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    cl.put(KEY, VALUE, None).await.expect("put");
    // Every member must have applied the last put before one is stopped.
    let want = cl
        .get(KEY, None)
        .await
        .expect("get")
        .header()
        .unwrap()
        .revision();
    for name in c.running() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = c.get(&name).unwrap();
            let mut mc = m.client().await.expect("member client");
            let r = mc
                .get(KEY, Some(GetOptions::new().with_serializable()))
                .await
                .expect("serializable get");
            if r.header().unwrap().revision() >= want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not catch up to {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c
}

/// ferrokv's HashKV and Hash are equal on every member holding the same data (etcd's Hash is
/// not: it hashes the whole bolt file, the consistent index included).
async fn hashes_agree(c: &mut Cluster) {
    let mut seen = Vec::new();
    for name in c.running() {
        let mut mc = c.get(&name).unwrap().client().await.expect("client");
        let kv = mc.hash_kv(0).await.expect("hash_kv");
        let h = mc.hash().await.expect("hash");
        seen.push((name, kv.hash(), kv.compact_version(), h.hash()));
    }
    let first = (seen[0].1, seen[0].2, seen[0].3);
    assert!(
        seen.iter().all(|s| (s.1, s.2, s.3) == first),
        "members disagree: {seen:?}"
    );
}

/// A follower's name.
async fn follower(c: &mut Cluster) -> String {
    let leader = c.leader().await.expect("leader");
    c.running()
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower")
}

/// Stops `name` cleanly and flips VALUE in its db.
fn stop_and_corrupt(c: &mut Cluster, name: &str, b: Backend) {
    let m = c.get_mut(name).unwrap();
    m.terminate();
    let db = m.layout().db();
    let n = flip_value_bytes(&db, KEY, VALUE, b);
    assert!(
        n >= 1,
        "{}: the value was not found in {}",
        b.name(),
        db.display()
    );
    eprintln!(
        "{}: flipped {n} served cop(ies) of the value in {}",
        b.name(),
        db.display()
    );
}

/// Starts `name` again and waits for it to exit on its own; returns its log.
fn start_expect_refusal(c: &mut Cluster, name: &str, b: Backend) -> String {
    let m = c.get_mut(name).unwrap();
    let started = Instant::now();
    m.start_process().expect("spawn");
    let status = m.wait_exit(Duration::from_secs(40));
    let log = m.log();
    let status = status.unwrap_or_else(|| {
        panic!(
            "{}: the corrupted member is still running 40 s after its start; log:\n{}",
            b.name(),
            tail(&log)
        )
    });
    assert!(!status.success(), "{}: exited with {status}", b.name());
    eprintln!(
        "{}: corrupted member refused to start after {:?} ({status})",
        b.name(),
        started.elapsed()
    );
    log
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn initial_check_refuses(b: Backend) {
    let extra: &[&str] = match b {
        Backend::Ferrokv => &[],
        _ => &["--experimental-initial-corrupt-check=true"],
    };
    let mut c = cluster_with_value(b, extra).await;
    if b == Backend::Ferrokv {
        hashes_agree(&mut c).await;
    }
    let victim = follower(&mut c).await;
    stop_and_corrupt(&mut c, &victim, b);
    let log = start_expect_refusal(&mut c, &victim, b);
    if b == Backend::Ferrokv {
        // With every check on (the default), the member's own check at open finds it first:
        // redb's page checksums (they do cover the flipped byte) or the latest/history
        // cross-check.
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("fatal error"))
            .unwrap_or_default();
        eprintln!("ferrokv (defaults): {line}");
        assert!(
            line.contains("redb integrity check failed")
                || line.contains("latest value differs from its history record"),
            "ferrokv's refusal does not say why; log:\n{}",
            tail(&log)
        );
        // Without the check at open, the initial check against the peers' HashKV refuses it,
        // naming the revision and both hashes, as etcd does.
        let m = c.get_mut(&victim).unwrap();
        m.opts
            .extra_args
            .push("--keyspace-verify-on-open=false".into());
        let log = start_expect_refusal(&mut c, &victim, b);
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("checkInitialHashKV failed"))
            .unwrap_or_else(|| panic!("no checkInitialHashKV line; log:\n{}", tail(&log)));
        assert!(
            line.contains("found data inconsistency with peers")
                && line.contains("local hash ")
                && line.contains(" at revision ")
                && line.contains(" has hash "),
            "{line}"
        );
        eprintln!("ferrokv: {line}");
    } else {
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("checkInitialHashKV failed"))
            .unwrap_or_else(|| panic!("etcd: no checkInitialHashKV line; log:\n{}", tail(&log)));
        assert!(
            line.contains("found data inconsistency with peers"),
            "{line}"
        );
        eprintln!("etcd36: {line}");
    }
    // The healthy members still serve the right value.
    let mut cl = c.client().await.expect("client");
    let r = cl.get(KEY, None).await.expect("get");
    assert_eq!(r.kvs()[0].value_str().unwrap(), VALUE);
}

async fn periodic_check_raises_corrupt(b: Backend) {
    let extra: &[&str] = match b {
        Backend::Ferrokv => &[
            "--experimental-initial-corrupt-check=false",
            "--keyspace-verify-on-open=false",
            "--experimental-corrupt-check-time=2s",
            "--experimental-compact-hash-check-enabled=false",
        ],
        _ => &["--experimental-corrupt-check-time=2s"],
    };
    corrupt_follower_until_alarm(b, extra, false).await
}

/// The compaction-time check alone (periodic check off): after a compaction, the leader
/// compares the hashes every member took right after it and alarms the odd one out.
async fn compact_hash_check_raises_corrupt(b: Backend) {
    let extra: &[&str] = match b {
        Backend::Ferrokv => &[
            "--experimental-initial-corrupt-check=false",
            "--keyspace-verify-on-open=false",
            "--corrupt-check-time=0s",
            "--experimental-compact-hash-check-time=1s",
        ],
        _ => &[
            "--experimental-compact-hash-check-enabled=true",
            "--experimental-compact-hash-check-time=1s",
        ],
    };
    corrupt_follower_until_alarm(b, extra, true).await
}

/// Corrupts a stopped follower, restarts it (initial check off), optionally compacts, and
/// waits for the CORRUPT alarm naming it; then checks what CORRUPT refuses.
async fn corrupt_follower_until_alarm(b: Backend, extra: &[&str], compact: bool) {
    let mut c = cluster_with_value(b, extra).await;
    let victim = follower(&mut c).await;
    let victim_id = c.member_id(&victim).await.expect("member id");
    stop_and_corrupt(&mut c, &victim, b);
    {
        let m = c.get_mut(&victim).unwrap();
        m.start_process().expect("spawn");
        m.wait_ready()
            .await
            .expect("corrupted member starts (initial check off)");
    }
    // Before the alarm it really serves the corrupted value: the fault is real.
    let m = c.get(&victim).unwrap();
    let mut mc = m.client().await.expect("client");
    let served = mc
        .get(KEY, Some(GetOptions::new().with_serializable()))
        .await
        .expect("get");
    assert_ne!(
        served.kvs()[0].value_str().unwrap(),
        VALUE,
        "{}: the flip did not take",
        b.name()
    );

    if compact {
        // Not through the corrupted member, so its data is never read to answer.
        let healthy = c.running().into_iter().find(|n| *n != victim).unwrap();
        let mut hc = c.get(&healthy).unwrap().client().await.expect("client");
        let rev = hc
            .get(KEY, None)
            .await
            .expect("get")
            .header()
            .unwrap()
            .revision();
        hc.compact(rev, None).await.expect("compact");
    }
    let started = Instant::now();
    let want = format!("memberID:{victim_id} alarm:CORRUPT");
    let healthy = c
        .running()
        .into_iter()
        .find(|n| *n != victim)
        .expect("healthy member");
    loop {
        let out = c.get(&healthy).unwrap().ctl36(&["alarm", "list"]);
        if out.stdout.contains(&want) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: no CORRUPT alarm for {victim_id:x} after 30 s; alarm list: {:?} {:?}",
            b.name(),
            out.stdout,
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{}: CORRUPT raised {:?} after the restart",
        b.name(),
        started.elapsed()
    );
    let out = c.get(&healthy).unwrap().ctl36(&["alarm", "list"]);
    assert_eq!(out.stdout.trim(), want, "{}: alarm list", b.name());
    // Raised by the check under test (etcd and ferrokv log the same messages).
    let said = if compact {
        "Detected compaction hash mismatch"
    } else {
        "same compact revision then hashes must match"
    };
    let logs: String = c.members().map(|m| m.log()).collect();
    let local = b == Backend::Ferrokv && !compact && logs.contains("local keyspace is corrupt");
    assert!(
        logs.contains(said) || local,
        "{}: no member logged {said:?}",
        b.name()
    );

    // Writes are refused everywhere with etcd's error (gRPC DataLoss).
    let mut cl = c.client().await.expect("client");
    let err = cl
        .put("integrity/after", "x", None)
        .await
        .expect_err("put under CORRUPT");
    let (code, msg) = ferrokv_tests::grpc_error(&err).expect("a gRPC status");
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::DataLoss, "etcdserver: corrupt cluster")
    );
    let err = cl
        .delete("integrity/other/1", None)
        .await
        .expect_err("delete under CORRUPT");
    assert_eq!(
        ferrokv_tests::grpc_error(&err),
        Some((
            tonic::Code::DataLoss,
            "etcdserver: corrupt cluster".to_string()
        ))
    );
    let out = c
        .get(&healthy)
        .unwrap()
        .ctl36(&["put", "integrity/after", "x"]);
    assert!(
        out.stderr.contains("etcdserver: corrupt cluster"),
        "{out:?}"
    );
    // Reads are still served (etcd's corrupt applier refuses only what goes through raft),
    // and a healthy member serves the right value.
    let mut hc = c.get(&healthy).unwrap().client().await.expect("client");
    let r = hc.get(KEY, None).await.expect("get under CORRUPT");
    assert_eq!(r.kvs()[0].value_str().unwrap(), VALUE);
}

/// One HTTP/1.1 request to `url` (`http://host:port`), the whole response as text.
fn http1(url: &str, method: &str, path: &str, headers: &[&str], body: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// (status, body) of a `/members/hashkv` request, the body's numbers masked.
fn peer_hashkv(url: &str, headers: &[&str], body: &str, method: &str) -> (String, String) {
    let resp = http1(url, method, "/members/hashkv", headers, body);
    let status = resp.lines().next().unwrap_or_default().to_string();
    let mut body = resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    if resp
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk: size line, data, terminator.
        body = body.lines().nth(1).unwrap_or_default().to_string();
    }
    let masked: String = body
        .trim_end()
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    let mut masked = masked;
    while masked.contains("99") {
        masked = masked.replace("99", "9");
    }
    (status, masked)
}

/// The peer port's `/members/hashkv` answers as etcd 3.6's does: method, body, cluster id,
/// compacted and future revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_hashkv_endpoint_matches_etcd() {
    let mut answers = Vec::new();
    for b in [Backend::Ferrokv, Backend::Etcd36] {
        let m = Member::start(b, MemberOpts::default())
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
        let mut cl = m.client().await.expect("client");
        for i in 0..5 {
            cl.put(format!("k{i}"), "v", None).await.expect("put");
        }
        cl.compact(3, None).await.expect("compact");
        let url = m.peer_url.clone();
        let cases = [
            peer_hashkv(&url, &[], r#"{"revision":0}"#, "GET"),
            peer_hashkv(&url, &[], r#"{"revision":4}"#, "GET"),
            peer_hashkv(&url, &[], r#"{"revision":2}"#, "GET"),
            peer_hashkv(&url, &[], r#"{"revision":100}"#, "GET"),
            peer_hashkv(&url, &["X-Etcd-Cluster-ID: 1234"], "{}", "GET"),
            peer_hashkv(&url, &[], "not json", "GET"),
            peer_hashkv(&url, &[], "{}", "POST"),
        ];
        answers.push((b, cases));
    }
    let (_, ferrokv) = &answers[0];
    let (_, etcd) = &answers[1];
    for (i, (f, e)) in ferrokv.iter().zip(etcd).enumerate() {
        assert_eq!(f, e, "case {i}: ferrokv vs etcd 3.6");
    }
    eprintln!("peer /members/hashkv answers: {ferrokv:?}");
}

fn ferrokv_check(dir: &Path) -> (bool, String) {
    let bin = Backend::Ferrokv.binary().expect("ferrokv binary");
    let out = Command::new(bin)
        .args(["check", "--data-dir"])
        .arg(dir)
        .output()
        .expect("running ferrokv check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_subcommand_on_good_and_corrupted_dirs() {
    let mut m = Member::start(Backend::Ferrokv, MemberOpts::default())
        .await
        .expect("ferrokv");
    let mut cl = m.client().await.expect("client");
    let lease = cl.lease_grant(600, None).await.expect("grant").id();
    for i in 0..50 {
        let opts = (i % 5 == 0).then(|| PutOptions::new().with_lease(lease));
        cl.put(format!("integrity/k{i}"), format!("v{i}"), opts)
            .await
            .expect("put");
    }
    cl.put(KEY, VALUE, None).await.expect("put");
    cl.delete("integrity/k3", None).await.expect("delete");
    drop(cl);
    m.terminate();
    let (ok, out) = ferrokv_check(&m.data_dir());
    assert!(ok, "check of a good data dir failed:\n{out}");
    assert!(
        out.contains("redb integrity") && out.trim_end().ends_with("OK"),
        "{out}"
    );

    let db = m.layout().db();
    assert!(flip_value_bytes(&db, KEY, VALUE, Backend::Ferrokv) >= 1);
    let (ok, out) = ferrokv_check(&m.data_dir());
    assert!(!ok, "check of a corrupted data dir passed:\n{out}");
    // redb's page checksums may or may not cover the flipped byte; the cross-check must.
    assert!(
        out.contains("redb integrity: FAILED")
            || out.contains("latest value differs from its history record"),
        "{out}"
    );
    eprintln!("ferrokv check on the corrupted dir:\n{out}");
    // The member refuses to start on it as well (keyspace verify on open, the default).
    m.start_process().expect("spawn");
    let status = m
        .wait_exit(Duration::from_secs(30))
        .expect("member must refuse to start");
    assert!(!status.success());
    assert!(
        m.log().contains("integrity") || m.log().contains("keyspace check"),
        "{}",
        tail(&m.log())
    );
    let (ok, out) = ferrokv_check(&m.scratch_dir().join("no-such-dir"));
    assert!(!ok && out.contains("no keyspace file"), "{out}");
}

/// 3,000 leases with one key each, all expiring at the same instant (a restart renews every
/// lease to now + TTL on the new leader): their deletes must be spread at about 1,000 per
/// second, as etcd spreads them.
async fn lease_revoke_rate(b: Backend) {
    const LEASES: usize = 3000;
    const TTL: i64 = 15;
    let mut m = Member::start(b, MemberOpts::default())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
    let granting = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut cl = m.client().await.expect("client");
        tasks.push(tokio::spawn(async move {
            for i in (w..LEASES).step_by(8) {
                let id = cl.lease_grant(TTL, None).await.expect("grant").id();
                cl.put(
                    format!("lease/{i:05}"),
                    "v",
                    Some(PutOptions::new().with_lease(id)),
                )
                .await
                .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("granting task");
    }
    assert!(
        granting.elapsed() < Duration::from_secs(TTL as u64 - 3),
        "granting took {:?}, too long for a {TTL} s TTL",
        granting.elapsed()
    );
    // SIGTERM + start: the new leader renews every lease to the same deadline.
    m.terminate();
    m.start_process().expect("restart");
    m.wait_ready().await.expect("ready after restart");
    let mut cl = m.client().await.expect("client");
    let rev = cl
        .get(
            "lease/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(
        rev.count(),
        LEASES as i64,
        "every key still attached after the restart"
    );
    let mut stream = cl
        .watch("lease/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let mut times: Vec<Instant> = Vec::with_capacity(LEASES);
    let deadline = Instant::now() + Duration::from_secs(TTL as u64 + 60);
    while times.len() < LEASES {
        let msg = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: only {} of {LEASES} keys deleted",
                    b.name(),
                    times.len()
                )
            })
            .expect("watch stream")
            .expect("watch open");
        let now = Instant::now();
        for e in msg.events() {
            if e.event_type() == EventType::Delete {
                times.push(now);
            }
        }
    }
    let span = times[LEASES - 1] - times[0];
    // Most deletes in any one second.
    let mut peak = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] > Duration::from_secs(1) {
            lo += 1;
        }
        peak = peak.max(hi - lo + 1);
    }
    eprintln!(
        "{}: {LEASES} expired leases revoked over {span:?}, at most {peak} in one second",
        b.name()
    );
    assert!(
        span >= Duration::from_millis(2500),
        "{}: revoked over {span:?}",
        b.name()
    );
    assert!(
        peak <= 1400,
        "{}: {peak} revocations within one second",
        b.name()
    );
}

mod initial_check {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ferrokv() {
        super::initial_check_refuses(ferrokv_tests::Backend::Ferrokv).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd36() {
        super::initial_check_refuses(ferrokv_tests::Backend::Etcd36).await
    }
}

mod periodic_check {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ferrokv() {
        super::periodic_check_raises_corrupt(ferrokv_tests::Backend::Ferrokv).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd36() {
        super::periodic_check_raises_corrupt(ferrokv_tests::Backend::Etcd36).await
    }
}

mod compact_hash_check {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ferrokv() {
        super::compact_hash_check_raises_corrupt(ferrokv_tests::Backend::Ferrokv).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd36() {
        super::compact_hash_check_raises_corrupt(ferrokv_tests::Backend::Etcd36).await
    }
}

mod lease_rate {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ferrokv() {
        super::lease_revoke_rate(ferrokv_tests::Backend::Ferrokv).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd36() {
        super::lease_revoke_rate(ferrokv_tests::Backend::Etcd36).await
    }
}

/// A Txn with an empty RequestOp (no request set) is refused as etcd refuses it
/// (`INVALID_ARGUMENT etcdserver: key not found`), at the top level and nested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_with_an_empty_request_op_is_refused_as_etcd() {
    use ferrokv_proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};
    let empty = || RequestOp { request: None };
    let cases = [
        TxnRequest {
            success: vec![empty()],
            ..Default::default()
        },
        TxnRequest {
            failure: vec![RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    success: vec![empty()],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        },
    ];
    let mut answers = Vec::new();
    for b in [Backend::Ferrokv, Backend::Etcd36] {
        let m = Member::start(b, MemberOpts::default())
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
        let mut raw = ferrokv_tests::raw_kv(&m).await.expect("raw client");
        let mut got = Vec::new();
        for t in &cases {
            let r = raw.txn(t.clone()).await;
            got.push(
                r.map(|_| ())
                    .map_err(|s| (s.code(), s.message().to_string())),
            );
        }
        answers.push(got);
    }
    let want = Err((
        tonic::Code::InvalidArgument,
        "etcdserver: key not found".to_string(),
    ));
    assert_eq!(answers[1], vec![want.clone(), want], "etcd 3.6");
    assert_eq!(answers[0], answers[1], "ferrokv vs etcd 3.6");
}

/// A request above the gRPC receive limit (2 MiB key) gets grpc-go's status, as from etcd:
/// `RESOURCE_EXHAUSTED grpc: received message larger than max (X vs. Y)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_gets_grpc_go_status() {
    let mut answers = Vec::new();
    for b in [Backend::Ferrokv, Backend::Etcd36] {
        let m = Member::start(b, MemberOpts::default())
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
        let mut raw = ferrokv_tests::raw_kv(&m).await.expect("raw client");
        let req = ferrokv_proto::etcdserverpb::PutRequest {
            key: vec![b'k'; 2 * 1024 * 1024],
            value: b"v".to_vec(),
            ..Default::default()
        };
        let s = raw.put(req).await.expect_err("2 MiB key");
        answers.push((s.code(), s.message().to_string()));
    }
    assert_eq!(answers[0], answers[1], "ferrokv vs etcd 3.6");
    assert!(answers[0]
        .1
        .starts_with("grpc: received message larger than max ("));
}
