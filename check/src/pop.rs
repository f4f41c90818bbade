//! POP consumption (RocketMQ 5's receive / ack / change-invisible through `raftmq proxy`):
//!
//! - **lost**: an acknowledged send never handed out;
//! - **ack lost**: handed out again after an ack of its current receipt succeeded (an ack the
//!   group acknowledged must stick, across failovers);
//! - **early**: handed out again before the invisible time of the receipt it had (the claim's
//!   `visible_at_ms`, or the one a change set), by the claiming leader's clock;
//! - **attempts**: a delivery whose attempt number is not above the previous delivery's;
//! - **fifo order**: in a FIFO group, a message handed out while an earlier one of its queue
//!   (lower offset) was still unacknowledged and invisible (not judged when an ack or change
//!   of the earlier one's receipt had an unknown outcome: it may have released the queue);
//! - **unexpected**: a delivery of nothing that was sent.
//!
//! A message is a stored message — (queue, offset) — not a body: a send retried after an
//! unknown outcome may store one body twice, each copy consumed on its own.
//!
//! Times are the broker group's (its leader's clock, carried in the commands); the recorder
//! notes `at_ms` as the claim's now, which the receive answers as `visible_at_ms -
//! invisible_ms`.

use std::collections::{BTreeMap, BTreeSet};

/// One message handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopDelivery {
    pub body: String,
    /// `group/queue` of the broker group.
    pub queue: String,
    pub offset: u64,
    pub attempt: u32,
    pub epoch: u64,
    /// When it was handed out (the claim's clock).
    pub at_ms: u64,
    /// Until when it is invisible under this receipt.
    pub visible_at_ms: u64,
}

/// What the POP workload saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PopHistory {
    /// Bodies whose send was acknowledged.
    pub sent: BTreeSet<String>,
    /// Bodies whose send's outcome is unknown.
    pub indeterminate: BTreeSet<String>,
    pub deliveries: Vec<PopDelivery>,
    /// Successful changes: (queue, offset, old epoch, new epoch, new visible_at_ms).
    pub changes: Vec<(String, u64, u64, u64, u64)>,
    /// Successful acks: (queue, offset, epoch, when the ack was sent: it applied at or after
    /// that; a claim between its sending and its answer may legitimately come before it).
    pub acks: Vec<(String, u64, u64, u64)>,
    /// Acks and changes whose outcome is unknown (no answer): (queue, offset, epoch). Such
    /// an ack may have finished the message; such a change may have moved its visible time.
    pub unknown: Vec<(String, u64, u64)>,
    /// The acks among them (a message may be finished by one).
    pub unknown_acks: Vec<(String, u64, u64)>,
    /// The group consumes in FIFO order.
    pub fifo: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PopViolation {
    Lost {
        body: String,
    },
    AckLost {
        body: String,
        acked_epoch: u64,
        redelivered_at: u64,
    },
    Early {
        body: String,
        visible_at_ms: u64,
        redelivered_at: u64,
    },
    Attempts {
        body: String,
        previous: u32,
        then: u32,
    },
    FifoOrder {
        body: String,
        earlier: String,
    },
    Unexpected {
        body: String,
    },
}

/// Every violation in `h`.
pub fn check_pop_history(h: &PopHistory) -> Vec<PopViolation> {
    let mut out = Vec::new();
    let mut by_message: BTreeMap<(&str, u64), Vec<&PopDelivery>> = BTreeMap::new();
    let bodies: BTreeSet<&str> = h.deliveries.iter().map(|d| d.body.as_str()).collect();
    for d in &h.deliveries {
        by_message
            .entry((d.queue.as_str(), d.offset))
            .or_default()
            .push(d);
        if !h.sent.contains(&d.body) && !h.indeterminate.contains(&d.body) {
            out.push(PopViolation::Unexpected {
                body: d.body.clone(),
            });
        }
    }
    for b in &h.sent {
        if !bodies.contains(b.as_str()) {
            out.push(PopViolation::Lost { body: b.clone() });
        }
    }
    for ((queue, offset), ds) in &mut by_message {
        ds.sort_by_key(|d| (d.at_ms, d.epoch));
        let body = ds[0].body.as_str();
        for w in ds.windows(2) {
            let (prev, next) = (w[0], w[1]);
            if next.attempt <= prev.attempt {
                out.push(PopViolation::Attempts {
                    body: body.to_string(),
                    previous: prev.attempt,
                    then: next.attempt,
                });
            }
            // The receipt it last had before `next`: the delivery's, or a change of it.
            let mut visible = prev.visible_at_ms;
            let mut epoch = prev.epoch;
            for (q, o, old, new, v) in &h.changes {
                if q == queue && o == offset && *old == epoch && *new < next.epoch {
                    epoch = *new;
                    visible = *v;
                }
            }
            let unsure = h
                .unknown
                .iter()
                .any(|(q, o, e)| q == queue && o == offset && *e == epoch);
            if next.at_ms < visible && !unsure {
                out.push(PopViolation::Early {
                    body: body.to_string(),
                    visible_at_ms: visible,
                    redelivered_at: next.at_ms,
                });
            }
        }
        for (q, o, epoch, _) in &h.acks {
            if q != queue || o != offset {
                continue;
            }
            if let Some(later) = ds.iter().find(|d| d.epoch > *epoch) {
                out.push(PopViolation::AckLost {
                    body: body.to_string(),
                    acked_epoch: *epoch,
                    redelivered_at: later.at_ms,
                });
            }
        }
    }
    if h.fifo {
        out.extend(fifo_order(h));
    }
    out
}

/// In a FIFO group nothing of a queue is handed out while an earlier message of it is
/// unacknowledged and invisible.
fn fifo_order(h: &PopHistory) -> Vec<PopViolation> {
    let mut out = Vec::new();
    // When each receipt stopped holding its queue at the earliest: its ack was sent, or its
    // invisible time ran out (a change moves it).
    let acked: BTreeMap<(&str, u64, u64), u64> = h
        .acks
        .iter()
        .map(|(q, o, e, at)| ((q.as_str(), *o, *e), *at))
        .collect();
    for d in &h.deliveries {
        for e in &h.deliveries {
            if e.queue != d.queue || e.offset >= d.offset || e.at_ms > d.at_ms {
                continue;
            }
            let mut until = e.visible_at_ms;
            let mut epoch = e.epoch;
            for (q, o, old, new, v) in &h.changes {
                if *q == e.queue && *o == e.offset && *old == epoch {
                    epoch = *new;
                    until = *v;
                }
            }
            if let Some(at) = acked.get(&(e.queue.as_str(), e.offset, epoch)) {
                until = until.min(*at);
            }
            // An ack or change of that receipt whose outcome is unknown may have released
            // the queue at any moment after it was handed out: nothing can be said.
            let unsure = h
                .unknown
                .iter()
                .any(|(q, o, u)| *q == e.queue && *o == e.offset && *u == epoch);
            if unsure {
                continue;
            }
            // A later delivery of `e` releases nothing: it holds again.
            if d.at_ms < until && d.epoch > e.epoch {
                out.push(PopViolation::FifoOrder {
                    body: d.body.clone(),
                    earlier: e.body.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(body: &str, offset: u64, attempt: u32, epoch: u64, at: u64, visible: u64) -> PopDelivery {
        PopDelivery {
            body: body.into(),
            queue: "g1/0".into(),
            offset,
            attempt,
            epoch,
            at_ms: at,
            visible_at_ms: visible,
        }
    }

    fn good() -> PopHistory {
        PopHistory {
            sent: ["a".to_string(), "b".to_string()].into(),
            deliveries: vec![d("a", 0, 1, 10, 100, 2_100), d("a", 0, 2, 20, 2_200, 4_200)],
            acks: vec![("g1/0".into(), 0, 20, 2_300)],
            changes: vec![],
            unknown: vec![],
            unknown_acks: vec![],
            indeterminate: BTreeSet::new(),
            fifo: false,
        }
        .with(|h| h.deliveries.push(d("b", 1, 1, 21, 2_200, 4_200)))
        .with(|h| h.acks.push(("g1/0".into(), 1, 21, 2_300)))
    }

    trait With: Sized {
        fn with(self, f: impl FnOnce(&mut Self)) -> Self;
    }
    impl With for PopHistory {
        fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }

    #[test]
    fn a_good_history_passes() {
        assert_eq!(check_pop_history(&good()), vec![]);
        // One body stored twice (a retried send): each copy consumed on its own is fine.
        let twice = good().with(|h| {
            let mut copy = d("b", 7, 1, 50, 3_000, 5_000);
            copy.queue = "g2/0".into();
            h.deliveries.push(copy);
            h.acks.push(("g2/0".into(), 7, 50, 3_100));
        });
        assert_eq!(check_pop_history(&twice), vec![]);
    }

    #[test]
    fn each_checker_fires() {
        let lost = good().with(|h| {
            h.sent.insert("c".into());
        });
        assert!(matches!(
            check_pop_history(&lost)[..],
            [PopViolation::Lost { .. }]
        ));

        let ack_lost = good().with(|h| h.deliveries.push(d("b", 1, 2, 30, 5_000, 7_000)));
        assert!(
            check_pop_history(&ack_lost)
                .iter()
                .any(|v| matches!(v, PopViolation::AckLost { .. }))
        );

        let early = good().with(|h| h.deliveries[1].at_ms = 1_000);
        assert!(
            check_pop_history(&early)
                .iter()
                .any(|v| matches!(v, PopViolation::Early { .. }))
        );
        // A change to an earlier time makes the same redelivery on time.
        let changed = early
            .clone()
            .with(|h| h.changes.push(("g1/0".into(), 0, 10, 15, 900)));
        assert!(
            !check_pop_history(&changed)
                .iter()
                .any(|v| matches!(v, PopViolation::Early { .. }))
        );
        // So may a change whose answer was lost.
        let unsure = early
            .clone()
            .with(|h| h.unknown.push(("g1/0".into(), 0, 10)));
        assert!(
            !check_pop_history(&unsure)
                .iter()
                .any(|v| matches!(v, PopViolation::Early { .. }))
        );

        let attempts = good().with(|h| h.deliveries[1].attempt = 1);
        assert!(
            check_pop_history(&attempts)
                .iter()
                .any(|v| matches!(v, PopViolation::Attempts { .. }))
        );

        let unexpected = good().with(|h| h.deliveries.push(d("z", 9, 1, 40, 5_000, 7_000)));
        assert!(
            check_pop_history(&unexpected)
                .iter()
                .any(|v| matches!(v, PopViolation::Unexpected { .. }))
        );

        // FIFO: b (offset 1) handed out while a (offset 0) is invisible and unacked.
        let fifo = PopHistory {
            sent: ["a".to_string(), "b".to_string()].into(),
            deliveries: vec![d("a", 0, 1, 10, 100, 2_100), d("b", 1, 1, 11, 500, 2_500)],
            acks: vec![("g1/0".into(), 0, 10, 3_000), ("g1/0".into(), 1, 11, 3_000)],
            fifo: true,
            ..Default::default()
        };
        assert!(
            check_pop_history(&fifo)
                .iter()
                .any(|v| matches!(v, PopViolation::FifoOrder { .. }))
        );
        // After a's ack it is in order.
        let in_order = fifo.clone().with(|h| {
            h.acks[0].3 = 400;
        });
        assert_eq!(check_pop_history(&in_order), vec![]);
        // An ack of a whose outcome is unknown may have released the queue (simulator seed
        // 200190: it did).
        let unsure = fifo.clone().with(|h| {
            h.acks.remove(0);
            h.unknown.push(("g1/0".into(), 0, 10));
            h.unknown_acks.push(("g1/0".into(), 0, 10));
        });
        assert_eq!(check_pop_history(&unsure), vec![]);
    }
}
