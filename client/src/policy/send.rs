//! The producer's retry and fault-avoidance rules.
//!
//! - [`classify`]: what a broker's answer to a send means — stored, follow the `NOT_LEADER`
//!   hint (at most [`REDIRECTS_MAX`] hops, not counted as a failure), retry elsewhere, or
//!   refused for good.
//! - [`Retries`]: the retry budget of one send — which failures count, how long to pause
//!   before the next try, when to give up.
//! - [`pick_queue`]: where the next try goes — round-robin over the writable queues, skipping
//!   groups in their fault pause and the group that just failed while others are usable.
//! - [`pause_after`] and [`Faults`]: how long a group is avoided after a slow or failed call
//!   (RocketMQ's latency → pause table, in seconds).
//!
//! No I/O here; the clock is passed in. `producer` does the calls and asks these what next.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_proto::ErrorCode;
use tokio::time::Instant;

/// `NOT_LEADER` hints followed within one attempt, at most.
pub(crate) const REDIRECTS_MAX: u32 = 3;

/// What a broker's answer to a send means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Stored (replicated to a quorum of the group).
    Stored,
    /// Not the leader, and it named the leader: send there at once (not a failure).
    FollowHint,
    /// Worth trying again, on another queue (of another group when there is one).
    Retry,
    /// Retrying will not help (bad input, unknown topic, no permission, too large …).
    Refused,
}

/// Classifies a send's answer: `code`, and the leader the replica named (empty if none).
pub(crate) fn classify(code: ErrorCode, leader_hint: &str) -> Answer {
    match code {
        ErrorCode::Ok => Answer::Stored,
        ErrorCode::NotLeader if !leader_hint.is_empty() => Answer::FollowHint,
        ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Internal => Answer::Retry,
        _ => Answer::Refused,
    }
}

/// Why a try failed, as the retry budget sees it (refusals are not retried at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// No name server gave the route. Counted.
    Route,
    /// The chosen group has no known leader (an election is under way): fetch the route
    /// again and try the same way. Not counted (the send timeout bounds it).
    NoLeader,
    /// No answer in time, a lost connection, `UNAVAILABLE`, too many redirects. Counted.
    Retriable,
}

/// The retry budget of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retries {
    /// Tries allowed (counted failures before giving up).
    tries_max: u32,
    /// Counted failures so far.
    failed: u32,
}

impl Retries {
    /// `retries` after the first try; an ordered send (pinned to one queue) keeps trying until
    /// its send timeout.
    pub(crate) fn new(retries: u32, ordered: bool) -> Self {
        Self {
            tries_max: if ordered {
                u32::MAX
            } else {
                retries.saturating_add(1)
            },
            failed: 0,
        }
    }

    /// Whether another try is allowed (the caller also checks the send deadline).
    pub(crate) fn may_try(&self) -> bool {
        self.failed < self.tries_max
    }

    /// Counted failures so far.
    pub(crate) fn failed(&self) -> u32 {
        self.failed
    }

    /// Records a failure; returns the pause before the next try, with `left` until the send
    /// deadline: 200 ms × failures after a route failure (not cut at the deadline, so a send
    /// may overrun its timeout by it), 100 ms while a group has no leader, and 300 ms ×
    /// failures (at most 3 s) after a retriable failure.
    pub(crate) fn after(&mut self, why: Failed, left: Duration) -> Duration {
        match why {
            Failed::Route => {
                self.failed = self.failed.saturating_add(1);
                Duration::from_millis(200 * u64::from(self.failed))
            }
            Failed::NoLeader => Duration::from_millis(100).min(left),
            Failed::Retriable => {
                self.failed = self.failed.saturating_add(1);
                Duration::from_millis(300 * u64::from(self.failed.min(10))).min(left)
            }
        }
    }
}

/// The queue to try, round-robin from `start` over `queues` (group, queue id): the first of
/// a `usable` group other than `avoid` (the group that just failed); else the first of any
/// group other than `avoid`; else the queue at `start`. `None` only if there is no queue.
pub(crate) fn pick_queue<'q>(
    queues: &'q [(String, u32)],
    start: usize,
    avoid: Option<&str>,
    usable: impl Fn(&str) -> bool,
) -> Option<&'q (String, u32)> {
    let n = queues.len();
    if n == 0 {
        return None;
    }
    let in_turn = || (0..n).map(|i| &queues[(start + i) % n]);
    let not_avoided = |q: &&(String, u32)| Some(q.0.as_str()) != avoid;
    in_turn()
        .find(|q| not_avoided(q) && usable(&q.0))
        .or_else(|| in_turn().find(not_avoided))
        .or(Some(&queues[start % n]))
}

/// How long to avoid a group after a call to it took `latency` (or `failed`).
///
/// Failures count as the slowest latency. RocketMQ's table (550 ms → 30 s … failure → 600 s)
/// assumes a broker that fails stays down for minutes; a raftmq group fails over in about
/// two seconds, and a producer that avoided it for ten minutes after one timeout would send
/// everything to the other groups long after the group is back (found by the cluster
/// simulation). So the same latency steps pause for seconds: up to 100 ms → no pause,
/// 550 ms → 1 s, 1 s → 2 s, 2 s → 4 s, 3 s → 6 s, 15 s and more (or a failure) → 10 s.
pub(crate) fn pause_after(latency: Duration, failed: bool) -> Duration {
    const TABLE: [(u64, u64); 7] = [
        (50, 0),
        (100, 0),
        (550, 1_000),
        (1_000, 2_000),
        (2_000, 4_000),
        (3_000, 6_000),
        (15_000, 10_000),
    ];
    let ms = if failed {
        30_000
    } else {
        latency.as_millis() as u64
    };
    let pause = TABLE
        .iter()
        .rev()
        .find(|(lat, _)| ms >= *lat)
        .map_or(0, |(_, p)| *p);
    Duration::from_millis(pause)
}

/// Groups to avoid, until when.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    until: BTreeMap<String, Instant>,
}

impl Faults {
    /// Records the outcome of a call to `group` at `now`.
    pub(crate) fn record(&mut self, group: &str, latency: Duration, failed: bool, now: Instant) {
        let pause = pause_after(latency, failed);
        if pause.is_zero() {
            self.until.remove(group);
        } else {
            self.until.insert(group.to_string(), now + pause);
        }
    }

    /// Whether `group` is usable at `now`.
    pub(crate) fn available(&self, group: &str, now: Instant) -> bool {
        self.until.get(group).is_none_or(|u| *u <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn queues() -> Vec<(String, u32)> {
        [("g1", 0), ("g1", 1), ("g2", 0), ("g2", 1)]
            .iter()
            .map(|(g, q)| (g.to_string(), *q))
            .collect()
    }

    #[test]
    fn answers_are_stored_redirected_retried_or_refused() {
        assert_eq!(classify(ErrorCode::Ok, ""), Answer::Stored);
        assert_eq!(
            classify(ErrorCode::NotLeader, "10.0.0.2:1"),
            Answer::FollowHint
        );
        assert_eq!(classify(ErrorCode::NotLeader, ""), Answer::Retry);
        assert_eq!(classify(ErrorCode::Unavailable, ""), Answer::Retry);
        assert_eq!(classify(ErrorCode::Internal, ""), Answer::Retry);
        for code in [
            ErrorCode::TopicNotFound,
            ErrorCode::NoPermission,
            ErrorCode::MessageTooLarge,
            ErrorCode::InvalidArgument,
        ] {
            assert_eq!(classify(code, "10.0.0.2:1"), Answer::Refused, "{code:?}");
        }
    }

    #[test]
    fn a_send_gives_up_after_its_retries() {
        let mut r = Retries::new(2, false);
        for _ in 0..3 {
            assert!(r.may_try());
            r.after(Failed::Retriable, Duration::MAX);
        }
        assert!(!r.may_try(), "1 try + 2 retries");
        assert_eq!(r.failed(), 3);
        let mut none = Retries::new(0, false);
        none.after(Failed::Route, Duration::MAX);
        assert!(!none.may_try(), "a route failure counts");
    }

    #[test]
    fn a_group_without_a_leader_is_waited_for_not_counted() {
        let mut r = Retries::new(0, false);
        for _ in 0..100 {
            assert_eq!(r.after(Failed::NoLeader, Duration::MAX), MS(100));
        }
        assert!(r.may_try());
        assert_eq!(
            r.after(Failed::NoLeader, MS(30)),
            MS(30),
            "cut at the deadline"
        );
    }

    #[test]
    fn ordered_sends_retry_until_the_deadline() {
        let mut r = Retries::new(0, true);
        for _ in 0..1_000 {
            r.after(Failed::Retriable, Duration::MAX);
        }
        assert!(r.may_try());
    }

    #[test]
    fn pauses_grow_with_each_failure() {
        let mut r = Retries::new(20, false);
        assert_eq!(r.after(Failed::Retriable, Duration::MAX), MS(300));
        assert_eq!(r.after(Failed::Retriable, Duration::MAX), MS(600));
        assert_eq!(
            r.after(Failed::Route, Duration::MAX),
            MS(600),
            "3 failures × 200 ms"
        );
        assert_eq!(
            r.after(Failed::Retriable, MS(50)),
            MS(50),
            "cut at the deadline"
        );
        for _ in 0..10 {
            r.after(Failed::Retriable, Duration::MAX);
        }
        assert_eq!(
            r.after(Failed::Retriable, Duration::MAX),
            MS(3_000),
            "at most 3 s"
        );
    }

    #[test]
    fn queues_are_taken_in_turn() {
        let q = queues();
        let all = |_: &str| true;
        let picked: Vec<_> = (0..5)
            .map(|s| pick_queue(&q, s, None, all).cloned())
            .collect();
        assert_eq!(picked[0], Some(q[0].clone()));
        assert_eq!(picked[3], Some(q[3].clone()));
        assert_eq!(picked[4], Some(q[0].clone()), "wraps around");
        assert_eq!(pick_queue(&[], 0, None, all), None);
    }

    #[test]
    fn a_retry_moves_to_another_usable_group() {
        let q = queues();
        assert_eq!(pick_queue(&q, 0, Some("g1"), |_| true), Some(&q[2]));
        // g2 in its fault pause: skipped while g1 is usable.
        assert_eq!(pick_queue(&q, 2, None, |g| g != "g2"), Some(&q[0]));
    }

    #[test]
    fn with_no_usable_group_any_other_group_then_any_queue() {
        let q = queues();
        let none = |_: &str| false;
        assert_eq!(
            pick_queue(&q, 0, Some("g1"), none),
            Some(&q[2]),
            "another group"
        );
        let one_group = &q[..2];
        assert_eq!(
            pick_queue(one_group, 1, Some("g1"), none),
            Some(&q[1]),
            "the only group, in turn"
        );
    }

    #[test]
    fn pauses_follow_the_latency_table() {
        assert_eq!(pause_after(MS(10), false), Duration::ZERO);
        assert_eq!(pause_after(MS(120), false), Duration::ZERO);
        assert_eq!(pause_after(MS(600), false), MS(1_000));
        assert_eq!(pause_after(MS(1_000), false), MS(2_000));
        assert_eq!(pause_after(MS(2_500), false), MS(4_000));
        assert_eq!(pause_after(MS(3_000), false), MS(6_000));
        assert_eq!(pause_after(MS(20_000), false), MS(10_000));
        assert_eq!(
            pause_after(MS(10), true),
            MS(10_000),
            "a failure is the slowest"
        );
    }

    #[tokio::test]
    async fn a_failed_group_is_avoided_then_forgiven() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        f.record("g1", Duration::ZERO, true, t0);
        assert!(!f.available("g1", t0));
        assert!(!f.available("g1", t0 + MS(9_999)));
        assert!(f.available("g2", t0));
        assert!(f.available("g1", t0 + MS(10_000)), "the pause ends");
        f.record("g1", MS(5), false, t0);
        assert!(f.available("g1", t0), "a fast success clears the pause");
    }
}
