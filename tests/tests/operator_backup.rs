//! Backups by the operator on the real control plane (kube-apiserver, controller-manager, the
//! node agent running member pods as real `ferrokv` processes, the operator as its
//! ServiceAccount): a schedule, retention, `BackupReady`, metrics, an on-demand `EtcdBackup`,
//! and a failed attempt reported with a Warning Event.
//!
//! The store is a `file://` directory the operator process can write (it runs on this host,
//! like a pod with a mounted volume would).

use std::time::{Duration, Instant};

use ferrokv_tests::kube::Testbed;
use serde_json::Value;

async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    check: F,
    context: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    ferrokv_tests::kube::eventually(timeout, what, check, context)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The shipped install plus the EtcdBackup CRD (the testbed applies the EtcdCluster one).
async fn testbed() -> Testbed {
    let bed = Testbed::start().await.unwrap_or_else(|e| panic!("{e}"));
    let root = ferrokv_tests::member::workspace_root();
    let crd = root.join("crds/etcdbackup.yaml").display().to_string();
    let k = bed.cp.kubectl();
    k.run(&["apply", "-f", &crd]).expect("apply etcdbackup CRD");
    k.run(&[
        "wait",
        "--for=condition=Established",
        "crd/etcdbackups.ferrokv.io",
        "--timeout=60s",
    ])
    .expect("CRD established");
    bed
}

fn condition(ec: &Value, type_: &str) -> Option<(String, String, String)> {
    ec["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Manifests of `cluster` (`<namespace>/<name>`) in the store, oldest first.
async fn stored(url: &str, cluster: &str) -> Vec<ferrokv_backup::Manifest> {
    let dest = ferrokv_backup::Destination::open(&ferrokv_backup::StoreConfig::new(url))
        .expect("open store");
    ferrokv_backup::list(&dest, cluster).await.expect("list")
}

/// The operator's `/metrics` page (plain HTTP/1.0, read to the end).
async fn metrics(bed: &Testbed) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&bed.operator.metrics_addr)
        .await
        .expect("connect to the operator's metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: operator\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    out
}

/// A schedule every 15 seconds (six cron fields): backups appear, retention keeps two,
/// `status.lastBackup` and `BackupReady=True` describe the newest, the metrics and Events say
/// so; an `EtcdBackup` takes one at once; and a store the operator cannot use turns
/// `BackupReady` False with a Warning Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_retention_on_demand_and_failures() {
    let mut bed = testbed().await;
    let ns = "default";
    let store = tempfile::tempdir().expect("store dir");
    let url = format!("file://{}", store.path().display());
    bed.cp
        .kubectl()
        .apply(&format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: bk, namespace: {ns}}}
spec:
  replicas: 3
  tls: {{mode: Disabled}}
  backup:
    schedule: \"*/15 * * * * *\"
    destination: {url}
    retention: {{keepLast: 2}}
"
        ))
        .expect("apply cluster");
    bed.wait_available(ns, "bk", 3, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let member = bed.member_pods(ns, "bk").await.expect("pods").remove(0).0;
    for i in 0..20 {
        let (k, v) = (format!("/bk/key{i:02}"), format!("value {i}"));
        bed.etcdctl_dns(ns, "bk", &member, false, &["put", &k, &v])
            .await
            .expect("put");
    }
    let t = Instant::now();

    // Three scheduled backups taken after the writes (three distinct lastBackup times); two
    // kept.
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::<String>::new());
    eventually(
        Duration::from_secs(120),
        "three successful scheduled backups after the writes",
        || async {
            let ec = bed.cluster(ns, "bk")?;
            let last = &ec["status"]["lastBackup"];
            if last["revision"].as_i64()? >= 21 {
                let mut seen = seen.lock().ok()?;
                seen.insert(last["time"].as_str()?.to_string());
                (seen.len() >= 3).then_some(())
            } else {
                None
            }
        },
        || bed.context(ns),
    )
    .await;
    eprintln!("three scheduled backups after {:?}", t.elapsed());
    let kept = stored(&url, "default/bk").await;
    assert_eq!(kept.len(), 2, "keepLast 2 keeps two: {kept:?}");
    let ec = bed.cluster(ns, "bk").expect("cluster");
    let last = &ec["status"]["lastBackup"];
    let newest = kept.last().expect("newest");
    assert!(
        newest.revision >= 21,
        "backup taken after the 20 writes: {newest:?}"
    );
    assert!(
        last["uri"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&newest.object),
        "status.lastBackup {last} names the newest stored backup {newest:?}"
    );
    assert_eq!(last["sha256"], newest.sha256.as_str());
    let (status, reason, message) = condition(&ec, "BackupReady").expect("BackupReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "BackupSucceeded"),
        "{message}"
    );
    // Taken from a follower: the Event names the member it came from.
    let leader = ec["status"]["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let events = bed.events(ns, "bk").await.expect("events");
    let note = events
        .iter()
        .rev()
        .find(|(r, _)| r == "BackupSucceeded")
        .map(|(_, n)| n.clone())
        .expect("BackupSucceeded Event");
    assert!(
        !note.contains(&format!("from {leader} ")),
        "taken from the leader {leader}: {note}"
    );
    // The newest Event tells of the newest backup, not of the first one of its series.
    assert!(
        note.starts_with(&format!("backup of revision {} ", newest.revision)),
        "the newest BackupSucceeded Event does not tell of revision {}: {note}",
        newest.revision
    );
    let m = metrics(&bed).await;
    for name in [
        "ferrokv_operator_backup_last_success_timestamp_seconds{cluster=\"default/bk\"}",
        "ferrokv_operator_backup_bytes{cluster=\"default/bk\"}",
        "ferrokv_operator_backup_schedule_interval_seconds{cluster=\"default/bk\"} 15",
    ] {
        assert!(m.contains(name), "{name} not in metrics:\n{m}");
    }

    // On demand: an EtcdBackup of the cluster, to its own store.
    let adhoc = tempfile::tempdir().expect("adhoc dir");
    let adhoc_url = format!("file://{}", adhoc.path().display());
    bed.cp
        .kubectl()
        .apply(&format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdBackup
metadata: {{name: bk-now, namespace: {ns}}}
spec:
  clusterName: bk
  store: {{destination: {adhoc_url}}}
  compression: none
"
        ))
        .expect("apply EtcdBackup");
    let b = eventually(
        Duration::from_secs(60),
        "EtcdBackup bk-now Succeeded",
        || async {
            let out = bed
                .cp
                .kubectl()
                .run(&["get", "etcdbackup", "bk-now", "-n", ns, "-o", "json"])
                .ok()?;
            let v: Value = serde_json::from_str(&out).ok()?;
            (v["status"]["phase"] == "Succeeded").then_some(v)
        },
        || bed.context(ns),
    )
    .await;
    let one = stored(&adhoc_url, "default/bk").await;
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(b["status"]["backup"]["sha256"], one[0].sha256.as_str());
    assert!(one[0].revision >= 21);

    // A store the operator cannot use: the credentials Secret does not exist.
    bed.cp
        .kubectl()
        .apply(&format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: bad, namespace: {ns}}}
spec:
  replicas: 1
  tls: {{mode: Disabled}}
  backup:
    schedule: \"*/10 * * * * *\"
    destination: s3://nowhere/backups
    credentialsSecret: no-such-secret
"
        ))
        .expect("apply bad");
    let (_, reason, message) = eventually(
        Duration::from_secs(120),
        "BackupReady=False on the cluster with a missing credentials Secret",
        || async {
            let ec = bed.cluster(ns, "bad")?;
            condition(&ec, "BackupReady").filter(|(s, r, _)| s == "False" && r != "NoBackupYet")
        },
        || bed.context(ns),
    )
    .await;
    assert_eq!(reason, "SecretMissing", "{message}");
    assert!(message.contains("no-such-secret"), "{message}");
    let events = bed.events(ns, "bad").await.expect("events");
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "BackupFailed" && n.contains("no-such-secret")),
        "{events:?}"
    );
    let m = metrics(&bed).await;
    assert!(
        m.contains("ferrokv_operator_backup_failures_total{cluster=\"default/bad\"}"),
        "{m}"
    );

    // The operator is down across two fire times of bk's schedule: once back, it reports the
    // missed ones (Warning Event) and takes a backup at once.
    bed.cp
        .kubectl()
        .run(&["delete", "etcdcluster", "bad", "-n", ns])
        .expect("delete bad");
    let before = bed.cluster(ns, "bk").expect("bk")["status"]["lastBackup"]["time"].clone();
    bed.operator.kill();
    tokio::time::sleep(Duration::from_secs(35)).await;
    bed.operator
        .restart()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let note = eventually(
        Duration::from_secs(60),
        "a BackupScheduleMissed Event after the operator was down",
        || async {
            let events = bed.events(ns, "bk").await.ok()?;
            events
                .into_iter()
                .find(|(r, _)| r == "BackupScheduleMissed")
                .map(|(_, n)| n)
        },
        || bed.context(ns),
    )
    .await;
    assert!(note.contains("missed"), "{note}");
    eventually(
        Duration::from_secs(60),
        "a new backup after the restart",
        || async {
            let ec = bed.cluster(ns, "bk")?;
            let ok = condition(&ec, "BackupReady").is_some_and(|(s, _, _)| s == "True");
            (ok && ec["status"]["lastBackup"]["time"] != before).then_some(())
        },
        || bed.context(ns),
    )
    .await;
}

/// Restore drills (`spec.backup.verify`): the newest backup restored into a scratch ferrokv
/// member by the operator matches its manifest and what was counted when it was taken
/// (`BackupVerified=True`, `status.lastVerifiedBackup`); once its object is corrupted in the
/// store, the next drill fails with `BackupVerified=False` and a Warning Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_drills_pass_and_a_corrupted_backup_fails_them() {
    let bed = testbed().await;
    let ns = "default";
    let store = tempfile::tempdir().expect("store dir");
    let url = format!("file://{}", store.path().display());
    let spec = |schedule: &str| {
        format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: dr, namespace: {ns}}}
spec:
  replicas: 1
  tls: {{mode: Disabled}}
  backup:
    schedule: \"{schedule}\"
    destination: {url}
    verify: {{schedule: \"*/10 * * * * *\"}}
"
        )
    };
    bed.cp
        .kubectl()
        .apply(&spec("*/10 * * * * *"))
        .expect("apply cluster");
    bed.wait_available(ns, "dr", 1, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..10 {
        let (k, v) = (format!("/dr/key{i}"), format!("value {i}"));
        bed.etcdctl_dns(ns, "dr", "dr-0", false, &["put", &k, &v])
            .await
            .expect("put");
    }
    let verified = eventually(
        Duration::from_secs(90),
        "a passed drill of a backup holding the 10 keys",
        || async {
            let ec = bed.cluster(ns, "dr")?;
            let v = ec["status"]["lastVerifiedBackup"].clone();
            let ok = condition(&ec, "BackupVerified").is_some_and(|(s, _, _)| s == "True");
            (ok && v["keys"].as_i64()? == 10).then_some(ec)
        },
        || bed.context(ns),
    )
    .await;
    let v = &verified["status"]["lastVerifiedBackup"];
    assert!(v["revision"].as_i64().unwrap_or(0) >= 11, "{v}");
    // The drill compared with what the operator counted on the member at backup time.
    let last = &verified["status"]["lastBackup"];
    if last["uri"] == v["uri"] {
        assert_eq!(last["keys"], v["keys"], "{last} {v}");
        assert_eq!(last["hashKv"], v["hashKv"], "{last} {v}");
    }
    let events = bed.events(ns, "dr").await.expect("events");
    assert!(
        events.iter().any(|(r, _)| r == "BackupVerified"),
        "{events:?}"
    );

    // No more backups; corrupt the newest one in the store.
    bed.cp
        .kubectl()
        .apply(&spec("0 0 1 1 *"))
        .expect("yearly schedule");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let newest = stored(&url, "default/dr").await.pop().expect("a backup");
    let path = store.path().join(&newest.object);
    let mut bytes = std::fs::read(&path).expect("backup object");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).expect("corrupt");
    let (_, reason, message) = eventually(
        Duration::from_secs(60),
        "BackupVerified=False after the corruption",
        || async {
            let ec = bed.cluster(ns, "dr")?;
            condition(&ec, "BackupVerified").filter(|(s, _, _)| s == "False")
        },
        || bed.context(ns),
    )
    .await;
    assert_eq!(reason, "DrillFailed", "{message}");
    assert!(message.contains(&newest.object), "{message}");
    let events = bed.events(ns, "dr").await.expect("events");
    assert!(
        events.iter().any(|(r, _)| r == "BackupVerificationFailed"),
        "{events:?}"
    );
    eprintln!("drill failure: {message}");
}

/// Against a real S3-compatible server (moto with IAM authentication, path-style addressing):
/// scheduled backups land in the bucket; an `EtcdBackup` with a wrong secret key and one to a
/// missing bucket fail with the store's message, a Warning Event and `BackupReady=False`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_backups_wrong_credentials_and_missing_bucket() {
    use ferrokv_tests::objstore::ObjectServer;
    let s3 = ObjectServer::s3(&["backups"], None)
        .await
        .unwrap_or_else(|e| panic!("S3 server (moto, installed by make deps): {e}"));
    let bed = testbed().await;
    let ns = "default";
    let endpoint = &s3.endpoint;
    bed.cp
        .kubectl()
        .apply(&format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: s3-good, namespace: {ns}}}
stringData: {{AWS_ACCESS_KEY_ID: {ak}, AWS_SECRET_ACCESS_KEY: {sk}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: s3-wrong, namespace: {ns}}}
stringData: {{AWS_ACCESS_KEY_ID: {ak}, AWS_SECRET_ACCESS_KEY: wrong}}
---
apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: s3c, namespace: {ns}}}
spec:
  replicas: 1
  tls: {{mode: Disabled}}
  backup:
    schedule: \"*/10 * * * * *\"
    destination: s3://backups/prod
    endpoint: {endpoint}
    pathStyle: true
    region: us-east-1
    credentialsSecret: s3-good
    retention: {{keepLast: 1}}
",
            ak = s3.access_key,
            sk = s3.secret_key,
        ))
        .expect("apply");
    bed.wait_available(ns, "s3c", 1, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    bed.etcdctl_dns(ns, "s3c", "s3c-0", false, &["put", "/s3/k", "v"])
        .await
        .expect("put");
    let ec = eventually(
        Duration::from_secs(60),
        "a backup in the S3 bucket after the write",
        || async {
            let ec = bed.cluster(ns, "s3c")?;
            let ok = condition(&ec, "BackupReady").is_some_and(|(s, _, _)| s == "True");
            (ok && ec["status"]["lastBackup"]["revision"].as_i64()? >= 2).then_some(ec)
        },
        || bed.context(ns),
    )
    .await;
    let uri = ec["status"]["lastBackup"]["uri"]
        .as_str()
        .unwrap_or_default();
    assert!(uri.starts_with("s3://backups/prod/default/s3c/"), "{uri}");
    let mut cfg = ferrokv_backup::StoreConfig::new("s3://backups/prod");
    cfg.endpoint = Some(endpoint.clone());
    cfg.path_style = true;
    cfg.region = Some("us-east-1".into());
    cfg.credentials = [
        ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), s3.secret_key.clone()),
    ]
    .into();
    let dest = ferrokv_backup::Destination::open(&cfg).expect("open");
    let listed = ferrokv_backup::list(&dest, "default/s3c")
        .await
        .expect("list");
    assert!(!listed.is_empty() && listed.len() <= 2, "{listed:?}");

    // Wrong credentials and a missing bucket, on demand.
    for (name, bucket, secret, want) in [
        (
            "wrong-key",
            "backups",
            "s3-wrong",
            "refused the credentials",
        ),
        ("no-bucket", "no-such-bucket", "s3-good", "does not exist"),
    ] {
        bed.cp
            .kubectl()
            .apply(&format!(
                "apiVersion: ferrokv.io/v1alpha1
kind: EtcdBackup
metadata: {{name: {name}, namespace: {ns}}}
spec:
  clusterName: s3c
  store: {{destination: s3://{bucket}/x, endpoint: {endpoint}, pathStyle: true, region: us-east-1, credentialsSecret: {secret}}}
"
            ))
            .expect("apply EtcdBackup");
        let b = eventually(
            Duration::from_secs(60),
            &format!("EtcdBackup {name} Failed"),
            || async {
                let out = bed
                    .cp
                    .kubectl()
                    .run(&["get", "etcdbackup", name, "-n", ns, "-o", "json"])
                    .ok()?;
                let v: Value = serde_json::from_str(&out).ok()?;
                (v["status"]["phase"] == "Failed").then_some(v)
            },
            || bed.context(ns),
        )
        .await;
        let message = b["status"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(want), "{name}: {message}");
        let events = bed.events(ns, "s3c").await.expect("events");
        assert!(
            events
                .iter()
                .any(|(r, n)| r == "BackupFailed" && n.contains(want)),
            "{name}: {events:?}"
        );
    }
    // An on-demand failure turns BackupReady False only until the next scheduled backup (the
    // missing-Secret case above holds it False); the schedule goes on succeeding.
    eventually(
        Duration::from_secs(30),
        "BackupReady back to True after the next scheduled backup",
        || async {
            let ec = bed.cluster(ns, "s3c")?;
            condition(&ec, "BackupReady").filter(|(s, _, _)| s == "True")
        },
        || bed.context(ns),
    )
    .await;
}

/// A new 3-member cluster created with `spec.restore` from one backup of another cluster
/// holds exactly that backup's data: its keys, nothing written after it, the same revision,
/// and a new cluster id. The seed restores in an init container; the others join as learners.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_restored_from_a_backup_holds_exactly_its_data() {
    let bed = testbed().await;
    let ns = "default";
    let store = tempfile::tempdir().expect("store dir");
    let url = format!("file://{}", store.path().display());
    let src = |schedule: &str| {
        format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: src, namespace: {ns}}}
spec:
  replicas: 1
  tls: {{mode: Disabled}}
  backup: {{schedule: \"{schedule}\", destination: {url}}}
"
        )
    };
    bed.cp
        .kubectl()
        .apply(&src("*/10 * * * * *"))
        .expect("apply src");
    bed.wait_available(ns, "src", 1, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<String> = (0..15).map(|i| format!("/src/key{i:02}")).collect();
    for k in &keys {
        bed.etcdctl_dns(ns, "src", "src-0", false, &["put", k, &format!("v of {k}")])
            .await
            .expect("put");
    }
    eventually(
        Duration::from_secs(60),
        "a backup of src holding the 15 writes",
        || async {
            let ec = bed.cluster(ns, "src")?;
            (ec["status"]["lastBackup"]["revision"].as_i64()? >= 16).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    // No more backups; a write the restored cluster must not have.
    bed.cp.kubectl().apply(&src("0 0 1 1 *")).expect("yearly");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let src_ec = bed.cluster(ns, "src").expect("src");
    let backup = src_ec["status"]["lastBackup"].clone();
    let revision = backup["revision"].as_i64().expect("revision");
    let uri = backup["uri"].as_str().expect("uri").to_string();
    bed.etcdctl_dns(
        ns,
        "src",
        "src-0",
        false,
        &["put", "/src/late", "after the backup"],
    )
    .await
    .expect("late put");

    bed.cp
        .kubectl()
        .apply(&format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: dst, namespace: {ns}}}
spec:
  replicas: 3
  tls: {{mode: Disabled}}
  restore:
    destination: {url}
    source: {{uri: \"{uri}\"}}
"
        ))
        .expect("apply dst");
    let st = bed
        .wait_available(ns, "dst", 3, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        st["clusterId"], src_ec["status"]["clusterId"],
        "a restore makes a new cluster id"
    );
    for member in ["dst-0", "dst-1", "dst-2"] {
        let out = bed
            .etcdctl_dns(
                ns,
                "dst",
                member,
                false,
                &["get", "/", "--prefix", "-w", "json"],
            )
            .await
            .expect("get");
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            v["header"]["revision"].as_i64(),
            Some(revision),
            "{member}: the backup's revision"
        );
        let got: Vec<(String, String)> = v["kvs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                let d = |f: &str| {
                    use std::io::Read;
                    let b64 = kv[f].as_str().unwrap_or_default();
                    let mut out = Vec::new();
                    let mut dec = base64_decoder(b64.as_bytes());
                    let _ = dec.read_to_end(&mut out);
                    String::from_utf8_lossy(&out).into_owned()
                };
                (d("key"), d("value"))
            })
            .collect();
        let want: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.clone(), format!("v of {k}")))
            .collect();
        assert_eq!(got, want, "{member}: exactly the backup's keys and values");
    }
    // The seed restored once, in its init container; the seed pod has it, the others not.
    let pods = bed.kubectl_text(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/instance=dst",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.initContainers[*].name};{end}",
    ]);
    assert!(pods.contains("dst-0=restore;"), "{pods}");
    assert!(
        pods.contains("dst-1=;") && pods.contains("dst-2=;"),
        "{pods}"
    );
}

/// A minimal base64 (standard alphabet) reader for etcdctl's JSON output.
fn base64_decoder(input: &[u8]) -> std::io::Cursor<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in input {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    std::io::Cursor::new(out)
}

/// Encrypted backups on a TLS (`Auto`) cluster to S3 (moto): the backup succeeds, the stored
/// object is encrypted (the manifest says so and it cannot be read without the key), and a
/// new 3-member TLS cluster restored from it by `source.cluster` + `source.revision` with the
/// same key holds exactly its keys at its revision on every member. A restore with the wrong key fails the seed's init
/// container visibly (`Init:Error`, the decryption failure in its message) and serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_s3_backup_on_tls_restores_with_its_key_and_fails_with_another() {
    use ferrokv_tests::objstore::ObjectServer;
    let s3 = ObjectServer::s3(&["backups"], None)
        .await
        .unwrap_or_else(|e| panic!("S3 server (moto, installed by make deps): {e}"));
    let bed = testbed().await;
    let ns = "default";
    let endpoint = &s3.endpoint;
    let b64 = |bytes: &[u8]| -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    // Two 32-byte raw keys, stored as raw bytes in the Secrets (`data` is base64 of them).
    let good_key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect();
    let wrong_key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(11).wrapping_add(5))
        .collect();
    let store = |prefix: &str| {
        format!(
            "destination: s3://backups/{prefix}
    endpoint: {endpoint}
    pathStyle: true
    region: us-east-1
    credentialsSecret: s3-creds"
        )
    };
    bed.cp
        .kubectl()
        .apply(&format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: s3-creds, namespace: {ns}}}
stringData: {{AWS_ACCESS_KEY_ID: {ak}, AWS_SECRET_ACCESS_KEY: {sk}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: backup-key, namespace: {ns}}}
data: {{key: \"{good}\"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: other-key, namespace: {ns}}}
data: {{key: \"{wrong}\"}}
",
            ak = s3.access_key,
            sk = s3.secret_key,
            good = b64(&good_key),
            wrong = b64(&wrong_key),
        ))
        .expect("apply Secrets");
    let src = |schedule: &str| {
        format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: enc, namespace: {ns}}}
spec:
  replicas: 1
  tls: {{mode: Auto}}
  backup:
    schedule: \"{schedule}\"
    {store}
    encryptionKeySecret: {{name: backup-key, key: key}}
",
            store = store("enc"),
        )
    };
    let t = Instant::now();
    bed.cp
        .kubectl()
        .apply(&src("*/5 * * * * *"))
        .expect("apply enc");
    bed.wait_available(ns, "enc", 1, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<String> = (0..10).map(|i| format!("/enc/key{i}")).collect();
    for k in &keys {
        bed.etcdctl_dns(ns, "enc", "enc-0", true, &["put", k, &format!("v of {k}")])
            .await
            .expect("put over TLS");
    }
    eventually(
        Duration::from_secs(60),
        "BackupReady=True with an encrypted backup holding the 10 writes",
        || async {
            let ec = bed.cluster(ns, "enc")?;
            let ok = condition(&ec, "BackupReady").is_some_and(|(s, _, _)| s == "True");
            (ok && ec["status"]["lastBackup"]["revision"].as_i64()? >= 11).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    eprintln!("encrypted backup after {:?}", t.elapsed());
    // No more backups; a write after them the restored cluster must not have.
    bed.cp.kubectl().apply(&src("0 0 1 1 *")).expect("yearly");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut cfg = ferrokv_backup::StoreConfig::new("s3://backups/enc");
    cfg.endpoint = Some(endpoint.clone());
    cfg.path_style = true;
    cfg.region = Some("us-east-1".into());
    cfg.credentials = [
        ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), s3.secret_key.clone()),
    ]
    .into();
    let dest = ferrokv_backup::Destination::open(&cfg).expect("open");
    let newest = ferrokv_backup::list(&dest, "default/enc")
        .await
        .expect("list")
        .pop()
        .expect("a backup of enc in the bucket");
    assert_eq!(
        newest.encryption.as_deref(),
        Some(ferrokv_backup::ENCRYPTION_SCHEME),
        "{newest:?}"
    );
    assert!(newest.object.ends_with(".enc"), "{newest:?}");
    assert_ne!(newest.stored_size, newest.size, "{newest:?}");
    let revision = newest.revision;
    assert!(revision >= 11, "{newest:?}");
    // Unreadable without the key, a bbolt file with it.
    let dl = tempfile::tempdir().expect("download dir");
    let err = ferrokv_backup::download(&dest, &newest, &dl.path().join("nokey"), None)
        .await
        .expect_err("an encrypted backup needs its key");
    assert!(err.to_string().contains("encrypted"), "{err}");
    let plain = dl.path().join("plain");
    let key: [u8; 32] = good_key.clone().try_into().expect("32 bytes");
    ferrokv_backup::download(
        &dest,
        &newest,
        &plain,
        Some(&ferrokv_backup::Encryption::from_key(key)),
    )
    .await
    .expect("download with the key");
    let bytes = std::fs::read(&plain).expect("plain snapshot");
    assert_eq!(
        bytes.get(16..20),
        Some(&0xED0C_DAEDu32.to_le_bytes()[..]),
        "the decrypted backup is a bbolt file"
    );
    bed.etcdctl_dns(ns, "enc", "enc-0", true, &["put", "/enc/late", "after"])
        .await
        .expect("late put");

    // Restored by cluster + revision, with the key.
    let restored = |name: &str, replicas: u32, secret: &str| {
        format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  tls: {{mode: Auto}}
  restore:
    {store}
    encryptionKeySecret: {{name: {secret}, key: key}}
    source: {{cluster: default/enc, revision: {revision}}}
",
            store = store("enc"),
        )
    };
    let t = Instant::now();
    bed.cp
        .kubectl()
        .apply(&restored("enc-r", 3, "backup-key"))
        .expect("apply enc-r");
    let st = bed
        .wait_available(ns, "enc-r", 3, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let src_id = bed.cluster(ns, "enc").expect("enc")["status"]["clusterId"].clone();
    assert_ne!(st["clusterId"], src_id, "a restore makes a new cluster id");
    eprintln!("restored cluster available after {:?}", t.elapsed());
    for member in ["enc-r-0", "enc-r-1", "enc-r-2"] {
        let out = bed
            .etcdctl_dns(
                ns,
                "enc-r",
                member,
                true,
                &["get", "/", "--prefix", "-w", "json"],
            )
            .await
            .expect("get over TLS");
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(
            v["header"]["revision"].as_i64(),
            Some(revision),
            "{member}: the backup's revision"
        );
        let got: Vec<(String, String)> = v["kvs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                let d = |f: &str| {
                    use std::io::Read;
                    let mut out = Vec::new();
                    let _ = base64_decoder(kv[f].as_str().unwrap_or_default().as_bytes())
                        .read_to_end(&mut out);
                    String::from_utf8_lossy(&out).into_owned()
                };
                (d("key"), d("value"))
            })
            .collect();
        let mut want: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.clone(), format!("v of {k}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "{member}: exactly the backup's keys and values");
    }

    // The wrong key: the seed's init container fails, visibly, and nothing is served.
    bed.cp
        .kubectl()
        .apply(&restored("enc-bad", 1, "other-key"))
        .expect("apply enc-bad");
    let message = eventually(
        Duration::from_secs(60),
        "enc-bad-0 in Init:Error",
        || async {
            let out = bed
                .cp
                .kubectl()
                .run(&["get", "pod", "enc-bad-0", "-n", ns, "-o", "json"])
                .ok()?;
            let p: Value = serde_json::from_str(&out).ok()?;
            let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
            (w["reason"] == "Init:Error")
                .then(|| w["message"].as_str().unwrap_or_default().to_string())
        },
        || bed.context(ns),
    )
    .await;
    eprintln!("wrong key: {message}");
    assert!(
        message.contains("init container restore") && message.contains("wrong key"),
        "the init container's failure says the key does not open the backup: {message}"
    );
    // Reported where users look: Degraded=True RestoreFailed with the message, and one
    // Warning Event.
    let degraded = eventually(
        Duration::from_secs(60),
        "enc-bad Degraded=True RestoreFailed",
        || async {
            let ec = bed.cluster(ns, "enc-bad")?;
            condition(&ec, "Degraded")
                .filter(|(s, r, _)| s == "True" && r == "RestoreFailed")
                .map(|(_, _, m)| m)
        },
        || bed.context(ns),
    )
    .await;
    assert!(degraded.contains("wrong key"), "{degraded}");
    let note = eventually(
        Duration::from_secs(60),
        "a RestoreFailed Event on enc-bad",
        || async {
            let events = bed.events(ns, "enc-bad").await.ok()?;
            events
                .into_iter()
                .find(|(r, _)| r == "RestoreFailed")
                .map(|(_, n)| n)
        },
        || bed.context(ns),
    )
    .await;
    assert!(note.contains("wrong key"), "{note}");
    let ec = bed.cluster(ns, "enc-bad").expect("enc-bad");
    eprintln!("enc-bad status: {}", ec["status"]);
    assert!(
        condition(&ec, "Available").is_none_or(|(s, _, _)| s != "True"),
        "{ec}"
    );
    assert!(
        bed.etcdctl_dns(ns, "enc-bad", "enc-bad-0", true, &["get", "/enc/key0"])
            .await
            .is_err(),
        "a cluster restored with the wrong key serves nothing"
    );
}
