//! Checkers of the transactional workload, over what the clients saw and what the group's
//! transaction table says at the end.
//!
//! Each transaction is named by its body (`t<i>`); its plan ([`plan`]) fixes what the local
//! transaction "did" (its truth: commit or roll back) and how the listener answers: at once,
//! or `Unknown` first and the truth on a check (after some `Unknown` checks). A retried half
//! send may store a body twice (two halves): each half is its own transaction with the same
//! truth, so checks and copies are counted per half (its position).
//!
//! The rules ([`check_txn_history`]):
//! - a transaction is decided as its listener's truth, never the other way (a rollback at the
//!   check limit of a commit is a violation: the harness always keeps a member able to answer);
//! - committed → consumed (at-least-once), and never delivered before a commit was requested
//!   (by the producer's end or a check's answer); rolled back → never consumed;
//! - no half message is ever delivered as such (every delivered message is a commit's copy,
//!   naming its half);
//! - one copy per half: a half committed into its queue twice is a violation;
//! - checks: a check number is never asked twice of one half, and never past `max_checks`;
//! - after healing, nothing stays undecided.

use std::collections::{BTreeMap, BTreeSet};

/// What the local transaction decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    Commit,
    Rollback,
}

/// How the listener treats one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub truth: Truth,
    /// `execute_local` answers `Unknown` (a check decides).
    pub execute_unknown: bool,
    /// Checks answered `Unknown` before the truth.
    pub unknown_checks: u32,
    /// `execute_local` says `Unknown`, then the producer sends two commits at once (a
    /// retried `EndTransaction` racing the first, as a producer's end races a check's answer).
    pub end_twice: bool,
}

/// The plan of transaction `i` (six kinds, in turn).
pub fn plan(i: u32) -> Plan {
    let truth = if i.is_multiple_of(2) {
        Truth::Commit
    } else {
        Truth::Rollback
    };
    match i % 6 {
        0 => Plan {
            truth,
            execute_unknown: true,
            unknown_checks: 0,
            end_twice: true,
        },
        1 => Plan {
            truth,
            execute_unknown: false,
            unknown_checks: 0,
            end_twice: false,
        },
        2 | 3 => Plan {
            truth,
            execute_unknown: true,
            unknown_checks: 0,
            end_twice: false,
        },
        _ => Plan {
            truth,
            execute_unknown: true,
            unknown_checks: 2,
            end_twice: false,
        },
    }
}

/// The plan of the transaction with body `t<i>`.
pub fn plan_of(body: &str) -> Option<Plan> {
    body.strip_prefix('t')?.parse().ok().map(plan)
}

/// What the local transaction of `body` answers when it runs: its truth, or `None`
/// (`Unknown`: a check decides; also for a body of no plan).
pub fn execute_answer(body: &str) -> Option<Truth> {
    plan_of(body)
        .filter(|p| !p.execute_unknown)
        .map(|p| p.truth)
}

/// What the listener answers to the `asked`-th check (1 = the first) of one of `body`'s
/// halves: `None` (`Unknown`) for the plan's first `unknown_checks`, then the truth.
pub fn check_answer(body: &str, asked: u32) -> Option<Truth> {
    plan_of(body)
        .filter(|p| asked > p.unknown_checks)
        .map(|p| p.truth)
}

/// One delivery to the transactional topic's consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub body: String,
    /// The half it commits (`None`: the message names no half — a half delivered as such).
    pub half: Option<u64>,
    /// `topic@group:queue` (a half's position is its group's).
    pub queue: String,
    pub offset: u64,
    /// Simulated ms since the run started.
    pub at: u64,
}

/// A half's record in the table at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub half: u64,
    pub commit: bool,
    pub reason: String,
}

/// What the run saw.
#[derive(Debug, Clone, Default)]
pub struct TxnHistory {
    /// Body → when its half send was acknowledged.
    pub halves: BTreeMap<String, u64>,
    /// Bodies whose half send failed (it may be stored).
    pub indeterminate: BTreeSet<String>,
    /// Body → the first time a commit was requested (the producer's end or a check's answer).
    pub commit_requested: BTreeMap<String, u64>,
    /// (body, half offset_msg_id, check number, at) for every check a producer got.
    pub checks: Vec<(String, String, u32, u64)>,
    pub deliveries: Vec<Delivery>,
    /// Body → its decided halves, from the table at the end.
    pub decided: BTreeMap<String, Vec<Decided>>,
    /// Body → halves still undecided at the end.
    pub pending: BTreeMap<String, Vec<u64>>,
}

impl TxnHistory {
    /// Records a commit requested at `at` (the first one counts).
    pub fn commit_requested(&mut self, body: &str, at: u64) {
        self.commit_requested.entry(body.to_string()).or_insert(at);
    }
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnViolation {
    /// Decided the other way than its listener's truth.
    WrongOutcome {
        body: String,
        half: u64,
        commit: bool,
        reason: String,
    },
    /// Committed, never consumed.
    CommittedNotConsumed { body: String },
    /// Its truth is rollback, yet consumed.
    RolledBackConsumed { body: String, at: u64 },
    /// Delivered before any commit was requested.
    VisibleBeforeCommit { body: String, at: u64 },
    /// Delivered as a half message (no commit copy).
    HalfDelivered {
        body: String,
        queue: String,
        offset: u64,
    },
    /// One half in its queue more than once.
    CommittedTwice {
        body: String,
        half: u64,
        copies: Vec<(String, u64)>,
    },
    /// One check number asked twice of one half.
    CheckRepeated {
        body: String,
        half: String,
        number: u32,
    },
    /// A check past the limit.
    TooManyChecks {
        body: String,
        half: String,
        number: u32,
    },
    /// Undecided after healing.
    Undecided { body: String, halves: Vec<u64> },
    /// A transaction of no plan (the harness named it wrongly).
    Unplanned { body: String },
}

/// Every violation in `h` (see the module docs).
pub fn check_txn_history(h: &TxnHistory, max_checks: u32) -> Vec<TxnViolation> {
    let mut out = Vec::new();
    let truth = |body: &str| plan_of(body).map(|p| p.truth);
    for (body, records) in &h.decided {
        let Some(t) = truth(body) else {
            out.push(TxnViolation::Unplanned { body: body.clone() });
            continue;
        };
        for d in records {
            if d.commit != (t == Truth::Commit) {
                out.push(TxnViolation::WrongOutcome {
                    body: body.clone(),
                    half: d.half,
                    commit: d.commit,
                    reason: d.reason.clone(),
                });
            }
        }
        if records.iter().any(|d| d.commit) && !h.deliveries.iter().any(|d| d.body == *body) {
            out.push(TxnViolation::CommittedNotConsumed { body: body.clone() });
        }
    }
    // Positions are per broker group: a half is (topic@group, position).
    let mut copies: BTreeMap<(&str, u64), BTreeSet<(String, u64)>> = BTreeMap::new();
    let mut seen_bad = BTreeSet::new();
    for d in &h.deliveries {
        if truth(&d.body) == Some(Truth::Rollback) && seen_bad.insert(d.body.clone()) {
            out.push(TxnViolation::RolledBackConsumed {
                body: d.body.clone(),
                at: d.at,
            });
        }
        if h.commit_requested.get(&d.body).is_none_or(|&t| t > d.at) {
            out.push(TxnViolation::VisibleBeforeCommit {
                body: d.body.clone(),
                at: d.at,
            });
        }
        match d.half {
            None => out.push(TxnViolation::HalfDelivered {
                body: d.body.clone(),
                queue: d.queue.clone(),
                offset: d.offset,
            }),
            Some(half) => {
                let group = d.queue.split(':').next().unwrap_or_default();
                copies
                    .entry((group, half))
                    .or_default()
                    .insert((d.queue.clone(), d.offset));
            }
        }
    }
    for ((group, half), c) in copies {
        if c.len() > 1 {
            let body = h
                .deliveries
                .iter()
                .find(|d| d.half == Some(half) && d.queue.starts_with(group))
                .map(|d| d.body.clone())
                .unwrap_or_default();
            out.push(TxnViolation::CommittedTwice {
                body,
                half,
                copies: c.into_iter().collect(),
            });
        }
    }
    let mut asked: BTreeSet<(&str, u32)> = BTreeSet::new();
    for (body, half, number, _) in &h.checks {
        if !asked.insert((half.as_str(), *number)) {
            out.push(TxnViolation::CheckRepeated {
                body: body.clone(),
                half: half.clone(),
                number: *number,
            });
        }
        if *number > max_checks {
            out.push(TxnViolation::TooManyChecks {
                body: body.clone(),
                half: half.clone(),
                number: *number,
            });
        }
    }
    for (body, halves) in &h.pending {
        out.push(TxnViolation::Undecided {
            body: body.clone(),
            halves: halves.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_answer_as_the_plan_says() {
        // t1: rolled back at once; t4: Unknown at once, then two Unknown checks, then commit.
        assert_eq!(execute_answer("t1"), Some(Truth::Rollback));
        assert_eq!(execute_answer("t4"), None);
        assert_eq!(check_answer("t4", 1), None);
        assert_eq!(check_answer("t4", 2), None);
        assert_eq!(check_answer("t4", 3), Some(Truth::Commit));
        assert_eq!(execute_answer("x"), None, "no plan: Unknown");
        assert_eq!(check_answer("x", 9), None);
    }

    fn delivery(body: &str, half: Option<u64>, offset: u64, at: u64) -> Delivery {
        Delivery {
            body: body.into(),
            half,
            queue: "TX@g1:0".into(),
            offset,
            at,
        }
    }

    /// t0 committed and consumed, t1 rolled back: clean.
    fn clean() -> TxnHistory {
        let mut h = TxnHistory::default();
        h.halves.insert("t0".into(), 10);
        h.halves.insert("t1".into(), 11);
        h.commit_requested("t0", 12);
        h.decided.insert(
            "t0".into(),
            vec![Decided {
                half: 100,
                commit: true,
                reason: "commit".into(),
            }],
        );
        h.decided.insert(
            "t1".into(),
            vec![Decided {
                half: 200,
                commit: false,
                reason: "rollback by producer".into(),
            }],
        );
        h.deliveries.push(delivery("t0", Some(100), 0, 20));
        // Redelivered (same copy): allowed.
        h.deliveries.push(delivery("t0", Some(100), 0, 30));
        h.checks.push(("t4".into(), "H4".into(), 1, 5));
        h.checks.push(("t4".into(), "H4".into(), 2, 6));
        h
    }

    #[test]
    fn plans_cover_every_kind() {
        let kinds: BTreeSet<(bool, bool, u32, bool)> = (0..6)
            .map(plan)
            .map(|p| {
                (
                    p.truth == Truth::Commit,
                    p.execute_unknown,
                    p.unknown_checks,
                    p.end_twice,
                )
            })
            .collect();
        assert_eq!(kinds.len(), 6);
        assert_eq!(plan_of("t7"), Some(plan(7)));
        assert_eq!(plan_of("q7"), None);
    }

    #[test]
    fn a_clean_history_passes() {
        assert_eq!(check_txn_history(&clean(), 15), vec![]);
        // A body stored in two groups (a retried send), each half committed once: the same
        // position in two groups is two halves.
        let mut h = clean();
        let mut other = delivery("t0", Some(100), 0, 40);
        other.queue = "TX@g2:0".into();
        h.deliveries.push(other);
        assert_eq!(check_txn_history(&h, 15), vec![]);
    }

    #[test]
    fn each_rule_fires() {
        let fires = |edit: &dyn Fn(&mut TxnHistory), want: &dyn Fn(&TxnViolation) -> bool| {
            let mut h = clean();
            edit(&mut h);
            let v = check_txn_history(&h, 3);
            assert!(v.iter().any(want), "{v:?}");
        };
        // A commit's truth rolled back (e.g. at the check limit).
        fires(
            &|h| h.decided.get_mut("t0").unwrap()[0].commit = false,
            &|v| matches!(v, TxnViolation::WrongOutcome { .. }),
        );
        // Committed, never consumed.
        fires(&|h| h.deliveries.clear(), &|v| {
            matches!(v, TxnViolation::CommittedNotConsumed { .. })
        });
        // A rolled-back transaction consumed.
        fires(
            &|h| h.deliveries.push(delivery("t1", Some(200), 1, 40)),
            &|v| matches!(v, TxnViolation::RolledBackConsumed { .. }),
        );
        // Consumed before the commit was asked for.
        fires(
            &|h| {
                h.commit_requested.insert("t0".into(), 25);
            },
            &|v| matches!(v, TxnViolation::VisibleBeforeCommit { .. }),
        );
        // A half delivered as such.
        fires(&|h| h.deliveries.push(delivery("t2", None, 1, 40)), &|v| {
            matches!(v, TxnViolation::HalfDelivered { .. })
        });
        // A half committed twice (two copies in the queue).
        fires(
            &|h| h.deliveries.push(delivery("t0", Some(100), 1, 40)),
            &|v| matches!(v, TxnViolation::CommittedTwice { .. }),
        );
        // A check number asked again (a new leader restarting the count).
        fires(&|h| h.checks.push(("t4".into(), "H4".into(), 1, 9)), &|v| {
            matches!(v, TxnViolation::CheckRepeated { .. })
        });
        // Past the limit.
        fires(&|h| h.checks.push(("t4".into(), "H4".into(), 4, 9)), &|v| {
            matches!(v, TxnViolation::TooManyChecks { .. })
        });
        // Undecided after healing.
        fires(
            &|h| {
                h.pending.insert("t2".into(), vec![300]);
            },
            &|v| matches!(v, TxnViolation::Undecided { .. }),
        );
    }
}
