//! Automatic compaction (`--auto-compaction-mode` / `--auto-compaction-retention`), run by the
//! leader only and replicated as an ordinary Compaction entry, like etcd's compactor.
//!
//! - revision mode: every 5 minutes, compact to `current - retention`;
//! - periodic mode: sample the revision every `retention / 10` and compact to the newest
//!   sample that is at least `retention` old (etcd's periodic compactor; retentions above an
//!   hour are still checked hourly-ish through the same sampling).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::etcdserverpb::CompactionRequest;
use tokio::sync::watch;

use super::EtcdServer;
use crate::config::AutoCompaction;

const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);

/// The revision to compact to in revision mode, if any.
pub fn revision_target(current: i64, compacted: i64, retention: i64) -> Option<i64> {
    let target = current - retention;
    (target > compacted && target > 0).then_some(target)
}

/// Periodic mode: revision samples (oldest first) and the retention window.
#[derive(Default)]
pub struct Samples {
    samples: VecDeque<(Instant, i64)>,
}

impl Samples {
    pub fn record(&mut self, at: Instant, revision: i64) {
        self.samples.push_back((at, revision));
    }

    /// The newest sampled revision at least `retention` old; older samples are dropped.
    pub fn due(&mut self, now: Instant, retention: Duration) -> Option<i64> {
        let mut target = None;
        while let Some(&(at, rev)) = self.samples.front() {
            if now.duration_since(at) >= retention {
                target = Some(rev);
                self.samples.pop_front();
            } else {
                break;
            }
        }
        target
    }
}

pub async fn run(core: Arc<EtcdServer>, mode: AutoCompaction, mut stop: watch::Receiver<bool>) {
    let tick = match &mode {
        AutoCompaction::Revision(_) => REVISION_MODE_INTERVAL,
        AutoCompaction::Periodic(d) => (*d / 10).max(Duration::from_millis(100)),
    };
    let mut samples = Samples::default();
    let mut ticker = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = crate::stop::until_stopped(&mut stop) => return,
            _ = ticker.tick() => {}
        }
        let current = core.store.current_revision();
        let compacted = core.store.compacted_revision();
        let target = match &mode {
            AutoCompaction::Revision(keep) => revision_target(current, compacted, *keep),
            AutoCompaction::Periodic(retention) => {
                let now = Instant::now();
                samples.record(now, current);
                samples.due(now, *retention).filter(|t| *t > compacted)
            }
        };
        let st = core.raft_status();
        if st.leader_id == 0 || st.leader_id != st.id {
            continue;
        }
        if let Some(revision) = target {
            tracing::info!(revision, "auto compaction");
            let req = CompactionRequest {
                revision,
                physical: false,
            };
            if let Err(e) = core.propose(req).await {
                tracing::warn!(revision, error = %e, "auto compaction failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_targets() {
        let rows = [
            // current, compacted, retention, want
            (100, 0, 10, Some(90)),
            (100, 90, 10, None),
            (5, 0, 10, None),
            (100, 50, 10, Some(90)),
            (11, 0, 10, Some(1)),
        ];
        for (cur, comp, keep, want) in rows {
            assert_eq!(
                revision_target(cur, comp, keep),
                want,
                "{cur} {comp} {keep}"
            );
        }
    }

    #[test]
    fn periodic_mode_compacts_to_newest_old_enough_sample() {
        let t0 = Instant::now();
        let mut s = Samples::default();
        let r = Duration::from_secs(10);
        s.record(t0, 5);
        s.record(t0 + Duration::from_secs(1), 8);
        s.record(t0 + Duration::from_secs(5), 20);
        assert_eq!(s.due(t0 + Duration::from_secs(9), r), None);
        assert_eq!(s.due(t0 + Duration::from_secs(11), r), Some(8));
        assert_eq!(s.due(t0 + Duration::from_secs(12), r), None);
        assert_eq!(s.due(t0 + Duration::from_secs(15), r), Some(20));
    }
}
