//! The push consumer's control rules: when a new member list is believed (and so rebalanced
//! on), and how long a batch the listener handed back waits before it is delivered again.

use std::collections::BTreeMap;
use std::time::Duration;

/// The longest pause before a batch handed back with `ReconsumeLater` is delivered again.
pub(crate) const RECONSUME_PAUSE_MAX: Duration = Duration::from_secs(16);

/// The pause before delivering a batch again after the listener handed it back `tries` times:
/// 1 s, 2 s, … [`RECONSUME_PAUSE_MAX`].
pub(crate) fn reconsume_pause(tries: u32) -> Duration {
    Duration::from_secs(u64::from(tries)).min(RECONSUME_PAUSE_MAX)
}

/// The member lists a consumer believes, per topic.
///
/// A new list is believed only when two looks in a row show it (looks that show the list
/// already believed, or none, do not count): members starting together then see each other
/// before taking queues, which saves needless moves and duplicate deliveries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MemberWatch {
    believed: BTreeMap<String, Vec<String>>,
    seen_once: BTreeMap<String, Vec<String>>,
}

impl MemberWatch {
    /// Records one look at `topic`'s members (an empty list: the look failed); true if the
    /// believed list changed.
    pub(crate) fn observe(&mut self, topic: &str, now: Vec<String>) -> bool {
        if now.is_empty() || self.believed.get(topic) == Some(&now) {
            return false;
        }
        if self.seen_once.get(topic) == Some(&now) {
            self.believed.insert(topic.to_string(), now);
            true
        } else {
            self.seen_once.insert(topic.to_string(), now);
            false
        }
    }

    /// The believed lists: topic → members.
    pub(crate) fn believed(&self) -> &BTreeMap<String, Vec<String>> {
        &self.believed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_list_is_believed_when_seen_twice() {
        let mut w = MemberWatch::default();
        assert!(!w.observe("T", list(&["a"])));
        assert!(w.believed().is_empty());
        assert!(w.observe("T", list(&["a"])));
        assert_eq!(w.believed()["T"], list(&["a"]));
        assert!(!w.observe("T", list(&["a"])), "unchanged");
    }

    #[test]
    fn a_list_seen_once_then_replaced_is_not_believed() {
        let mut w = MemberWatch::default();
        w.observe("T", list(&["a"]));
        w.observe("T", list(&["a"]));
        assert!(!w.observe("T", list(&["a", "b"])));
        assert!(!w.observe("T", list(&["a", "c"])));
        assert!(!w.observe("T", list(&["a", "b"])), "not two in a row");
        assert!(w.observe("T", list(&["a", "b"])));
        assert_eq!(w.believed()["T"], list(&["a", "b"]));
    }

    #[test]
    fn failed_looks_and_other_topics_do_not_count() {
        let mut w = MemberWatch::default();
        w.observe("T", list(&["a"]));
        assert!(!w.observe("T", Vec::new()));
        assert!(!w.observe("U", list(&["a"])));
        assert!(w.observe("T", list(&["a"])));
        assert!(!w.believed().contains_key("U"));
    }

    #[test]
    fn redelivery_pauses_grow_to_a_limit() {
        assert_eq!(reconsume_pause(1), Duration::from_secs(1));
        assert_eq!(reconsume_pause(2), Duration::from_secs(2));
        assert_eq!(reconsume_pause(16), RECONSUME_PAUSE_MAX);
        assert_eq!(reconsume_pause(1_000), RECONSUME_PAUSE_MAX);
    }
}
