//! Client TLS with `--client-cert-auth`: certificates generated in the test, etcdctl with
//! `--cacert --cert --key` works; without a client certificate, or with one from another CA,
//! it is refused. Both backends.

use ferrokv_tests::{both_backends, etcdctl, Backend, Member, MemberOpts, TlsFiles};

/// Refused connections make etcdctl retry until its command timeout; keep that short.
const FAST: &str = "--command-timeout=2s";

async fn client_cert_auth(b: Backend) {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::generate(pki_dir.path()).expect("generate certificates");
    let opts = MemberOpts {
        tls: Some(tls.clone()),
        client_cert_auth: true,
        ..MemberOpts::default()
    };
    let m = Member::start(b, opts)
        .await
        .unwrap_or_else(|e| panic!("starting {} with TLS: {e}", b.name()));
    assert!(m.client_url.starts_with("https://"));

    // With the CA and a client certificate signed by it: works.
    assert_eq!(m.ctl(&["put", "secure", "yes"]).ok().trim(), "OK");
    assert_eq!(m.ctl(&["get", "secure"]).lines(), ["secure", "yes"]);
    // etcdctl 3.4 dials endpoint status with the https URL as its HTTP/2 :authority.
    let st = m.ctl(&["endpoint", "status", "-w", "json"]).json();
    assert_eq!(st[0]["Endpoint"], m.client_url.as_str(), "{st}");
    assert!(
        st[0]["Status"]["raftIndex"].as_u64().unwrap_or(0) >= 1,
        "{st}"
    );

    let ca = format!("--cacert={}", tls.ca_cert.display());
    // Without a client certificate: refused.
    let out = etcdctl(&m.client_url, &[&ca, FAST, "get", "secure"]);
    assert!(!out.success(), "no client cert accepted: {}", out.stdout);
    // With a client certificate from an unknown CA: refused.
    let out = etcdctl(
        &m.client_url,
        &[
            &ca,
            &format!("--cert={}", tls.rogue_cert.display()),
            &format!("--key={}", tls.rogue_key.display()),
            FAST,
            "get",
            "secure",
        ],
    );
    assert!(!out.success(), "rogue client cert accepted: {}", out.stdout);
    // Plain-text gRPC to the TLS port: refused.
    let plain = m.client_url.replacen("https://", "http://", 1);
    let out = etcdctl(&plain, &[FAST, "get", "secure"]);
    assert!(!out.success(), "plaintext accepted: {}", out.stdout);

    // The Rust client with the identity works too (this is also how readiness was checked).
    let mut c = m.client().await.expect("tls client");
    let r = c.get("secure", None).await.expect("get over TLS");
    assert_eq!(r.kvs()[0].value(), b"yes");
}

both_backends!(client_cert_auth);
