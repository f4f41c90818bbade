//! Checkers of the timed-message workload ([`crate::timer_workload`]), each shown firing on a
//! history that breaks it (tests below).
//!
//! - **early**: a message consumed before the earliest due time its sender asked for (minus
//!   [`SKEW_MS`]: every simulated node reads the same clock, so a leader change moves no due
//!   time). A relative delay is measured from the attempt that stored it, and the SDK may
//!   retry a send whose first answer was lost, so the bound is the one read before sending;
//! - **recalled**: a message whose recall the broker acknowledged, consumed from the timer
//!   the recall named (a send the SDK retried may have stored a second timer, which the
//!   recall of the acknowledged one does not touch);
//! - **stored twice**: one timer delivered into its topic's queues more than once (a
//!   delivery repeated by a new leader or a stale proposal). Copies are told apart by the
//!   timer they came from (the `RAFTMQ_TIMER` property, `due:position`): a send the SDK
//!   retried is two timers, each delivered once, and is counted apart ([`retried_sends`]).
//!   Consumer-side redelivery is not counted: the queues are read, not the deliveries;
//! - **lost**: an acknowledged message due before the end, never consumed, whose recall was
//!   neither acknowledged nor attempted without an answer;
//! - **late**: a message due after the faults healed, consumed more than [`HEALTHY_BOUND_MS`]
//!   after its due time.

use std::collections::{BTreeMap, BTreeSet};

/// How early a delivery may be: the clock skew between leaders (none in the simulator).
pub const SKEW_MS: u64 = 0;
/// The delivery bound of a healthy group: scheduler interval, a Raft round, the consumer's
/// long poll, with room for a slow simulated network.
pub const HEALTHY_BOUND_MS: u64 = 3_000;

/// What the timed-message workload saw (times: the brokers' clock, ms since the epoch).
#[derive(Debug, Clone, Default)]
pub struct TimerHistory {
    /// Acknowledged timed sends: body → due time (the acknowledged attempt's).
    pub sent: BTreeMap<String, u64>,
    /// Acknowledged timed sends: body → the earliest due time any attempt could have had
    /// (read before the send; missing means the same as `sent`).
    pub not_before: BTreeMap<String, u64>,
    /// Sends whose outcome is unknown.
    pub indeterminate: BTreeSet<String>,
    /// Acknowledged recalls.
    pub recalled: BTreeSet<String>,
    /// The timer each acknowledged recall named (`group/position`, from its handle).
    pub recalled_timer: BTreeMap<String, String>,
    /// The timers each body's deliveries came from (`group/position`): a send the SDK
    /// retried may have stored two, and a recall names only the acknowledged one.
    pub delivered_from: BTreeMap<String, BTreeSet<String>>,
    /// Recalls whose outcome is unknown (the client gave up): such a message may or may not
    /// be delivered, so it is neither lost nor wrongly delivered.
    pub recall_unknown: BTreeSet<String>,
    /// Consumed: (body, when).
    pub deliveries: Vec<(String, u64)>,
    /// The topic's queues at the end, read from each group's leader: (body, the timer it was
    /// delivered from — empty for a message stored plain) → copies.
    pub stored: BTreeMap<(String, String), u32>,
    /// When the faults healed.
    pub healed_ms: u64,
    /// When the checks ran (messages due before `end_ms - HEALTHY_BOUND_MS` must be consumed).
    pub end_ms: u64,
    /// The consumer-retry workload that runs beside it ([`crate::retry_checks`]).
    pub retry: crate::retry::RetryHistory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerViolation {
    Early {
        body: String,
        due: u64,
        at: u64,
    },
    RecalledDelivered {
        body: String,
    },
    StoredTwice {
        body: String,
        copies: u32,
    },
    Lost {
        body: String,
        due: u64,
    },
    Late {
        body: String,
        due: u64,
        at: u64,
    },
    /// A retry checker fired.
    Retry(crate::retry::RetryViolation),
}

pub fn check_timer_history(h: &TimerHistory) -> Vec<TimerViolation> {
    let mut out = Vec::new();
    let mut first: BTreeMap<&str, u64> = BTreeMap::new();
    for (body, at) in &h.deliveries {
        let e = first.entry(body).or_insert(*at);
        *e = (*e).min(*at);
    }
    for (body, &at) in &first {
        let body = body.to_string();
        // Fired unless every delivery came from another timer than the recalled one.
        let other_timer = match (h.delivered_from.get(&body), h.recalled_timer.get(&body)) {
            (Some(from), Some(recalled)) => !from.contains(recalled),
            _ => false,
        };
        if h.recalled.contains(&body) && !other_timer {
            out.push(TimerViolation::RecalledDelivered { body: body.clone() });
        }
        if let Some(&due) = h.sent.get(&body) {
            let earliest = h.not_before.get(&body).copied().unwrap_or(due).min(due);
            if at + SKEW_MS < earliest {
                out.push(TimerViolation::Early {
                    body: body.clone(),
                    due: earliest,
                    at,
                });
            } else if due >= h.healed_ms && at > due + HEALTHY_BOUND_MS {
                out.push(TimerViolation::Late { body, due, at });
            }
        }
    }
    for ((body, timer), &copies) in &h.stored {
        if copies > 1 && !timer.is_empty() {
            out.push(TimerViolation::StoredTwice {
                body: body.clone(),
                copies,
            });
        }
    }
    for (body, &due) in &h.sent {
        let deadline = h.end_ms.saturating_sub(HEALTHY_BOUND_MS);
        let maybe_recalled = h.recalled.contains(body) || h.recall_unknown.contains(body);
        if due <= deadline && !maybe_recalled && !first.contains_key(body.as_str()) {
            out.push(TimerViolation::Lost {
                body: body.clone(),
                due,
            });
        }
    }
    out.extend(
        crate::retry::check_retry_history(&h.retry)
            .into_iter()
            .map(TimerViolation::Retry),
    );
    out
}

/// Bodies stored from more than one timer: sends the SDK retried (each attempt its own
/// timer), for reports.
pub fn retried_sends(h: &TimerHistory) -> usize {
    let mut timers: BTreeMap<&str, usize> = BTreeMap::new();
    for (body, _) in h.stored.keys() {
        *timers.entry(body).or_default() += 1;
    }
    timers.values().filter(|&&n| n > 1).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> TimerHistory {
        let mut h = TimerHistory {
            healed_ms: 10_000,
            end_ms: 30_000,
            ..Default::default()
        };
        h.sent.insert("a".into(), 5_000);
        h.sent.insert("b".into(), 12_000);
        h.sent.insert("r".into(), 13_000);
        h.recalled.insert("r".into());
        h.deliveries.push(("a".into(), 9_000));
        h.deliveries.push(("b".into(), 12_500));
        h.deliveries.push(("b".into(), 12_900));
        h.stored.insert(("a".into(), "5000:1".into()), 1);
        h.stored.insert(("b".into(), "12000:2".into()), 1);
        h
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(check_timer_history(&clean()), vec![]);
    }

    #[test]
    fn each_checker_fires() {
        let mut h = clean();
        h.deliveries.push(("c".into(), 100));
        h.sent.insert("c".into(), 200);
        h.stored.insert(("c".into(), "200:3".into()), 1);
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::Early { .. }]
        ));

        // A retried send: judged by the earliest due asked for, so a copy due before the
        // acknowledged attempt's is fine, and one before the asked bound is not.
        let mut h = clean();
        h.sent.insert("c".into(), 2_000);
        h.not_before.insert("c".into(), 1_500);
        h.deliveries.push(("c".into(), 1_600));
        h.stored.insert(("c".into(), "1500:3".into()), 1);
        h.stored.insert(("c".into(), "2000:4".into()), 1);
        assert_eq!(check_timer_history(&h), vec![]);
        assert_eq!(retried_sends(&h), 1);
        h.deliveries.push(("c".into(), 1_400));
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::Early { due: 1_500, .. }]
        ));

        let mut h = clean();
        h.deliveries.push(("r".into(), 14_000));
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::RecalledDelivered { .. }]
        ));
        // From the recalled timer: fired; from another (a retried send's): not.
        h.recalled_timer.insert("r".into(), "g1/7".into());
        h.delivered_from
            .insert("r".into(), ["g1/7".to_string()].into());
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::RecalledDelivered { .. }]
        ));
        h.delivered_from
            .insert("r".into(), ["g2/7".to_string()].into());
        assert_eq!(check_timer_history(&h), vec![]);

        let mut h = clean();
        h.stored.insert(("a".into(), "5000:1".into()), 2);
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::StoredTwice { copies: 2, .. }]
        ));

        let mut h = clean();
        h.deliveries.retain(|(b, _)| b != "a");
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::Lost { .. }]
        ));
        // Unless its recall went unanswered (it may have been recalled).
        h.recall_unknown.insert("a".into());
        assert_eq!(check_timer_history(&h), vec![]);

        let mut h = clean();
        h.deliveries.retain(|(b, _)| b != "b");
        h.deliveries
            .push(("b".into(), 12_000 + HEALTHY_BOUND_MS + 1));
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::Late { .. }]
        ));
    }
}
