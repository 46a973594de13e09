//! The one place the operator moves backup bytes: a member's `Maintenance.Snapshot` stream
//! into `ferrokv-backup`'s multipart upload, chunk by chunk, never the whole snapshot in
//! memory.

use crate::members::MemberClient;
use bytes::Bytes;
use futures::StreamExt;

/// What the source member said about the keyspace at the backup's revision, for the drill.
pub struct Counted {
    pub keys: Option<i64>,
    pub hash_kv: Option<u32>,
}

/// Streams a snapshot of the member at `endpoint` to `dest` under `cluster`; the manifest
/// that `ferrokv-backup` writes after the object, and the key count and HashKV at its
/// revision on the same member (`None` where the member could not say, e.g. compacted).
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
) -> Result<(ferrokv_backup::Manifest, Counted), String> {
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
    let manifest =
        ferrokv_backup::upload(dest, cluster, Box::pin(body), meta, compression, encryption)
            .await
            .map_err(|e| e.to_string())?;
    let ask = async {
        let count = client
            .get(
                vec![0u8],
                Some(
                    etcd_client::GetOptions::new()
                        .with_from_key()
                        .with_count_only()
                        .with_revision(manifest.revision),
                ),
            )
            .await
            .ok()
            .map(|r| r.count());
        let hash = client
            .hash_kv(manifest.revision)
            .await
            .ok()
            .map(|h| h.hash());
        Counted {
            keys: count,
            hash_kv: hash,
        }
    };
    let counted = tokio::time::timeout(std::time::Duration::from_secs(30), ask)
        .await
        .unwrap_or(Counted {
            keys: None,
            hash_kv: None,
        });
    Ok((manifest, counted))
}
