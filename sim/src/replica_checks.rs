//! Checkers over a replicated group's final state (pure functions; each has a test that
//! makes it fire).

use std::collections::{BTreeMap, BTreeSet};

use raftmq_raft::NodeId;
use raftmq_raft::inspect::{QueueContents, RawRecord};

/// A replica-level finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaViolation {
    /// Two replicas hold different bytes for a committed entry.
    LogsDiffer { a: usize, b: usize, index: u64 },
    /// Two replicas hold a different number of committed entries after convergence.
    LogLength {
        a: usize,
        b: usize,
        len_a: usize,
        len_b: usize,
    },
    /// Applied queues differ between two replicas.
    QueuesDiffer { a: usize, b: usize },
    /// Two leaders in one term.
    TwoLeaders { term: u64, leaders: Vec<NodeId> },
    /// A queue's offsets have a hole.
    QueueGap {
        queue: (String, u32),
        after: u64,
        next: u64,
    },
}

/// Committed logs byte-identical (each is the raw log up to the commit index) and applied
/// queues identical and gap-free.
pub fn check_replicas(logs: &[Vec<RawRecord>], queues: &[QueueContents]) -> Vec<ReplicaViolation> {
    let mut out = Vec::new();
    for b in 1..logs.len() {
        if logs[b].len() != logs[0].len() {
            out.push(ReplicaViolation::LogLength {
                a: 0,
                b,
                len_a: logs[0].len(),
                len_b: logs[b].len(),
            });
        }
        if let Some((x, _)) = logs[0].iter().zip(&logs[b]).find(|(x, y)| x != y) {
            out.push(ReplicaViolation::LogsDiffer {
                a: 0,
                b,
                index: x.index,
            });
        }
    }
    for b in 1..queues.len() {
        if queues[b] != queues[0] {
            out.push(ReplicaViolation::QueuesDiffer { a: 0, b });
        }
    }
    for q in queues {
        for (queue, msgs) in q {
            for w in msgs.windows(2) {
                if w[1].0 != w[0].0 + 1 {
                    out.push(ReplicaViolation::QueueGap {
                        queue: queue.clone(),
                        after: w[0].0,
                        next: w[1].0,
                    });
                }
            }
        }
    }
    out
}

/// At most one leader per term, from the observed (term, leader) pairs.
pub fn check_leaders(seen: &BTreeMap<u64, BTreeSet<NodeId>>) -> Vec<ReplicaViolation> {
    seen.iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(t, l)| ReplicaViolation::TwoLeaders {
            term: *t,
            leaders: l.iter().copied().collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: u64, b: u8) -> RawRecord {
        RawRecord {
            index,
            term: 1,
            position: index * 10,
            bytes: vec![b; 4],
        }
    }

    #[test]
    fn replica_checker_fires_on_divergence() {
        let a = vec![rec(1, 1), rec(2, 2)];
        let b = vec![rec(1, 1), rec(2, 9)];
        let q: QueueContents =
            BTreeMap::from([(("T".into(), 0), vec![(0, "x".into()), (2, "y".into())])]);
        let v = check_replicas(&[a.clone(), b], &[q.clone(), QueueContents::new()]);
        assert!(v.contains(&ReplicaViolation::LogsDiffer {
            a: 0,
            b: 1,
            index: 2
        }));
        assert!(v.contains(&ReplicaViolation::QueuesDiffer { a: 0, b: 1 }));
        assert!(v.iter().any(|x| matches!(
            x,
            ReplicaViolation::QueueGap {
                after: 0,
                next: 2,
                ..
            }
        )));
        assert!(check_replicas(&[a.clone(), a], &[]).is_empty());
    }

    #[test]
    fn leader_checker_fires_on_two_leaders_in_a_term() {
        let ok = BTreeMap::from([(1, BTreeSet::from([1])), (2, BTreeSet::from([2]))]);
        assert!(check_leaders(&ok).is_empty());
        let bad = BTreeMap::from([(3, BTreeSet::from([1, 2]))]);
        assert_eq!(check_leaders(&bad).len(), 1);
    }
}
