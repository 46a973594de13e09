//! Member management against real member processes: the reference `etcd` and `ferrokv`.
//! Every scenario runs against both; etcd is the control.
//!
//! The test plays the part of Kubernetes (it starts and stops member processes instead of
//! pods) and otherwise runs the controller's own code: `MemberClient` observes the members,
//! `plan::plan` picks the next step, and `executor::execute` carries it out through the
//! `StepExecutor` the `Processes` stand-in implements (member calls through `MemberClient`,
//! processes of the workspace harness's `Cluster` in place of pods). A writer keeps writing the
//! whole time and every write must land.
//!
//! Both member binaries are prerequisites, not options: a missing one fails the test with what
//! to install, because a test that passes without running proves nothing.

use ferrokv_operator::build::MemberStart;
use ferrokv_operator::certs::{self, LeafKind};
use ferrokv_operator::executor::{self, StepExecutor};
use ferrokv_operator::members::{ClientTls, ClusterView, MemberClient};
use ferrokv_operator::plan::{self, Observed, ObservedPod, PlanConfig, Step};
use ferrokv_operator::resources::InitialState;
use ferrokv_tests::{free_port, Backend, Cluster, MemberOpts, PeerTls, TlsFiles};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const C: &str = "kv";

/// Member flags of every scenario: fast raft timing, and with TLS the operator's certificates
/// from `dir` on both ports with client certificates required.
fn member_opts(tls_dir: Option<&Path>) -> MemberOpts {
    let mut o = MemberOpts {
        heartbeat_ms: Some(50),
        election_ms: Some(500),
        token: "ferrokv-operator-test".into(),
        ..MemberOpts::default()
    };
    if let Some(d) = tls_dir {
        o.tls = Some(TlsFiles {
            ca_cert: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            rogue_cert: d.join("client.crt"),
            rogue_key: d.join("client.key"),
        });
        o.client_cert_auth = true;
        o.peer_tls = Some(PeerTls {
            cert: d.join("peer.crt"),
            key: d.join("peer.key"),
            ca: d.join("ca.crt"),
            client_cert_auth: true,
        });
    }
    o
}

/// The stand-in for Kubernetes: the shared harness's member slots, named as the operator names
/// pods, with the time each process was (re)started standing in for the pod's age.
struct Processes {
    cluster: Cluster,
    /// Members whose process this test started and has not stopped, like pods that exist.
    started: BTreeMap<String, Instant>,
    /// With TLS: the operator's client identity.
    tls: Option<ClientTls>,
}

impl Processes {
    /// A machine without the backend's binary fails the test with what to install.
    fn new(backend: Backend, opts: MemberOpts, tls: Option<ClientTls>) -> Self {
        backend.binary().unwrap_or_else(|e| {
            panic!("{e} (`make deps` installs etcd; `make test` builds ferrokv)")
        });
        Processes {
            cluster: Cluster::empty(backend, opts),
            started: BTreeMap::new(),
            tls,
        }
    }

    fn reserve(&mut self, name: &str) -> String {
        let m = self
            .cluster
            .reserve_named(name)
            .expect("reserve a member slot");
        m.peer_url.clone()
    }

    fn start(&mut self, name: &str, initial: &[String], state: &'static str) {
        self.reserve(name);
        self.cluster
            .start_members(&[name.to_string()], initial, state)
            .expect("start member");
        self.started.insert(name.to_string(), Instant::now());
    }

    fn stop_and_delete(&mut self, name: &str) {
        self.cluster.drop_slot(name);
        self.started.remove(name);
    }

    fn running(&self) -> impl Iterator<Item = (&String, &Instant)> {
        self.started.iter()
    }

    fn client_url(&self, name: &str) -> String {
        self.cluster.get(name).expect("member").client_url.clone()
    }

    /// SIGKILLs a member and wipes its data: what a lost node with a local volume looks like.
    fn kill_and_wipe(&mut self, name: &str) {
        self.cluster
            .get_mut(name)
            .and_then(|m| m.kill_and_wipe())
            .expect("kill and wipe");
        self.started.remove(name);
    }

    fn client(&self) -> MemberClient {
        MemberClient::new(self.endpoints(), self.tls.clone())
    }

    fn endpoints(&self) -> Vec<String> {
        self.running().map(|(n, _)| self.client_url(n)).collect()
    }

    fn name_by_peer_url(&self, url: &str) -> Option<String> {
        self.cluster.name_by_peer_url(url)
    }
}

/// What the controller's observe step produces, with processes in place of pods.
async fn observe(
    procs: &Processes,
    next_ordinal: u64,
    replicas: i32,
) -> (Observed, Option<ClusterView>) {
    let view = procs.client().observe().await;
    let members = view.as_ref().map(|v| {
        let mut obs = v.observed();
        // In Kubernetes the peer URL names the pod; here it is a loopback port, so the test maps
        // it back to the name it reserved.
        for (o, (info, _)) in obs.iter_mut().zip(&v.members) {
            if o.name.is_empty() || plan::ordinal_of(C, &o.name).is_none() {
                if let Some(n) = info
                    .peer_urls
                    .first()
                    .and_then(|u| procs.name_by_peer_url(u))
                {
                    o.name = n;
                }
            }
        }
        obs
    });
    let pods = procs
        .running()
        .map(|(n, started)| ObservedPod {
            name: n.clone(),
            age: started.elapsed(),
            unready_for: Duration::ZERO,
            ready: true,
            terminating: false,
            restore_failed: None,
            start_refused: None,
            image: None,
        })
        .collect();
    let claims: BTreeSet<String> = procs.running().map(|(n, _)| n.clone()).collect();
    let o = Observed {
        replicas,
        members,
        pods,
        claims,
        empty_dir: false,
        bootstrapped: next_ordinal > 0,
        next_ordinal,
        corrupt_alarms: vec![],
        image: String::new(),
        expected_version: None,
    };
    (o, view)
}

/// Processes in place of pods: the controller's steps, carried out on this machine.
impl StepExecutor for Processes {
    async fn add_learner(&mut self, member: &str) -> ferrokv_operator::Result<u64> {
        let url = self.reserve(member);
        self.client().add_learner(&url).await
    }

    async fn promote_learner(&mut self, id: u64) -> ferrokv_operator::Result<()> {
        self.client().promote(id).await
    }

    async fn move_leader(&mut self, to: u64) -> ferrokv_operator::Result<()> {
        self.client().move_leader(to).await
    }

    async fn remove_member(&mut self, id: u64) -> ferrokv_operator::Result<()> {
        self.client().remove(id).await
    }

    async fn disarm_alarm(&mut self, id: u64) -> ferrokv_operator::Result<()> {
        self.client().disarm_corrupt(id).await
    }

    async fn start_member(&mut self, start: &MemberStart) -> ferrokv_operator::Result<()> {
        let state = match start.state {
            InitialState::New => "new",
            InitialState::Existing => "existing",
        };
        self.start(&start.name, &start.initial_members, state);
        Ok(())
    }

    async fn restart_member(&mut self, member: &str) -> ferrokv_operator::Result<()> {
        // Like a deleted pod whose claim stays: the process goes, its data directory stays.
        if let Ok(m) = self.cluster.get_mut(member) {
            m.terminate();
        }
        self.started.remove(member);
        Ok(())
    }

    async fn delete_member(&mut self, member: &str) -> ferrokv_operator::Result<()> {
        self.stop_and_delete(member);
        Ok(())
    }
}

/// Plain-text members of `backend`, converged to `replicas`, and the name counter.
async fn converged(backend: Backend, replicas: i32) -> (Processes, u64) {
    let mut procs = Processes::new(backend, member_opts(None), None);
    let mut next = 0u64;
    converge(&mut procs, &mut next, replicas).await;
    (procs, next)
}

/// Runs observe → plan → apply until the planner reports `Steady`; returns the steps taken.
async fn converge(procs: &mut Processes, next: &mut u64, replicas: i32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut steps = Vec::new();
    let cfg = PlanConfig::default();
    loop {
        assert!(
            Instant::now() < deadline,
            "did not converge to {replicas}; steps: {steps:?}"
        );
        let (obs, view) = observe(procs, *next, replicas).await;
        let p = plan::plan(C, &obs, &cfg);
        *next = p.next_ordinal;
        match &p.step {
            Step::Steady => return steps,
            Step::Wait { .. } => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            // Nothing here changes the configuration or the spec's validity.
            Step::Invalid { .. } => {
                panic!("unexpected step {:?} (view: {view:?})", p.step)
            }
            _ => {}
        }
        let label = format!("{:?}", p.step);
        // A failed call is retried by the next round, as the controller's error policy does
        // (etcd refuses MemberAdd for a few seconds after a membership change: "unhealthy
        // cluster").
        let res = executor::execute(procs, &p.step, &obs).await;
        match res {
            Ok(_) => steps.push(label),
            Err(e) => {
                eprintln!("{label} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The variant names of the steps `converge` took.
fn kinds(steps: &[String]) -> Vec<&str> {
    steps
        .iter()
        .map(|s| s.split(' ').next().unwrap_or(""))
        .collect()
}

async fn voters(procs: &Processes) -> Vec<(String, bool)> {
    let client = procs.client();
    let view = client.observe().await.expect("view");
    let leader = view.leader().map(|l| l.id);
    view.members
        .iter()
        .filter(|(m, _)| !m.learner)
        .map(|(m, _)| (m.name.clone(), Some(m.id) == leader))
        .collect()
}

async fn grow_promote_move_leader_shrink_while_writing(backend: Backend) {
    let mut procs = Processes::new(backend, member_opts(None), None);
    let mut next = 0u64;

    let steps = converge(&mut procs, &mut next, 1).await;
    assert_eq!(steps, vec![r#"BootstrapSeed { name: "kv-0" }"#]);
    let seed = procs.client_url("kv-0");

    // A writer through the seed (which stays for the whole test), retrying each key briefly:
    // leader changes make single requests fail, but no key may be lost.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut client = etcd_client::Client::connect([seed], None)
                .await
                .expect("writer connect");
            let mut longest_gap = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                loop {
                    match client.put(format!("k{i:06}"), format!("v{i}"), None).await {
                        Ok(_) => break,
                        Err(e) => {
                            assert!(t.elapsed() < Duration::from_secs(10), "writes stalled: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                longest_gap = longest_gap.max(t.elapsed());
                i += 1;
                written.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (client, i, longest_gap)
        })
    };

    // 1 -> 3: one learner at a time, started, caught up, promoted.
    let steps = converge(&mut procs, &mut next, 3).await;
    assert_eq!(
        kinds(&steps),
        [
            "AddLearner",
            "CreatePod",
            "PromoteLearner",
            "AddLearner",
            "CreatePod",
            "PromoteLearner"
        ],
        "{steps:?}"
    );
    assert_eq!(voters(&procs).await.len(), 3);
    let before = written.load(Ordering::Relaxed);

    // Make the member the planner will remove first the leader, so leadership must move.
    let client = procs.client();
    let view = client.observe().await.expect("view");
    let kv2 = view
        .members
        .iter()
        .find(|(m, _)| m.name == "kv-2")
        .map(|(m, _)| m.id)
        .expect("kv-2");
    let mut moved = Err(ferrokv_operator::Error::MemberNotFound("not tried".into()));
    for _ in 0..20 {
        moved = client.move_leader(kv2).await;
        if moved.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    moved.expect("move leader to kv-2");
    assert!(
        voters(&procs).await.contains(&("kv-2".to_string(), true)),
        "kv-2 did not become leader"
    );

    // 3 -> 1: leadership moves away from kv-2 before it is removed; then kv-1 goes.
    let steps = converge(&mut procs, &mut next, 1).await;
    assert_eq!(
        kinds(&steps),
        [
            "MoveLeader",
            "RemoveMember",
            "DeletePod",
            "RemoveMember",
            "DeletePod"
        ],
        "{steps:?}"
    );
    assert_eq!(voters(&procs).await, vec![("kv-0".to_string(), true)]);

    // Crash between MemberAdd and pod creation, then the spec shrinks back: the learner that
    // never started is removed, not started and not duplicated.
    let (obs, _) = observe(&procs, next, 2).await;
    let p = plan::plan(C, &obs, &PlanConfig::default());
    let Step::AddLearner { name } = p.step else {
        panic!("expected AddLearner, got {:?}", p.step)
    };
    assert_eq!(name, "kv-3", "names are never reused");
    next = p.next_ordinal;
    procs.add_learner(&name).await.expect("MemberAdd");
    // (operator "crashes" here: no pod is created)
    let steps = converge(&mut procs, &mut next, 1).await;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(
        steps[0].starts_with("RemoveMember") && steps[0].contains("LearnerNotNeeded"),
        "{steps:?}"
    );
    assert_eq!(voters(&procs).await.len(), 1);

    // Writes kept landing throughout, and every key is there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut client, n, gap) = writer.await.expect("writer");
    assert!(
        n > before && before > 0,
        "writer made no progress ({before} then {n})"
    );
    let all = client
        .get(
            "k",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count");
    assert_eq!(u64::try_from(all.count()).unwrap_or(0), n);
    eprintln!("{n} writes, longest single-write stall {gap:?}");
}

/// The operator's certificates work with a real member: etcd serves client and peer traffic
/// with them (`--client-cert-auth`, `--peer-client-cert-auth`), and the operator's
/// `MemberClient` grows the cluster over TLS with its client certificate.
async fn operator_certificates_secure_client_and_peer_traffic(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = time::OffsetDateTime::now_utc();
    let life = Duration::from_secs(90 * 86400);
    let ca = certs::generate_ca(C, now).expect("ca");
    let sans = certs::member_sans(C, "test");
    let server =
        certs::issue_leaf(&ca, LeafKind::Server, "kv-server", &sans, now, life).expect("server");
    let peer = certs::issue_leaf(&ca, LeafKind::Peer, "kv-peer", &sans, now, life).expect("peer");
    let op = certs::issue_leaf(&ca, LeafKind::Client, "ferrokv-operator", &[], now, life)
        .expect("client");
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).expect("mkdir");
    for (n, body) in [
        ("ca.crt", &ca.cert),
        ("server.crt", &server.cert),
        ("server.key", &server.key),
        ("peer.crt", &peer.cert),
        ("peer.key", &peer.key),
        ("client.crt", &op.cert),
        ("client.key", &op.key),
    ] {
        std::fs::write(tls_dir.join(n), body).expect("write");
    }
    let tls = ClientTls {
        ca: op.ca.clone(),
        cert: op.cert.clone(),
        key: op.key.clone(),
    };
    let mut procs = Processes::new(backend, member_opts(Some(&tls_dir)), Some(tls.clone()));
    let mut next = 0u64;
    converge(&mut procs, &mut next, 1).await;
    // Peer traffic is TLS too: a second member joins, catches up and is promoted.
    let steps = converge(&mut procs, &mut next, 2).await;
    assert!(
        steps.iter().any(|s| s.starts_with("PromoteLearner")),
        "{steps:?}"
    );
    let view = procs.client().observe().await.expect("view over TLS");
    assert_eq!(view.members.len(), 2);
    assert!(
        view.members.iter().all(|(m, h)| !m.learner && h.is_some()),
        "{view:?}"
    );

    // Without the operator's client certificate the member refuses the call.
    let other_ca = certs::generate_ca("other", now).expect("ca");
    let stranger =
        certs::issue_leaf(&other_ca, LeafKind::Client, "x", &[], now, life).expect("client");
    let wrong = ClientTls {
        ca: ca.cert.clone(),
        cert: stranger.cert,
        key: stranger.key,
    };
    let refused = MemberClient::new(procs.endpoints(), Some(wrong))
        .list()
        .await;
    assert!(
        refused.is_err(),
        "a foreign client certificate was accepted"
    );
}

/// A member whose data is lost is removed and replaced by a new member with a new name; when
/// removing would lose quorum, nothing is removed.
async fn lost_member_is_replaced_but_never_at_the_cost_of_quorum(backend: Backend) {
    let (mut procs, mut next) = converged(backend, 3).await;

    procs.kill_and_wipe("kv-1");
    let steps = converge(&mut procs, &mut next, 3).await;
    assert_eq!(
        kinds(&steps),
        ["RemoveMember", "AddLearner", "CreatePod", "PromoteLearner"],
        "{steps:?}"
    );
    assert!(
        steps[0].contains("kv-1") && steps[0].contains("DataLost"),
        "{steps:?}"
    );
    assert!(
        steps[1].contains("kv-3"),
        "replacement must get a new name: {steps:?}"
    );
    let mut names: Vec<String> = voters(&procs).await.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["kv-0", "kv-2", "kv-3"]);

    // Two of three gone: the survivor has no quorum, so nothing may be removed.
    procs.kill_and_wipe("kv-2");
    procs.kill_and_wipe("kv-3");
    for _ in 0..3 {
        let (obs, _) = observe(&procs, next, 3).await;
        let p = plan::plan(C, &obs, &PlanConfig::default());
        assert!(matches!(p.step, Step::Wait { .. }), "{:?}", p.step);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = procs.client();
    let (_, list) = client.list().await.expect("member list from the survivor");
    assert_eq!(list.len(), 3, "a member was removed without quorum");
}

/// etcd's strict reconfiguration check, which the operator relies on as a second line of
/// defence: with one of three voters down, adding a voter or a learner or removing a live
/// voter is refused ("unhealthy cluster"), removing the dead voter works, and then a second
/// learner is refused.
/// Asked through every running member, so followers must answer like the leader.
async fn reconfiguration_that_would_lose_quorum_is_refused(backend: Backend) {
    let (mut procs, _) = converged(backend, 3).await;
    let view = procs.client().observe().await.expect("view");
    let id_of = |name: &str| {
        view.members
            .iter()
            .find(|(m, _)| m.name == name)
            .map(|(m, _)| m.id)
            .expect("member")
    };
    let (live, dead) = (id_of("kv-1"), id_of("kv-2"));
    procs.kill_and_wipe("kv-2");
    // Past every member's notion of "recently connected".
    tokio::time::sleep(Duration::from_secs(2)).await;

    let spare = format!("http://127.0.0.1:{}", free_port());
    for endpoint in procs.endpoints() {
        let mut c = etcd_client::Client::connect([endpoint.clone()], None)
            .await
            .expect("connect");
        let learner = || Some(etcd_client::MemberAddOptions::new().with_is_learner());
        let unhealthy = |what: &str, r: Result<(), etcd_client::Error>| {
            let e = r.expect_err(what);
            assert!(
                e.to_string().contains("etcdserver: unhealthy cluster"),
                "{endpoint}: {what}: {e}"
            );
        };
        unhealthy(
            "voter added with a voter down",
            c.member_add([spare.clone()], None).await.map(drop),
        );
        unhealthy(
            "learner added with a voter down",
            c.member_add([spare.clone()], learner()).await.map(drop),
        );
        unhealthy(
            "live voter removed with another voter down",
            c.member_remove(live).await.map(drop),
        );
    }
    let mut c = etcd_client::Client::connect(procs.endpoints(), None)
        .await
        .expect("connect");
    c.member_remove(dead).await.expect("remove the dead voter");
    let learner = c
        .member_add(
            [spare.clone()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("a learner may be added to two healthy voters");
    let second = c
        .member_add(
            [format!("http://127.0.0.1:{}", free_port())],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect_err("second learner");
    assert!(
        second
            .to_string()
            .contains("etcdserver: too many learner members in cluster"),
        "{second}"
    );
    let learner_id = learner.member().map(|m| m.id()).expect("added member");
    c.member_remove(learner_id).await.expect("remove learner");
    let left = c.member_list().await.expect("list");
    assert_eq!(left.members().len(), 2, "{:?}", left.members());
}

// One `#[tokio::test]` per backend and scenario (`<scenario>::etcd`, `<scenario>::ferrokv`);
// etcd is the control.
ferrokv_tests::both_backends!(
    grow_promote_move_leader_shrink_while_writing,
    operator_certificates_secure_client_and_peer_traffic,
    lost_member_is_replaced_but_never_at_the_cost_of_quorum,
    reconfiguration_that_would_lose_quorum_is_refused,
);
