//! Maintenance requests of the server core: alarms, status, hashes, leader transfer and the
//! keyspace snapshot stream: what etcd streams, an etcd 3.6 backend database (bbolt, see
//! `Store::export_etcd`) followed by its SHA-256, so the file `etcdctl snapshot save`
//! writes restores with `etcdutl snapshot restore` as well as `ferrokv snapshot restore`.

use std::io::Read;

use ferrokv_datadir::Scratch;
use ferrokv_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, HashKvResponse, HashResponse,
    MoveLeaderResponse, ResponseHeader, SnapshotResponse, StatusResponse,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;

use super::{EtcdServer, ETCD_VERSION};
use crate::error::{to_status, Error, Result};
use crate::snapshot_file::{self, RemoveOnDrop};

/// Bytes of keyspace per `SnapshotResponse`.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The chunks of a `Maintenance.Snapshot` stream, as the gRPC layer sends them.
pub type SnapshotChunks = mpsc::Receiver<std::result::Result<SnapshotResponse, Status>>;

impl EtcdServer {
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse> {
        let mut resp = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) | Err(_) => AlarmResponse {
                header: None,
                alarms: self.alarms.list(),
            },
            Ok(_) => self.propose(req).await?,
        };
        resp.header = Some(self.header_now());
        Ok(resp)
    }

    pub async fn status(&self) -> Result<StatusResponse> {
        let (db_size, db_in_use) = self.blocking(|s| s.db_size().map_err(Error::from)).await?;
        let st = self.raft_status();
        let errors = self
            .alarms
            .list()
            .iter()
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
            .collect();
        Ok(StatusResponse {
            header: Some(self.header_now()),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: st.leader_id,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: *self.applied.borrow(),
            errors,
            db_size_in_use: db_in_use,
            is_learner: st.is_learner,
            storage_version: ETCD_VERSION.to_string(),
            db_size_quota: self.quota_bytes() as i64,
            // etcd 3.6 always sends it, empty when no downgrade is in progress.
            downgrade_info: Some(Default::default()),
        })
    }

    /// etcd's defrag of this member's keyspace: rewrites it into a new, packed file (see
    /// `Store::defragment`); writes wait while it runs. The quota check then sees the
    /// smaller file at once instead of at the next periodic measurement.
    pub async fn defragment(&self) -> Result<()> {
        let (before, after) = self
            .blocking(|s| s.defragment().map_err(Error::from))
            .await?;
        self.db_size.measure(&self.store);
        tracing::info!(before, after, "defragment done");
        Ok(())
    }

    pub async fn hash(&self) -> Result<HashResponse> {
        let hash = self.blocking(|s| s.hash().map_err(Error::from)).await?;
        Ok(HashResponse {
            header: Some(self.header_now()),
            hash,
        })
    }

    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        let (hash, compact_revision, hash_revision) = self
            .blocking(move |s| s.hash_kv(revision).map_err(Error::from))
            .await?;
        Ok(HashKvResponse {
            header: Some(self.header_now()),
            hash,
            // etcd's store starts at compacted revision -1 ("never compacted") and reports it so.
            compact_revision: if compact_revision > 0 {
                compact_revision
            } else {
                -1
            },
            hash_revision,
        })
    }

    /// A consistent copy of the keyspace in etcd's format, streamed as etcd streams it. The
    /// copy is written (from one read snapshot) before this returns; the file is read and
    /// hashed on a blocking thread, and a bounded channel keeps at most a few chunks in
    /// memory however large the keyspace.
    pub async fn snapshot(&self) -> Result<SnapshotChunks> {
        let tmp = self
            .cfg
            .layout()
            .scratch(Scratch::Stream, &self.ids.next().to_string());
        let path = tmp.clone();
        // Removed however this ends: a failed export, a client gone mid-stream, the end.
        let cleanup = RemoveOnDrop(tmp.clone());
        let (_, revision) = self
            .blocking(move |s| s.export_etcd_to(&path).map_err(Error::from))
            .await?;
        // The revision the file holds, not whatever was applied since.
        let mut header = self.header_now();
        header.revision = revision;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _cleanup = cleanup;
            if let Err(e) = stream_snapshot_file(&tmp, header, &tx) {
                tracing::warn!(error = %e, "snapshot stream failed");
                let _ = tx.blocking_send(Err(to_status(&e)));
            }
        });
        Ok(rx)
    }

    pub async fn move_leader(&self, target: u64) -> Result<MoveLeaderResponse> {
        let st = self.raft_status();
        if st.leader_id != st.id {
            return Err(Error::NotLeader);
        }
        if !st.voters.contains(&target) {
            return Err(Error::BadLeaderTransferee);
        }
        if target != st.id {
            self.raft.transfer_leader(target).await?;
            let mut rx = self.raft.status();
            let wait = async { rx.wait_for(|s| s.leader_id == target).await.map(|_| ()) };
            tokio::time::timeout(self.request_timeout, wait)
                .await
                .map_err(|_| Error::Timeout)?
                .map_err(|_| Error::Stopped)?;
        }
        Ok(MoveLeaderResponse {
            header: Some(self.header_now()),
        })
    }
}

fn alarm_name(a: i32) -> &'static str {
    match a {
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "NONE",
    }
}

/// Sends `[bbolt file][sha256 of it]` in chunks, `remaining_bytes` counting down to 0. A bbolt
/// file is whole pages, so its length is a multiple of 512 as etcdctl requires.
fn stream_snapshot_file(
    path: &std::path::Path,
    header: ResponseHeader,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<()> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let total = len + snapshot_file::HASH_LEN;
    let mut hasher = Sha256::new();
    let mut sent: u64 = 0;
    let send = |blob: Vec<u8>, sent: &mut u64| -> Result<()> {
        *sent += blob.len() as u64;
        let msg = SnapshotResponse {
            header: Some(header),
            remaining_bytes: total - *sent,
            blob,
            version: ETCD_VERSION.to_string(),
        };
        tx.blocking_send(Ok(msg))
            .map_err(|_| Error::Io("snapshot client went away".into()))
    };
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        send(buf[..n].to_vec(), &mut sent)?;
    }
    if sent != len {
        return Err(Error::Io("snapshot file changed while streaming".into()));
    }
    send(hasher.finalize().to_vec(), &mut sent)?;
    Ok(())
}
