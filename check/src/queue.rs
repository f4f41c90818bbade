//! Queue-semantics checkers over a recorded client history (pure functions; each has a test
//! that makes it fire).
//!
//! A history holds what producers were told (acknowledged sends with their queue and offset,
//! in the order each producer was told, and sends whose outcome is unknown), what consumers
//! were handed and when they stopped holding a queue or crashed (one timeline), and the
//! committed consumer offsets each replica was seen to hold over time.
//!
//! Consumers are named per incarnation (`c1#0`, then `c1#1` after a restart), so a crash is a
//! change of name plus a [`Event::Crashed`] mark.

use std::collections::{BTreeMap, BTreeSet};

/// A queue: (`"topic@group"`, queue id).
pub type Queue = (String, u32);

/// One thing a consumer did, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A consumer incarnation was handed a message.
    Consumed {
        consumer: String,
        id: String,
        queue: Queue,
        offset: u64,
    },
    /// A consumer incarnation stopped holding a queue (rebalance, or it left the group).
    Released { consumer: String, queue: Queue },
    /// A consumer incarnation ended abruptly (its process was killed).
    Crashed { consumer: String },
}

/// What clients saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueHistory {
    /// msg id → (queue, offset) the broker acknowledged.
    pub acked: BTreeMap<String, (Queue, u64)>,
    /// Sends that failed or timed out: they may or may not be stored.
    pub indeterminate: BTreeSet<String>,
    /// Each sequential producer's acknowledged sends in the order they were acknowledged:
    /// (producer, msg id).
    pub ack_order: Vec<(String, String)>,
    /// The consumers' timeline.
    pub events: Vec<Event>,
    /// Topics consumed by an orderly consumer group: their queues are checked for order.
    pub orderly_topics: BTreeSet<String>,
    /// Committed consumer offsets as each replica applied them, in observation order:
    /// (replica, consumer group, queue, offset).
    pub commits: Vec<(String, String, Queue, u64)>,
}

impl QueueHistory {
    /// Records a delivery.
    pub fn consumed(&mut self, consumer: &str, id: &str, queue: Queue, offset: u64) {
        self.events.push(Event::Consumed {
            consumer: consumer.into(),
            id: id.into(),
            queue,
            offset,
        });
    }

    /// Every delivery: (consumer, id, queue, offset).
    pub fn deliveries(&self) -> impl Iterator<Item = (&str, &str, &Queue, u64)> {
        self.events.iter().filter_map(|e| match e {
            Event::Consumed {
                consumer,
                id,
                queue,
                offset,
            } => Some((consumer.as_str(), id.as_str(), queue, *offset)),
            _ => None,
        })
    }
}

/// A checker's finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueViolation {
    /// Acknowledged, never consumed.
    Lost { id: String },
    /// Consumed, never sent.
    Unexpected { id: String },
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
    /// A stored message handed out again where at-least-once does not excuse it: to the same
    /// consumer that kept its queue, or to another while the first never crashed nor let the
    /// queue go.
    Redelivered {
        id: String,
        queue: Queue,
        offset: u64,
        first: String,
        again: String,
    },
    /// One producer's acknowledged sends to a queue got offsets out of acknowledgement order.
    AckOrder {
        producer: String,
        queue: Queue,
        id: String,
        offset: u64,
        after: u64,
    },
    /// An orderly queue delivered an offset before every earlier one was delivered.
    Skipped {
        queue: Queue,
        offset: u64,
        expected: u64,
    },
    /// An orderly consumer holding a queue was not handed the next offset.
    OutOfOrder {
        consumer: String,
        queue: Queue,
        offset: u64,
        after: u64,
    },
    /// A replica's committed offset for a consumer group moved backwards.
    OffsetBackwards {
        replica: String,
        group: String,
        queue: Queue,
        from: u64,
        to: u64,
    },
}

/// Every checker.
pub fn check_queue_history(h: &QueueHistory) -> Vec<QueueViolation> {
    let mut out = check_delivery(h);
    out.extend(check_duplicates(h));
    out.extend(check_order(h));
    out.extend(check_offsets(h));
    out
}

/// lost, unexpected, moved, and a queue offset never assigned to two messages.
pub fn check_delivery(h: &QueueHistory) -> Vec<QueueViolation> {
    let mut out = Vec::new();
    let mut places: BTreeMap<&str, BTreeSet<(&Queue, u64)>> = BTreeMap::new();
    let mut at: BTreeMap<(&Queue, u64), BTreeSet<&str>> = BTreeMap::new();
    let mut unexpected = BTreeSet::new();
    for (_, id, q, o) in h.deliveries() {
        places.entry(id).or_default().insert((q, o));
        at.entry((q, o)).or_default().insert(id);
        if !h.acked.contains_key(id) && !h.indeterminate.contains(id) && unexpected.insert(id) {
            out.push(QueueViolation::Unexpected { id: id.into() });
        }
    }
    // Every acknowledged message is consumed where it was acknowledged. A copy elsewhere (a
    // retried send whose first answer was lost) is a second message, not a move.
    for (id, (q, o)) in &h.acked {
        match places.get(id.as_str()) {
            None => out.push(QueueViolation::Lost { id: id.clone() }),
            Some(ps) if !ps.contains(&(q, *o)) => {
                let (cq, co) = ps.iter().next().expect("a consumed place");
                out.push(QueueViolation::Moved {
                    id: id.clone(),
                    acked: (q.clone(), *o),
                    consumed: ((*cq).clone(), *co),
                });
            }
            Some(_) => {}
        }
    }
    // A place holds one message forever: what producers were told and what consumers got
    // there must be one and the same message.
    for (id, (q, o)) in &h.acked {
        at.entry((q, *o)).or_default().insert(id);
    }
    for (place, ids) in at {
        if ids.len() > 1 {
            out.push(QueueViolation::OffsetReused {
                queue: place.0.clone(),
                offset: place.1,
                ids: ids.into_iter().map(String::from).collect(),
            });
        }
    }
    out.sort_by_key(|v| format!("{v:?}"));
    out.dedup();
    out
}

/// Redeliveries of one stored message (same queue and offset) are allowed only as
/// at-least-once: to the same consumer after it let the queue go (and took it back), or to
/// another consumer when one of the two crashed or let the queue go after the first delivery
/// (a handover, or two members holding the queue at once during a rebalance until one lets
/// go). Two consumers that never crashed and never lost the queue never share a message.
pub fn check_duplicates(h: &QueueHistory) -> Vec<QueueViolation> {
    // When each consumer crashed, and when it released each queue (event indexes).
    let mut crashed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut released: BTreeMap<(&str, &Queue), Vec<usize>> = BTreeMap::new();
    for (i, e) in h.events.iter().enumerate() {
        match e {
            Event::Crashed { consumer } => {
                crashed.entry(consumer).or_insert(i);
            }
            Event::Released { consumer, queue } => {
                released.entry((consumer, queue)).or_default().push(i);
            }
            Event::Consumed { .. } => {}
        }
    }
    let let_go = |c: &str, q: &Queue, after: usize, before: Option<usize>| {
        crashed
            .get(c)
            .is_some_and(|&i| i > after && before.is_none_or(|b| i < b))
            || released
                .get(&(c, q))
                .is_some_and(|v| v.iter().any(|&i| i > after && before.is_none_or(|b| i < b)))
    };
    let mut out = Vec::new();
    let mut first: BTreeMap<(&Queue, u64), (usize, &str)> = BTreeMap::new();
    let mut last_by: BTreeMap<(&Queue, u64, &str), usize> = BTreeMap::new();
    for (i, e) in h.events.iter().enumerate() {
        let Event::Consumed {
            consumer,
            id,
            queue,
            offset,
        } = e
        else {
            continue;
        };
        if let Some(&(j, earlier)) = first.get(&(queue, *offset)) {
            let ok = match last_by.get(&(queue, *offset, consumer.as_str())) {
                // Same consumer again: only after it let the queue go in between.
                Some(&k) => let_go(consumer, queue, k, Some(i)),
                // Another consumer: two members held the queue at once (a rebalance seen at
                // different moments) or one took it over; one of them must have crashed or
                // let it go afterwards.
                None => {
                    earlier != consumer
                        && (let_go(earlier, queue, j, None) || let_go(consumer, queue, j, None))
                }
            };
            if !ok {
                out.push(QueueViolation::Redelivered {
                    id: id.clone(),
                    queue: queue.clone(),
                    offset: *offset,
                    first: earlier.to_string(),
                    again: consumer.clone(),
                });
            }
        } else {
            first.insert((queue, *offset), (i, consumer));
        }
        last_by.insert((queue, *offset, consumer), i);
    }
    out
}

/// How many stored messages were handed out more than once, and how many messages were
/// stored twice (retried sends), for reports.
pub fn duplicate_counts(h: &QueueHistory) -> (usize, usize) {
    let mut by_place: BTreeMap<(&Queue, u64), usize> = BTreeMap::new();
    let mut places: BTreeMap<&str, BTreeSet<(&Queue, u64)>> = BTreeMap::new();
    for (_, id, q, o) in h.deliveries() {
        *by_place.entry((q, o)).or_default() += 1;
        places.entry(id).or_default().insert((q, o));
    }
    (
        by_place.values().filter(|&&n| n > 1).count(),
        places.values().filter(|p| p.len() > 1).count(),
    )
}

/// Order: a producer's acknowledged sends to one queue get increasing offsets; on orderly
/// topics, no queue offset is delivered before every earlier one was, and a consumer holding a
/// queue is handed exactly the next offset each time.
pub fn check_order(h: &QueueHistory) -> Vec<QueueViolation> {
    let mut out = Vec::new();
    let mut last_ack: BTreeMap<(&str, &Queue), u64> = BTreeMap::new();
    for (producer, id) in &h.ack_order {
        let Some((q, o)) = h.acked.get(id) else {
            continue;
        };
        if let Some(&after) = last_ack.get(&(producer.as_str(), q))
            && *o <= after
        {
            out.push(QueueViolation::AckOrder {
                producer: producer.clone(),
                queue: q.clone(),
                id: id.clone(),
                offset: *o,
                after,
            });
        }
        last_ack.insert((producer, q), *o);
    }
    let orderly = |q: &Queue| {
        let topic = q.0.split('@').next().unwrap_or_default();
        h.orderly_topics.contains(topic)
    };
    let mut max: BTreeMap<&Queue, u64> = BTreeMap::new();
    let mut holding: BTreeMap<(&str, &Queue), u64> = BTreeMap::new();
    for e in &h.events {
        match e {
            Event::Consumed {
                consumer,
                queue,
                offset,
                ..
            } if orderly(queue) => {
                if let Some(&m) = max.get(queue)
                    && *offset > m + 1
                {
                    out.push(QueueViolation::Skipped {
                        queue: queue.clone(),
                        offset: *offset,
                        expected: m + 1,
                    });
                }
                if let Some(&after) = holding.get(&(consumer.as_str(), queue))
                    && *offset != after + 1
                {
                    out.push(QueueViolation::OutOfOrder {
                        consumer: consumer.clone(),
                        queue: queue.clone(),
                        offset: *offset,
                        after,
                    });
                }
                holding.insert((consumer, queue), *offset);
                let m = max.entry(queue).or_insert(*offset);
                *m = (*m).max(*offset);
            }
            Event::Released { consumer, queue } => {
                holding.remove(&(consumer.as_str(), queue));
            }
            Event::Crashed { consumer } => holding.retain(|(c, _), _| c != consumer),
            Event::Consumed { .. } => {}
        }
    }
    out
}

/// A committed consumer offset never moves backwards on any replica (there is no explicit
/// reset in raftmq yet, so no exception).
pub fn check_offsets(h: &QueueHistory) -> Vec<QueueViolation> {
    let mut out = Vec::new();
    let mut last: BTreeMap<(&str, &str, &Queue), u64> = BTreeMap::new();
    for (replica, group, queue, offset) in &h.commits {
        if let Some(&from) = last.get(&(replica.as_str(), group.as_str(), queue))
            && *offset < from
        {
            out.push(QueueViolation::OffsetBackwards {
                replica: replica.clone(),
                group: group.clone(),
                queue: queue.clone(),
                from,
                to: *offset,
            });
        }
        last.insert((replica, group, queue), *offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(i: u32) -> Queue {
        ("T@g1".into(), i)
    }

    fn o(i: u32) -> Queue {
        ("O@g1".into(), i)
    }

    fn good() -> QueueHistory {
        let mut h = QueueHistory {
            acked: [
                ("a".to_string(), (q(0), 0)),
                ("b".to_string(), (q(0), 1)),
                ("x".to_string(), (o(0), 0)),
                ("y".to_string(), (o(0), 1)),
            ]
            .into(),
            indeterminate: ["c".to_string()].into(),
            ack_order: ["a", "b"]
                .iter()
                .map(|i| ("p".to_string(), i.to_string()))
                .chain(["x", "y"].iter().map(|i| ("po".to_string(), i.to_string())))
                .collect(),
            orderly_topics: ["O".to_string()].into(),
            commits: vec![
                ("g1-1".into(), "C".into(), q(0), 1),
                ("g1-1".into(), "C".into(), q(0), 3),
            ],
            ..QueueHistory::default()
        };
        h.consumed("c1#0", "a", q(0), 0);
        h.consumed("c1#0", "b", q(0), 1);
        h.consumed("c1#0", "c", q(0), 2);
        h.consumed("o1#0", "x", o(0), 0);
        h.consumed("o1#0", "y", o(0), 1);
        h
    }

    #[test]
    fn a_good_history_passes() {
        assert_eq!(check_queue_history(&good()), vec![]);
    }

    #[test]
    fn lost_unexpected_moved_and_reused_offsets_fire() {
        let mut h = good();
        h.events.remove(1);
        assert_eq!(
            check_queue_history(&h),
            vec![QueueViolation::Lost { id: "b".into() }]
        );

        let mut h = good();
        h.consumed("c1#0", "z", q(1), 0);
        assert_eq!(
            check_queue_history(&h),
            vec![QueueViolation::Unexpected { id: "z".into() }]
        );

        let mut h = good();
        h.events[0] = Event::Consumed {
            consumer: "c1#0".into(),
            id: "a".into(),
            queue: q(0),
            offset: 5,
        };
        assert!(matches!(
            check_queue_history(&h)[0],
            QueueViolation::Moved { .. }
        ));
        // A second copy elsewhere, besides the acknowledged one, is a second message.
        let mut h = good();
        h.consumed("c1#0", "a", q(3), 9);
        assert_eq!(check_queue_history(&h), vec![]);
        assert_eq!(duplicate_counts(&h), (0, 1));

        // Consumed at a place acknowledged for another message.
        let mut h = good();
        h.indeterminate.insert("e".into());
        h.consumed("c1#0", "e", q(0), 1);
        assert!(
            check_delivery(&h)
                .iter()
                .any(|x| matches!(x, QueueViolation::OffsetReused { offset: 1, .. }))
        );
        let mut h = good();
        h.acked.insert("d".into(), (q(0), 1));
        h.consumed("c1#0", "d", q(0), 1);
        let v = check_delivery(&h);
        assert!(
            v.iter()
                .any(|x| matches!(x, QueueViolation::OffsetReused { offset: 1, .. })),
            "{v:?}"
        );
    }

    #[test]
    fn redelivery_is_allowed_only_after_a_crash_or_a_handover() {
        // The same consumer, still holding the queue: not allowed.
        let mut h = good();
        h.consumed("c1#0", "a", q(0), 0);
        assert!(matches!(
            check_duplicates(&h)[..],
            [QueueViolation::Redelivered { .. }]
        ));
        assert_eq!(duplicate_counts(&h), (1, 0));
        // The same consumer after letting the queue go and taking it back: allowed.
        let mut h = good();
        h.events.push(Event::Released {
            consumer: "c1#0".into(),
            queue: q(0),
        });
        h.consumed("c1#0", "a", q(0), 0);
        assert_eq!(check_duplicates(&h), vec![]);
        // Another consumer while the first kept the queue and never crashed: not allowed.
        let mut h = good();
        h.consumed("c2#0", "a", q(0), 0);
        assert!(matches!(
            check_duplicates(&h)[..],
            [QueueViolation::Redelivered { .. }]
        ));
        // ... but allowed once the first crashed or released the queue (even if the release
        // is recorded after the new owner started).
        for mark in [
            Event::Crashed {
                consumer: "c1#0".into(),
            },
            Event::Released {
                consumer: "c1#0".into(),
                queue: q(0),
            },
        ] {
            let mut h = good();
            h.consumed("c2#0", "a", q(0), 0);
            h.events.push(mark);
            assert_eq!(check_duplicates(&h), vec![]);
        }
        // ... or once the second let it go (both held it during a rebalance).
        let mut h = good();
        h.consumed("c2#0", "a", q(0), 0);
        h.events.push(Event::Released {
            consumer: "c2#0".into(),
            queue: q(0),
        });
        assert_eq!(check_duplicates(&h), vec![]);
        // Releasing another queue does not excuse it.
        let mut h = good();
        h.events.push(Event::Released {
            consumer: "c1#0".into(),
            queue: q(1),
        });
        h.consumed("c2#0", "a", q(0), 0);
        assert_eq!(check_duplicates(&h).len(), 1);
    }

    #[test]
    fn order_checkers_fire() {
        // Acknowledged out of order.
        let mut h = good();
        h.acked.insert("b".into(), (q(0), 0));
        h.acked.insert("a".into(), (q(0), 1));
        assert!(check_order(&h).iter().any(|v| matches!(
            v,
            QueueViolation::AckOrder {
                offset: 0,
                after: 1,
                ..
            }
        )));
        // An orderly queue delivered out of order by its holder.
        let mut h = good();
        h.events.swap(3, 4);
        let v = check_order(&h);
        assert!(
            matches!(
                v[..],
                [QueueViolation::OutOfOrder {
                    offset: 0,
                    after: 1,
                    ..
                }]
            ),
            "{v:?}"
        );
        // A skip across consumers.
        let mut h = good();
        h.events.truncate(4);
        h.events.push(Event::Released {
            consumer: "o1#0".into(),
            queue: o(0),
        });
        h.consumed("o2#0", "z", o(0), 2);
        assert_eq!(
            check_order(&h),
            vec![QueueViolation::Skipped {
                queue: o(0),
                offset: 2,
                expected: 1
            }]
        );
        // A rewind by a consumer that kept the queue.
        let mut h = good();
        h.consumed("o1#0", "x", o(0), 0);
        assert!(matches!(
            check_order(&h)[..],
            [QueueViolation::OutOfOrder {
                offset: 0,
                after: 1,
                ..
            }]
        ));
        // ... allowed after it crashed and its next incarnation resumed from a commit.
        let mut h = good();
        h.events.push(Event::Crashed {
            consumer: "o1#0".into(),
        });
        h.consumed("o1#1", "x", o(0), 0);
        assert_eq!(check_order(&h), vec![]);
        // Concurrent topics are not held to order.
        let mut h = good();
        h.events.swap(0, 1);
        assert_eq!(check_order(&h), vec![]);
    }

    #[test]
    fn offsets_moving_backwards_fire() {
        let mut h = good();
        h.commits.push(("g1-1".into(), "C".into(), q(0), 2));
        assert!(matches!(
            check_offsets(&h)[..],
            [QueueViolation::OffsetBackwards { from: 3, to: 2, .. }]
        ));
        // Each replica and group is its own sequence.
        let mut h = good();
        h.commits.push(("g1-2".into(), "C".into(), q(0), 0));
        h.commits.push(("g1-1".into(), "D".into(), q(0), 0));
        assert_eq!(check_offsets(&h), vec![]);
    }
}
