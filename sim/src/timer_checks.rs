//! Checkers of the timed-message workload ([`crate::timer_workload`]), each shown firing on a
//! history that breaks it (tests below).
//!
//! - **early**: a message consumed before its due time (minus [`SKEW_MS`]: every simulated
//!   node reads the same clock, so a leader change moves no due time);
//! - **recalled**: a message whose recall the broker acknowledged, consumed;
//! - **stored twice**: a message in its topic's queues more than once (a delivery repeated by
//!   a new leader or a stale proposal; consumer-side redelivery is not counted: the queues are
//!   read, not the deliveries);
//! - **lost**: an acknowledged, not recalled message due before the end, never consumed;
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
    /// Acknowledged timed sends: body → due time.
    pub sent: BTreeMap<String, u64>,
    /// Sends whose outcome is unknown.
    pub indeterminate: BTreeSet<String>,
    /// Acknowledged recalls.
    pub recalled: BTreeSet<String>,
    /// Consumed: (body, when).
    pub deliveries: Vec<(String, u64)>,
    /// The topic's queues at the end, read from each group's leader: body → copies.
    pub stored: BTreeMap<String, u32>,
    /// When the faults healed.
    pub healed_ms: u64,
    /// When the checks ran (messages due before `end_ms - HEALTHY_BOUND_MS` must be consumed).
    pub end_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerViolation {
    Early { body: String, due: u64, at: u64 },
    RecalledDelivered { body: String },
    StoredTwice { body: String, copies: u32 },
    Lost { body: String, due: u64 },
    Late { body: String, due: u64, at: u64 },
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
        if h.recalled.contains(&body) {
            out.push(TimerViolation::RecalledDelivered { body: body.clone() });
        }
        if let Some(&due) = h.sent.get(&body) {
            if at + SKEW_MS < due {
                out.push(TimerViolation::Early {
                    body: body.clone(),
                    due,
                    at,
                });
            } else if due >= h.healed_ms && at > due + HEALTHY_BOUND_MS {
                out.push(TimerViolation::Late { body, due, at });
            }
        }
    }
    for (body, &copies) in &h.stored {
        if copies > 1 {
            out.push(TimerViolation::StoredTwice {
                body: body.clone(),
                copies,
            });
        }
    }
    for (body, &due) in &h.sent {
        let deadline = h.end_ms.saturating_sub(HEALTHY_BOUND_MS);
        if due <= deadline && !h.recalled.contains(body) && !first.contains_key(body.as_str()) {
            out.push(TimerViolation::Lost {
                body: body.clone(),
                due,
            });
        }
    }
    out
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
        h.stored.insert("a".into(), 1);
        h.stored.insert("b".into(), 1);
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
        h.stored.insert("c".into(), 1);
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::Early { .. }]
        ));

        let mut h = clean();
        h.deliveries.push(("r".into(), 14_000));
        assert!(matches!(
            check_timer_history(&h)[..],
            [TimerViolation::RecalledDelivered { .. }]
        ));

        let mut h = clean();
        h.stored.insert("a".into(), 2);
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
