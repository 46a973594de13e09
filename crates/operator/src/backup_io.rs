//! The one place the operator moves backup bytes: a member's `Maintenance.Snapshot` stream
//! into `ferrokv-backup`'s multipart upload, chunk by chunk, never the whole snapshot in
//! memory.

use crate::members::MemberClient;
use bytes::Bytes;
use futures::StreamExt;

/// Streams a snapshot of the member at `endpoint` to `dest` under `cluster`; the manifest
/// that `ferrokv-backup` writes after the object.
///
/// The revision is the one in the first response's header, which the member fills after it
/// took its consistent copy; the raft index is the member's applied index just before the
/// snapshot (a lower bound, for humans: restores go by revision).
pub async fn snapshot_to_store(
    members: &MemberClient,
    endpoint: &str,
    dest: &ferrokv_backup::Destination,
    cluster: &str,
    compression: ferrokv_backup::Compression,
    encryption: Option<&ferrokv_backup::Encryption>,
) -> Result<ferrokv_backup::Manifest, String> {
    let health = members.health(endpoint).await.map_err(|e| e.to_string())?;
    let mut client = members
        .streaming_client(endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .snapshot()
        .await
        .map_err(|e| format!("Snapshot via {endpoint}: {e}"))?;
    let first = stream
        .message()
        .await
        .map_err(|e| format!("Snapshot via {endpoint}: {e}"))?
        .ok_or_else(|| format!("Snapshot via {endpoint}: the member sent nothing"))?;
    let (cluster_id, member_id, revision) = first
        .header()
        .map_or((0, 0, 0), |h| (h.cluster_id(), h.member_id(), h.revision()));
    let head = Bytes::copy_from_slice(first.blob());
    let rest = futures::stream::unfold(stream, |mut s| async move {
        match s.message().await {
            Ok(Some(m)) => Some((Ok(Bytes::copy_from_slice(m.blob())), s)),
            Ok(None) => None,
            Err(e) => Some((Err(e), s)),
        }
    });
    let body = futures::stream::once(async move { Ok(head) }).chain(rest);
    let meta = ferrokv_backup::SnapshotMeta {
        cluster_id,
        member_id,
        revision,
        raft_index: health.raft_index,
    };
    ferrokv_backup::upload(dest, cluster, Box::pin(body), meta, compression, encryption)
        .await
        .map_err(|e| e.to_string())
}
