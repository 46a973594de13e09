//! Lease expiry on the leader: follows leadership, renews every lease when this member takes
//! over, and revokes expired leases by proposing LeaseRevoke through the log, so every member
//! deletes the same keys at the same revision.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::etcdserverpb::LeaseRevokeRequest;
use tokio::sync::watch;

use super::EtcdServer;
use crate::error::Error;

/// How often the leader looks for expired leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);
/// etcd's `leaseRevokeRate`: at most this many expired leases are revoked per second, so a
/// mass expiry becomes a steady trickle of deletes and watch events instead of one burst.
pub const LEASE_REVOKE_RATE: usize = 1000;
/// Revocations started per check (etcd: rate / 2 per 500 ms pass).
const REVOKES_PER_CHECK: usize = LEASE_REVOKE_RATE * EXPIRY_CHECK.as_millis() as usize / 1000;

/// Follows leadership and revokes expired leases through raft until `stop` fires.
pub async fn run_expiry(core: Arc<EtcdServer>, mut stop: watch::Receiver<bool>) {
    let mut status = core.raft.status();
    let mut ticker = tokio::time::interval(EXPIRY_CHECK);
    // A late tick must not be made up by a burst of ticks: that would revoke faster than the
    // rate allows.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::stop::until_stopped(&mut stop) => return,
            _ = ticker.tick() => {}
        }
        let leader = {
            let s = status.borrow_and_update();
            s.leader_id != 0 && s.leader_id == s.id
        };
        if leader && !core.lessor.is_leader() {
            let store = core.store.clone();
            match tokio::task::spawn_blocking(move || store.leases()).await {
                Ok(Ok(list)) => {
                    let pairs: Vec<(i64, i64)> = list.iter().map(|l| (l.id, l.ttl)).collect();
                    tracing::info!(leases = pairs.len(), "became leader; renewing all leases");
                    core.lessor.promote(&pairs);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot load leases"),
                Err(e) => tracing::warn!(error = %e, "lease load task failed"),
            }
            continue;
        }
        if !leader && core.lessor.is_leader() {
            core.lessor.demote();
        }
        if core.alarms.corrupt() {
            // Every revoke would be refused (etcd's corrupt applier refuses LeaseRevoke).
            continue;
        }
        for id in core
            .lessor
            .take_expired_at_most(Instant::now(), REVOKES_PER_CHECK)
        {
            let core = core.clone();
            tokio::spawn(async move {
                tracing::info!(lease = id, "lease expired; revoking");
                match core
                    .propose_as(LeaseRevokeRequest { id }, &core.as_root())
                    .await
                {
                    Ok(_) | Err(Error::Storage(ferrokv_storage::Error::LeaseNotFound)) => {
                        core.lessor.revoked(id)
                    }
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking expired lease failed");
                        core.lessor.revoke_failed(id);
                    }
                }
            });
        }
    }
}
