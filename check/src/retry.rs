//! Checkers of the consumer-retry workload ([`crate::retry_workload`]): a listener that fails
//! each message a planned number of times, and "poison" messages that always fail. Each
//! checker is shown firing on a history that breaks it (tests below).
//!
//! - **topic**: a delivery whose topic is not the original one (a retried message must show
//!   the topic it was sent to, not `%RETRY%<group>`);
//! - **attempts**: a message failing `k` times is delivered with `reconsume_times` exactly
//!   `0..=k` (a repeated value is a redelivery, not an error; a value past `k` — or past the
//!   maximum — is); a poison message with exactly `0..=max`;
//! - **lost**: an acknowledged message that fails `k ≤ max` times never delivered with
//!   `reconsume_times = k` (where it succeeds);
//! - **dead-lettered wrongly**: such a message in the DLQ;
//! - **not dead-lettered**: an acknowledged poison message not in the DLQ by the end, or a
//!   DLQ copy whose `reconsume_times` is not `max + 1`.

use std::collections::{BTreeMap, BTreeSet};

/// What the retry workload saw.
#[derive(Debug, Clone, Default)]
pub struct RetryHistory {
    /// The group's maximum reconsume times.
    pub max: u32,
    /// Acknowledged sends: body → how many deliveries fail (`u32::MAX`: all, poison).
    pub sent: BTreeMap<String, u32>,
    /// Sends whose outcome is unknown.
    pub indeterminate: BTreeSet<String>,
    /// Deliveries: (body, topic, reconsume_times).
    pub deliveries: Vec<(String, String, u32)>,
    /// The DLQ at the end, read from each group's leader: body → reconsume_times per copy.
    pub dlq: BTreeMap<String, Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryViolation {
    WrongTopic {
        body: String,
        topic: String,
    },
    Attempts {
        body: String,
        seen: Vec<u32>,
        want_upto: u32,
    },
    Lost {
        body: String,
        fails: u32,
    },
    DeadLetteredWrongly {
        body: String,
    },
    NotDeadLettered {
        body: String,
        copies: Vec<u32>,
    },
}

/// The topic the workload sends to.
pub const TOPIC_NAME: &str = "RT";

/// Whether every acknowledged message is done: consumed where it succeeds, or (poison) in
/// the DLQ.
pub fn settled(h: &RetryHistory) -> bool {
    let seen = attempts(h);
    h.sent.iter().all(|(b, &k)| {
        if k == u32::MAX {
            h.dlq.get(b).is_some_and(|c| !c.is_empty())
        } else {
            seen.get(b.as_str()).is_some_and(|s| s.contains(&k))
        }
    })
}

fn attempts(h: &RetryHistory) -> BTreeMap<&str, BTreeSet<u32>> {
    let mut seen: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for (b, _, r) in &h.deliveries {
        seen.entry(b).or_default().insert(*r);
    }
    seen
}

pub fn check_retry_history(h: &RetryHistory) -> Vec<RetryViolation> {
    let mut out = Vec::new();
    for (b, topic, _) in &h.deliveries {
        if topic != TOPIC_NAME {
            out.push(RetryViolation::WrongTopic {
                body: b.clone(),
                topic: topic.clone(),
            });
        }
    }
    let seen = attempts(h);
    for (body, &fails) in &h.sent {
        let upto = fails.min(h.max);
        let got: Vec<u32> = seen
            .get(body.as_str())
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let copies = h.dlq.get(body).cloned().unwrap_or_default();
        // None past the last attempt; once done, every attempt up to it.
        let finished = if fails == u32::MAX {
            !copies.is_empty()
        } else {
            got.contains(&fails)
        };
        let full: Vec<u32> = (0..=upto).collect();
        if got.iter().any(|&r| r > upto) || (finished && got != full) {
            out.push(RetryViolation::Attempts {
                body: body.clone(),
                seen: got.clone(),
                want_upto: upto,
            });
        }
        if fails <= h.max {
            if !got.contains(&fails) {
                out.push(RetryViolation::Lost {
                    body: body.clone(),
                    fails,
                });
            }
            if !copies.is_empty() {
                out.push(RetryViolation::DeadLetteredWrongly { body: body.clone() });
            }
        } else if copies.is_empty() || copies.iter().any(|&r| r != h.max + 1) {
            out.push(RetryViolation::NotDeadLettered {
                body: body.clone(),
                copies,
            });
        }
    }
    // An unacknowledged send may be stored or not; whatever came must still count right.
    for body in &h.indeterminate {
        if let Some(s) = seen.get(body.as_str())
            && s.iter().any(|&r| r > h.max)
        {
            out.push(RetryViolation::Attempts {
                body: body.clone(),
                seen: s.iter().copied().collect(),
                want_upto: h.max,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// max 2: "a" succeeds first time, "b" fails once, "p" is poison.
    fn clean() -> RetryHistory {
        let mut h = RetryHistory {
            max: 2,
            ..Default::default()
        };
        h.sent.insert("a".into(), 0);
        h.sent.insert("b".into(), 1);
        h.sent.insert("p".into(), u32::MAX);
        for (b, r) in [("a", 0), ("b", 0), ("b", 1), ("p", 0), ("p", 1), ("p", 2)] {
            h.deliveries.push((b.into(), TOPIC_NAME.into(), r));
        }
        // A redelivery repeats an attempt: fine.
        h.deliveries.push(("b".into(), TOPIC_NAME.into(), 0));
        h.dlq.insert("p".into(), vec![3]);
        h
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(check_retry_history(&clean()), vec![]);
        assert!(settled(&clean()));
    }

    #[test]
    fn each_checker_fires() {
        let mut h = clean();
        h.deliveries[2].1 = "%RETRY%G".into();
        assert!(matches!(
            check_retry_history(&h)[..],
            [RetryViolation::WrongTopic { .. }]
        ));

        // One attempt too many (the off-by-one the mutation makes).
        let mut h = clean();
        h.deliveries.push(("p".into(), TOPIC_NAME.into(), 3));
        h.dlq.insert("p".into(), vec![4]);
        let v = check_retry_history(&h);
        assert!(
            v.iter()
                .any(|v| matches!(v, RetryViolation::Attempts { want_upto: 2, .. })),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|v| matches!(v, RetryViolation::NotDeadLettered { .. })),
            "{v:?}"
        );

        // A skipped attempt.
        let mut h = clean();
        h.deliveries.retain(|d| !(d.0 == "p" && d.2 == 1));
        assert!(matches!(
            check_retry_history(&h)[..],
            [RetryViolation::Attempts { .. }]
        ));

        let mut h = clean();
        h.deliveries.retain(|d| !(d.0 == "b" && d.2 == 1));
        assert!(matches!(
            check_retry_history(&h)[..],
            [RetryViolation::Lost { fails: 1, .. }]
        ));
        assert!(!settled(&h));

        let mut h = clean();
        h.dlq.insert("b".into(), vec![2]);
        assert!(matches!(
            check_retry_history(&h)[..],
            [RetryViolation::DeadLetteredWrongly { .. }]
        ));

        let mut h = clean();
        h.dlq.clear();
        assert!(matches!(
            check_retry_history(&h)[..],
            [RetryViolation::NotDeadLettered { .. }]
        ));
        assert!(!settled(&h));
    }
}
