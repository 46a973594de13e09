//! Discovery, with etcd 3.6.16 as the control: members that bootstrap through etcd 3.6's v3
//! discovery (`--discovery-endpoints`, `--discovery-token`) against a ferrokv and an etcd 3.6
//! discovery member, and through the v2 `--discovery URL` protocol against a small v2
//! keys-API server run by the test. What ferrokv writes to the registry, the member ids it
//! derives and its errors are compared with what etcd 3.6 writes, derives and says for the
//! same flags.

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use ferrokv_tests::dns::{DnsServer, IsolatedNetns, Zone};
use ferrokv_tests::etcdctl::{run_with, Ctl};
use ferrokv_tests::member::etcd36_dir;
use ferrokv_tests::{free_port, Backend, Member, MemberOpts};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A member process started with discovery flags instead of `--initial-cluster` (the
/// harness's `Member` always passes one).
struct Proc {
    backend: Backend,
    name: String,
    client_url: String,
    /// The advertised peer URL.
    peer_url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// How it was started, for `restart`.
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    /// The network namespace it runs in (`ip netns exec`), if not the test's own.
    netns: Option<String>,
}

/// A member's URLs.
struct Urls {
    client: String,
    listen_peer: String,
    advertise_peer: String,
}

impl Urls {
    fn local(peer_port: u16) -> Urls {
        let peer = format!("http://127.0.0.1:{peer_port}");
        Urls {
            client: format!("http://127.0.0.1:{}", free_port()),
            listen_peer: peer.clone(),
            advertise_peer: peer,
        }
    }
}

impl Proc {
    fn spawn(backend: Backend, name: &str, extra: &[String], env: &[(&str, &str)]) -> Proc {
        let peer_port = free_port();
        Proc::spawn_on(backend, name, peer_port, extra, env)
    }

    /// With a given peer port: member ids derive from the peer URLs, so two runs that must
    /// derive the same id need the same port.
    fn spawn_on(
        backend: Backend,
        name: &str,
        peer_port: u16,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> Proc {
        Proc::launch(backend, name, Urls::local(peer_port), extra, env, None)
    }

    fn launch(
        backend: Backend,
        name: &str,
        urls: Urls,
        extra: &[String],
        env: &[(&str, &str)],
        netns: Option<&IsolatedNetns>,
    ) -> Proc {
        let bin = backend.binary().expect("member binary");
        let dir = tempfile::Builder::new()
            .prefix(&format!("disc-{}-{name}-", backend.name()))
            .tempdir()
            .expect("tempdir");
        let mut args = Vec::new();
        if let Some(ns) = netns {
            args.extend(["ip", "netns", "exec", ns.name()].map(String::from));
        }
        args.extend([
            bin.display().to_string(),
            format!("--name={name}"),
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={}", urls.client),
            format!("--advertise-client-urls={}", urls.client),
            format!("--listen-peer-urls={}", urls.listen_peer),
            format!("--initial-advertise-peer-urls={}", urls.advertise_peer),
            "--log-level=info".to_string(),
        ]);
        args.extend(extra.iter().cloned());
        let mut p = Proc {
            backend,
            name: name.to_string(),
            client_url: urls.client,
            peer_url: urls.advertise_peer,
            dir,
            child: None,
            cmd: args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            netns: netns.map(|n| n.name().to_string()),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("member.log"))
            .expect("log");
        let log2 = log.try_clone().expect("log");
        let mut cmd = Command::new(&self.cmd[0]);
        cmd.args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Only what the test sets: an ETCD_* of the developer's shell must not leak in.
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.child = Some(cmd.spawn().expect("spawn member"));
    }

    /// SIGKILL, then the same command line on the same data dir.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.start();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("member.log")).unwrap_or_default()
    }

    fn wal_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data/member/wal")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Until the member has a leader; panics with the log if it exits or times out.
    async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                panic!(
                    "{} {} exited ({s}) before it was ready:\n{}",
                    self.backend.name(),
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} {} not ready after {timeout:?}:\n{}",
                self.backend.name(),
                self.name,
                self.log()
            );
            if self.netns.is_some() {
                // Out of the test's reach but through etcdctl in the namespace.
                let out = self.ctl36(&["endpoint", "status", "-w", "json"]);
                let leader = serde_json::from_str::<Value>(&out.stdout)
                    .ok()
                    .and_then(|v| v[0]["Status"]["leader"].as_u64())
                    .unwrap_or(0);
                if leader != 0 {
                    return;
                }
            } else {
                let probe = async {
                    let mut c =
                        etcd_client::Client::connect([self.client_url.as_str()], None).await?;
                    c.status().await
                };
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                    if s.leader() != 0 {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Until the process exits by itself; panics with the log if it keeps running.
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} {} still running after {timeout:?}:\n{}",
                self.backend.name(),
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ctl36(&self, args: &[&str]) -> ferrokv_tests::CtlOutput {
        let mut all = vec![format!("--endpoints={}", self.client_url)];
        all.extend(args.iter().map(|s| s.to_string()));
        match &self.netns {
            None => run_with(Ctl::V36, &all, None),
            Some(ns) => {
                let bin = etcd36_dir().expect("etcd 3.6 build").join("etcdctl");
                let out = Command::new("ip")
                    .args(["netns", "exec", ns])
                    .arg(bin)
                    .args(["--dial-timeout=3s", "--command-timeout=10s"])
                    .args(&all)
                    .output()
                    .expect("etcdctl in the namespace");
                ferrokv_tests::CtlOutput {
                    status: Some(out.status),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- {} {} log (last lines) -----\n{}",
                self.backend.name(),
                self.name,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

fn v3_flags(service: &Member, token: &str) -> Vec<String> {
    vec![
        // host:port, as etcd's own docs give it.
        format!(
            "--discovery-endpoints={}",
            service.client_url.trim_start_matches("http://")
        ),
        format!("--discovery-token={token}"),
        "--discovery-dial-timeout=2s".into(),
        "--discovery-request-timeout=5s".into(),
    ]
}

async fn start_service(backend: Backend) -> Member {
    Member::start(backend, MemberOpts::default())
        .await
        .unwrap_or_else(|e| panic!("{} discovery service: {e}", backend.name()))
}

async fn put(service: &Member, key: &str, value: &str) {
    let mut c = service.client().await.expect("service client");
    c.put(key, value, None).await.expect("put");
}

/// Everything under `/_etcd/registry/<token>/`, in creation order: (key, value).
async fn registry(service: &Member, token: &str) -> Vec<(String, String)> {
    let mut c = service.client().await.expect("service client");
    let resp = c
        .get(
            format!("/_etcd/registry/{token}/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get registry");
    let mut kvs: Vec<_> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.create_revision(),
                kv.key_str().unwrap_or_default().to_string(),
                kv.value_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    kvs.sort();
    kvs.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// `etcdctl member list -w json` of a member: (cluster id, (name, id, peer URLs) sorted).
fn member_list(p: &Proc) -> (u64, Vec<(String, u64, Vec<String>)>) {
    let out = p.ctl36(&["member", "list", "-w", "json"]);
    let v: Value = serde_json::from_str(out.ok()).expect("member list json");
    let cid = v["header"]["cluster_id"].as_u64().expect("cluster_id");
    let mut members: Vec<(String, u64, Vec<String>)> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["ID"].as_u64().unwrap_or_default(),
                m["peerURLs"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    members.sort();
    (cid, members)
}

/// Three members bootstrapped through discovery: one cluster, same id everywhere, every
/// member named in it, and a write through one readable on the others.
async fn check_one_cluster(members: &mut [Proc]) {
    for m in members.iter_mut() {
        m.wait_ready(Duration::from_secs(60)).await;
    }
    let (cid, list) = member_list(&members[0]);
    assert_eq!(list.len(), members.len(), "{list:?}");
    for m in members.iter() {
        let (c, l) = member_list(m);
        assert_eq!(c, cid, "{} sees another cluster id", m.name);
        assert_eq!(l, list, "{} sees another member list", m.name);
        assert!(
            list.iter()
                .any(|(n, _, urls)| *n == m.name && urls == &vec![m.peer_url.clone()]),
            "{} missing from {list:?}",
            m.name
        );
    }
    members[0].ctl36(&["put", "disc-key", "replicated"]).ok();
    for m in members.iter() {
        let out = m.ctl36(&["get", "disc-key", "--print-value-only"]);
        assert_eq!(out.ok().trim(), "replicated", "read on {}", m.name);
    }
}

/// The registry after a bootstrap: the size key (`3`) and one `member_key(id)` per member
/// with `name=peer-url`, the ids being the members' ids in the cluster they formed, and
/// nothing else. The v3 and v2 registries differ only in their key layout.
fn check_registry_shape(
    reg: &[(String, String)],
    size_key: &str,
    member_key: impl Fn(u64) -> String,
    members: &[Proc],
    ids: &[(String, u64, Vec<String>)],
) {
    let regs: BTreeMap<&str, &str> = reg.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(regs.get(size_key).copied(), Some("3"), "{reg:?}");
    assert_eq!(regs.len(), members.len() + 1, "{reg:?}");
    for m in members {
        let (_, id, _) = ids
            .iter()
            .find(|(n, _, _)| *n == m.name)
            .expect("member in list");
        let key = member_key(*id);
        assert_eq!(
            regs.get(key.as_str()).copied(),
            Some(format!("{}={}", m.name, m.peer_url).as_str()),
            "{key} in {reg:?}"
        );
    }
}

/// A fourth member with the same discovery flags stops with etcd's "cluster is full",
/// bootstraps nothing and registers nothing (`registry` reads the registry again).
async fn fourth_is_refused(
    backend: Backend,
    flags: &[String],
    before: &[(String, String)],
    registry: impl AsyncFnOnce() -> Vec<(String, String)>,
) {
    let mut extra = Proc::spawn(backend, "n4", flags, &[]);
    let status = extra.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "{}", extra.log());
    assert!(
        extra
            .log()
            .contains("failed to join discovery cluster (discovery: cluster is full)"),
        "{}",
        extra.log()
    );
    assert!(
        !extra.wal_dir().exists(),
        "a refused member must not have bootstrapped anything"
    );
    assert_eq!(registry().await, before, "the refused member registered");
}

/// 3 members of `backend` via v3 discovery against a `service` discovery member, then a
/// fourth with the same token, which must be refused with etcd's error.
async fn v3_bootstrap(service_backend: Backend, backend: Backend) {
    let service = start_service(service_backend).await;
    let token = format!("tok-{}-{}", service_backend.name(), backend.name());
    put(
        &service,
        &format!("/_etcd/registry/{token}/_config/size"),
        "3",
    )
    .await;
    let flags = v3_flags(&service, &token);
    let mut members: Vec<Proc> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Proc::spawn(backend, n, &flags, &[]))
        .collect();
    check_one_cluster(&mut members).await;
    let (_, ids) = member_list(&members[0]);
    let reg = registry(&service, &token).await;
    let prefix = format!("/_etcd/registry/{token}/");
    assert_eq!(reg[0].0, format!("{prefix}_config/size"), "size key first");
    check_registry_shape(
        &reg,
        &format!("{prefix}_config/size"),
        |id| format!("{prefix}members/{id:x}"),
        &members,
        &ids,
    );
    fourth_is_refused(backend, &flags, &reg, async || {
        registry(&service, &token).await
    })
    .await;

    // A restart reads the WAL: the discovery flags are ignored (the discovery member is
    // gone by now) and the member rejoins its cluster.
    drop(service);
    let before = member_list(&members[0]);
    members[1].restart();
    members[1].wait_ready(Duration::from_secs(60)).await;
    assert_eq!(member_list(&members[1]), before);
    assert!(
        members[1]
            .log()
            .contains("discovery token is ignored since cluster already initialized"),
        "{}",
        members[1].log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_ferrokv_members_via_a_ferrokv_discovery_member() {
    v3_bootstrap(Backend::Ferrokv, Backend::Ferrokv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_ferrokv_members_via_an_etcd36_discovery_member() {
    v3_bootstrap(Backend::Etcd36, Backend::Ferrokv).await;
}

/// The control: etcd 3.6's own members, with the same flags, behave as the ferrokv ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_etcd36_members_via_an_etcd36_discovery_member() {
    v3_bootstrap(Backend::Etcd36, Backend::Etcd36).await;
}

/// And etcd 3.6 members bootstrap through a ferrokv discovery member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_etcd36_members_via_a_ferrokv_discovery_member() {
    v3_bootstrap(Backend::Ferrokv, Backend::Etcd36).await;
}

/// Same name, same peer URL, same token, each against a fresh discovery member: etcd 3.6 and
/// ferrokv write byte-identical registrations and derive the same member and cluster ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_registrations_and_ids_equal_etcds() {
    let token = "shared-token";
    let peer_port = free_port();
    let mut seen = Vec::new();
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        let service = start_service(Backend::Etcd36).await;
        put(
            &service,
            &format!("/_etcd/registry/{token}/_config/size"),
            "1",
        )
        .await;
        let mut m = Proc::spawn_on(backend, "solo", peer_port, &v3_flags(&service, token), &[]);
        m.wait_ready(Duration::from_secs(60)).await;
        let list = member_list(&m);
        let reg = registry(&service, token).await;
        drop(m);
        seen.push((backend, list, reg));
    }
    let (_, etcd_list, etcd_reg) = &seen[0];
    let (_, fkv_list, fkv_reg) = &seen[1];
    assert_eq!(fkv_reg, etcd_reg, "registry: ferrokv vs etcd 3.6");
    assert_eq!(
        fkv_list, etcd_list,
        "(cluster id, members): ferrokv vs etcd 3.6"
    );
    assert_eq!(etcd_reg.len(), 2, "{etcd_reg:?}");
}

/// No size key: etcd 3.6 and ferrokv both stop with `discovery: size key not found`, and
/// neither registers itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_missing_size_key_stops_the_member() {
    let service = start_service(Backend::Ferrokv).await;
    for (backend, token) in [
        (Backend::Etcd36, "nosize-etcd"),
        (Backend::Ferrokv, "nosize-fkv"),
    ] {
        let mut m = Proc::spawn(backend, "n1", &v3_flags(&service, token), &[]);
        let status = m.wait_exit(Duration::from_secs(30)).await;
        assert!(!status.success(), "{}", m.log());
        assert!(
            m.log()
                .contains("failed to join discovery cluster (discovery: size key not found)"),
            "{}: {}",
            backend.name(),
            m.log()
        );
        assert!(registry(&service, token).await.is_empty());
        assert!(!m.wal_dir().exists());
    }
    // A size that is not a positive number: etcd's "size key is bad".
    put(&service, "/_etcd/registry/bad/_config/size", "0").await;
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        let mut m = Proc::spawn(backend, "n1", &v3_flags(&service, "bad"), &[]);
        m.wait_exit(Duration::from_secs(30)).await;
        assert!(
            m.log()
                .contains("failed to join discovery cluster (discovery: size key is bad)"),
            "{}: {}",
            backend.name(),
            m.log()
        );
    }
}

// ---------------------------------------------------------------------------------------
// v2: a small v2 keys-API discovery service (what discovery.etcd.io speaks), run in-process.

#[derive(Default)]
struct V2State {
    index: u64,
    /// key -> (value, created index, modified index)
    keys: BTreeMap<String, (String, u64, u64)>,
    /// (index, key) of every change, for `wait=true`.
    events: Vec<(u64, String)>,
    /// Every request as "METHOD path?query body".
    requests: Vec<String>,
}

struct V2Server {
    url: String,
    state: Arc<Mutex<V2State>>,
    changed: Arc<tokio::sync::Notify>,
}

impl V2Server {
    async fn start() -> V2Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(V2State::default()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (s, n) = (state.clone(), changed.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_v2(sock, s.clone(), n.clone()));
            }
        });
        V2Server {
            url,
            state,
            changed,
        }
    }

    fn reset(&self) {
        *self.state.lock().unwrap() = V2State::default();
    }

    /// What the blog's `curl -X PUT .../_config/size -d value=3` does.
    fn set(&self, key: &str, value: &str) {
        let mut s = self.state.lock().unwrap();
        s.index += 1;
        let i = s.index;
        s.keys.insert(key.to_string(), (value.to_string(), i, i));
        s.events.push((i, key.to_string()));
        self.changed.notify_waiters();
    }

    fn keys_under(&self, dir: &str) -> Vec<(String, String)> {
        let s = self.state.lock().unwrap();
        let mut v: Vec<_> = s
            .keys
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{dir}/")))
            .map(|(k, (v, c, _))| (*c, k.clone(), v.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k, v)| (k, v)).collect()
    }

    fn requests_under(&self, dir: &str) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .filter(|r| r.split(' ').nth(1).is_some_and(|p| p.starts_with(dir)))
            .cloned()
            .collect()
    }
}

/// `a=1&b=x%3Dy` into pairs, decoded (`+` is a space, `%XX` a byte).
fn form_pairs(s: &str) -> Vec<(String, String)> {
    let decode = |t: &str| {
        let b = t.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn node_json(key: &str, value: &str, created: u64, modified: u64) -> Value {
    serde_json::json!({"key": key, "value": value, "modifiedIndex": modified, "createdIndex": created})
}

async fn serve_v2(
    mut sock: tokio::net::TcpStream,
    state: Arc<Mutex<V2State>>,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + 4 + len {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + len]).into_owned();
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    // An absolute-form target is a request sent to us as a proxy.
    let path = match path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => path,
    };
    let path = path.trim_end_matches('/').to_string();
    let q: BTreeMap<String, String> = form_pairs(query).into_iter().collect();
    state
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {target} {body}"));

    let (status, json, index) = loop {
        let notified = changed.notified();
        let answer = {
            let mut s = state.lock().unwrap();
            answer_v2(&mut s, &method, &path, &q, &body)
        };
        if let Some(a) = answer {
            if method == "PUT" {
                changed.notify_waiters();
            }
            break a;
        }
        // A wait with nothing to report yet: until the next change.
        notified.await;
    };
    let body = json.to_string();
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Etcd-Index: {index}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// The keys API subset discovery uses; `None` for a wait that must block.
fn answer_v2(
    s: &mut V2State,
    method: &str,
    path: &str,
    q: &BTreeMap<String, String>,
    body: &str,
) -> Option<(&'static str, Value, u64)> {
    let not_found = |s: &V2State| {
        (
            "404 Not Found",
            serde_json::json!({"errorCode": 100, "message": "Key not found", "cause": path, "index": s.index}),
            s.index,
        )
    };
    match method {
        "PUT" => {
            let value = form_pairs(body)
                .into_iter()
                .find(|(k, _)| k == "value")
                .map(|(_, v)| v)
                .unwrap_or_default();
            if q.get("prevExist").map(String::as_str) == Some("false") && s.keys.contains_key(path)
            {
                return Some((
                    "412 Precondition Failed",
                    serde_json::json!({"errorCode": 105, "message": "Key already exists", "cause": path, "index": s.index}),
                    s.index,
                ));
            }
            s.index += 1;
            let i = s.index;
            s.keys.insert(path.to_string(), (value.clone(), i, i));
            s.events.push((i, path.to_string()));
            Some((
                "201 Created",
                serde_json::json!({"action": "create", "node": node_json(path, &value, i, i)}),
                i,
            ))
        }
        "GET" if q.get("wait").map(String::as_str) == Some("true") => {
            let from: u64 = q.get("waitIndex").and_then(|v| v.parse().ok()).unwrap_or(0);
            let recursive = q.get("recursive").map(String::as_str) == Some("true");
            let (_, key) = s.events.iter().find(|(i, k)| {
                *i >= from && (k == path || (recursive && k.starts_with(&format!("{path}/"))))
            })?;
            let (v, c, m) = s.keys.get(key)?.clone();
            Some((
                "200 OK",
                serde_json::json!({"action": "create", "node": node_json(key, &v, c, m)}),
                s.index,
            ))
        }
        "GET" => {
            if let Some((v, c, m)) = s.keys.get(path) {
                return Some((
                    "200 OK",
                    serde_json::json!({"action": "get", "node": node_json(path, v, *c, *m)}),
                    s.index,
                ));
            }
            // A directory: its direct children (sub-directories as dir nodes).
            let prefix = format!("{path}/");
            let mut children: BTreeMap<String, Value> = BTreeMap::new();
            for (k, (v, c, m)) in &s.keys {
                let Some(rest) = k.strip_prefix(&prefix) else {
                    continue;
                };
                match rest.split_once('/') {
                    None => {
                        children.insert(k.clone(), node_json(k, v, *c, *m));
                    }
                    Some((d, _)) => {
                        let dk = format!("{prefix}{d}");
                        children.entry(dk.clone()).or_insert_with(|| {
                            serde_json::json!({"key": dk, "dir": true, "modifiedIndex": c, "createdIndex": c})
                        });
                    }
                }
            }
            if children.is_empty() {
                return Some(not_found(s));
            }
            Some((
                "200 OK",
                serde_json::json!({"action": "get", "node": {"key": path, "dir": true,
                    "nodes": children.into_values().collect::<Vec<_>>()}}),
                s.index,
            ))
        }
        _ => Some((
            "405 Method Not Allowed",
            serde_json::json!({"errorCode": 210, "message": "Invalid POST form", "cause": method, "index": s.index}),
            s.index,
        )),
    }
}

/// 3 members via `--discovery <url>` (one of them through `ETCD_DISCOVERY`, as container
/// images set it), then a fourth refused with etcd's error.
async fn v2_bootstrap(backend: Backend) {
    let server = V2Server::start().await;
    let dir = format!("/v2/keys/_etcd/registry/v2-{}", backend.name());
    let durl = format!("{}{dir}", server.url);
    server.set(&format!("{dir}/_config/size"), "3");
    let flag = vec![format!("--discovery={durl}")];
    let mut members = vec![
        Proc::spawn(backend, "n1", &flag, &[]),
        Proc::spawn(backend, "n2", &flag, &[]),
        Proc::spawn(backend, "n3", &[], &[("ETCD_DISCOVERY", durl.as_str())]),
    ];
    check_one_cluster(&mut members).await;
    let (_, ids) = member_list(&members[0]);
    let reg = server.keys_under(&dir);
    check_registry_shape(
        &reg,
        &format!("{dir}/_config/size"),
        |id| format!("{dir}/{id:x}"),
        &members,
        &ids,
    );
    fourth_is_refused(backend, &flag, &reg, async || server.keys_under(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_discovery_url_bootstraps_ferrokv() {
    v2_bootstrap(Backend::Ferrokv).await;
}

/// The control: etcd 3.6 still serves `--discovery` (deprecated, not removed) and forms its
/// cluster through the same test server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_discovery_url_bootstraps_etcd36() {
    v2_bootstrap(Backend::Etcd36).await;
}

/// Same flags and peer URL, one member: etcd 3.6 and ferrokv send the same v2 requests
/// (paths, queries, form bodies: so the same member id) and form the same cluster id; with
/// no size key both stop with the same error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_requests_ids_and_errors_equal_etcds() {
    let peer_port = free_port();
    let mut seen = Vec::new();
    // One server for both runs: the discovery URL is the token member ids derive from.
    let server = V2Server::start().await;
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        server.reset();
        let dir = "/solo";
        let durl = format!("{}{dir}", server.url);
        server.set("/solo/_config/size", "1");
        let mut m = Proc::spawn_on(
            backend,
            "solo",
            peer_port,
            &[format!("--discovery={durl}")],
            &[],
        );
        m.wait_ready(Duration::from_secs(60)).await;
        let list = member_list(&m);
        drop(m);
        seen.push((server.requests_under(dir), list, server.keys_under(dir)));
    }
    assert_eq!(seen[1].0, seen[0].0, "v2 requests: ferrokv vs etcd 3.6");
    assert_eq!(
        seen[1].1, seen[0].1,
        "(cluster id, members): ferrokv vs etcd 3.6"
    );
    assert_eq!(seen[1].2, seen[0].2, "registry: ferrokv vs etcd 3.6");

    let server = V2Server::start().await;
    let mut errors = Vec::new();
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        let mut m = Proc::spawn(
            backend,
            "n1",
            &[format!("--discovery={}/nosize", server.url)],
            &[],
        );
        m.wait_exit(Duration::from_secs(30)).await;
        let log = m.log();
        let at = log
            .find("failed to join discovery cluster (")
            .unwrap_or_else(|| panic!("{}: {log}", backend.name()));
        // Up to the end of the JSON string both write it in.
        let rest = &log[at..];
        errors.push(rest[..rest.find('"').unwrap_or(rest.len())].to_string());
        assert!(server.keys_under("/nosize").is_empty());
    }
    eprintln!("v2, no size key: {errors:?}");
    assert_eq!(
        errors[1], errors[0],
        "missing size key: ferrokv vs etcd 3.6"
    );
}

/// An unknown bootstrap variable stops the member before it forms anything; an unknown
/// harmless one is only warned about, as etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_bootstrap_env_vars_stop_the_member() {
    for (var, value, says) in [
        // A service name without a domain: etcd ignores it and bootstraps alone; refused.
        ("ETCD_DISCOVERY_SRV_NAME", "prod", "--discovery-srv-name"),
        // No such flag at all (etcd would only warn).
        (
            "ETCD_DISCOVERY_URL",
            "http://127.0.0.1:1/x",
            "ETCD_DISCOVERY_URL",
        ),
        (
            "ETCD_INITIAL_CLUSTERS",
            "a=http://127.0.0.1:1",
            "ETCD_INITIAL_CLUSTERS",
        ),
    ] {
        let mut m = Proc::spawn(Backend::Ferrokv, "n1", &[], &[(var, value)]);
        let status = m.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(1), "{var}: {}", m.log());
        assert!(m.log().contains(says), "{var}: {}", m.log());
        assert!(
            !m.wal_dir().exists(),
            "{var}: the member bootstrapped anyway"
        );
    }
    // A known one that conflicts with its flag: fatal, as on etcd 3.6.
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        let mut m = Proc::spawn(
            backend,
            "n1",
            &["--discovery-token=t".into()],
            &[("ETCD_DISCOVERY_TOKEN", "u")],
        );
        let status = m.wait_exit(Duration::from_secs(10)).await;
        assert!(!status.success(), "{}", m.log());
        assert!(
            m.log().contains("conflicting environment variable")
                && m.log().contains("ETCD_DISCOVERY_TOKEN"),
            "{}: {}",
            backend.name(),
            m.log()
        );
    }
    // Harmless and unknown: both start and warn.
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        let port = free_port();
        let cluster = format!("--initial-cluster=n1=http://127.0.0.1:{port}");
        let mut m = Proc::spawn_on(backend, "n1", port, &[cluster], &[("ETCD_FOO", "1")]);
        m.wait_ready(Duration::from_secs(30)).await;
        assert!(
            m.log().contains("unrecognized environment variable") && m.log().contains("ETCD_FOO"),
            "{}: {}",
            backend.name(),
            m.log()
        );
    }
}

/// v3 discovery over TLS with client certificates (`--discovery-cacert/-cert/-key`), and
/// with a user and password (`--discovery-user/-password`) on a discovery member with auth
/// enabled; a wrong password stops the member with etcd's error. etcd 3.6 members with the
/// same flags are the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_discovery_over_tls_and_with_auth() {
    let pki = tempfile::tempdir().expect("tempdir");
    let tls = ferrokv_tests::TlsFiles::generate(pki.path()).expect("pki");
    let service = Member::start(
        Backend::Etcd36,
        MemberOpts {
            tls: Some(tls.clone()),
            client_cert_auth: true,
            ..MemberOpts::default()
        },
    )
    .await
    .expect("tls discovery member");
    let bare = service
        .client_url
        .trim_start_matches("https://")
        .to_string();
    // A bare host:port (TLS because certificates are given) and an https:// URL.
    for (backend, endpoint, form) in [
        (Backend::Etcd36, bare.clone(), "bare"),
        (Backend::Ferrokv, bare.clone(), "bare"),
        (Backend::Etcd36, service.client_url.clone(), "url"),
        (Backend::Ferrokv, service.client_url.clone(), "url"),
        // No CA at all: --discovery-insecure-skip-tls-verify.
        (Backend::Etcd36, bare.clone(), "skip"),
        (Backend::Ferrokv, bare.clone(), "skip"),
    ] {
        let token = format!("tls-{}-{form}", backend.name());
        put(
            &service,
            &format!("/_etcd/registry/{token}/_config/size"),
            "1",
        )
        .await;
        let mut flags = vec![
            format!("--discovery-endpoints={endpoint}"),
            format!("--discovery-token={token}"),
            format!("--discovery-cert={}", tls.client_cert.display()),
            format!("--discovery-key={}", tls.client_key.display()),
        ];
        if form == "skip" {
            flags.push("--discovery-insecure-skip-tls-verify".into());
        } else {
            flags.push(format!("--discovery-cacert={}", tls.ca_cert.display()));
        }
        let mut m = Proc::spawn(backend, "n1", &flags, &[]);
        m.wait_ready(Duration::from_secs(60)).await;
        let (_, ids) = member_list(&m);
        assert_eq!(
            registry(&service, &token).await[1..],
            [(
                format!("/_etcd/registry/{token}/members/{:x}", ids[0].1),
                format!("n1={}", m.peer_url)
            )]
        );
    }

    let service = start_service(Backend::Etcd36).await;
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        put(
            &service,
            &format!("/_etcd/registry/auth-{}/_config/size", backend.name()),
            "1",
        )
        .await;
    }
    let ctl = |args: &[&str]| service.ctl36(args);
    ctl(&["user", "add", "root", "--new-user-password=pw"]).ok();
    ctl(&["user", "grant-role", "root", "root"]).ok();
    ctl(&["auth", "enable"]).ok();
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        let token = format!("auth-{}", backend.name());
        let mut flags = v3_flags(&service, &token);
        flags.push("--discovery-user=root".into());
        let mut bad = flags.clone();
        bad.push("--discovery-password=wrong".into());
        let mut m = Proc::spawn(backend, "n1", &bad, &[]);
        m.wait_exit(Duration::from_secs(30)).await;
        assert!(
            m.log().contains("failed to join discovery cluster (etcdserver: authentication failed, invalid user ID or password)"),
            "{}: {}",
            backend.name(),
            m.log()
        );
        flags.push("--discovery-password=pw".into());
        let mut m = Proc::spawn(backend, "n1", &flags, &[]);
        m.wait_ready(Duration::from_secs(60)).await;
    }
}

/// `--discovery-proxy`: the discovery URL's host does not resolve, so only requests sent
/// through the proxy (the test server, answering absolute-form requests) reach it; etcd 3.6
/// and ferrokv send the same requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_discovery_through_a_proxy() {
    let server = V2Server::start().await;
    let proxy = server.url.trim_start_matches("http://").to_string();
    let durl = "http://discovery.invalid/prox";
    let peer_port = free_port();
    let mut seen = Vec::new();
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        server.reset();
        server.set("/prox/_config/size", "1");
        let flags = vec![
            format!("--discovery={durl}"),
            format!("--discovery-proxy={proxy}"),
        ];
        let mut m = Proc::spawn_on(backend, "p1", peer_port, &flags, &[]);
        m.wait_ready(Duration::from_secs(60)).await;
        drop(m);
        seen.push(server.requests_under("http://discovery.invalid/prox"));
    }
    assert!(!seen[0].is_empty());
    assert_eq!(seen[1], seen[0], "proxied requests: ferrokv vs etcd 3.6");
}

/// A discovery member that does not answer yet (frozen) is waited for, with etcd's retries,
/// not taken as an error: the members bootstrap once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_unanswering_discovery_member_is_retried() {
    let service = start_service(Backend::Ferrokv).await;
    for backend in [Backend::Etcd36, Backend::Ferrokv] {
        let token = format!("late-{}", backend.name());
        put(
            &service,
            &format!("/_etcd/registry/{token}/_config/size"),
            "3",
        )
        .await;
        let mut flags = v3_flags(&service, &token);
        flags.push("--discovery-request-timeout=1s".into());
        service.freeze(true).expect("SIGSTOP");
        let mut members: Vec<Proc> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| Proc::spawn(backend, n, &flags, &[]))
            .collect();
        tokio::time::sleep(Duration::from_secs(4)).await;
        for m in members.iter_mut() {
            assert!(m.exited().is_none(), "{} gave up:\n{}", m.name, m.log());
            assert!(!m.wal_dir().exists(), "{} bootstrapped alone", m.name);
        }
        service.freeze(false).expect("SIGCONT");
        check_one_cluster(&mut members).await;
        assert!(
            members[0]
                .log()
                .contains("retry connecting to discovery service"),
            "{}",
            members[0].log()
        );
    }
}

// ---------------------------------------------------------------------------------------
// DNS SRV discovery: the members run in a network namespace of the test's own whose
// resolv.conf names the test's DNS server (tests/src/dns.rs). Needs root, as faults.rs.

const DNS_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 53);

fn member_ip(i: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 10 + i)
}

/// Member `i` of an SRV cluster: listens on 127.0.0.(10+i), advertises `m<i>.fkv.test`.
fn srv_urls(i: u8) -> Urls {
    let ip = member_ip(i);
    Urls {
        client: format!("http://{ip}:2379"),
        listen_peer: format!("http://{ip}:2380"),
        advertise_peer: format!("http://m{i}.fkv.test:2380"),
    }
}

fn srv_net(zone: Zone) -> (IsolatedNetns, DnsServer) {
    let ns = IsolatedNetns::new(DNS_IP).unwrap_or_else(|e| panic!("{e}"));
    let dns = DnsServer::start(&ns, DNS_IP, zone).unwrap_or_else(|e| panic!("{e}"));
    (ns, dns)
}

/// The `error` of the first log line with message `msg`, from etcd's zap JSON or ferrokv's
/// tracing JSON.
fn logged_error(log: &str, msg: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            if v["msg"] == msg {
                v["error"].as_str().map(str::to_string)
            } else if v["fields"]["message"] == msg {
                v["fields"]["error"].as_str().map(str::to_string)
            } else {
                None
            }
        })
}

/// 3 members of `backend` bootstrapped from `_etcd-server-prod._tcp.fkv.test` (one of them
/// configured through `ETCD_DISCOVERY_SRV`/`ETCD_DISCOVERY_SRV_NAME`); a decoy record under
/// the plain `_etcd-server` name must not be used. Returns the member list and cluster id.
async fn srv_bootstrap(backend: Backend) -> (u64, Vec<(String, u64, Vec<String>)>) {
    let mut zone = Zone::default()
        .srv("_etcd-server._tcp.fkv.test", 2380, "decoy.fkv.test.")
        .a("decoy.fkv.test", member_ip(9));
    for i in 1..=3u8 {
        zone = zone
            .srv(
                "_etcd-server-prod._tcp.fkv.test",
                2380,
                &format!("m{i}.fkv.test."),
            )
            .a(&format!("m{i}.fkv.test"), member_ip(i));
    }
    let (ns, dns) = srv_net(zone);
    let flags = vec![
        "--discovery-srv=fkv.test".to_string(),
        "--discovery-srv-name=prod".to_string(),
    ];
    let env = [
        ("ETCD_DISCOVERY_SRV", "fkv.test"),
        ("ETCD_DISCOVERY_SRV_NAME", "prod"),
    ];
    let mut members = vec![
        Proc::launch(backend, "n1", srv_urls(1), &flags, &[], Some(&ns)),
        Proc::launch(backend, "n2", srv_urls(2), &flags, &[], Some(&ns)),
        Proc::launch(backend, "n3", srv_urls(3), &[], &env, Some(&ns)),
    ];
    check_one_cluster(&mut members).await;
    let list = member_list(&members[0]);
    assert_eq!(list.1.len(), 3, "{list:?}");
    let asked = dns.asked();
    for name in [
        "_etcd-server-ssl-prod._tcp.fkv.test",
        "_etcd-server-prod._tcp.fkv.test",
    ] {
        assert!(
            asked.iter().any(|(n, t)| n == name && *t == 33),
            "{}: never asked for {name}: {asked:?}",
            backend.name()
        );
    }
    assert!(
        !asked.iter().any(|(n, _)| n == "_etcd-server._tcp.fkv.test"),
        "{}: looked up the service without its name: {asked:?}",
        backend.name()
    );
    // An initialized member restarts from its WAL without an SRV lookup (its peers' host
    // names still resolve: the DNS server stays).
    let before = member_list(&members[1]);
    let srv_queries = |d: &DnsServer| d.asked().iter().filter(|(_, t)| *t == 33).count();
    let queried = srv_queries(&dns);
    members[1].restart();
    members[1].wait_ready(Duration::from_secs(60)).await;
    assert_eq!(member_list(&members[1]), before);
    assert_eq!(
        srv_queries(&dns),
        queried,
        "{}: SRV lookups on a restart",
        backend.name()
    );
    drop(members);
    list
}

/// etcd 3.6 and ferrokv each form a 3-member cluster from the same SRV records, with the
/// same member ids and cluster id (they derive from the peer URLs and the cluster token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_discovery_bootstraps_three_members_as_etcd() {
    let etcd = srv_bootstrap(Backend::Etcd36).await;
    let ferrokv = srv_bootstrap(Backend::Ferrokv).await;
    assert_eq!(ferrokv, etcd, "(cluster id, members): ferrokv vs etcd 3.6");
}

/// The failures, each with etcd 3.6's exact error: a member whose advertised peer URL is
/// not among the SRV targets, and a domain without any SRV records (both lookups fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_discovery_errors_equal_etcds() {
    let zone = Zone::default()
        .srv("_etcd-server._tcp.fkv.test", 2380, "m1.fkv.test.")
        .srv("_etcd-server._tcp.fkv.test", 2380, "m2.fkv.test.")
        .a("m1.fkv.test", member_ip(1))
        .a("m2.fkv.test", member_ip(2))
        .a("m9.fkv.test", member_ip(9));
    let (ns, _dns) = srv_net(zone);
    let cases: [(&str, &[&str]); 2] = [
        ("not listed", &["--discovery-srv=fkv.test"]),
        ("no records", &["--discovery-srv=empty.test"]),
    ];
    for (case, flags) in cases {
        let mut errors = Vec::new();
        for backend in [Backend::Etcd36, Backend::Ferrokv] {
            let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
            let mut m = Proc::launch(backend, "n9", srv_urls(9), &flags, &[], Some(&ns));
            let status = m.wait_exit(Duration::from_secs(30)).await;
            assert!(!status.success(), "{case}: {}", m.log());
            assert!(!m.wal_dir().exists(), "{case}: bootstrapped anyway");
            let e = logged_error(&m.log(), "discovery failed").unwrap_or_else(|| {
                panic!(
                    "{case}, {}: no \"discovery failed\": {}",
                    backend.name(),
                    m.log()
                )
            });
            errors.push(e);
        }
        eprintln!("{case}: {:?}", errors[0]);
        assert_eq!(errors[1], errors[0], "{case}: ferrokv vs etcd 3.6");
    }
}
