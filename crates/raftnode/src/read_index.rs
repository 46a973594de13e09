//! ReadIndex batching: every read request queued while the loop drains its inbox joins one raft
//! ReadIndex round with a unique context; the round's read state resolves all of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{Error, Result};

pub(crate) type ReadReply = oneshot::Sender<Result<u64>>;

struct Round {
    replies: Vec<ReadReply>,
    /// When each reply's request reached the raft thread (stage histogram).
    arrived: Vec<Instant>,
    started: Instant,
    last_sent: Instant,
}

/// What the loop must do with raft for the read rounds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadAction {
    /// Call `raw_node.read_index(ctx)`.
    Send(Vec<u8>),
}

pub(crate) struct ReadBatcher {
    id: u64,
    next_round: u64,
    queued: Vec<ReadReply>,
    queued_at: Vec<Instant>,
    in_flight: HashMap<Vec<u8>, Round>,
    /// Raft drops a ReadIndex silently (no leader at the follower, a leader that has not yet
    /// committed in its term), so a round is re-sent after this long...
    retry_after: Duration,
    /// ...and failed after this long.
    give_up_after: Duration,
}

impl ReadBatcher {
    pub(crate) fn new(id: u64, retry_after: Duration, give_up_after: Duration) -> Self {
        ReadBatcher {
            id,
            next_round: 0,
            queued: Vec::new(),
            queued_at: Vec::new(),
            in_flight: HashMap::new(),
            retry_after,
            give_up_after,
        }
    }

    pub(crate) fn queue(&mut self, reply: ReadReply, at: Instant) {
        self.queued.push(reply);
        self.queued_at.push(at);
    }

    /// Turns everything queued into one round. `has_leader` false fails them at once: raft would
    /// drop the request and the caller would only learn it after the timeout.
    pub(crate) fn start_round(&mut self, has_leader: bool, now: Instant) -> Option<ReadAction> {
        if self.queued.is_empty() {
            return None;
        }
        let replies = std::mem::take(&mut self.queued);
        let arrived = std::mem::take(&mut self.queued_at);
        if !has_leader {
            fail_all(replies, || Error::ProposalDropped);
            return None;
        }
        self.next_round += 1;
        // The node id makes the context unique across the cluster: the leader keys pending
        // reads by context, and followers forward theirs to it.
        let mut ctx = Vec::with_capacity(16);
        ctx.extend_from_slice(&self.id.to_be_bytes());
        ctx.extend_from_slice(&self.next_round.to_be_bytes());
        self.in_flight.insert(
            ctx.clone(),
            Round {
                replies,
                arrived,
                started: now,
                last_sent: now,
            },
        );
        Some(ReadAction::Send(ctx))
    }

    /// A read state came out of a Ready.
    pub(crate) fn resolve(&mut self, ctx: &[u8], index: u64) {
        if let Some(round) = self.in_flight.remove(ctx) {
            for at in &round.arrived {
                crate::stages::READ_INDEX_ROUND.observe(at.elapsed());
            }
            for r in round.replies {
                let _ = r.send(Ok(index));
            }
        }
    }

    /// Re-sends rounds that got no answer and fails those that waited too long.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Vec<ReadAction> {
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        for (ctx, round) in self.in_flight.iter_mut() {
            if now.duration_since(round.started) >= self.give_up_after {
                expired.push(ctx.clone());
            } else if now.duration_since(round.last_sent) >= self.retry_after {
                round.last_sent = now;
                resend.push(ReadAction::Send(ctx.clone()));
            }
        }
        for ctx in expired {
            if let Some(round) = self.in_flight.remove(&ctx) {
                fail_all(round.replies, || Error::ProposalDropped);
            }
        }
        resend
    }

    /// The leader changed or is gone: nothing in flight can be trusted to come back.
    pub(crate) fn fail_in_flight(&mut self) {
        for (_, round) in self.in_flight.drain() {
            fail_all(round.replies, || Error::ProposalDropped);
        }
    }

    pub(crate) fn fail_everything(&mut self, err: fn() -> Error) {
        self.queued_at.clear();
        fail_all(std::mem::take(&mut self.queued), err);
        for (_, round) in self.in_flight.drain() {
            fail_all(round.replies, err);
        }
    }
}

fn fail_all(replies: Vec<ReadReply>, err: impl Fn() -> Error) {
    for r in replies {
        let _ = r.send(Err(err()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_round_resolves_every_queued_reader() {
        let mut b = ReadBatcher::new(7, ms(20), ms(100));
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        b.queue(tx1, Instant::now());
        b.queue(tx2, Instant::now());
        let now = Instant::now();
        let Some(ReadAction::Send(ctx)) = b.start_round(true, now) else {
            panic!("expected a round");
        };
        assert_eq!(&ctx[..8], &7u64.to_be_bytes());
        assert_eq!(b.start_round(true, now), None, "nothing queued any more");
        b.resolve(&ctx, 42);
        assert_eq!(rx1.try_recv().unwrap().unwrap(), 42);
        assert_eq!(rx2.try_recv().unwrap().unwrap(), 42);
    }

    #[test]
    fn rounds_get_distinct_contexts() {
        let mut b = ReadBatcher::new(1, ms(20), ms(100));
        let now = Instant::now();
        let mut ctxs = Vec::new();
        for _ in 0..3 {
            let (tx, _rx) = oneshot::channel();
            b.queue(tx, Instant::now());
            let Some(ReadAction::Send(ctx)) = b.start_round(true, now) else {
                panic!("expected a round");
            };
            ctxs.push(ctx);
        }
        ctxs.dedup();
        assert_eq!(ctxs.len(), 3);
    }

    #[test]
    fn no_leader_fails_at_once() {
        let mut b = ReadBatcher::new(1, ms(20), ms(100));
        let (tx, mut rx) = oneshot::channel();
        b.queue(tx, Instant::now());
        assert_eq!(b.start_round(false, Instant::now()), None);
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(Error::ProposalDropped)
        ));
    }

    #[test]
    fn unanswered_rounds_are_resent_then_failed() {
        let mut b = ReadBatcher::new(1, ms(20), ms(100));
        let (tx, mut rx) = oneshot::channel();
        b.queue(tx, Instant::now());
        let t0 = Instant::now();
        let Some(ReadAction::Send(ctx)) = b.start_round(true, t0) else {
            panic!("expected a round");
        };
        // (elapsed, expected resends, reply expected to be failed by then)
        let table: &[(u64, usize, bool)] = &[
            (10, 0, false),
            (25, 1, false),
            (30, 0, false),
            (100, 0, true),
        ];
        for &(at, resends, failed) in table {
            let acts = b.on_tick(t0 + ms(at));
            assert_eq!(acts.len(), resends, "at {at}ms");
            if resends > 0 {
                assert_eq!(acts[0], ReadAction::Send(ctx.clone()));
            }
            assert_eq!(rx.try_recv().is_ok(), failed, "at {at}ms");
        }
    }

    #[test]
    fn leader_loss_fails_in_flight() {
        let mut b = ReadBatcher::new(1, ms(20), ms(100));
        let (tx, mut rx) = oneshot::channel();
        b.queue(tx, Instant::now());
        b.start_round(true, Instant::now());
        b.fail_in_flight();
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(Error::ProposalDropped)
        ));
    }
}
