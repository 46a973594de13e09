//! The reconfiguration policy: etcd's strict reconfiguration check and the validation of
//! peer URLs. Pure functions of the member list and the leader's view of raft progress, so
//! they are table-tested without a cluster. Must not depend on the gRPC layer.

use ferrokv_proto::etcdserverpb::Member;

use crate::error::{Error, Result};

/// A membership change, as etcd's strict reconfiguration check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconfig {
    AddVoter,
    AddLearner,
    Remove(u64),
    Promote(u64),
}

/// etcd allows one learner at a time.
const MAX_LEARNERS: usize = 1;

/// etcd's `--strict-reconfig-check` (on by default), decided on the leader from its view of
/// the members: a change is refused when it would leave the cluster without a working
/// quorum, or when the learner is not ready to vote. "Active" stands in for etcd's "started
/// and connected": the leader heard from the member within the last election timeout.
pub fn check_reconfig(
    change: Reconfig,
    members: &[Member],
    progress: &ferrokv_raftnode::Progress,
) -> Result<()> {
    let voters: Vec<u64> = members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let active = |id: &u64| progress.active.contains(id);
    let quorum = |n: usize| n / 2 + 1;
    match change {
        Reconfig::AddLearner | Reconfig::AddVoter => {
            // A new voter raises the quorum before it has any data, so every current voter
            // must be reachable; etcd asks the same before it adds a learner.
            if !voters.iter().all(active) {
                return Err(Error::Unhealthy);
            }
            if change == Reconfig::AddLearner
                && members.iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS
            {
                return Err(Error::TooManyLearners);
            }
        }
        Reconfig::Remove(id) => {
            if voters.contains(&id) {
                let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
                if rest.iter().filter(|v| active(v)).count() < quorum(rest.len()) {
                    return Err(Error::Unhealthy);
                }
            }
        }
        Reconfig::Promote(id) => {
            if !progress.is_caught_up(id) {
                // A voter that cannot keep up would only weaken the quorum.
                return Err(Error::LearnerNotReady);
            }
            if voters.iter().filter(|v| active(v)).count() + 1 < quorum(voters.len() + 1) {
                return Err(Error::NotEnoughStartedMembers);
            }
        }
    }
    Ok(())
}

/// Peer URLs must be absolute http(s) URLs with a host and port and no path.
pub fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| match url::Url::parse(u) {
            Ok(p) => {
                matches!(p.scheme(), "http" | "https")
                    && p.host_str().is_some()
                    && p.port().is_some()
                    && (p.path() == "/" || p.path().is_empty())
            }
            Err(_) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, learner: bool) -> Member {
        Member {
            id,
            is_learner: learner,
            ..Default::default()
        }
    }

    #[test]
    fn strict_reconfig_rules() {
        use ferrokv_raftnode::Progress;
        let three = vec![member(1, false), member(2, false), member(3, false)];
        let with_learner = vec![
            member(1, false),
            member(2, false),
            member(3, false),
            member(4, true),
        ];
        let all_up = Progress {
            last_index: 100,
            matched: vec![(1, 100), (2, 100), (3, 100), (4, 95)],
            active: vec![1, 2, 3, 4],
        };
        let three_down = Progress {
            active: vec![1, 2, 4],
            ..all_up.clone()
        };
        let two_down = Progress {
            active: vec![1, 4],
            ..all_up.clone()
        };
        let learner_behind = Progress {
            matched: vec![(1, 100), (2, 100), (3, 100), (4, 10)],
            ..all_up.clone()
        };
        type Row<'a> = (
            &'a str,
            Reconfig,
            &'a Vec<Member>,
            &'a Progress,
            Option<Error>,
        );
        let rows: Vec<Row> = vec![
            ("learner added", Reconfig::AddLearner, &three, &all_up, None),
            (
                "learner added, one voter down",
                Reconfig::AddLearner,
                &three,
                &three_down,
                Some(Error::Unhealthy),
            ),
            (
                "second learner",
                Reconfig::AddLearner,
                &with_learner,
                &all_up,
                Some(Error::TooManyLearners),
            ),
            (
                "voter added, all up",
                Reconfig::AddVoter,
                &three,
                &all_up,
                None,
            ),
            (
                "voter added, one voter down",
                Reconfig::AddVoter,
                &three,
                &three_down,
                Some(Error::Unhealthy),
            ),
            (
                "voter added, two voters down",
                Reconfig::AddVoter,
                &three,
                &two_down,
                Some(Error::Unhealthy),
            ),
            (
                "dead voter removed",
                Reconfig::Remove(3),
                &three,
                &three_down,
                None,
            ),
            (
                "live voter removed while another is down",
                Reconfig::Remove(2),
                &three,
                &three_down,
                Some(Error::Unhealthy),
            ),
            (
                "learner removed even without quorum",
                Reconfig::Remove(4),
                &with_learner,
                &two_down,
                None,
            ),
            (
                "caught-up learner promoted",
                Reconfig::Promote(4),
                &with_learner,
                &all_up,
                None,
            ),
            (
                "lagging learner promoted",
                Reconfig::Promote(4),
                &with_learner,
                &learner_behind,
                Some(Error::LearnerNotReady),
            ),
            (
                "learner promoted without quorum",
                Reconfig::Promote(4),
                &with_learner,
                &two_down,
                Some(Error::NotEnoughStartedMembers),
            ),
        ];
        for (name, change, members, progress, want) in rows {
            let got = check_reconfig(change, members, progress).err();
            assert_eq!(
                got.map(|e| e.to_string()),
                want.map(|e| e.to_string()),
                "{name}"
            );
        }
    }

    #[test]
    fn peer_url_validation() {
        let rows: Vec<(Vec<&str>, bool)> = vec![
            (vec!["http://10.0.0.1:2380"], true),
            (vec!["https://a.b:2380", "http://c:1"], true),
            (vec![], false),
            (vec!["10.0.0.1:2380"], false),
            (vec!["http://10.0.0.1"], false),
            (vec!["http://10.0.0.1:2380/path"], false),
            (vec!["ftp://h:1"], false),
        ];
        for (urls, ok) in rows {
            let urls: Vec<String> = urls.into_iter().map(String::from).collect();
            assert_eq!(valid_peer_urls(&urls), ok, "{urls:?}");
        }
    }
}
