//! Three-member clusters of real processes, both backends: the shared harness's `Cluster`
//! proven on what every later suite relies on — a leader kill, a restart, growing through a
//! learner and shrinking — with every acknowledged write still readable afterwards.

use std::time::Duration;

use ferrokv_tests::{all_backends, free_port, grpc_error, Backend, Cluster, MemberOpts};

fn fast() -> MemberOpts {
    MemberOpts {
        heartbeat_ms: Some(50),
        election_ms: Some(500),
        ..MemberOpts::default()
    }
}

async fn put_all(c: &mut Cluster, from: usize, to: usize) {
    let mut client = c.client().await.expect("client");
    for i in from..to {
        let k = format!("k{i:04}");
        // A put that races an election may fail; it is retried, and only acknowledged puts
        // are checked below.
        let mut tries = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.put(k.as_str(), "v", None))
                .await
            {
                Ok(Ok(_)) => break,
                _ if tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("put {k} failed 20 times: {other:?}"),
            }
        }
    }
}

async fn count_on(c: &Cluster, name: &str) -> i64 {
    let m = c.get(name).expect("member");
    let mut client = m.client().await.expect("client");
    let r = client
        .get(
            "k",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_serializable(),
            ),
        )
        .await
        .expect("count");
    r.count()
}

/// Waits until member `name` has applied all `want` keys (a restarted or new member catches up
/// asynchronously).
async fn eventually_count(c: &Cluster, name: &str, want: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = count_on(c, name).await;
        if n == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} has {n} of {want} keys"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leader_kill_restart(b: Backend) {
    let mut c = Cluster::start(b, 3, fast()).await.expect("3 members start");
    assert_eq!(c.running().len(), 3);
    put_all(&mut c, 0, 50).await;
    let old = c.leader().await.expect("a leader");
    c.kill(&old).expect("kill leader");
    let new = c.leader().await.expect("a new leader");
    assert_ne!(new, old, "the killed member cannot still lead");
    put_all(&mut c, 50, 100).await;
    c.restart(&old).await.expect("old leader restarts");
    for name in ["m1", "m2", "m3"] {
        eventually_count(&c, name, 100).await;
    }
}

async fn grow_through_a_learner_and_shrink(b: Backend) {
    let mut c = Cluster::start(b, 3, fast()).await.expect("3 members start");
    put_all(&mut c, 0, 30).await;
    let joined = c.add_member(true).await.expect("learner added and started");
    assert_eq!(joined, "m4");
    c.promote(&joined).await.expect("learner promoted");
    eventually_count(&c, &joined, 30).await;
    let list = c
        .client()
        .await
        .expect("client")
        .member_list()
        .await
        .expect("list");
    assert_eq!(list.members().len(), 4);
    assert!(list.members().iter().all(|m| !m.is_learner()));

    // Remove the leader itself: the remaining three elect another and keep every write.
    let leader = c.leader().await.expect("leader");
    c.remove_member(&leader).await.expect("leader removed");
    let next = c.leader().await.expect("a leader among the rest");
    assert_ne!(next, leader);
    put_all(&mut c, 30, 40).await;
    let list = c
        .client()
        .await
        .expect("client")
        .member_list()
        .await
        .expect("list");
    assert_eq!(list.members().len(), 3);
    for name in c.running() {
        eventually_count(&c, &name, 40).await;
    }
}

/// A membership change acknowledged by one member is seen by the next request on any other
/// one: a learner added through one member is removed at once through another, whose own apply
/// loop may not have caught up yet (etcd checks membership changes in log order).
async fn membership_changes_are_checked_in_log_order(b: Backend) {
    let c = Cluster::start(b, 3, fast()).await.expect("3 members start");
    let mut adder = c.get("m1").expect("m1").client().await.expect("client");
    let mut remover = c.get("m3").expect("m3").client().await.expect("client");
    // The race is narrow (the remover's apply loop is usually a batch behind at most), so it
    // takes many rounds to show; each round is a few milliseconds.
    for round in 0..30 {
        let url = format!("http://127.0.0.1:{}", free_port());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let added = loop {
            let opts = etcd_client::MemberAddOptions::new().with_is_learner();
            match adder.member_add([url.as_str()], Some(opts)).await {
                Ok(a) => break a,
                // Strict reconfiguration right after a start or a change.
                Err(e)
                    if grpc_error(&e)
                        .is_some_and(|(_, m)| m == "etcdserver: unhealthy cluster")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => panic!("round {round}: add: {e}"),
            }
        };
        let id = added.member().map(|m| m.id()).expect("added member");
        remover
            .member_remove(id)
            .await
            .unwrap_or_else(|e| panic!("round {round}: remove of the member just added: {e}"));
    }
    let list = remover.member_list().await.expect("list");
    assert_eq!(list.members().len(), 3);
}

all_backends!(
    leader_kill_restart,
    grow_through_a_learner_and_shrink,
    membership_changes_are_checked_in_log_order
);
