//! Queue-semantics checkers over a recorded client history (pure functions; each has a test
//! that makes it fire).
//!
//! A history holds what producers were told (acknowledged sends with their queue and offset,
//! and sends whose outcome is unknown) and what consumers were handed, in order.

use std::collections::{BTreeMap, BTreeSet};

/// A queue: (broker group, queue id).
pub type Queue = (String, u32);

/// What clients saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueHistory {
    /// msg id → (queue, offset) the broker acknowledged.
    pub acked: BTreeMap<String, (Queue, u64)>,
    /// Sends that failed or timed out: they may or may not be stored.
    pub indeterminate: BTreeSet<String>,
    /// Deliveries in the order consumers got them: (consumer, msg id, queue, offset).
    pub consumed: Vec<(String, String, Queue, u64)>,
}

/// A checker's finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueViolation {
    /// Acknowledged, never consumed.
    Lost { id: String },
    /// Consumed, never sent.
    Unexpected { id: String },
    /// Delivered more than once where that is not allowed.
    Duplicated { id: String, times: usize },
    /// Consumed, but never at the place (queue, offset) it was acknowledged with.
    Moved {
        id: String,
        acked: (Queue, u64),
        consumed: (Queue, u64),
    },
    /// One queue offset held two different messages.
    OffsetReused {
        queue: Queue,
        offset: u64,
        ids: Vec<String>,
    },
}

/// Every checker; duplicates are violations only when `duplicates_allowed` is false.
pub fn check_queue_history(h: &QueueHistory, duplicates_allowed: bool) -> Vec<QueueViolation> {
    let mut out = Vec::new();
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    let mut places: BTreeMap<&str, BTreeSet<(Queue, u64)>> = BTreeMap::new();
    let mut at: BTreeMap<(Queue, u64), BTreeSet<&str>> = BTreeMap::new();
    for (_, id, q, o) in &h.consumed {
        *times.entry(id).or_default() += 1;
        places.entry(id).or_default().insert((q.clone(), *o));
        at.entry((q.clone(), *o)).or_default().insert(id);
        if !h.acked.contains_key(id) && !h.indeterminate.contains(id) {
            out.push(QueueViolation::Unexpected { id: id.clone() });
        }
    }
    // Every acknowledged message is consumed where it was acknowledged. A copy elsewhere (a
    // retried send whose first answer was lost) is a duplicate, not a move.
    for (id, (q, o)) in &h.acked {
        match places.get(id.as_str()) {
            None => out.push(QueueViolation::Lost { id: id.clone() }),
            Some(ps) if !ps.contains(&(q.clone(), *o)) => out.push(QueueViolation::Moved {
                id: id.clone(),
                acked: (q.clone(), *o),
                consumed: ps.iter().next().cloned().expect("a consumed place"),
            }),
            Some(_) => {}
        }
    }
    let mut acked_at: BTreeMap<(Queue, u64), BTreeSet<&str>> = BTreeMap::new();
    for (id, (q, o)) in &h.acked {
        acked_at.entry((q.clone(), *o)).or_default().insert(id);
    }
    for ((q, o), ids) in acked_at.into_iter().chain(at) {
        if ids.len() > 1 {
            out.push(QueueViolation::OffsetReused {
                queue: q,
                offset: o,
                ids: ids.into_iter().map(String::from).collect(),
            });
        }
    }
    if !duplicates_allowed {
        for (id, n) in times {
            if n > 1 {
                out.push(QueueViolation::Duplicated {
                    id: id.to_string(),
                    times: n,
                });
            }
        }
    }
    out
}

/// How many messages were delivered more than once (for reports).
pub fn duplicate_count(h: &QueueHistory) -> usize {
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, id, _, _) in &h.consumed {
        *times.entry(id).or_default() += 1;
    }
    times.values().filter(|&&n| n > 1).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(i: u32) -> Queue {
        ("g1".into(), i)
    }

    fn good() -> QueueHistory {
        QueueHistory {
            acked: [("a".to_string(), (q(0), 0)), ("b".to_string(), (q(0), 1))].into(),
            indeterminate: ["c".to_string()].into(),
            consumed: vec![
                ("c1".into(), "a".into(), q(0), 0),
                ("c1".into(), "b".into(), q(0), 1),
                ("c1".into(), "c".into(), q(0), 2),
            ],
        }
    }

    #[test]
    fn a_good_history_passes() {
        assert!(check_queue_history(&good(), false).is_empty());
    }

    #[test]
    fn each_checker_fires() {
        let mut h = good();
        h.consumed.remove(1);
        assert_eq!(
            check_queue_history(&h, true),
            vec![QueueViolation::Lost { id: "b".into() }]
        );

        let mut h = good();
        h.consumed.push(("c1".into(), "z".into(), q(1), 0));
        assert_eq!(
            check_queue_history(&h, true),
            vec![QueueViolation::Unexpected { id: "z".into() }]
        );

        let mut h = good();
        h.consumed.push(("c2".into(), "a".into(), q(0), 0));
        assert!(
            check_queue_history(&h, true).is_empty(),
            "allowed at-least-once"
        );
        assert_eq!(
            check_queue_history(&h, false),
            vec![QueueViolation::Duplicated {
                id: "a".into(),
                times: 2
            }]
        );
        assert_eq!(duplicate_count(&h), 1);

        let mut h = good();
        h.consumed[0].3 = 5;
        assert!(matches!(
            check_queue_history(&h, true)[0],
            QueueViolation::Moved { .. }
        ));
        // A second copy elsewhere, besides the acknowledged one, is a duplicate only.
        let mut h = good();
        h.consumed.push(("c1".into(), "a".into(), q(3), 9));
        assert!(check_queue_history(&h, true).is_empty());
        assert_eq!(check_queue_history(&h, false).len(), 1);

        let mut h = good();
        h.acked.insert("d".into(), (q(0), 1));
        h.consumed.push(("c1".into(), "d".into(), q(0), 1));
        let v = check_queue_history(&h, true);
        assert!(
            v.iter()
                .any(|x| matches!(x, QueueViolation::OffsetReused { offset: 1, .. })),
            "{v:?}"
        );
    }
}
