//! The Maintenance service: status, hashes, alarms, leader transfer and the snapshot stream.

use ferrokv_datadir::Scratch;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use ferrokv_proto::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmRequest, AlarmResponse,
    DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use ferrokv_proto::ferrokvpb::internal_request::Request as Internal;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::error::{to_status, Error};
use crate::etcdserver::{Core, DEFAULT_QUOTA_BYTES, ETCD_VERSION};
use crate::snapshot_file::{self, RemoveOnDrop};

const SNAPSHOT_CHUNK: usize = 32 * 1024;

#[derive(Clone)]
pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    pub fn new(core: Arc<Core>) -> Self {
        MaintenanceService { core }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.core.metrics.request("Alarm");
        let req = req.into_inner();
        let mut resp = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) | Err(_) => AlarmResponse {
                header: None,
                alarms: self.core.alarms.list(),
            },
            Ok(_) => match self
                .core
                .propose(Internal::Alarm(req))
                .await
                .map_err(|e| to_status(&e))?
            {
                Applied::Alarm(resp) => resp,
                _ => {
                    return Err(to_status(&Error::Fatal(
                        "unexpected apply result for alarm".into(),
                    )))
                }
            },
        };
        resp.header = Some(self.core.header_now());
        Ok(Response::new(resp))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.core.metrics.request("Status");
        let (db_size, db_in_use) = self
            .core
            .blocking(|s| s.db_size().map_err(Error::from))
            .await
            .map_err(|e| to_status(&e))?;
        let st = self.core.status();
        let quota = match self.core.cfg.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            q => q as i64,
        };
        let errors = self
            .core
            .alarms
            .list()
            .iter()
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
            .collect();
        Ok(Response::new(StatusResponse {
            header: Some(self.core.header_now()),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: st.leader_id,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: *self.core.applied.borrow(),
            errors,
            db_size_in_use: db_in_use,
            is_learner: st.is_learner,
            storage_version: "3.6.0".to_string(),
            db_size_quota: quota,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.core.metrics.request("Defragment");
        // redb reuses freed pages itself; there is nothing to rewrite.
        Ok(Response::new(DefragmentResponse {
            header: Some(self.core.header_now()),
        }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.core.metrics.request("Hash");
        let hash = self
            .core
            .blocking(|s| s.hash().map_err(Error::from))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(HashResponse {
            header: Some(self.core.header_now()),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.core.metrics.request("HashKV");
        let rev = req.into_inner().revision;
        let (hash, compact_revision, hash_revision) = self
            .core
            .blocking(move |s| s.hash_kv(rev).map_err(Error::from))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.core.header_now()),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.core.metrics.request("Snapshot");
        let tmp = self
            .core
            .cfg
            .layout()
            .scratch(Scratch::Stream, &self.core.ids.next().to_string());
        let path = tmp.clone();
        self.core
            .blocking(move |s| s.snapshot_to(&path).map_err(Error::from))
            .await
            .map_err(|e| to_status(&e))?;
        let header = self.core.header_now();
        let (tx, rx) = mpsc::channel::<Result<SnapshotResponse, Status>>(4);
        // The file is read and hashed on a blocking thread; a bounded channel keeps at most a
        // few chunks in memory however large the keyspace.
        tokio::task::spawn_blocking(move || {
            let _cleanup = RemoveOnDrop(tmp.clone());
            if let Err(e) = stream_snapshot_file(&tmp, header, &tx) {
                tracing::warn!(error = %e, "snapshot stream failed");
                let _ = tx.blocking_send(Err(to_status(&e)));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.core.metrics.request("MoveLeader");
        let target = req.into_inner().target_id;
        let st = self.core.status();
        if st.leader_id != st.id {
            return Err(to_status(&Error::NotLeader));
        }
        if !st.voters.contains(&target) {
            return Err(to_status(&Error::BadLeaderTransferee));
        }
        if target != st.id {
            self.core
                .raft
                .transfer_leader(target)
                .await
                .map_err(|e| to_status(&e.into()))?;
            let mut rx = self.core.raft.status();
            let wait = async { rx.wait_for(|s| s.leader_id == target).await.map(|_| ()) };
            tokio::time::timeout(self.core.request_timeout, wait)
                .await
                .map_err(|_| to_status(&Error::Timeout))?
                .map_err(|_| to_status(&Error::Stopped))?;
        }
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.core.header_now()),
        }))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(to_status(&Error::Unimplemented("Downgrade")))
    }
}

fn alarm_name(a: i32) -> &'static str {
    match a {
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "NONE",
    }
}

/// Sends `[file][zero padding][trailer][sha256]` in chunks, `remaining_bytes` counting down to 0.
fn stream_snapshot_file(
    path: &std::path::Path,
    header: ferrokv_proto::etcdserverpb::ResponseHeader,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> crate::error::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let total = snapshot_file::framed_len(len);
    let mut tail = vec![0u8; snapshot_file::padding_len(len) as usize];
    tail.extend_from_slice(&snapshot_file::trailer(len));
    let mut hasher = Sha256::new();
    let mut sent: u64 = 0;
    let send = |blob: Vec<u8>, sent: &mut u64| -> crate::error::Result<()> {
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
    hasher.update(&tail);
    for chunk in tail.chunks(SNAPSHOT_CHUNK) {
        send(chunk.to_vec(), &mut sent)?;
    }
    send(hasher.finalize().to_vec(), &mut sent)?;
    Ok(())
}
