//! Certificates renewed on disk take effect without a restart (as etcd reloads them per
//! handshake): a real ferrokv cluster with client and peer TLS (`--peer-client-cert-auth`)
//! gets its certificate files swapped for ones with a new serial, from a new CA, and a fresh
//! TLS connection to the client and the peer port sees the new serial; a half-written file
//! keeps the previous certificate with a warning; once the old CA leaves the trust bundle a
//! restarted member rejoins, which needs every member's peer client and peer server to use the
//! new certificate and bundle.

use std::path::Path;
use std::time::{Duration, Instant};

use ferrokv_tests::tls::{pem_serial, served_serial};
use ferrokv_tests::{Backend, Cluster, MemberOpts, PeerTls, TlsFiles};

/// Writes `data` to `path` as the kubelet's atomic writer would: a new file, then a rename.
fn replace(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, data).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

fn addr(url: &str) -> String {
    url.trim_start_matches("https://").to_string()
}

/// Waits (the member looks at its files once a second) until a fresh connection to `addr`
/// serves `serial`.
async fn wait_serial(addr: &str, ca: &[u8], client: (&[u8], &[u8]), serial: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = served_serial(addr, "127.0.0.1", ca, Some(client)).await;
        if got.as_deref().ok() == Some(serial) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still serves {got:?}, want {serial}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = TlsFiles::generate(&dir.path().join("old").tap_mkdir()).expect("old PKI");
    let new = TlsFiles::generate(&dir.path().join("new").tap_mkdir()).expect("new PKI");
    // The files the members read; the test swaps their contents.
    let live_dir = dir.path().join("live").tap_mkdir();
    let live = TlsFiles {
        ca_cert: live_dir.join("ca.pem"),
        server_cert: live_dir.join("server.pem"),
        server_key: live_dir.join("server-key.pem"),
        client_cert: live_dir.join("client.pem"),
        client_key: live_dir.join("client-key.pem"),
        ..old.clone()
    };
    for (from, to) in [
        (&old.ca_cert, &live.ca_cert),
        (&old.server_cert, &live.server_cert),
        (&old.server_key, &live.server_key),
        (&old.client_cert, &live.client_cert),
        (&old.client_key, &live.client_key),
    ] {
        std::fs::copy(from, to).expect("copy");
    }
    let opts = MemberOpts {
        tls: Some(live.clone()),
        client_cert_auth: true,
        peer_tls: Some(PeerTls {
            cert: live.server_cert.clone(),
            key: live.server_key.clone(),
            ca: live.ca_cert.clone(),
            client_cert_auth: true,
        }),
        ..MemberOpts::default()
    };
    let mut c = Cluster::start(Backend::Ferrokv, 3, opts)
        .await
        .expect("3 members with client and peer TLS");
    let pids: Vec<Option<u32>> = c.members().map(|m| m.pid()).collect();
    let m1 = c.get("m1").expect("m1");
    let (client_addr, peer_addr) = (addr(&m1.client_url), addr(&m1.peer_url));
    let old_serial = pem_serial(&read(&old.server_cert)).expect("old serial");
    let new_serial = pem_serial(&read(&new.server_cert)).expect("new serial");
    assert_ne!(old_serial, new_serial);
    let (old_ca, old_cc, old_ck) = (
        read(&old.ca_cert),
        read(&old.client_cert),
        read(&old.client_key),
    );
    let (new_ca, new_cc, new_ck) = (
        read(&new.ca_cert),
        read(&new.client_cert),
        read(&new.client_key),
    );
    for a in [&client_addr, &peer_addr] {
        let s = served_serial(a, "127.0.0.1", &old_ca, Some((&old_cc, &old_ck)))
            .await
            .expect("TLS to the member");
        assert_eq!(s, old_serial, "{a}");
    }

    // Step 1 of a CA rotation: the bundle trusts both CAs, the leaves come from the new one.
    let both = [old_ca.clone(), new_ca.clone()].concat();
    replace(&live.ca_cert, &both);
    replace(&live.client_cert, &new_cc);
    replace(&live.client_key, &new_ck);
    replace(&live.server_cert, &read(&new.server_cert));
    replace(&live.server_key, &read(&new.server_key));
    for a in [&client_addr, &peer_addr] {
        wait_serial(a, &new_ca, (&new_cc, &new_ck), &new_serial).await;
    }
    // A client of the old CA is still let in while the bundle has it.
    let s = served_serial(&client_addr, "127.0.0.1", &both, Some((&old_cc, &old_ck)))
        .await
        .expect("old client certificate during the rotation");
    assert_eq!(s, new_serial);

    // A half-written certificate keeps the one in use, with a warning.
    std::fs::write(&live.server_cert, b"-----BEGIN CERTIFICATE-----\nMIIB").expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = served_serial(&client_addr, "127.0.0.1", &new_ca, Some((&new_cc, &new_ck)))
        .await
        .expect("TLS after a bad file");
    assert_eq!(
        s, new_serial,
        "a bad file must keep the previous certificate"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c
        .get("m1")
        .expect("m1")
        .log()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("keeping the previous certificate"))
    {
        assert!(Instant::now() < deadline, "no warning about the bad file");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    replace(&live.server_cert, &read(&new.server_cert));

    // Step 2: only the new CA. A restarted member must be let in by the others' peer servers
    // and dialled by their peer clients with the new certificates: the old ones are refused.
    replace(&live.ca_cert, &new_ca);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.restart("m3")
        .await
        .expect("m3 rejoins with the new CA only");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = c
            .get("m3")
            .expect("m3")
            .ctl(&["put", "after-rotation", "yes"]);
        if out.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a write through the restarted m3 fails: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let health = c
        .get("m1")
        .expect("m1")
        .ctl(&["endpoint", "health", "--cluster", "-w", "json"]);
    assert!(health.success(), "endpoint health: {}", health.stderr);
    let h = health.json();
    assert_eq!(h.as_array().map(Vec::len), Some(3), "{h}");
    assert!(
        h.as_array()
            .into_iter()
            .flatten()
            .all(|e| e["health"] == true),
        "{h}"
    );
    // m1 and m2 never restarted.
    let now: Vec<Option<u32>> = c.members().map(|m| m.pid()).collect();
    assert_eq!(now[..2], pids[..2]);
}

trait Mkdir {
    fn tap_mkdir(self) -> Self;
}

impl Mkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}
