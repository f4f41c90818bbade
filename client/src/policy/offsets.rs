//! Offset rules: where a consumer starts on a queue, what it records (and so commits) as it
//! consumes, and what it does when a queue answers `OFFSET_OUT_OF_RANGE`.
//!
//! Used by the push consumer (`consumer::control`, `consumer::queue`, `consumer::state`) and
//! the lite pull consumer; they do the I/O and call these for every decision.
//!
//! Invariants these rules keep:
//! - **A queue's recorded offset only moves forward** while this member holds the queue:
//!   [`advance`] refuses to move it back (a typed refusal, [`Backwards`]). The offsets come
//!   from a broker's answer, so a backward one is a fault of the broker or the network, not of
//!   this process: it is refused and logged, never asserted on (an application's process must
//!   not die of a broker's bug) and never recorded (it would redeliver messages). The two
//!   rewinds are explicit and separate: [`PullStep::RestartAtEnd`] (a queue that stayed "past
//!   the end" for the whole patience was recreated) and the lite pull consumer's `seek`.
//! - **A lagging replica never moves an offset back**: past the end of a queue means the
//!   replica answering is behind (a follower, or a new leader still applying), so the consumer
//!   waits for it ([`PullStep::WaitForReplica`]) instead of restarting at its end.
//! - A queue a member let go is forgotten after its final commit (see `consumer::state`): a
//!   later periodic commit must not write the old position over the new owner's progress.

use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_types::QueueOffset;

/// Where a group that never committed on a queue starts: an input of the offset rules, public
/// as `raftmq_client::consumer::ConsumeFrom`.
///
/// ```
/// use raftmq_client::consumer::ConsumeFrom;
/// assert_eq!(ConsumeFrom::default(), ConsumeFrom::Last);
/// let _yesterday = ConsumeFrom::Timestamp(1_700_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeFrom {
    /// The oldest retained message.
    First,
    /// Only messages arriving from now on.
    #[default]
    Last,
    /// The first message stored at or after this time (ms since the Unix epoch).
    Timestamp(u64),
}

/// Where to start on a queue just taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At the group's stored progress (committed on the brokers, or in the local file).
    At(QueueOffset),
    /// Nothing stored: ask the queue for its bounds (and for the first offset at or after
    /// `timestamp_ms`, when asked), then start where [`start_in_queue`] says.
    AskQueue { timestamp_ms: Option<u64> },
}

/// Where a group starts on a queue: its stored progress if there is one (whatever
/// `from` says: `from` is only for a group new to the queue), else per `from`.
pub(crate) fn start(stored: Option<QueueOffset>, from: ConsumeFrom) -> Start {
    match (stored, from) {
        (Some(o), _) => Start::At(o),
        (None, ConsumeFrom::Timestamp(t)) => Start::AskQueue {
            timestamp_ms: Some(t),
        },
        (None, ConsumeFrom::First | ConsumeFrom::Last) => Start::AskQueue { timestamp_ms: None },
    }
}

/// A queue's bounds as `QueryQueue` answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueBounds {
    /// The first retained message.
    pub min: QueueOffset,
    /// One past the last message.
    pub max: QueueOffset,
    /// The first message stored at or after the asked time (none if none is, or not asked).
    pub at_time: Option<QueueOffset>,
}

/// Where a group with nothing stored starts in a queue with these bounds: the first retained
/// message, the end (only what arrives from now on), or the first at or after the time (the
/// end if nothing is that recent).
pub(crate) fn start_in_queue(from: ConsumeFrom, b: &QueueBounds) -> QueueOffset {
    match from {
        ConsumeFrom::First => b.min,
        ConsumeFrom::Last => b.max,
        ConsumeFrom::Timestamp(_) => b.at_time.unwrap_or(b.max),
    }
}

/// A proposed offset behind the one recorded: refused (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset would move back from {recorded} to {proposed}; kept at {recorded}")]
pub(crate) struct Backwards {
    pub recorded: QueueOffset,
    pub proposed: QueueOffset,
}

/// The offset to record after consuming up to (not including) `to`, from `recorded`.
/// Standing still is allowed (an empty pull); moving back is refused.
pub(crate) fn advance(recorded: QueueOffset, to: QueueOffset) -> Result<QueueOffset, Backwards> {
    if to < recorded {
        return Err(Backwards {
            recorded,
            proposed: to,
        });
    }
    Ok(to)
}

/// The offset to record once the listener took a batch whose last message is at `last`.
pub(crate) fn after_batch(last: QueueOffset) -> QueueOffset {
    last.next()
}

/// A pull's answer, as the offset rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PullAnswer {
    pub code: ErrorCode,
    /// The offset the pull asked for.
    pub requested: QueueOffset,
    /// The queue's first retained message, as the replica answering knows it.
    pub min: QueueOffset,
    /// One past the queue's last message, as the replica answering knows it.
    pub max: QueueOffset,
    /// Where the next pull starts (after the messages returned).
    pub next: QueueOffset,
}

/// How long a consumer waits for a replica that answers "past the end".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Patience {
    /// However long (the lite pull consumer: its application may `seek`).
    Forever,
    /// Until the queue has answered "past the end" for `limit` (the push consumer:
    /// [`crate::consumer::OUT_OF_RANGE_PATIENCE`]); `waited` is how long it has so far.
    Limited { waited: Duration, limit: Duration },
}

/// What a consumer does after a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullStep {
    /// Hand the messages over; the next pull starts at `next`.
    Deliver { next: QueueOffset },
    /// The offset is below the first retained message (purged): move up to it, at once.
    MoveUp(QueueOffset),
    /// The offset is past the end: the replica answering is behind. Keep the offset, fetch
    /// the route again and wait a little.
    WaitForReplica,
    /// Past the end for the whole patience: the queue was recreated. Restart at its end
    /// (an explicit rewind: the recorded offset is reset there too).
    RestartAtEnd(QueueOffset),
    /// Any other refusal: fetch the route again and retry later.
    Retry,
}

/// The decision after a pull answered `a`.
pub(crate) fn after_pull(a: &PullAnswer, patience: Patience) -> PullStep {
    match a.code {
        ErrorCode::Ok => PullStep::Deliver { next: a.next },
        ErrorCode::OffsetOutOfRange if a.requested < a.min => PullStep::MoveUp(a.min),
        ErrorCode::OffsetOutOfRange => match patience {
            Patience::Limited { waited, limit } if waited >= limit => PullStep::RestartAtEnd(a.max),
            Patience::Limited { .. } | Patience::Forever => PullStep::WaitForReplica,
        },
        _ => PullStep::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT_OF_RANGE_PATIENCE: Duration = Duration::from_secs(30);

    const O: fn(u64) -> QueueOffset = QueueOffset;

    fn answer(code: ErrorCode, requested: u64, min: u64, max: u64) -> PullAnswer {
        PullAnswer {
            code,
            requested: O(requested),
            min: O(min),
            max: O(max),
            next: O(requested),
        }
    }

    #[test]
    fn stored_progress_wins_over_consume_from() {
        for from in [
            ConsumeFrom::First,
            ConsumeFrom::Last,
            ConsumeFrom::Timestamp(1),
        ] {
            assert_eq!(start(Some(O(7)), from), Start::At(O(7)));
        }
        assert_eq!(
            start(None, ConsumeFrom::First),
            Start::AskQueue { timestamp_ms: None }
        );
        assert_eq!(
            start(None, ConsumeFrom::Timestamp(1_700)),
            Start::AskQueue {
                timestamp_ms: Some(1_700)
            }
        );
    }

    #[test]
    fn a_new_group_starts_per_consume_from() {
        let b = QueueBounds {
            min: O(10),
            max: O(50),
            at_time: Some(O(30)),
        };
        assert_eq!(start_in_queue(ConsumeFrom::First, &b), O(10));
        assert_eq!(start_in_queue(ConsumeFrom::Last, &b), O(50));
        assert_eq!(start_in_queue(ConsumeFrom::Timestamp(5), &b), O(30));
        let none_that_recent = QueueBounds { at_time: None, ..b };
        assert_eq!(
            start_in_queue(ConsumeFrom::Timestamp(5), &none_that_recent),
            O(50),
            "nothing at or after the time: only what arrives from now on"
        );
    }

    #[test]
    fn recorded_offsets_only_move_forward() {
        assert_eq!(advance(O(5), O(9)), Ok(O(9)));
        assert_eq!(advance(O(5), O(5)), Ok(O(5)), "an empty pull stands still");
        assert_eq!(
            advance(O(9), O(5)),
            Err(Backwards {
                recorded: O(9),
                proposed: O(5)
            })
        );
        assert_eq!(after_batch(O(41)), O(42), "the next message wanted");
    }

    #[test]
    fn an_answered_pull_moves_to_its_next_offset() {
        let a = PullAnswer {
            next: O(12),
            ..answer(ErrorCode::Ok, 4, 0, 20)
        };
        assert_eq!(
            after_pull(&a, Patience::Forever),
            PullStep::Deliver { next: O(12) }
        );
    }

    #[test]
    fn below_the_first_message_moves_up_to_it() {
        let a = answer(ErrorCode::OffsetOutOfRange, 3, 10, 20);
        assert_eq!(after_pull(&a, Patience::Forever), PullStep::MoveUp(O(10)));
        let limited = Patience::Limited {
            waited: Duration::ZERO,
            limit: OUT_OF_RANGE_PATIENCE,
        };
        assert_eq!(after_pull(&a, limited), PullStep::MoveUp(O(10)));
    }

    #[test]
    fn past_the_end_waits_for_a_lagging_replica_and_never_moves_back() {
        let a = answer(ErrorCode::OffsetOutOfRange, 30, 10, 20);
        assert_eq!(after_pull(&a, Patience::Forever), PullStep::WaitForReplica);
        let short = Patience::Limited {
            waited: OUT_OF_RANGE_PATIENCE - Duration::from_millis(1),
            limit: OUT_OF_RANGE_PATIENCE,
        };
        assert_eq!(after_pull(&a, short), PullStep::WaitForReplica);
    }

    #[test]
    fn past_the_end_for_the_whole_patience_restarts_at_the_end() {
        let a = answer(ErrorCode::OffsetOutOfRange, 30, 10, 20);
        let long = Patience::Limited {
            waited: OUT_OF_RANGE_PATIENCE,
            limit: OUT_OF_RANGE_PATIENCE,
        };
        assert_eq!(after_pull(&a, long), PullStep::RestartAtEnd(O(20)));
    }

    #[test]
    fn other_refusals_retry() {
        for code in [
            ErrorCode::NotLeader,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(
                after_pull(&answer(code, 0, 0, 0), Patience::Forever),
                PullStep::Retry
            );
        }
    }
}
