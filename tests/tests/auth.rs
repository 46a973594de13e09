//! Auth against etcd 3.6.16 as the control: the etcdctl 3.6 auth workflow run on both, with
//! every command's output and error compared; the `etcd-client` crate's auth; simple token
//! expiry; and, on ferrokv, auth state surviving a restart and reaching a member that joined
//! later through a raft snapshot.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use ferrokv_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, AuthenticateRequest, RangeRequest,
};
use ferrokv_tests::etcdctl::{run_with, Ctl};
use ferrokv_tests::{Backend, Cluster, Member, MemberOpts};

async fn start(b: Backend, extra: &[&str]) -> Member {
    let opts = MemberOpts {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..MemberOpts::default()
    };
    Member::start(b, opts)
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()))
}

/// One etcdctl 3.6 command as the user sees it: exit status, stdout, and the `Error:` line
/// (the client's own log lines on stderr differ between runs and are left out).
fn ctl(m: &Member, args: &[&str], stdin: Option<&str>) -> String {
    let mut all = m.ctl_flags();
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run_with(Ctl::V36, &all, stdin);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error"))
        .collect();
    let text = format!(
        "$ etcdctl {}\n[{}]\n{}{}",
        args.join(" "),
        if out.success() { "ok" } else { "failed" },
        out.stdout,
        errors.join("\n")
    );
    // Timings ("... took 2.69ms") differ by nature.
    let text: String = text
        .lines()
        .map(|l| l.split(". took ").next().unwrap_or(l).to_string() + "\n")
        .collect();
    text.replace(&m.client_url, "ENDPOINT")
        .replace(&m.scratch_dir().to_string_lossy().into_owned(), "SCRATCH")
}

/// Only whether the command worked and its error: for output that differs by nature (ids,
/// sizes, timings).
fn ctl_outcome(m: &Member, args: &[&str]) -> String {
    ctl(m, args, None)
        .lines()
        .enumerate()
        .filter(|(i, l)| *i < 2 || l.starts_with("Error"))
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// The workflow: management commands and their errors, enabling auth, allowed and denied
/// operations as root and as a user with key and prefix permissions, and disabling again.
fn workflow(m: &Member) -> Vec<String> {
    let c = |args: &[&str]| ctl(m, args, None);
    let o = |args: &[&str]| ctl_outcome(m, args);
    let snap = m.scratch_dir().join("auth.snap");
    let snap = snap.to_string_lossy().into_owned();
    vec![
        c(&["auth", "status"]),
        c(&["user", "add", "root:rootpw"]),
        c(&["user", "add", "root:other"]),
        c(&["user", "add", "alice:alicepw"]),
        c(&["user", "add", "nopw", "--no-password"]),
        c(&["user", "list"]),
        c(&["role", "add", "reader"]),
        c(&["role", "add", "reader"]),
        c(&["role", "add", "writer"]),
        c(&["role", "add", "root"]),
        c(&["role", "grant-permission", "reader", "read", "foo"]),
        c(&["role", "grant-permission", "reader", "read", "foo"]),
        c(&[
            "role",
            "grant-permission",
            "--prefix",
            "reader",
            "readwrite",
            "pre/",
        ]),
        c(&[
            "role",
            "grant-permission",
            "--from-key",
            "reader",
            "read",
            "zz",
        ]),
        c(&["role", "grant-permission", "writer", "write", "w1", "w5"]),
        c(&["role", "grant-permission", "writer", "write", "w5", "w1"]),
        c(&["role", "grant-permission", "nosuch", "read", "foo"]),
        c(&["role", "get", "reader"]),
        c(&["role", "get", "writer"]),
        c(&["role", "get", "root"]),
        c(&["role", "get", "nosuch"]),
        c(&["role", "list"]),
        c(&["role", "grant-permission", "reader", "read", "tmp"]),
        c(&["role", "revoke-permission", "reader", "tmp"]),
        c(&["role", "revoke-permission", "reader", "tmp"]),
        c(&["role", "revoke-permission", "nosuch", "tmp"]),
        c(&["user", "grant-role", "alice", "reader"]),
        c(&["user", "grant-role", "alice", "reader"]),
        c(&["user", "grant-role", "alice", "nosuch"]),
        c(&["user", "grant-role", "bob", "reader"]),
        c(&["user", "revoke-role", "alice", "writer"]),
        c(&["user", "revoke-role", "bob", "writer"]),
        c(&["user", "grant-role", "alice", "writer"]),
        c(&["user", "get", "alice"]),
        c(&["user", "get", "bob"]),
        c(&["auth", "status"]),
        c(&["auth", "enable"]),
        c(&["user", "grant-role", "root", "root"]),
        c(&["auth", "enable"]),
        c(&["auth", "enable"]),
        // Without credentials.
        c(&["put", "foo", "bar"]),
        c(&["get", "foo"]),
        c(&["user", "list"]),
        c(&["auth", "status"]),
        // Wrong passwords and unknown users.
        c(&["--user=alice:wrong", "get", "foo"]),
        c(&["--user=bob:pw", "get", "foo"]),
        c(&["--user=nopw:x", "get", "foo"]),
        // Root may do anything.
        c(&[ROOT, "auth", "status"]),
        c(&[ROOT, "put", "foo", "bar"]),
        c(&[ROOT, "put", "secret", "s"]),
        c(&[ROOT, "put", "zzz", "z"]),
        c(&[ROOT, "get", "", "--prefix", "--keys-only"]),
        c(&[ROOT, "user", "list"]),
        // alice: read foo, read/write pre/*, read from zz, write [w1, w5).
        c(&[ALICE, "get", "foo"]),
        c(&[ALICE, "put", "foo", "x"]),
        c(&[ALICE, "del", "foo"]),
        c(&[ALICE, "get", "secret"]),
        c(&[ALICE, "put", "pre/a", "1"]),
        c(&[ALICE, "get", "pre/", "--prefix"]),
        c(&[ALICE, "del", "pre/", "--prefix"]),
        c(&[ALICE, "get", "", "--prefix"]),
        c(&[ALICE, "put", "w3", "v"]),
        c(&[ALICE, "put", "w5", "v"]),
        c(&[ALICE, "get", "w3"]),
        c(&[ALICE, "put", "w3", "v", "--prev-kv"]),
        c(&[ALICE, "get", "zzz"]),
        c(&[ALICE, "get", "zz", "--from-key", "--keys-only"]),
        c(&[ALICE, "user", "list"]),
        c(&[ALICE, "role", "list"]),
        c(&[ALICE, "user", "get", "alice"]),
        c(&[ALICE, "user", "get", "root"]),
        c(&[ALICE, "role", "get", "reader"]),
        c(&[ALICE, "role", "get", "root"]),
        c(&[ALICE, "user", "add", "eve:pw"]),
        c(&[ALICE, "auth", "disable"]),
        c(&[ALICE, "snapshot", "save", &snap]),
        c(&[ALICE, "member", "list", "-w", "simple", "--hex"])
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join("\n"),
        // Txn: every compare and op of both branches is checked.
        ctl(
            m,
            &[ALICE, "txn"],
            Some("value(\"secret\") = \"s\"\n\nput pre/t 1\n\n\n"),
        ),
        ctl(
            m,
            &[ALICE, "txn"],
            Some("value(\"pre/a\") = \"1\"\n\nput pre/t 1\n\nput secret x\n\n"),
        ),
        ctl(
            m,
            &[ALICE, "txn"],
            Some("value(\"pre/a\") = \"1\"\n\nput pre/t 1\n\nget pre/t\n\n"),
        ),
        // Maintenance and membership as a user without the root role, and as root.
        c(&[ALICE, "compaction", "2"]),
        c(&[ALICE, "defrag"]),
        o(&[ALICE, "endpoint", "hashkv"]),
        o(&[ALICE, "endpoint", "status"]),
        o(&[ALICE, "endpoint", "health"]),
        c(&[ALICE, "alarm", "list"]),
        c(&[
            ALICE,
            "member",
            "add",
            "newbie",
            "--learner",
            "--peer-urls=http://127.0.0.1:1",
        ]),
        o(&[ROOT, "endpoint", "hashkv"]),
        c(&[ROOT, "defrag"]),
        lease_workflow(m).join("\n"),
        // Root-only management rules while auth is on.
        c(&[ROOT, "user", "delete", "root"]),
        c(&[ROOT, "user", "revoke-role", "root", "root"]),
        c(&[ROOT, "role", "delete", "root"]),
        ctl(
            m,
            &[ROOT, "user", "passwd", "alice", "--interactive=false"],
            Some("newpw\n"),
        ),
        c(&[ALICE, "get", "foo"]),
        c(&["--user=alice:newpw", "get", "foo"]),
        c(&[ROOT, "role", "delete", "writer"]),
        c(&[ROOT, "role", "delete", "writer"]),
        c(&[ROOT, "user", "get", "alice"]),
        c(&["--user=alice:newpw", "put", "w3", "v"]),
        c(&[ROOT, "user", "delete", "nopw"]),
        c(&[ROOT, "user", "delete", "nopw"]),
        c(&[ROOT, "user", "list"]),
        c(&[ROOT, "auth", "status"]),
        c(&[ROOT, "auth", "disable"]),
        c(&["auth", "status"]),
        c(&["get", "secret"]),
        c(&["user", "list"]),
        c(&["auth", "disable"]),
    ]
}

/// Leases: revoking needs write permission on the attached keys, listing them read permission.
fn lease_workflow(m: &Member) -> Vec<String> {
    let granted = ctl(m, &[ROOT, "lease", "grant", "600"], None);
    // "lease 694d7a3f4b1c2e05 granted with TTL(600s)"
    let id = granted
        .lines()
        .find(|l| l.ends_with("granted with TTL(600s)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty(), "{granted}");
    let c = |args: &[&str]| ctl(m, args, None).replace(&id, "LEASE");
    let o = |args: &[&str]| ctl_outcome(m, args).replace(&id, "LEASE");
    vec![
        granted.replace(&id, "LEASE"),
        c(&[ROOT, "put", "secret2", "v", &format!("--lease={id}")]),
        o(&[ALICE, "lease", "timetolive", &id]),
        c(&[ALICE, "lease", "timetolive", &id, "--keys"]),
        c(&[ALICE, "lease", "revoke", &id]),
        o(&[ALICE, "lease", "list"]),
        c(&[ROOT, "lease", "revoke", &id]),
        c(&[ROOT, "get", "secret2"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_workflow_matches_etcd36() {
    let etcd = start(Backend::Etcd36, &[]).await;
    let ours = start(Backend::Ferrokv, &[]).await;
    let want = workflow(&etcd);
    let got = workflow(&ours);
    let mut diffs = Vec::new();
    for (w, g) in want.iter().zip(got.iter()) {
        if w != g {
            diffs.push(format!("etcd 3.6:\n{w}\nferrokv:\n{g}\n"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} commands differ:\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
}

/// Creates root (with the root role) and alice (read/write on `a/`), then enables auth.
async fn setup_auth(c: &mut Client) {
    use etcd_client::Permission;
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.user_add("alice", "alicepw", None).await.unwrap();
    c.role_add("a-rw").await.unwrap();
    c.role_grant_permission("a-rw", Permission::read_write("a/").with_prefix())
        .await
        .unwrap();
    c.user_grant_role("alice", "a-rw").await.unwrap();
    c.auth_enable().await.unwrap();
}

async fn connect_as(m: &Member, user: &str, pw: &str) -> Result<Client, etcd_client::Error> {
    Client::connect(
        [m.client_url.as_str()],
        Some(
            ConnectOptions::new()
                .with_user(user, pw)
                .with_connect_timeout(Duration::from_secs(2)),
        ),
    )
    .await
}

async fn etcd_client_auth(b: Backend) {
    let m = start(b, &[]).await;
    let mut c = m.client().await.unwrap();
    setup_auth(&mut c).await;
    // Without credentials every KV request is refused once auth is on.
    let anon = c.get("a/1", None).await.unwrap_err().to_string();
    assert!(anon.contains("etcdserver: user name is empty"), "{anon}");

    let mut alice = connect_as(&m, "alice", "alicepw").await.unwrap();
    alice.put("a/1", "v", None).await.unwrap();
    let got = alice.get("a/1", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    let denied = alice.put("b", "v", None).await.unwrap_err().to_string();
    assert!(denied.contains("etcdserver: permission denied"), "{denied}");
    let denied = alice.user_list().await.unwrap_err().to_string();
    assert!(denied.contains("etcdserver: permission denied"), "{denied}");

    let wrong = connect_as(&m, "alice", "nope")
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        wrong
            .as_deref()
            .unwrap_or_default()
            .contains("authentication failed, invalid user ID or password"),
        "{wrong:?}"
    );

    let mut root = connect_as(&m, "root", "rootpw").await.unwrap();
    let users = root.user_list().await.unwrap();
    assert_eq!(users.users(), ["alice", "root"]);
    root.auth_disable().await.unwrap();
}

/// One test per body against etcd 3.6 (the control) and one against ferrokv.
macro_rules! etcd36_and_ferrokv {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd36() {
                super::$body(ferrokv_tests::Backend::Etcd36).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ferrokv() {
                super::$body(ferrokv_tests::Backend::Ferrokv).await
            }
        }
    )*};
}

etcd36_and_ferrokv!(etcd_client_auth, simple_token_expires);

/// A simple token stops working `--auth-token-ttl` seconds after its last use.
async fn simple_token_expires(b: Backend) {
    let m = start(b, &["--auth-token-ttl=2"]).await;
    let mut c = m.client().await.unwrap();
    setup_auth(&mut c).await;
    let ch = tonic::transport::Endpoint::from_shared(m.client_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let range = |token: &str| {
        let mut req = tonic::Request::new(RangeRequest {
            key: b"a/x".to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("token", token.parse().expect("ascii token"));
        let mut kv = KvClient::new(ch.clone());
        async move { kv.range(req).await }
    };
    range(&token).await.expect("a fresh token works");
    let bad = range("not-a-token").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    assert_eq!(bad.message(), "etcdserver: invalid auth token");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let expired = range(&token).await.unwrap_err();
    assert_eq!(expired.code(), tonic::Code::Unauthenticated);
    assert_eq!(expired.message(), "etcdserver: invalid auth token");
}

/// Auth state lives in the keyspace file: it survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_restart() {
    let mut m = start(Backend::Ferrokv, &[]).await;
    let mut c = m.client().await.unwrap();
    setup_auth(&mut c).await;
    let before = ctl(&m, &[ROOT, "auth", "status"], None);
    m.restart().await.unwrap();
    assert_eq!(ctl(&m, &[ROOT, "auth", "status"], None), before);
    let mut alice = connect_as(&m, "alice", "alicepw").await.unwrap();
    alice.put("a/after", "1", None).await.unwrap();
    assert!(alice.put("b", "1", None).await.is_err());
}

/// A member that joins after the log was compacted gets users and roles through the raft
/// snapshot, and then accepts the same credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_reaches_a_member_joining_by_snapshot() {
    let opts = MemberOpts {
        snapshot_count: Some(20),
        ..MemberOpts::default()
    };
    let mut cluster = Cluster::start(Backend::Ferrokv, 3, opts).await.unwrap();
    let mut c = cluster.client().await.unwrap();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.user_add("alice", "alicepw", None).await.unwrap();
    c.role_add("a-rw").await.unwrap();
    c.role_grant_permission(
        "a-rw",
        etcd_client::Permission::read_write("a/").with_prefix(),
    )
    .await
    .unwrap();
    c.user_grant_role("alice", "a-rw").await.unwrap();
    // Well past the snapshot count, so the auth entries are no longer in anyone's log.
    for i in 0..100 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let joined = cluster.add_member(false).await.unwrap();
    let new = cluster.get(&joined).unwrap();
    let users = ctl(new, &["user", "list"], None);
    assert!(users.ends_with("alice\nroot\n"), "{users}");
    c.auth_enable().await.unwrap();
    let new = cluster.get(&joined).unwrap();
    let mut deadline = 50;
    loop {
        let out = ctl(new, &[ALICE, "put", "a/x", "1"], None);
        if out.contains("[ok]") {
            break;
        }
        deadline -= 1;
        assert!(deadline > 0, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let denied = ctl(new, &[ALICE, "put", "b", "1"], None);
    assert!(denied.contains("etcdserver: permission denied"), "{denied}");
}

/// A watch the caller may not read is refused at creation, as etcd refuses it.
async fn watch_needs_read_permission(b: Backend) {
    use ferrokv_proto::etcdserverpb::{
        watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest,
    };
    let m = start(b, &[]).await;
    let mut c = m.client().await.unwrap();
    setup_auth(&mut c).await;
    let ch = tonic::transport::Endpoint::from_shared(m.client_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let create = |key: &str| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    };
    // The request side stays open, as a client's does.
    let requests = futures::StreamExt::chain(
        futures::stream::iter(vec![create("secret"), create("a/ok")]),
        futures::stream::pending(),
    );
    let mut req = tonic::Request::new(requests);
    req.metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    let mut stream = WatchClient::new(ch).watch(req).await.unwrap().into_inner();
    let denied = stream.message().await.unwrap().unwrap();
    assert_eq!(
        (
            denied.watch_id,
            denied.created,
            denied.canceled,
            denied.cancel_reason.as_str()
        ),
        (
            -1,
            true,
            true,
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        ),
        "{b:?}"
    );
    let allowed = stream.message().await.unwrap().unwrap();
    assert!(allowed.created && !allowed.canceled, "{b:?}: {allowed:?}");
}

etcd36_and_ferrokv!(watch_needs_read_permission);

/// Under `--client-cert-auth` a request without a token is the user its certificate names
/// (the harness's client certificate has CN "root"); a token still wins over the CN.
fn cert_workflow(m: &Member) -> Vec<String> {
    let c = |args: &[&str]| ctl(m, args, None);
    vec![
        c(&["user", "add", "root:rootpw"]),
        c(&["user", "grant-role", "root", "root"]),
        c(&["user", "add", "alice:alicepw"]),
        c(&["auth", "enable"]),
        c(&["user", "list"]),
        c(&["put", "foo", "bar"]),
        c(&["get", "foo"]),
        c(&[ALICE, "get", "foo"]),
        c(&["auth", "disable"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_cn_is_the_user() {
    let pki = tempfile::tempdir().unwrap();
    let tls = ferrokv_tests::TlsFiles::generate(pki.path()).unwrap();
    let opts = MemberOpts {
        tls: Some(tls),
        client_cert_auth: true,
        ..MemberOpts::default()
    };
    let etcd = Member::start(Backend::Etcd36, opts.clone()).await.unwrap();
    let ours = Member::start(Backend::Ferrokv, opts).await.unwrap();
    let want = cert_workflow(&etcd);
    let got = cert_workflow(&ours);
    assert_eq!(got, want);
}

/// `--auth-token=jwt`: with the same ES256 keys, a token etcd 3.6 signs works on ferrokv and
/// one ferrokv signs works on etcd, so the format (claims, signature) is etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_interchange_with_etcd36() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (priv_path, pub_path) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&priv_path, key.serialize_pem()).unwrap();
    std::fs::write(&pub_path, key.public_key_pem()).unwrap();
    let flag = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
        pub_path.display(),
        priv_path.display()
    );
    let etcd = start(Backend::Etcd36, &[&flag]).await;
    let ours = start(Backend::Ferrokv, &[&flag]).await;
    let mut tokens = Vec::new();
    for m in [&etcd, &ours] {
        let mut c = m.client().await.unwrap();
        setup_auth(&mut c).await;
        let ch = tonic::transport::Endpoint::from_shared(m.client_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let token = AuthClient::new(ch.clone())
            .authenticate(AuthenticateRequest {
                name: "alice".into(),
                password: "alicepw".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        tokens.push((ch, token));
    }
    let range = |ch: &tonic::transport::Channel, token: &str, key: &str| {
        let mut req = tonic::Request::new(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("token", token.parse().expect("ascii token"));
        let mut kv = KvClient::new(ch.clone());
        async move { kv.range(req).await }
    };
    let (etcd_ch, etcd_token) = &tokens[0];
    let (our_ch, our_token) = &tokens[1];
    range(our_ch, etcd_token, "a/x")
        .await
        .expect("etcd's token on ferrokv");
    range(etcd_ch, our_token, "a/x")
        .await
        .expect("ferrokv's token on etcd");
    range(our_ch, our_token, "a/x")
        .await
        .expect("ferrokv's own token");
    let denied = range(our_ch, etcd_token, "b").await.unwrap_err();
    assert_eq!(denied.message(), "etcdserver: permission denied");
    let forged = range(our_ch, &format!("{our_token}x"), "a/x")
        .await
        .unwrap_err();
    assert_eq!(forged.message(), "etcdserver: invalid auth token");
}

/// A permission revoked while its user writes: etcd checks every write again when it applies
/// it, as the user and at the auth revision in the entry's header, so a write checked before
/// the revoke but applied after it fails (`etcdserver: revision of auth store is old`) and
/// nothing lands after the revoke in the range the user lost. Raced with many writers, three
/// times; etcd 3.6 is the control.
async fn revoke_races_writers(b: Backend) {
    use etcd_client::Permission;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const WRITERS: usize = 16;
    let m = start(b, &[]).await;
    let mut c = m.client().await.unwrap();
    setup_auth(&mut c).await;
    let mut root = connect_as(&m, "root", "rootpw").await.unwrap();
    let mut old_revision_errors = 0;
    for round in 0..3 {
        if round > 0 {
            root.role_grant_permission("a-rw", Permission::read_write("a/").with_prefix())
                .await
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let mut alice = connect_as(&m, "alice", "alicepw").await.unwrap();
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut i = 0u64;
                // Until told to stop, and a little after the revoke (writes then fail).
                while !stop.load(Ordering::Relaxed) || errors.len() < 3 {
                    match alice.put(format!("a/{round}/{w}/{i}"), "v", None).await {
                        Ok(_) => {}
                        Err(e) => errors.push(e.to_string()),
                    }
                    i += 1;
                    if errors.len() > 20 {
                        break;
                    }
                }
                (i, errors)
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let revoked = root
            .role_revoke_permission(
                "a-rw",
                "a/",
                Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let revoke_rev = revoked.header().unwrap().revision();
        stop.store(true, Ordering::Relaxed);
        let mut writes = 0;
        for w in writers {
            let (n, errors) = w.await.unwrap();
            writes += n;
            for e in &errors {
                assert!(
                    e.contains("etcdserver: permission denied")
                        || e.contains("etcdserver: revision of auth store is old"),
                    "{}: unexpected error {e}",
                    b.name()
                );
                if e.contains("revision of auth store is old") {
                    old_revision_errors += 1;
                }
            }
        }
        let got = root
            .get(
                format!("a/{round}/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        assert!(
            !got.kvs().is_empty(),
            "{}: no write landed before the revoke",
            b.name()
        );
        let late: Vec<(String, i64)> = got
            .kvs()
            .iter()
            .filter(|kv| kv.mod_revision() > revoke_rev)
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        assert!(
            late.is_empty(),
            "{}: round {round}: writes landed after the revoke at revision {revoke_rev}: {late:?}",
            b.name()
        );
        eprintln!(
            "{} round {round}: {writes} puts, {} kept, revoke at revision {revoke_rev}",
            b.name(),
            got.kvs().len()
        );
    }
    eprintln!(
        "{}: {old_revision_errors} writes refused at apply with 'revision of auth store is old'",
        b.name()
    );
}

etcd36_and_ferrokv!(revoke_races_writers);

/// With auth on, an expired lease still takes its keys with it: the member revokes it as root
/// (etcd's `WithRoot`), so the apply-time check of the lease's keys passes.
async fn expired_lease_keys_go_with_auth_on(b: Backend) {
    let m = start(b, &[]).await;
    let mut c = m.client().await.unwrap();
    setup_auth(&mut c).await;
    let mut alice = connect_as(&m, "alice", "alicepw").await.unwrap();
    let lease = alice.lease_grant(3, None).await.unwrap().id();
    alice
        .put(
            "a/leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = alice.get("a/leased", None).await.unwrap().kvs().len();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: the key of an expired lease is still there",
            b.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

etcd36_and_ferrokv!(expired_lease_keys_go_with_auth_on);
