//! etcd's corruption checks (`server/etcdserver/corrupt.go`), on by default in ferrokv:
//!
//! - the initial check: a restarting member compares its HashKV at its current revision with
//!   every peer's (over the peers' `/members/hashkv`) before it starts raft, and refuses to
//!   start on a mismatch at the same compact revision;
//! - the periodic check (`--corrupt-check-time`): every member verifies its own `latest`
//!   against its `history`; the leader compares its HashKV with its followers' and raises the
//!   CORRUPT alarm for the member etcd's rules blame;
//! - the compaction-time check (`CompactHashCheck`): the leader compares the hash each member
//!   took right after the same compaction, and alarms the minority.
//!
//! While any CORRUPT alarm is raised every member refuses writes with `etcdserver: corrupt
//! cluster` (`quota.rs`), as etcd's corrupt applier does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokv_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, HashKvResponse, ResponseHeader,
};
use ferrokv_storage::{KvHash, Store};
use tokio::sync::watch;

use super::EtcdServer;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::peer::{fetch_hash_kv, peer_client_tls, PeerHashError, PeerHashKv};

/// etcd reports a never-compacted store's compact revision as -1; so does our HashKV.
fn wire_compact(c: i64) -> i64 {
    if c > 0 {
        c
    } else {
        -1
    }
}

/// One peer's answer (etcd's `peerHashKVResp`).
struct PeerHash {
    id: u64,
    urls: Vec<String>,
    resp: std::result::Result<HashKvResponse, PeerHashError>,
}

/// Every other member's HashKV at `revision`, each peer URL tried in turn.
async fn peer_hashes(
    store: &Store,
    member_id: u64,
    cluster_id: u64,
    tls: Option<&crate::peer::PeerClientTls>,
    revision: i64,
    timeout: Duration,
) -> Result<Vec<PeerHash>> {
    let members = crate::apply::membership::load(store)?;
    let asks = members
        .into_iter()
        .filter(|m| m.id != member_id && !m.peer_ur_ls.is_empty())
        .map(|m| async move {
            let mut last = PeerHashError::Other("no peer URL".into());
            for url in &m.peer_ur_ls {
                match fetch_hash_kv(url, tls, cluster_id, revision, timeout).await {
                    Ok(r) => {
                        return PeerHash {
                            id: m.id,
                            urls: m.peer_ur_ls.clone(),
                            resp: Ok(r),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            local_member_id = format!("{member_id:x}"),
                            requested_revision = revision,
                            remote_peer_endpoint = %url,
                            error = %e,
                            "failed hash kv request"
                        );
                        last = e;
                    }
                }
            }
            PeerHash {
                id: m.id,
                urls: m.peer_ur_ls.clone(),
                resp: Err(last),
            }
        });
    Ok(futures::future::join_all(asks).await)
}

async fn hash_now(store: &Arc<Store>, revision: i64) -> Result<KvHash> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.kv_hash(revision))
        .await
        .map_err(|e| Error::Fatal(format!("hash task failed: {e}")))?
        .map_err(Error::from)
}

/// etcd's `InitialCheck`, run by a restarting member before raft starts: Err (and the
/// member refuses to start) when a peer at the same compact revision has another hash at our
/// revision, or when our own `latest` disagrees with our `history`.
pub async fn initial_check(
    cfg: &Config,
    store: &Arc<Store>,
    member_id: u64,
    cluster_id: u64,
) -> Result<()> {
    let timeout = Duration::from_secs(5) + 2 * cfg.election_timeout;
    let me = format!("{member_id:x}");
    tracing::info!(local_member_id = %me, ?timeout, "starting initial corruption check");
    // A lone member has no peer hash to compare with, and the only other thing the hash
    // finds, `latest` disagreeing with `history`, is what the keyspace check at open has
    // just looked for. Hashing the whole keyspace a second time would only delay the start
    // (about 2 s of a 7 s restart with 1M keys).
    let alone = crate::apply::membership::load(store)?
        .iter()
        .all(|m| m.id == member_id || m.peer_ur_ls.is_empty());
    if alone && cfg.corrupt.verify_on_open {
        tracing::info!(local_member_id = %me, "initial corruption checking passed; no peers to compare with, the keyspace was checked at open");
        return Ok(());
    }
    let h = hash_now(store, 0)
        .await
        .map_err(|e| Error::Fatal(format!("{me} failed to fetch hash ({e})")))?;
    let tls = peer_client_tls(&cfg.peer_tls)?;
    let peers = peer_hashes(
        store,
        member_id,
        cluster_id,
        tls.as_ref(),
        h.revision,
        timeout,
    )
    .await?;
    let local_compact = wire_compact(h.compact_revision);
    let mut mismatches = Vec::new();
    for p in &peers {
        match &p.resp {
            Ok(r) => {
                let remote_rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
                if r.hash == h.hash {
                    continue;
                }
                if r.compact_revision == local_compact {
                    tracing::warn!(
                        local_member_id = %me,
                        local_member_revision = h.revision,
                        local_member_compact_revision = local_compact,
                        local_member_hash = h.hash,
                        remote_peer_id = format!("{:x}", p.id),
                        remote_peer_endpoints = ?p.urls,
                        remote_peer_revision = remote_rev,
                        remote_peer_compact_revision = r.compact_revision,
                        remote_peer_hash = r.hash,
                        "found different hash values from remote peer"
                    );
                    mismatches.push(format!("peer {:x} has hash {}", p.id, r.hash));
                } else {
                    tracing::warn!(
                        local_member_id = %me,
                        local_member_compact_revision = local_compact,
                        remote_peer_id = format!("{:x}", p.id),
                        remote_peer_compact_revision = r.compact_revision,
                        "found different compact revision values from remote peer"
                    );
                }
            }
            Err(PeerHashError::FutureRev) => tracing::warn!(
                local_member_id = %me,
                local_member_revision = h.revision,
                remote_peer_id = format!("{:x}", p.id),
                "cannot fetch hash from slow remote peer"
            ),
            Err(PeerHashError::Compacted) => tracing::warn!(
                local_member_id = %me,
                local_member_revision = h.revision,
                remote_peer_id = format!("{:x}", p.id),
                "cannot fetch hash from remote peer; local member is behind"
            ),
            Err(PeerHashError::ClusterIdMismatch) => tracing::warn!(
                local_member_id = %me,
                remote_peer_id = format!("{:x}", p.id),
                "cluster ID mismatch"
            ),
            Err(PeerHashError::Other(_)) => {}
        }
    }
    if !mismatches.is_empty() {
        return Err(Error::Fatal(format!(
            "{me} found data inconsistency with peers: local hash {} at revision {} (compact revision {local_compact}), {}",
            h.hash,
            h.revision,
            mismatches.join(", ")
        )));
    }
    if let Some(i) = h.inconsistency {
        return Err(Error::Fatal(format!(
            "{me} found local data inconsistency at revision {}: {i}",
            h.revision
        )));
    }
    tracing::info!(local_member_id = %me, "initial corruption checking passed; no corruption");
    Ok(())
}

impl PeerHashKv for EtcdServer {
    fn cluster_id(&self) -> u64 {
        self.header.cluster_id()
    }

    fn peer_hash_kv(&self, revision: i64) -> std::result::Result<HashKvResponse, String> {
        let h = self.store.kv_hash(revision).map_err(|e| e.to_string())?;
        Ok(HashKvResponse {
            // etcd's handler sets only the revision in this header.
            header: Some(ResponseHeader {
                revision: self.store.current_revision(),
                ..Default::default()
            }),
            hash: h.hash,
            compact_revision: wire_compact(h.compact_revision),
            hash_revision: h.revision,
        })
    }
}

impl EtcdServer {
    fn is_leader(&self) -> bool {
        let s = self.raft_status();
        s.leader_id != 0 && s.leader_id == s.id
    }

    /// etcd's `triggerCorruptAlarm`: CORRUPT for `id` (0 = the whole cluster), through raft.
    async fn trigger_corrupt_alarm(&self, id: u64) {
        let raised = self
            .alarms
            .list()
            .iter()
            .any(|a| a.member_id == id && a.alarm == AlarmType::Corrupt as i32);
        if raised {
            return;
        }
        tracing::error!(member_id = format!("{id:x}"), "raising the CORRUPT alarm");
        let req = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Corrupt as i32,
        };
        if let Err(e) = self.propose(req).await {
            tracing::warn!(error = %e, "raising CORRUPT failed");
        }
    }

    async fn peers_at(&self, revision: i64) -> Result<Vec<PeerHash>> {
        peer_hashes(
            &self.store,
            self.member_id(),
            self.cluster_id(),
            self.peer_client_tls.as_ref(),
            revision,
            self.request_timeout,
        )
        .await
    }

    /// One pass of etcd's `PeriodicCheck`, plus the local latest/history check every member
    /// runs (etcd verifies its backend's consistency on every member each pass too).
    async fn periodic_check(&self) -> Result<()> {
        let h = hash_now(&self.store, 0).await?;
        if let Some(i) = &h.inconsistency {
            tracing::error!(revision = h.revision, inconsistency = %i, "local keyspace is corrupt");
            self.trigger_corrupt_alarm(self.member_id()).await;
        }
        if !self.is_leader() {
            return Ok(());
        }
        let peers = self.peers_at(h.revision).await?;
        self.read_barrier().await?;
        let h2 = hash_now(&self.store, 0).await?;
        let mut alarmed = false;
        if h2.hash != h.hash
            && h2.revision == h.revision
            && h2.compact_revision == h.compact_revision
        {
            tracing::warn!(
                revision_1 = h.revision,
                hash_1 = h.hash,
                revision_2 = h2.revision,
                hash_2 = h2.hash,
                "found hash mismatch"
            );
            self.trigger_corrupt_alarm(self.member_id()).await;
            alarmed = true;
        }
        let (c1, c2) = (
            wire_compact(h.compact_revision),
            wire_compact(h2.compact_revision),
        );
        let mut checked = 0;
        for p in &peers {
            let Ok(r) = &p.resp else { continue };
            checked += 1;
            let follower_rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
            let blame = if follower_rev > h2.revision {
                tracing::warn!(
                    leader_revision = h2.revision,
                    follower_revision = follower_rev,
                    follower_peer_id = format!("{:x}", p.id),
                    "revision from follower must be less than or equal to leader's"
                );
                true
            } else if r.compact_revision > c2 {
                tracing::warn!(
                    leader_compact_revision = c2,
                    follower_compact_revision = r.compact_revision,
                    follower_peer_id = format!("{:x}", p.id),
                    "compact revision from follower must be less than or equal to leader's"
                );
                true
            } else if r.compact_revision == c1 && r.hash != h.hash {
                tracing::warn!(
                    leader_compact_revision = c1,
                    leader_hash = h.hash,
                    follower_compact_revision = r.compact_revision,
                    follower_hash = r.hash,
                    follower_peer_id = format!("{:x}", p.id),
                    revision = h.revision,
                    "same compact revision then hashes must match"
                );
                true
            } else {
                false
            };
            // etcd raises at most one alarm per pass.
            if blame && !alarmed {
                alarmed = true;
                self.trigger_corrupt_alarm(p.id).await;
            }
        }
        tracing::info!(
            number_of_peers_checked = checked,
            "finished peer corruption check"
        );
        Ok(())
    }

    /// etcd's `CompactHashCheck`: the unchecked post-compaction hashes, newest first, until one
    /// was compared with every peer (or an alarm was raised). Returns the newest revision
    /// checked on the whole cluster.
    async fn compact_hash_check(&self, checked_up_to: i64) -> i64 {
        let mut hashes: Vec<KvHash> = self
            .store
            .compaction_hashes()
            .into_iter()
            .filter(|h| h.revision > checked_up_to)
            .collect();
        hashes.sort_by_key(|h| std::cmp::Reverse(h.revision));
        for h in &hashes {
            let peers = match self.peers_at(h.revision).await {
                Ok(p) if !p.is_empty() => p,
                _ => continue,
            };
            let compact = wire_compact(h.compact_revision);
            let mut groups: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
            groups.entry(h.hash).or_default().push(self.member_id());
            let mut checked = 0;
            for p in &peers {
                match &p.resp {
                    Ok(r) if r.compact_revision == compact => {
                        checked += 1;
                        groups.entry(r.hash).or_default().push(p.id);
                    }
                    _ => tracing::warn!(
                        leader_id = format!("{:x}", self.member_id()),
                        peer_id = format!("{:x}", p.id),
                        "Skipped peer's hash"
                    ),
                }
            }
            if groups.len() == 1 {
                if checked == peers.len() {
                    tracing::info!(
                        number_of_peers_checked = checked,
                        revision = h.revision,
                        "successfully checked hash on whole cluster"
                    );
                    return checked_up_to.max(h.revision);
                }
                continue;
            }
            let members = peers.len() + 1;
            let quorum = members / 2 + 1;
            let majority = groups
                .iter()
                .find(|(_, ids)| ids.len() >= quorum)
                .map(|(hash, _)| *hash);
            if let Some(m) = majority {
                groups.remove(&m);
            } else {
                tracing::error!(
                    leader_revision = h.revision,
                    leader_hash = h.hash,
                    "Detected compaction hash mismatch but cannot identify the corrupted members, so intentionally set the memberID as 0"
                );
                self.trigger_corrupt_alarm(0).await;
            }
            for (hash, ids) in &groups {
                tracing::error!(
                    leader_revision = h.revision,
                    leader_hash = h.hash,
                    peer_hash = hash,
                    peer_ids = ?ids.iter().map(|i| format!("{i:x}")).collect::<Vec<_>>(),
                    quorum_exist = majority.is_some(),
                    "Detected compaction hash mismatch"
                );
                if majority.is_some() {
                    for id in ids {
                        self.trigger_corrupt_alarm(*id).await;
                    }
                }
            }
            return checked_up_to;
        }
        checked_up_to
    }
}

/// The periodic and the compaction-time check, until `stop` fires.
pub async fn run(core: Arc<EtcdServer>, mut stop: watch::Receiver<bool>) {
    let periodic = core.cfg.corrupt.periodic;
    let compact = core
        .cfg
        .corrupt
        .compact_hash
        .then_some(core.cfg.corrupt.compact_hash_time);
    if !periodic.is_zero() {
        tracing::info!(local_member_id = format!("{:x}", core.member_id()), interval = ?periodic, "enabled corruption checking");
    }
    let sleep_or_never = |d: Option<Duration>| async move {
        match d {
            Some(d) if !d.is_zero() => tokio::time::sleep(d).await,
            _ => std::future::pending::<()>().await,
        }
    };
    let mut next_periodic = Box::pin(sleep_or_never(Some(periodic)));
    let mut next_compact = Box::pin(sleep_or_never(compact));
    let mut checked_up_to = 0;
    loop {
        tokio::select! {
            _ = crate::stop::until_stopped(&mut stop) => return,
            _ = &mut next_periodic => {
                if let Err(e) = core.periodic_check().await {
                    tracing::warn!(error = %e, "failed to check hash KV");
                }
                next_periodic = Box::pin(sleep_or_never(Some(periodic)));
            }
            _ = &mut next_compact => {
                if core.is_leader() {
                    checked_up_to = core.compact_hash_check(checked_up_to).await;
                }
                next_compact = Box::pin(sleep_or_never(compact));
            }
        }
    }
}
