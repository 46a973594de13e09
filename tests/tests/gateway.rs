//! The JSON gateway on the client port, compared with etcd 3.6.16: the same requests (curl, as
//! etcd's docs and the usual blog posts send them) to a fresh etcd 3.6 and a fresh ferrokv,
//! and the parsed answers compared after the values that differ between any two clusters
//! (ids, sizes, hashes) are masked. Also `/v2/keys` (a plain 404 on 3.6), the endpoints' and
//! mux's plain-HTTP answers, the streamed routes, and https with client certificates.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrokv_tests::{free_port, Backend, Cluster, Member, MemberOpts, TlsFiles};
use serde_json::Value;

/// One HTTP answer: status, content type, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    ctype: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn tls_args(tls: Option<&TlsFiles>) -> Vec<String> {
    match tls {
        Some(t) => vec![
            "--cacert".into(),
            t.ca_cert.display().to_string(),
            "--cert".into(),
            t.client_cert.display().to_string(),
            "--key".into(),
            t.client_key.display().to_string(),
        ],
        None => Vec::new(),
    }
}

fn curl(
    base: &str,
    tls: Option<&TlsFiles>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Answer {
    let mut c = Command::new("curl");
    c.args(["-s", "-S", "--max-time", "20", "-X", method])
        .args(tls_args(tls))
        .args(["-w", "\n%{http_code}\n%{content_type}"])
        .arg(format!("{base}{path}"));
    if let Some(b) = body {
        c.args(["-d", b]);
    }
    let out = c.output().expect("run curl");
    assert!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut parts = text.rsplitn(3, '\n');
    let ctype = parts.next().unwrap_or_default().to_string();
    let status = parts.next().unwrap_or_default().parse().unwrap_or(0);
    let body = parts.next().unwrap_or_default().to_string();
    Answer {
        status,
        ctype,
        body,
    }
}

/// Values two clusters never share (ids, sizes, hashes, URLs, versions) become "<masked>";
/// whether a field is present stays visible.
fn mask(v: &mut Value) {
    const MASKED: &[&str] = &[
        "cluster_id",
        "member_id",
        "raft_term",
        "ID",
        "leader",
        "dbSize",
        "dbSizeInUse",
        "dbSizeQuota",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "hash",
        "version",
        "etcdserver",
        "name",
        "peerURLs",
        "clientURLs",
        "blob",
        "remaining_bytes",
    ];
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if MASKED.contains(&k.as_str()) {
                    // A KeyValue's version ("1", an int64) is data, not a server version.
                    if k == "version" && !val.as_str().is_some_and(|v| v.contains('.')) {
                        continue;
                    }
                    *val = Value::String("<masked>".into());
                } else {
                    mask(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

/// Sorted member lists: the two clusters' member ids order them differently.
fn sort_members(v: &mut Value) {
    if let Some(Value::Array(ms)) = v.get_mut("members") {
        ms.sort_by_key(|m| m.get("isLearner").is_some());
    }
}

/// A request's answer as compared: status, and the masked body (JSON, or the text).
fn observed(a: &Answer) -> (u16, Value) {
    let body = if a.ctype.starts_with("application/json") {
        let mut v = a.json();
        mask(&mut v);
        sort_members(&mut v);
        v
    } else {
        Value::String(a.body.clone())
    };
    (a.status, body)
}

async fn start(b: Backend, opts: MemberOpts) -> Member {
    Member::start(b, opts)
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()))
}

/// The unary routes in the order they are sent; each `(method, path, body)`. Revisions line
/// up because both clusters start empty at revision 1 and see the same writes.
fn unary_script(learner_peer: &str) -> Vec<(&'static str, String, String)> {
    let p = |path: &str, body: &str| ("POST", path.to_string(), body.to_string());
    vec![
        p("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        p("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        p("/v3/kv/range", "{}"),
        p("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#),
        p(
            "/v3/kv/range",
            r#"{"key":"Zm9v","keys_only":true,"bogus":1}"#,
        ),
        p("/v3/kv/range", "notjson"),
        p("/v3/kv/put", r#"{"key":""}"#),
        p(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"CREATE","create_revision":"0"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        p(
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YmFy","result":"EQUAL","target":"CREATE","create_revision":"0"}],"success":[{"request_put":{"key":"YmFy","value":"YmF6","prev_kv":true}}]}"#,
        ),
        p(
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"cXV4","prev_kv":true}"#,
        ),
        p(
            "/v3/kv/range",
            r#"{"key":"AA==","range_end":"AA==","count_only":true}"#,
        ),
        p("/v3/kv/deleterange", r#"{"key":"YmFy","prev_kv":true}"#),
        p("/v3/kv/deleterange", r#"{"key":"YmFy"}"#),
        p("/v3/kv/compaction", r#"{"revision":"3"}"#),
        p("/v3/kv/compaction", r#"{"revision":"3"}"#),
        p("/v3/kv/compaction", r#"{"revision":"1000"}"#),
        p("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
        p("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#),
        p("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#),
        p(
            "/v3/kv/put",
            r#"{"key":"bGVhc2Vk","value":"eA==","lease":"4660"}"#,
        ),
        p("/v3/lease/leases", "{}"),
        p("/v3/kv/lease/leases", "{}"),
        p("/v3/lease/revoke", r#"{"ID":"4660"}"#),
        p("/v3/lease/revoke", r#"{"ID":"4660"}"#),
        p("/v3/kv/lease/revoke", r#"{"ID":"4660"}"#),
        p("/v3/lease/timetolive", r#"{"ID":"1"}"#),
        p("/v3/kv/lease/timetolive", r#"{"ID":"1","keys":true}"#),
        p("/v3/cluster/member/list", "{}"),
        p("/v3/cluster/member/list", r#"{"linearizable":true}"#),
        p(
            "/v3/cluster/member/add",
            &format!(r#"{{"peerURLs":["{learner_peer}"],"isLearner":true}}"#),
        ),
        p("/v3/cluster/member/add", r#"{"peerURLs":["not a url"]}"#),
        p("/v3/cluster/member/remove", r#"{"ID":"1"}"#),
        p(
            "/v3/cluster/member/update",
            r#"{"ID":"1","peerURLs":["http://127.0.0.1:1"]}"#,
        ),
        p("/v3/cluster/member/promote", r#"{"ID":"1"}"#),
        p("/v3/maintenance/status", "{}"),
        p("/v3/maintenance/alarm", "{}"),
        p("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
        p("/v3/maintenance/hash", "{}"),
        p("/v3/maintenance/hashkv", "{}"),
        p("/v3/maintenance/defragment", "{}"),
        p("/v3/auth/status", "{}"),
        p("/v3/auth/user/add", r#"{"name":"alice","password":"pw"}"#),
        p("/v3/auth/user/add", r#"{"name":"alice","password":"pw"}"#),
        p("/v3/auth/role/add", r#"{"name":"reader"}"#),
        p(
            "/v3/auth/role/grant",
            r#"{"name":"reader","perm":{"permType":"READ","key":"YQ==","range_end":"Yg=="}}"#,
        ),
        p("/v3/auth/user/grant", r#"{"user":"alice","role":"reader"}"#),
        p("/v3/auth/user/get", r#"{"name":"alice"}"#),
        p("/v3/auth/user/list", "{}"),
        p("/v3/auth/role/get", r#"{"role":"reader"}"#),
        p("/v3/auth/role/list", "{}"),
        p("/v3/auth/enable", "{}"),
        p("/v3/auth/user/delete", r#"{"name":"nobody"}"#),
        p("/v3beta/kv/range", r#"{"key":"Zm9v"}"#),
        p("/v3/kv/nothing", "{}"),
        p("/v3/", "{}"),
        ("GET", "/v3/kv/range".into(), r#"{"key":"Zm9v"}"#.into()),
        ("DELETE", "/v3/kv/put".into(), "{}".into()),
        ("GET", "/v2/keys/foo".into(), String::new()),
        ("PUT", "/v2/keys/foo".into(), "value=bar".into()),
        ("GET", "/".into(), String::new()),
        ("POST", "/health".into(), String::new()),
        ("GET", "/version".into(), String::new()),
    ]
}

/// Every unary route and the HTTP mux's answers, etcd 3.6 against ferrokv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_routes_match_etcd36() {
    let learner_peer = format!("http://127.0.0.1:{}", free_port());
    let script = unary_script(&learner_peer);
    let mut seen = Vec::new();
    for b in [Backend::Etcd36, Backend::Ferrokv] {
        let m = start(b, MemberOpts::default()).await;
        let answers: Vec<(u16, Value)> = script
            .iter()
            .map(|(method, path, body)| {
                let body = (!body.is_empty()).then_some(body.as_str());
                observed(&curl(&m.client_url, None, method, path, body))
            })
            .collect();
        seen.push(answers);
    }
    let (etcd, ferrokv) = (&seen[0], &seen[1]);
    for (i, (method, path, body)) in script.iter().enumerate() {
        let (e, f) = (etcd[i].clone(), ferrokv[i].clone());
        // A JSON syntax error's text is Go's on etcd; both say code 3 with HTTP 400.
        if body == "notjson" {
            assert_eq!((e.0, &e.1["code"]), (400, &Value::from(3)), "etcd: {e:?}");
            assert_eq!(
                (f.0, &f.1["code"]),
                (400, &Value::from(3)),
                "ferrokv: {f:?}"
            );
            continue;
        }
        assert_eq!(e, f, "{method} {path} {body}: etcd 3.6 vs ferrokv");
    }
    // The answers that matter most, spelled out.
    let v2 = &ferrokv[script
        .iter()
        .position(|s| s.1 == "/v2/keys/foo")
        .unwrap_or(0)];
    assert_eq!(v2, &(404, Value::String("404 page not found\n".into())));
}

/// The blog's `curl --cacert --cert --key https://HOST:2379/v3/kv/put`: https (so HTTP/2 by
/// ALPN) with client certificates, and refused without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_client_certs_matches_etcd36() {
    let mut seen = Vec::new();
    for b in [Backend::Etcd36, Backend::Ferrokv] {
        let pki = tempfile::tempdir().expect("tempdir");
        let tls = TlsFiles::generate(pki.path()).expect("certificates");
        let opts = MemberOpts {
            tls: Some(tls.clone()),
            client_cert_auth: true,
            ..MemberOpts::default()
        };
        let m = start(b, opts).await;
        assert!(m.client_url.starts_with("https://"));
        let put = curl(
            &m.client_url,
            Some(&tls),
            "POST",
            "/v3/kv/put",
            Some(r#"{"key":"Zm9v","value":"YmFy"}"#),
        );
        let range = curl(
            &m.client_url,
            Some(&tls),
            "POST",
            "/v3/kv/range",
            Some(r#"{"key":"Zm9v"}"#),
        );
        let missing = curl(
            &m.client_url,
            Some(&tls),
            "POST",
            "/v3/kv/range",
            Some("{}"),
        );
        let v2 = curl(&m.client_url, Some(&tls), "GET", "/v2/keys/foo", None);
        assert_eq!(range.json()["kvs"][0]["value"], "YmFy", "{}", b.name());
        // No client certificate: the handshake is refused.
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-X", "POST"])
            .arg("--cacert")
            .arg(&tls.ca_cert)
            .arg(format!("{}/v3/kv/range", m.client_url))
            .args(["-d", r#"{"key":"Zm9v"}"#])
            .output()
            .expect("curl");
        assert!(
            !out.status.success(),
            "{}: no client cert accepted",
            b.name()
        );
        seen.push(vec![
            observed(&put),
            observed(&range),
            observed(&missing),
            observed(&v2),
        ]);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.6 vs ferrokv over https");
}

/// A streamed route: curl's output lines, read until `n` lines came or `wait` passed.
struct StreamedCurl {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl StreamedCurl {
    fn start(base: &str, path: &str, body: &str) -> StreamedCurl {
        Self::start_with(base, path, body, &[])
    }

    fn start_with(base: &str, path: &str, body: &str, headers: &[&str]) -> StreamedCurl {
        let mut child = Command::new("curl")
            .args(["-s", "-N", "-X", "POST"])
            .args(headers.iter().flat_map(|h| ["-H", h]))
            .arg(format!("{base}{path}"))
            .args(["-d", body])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn curl");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        StreamedCurl { child, lines }
    }

    fn take(&mut self, n: usize, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    out.push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
                }
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for StreamedCurl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/v3/watch` (create → put → delete → events, and a compacted start), `/v3/lease/keepalive`,
/// `/v3/maintenance/snapshot`: line by line as etcd 3.6 streams them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_routes_match_etcd36() {
    let mut seen = Vec::new();
    for b in [Backend::Etcd36, Backend::Ferrokv] {
        let m = start(b, MemberOpts::default()).await;
        let u = m.client_url.as_str();
        let mut w = StreamedCurl::start(
            u,
            "/v3/watch",
            r#"{"create_request":{"key":"Zm9v","prev_kv":true}}"#,
        );
        let mut lines = w.take(1, Duration::from_secs(10));
        curl(
            u,
            None,
            "POST",
            "/v3/kv/put",
            Some(r#"{"key":"Zm9v","value":"YmFy"}"#),
        );
        curl(
            u,
            None,
            "POST",
            "/v3/kv/put",
            Some(r#"{"key":"Zm9v","value":"YmF6"}"#),
        );
        curl(
            u,
            None,
            "POST",
            "/v3/kv/deleterange",
            Some(r#"{"key":"Zm9v"}"#),
        );
        lines.extend(w.take(3, Duration::from_secs(10)));
        assert_eq!(lines.len(), 4, "{}: {lines:?}", b.name());
        drop(w);

        curl(
            u,
            None,
            "POST",
            "/v3/kv/compaction",
            Some(r#"{"revision":"3"}"#),
        );
        let mut old = StreamedCurl::start(
            u,
            "/v3/watch",
            r#"{"create_request":{"key":"Zm9v","start_revision":"2"}}"#,
        );
        lines.extend(old.take(2, Duration::from_secs(10)));
        drop(old);

        curl(
            u,
            None,
            "POST",
            "/v3/lease/grant",
            Some(r#"{"TTL":"60","ID":"4660"}"#),
        );
        let mut ka = StreamedCurl::start(u, "/v3/lease/keepalive", r#"{"ID":"4660"}"#);
        lines.extend(ka.take(1, Duration::from_secs(10)));
        drop(ka);
        let mut ka = StreamedCurl::start(u, "/v3/lease/keepalive", r#"{"ID":"5"}"#);
        lines.extend(ka.take(1, Duration::from_secs(10)));
        drop(ka);

        // The snapshot: every line a result with a blob, the blobs a non-empty file.
        let mut snap = StreamedCurl::start(u, "/v3/maintenance/snapshot", "{}");
        let chunks = snap.take(10_000, Duration::from_secs(5));
        assert!(!chunks.is_empty(), "{}: no snapshot chunk", b.name());
        for c in &chunks {
            assert!(c["result"]["blob"].is_string(), "{}: {c}", b.name());
        }

        for l in &mut lines {
            mask(l);
        }
        seen.push(lines);
    }
    assert_eq!(seen[0], seen[1], "etcd 3.6 vs ferrokv, streamed");
}

/// A require-leader watch (`Grpc-Metadata-hasleader: true`, the gateway's way to send the
/// gRPC metadata clientv3's `WithRequireLeader` sends) on a member that lost its leader: new
/// ones are refused at once, an open one is canceled only after about three election
/// timeouts without a leader. etcd 3.6 and ferrokv alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_leader_watch_outlives_a_short_leader_loss() {
    const ELECTION_MS: u64 = 500;
    for b in [Backend::Etcd36, Backend::Ferrokv] {
        let opts = MemberOpts {
            heartbeat_ms: Some(100),
            election_ms: Some(ELECTION_MS),
            ..MemberOpts::default()
        };
        let mut c = Cluster::start(b, 3, opts)
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
        let url = c.get("m1").expect("m1").client_url.clone();
        let body = r#"{"create_request":{"key":"Zm9v"}}"#;
        let hasleader = ["Grpc-Metadata-hasleader: true"];
        let mut open = StreamedCurl::start_with(&url, "/v3/watch", body, &hasleader);
        let created = open.take(1, Duration::from_secs(10));
        assert_eq!(created.len(), 1, "{}: {created:?}", b.name());
        assert_eq!(created[0]["result"]["created"], true, "{}", b.name());

        c.kill("m2").expect("kill m2");
        c.kill("m3").expect("kill m3");
        // Wait until the member knows it has no leader: a new require-leader watch is then
        // refused at once, with the HTTP status of Unavailable.
        let deadline = Instant::now() + Duration::from_secs(20);
        let refused = loop {
            assert!(Instant::now() < deadline, "{}: leader never lost", b.name());
            let out = Command::new("curl")
                .args([
                    "-s",
                    "--max-time",
                    "0.3",
                    "-w",
                    "\n%{http_code}",
                    "-X",
                    "POST",
                ])
                .args(["-H", hasleader[0]])
                .arg(format!("{url}/v3/watch"))
                .args(["-d", body])
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.ends_with("\n503") {
                break text;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let lost = Instant::now();
        let line: Value =
            serde_json::from_str(refused.lines().next().unwrap_or_default()).expect("json");
        assert_eq!(
            line,
            serde_json::json!({"error":{"code":14,"message":"etcdserver: no leader"}}),
            "{}",
            b.name()
        );
        // The open watch survives the first election timeouts without a leader (etcd cancels
        // at its third check, one per election timeout, so 2–3 timeouts after the loss; this
        // poll sees the loss up to ~0.4 s late) ...
        let early = open.take(1, Duration::from_millis(ELECTION_MS));
        assert!(
            early.is_empty(),
            "{}: canceled at once: {early:?}",
            b.name()
        );
        // ... and is canceled with "no leader" within a few more.
        let late = open.take(1, Duration::from_millis(8 * ELECTION_MS));
        assert_eq!(
            late,
            vec![serde_json::json!({"error":{"code":14,"message":"etcdserver: no leader"}})],
            "{}: after {:?} without a leader",
            b.name(),
            lost.elapsed()
        );
    }
}
