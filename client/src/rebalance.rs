//! Queue allocation for clustering consumers: which queues of a topic this member consumes.
//!
//! Every member computes its share on its own from the same inputs — the sorted list of the
//! group's live members (from any broker's `GetConsumerList`) and the sorted queues of the
//! topic (from the route) — so the shares never overlap and together cover every queue,
//! without any coordination. Inputs are sorted here, so their order does not matter.
//!
//! The functions are pure: no I/O, no clock, no randomness.
//!
//! ```
//! use raftmq_client::rebalance::{allocate, MessageQueue, Strategy};
//!
//! let queues: Vec<MessageQueue> = (0..4).map(|q| MessageQueue::new("T", "g1", q)).collect();
//! let members = ["c1".to_string(), "c2".to_string()];
//! let mine = allocate(&Strategy::Average, "c2", &members, &queues);
//! assert_eq!(mine, [MessageQueue::new("T", "g1", 2), MessageQueue::new("T", "g1", 3)]);
//! ```

use std::collections::{BTreeMap, BTreeSet};

/// One queue of a topic on one broker group.
///
/// ```
/// let q = raftmq_client::rebalance::MessageQueue::new("T", "g1", 3);
/// assert_eq!((q.topic.as_str(), q.group.as_str(), q.queue_id), ("T", "g1", 3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageQueue {
    pub topic: String,
    /// The broker group holding the queue.
    pub group: String,
    pub queue_id: u32,
}

impl MessageQueue {
    /// A queue.
    ///
    /// ```
    /// let q = raftmq_client::rebalance::MessageQueue::new("T", "g1", 0);
    /// assert_eq!(q.queue_id, 0);
    /// ```
    pub fn new(topic: &str, group: &str, queue_id: u32) -> Self {
        Self {
            topic: topic.to_string(),
            group: group.to_string(),
            queue_id,
        }
    }
}

/// How queues are shared among the members of a consumer group.
///
/// ```
/// use raftmq_client::rebalance::Strategy;
/// assert_eq!(Strategy::default(), Strategy::Average);
/// let _ch = Strategy::ConsistentHash { virtual_nodes: 32 };
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Contiguous runs of queues, as equal as possible; the first members get one more
    /// when the division is not exact (RocketMQ's default).
    #[default]
    Average,
    /// Queue `i` goes to member `i mod members`.
    AverageByCircle,
    /// Queues and members hashed onto a ring; a queue goes to the next member clockwise.
    /// When a member leaves only its queues move. More virtual nodes spread better.
    ConsistentHash { virtual_nodes: u32 },
    /// An operator's fixed assignment: member → queues (queues not named are not consumed;
    /// a queue named twice goes to the first member in sorted order).
    Manual(BTreeMap<String, Vec<MessageQueue>>),
}

/// The queues `me` consumes, sorted. Empty if `me` is not among `members`.
///
/// ```
/// use raftmq_client::rebalance::{allocate, MessageQueue, Strategy};
///
/// let queues: Vec<MessageQueue> = (0..5).map(|q| MessageQueue::new("T", "g1", q)).collect();
/// let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
/// let by_circle = allocate(&Strategy::AverageByCircle, "a", &members, &queues);
/// assert_eq!(by_circle.iter().map(|q| q.queue_id).collect::<Vec<_>>(), [0, 3]);
/// ```
pub fn allocate(
    strategy: &Strategy,
    me: &str,
    members: &[String],
    queues: &[MessageQueue],
) -> Vec<MessageQueue> {
    let members: Vec<&str> = members
        .iter()
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let queues: Vec<&MessageQueue> = queues.iter().collect::<BTreeSet<_>>().into_iter().collect();
    let Some(index) = members.iter().position(|m| *m == me) else {
        return Vec::new();
    };
    if queues.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<MessageQueue> = match strategy {
        Strategy::Average => average(&queues, &members, index),
        Strategy::AverageByCircle => by_circle(&queues, &members, index),
        Strategy::ConsistentHash { virtual_nodes } => {
            consistent_hash(&queues, &members, me, *virtual_nodes)
        }
        Strategy::Manual(assignment) => manual(assignment, &queues, me),
    };
    out.sort();
    out
}

/// [`Strategy::Average`]: member `index` of `members` takes a contiguous run of the sorted
/// `queues`.
fn average(queues: &[&MessageQueue], members: &[&str], index: usize) -> Vec<MessageQueue> {
    let (q, c) = (queues.len(), members.len());
    let rem = q % c;
    let size = if q <= c {
        1
    } else if index < rem {
        q / c + 1
    } else {
        q / c
    };
    let start = if index < rem {
        index * size
    } else {
        index * size + rem
    };
    (0..size.min(q.saturating_sub(start)))
        .map(|i| queues[(start + i) % q].clone())
        .collect()
}

/// [`Strategy::AverageByCircle`]: member `index` of `members` takes every `members.len()`-th
/// queue.
fn by_circle(queues: &[&MessageQueue], members: &[&str], index: usize) -> Vec<MessageQueue> {
    queues
        .iter()
        .enumerate()
        .filter(|(i, _)| i % members.len() == index)
        .map(|(_, q)| (*q).clone())
        .collect()
}

/// [`Strategy::ConsistentHash`]: the queues whose next member clockwise on the ring is `me`.
fn consistent_hash(
    queues: &[&MessageQueue],
    members: &[&str],
    me: &str,
    virtual_nodes: u32,
) -> Vec<MessageQueue> {
    let vn = virtual_nodes.max(1);
    let ring: BTreeMap<u64, &str> = members
        .iter()
        .flat_map(|m| (0..vn).map(move |i| (fnv1a(format!("{m}#{i}").as_bytes()), *m)))
        .collect();
    queues
        .iter()
        .filter(|q| {
            let h = fnv1a(format!("{}@{}#{}", q.topic, q.group, q.queue_id).as_bytes());
            let owner = ring
                .range(h..)
                .next()
                .or_else(|| ring.iter().next())
                .map(|(_, m)| *m);
            owner == Some(me)
        })
        .map(|q| (*q).clone())
        .collect()
}

/// [`Strategy::Manual`]: the existing queues `assignment` gives `me`; the first member (sorted)
/// naming a queue gets it.
fn manual(
    assignment: &BTreeMap<String, Vec<MessageQueue>>,
    queues: &[&MessageQueue],
    me: &str,
) -> Vec<MessageQueue> {
    let existing: BTreeSet<&MessageQueue> = queues.iter().copied().collect();
    let mut taken: BTreeSet<&MessageQueue> = BTreeSet::new();
    let mut mine = Vec::new();
    for (m, qs) in assignment {
        for q in qs {
            if existing.contains(q) && taken.insert(q) && m == me {
                mine.push(q.clone());
            }
        }
    }
    mine
}

/// FNV-1a, 64 bits: stable across processes, versions and platforms (the ring must be the
/// same on every member).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(n: u32) -> Vec<MessageQueue> {
        (0..n)
            .map(|i| MessageQueue::new("T", if i % 2 == 0 { "g1" } else { "g2" }, i / 2))
            .collect()
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("client-{i:02}")).collect()
    }

    fn strategies() -> Vec<Strategy> {
        vec![
            Strategy::Average,
            Strategy::AverageByCircle,
            Strategy::ConsistentHash { virtual_nodes: 1 },
            Strategy::ConsistentHash { virtual_nodes: 64 },
        ]
    }

    fn shares(
        s: &Strategy,
        ms: &[String],
        qs: &[MessageQueue],
    ) -> BTreeMap<String, Vec<MessageQueue>> {
        ms.iter()
            .map(|m| (m.clone(), allocate(s, m, ms, qs)))
            .collect()
    }

    #[test]
    fn every_queue_goes_to_exactly_one_member() {
        for s in strategies() {
            for nq in [0, 1, 3, 4, 8, 9, 16, 31] {
                for nm in [1, 2, 3, 5, 8, 40] {
                    let (qs, ms) = (queues(nq), members(nm));
                    let mut seen: BTreeMap<MessageQueue, usize> = BTreeMap::new();
                    for share in shares(&s, &ms, &qs).values() {
                        for q in share {
                            *seen.entry(q.clone()).or_default() += 1;
                        }
                    }
                    assert_eq!(seen.len(), qs.len(), "{s:?} {nq} queues {nm} members");
                    assert!(seen.values().all(|&n| n == 1), "{s:?} {nq}/{nm}: {seen:?}");
                }
            }
        }
    }

    #[test]
    fn average_strategies_are_balanced() {
        for s in [Strategy::Average, Strategy::AverageByCircle] {
            for nq in [4, 9, 16, 31] {
                for nm in [2, 3, 5] {
                    let sizes: Vec<usize> = shares(&s, &members(nm), &queues(nq))
                        .values()
                        .map(Vec::len)
                        .collect();
                    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(max - min <= 1, "{s:?} {nq}/{nm}: {sizes:?}");
                }
            }
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let (qs, ms) = (queues(13), members(4));
        let mut qr = qs.clone();
        qr.reverse();
        qr.swap(0, 5);
        let mut mr = ms.clone();
        mr.reverse();
        mr.push(ms[0].clone()); // a duplicate entry changes nothing either
        for s in strategies() {
            assert_eq!(shares(&s, &ms, &qs), shares(&s, &mr, &qr), "{s:?}");
        }
    }

    #[test]
    fn consistent_hash_moves_only_the_leavers_queues() {
        let qs = queues(64);
        let ms = members(5);
        let s = Strategy::ConsistentHash { virtual_nodes: 32 };
        let before = shares(&s, &ms, &qs);
        let gone = &ms[2];
        let rest: Vec<String> = ms.iter().filter(|m| *m != gone).cloned().collect();
        let after = shares(&s, &rest, &qs);
        for m in &rest {
            for q in &before[m] {
                assert!(
                    after[m].contains(q),
                    "{q:?} moved away from {m}, who stayed"
                );
            }
        }
        let moved: usize = rest.iter().map(|m| after[m].len() - before[m].len()).sum();
        assert_eq!(moved, before[gone].len(), "only the leaver's queues move");
        // Average, by contrast, moves queues between members who stayed.
        let avg_before = shares(&Strategy::Average, &ms, &qs);
        let avg_after = shares(&Strategy::Average, &rest, &qs);
        let kept = rest
            .iter()
            .map(|m| {
                avg_before[m]
                    .iter()
                    .filter(|q| avg_after[m].contains(q))
                    .count()
            })
            .sum::<usize>();
        assert!(kept < 64 - before[gone].len());
    }

    #[test]
    fn manual_assignment_and_strangers() {
        let qs = queues(4);
        let ms = members(2);
        let assignment = BTreeMap::from([
            (
                ms[0].clone(),
                vec![
                    qs[0].clone(),
                    qs[1].clone(),
                    MessageQueue::new("T", "gone", 9),
                ],
            ),
            (ms[1].clone(), vec![qs[1].clone(), qs[2].clone()]),
        ]);
        let s = Strategy::Manual(assignment);
        assert_eq!(
            allocate(&s, &ms[0], &ms, &qs),
            [qs[0].clone(), qs[1].clone()]
        );
        assert_eq!(
            allocate(&s, &ms[1], &ms, &qs),
            [qs[2].clone()],
            "queue 1 went to the first member"
        );
        assert!(allocate(&Strategy::Average, "stranger", &ms, &qs).is_empty());
    }
}
