//! The recorded history of a store scenario and the checkers that judge it.
//!
//! A client write is `(client, seq)`; an acknowledgement says which log index the write got.
//! After the run, the final log (read back from the recovered store) is compared with what was
//! acknowledged.

use std::collections::{BTreeMap, BTreeSet};

/// A write as identified by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId {
    pub client: u32,
    pub seq: u32,
}

/// What the clients saw.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Acknowledged writes, in acknowledgement order per client, with the index they got.
    pub acked: Vec<(WriteId, u64)>,
    /// Writes whose outcome is unknown (timeout or crash before the answer).
    pub indeterminate: BTreeSet<WriteId>,
    /// Faults injected, as readable lines for the timeline.
    pub faults: Vec<String>,
}

/// The final log: index → write.
pub type FinalLog = BTreeMap<u64, WriteId>;

/// A checker's finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged write is missing from the final log (or another write sits at its index).
    Lost {
        write: WriteId,
        index: u64,
        found: Option<WriteId>,
    },
    /// A client's acknowledged writes appear out of acknowledgement order.
    Reordered {
        client: u32,
        earlier: WriteId,
        later: WriteId,
    },
    /// The same write appears twice in the log.
    Duplicated { write: WriteId, indexes: Vec<u64> },
    /// The log has a hole.
    Gap { after: u64, next: u64 },
    /// Something in the log no client ever sent.
    Unexpected { index: u64, write: WriteId },
}

/// Every acknowledged write is in the final log at the index it was acknowledged with.
pub fn check_lost(h: &History, log: &FinalLog) -> Vec<Violation> {
    h.acked
        .iter()
        .filter(|(w, i)| log.get(i) != Some(w))
        .map(|(w, i)| Violation::Lost {
            write: *w,
            index: *i,
            found: log.get(i).copied(),
        })
        .collect()
}

/// Per client, acknowledged writes are in the log in acknowledgement order.
pub fn check_order(h: &History, log: &FinalLog) -> Vec<Violation> {
    let pos: BTreeMap<WriteId, u64> = log.iter().map(|(i, w)| (*w, *i)).collect();
    let mut last: BTreeMap<u32, (WriteId, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for (w, _) in &h.acked {
        let Some(&i) = pos.get(w) else { continue };
        if let Some(&(prev, pi)) = last.get(&w.client)
            && pi >= i
        {
            out.push(Violation::Reordered {
                client: w.client,
                earlier: prev,
                later: *w,
            });
        }
        last.insert(w.client, (*w, i));
    }
    out
}

/// No write twice, no holes, nothing that was never sent.
pub fn check_log_shape(h: &History, log: &FinalLog) -> Vec<Violation> {
    let sent: BTreeSet<WriteId> = h
        .acked
        .iter()
        .map(|(w, _)| *w)
        .chain(h.indeterminate.iter().copied())
        .collect();
    let mut out = Vec::new();
    let mut seen: BTreeMap<WriteId, Vec<u64>> = BTreeMap::new();
    let mut prev: Option<u64> = None;
    for (&i, &w) in log {
        if let Some(p) = prev
            && i != p + 1
        {
            out.push(Violation::Gap { after: p, next: i });
        }
        prev = Some(i);
        seen.entry(w).or_default().push(i);
        if !sent.contains(&w) {
            out.push(Violation::Unexpected { index: i, write: w });
        }
    }
    for (w, idx) in seen {
        if idx.len() > 1 {
            out.push(Violation::Duplicated {
                write: w,
                indexes: idx,
            });
        }
    }
    out
}

/// Every checker.
pub fn check_all(h: &History, log: &FinalLog) -> Vec<Violation> {
    let mut v = check_lost(h, log);
    v.extend(check_order(h, log));
    v.extend(check_log_shape(h, log));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: u32, seq: u32) -> WriteId {
        WriteId { client, seq }
    }

    fn good() -> (History, FinalLog) {
        let h = History {
            acked: vec![(w(0, 0), 1), (w(1, 0), 2), (w(0, 1), 3)],
            indeterminate: [w(1, 1)].into_iter().collect(),
            faults: vec![],
        };
        let log = [(1, w(0, 0)), (2, w(1, 0)), (3, w(0, 1)), (4, w(1, 1))]
            .into_iter()
            .collect();
        (h, log)
    }

    #[test]
    fn a_good_history_passes() {
        let (h, log) = good();
        assert!(check_all(&h, &log).is_empty());
    }

    #[test]
    fn lost_fires_on_a_missing_acknowledged_write() {
        let (h, mut log) = good();
        log.remove(&3);
        assert_eq!(
            check_lost(&h, &log),
            vec![Violation::Lost {
                write: w(0, 1),
                index: 3,
                found: None
            }]
        );
        let (h, mut log) = good();
        log.insert(2, w(1, 1));
        assert!(matches!(
            check_lost(&h, &log)[..],
            [Violation::Lost { found: Some(_), .. }]
        ));
    }

    #[test]
    fn order_fires_on_reordered_acknowledgements() {
        let (mut h, log) = good();
        h.acked.swap(0, 2);
        assert!(matches!(
            check_order(&h, &log)[..],
            [Violation::Reordered { client: 0, .. }]
        ));
    }

    #[test]
    fn shape_fires_on_gaps_duplicates_and_strangers() {
        let (h, mut log) = good();
        log.insert(6, w(0, 0));
        log.insert(7, w(9, 9));
        let v = check_log_shape(&h, &log);
        assert!(v.contains(&Violation::Gap { after: 4, next: 6 }));
        assert!(v.contains(&Violation::Duplicated {
            write: w(0, 0),
            indexes: vec![1, 6]
        }));
        assert!(v.contains(&Violation::Unexpected {
            index: 7,
            write: w(9, 9)
        }));
    }
}
