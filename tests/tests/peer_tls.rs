//! Peer TLS with `--peer-client-cert-auth`: a member whose certificate its peers refuse
//! (signed by another CA) must say so at warning level, as etcd does, and the members that
//! refuse it warn of the rejected connections. etcd 3.6 and ferrokv.

use std::time::{Duration, Instant};

use ferrokv_tests::{Backend, Cluster, MemberOpts, PeerTls, TlsFiles};

/// Whether `log` has a warning-level line containing one of `needles`.
fn warns(b: Backend, log: &str, needles: &[&str]) -> bool {
    log.lines().any(|l| {
        let warn = match b {
            Backend::Ferrokv => l.contains("WARN"),
            _ => l.contains(r#""level":"warn""#),
        };
        warn && needles.iter().any(|n| l.contains(n))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_peer_certificate_is_a_warning() {
    for b in [Backend::Etcd36, Backend::Ferrokv] {
        let pki = tempfile::tempdir().expect("tempdir");
        let tls = TlsFiles::generate(pki.path()).expect("certificates");
        let good = PeerTls {
            cert: tls.server_cert.clone(),
            key: tls.server_key.clone(),
            ca: tls.ca_cert.clone(),
            client_cert_auth: true,
        };
        let opts = MemberOpts {
            peer_tls: Some(good.clone()),
            ..MemberOpts::default()
        };
        let mut c = Cluster::empty(b, opts);
        let names: Vec<String> = (0..3).map(|_| c.reserve().expect("reserve")).collect();
        // m3 presents a certificate from a CA the others do not trust.
        c.get_mut("m3").expect("m3").opts.peer_tls = Some(PeerTls {
            cert: tls.rogue_cert.clone(),
            key: tls.rogue_key.clone(),
            ..good
        });
        c.start_members(&names, &names, "new").expect("start");
        for n in ["m1", "m2"] {
            c.get_mut(n)
                .expect("member")
                .wait_ready()
                .await
                .unwrap_or_else(|e| panic!("{} {n}: {e}", b.name()));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let rogue = c.get("m3").expect("m3").log();
            let refuser = c.get("m1").expect("m1").log();
            // etcd logs the TLS failure ("bad certificate"); ferrokv the failed peer stream
            // with the TLS alert in its error.
            let rogue_warns = warns(
                b,
                &rogue,
                &[
                    "certificate",
                    "peer stream failed",
                    "cannot connect to peer",
                ],
            );
            let refuser_warns = warns(b, &refuser, &["rejected connection"]);
            if rogue_warns && refuser_warns {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: refused member warns: {rogue_warns}, refusing member warns: {refuser_warns}\n--- m3 ---\n{rogue}",
                b.name()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
