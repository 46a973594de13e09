//! The member list: kept in storage meta (so it is replicated state, rewritten in the same
//! transaction as the applied index), seeded at bootstrap from `--initial-cluster` and changed
//! only by applied raft entries (conf changes, member attributes).

use ferrokv_proto::etcdserverpb::{Member, MemberListResponse};
use ferrokv_proto::ferrokvpb::{ClusterMemberAttrSetRequest, ConfChangeContext};
use ferrokv_raftnode::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use ferrokv_storage::Store;
use prost::Message as _;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids;

pub const MEMBERS_KEY: &str = "members";
pub const CONF_STATE_KEY: &str = "confstate";

pub fn encode_members(members: &[Member]) -> Vec<u8> {
    MemberListResponse {
        header: None,
        members: members.to_vec(),
    }
    .encode_to_vec()
}

pub fn load(store: &Store) -> ferrokv_storage::Result<Vec<Member>> {
    match store.meta(MEMBERS_KEY)? {
        None => Ok(Vec::new()),
        Some(bytes) => MemberListResponse::decode(bytes.as_slice())
            .map(|l| l.members)
            .map_err(|e| ferrokv_storage::Error::Corrupt(format!("member list: {e}"))),
    }
}

pub fn encode_conf_state(cs: &ConfState) -> Result<Vec<u8>> {
    protobuf::Message::write_to_bytes(cs)
        .map_err(|e| Error::Fatal(format!("encode conf state: {e}")))
}

pub fn load_conf_state(store: &Store) -> Result<Option<ConfState>> {
    match store.meta(CONF_STATE_KEY)? {
        None => Ok(None),
        Some(bytes) => protobuf::Message::parse_from_bytes(&bytes)
            .map(Some)
            .map_err(|e| {
                Error::Storage(ferrokv_storage::Error::Corrupt(format!("conf state: {e}")))
            }),
    }
}

/// The initial members from `--initial-cluster` (a name may appear once per peer URL), with
/// etcd's ids. Client URLs are unknown until each member publishes its attributes, except
/// our own.
pub fn initial_members(cfg: &Config) -> Vec<Member> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (name, urls) in &cfg.initial_cluster {
        let urls: Vec<String> = urls.iter().map(url_string).collect();
        match grouped.iter_mut().find(|(n, _)| n == name) {
            Some((_, u)) => u.extend(urls),
            None => grouped.push((name.clone(), urls)),
        }
    }
    grouped
        .into_iter()
        .map(|(name, mut peer_urls)| {
            peer_urls.sort();
            let id = ids::member_id(&peer_urls, &cfg.initial_cluster_token);
            let client_urls = if name == cfg.name {
                cfg.advertise_client_urls.iter().map(url_string).collect()
            } else {
                Vec::new()
            };
            Member {
                id,
                name,
                peer_ur_ls: peer_urls,
                client_ur_ls: client_urls,
                is_learner: false,
            }
        })
        .collect()
}

/// `url::Url` renders `http://a:1` as `http://a:1/`; etcd's URLs carry no trailing slash, and
/// the ids hash the strings, so strip it.
pub fn url_string(u: &url::Url) -> String {
    let s = u.as_str();
    if u.path() == "/" && u.query().is_none() && u.fragment().is_none() {
        s.trim_end_matches('/').to_string()
    } else {
        s.to_string()
    }
}

pub fn with_attributes(mut list: Vec<Member>, attr: &ClusterMemberAttrSetRequest) -> Vec<Member> {
    let Some(a) = &attr.member_attributes else {
        return list;
    };
    if let Some(m) = list.iter_mut().find(|m| m.id == attr.member_id) {
        m.name = a.name.clone();
        m.client_ur_ls = a.client_urls.clone();
    }
    list
}

/// The raft conf change that applies `kind` to `member`, carrying the member in its context
/// so that every member's list follows raft's configuration in the same apply step.
pub fn conf_change(kind: ConfChangeType, member: Member) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = member.id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    cc.context = ConfChangeContext {
        member: Some(member),
    }
    .encode_to_vec()
    .into();
    cc
}

pub fn with_conf_change(
    mut list: Vec<Member>,
    kind: ConfChangeType,
    node_id: u64,
    ctx: Option<Member>,
) -> Vec<Member> {
    match kind {
        ConfChangeType::RemoveNode => list.retain(|m| m.id != node_id),
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let learner = kind == ConfChangeType::AddLearnerNode;
            match list.iter_mut().find(|m| m.id == node_id) {
                // Promotion, or an update of the peer URLs: keep what we know, take the role
                // and (when given) the peer URLs from the change.
                Some(m) => {
                    m.is_learner = learner;
                    if let Some(c) = ctx.filter(|c| !c.peer_ur_ls.is_empty()) {
                        m.peer_ur_ls = c.peer_ur_ls;
                    }
                }
                None => {
                    let mut m = ctx.unwrap_or_default();
                    m.id = node_id;
                    m.is_learner = learner;
                    list.push(m);
                }
            }
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_proto::ferrokvpb::Attributes;

    fn cfg(name: &str, cluster: &[(&str, &str)]) -> Config {
        let mut c = Config::with_defaults(name);
        c.initial_cluster_token = "tok-3".into();
        c.initial_cluster = cluster
            .iter()
            .map(|(n, u)| (n.to_string(), vec![url::Url::parse(u).unwrap()]))
            .collect();
        c
    }

    #[test]
    fn initial_members_group_urls_and_match_etcd_ids() {
        let c = cfg(
            "b",
            &[
                ("a", "http://127.0.0.1:23803"),
                ("b", "http://127.0.0.1:23802"),
                ("c", "http://127.0.0.1:23805"),
                ("c", "http://127.0.0.1:23804"),
            ],
        );
        let m = initial_members(&c);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].id, 0x46c721322e17faa7);
        assert_eq!(m[1].id, 0x6a31cf6e4527ef51);
        assert_eq!(m[1].client_ur_ls, vec!["http://localhost:2379".to_string()]);
        assert!(m[0].client_ur_ls.is_empty());
        assert_eq!(m[2].id, 0xbf30b490c0fd589a);
        assert_eq!(m[2].peer_ur_ls.len(), 2);
    }

    #[test]
    fn conf_changes_and_attributes() {
        let base = vec![Member {
            id: 1,
            name: "a".into(),
            ..Default::default()
        }];
        let l = with_conf_change(base, ConfChangeType::AddLearnerNode, 2, None);
        assert_eq!(l.len(), 2);
        assert!(l[1].is_learner);
        let l = with_conf_change(l, ConfChangeType::AddNode, 2, None);
        assert!(!l[1].is_learner);
        let l = with_attributes(
            l,
            &ClusterMemberAttrSetRequest {
                member_id: 2,
                member_attributes: Some(Attributes {
                    name: "b".into(),
                    client_urls: vec!["http://x:1".into()],
                }),
            },
        );
        assert_eq!(l[1].name, "b");
        let l = with_conf_change(l, ConfChangeType::RemoveNode, 1, None);
        assert_eq!(l.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn url_strings_have_no_trailing_slash() {
        assert_eq!(
            url_string(&url::Url::parse("http://127.0.0.1:2380").unwrap()),
            "http://127.0.0.1:2380"
        );
        assert_eq!(
            url_string(&url::Url::parse("https://h:1/").unwrap()),
            "https://h:1"
        );
    }
}
