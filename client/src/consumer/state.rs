//! The push consumer's shared state: which queues it holds, in which phase, and how far it
//! has consumed each — one struct behind one lock (`Inner::state`).
//!
//! # Why one lock, and not a task owning it
//! Three kinds of caller share this state: the control task (rebalance, commits), every queue
//! task (is my queue still mine? record progress after each listener call) and the
//! application through [`super::PushConsumer::assigned`], a plain (not `async`) function that
//! must answer at once. A task owning the state would need a channel round trip for each
//! batch's progress and could not serve `assigned` without blocking; the state is small and
//! every operation on it is a lookup or an edit of one map entry. So: one `std::sync::Mutex`,
//! taken only through `Inner::state(|s| …)` — a closure, so nothing can await while it is
//! held — and only to call the plain methods below (no I/O in them).
//!
//! What only the control task needs (the queue tasks' join handles, the member lists, its
//! timers) is not here: the control task owns it and passes it by `&mut`.
//!
//! # Invariants
//! - A queue's recorded offset only moves forward ([`State::record`] refuses a move back,
//!   see [`crate::policy::offsets`]); [`State::restart_at`] is the one explicit rewind.
//! - A queue is listed by `assigned` from [`State::begin`] until [`State::released`] (its
//!   task has finished the batch in hand and, orderly, its broker lock is given back).
//! - Progress is kept until [`State::forget`] (after the final commit), so nothing but this
//!   member's last commit writes a queue it let go.

use std::collections::{BTreeMap, BTreeSet};

use raftmq_types::QueueOffset;
use tokio::task::JoinHandle;

use crate::policy::offsets::{Backwards, advance};
use crate::rebalance::MessageQueue;

/// The queue tasks' join handles, owned by the control task (returned to `shutdown` when it
/// ends).
pub(super) type Tasks = BTreeMap<MessageQueue, JoinHandle<()>>;

/// Where a held queue is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its task pulls and delivers.
    Consuming,
    /// Let go: its task finishes the batch in hand, then stops.
    Releasing,
    /// Its task has stopped (and, orderly, its lock is given back); only the final commit of
    /// its progress is left.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    phase: Phase,
    /// The next offset to consume: what a commit records.
    next: QueueOffset,
}

/// The push consumer's shared state (see the module docs).
#[derive(Debug, Default)]
pub(super) struct State {
    queues: BTreeMap<MessageQueue, Slot>,
    /// The control task, while the consumer runs; it hands back the queue tasks when it ends.
    pub(super) control: Option<JoinHandle<Tasks>>,
}

impl State {
    /// Queues held: consuming, or finishing their last batch.
    pub(super) fn assigned(&self) -> Vec<MessageQueue> {
        self.queues
            .iter()
            .filter(|(_, s)| s.phase != Phase::Released)
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// Queues being consumed (what a rebalance compares its new share with).
    pub(super) fn consuming(&self) -> BTreeSet<MessageQueue> {
        self.queues
            .iter()
            .filter(|(_, s)| s.phase == Phase::Consuming)
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// Whether `q`'s task should go on.
    pub(super) fn is_consuming(&self, q: &MessageQueue) -> bool {
        self.queues
            .get(q)
            .is_some_and(|s| s.phase == Phase::Consuming)
    }

    /// Starts consuming `q` at `start` (its task is spawned after this, so it finds its slot).
    pub(super) fn begin(&mut self, q: MessageQueue, start: QueueOffset) {
        let slot = Slot {
            phase: Phase::Consuming,
            next: start,
        };
        self.queues.insert(q, slot);
    }

    /// Records that `q` was consumed up to (not including) `to`. A move back is refused and
    /// the recorded offset kept. A queue not held is ignored.
    pub(super) fn record(&mut self, q: &MessageQueue, to: QueueOffset) -> Result<(), Backwards> {
        if let Some(s) = self.queues.get_mut(q) {
            s.next = advance(s.next, to)?;
        }
        Ok(())
    }

    /// Moves `q`'s recorded offset to `offset`, back if need be: the consumer restarts at the
    /// end of a queue that was recreated (see [`crate::policy::offsets::PullStep`]).
    pub(super) fn restart_at(&mut self, q: &MessageQueue, offset: QueueOffset) {
        if let Some(s) = self.queues.get_mut(q) {
            s.next = offset;
        }
    }

    /// Lets go of `qs`: their tasks stop after the batch in hand. Returns those that were
    /// being consumed.
    pub(super) fn release(&mut self, qs: &[MessageQueue]) -> Vec<MessageQueue> {
        let mut out = Vec::new();
        for q in qs {
            if let Some(s) = self.queues.get_mut(q)
                && s.phase == Phase::Consuming
            {
                s.phase = Phase::Releasing;
                out.push(q.clone());
            }
        }
        out
    }

    /// `q`'s task has stopped (orderly: its lock is given back): no longer held.
    pub(super) fn released(&mut self, q: &MessageQueue) {
        if let Some(s) = self.queues.get_mut(q) {
            s.phase = Phase::Released;
        }
    }

    /// The recorded progress of `qs` (of every queue if `None`), to commit.
    pub(super) fn progress(
        &self,
        qs: Option<&[MessageQueue]>,
    ) -> BTreeMap<MessageQueue, QueueOffset> {
        match qs {
            None => self
                .queues
                .iter()
                .map(|(q, s)| (q.clone(), s.next))
                .collect(),
            Some(qs) => qs
                .iter()
                .filter_map(|q| Some((q.clone(), self.queues.get(q)?.next)))
                .collect(),
        }
    }

    /// Forgets `qs` after their final commit: a later periodic commit must not write this
    /// member's old position over the progress of the member that took them.
    pub(super) fn forget(&mut self, qs: &[MessageQueue]) {
        for q in qs {
            debug_assert!(
                self.queues
                    .get(q)
                    .is_none_or(|s| s.phase == Phase::Released),
                "{q:?} forgotten while its task may still record progress"
            );
            self.queues.remove(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(i: u32) -> MessageQueue {
        MessageQueue::new("T", "g1", i)
    }

    #[test]
    fn a_queue_is_held_from_begin_until_released() {
        let mut s = State::default();
        s.begin(q(0), QueueOffset(5));
        s.begin(q(1), QueueOffset(0));
        assert_eq!(s.assigned(), [q(0), q(1)]);
        assert!(s.is_consuming(&q(0)));
        assert_eq!(
            s.release(&[q(0), q(7)]),
            [q(0)],
            "only held queues are let go"
        );
        assert!(!s.is_consuming(&q(0)), "its task stops");
        assert_eq!(s.assigned(), [q(0), q(1)], "still finishing its batch");
        assert_eq!(s.consuming(), [q(1)].into());
        s.released(&q(0));
        assert_eq!(s.assigned(), [q(1)]);
        assert_eq!(s.release(&[q(0)]), [], "released once");
    }

    #[test]
    fn progress_only_moves_forward() {
        let mut s = State::default();
        s.begin(q(0), QueueOffset(5));
        assert_eq!(s.record(&q(0), QueueOffset(9)), Ok(()));
        assert_eq!(s.record(&q(0), QueueOffset(9)), Ok(()));
        assert!(s.record(&q(0), QueueOffset(7)).is_err());
        assert_eq!(s.progress(None)[&q(0)], QueueOffset(9), "kept");
        s.restart_at(&q(0), QueueOffset(2));
        assert_eq!(
            s.progress(None)[&q(0)],
            QueueOffset(2),
            "the explicit rewind"
        );
        assert_eq!(s.record(&q(3), QueueOffset(1)), Ok(()), "not held: ignored");
        assert!(!s.progress(None).contains_key(&q(3)));
    }

    #[test]
    fn a_released_queue_is_committed_once_then_forgotten() {
        let mut s = State::default();
        s.begin(q(0), QueueOffset(5));
        s.begin(q(1), QueueOffset(8));
        s.release(&[q(0)]);
        s.record(&q(0), QueueOffset(6)).unwrap();
        s.released(&q(0));
        assert_eq!(
            s.progress(Some(&[q(0)])),
            [(q(0), QueueOffset(6))].into(),
            "the final commit has its last batch"
        );
        s.forget(&[q(0)]);
        assert_eq!(s.progress(None), [(q(1), QueueOffset(8))].into());
        assert!(s.progress(Some(&[q(0)])).is_empty());
    }

    #[test]
    fn a_queue_taken_again_starts_afresh() {
        let mut s = State::default();
        s.begin(q(0), QueueOffset(9));
        s.release(&[q(0)]);
        s.released(&q(0));
        s.begin(q(0), QueueOffset(3));
        assert!(s.is_consuming(&q(0)));
        assert_eq!(s.progress(None)[&q(0)], QueueOffset(3));
    }
}
