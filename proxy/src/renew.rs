//! Auto-renew: a push consumer receives with `auto_renew` and no invisible time, and expects
//! the server to keep its messages invisible until it acks or nacks them. The gateway claims
//! them for [`RenewPolicy::invisible`] and, [`RenewPolicy::before`] ahead of expiry, changes
//! their invisible time by as much again — at most [`RenewPolicy::max_total`] in all, then it
//! lets them come back. Each renewal replaces the receipt in the broker group; the client keeps
//! the receipt it was handed, so acks and changes are translated to the current one here.
//!
//! The table lives in the gateway only: a gateway that dies stops renewing, and the messages
//! come back after at most one invisible time (at-least-once holds).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::receive::Receipt;
use crate::routes::lock;

/// How long auto-renewed messages stay invisible per claim or renewal, and when to renew.
#[derive(Debug, Clone, Copy)]
pub struct RenewPolicy {
    pub invisible: Duration,
    /// Renew this long before the current invisible time runs out.
    pub before: Duration,
    /// Stop renewing after this long in all (RocketMQ: 3 h).
    pub max_total: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self {
            invisible: Duration::from_secs(60),
            before: Duration::from_secs(10),
            max_total: Duration::from_secs(3 * 3600),
        }
    }
}

/// What is renewed: a message as (broker group, topic, queue, offset).
pub type Key = (String, String, u32, u64);
/// Messages taken out of the table, with what is known of each.
pub type Taken = Vec<(Key, Held)>;

#[derive(Debug, Clone)]
pub struct Held {
    pub client: String,
    pub group: String,
    /// The epoch of the receipt the client holds.
    pub handed_epoch: u64,
    /// The epoch of the current receipt.
    pub epoch: u64,
    pub position: u64,
    pub due: Instant,
    pub since: Instant,
}

/// The messages being renewed.
#[derive(Default)]
pub struct Renewals {
    held: Mutex<BTreeMap<Key, Held>>,
}

impl Renewals {
    pub fn hold(&self, key: Key, held: Held) {
        lock(&self.held).insert(key, held);
    }

    /// The current receipt for the one the client holds (`r`), and forgets it if `release`
    /// (an ack or a change: the client takes the message's fate back).
    pub fn current(&self, topic: &str, r: &Receipt, release: bool) -> Receipt {
        let key = (
            r.broker_group.clone(),
            topic.to_string(),
            r.queue_id,
            r.offset,
        );
        let mut held = lock(&self.held);
        let Some(h) = held.get(&key) else {
            return r.clone();
        };
        if h.handed_epoch != r.epoch {
            return r.clone();
        }
        let cur = Receipt {
            epoch: h.epoch,
            ..r.clone()
        };
        if release {
            held.remove(&key);
        }
        cur
    }

    /// Those due for renewal at `now` (taken out: put back by [`Renewals::renewed`]), and
    /// those renewed long enough (dropped).
    pub fn due(&self, now: Instant, p: &RenewPolicy) -> (Taken, Taken) {
        let mut held = lock(&self.held);
        let keys: Vec<Key> = held
            .iter()
            .filter(|(_, h)| h.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let (mut renew, mut expire) = (Vec::new(), Vec::new());
        for k in keys {
            if let Some(h) = held.remove(&k) {
                if now.duration_since(h.since) >= p.max_total {
                    expire.push((k, h));
                } else {
                    renew.push((k, h));
                }
            }
        }
        (renew, expire)
    }

    /// A renewal answered `epoch`: the next one is due `p.invisible - p.before` from now.
    /// Not put back if the client acked or changed it meanwhile.
    pub fn renewed(&self, key: Key, mut h: Held, epoch: u64, now: Instant, p: &RenewPolicy) {
        h.epoch = epoch;
        h.due = now + p.invisible.saturating_sub(p.before);
        lock(&self.held).entry(key).or_insert(h);
    }

    /// Everything `client` holds (it ended its session), taken out.
    pub fn of_client(&self, client: &str) -> Taken {
        let mut held = lock(&self.held);
        let keys: Vec<Key> = held
            .iter()
            .filter(|(_, h)| h.client == client)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| held.remove(&k).map(|h| (k, h)))
            .collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.held).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_use_the_current_receipt_and_release_it() {
        let r = Renewals::default();
        let now = Instant::now();
        let p = RenewPolicy::default();
        let key: Key = ("g1".into(), "T".into(), 0, 5);
        let held = Held {
            client: "c".into(),
            group: "G".into(),
            handed_epoch: 10,
            epoch: 10,
            position: 99,
            due: now,
            since: now,
        };
        r.hold(key.clone(), held);
        let (renew, expire) = r.due(now, &p);
        assert_eq!((renew.len(), expire.len()), (1, 0));
        let (k, h) = renew.into_iter().next().unwrap();
        r.renewed(k, h, 20, now, &p);
        let handed = Receipt {
            broker_group: "g1".into(),
            queue_id: 0,
            offset: 5,
            epoch: 10,
            position: 99,
        };
        assert_eq!(r.current("T", &handed, false).epoch, 20);
        assert_eq!(r.current("T", &handed, true).epoch, 20);
        assert!(r.is_empty(), "released by the ack");
        assert_eq!(
            r.current("T", &handed, true).epoch,
            10,
            "unknown: as handed"
        );
    }
}
