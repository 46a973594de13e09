//! Bootstrap step "who am I": the member id and cluster id, from the WAL on restart, from a
//! peer when joining an existing cluster, from the flags on first boot; and the member list
//! the keyspace starts with.

use std::time::Duration;

use ferrokv_proto::etcdserverpb::{cluster_client::ClusterClient, Member, MemberListRequest};
use ferrokv_storage::Store;

use crate::apply::membership;
use crate::config::{ClusterState, Config};
use crate::error::{Error, Result};
use crate::ids;
use crate::peer::{connect_peer, peer_client_tls};

/// Who this member is, and how it starts.
pub(super) struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    /// First boot of a new cluster: raft starts with the initial voters.
    pub bootstrap: bool,
    /// First boot of a member added to a running cluster.
    pub join_existing: bool,
    /// The members of `--initial-cluster` (the bootstrap membership).
    pub initial: Vec<Member>,
}

/// Recovers (restart) or establishes (first boot) this member's identity, and seeds the
/// keyspace's member list on first boot.
pub(super) async fn recover_identity(cfg: &Config, store: &Store) -> Result<Identity> {
    let initial = membership::initial_members(cfg);
    let existing_wal = ferrokv_raftnode::read_wal_metadata(&cfg.member_dir())?;
    let own_peer_urls: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(membership::url_string)
        .collect();
    let joining = cfg.initial_cluster_state == ClusterState::Existing;
    let (member_id, cluster_id) = match &existing_wal {
        Some(meta) => decode_wal_metadata(meta)?,
        None if joining => {
            // Joining: the cluster already added us (MemberAdd); learn our id, the cluster
            // id and the member list from a peer, as etcd does.
            let (id, cid, members) = fetch_membership(cfg, &own_peer_urls).await?;
            seed_members(store, &members)?;
            (id, cid)
        }
        None => {
            let id = ids::member_id(&own_peer_urls, &cfg.initial_cluster_token);
            if !initial.iter().any(|m| m.id == id) {
                return Err(Error::Config(format!(
                    "--initial-cluster has no member with this member's peer URLs {own_peer_urls:?}"
                )));
            }
            (
                id,
                ids::cluster_id(&initial.iter().map(|m| m.id).collect::<Vec<_>>()),
            )
        }
    };
    let bootstrap = existing_wal.is_none() && !joining;
    if bootstrap {
        seed_members(store, &initial)?;
    }
    tracing::info!(
        member_id = format!("{member_id:x}"),
        cluster_id = format!("{cluster_id:x}"),
        bootstrap,
        "starting member"
    );
    Ok(Identity {
        member_id,
        cluster_id,
        bootstrap,
        join_existing: existing_wal.is_none() && joining,
        initial,
    })
}

/// Writes the first member list, unless the keyspace already has one (a restart after a
/// crash between this write and the first WAL record).
fn seed_members(store: &Store, members: &[Member]) -> Result<()> {
    if store.meta(membership::MEMBERS_KEY)?.is_none() {
        let mut batch = store.write_batch()?;
        batch.set_meta(
            membership::MEMBERS_KEY,
            &membership::encode_members(members),
        )?;
        // A cluster this version bootstraps writes etcd's entry format from the start: its
        // initial members are all of this version (`apply::entry_gate`).
        batch.set_meta(
            crate::apply::entry_gate::ENTRY_FORMAT_META_KEY,
            &crate::apply::GateState::bootstrapped().encode(),
        )?;
        batch.commit(true)?;
    }
    Ok(())
}

/// WAL metadata: who this member is, so a restart needs no flags to find out. etcd's
/// `etcdserverpb.Metadata` (the WAL crate converts the metadata of older ferrokv WALs).
pub(super) fn encode_wal_metadata(member_id: u64, cluster_id: u64) -> Vec<u8> {
    ferrokv_wal::encode_metadata(member_id, cluster_id)
}

fn decode_wal_metadata(b: &[u8]) -> Result<(u64, u64)> {
    match ferrokv_wal::decode_metadata(b) {
        Ok((0, _)) => Err(Error::Config("WAL metadata has no member id".into())),
        Ok(ids) => Ok(ids),
        Err(e) => Err(Error::Config(format!("WAL metadata: {e}"))),
    }
}

/// For a joining member: (own id, cluster id, member list) from the first peer that answers.
async fn fetch_membership(
    cfg: &Config,
    own_peer_urls: &[String],
) -> Result<(u64, u64, Vec<Member>)> {
    let tls = peer_client_tls(&cfg.peer_tls)?;
    let mut own: Vec<String> = own_peer_urls.to_vec();
    own.sort();
    let targets: Vec<String> = cfg
        .initial_cluster
        .iter()
        .flat_map(|(_, urls)| urls.iter().map(membership::url_string))
        .filter(|u| !own.contains(u))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for url in &targets {
            let Ok(ch) = connect_peer(url, tls.as_ref()).await else {
                continue;
            };
            let req = MemberListRequest {
                linearizable: false,
            };
            let Ok(resp) = ClusterClient::new(ch).member_list(req).await else {
                continue;
            };
            let resp = resp.into_inner();
            let cluster_id = resp.header.map(|h| h.cluster_id).unwrap_or(0);
            let me = resp.members.iter().find(|m| {
                let mut urls = m.peer_ur_ls.clone();
                urls.sort();
                urls == own
            });
            return match me {
                Some(m) => Ok((m.id, cluster_id, resp.members.clone())),
                None => Err(Error::Config(format!(
                    "this member (peer URLs {own:?}) has not been added to the cluster (etcdctl member add)"
                ))),
            };
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Config(format!(
                "cannot fetch the member list from any peer of {targets:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_metadata_round_trip() {
        let b = encode_wal_metadata(0xdead_beef, 42);
        assert_eq!(decode_wal_metadata(&b).unwrap(), (0xdead_beef, 42));
        assert!(decode_wal_metadata(&b[..b.len() - 1]).is_err());
    }
}
