//! The lease requests of the server core. Grants and revokes are proposed; deadlines are the
//! leader's (the lessor), so a follower forwards keep-alives and TTL queries to the leader's
//! peer port.

use std::time::{Duration, Instant};

use ferrokv_proto::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

use super::EtcdServer;
use crate::apply::AuthInfo;
use crate::error::{Error, Result};

/// etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often a keep-alive that reached a fresh leader checks whether its lessor took over.
const LESSOR_PROMOTION_CHECK: Duration = Duration::from_millis(20);

/// The minimum TTL etcd grants: ceil(1.5 × election timeout) seconds, so a lease cannot
/// expire during a normal leader election.
pub fn min_ttl(election_timeout: Duration) -> i64 {
    let ms = election_timeout.as_millis() as i64 * 3 / 2;
    ((ms + 999) / 1000).max(1)
}

impl EtcdServer {
    pub async fn lease_grant(
        &self,
        mut req: LeaseGrantRequest,
        who: &AuthInfo,
    ) -> Result<LeaseGrantResponse> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        req.ttl = req.ttl.max(min_ttl(self.cfg.election_timeout));
        if req.id == 0 {
            // Positive, and unique per member (the generator is prefixed with our id).
            req.id = (self.ids.next() & (i64::MAX as u64)) as i64;
        }
        Ok(self.stamped(self.propose_within_quota(req, who).await?))
    }

    pub async fn lease_revoke(
        &self,
        req: LeaseRevokeRequest,
        who: &AuthInfo,
    ) -> Result<LeaseRevokeResponse> {
        Ok(self.stamped(self.propose_write(req, who).await?))
    }

    /// One keep-alive: renews on the leader, forwarded there from a follower.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        if !self.lessor.is_leader() {
            self.wait_leader().await?;
            let s = self.raft_status();
            if s.leader_id != s.id {
                return self.forward_keep_alive(id).await;
            }
            // Leader, but the expiry task has not promoted the lessor yet: wait for it briefly.
            let deadline = Instant::now() + self.request_timeout;
            while !self.lessor.is_leader() {
                if Instant::now() > deadline {
                    return Err(Error::Timeout);
                }
                tokio::time::sleep(LESSOR_PROMOTION_CHECK).await;
            }
        }
        let ttl = match self.lessor.renew(id) {
            Some(ttl) => ttl,
            None => {
                // Maybe granted but not applied here yet (a follower can apply before the
                // leader): catch up to the commit index, then decide.
                self.read_barrier().await?;
                self.lessor.renew(id).unwrap_or(0)
            }
        };
        if ttl > 0 {
            self.metrics.lease_renewed();
        }
        Ok(LeaseKeepAliveResponse {
            header: Some(self.header_now()),
            id,
            ttl,
        })
    }

    async fn forward_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        let mut client = LeaseClient::new(self.leader_channel().await?);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // Closing our side after one request makes the leader answer once and end the stream.
        let _ = tx.send(LeaseKeepAliveRequest { id }).await;
        drop(tx);
        let mut stream = client
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(resp) => Ok(resp),
            None => Err(Error::LeaderChanged),
        }
    }

    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        let st = self.raft_status();
        if st.leader_id != 0 && st.leader_id != st.id {
            // The remaining TTL is the leader's to know.
            let ch = self.leader_channel().await?;
            return Ok(LeaseClient::new(ch)
                .lease_time_to_live(req)
                .await?
                .into_inner());
        }
        let id = req.id;
        let (record, keys) = self
            .blocking(move |s| {
                let rec = s.lease(id)?;
                let keys = if req.keys && rec.is_some() {
                    s.lease_keys(id)?
                } else {
                    Vec::new()
                };
                Ok((rec, keys))
            })
            .await?;
        let header = Some(self.header_now());
        Ok(match record {
            None => LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(rec) => {
                let ttl = self
                    .lessor
                    .remaining(id)
                    .unwrap_or(if rec.remaining_ttl > 0 {
                        rec.remaining_ttl
                    } else {
                        rec.ttl
                    });
                LeaseTimeToLiveResponse {
                    header,
                    id,
                    ttl,
                    granted_ttl: rec.ttl,
                    keys,
                }
            }
        })
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        let list = self.blocking(|s| s.leases().map_err(Error::from)).await?;
        Ok(LeaseLeasesResponse {
            header: Some(self.header_now()),
            leases: list.into_iter().map(|l| LeaseStatus { id: l.id }).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_is_ceil_of_one_and_a_half_election_timeouts() {
        let rows = [(1000, 2), (100, 1), (2000, 3), (5000, 8), (10, 1)];
        for (ms, want) in rows {
            assert_eq!(min_ttl(Duration::from_millis(ms)), want, "{ms} ms");
        }
    }
}
