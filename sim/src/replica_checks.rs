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
    /// Two replicas end their committed logs at different indexes after convergence.
    LogEnd {
        a: usize,
        b: usize,
        last_a: Option<u64>,
        last_b: Option<u64>,
    },
    /// Applied queues differ between two replicas.
    QueuesDiffer { a: usize, b: usize },
    /// Two leaders in one term.
    TwoLeaders { term: u64, leaders: Vec<NodeId> },
    /// A replica's term went down (across a restart): the term is persistent Raft state.
    TermWentBack { node: NodeId, from: u64, to: u64 },
    /// A queue's offsets have a hole.
    QueueGap {
        queue: (String, u32),
        after: u64,
        next: u64,
    },
    /// A queue offset held one message when observed during the run and another later.
    QueueRewritten {
        offset: u64,
        was: String,
        now: String,
    },
    /// A queue offset observed during the run is past the final end of the queue: applied
    /// messages were lost.
    QueueShrank { offset: u64, id: String },
}

/// Committed logs byte-identical over the entries every replica still holds (retention and
/// snapshot installs make replicas start at different indexes) and ending at the same
/// index; applied queues identical over the offsets every replica holds, ending at the same
/// offset, and gap-free.
pub fn check_replicas(logs: &[Vec<RawRecord>], queues: &[QueueContents]) -> Vec<ReplicaViolation> {
    let mut out = Vec::new();
    let first = logs
        .iter()
        .filter_map(|l| l.first().map(|r| r.index))
        .max()
        .unwrap_or(0);
    let tail = |l: &'_ [RawRecord]| -> Vec<RawRecord> {
        l.iter().filter(|r| r.index >= first).cloned().collect()
    };
    for b in 1..logs.len() {
        let (last_a, last_b) = (
            logs[0].last().map(|r| r.index),
            logs[b].last().map(|r| r.index),
        );
        if last_a != last_b {
            out.push(ReplicaViolation::LogEnd {
                a: 0,
                b,
                last_a,
                last_b,
            });
        }
        if let Some((x, _)) = tail(&logs[0])
            .iter()
            .zip(&tail(&logs[b]))
            .find(|(x, y)| x != y)
        {
            out.push(ReplicaViolation::LogsDiffer {
                a: 0,
                b,
                index: x.index,
            });
        }
    }
    for b in 1..queues.len() {
        if !queues_agree(&queues[0], &queues[b]) {
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

/// Same queues, same last offset each, same messages over the offsets both hold.
fn queues_agree(a: &QueueContents, b: &QueueContents) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, qa), (kb, qb))| {
            let from = qa
                .first()
                .map_or(0, |m| m.0)
                .max(qb.first().map_or(0, |m| m.0));
            let common = |q: &[(u64, String)]| -> Vec<(u64, String)> {
                q.iter().filter(|m| m.0 >= from).cloned().collect()
            };
            ka == kb && qa.last() == qb.last() && common(qa) == common(qb)
        })
}

/// A queue's messages as observed during a run, by offset (what retention deletes later
/// is still known).
pub type Archive = BTreeMap<u64, String>;

/// Adds one observation of a queue (`(offset, msg id)` in offset order) to `archive`;
/// reports an offset that held something else before.
pub fn observe(archive: &mut Archive, seen: &[(u64, String)]) -> Vec<ReplicaViolation> {
    let mut out = Vec::new();
    for (o, id) in seen {
        match archive.get(o) {
            None => {
                archive.insert(*o, id.clone());
            }
            Some(was) if was != id => out.push(ReplicaViolation::QueueRewritten {
                offset: *o,
                was: was.clone(),
                now: id.clone(),
            }),
            Some(_) => {}
        }
    }
    out
}

/// The final queue against everything observed during the run: nothing observed may be
/// past its end or differ from it.
pub fn check_archive(archive: &Archive, last: &[(u64, String)]) -> Vec<ReplicaViolation> {
    let mut scratch = archive.clone();
    let mut out = observe(&mut scratch, last);
    let end = last.last().map_or(0, |m| m.0 + 1);
    for (o, id) in archive.range(end..) {
        out.push(ReplicaViolation::QueueShrank {
            offset: *o,
            id: id.clone(),
        });
    }
    out
}

/// What the replica checks read from each replica: its committed log up to `upto` (raw
/// records) and its queues.
pub fn read_replicas(
    reps: &[raftmq_raft::Replica],
    upto: u64,
) -> (Vec<Vec<RawRecord>>, Vec<QueueContents>) {
    let logs = reps
        .iter()
        .map(|r| raftmq_raft::inspect::raw_log(r.store(), upto).expect("read log"))
        .collect();
    let queues = reps
        .iter()
        .map(|r| raftmq_raft::inspect::queue_contents(r.store()).expect("read queues"))
        .collect();
    (logs, queues)
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

/// Each replica's term never decreases, from its observed terms in order (restarts included:
/// the vote, with its term, is persisted before it is acted on).
pub fn check_terms(seen: &[(NodeId, u64)]) -> Vec<ReplicaViolation> {
    let mut max: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for &(node, term) in seen {
        let m = max.entry(node).or_insert(term);
        if term < *m {
            out.push(ReplicaViolation::TermWentBack {
                node,
                from: *m,
                to: term,
            });
        }
        *m = (*m).max(term);
    }
    out
}

/// Whether metrics are openraft's placeholder, published by `Raft::new` before the core has
/// loaded the stored vote and log (term 0, no log, nothing applied): a replica just
/// restarted shows them for an instant, and they say nothing about its persistent term.
pub fn placeholder_metrics(term: u64, last_log: Option<u64>, applied: Option<u64>) -> bool {
    term == 0 && last_log.is_none() && applied.is_none()
}

/// Records `term` for `node` if it differs from the last observation of that node.
pub fn observe_term(seen: &mut Vec<(NodeId, u64)>, node: NodeId, term: u64) {
    if seen.iter().rev().find(|(n, _)| *n == node).map(|(_, t)| *t) != Some(term) {
        seen.push((node, term));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_checker_fires_when_a_term_goes_back() {
        let mut seen = Vec::new();
        for (n, t) in [(1, 1), (2, 1), (1, 1), (1, 3), (2, 3)] {
            observe_term(&mut seen, n, t);
        }
        assert_eq!(seen.len(), 4);
        assert!(check_terms(&seen).is_empty());
        observe_term(&mut seen, 1, 0);
        assert_eq!(
            check_terms(&seen),
            vec![ReplicaViolation::TermWentBack {
                node: 1,
                from: 3,
                to: 0
            }]
        );
    }

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
    fn replicas_may_start_at_different_indexes_but_must_end_together() {
        let full = vec![rec(1, 1), rec(2, 2), rec(3, 3)];
        let purged = vec![rec(2, 2), rec(3, 3)];
        let q = |from: u64| -> QueueContents {
            BTreeMap::from([(
                ("T".into(), 0),
                (from..3).map(|o| (o, format!("m{o}"))).collect(),
            )])
        };
        assert!(check_replicas(&[full.clone(), purged.clone()], &[q(0), q(1)]).is_empty());
        let short = vec![rec(2, 2)];
        let v = check_replicas(&[full.clone(), short], &[q(0), q(1)]);
        assert!(
            v.iter()
                .any(|x| matches!(x, ReplicaViolation::LogEnd { .. })),
            "{v:?}"
        );
        let bad_tail = vec![rec(2, 2), rec(3, 7)];
        let v = check_replicas(&[full, bad_tail], &[]);
        assert!(v.contains(&ReplicaViolation::LogsDiffer {
            a: 0,
            b: 1,
            index: 3
        }));
        let mut other = q(1);
        other.get_mut(&("T".to_string(), 0)).unwrap()[1].1 = "x".into();
        assert_eq!(
            check_replicas(&[], &[q(0), other]),
            vec![ReplicaViolation::QueuesDiffer { a: 0, b: 1 }]
        );
    }

    #[test]
    fn archive_checker_fires_on_rewritten_and_lost_offsets() {
        let mut a = Archive::new();
        let seen: Vec<(u64, String)> = (0..5).map(|o| (o, format!("m{o}"))).collect();
        assert!(observe(&mut a, &seen).is_empty());
        // Retention removed 0..2; the rest is the same: fine.
        assert!(check_archive(&a, &seen[2..]).is_empty());
        // Offset 3 now holds another message.
        let mut rewritten = seen.clone();
        rewritten[3].1 = "other".into();
        assert_eq!(
            check_archive(&a, &rewritten),
            vec![ReplicaViolation::QueueRewritten {
                offset: 3,
                was: "m3".into(),
                now: "other".into()
            }]
        );
        // The queue ends before offset 4 that was seen applied.
        assert_eq!(
            check_archive(&a, &seen[..4]),
            vec![ReplicaViolation::QueueShrank {
                offset: 4,
                id: "m4".into()
            }]
        );
        assert_eq!(observe(&mut a, &rewritten).len(), 1);
    }

    #[test]
    fn leader_checker_fires_on_two_leaders_in_a_term() {
        let ok = BTreeMap::from([(1, BTreeSet::from([1])), (2, BTreeSet::from([2]))]);
        assert!(check_leaders(&ok).is_empty());
        let bad = BTreeMap::from([(3, BTreeSet::from([1, 2]))]);
        assert_eq!(check_leaders(&bad).len(), 1);
    }
}
