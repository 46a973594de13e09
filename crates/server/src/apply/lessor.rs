//! The lessor: in-memory lease deadlines, authoritative only while this member is leader.
//!
//! Grants and revokes are replicated through raft (the store holds the lease table); the apply
//! loop tells the lessor about them after each commit. Expiry deadlines live only in memory on
//! the leader: a new leader renews every lease (deadline = now + TTL, as etcd does). Must not
//! depend on raft, the store or the gRPC layer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
struct Entry {
    ttl: i64,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    leader: bool,
    leases: HashMap<i64, Entry>,
    /// Leases whose revoke has been proposed; not proposed again until it fails.
    revoking: HashSet<i64>,
}

/// In-memory lease deadlines; authoritative only while this member is leader.
#[derive(Default)]
pub struct Lessor {
    state: Mutex<State>,
}

impl Lessor {
    /// A grant was applied (on every member).
    pub fn granted(&self, id: i64, ttl: i64) {
        let deadline = Instant::now() + secs(ttl);
        self.state.lock().leases.insert(id, Entry { ttl, deadline });
    }

    /// A revoke was applied.
    pub fn revoked(&self, id: i64) {
        let mut st = self.state.lock();
        st.leases.remove(&id);
        st.revoking.remove(&id);
    }

    /// The keyspace was replaced by a snapshot from the leader: these are now the leases,
    /// each with its full TTL from now (only a leader acts on deadlines, and it renews them
    /// all when it takes over anyway).
    pub fn replace_all(&self, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.revoking.clear();
        st.leases = leases
            .iter()
            .map(|&(id, ttl)| {
                (
                    id,
                    Entry {
                        ttl,
                        deadline: now + secs(ttl),
                    },
                )
            })
            .collect();
    }

    /// This member became leader: every lease gets its full TTL again from now.
    pub fn promote(&self, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.leader = true;
        st.revoking.clear();
        for &(id, ttl) in leases {
            st.leases.insert(
                id,
                Entry {
                    ttl,
                    deadline: now + secs(ttl),
                },
            );
        }
    }

    pub fn demote(&self) {
        let mut st = self.state.lock();
        st.leader = false;
        st.revoking.clear();
    }

    pub fn is_leader(&self) -> bool {
        self.state.lock().leader
    }

    /// KeepAlive: resets the deadline; the granted TTL, or None for an unknown lease.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.state.lock();
        if st.revoking.contains(&id) {
            return None;
        }
        let e = st.leases.get_mut(&id)?;
        e.deadline = Instant::now() + secs(e.ttl);
        Some(e.ttl)
    }

    /// Seconds left (rounded up, as etcd), or None when this member does not track it.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let st = self.state.lock();
        let e = st.leases.get(&id)?;
        let left = e.deadline.saturating_duration_since(Instant::now());
        Some(((left.as_millis() as i64) + 999) / 1000)
    }

    /// Leases past their deadline that nobody is revoking yet; they are marked as revoking.
    pub fn take_expired(&self, now: Instant) -> Vec<i64> {
        self.take_expired_at_most(now, usize::MAX)
    }

    /// [`Lessor::take_expired`], at most `limit` of them, the longest expired first (etcd
    /// revokes from its expiry heap at a bounded rate).
    pub fn take_expired_at_most(&self, now: Instant, limit: usize) -> Vec<i64> {
        let mut st = self.state.lock();
        if !st.leader || limit == 0 {
            return Vec::new();
        }
        let mut expired: Vec<(Instant, i64)> = st
            .leases
            .iter()
            .filter(|(id, e)| e.deadline <= now && !st.revoking.contains(id))
            .map(|(id, e)| (e.deadline, *id))
            .collect();
        if expired.len() > limit {
            expired.select_nth_unstable(limit - 1);
            expired.truncate(limit);
        }
        expired.sort_unstable();
        let ids: Vec<i64> = expired.into_iter().map(|(_, id)| id).collect();
        st.revoking.extend(ids.iter().copied());
        ids
    }

    /// A revoke proposal failed: try again at the next check.
    pub fn revoke_failed(&self, id: i64) {
        self.state.lock().revoking.remove(&id);
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lessor_expiry_only_on_leader_and_once() {
        let l = Lessor::default();
        l.granted(7, 1);
        let later = Instant::now() + Duration::from_secs(2);
        assert!(
            l.take_expired(later).is_empty(),
            "followers never expire leases"
        );
        l.promote(&[(7, 1), (8, 100)]);
        assert_eq!(l.take_expired(later), vec![7]);
        assert!(
            l.take_expired(later).is_empty(),
            "a revoke in flight is not proposed twice"
        );
        assert_eq!(
            l.renew(7),
            None,
            "a lease being revoked cannot be kept alive"
        );
        l.revoke_failed(7);
        assert_eq!(l.take_expired(later), vec![7]);
        l.revoked(7);
        assert_eq!(l.renew(7), None);
        assert_eq!(l.renew(8), Some(100));
        assert!(l.remaining(8).unwrap() > 98);
        l.demote();
        assert!(l
            .take_expired(Instant::now() + Duration::from_secs(1000))
            .is_empty());
    }
}
