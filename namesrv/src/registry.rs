//! The registry: broker groups → replicas (address, role, term, topics, last registration).
//!
//! Routes are computed on read: for each group, the topic configuration reported by the live
//! replica that has applied the most of the group's log (every replica applies a prefix of the
//! same committed log; ties go to the leader, then to the freshest report), and the leader's
//! address (the live replica claiming `LEADER` with the highest term). A replica restarted
//! after a crash has applied nothing until a leader tells it the commit point: its empty topic
//! list must not speak for the group. A replica silent for [`crate::EXPIRE_MS`] is
//! ignored by every read and removed by [`Registry::scan`].

use std::collections::BTreeMap;

use raftmq_proto::limits::{LimitError, check_name};
use raftmq_proto::v1::{
    GroupRoute, QueueData, RegisterBrokerRequest, ReplicaInfo, Role, TopicConfig,
};

use crate::EXPIRE_MS;

/// Most topics one registration may carry.
pub const TOPICS_PER_REGISTRATION_MAX: usize = 100_000;

#[derive(Debug, Clone)]
struct Replica {
    addr: String,
    role: Role,
    term: u64,
    topics: Vec<TopicConfig>,
    applied_index: u64,
    last_seen_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct Group {
    cluster: String,
    replicas: BTreeMap<u64, Replica>,
}

/// The route registry; see the module docs.
#[derive(Debug, Default)]
pub struct Registry {
    groups: BTreeMap<String, Group>,
}

/// A topic's route: the groups holding it and who leads each.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Route {
    pub queues: Vec<QueueData>,
    pub groups: Vec<GroupRoute>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a registration at `now_ms` (replacing that replica's previous one).
    pub fn register(&mut self, r: &RegisterBrokerRequest, now_ms: u64) -> Result<(), LimitError> {
        check_name("cluster", &r.cluster)?;
        check_name("group", &r.group)?;
        if r.addr.is_empty() || r.addr.len() > 255 {
            return Err(invalid(format!(
                "address must be 1..=255 bytes, got {}",
                r.addr.len()
            )));
        }
        if r.topics.len() > TOPICS_PER_REGISTRATION_MAX {
            return Err(invalid(format!(
                "{} topics, more than {TOPICS_PER_REGISTRATION_MAX}",
                r.topics.len()
            )));
        }
        for t in &r.topics {
            check_name("topic", &t.name)?;
        }
        let g = self.groups.entry(r.group.clone()).or_default();
        g.cluster = r.cluster.clone();
        g.replicas.insert(
            r.replica_id,
            Replica {
                addr: r.addr.clone(),
                role: Role::try_from(r.role).unwrap_or(Role::Unknown),
                term: r.term,
                topics: r.topics.clone(),
                applied_index: r.applied_index,
                last_seen_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Forgets one replica (it shut down cleanly).
    pub fn unregister(&mut self, group: &str, replica_id: u64) {
        if let Some(g) = self.groups.get_mut(group) {
            g.replicas.remove(&replica_id);
            if g.replicas.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Drops every replica silent for [`EXPIRE_MS`] at `now_ms`; returns them as
    /// `(group, replica id)`.
    pub fn scan(&mut self, now_ms: u64) -> Vec<(String, u64)> {
        let mut gone = Vec::new();
        for (name, g) in &mut self.groups {
            g.replicas.retain(|id, r| {
                let keep = !expired(r, now_ms);
                if !keep {
                    gone.push((name.clone(), *id));
                }
                keep
            });
        }
        self.groups.retain(|_, g| !g.replicas.is_empty());
        gone
    }

    /// The route of `topic` at `now_ms`, or `None` if no live group holds it.
    pub fn route(&self, topic: &str, now_ms: u64) -> Option<Route> {
        let mut route = Route::default();
        for (name, g) in &self.groups {
            let Some(source) = topic_source(g, now_ms) else {
                continue;
            };
            let Some(t) = source.topics.iter().find(|t| t.name == topic) else {
                continue;
            };
            route.queues.push(QueueData {
                group: name.clone(),
                read_queue_nums: t.read_queue_nums,
                write_queue_nums: t.write_queue_nums,
                perm: t.perm,
                message_type: t.message_type,
            });
            route.groups.push(group_route(name, g, now_ms));
        }
        (!route.queues.is_empty()).then_some(route)
    }

    /// Every group with a live replica.
    pub fn cluster_info(&self, now_ms: u64) -> Vec<GroupRoute> {
        self.groups
            .iter()
            .map(|(name, g)| group_route(name, g, now_ms))
            .filter(|g| !g.replicas.is_empty())
            .collect()
    }
}

fn invalid(message: String) -> LimitError {
    LimitError {
        code: raftmq_proto::ErrorCode::InvalidArgument,
        message,
    }
}

fn expired(r: &Replica, now_ms: u64) -> bool {
    now_ms.saturating_sub(r.last_seen_ms) > EXPIRE_MS
}

/// The live replica claiming leadership with the highest term.
fn leader(g: &Group, now_ms: u64) -> Option<&Replica> {
    g.replicas
        .values()
        .filter(|r| !expired(r, now_ms) && r.role == Role::Leader)
        .max_by_key(|r| (r.term, r.last_seen_ms))
}

/// Whose topic list speaks for the group: the live report that applied the most of the log;
/// among equals the leader's, then the freshest.
fn topic_source(g: &Group, now_ms: u64) -> Option<&Replica> {
    let leader = leader(g, now_ms).map(|r| r.addr.as_str());
    g.replicas
        .values()
        .filter(|r| !expired(r, now_ms))
        .max_by_key(|r| {
            (
                r.applied_index,
                Some(r.addr.as_str()) == leader,
                r.term,
                r.last_seen_ms,
            )
        })
}

fn group_route(name: &str, g: &Group, now_ms: u64) -> GroupRoute {
    GroupRoute {
        group: name.to_string(),
        cluster: g.cluster.clone(),
        leader_addr: leader(g, now_ms)
            .map(|r| r.addr.clone())
            .unwrap_or_default(),
        replicas: g
            .replicas
            .iter()
            .filter(|(_, r)| !expired(r, now_ms))
            .map(|(id, r)| ReplicaInfo {
                replica_id: *id,
                addr: r.addr.clone(),
                role: r.role as i32,
                term: r.term,
                last_seen_ms_ago: now_ms.saturating_sub(r.last_seen_ms),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_proto::v1::TopicMessageType;

    fn reg(
        group: &str,
        id: u64,
        role: Role,
        term: u64,
        topics: &[(&str, u32)],
    ) -> RegisterBrokerRequest {
        RegisterBrokerRequest {
            cluster: "C".into(),
            group: group.into(),
            replica_id: id,
            addr: format!("{group}-{id}:1"),
            role: role as i32,
            term,
            topics: topics
                .iter()
                .map(|(n, q)| TopicConfig {
                    name: n.to_string(),
                    read_queue_nums: *q,
                    write_queue_nums: *q,
                    perm: 6,
                    message_type: TopicMessageType::Fifo as i32,
                })
                .collect(),
            applied_index: 0,
        }
    }

    #[test]
    fn route_names_the_highest_term_leader_and_its_topics() {
        let mut r = Registry::new();
        r.register(&reg("g1", 1, Role::Leader, 3, &[("T", 4)]), 0)
            .unwrap();
        r.register(&reg("g1", 2, Role::Follower, 3, &[("T", 4)]), 0)
            .unwrap();
        // A stale leader claim from an older term loses.
        r.register(&reg("g1", 3, Role::Leader, 2, &[("T", 2)]), 0)
            .unwrap();
        r.register(&reg("g2", 1, Role::Leader, 1, &[("T", 8), ("U", 1)]), 0)
            .unwrap();
        let route = r.route("T", 10).unwrap();
        assert_eq!(route.queues.len(), 2);
        assert_eq!(route.queues[0].group, "g1");
        assert_eq!(route.queues[0].write_queue_nums, 4);
        assert_eq!(
            route.queues[0].message_type,
            TopicMessageType::Fifo as i32,
            "the route carries the message type"
        );
        assert_eq!(route.groups[0].leader_addr, "g1-1:1");
        assert_eq!(route.groups[0].replicas.len(), 3);
        assert_eq!(route.queues[1].write_queue_nums, 8);
        assert_eq!(r.route("U", 10).unwrap().queues.len(), 1);
        assert!(r.route("V", 10).is_none());
    }

    #[test]
    fn the_most_applied_report_speaks_for_the_group() {
        let mut r = Registry::new();
        let applied = |mut q: RegisterBrokerRequest, i| {
            q.applied_index = i;
            q
        };
        r.register(
            &applied(reg("g1", 2, Role::Follower, 1, &[("T", 4)]), 40),
            0,
        )
        .unwrap();
        r.register(
            &applied(reg("g1", 3, Role::Follower, 1, &[("T", 4)]), 38),
            0,
        )
        .unwrap();
        // The leader's power was cut: restarted, it has applied nothing yet and knows no topic.
        // Fresher, it must not drop the group from the route (it did: clients cached a route
        // without the group for 30 s, and its queues went unconsumed).
        r.register(&reg("g1", 1, Role::Follower, 1, &[]), 5)
            .unwrap();
        let route = r.route("T", 6).unwrap();
        assert_eq!(route.queues.len(), 1);
        assert_eq!(route.queues[0].write_queue_nums, 4);
        assert_eq!(route.groups[0].leader_addr, "");
        // A new leader that has applied as much speaks for the group; more applied, a later
        // change (the topic grown) wins even from a follower.
        r.register(&applied(reg("g1", 3, Role::Leader, 2, &[("T", 4)]), 40), 7)
            .unwrap();
        assert_eq!(r.route("T", 8).unwrap().groups[0].leader_addr, "g1-3:1");
        r.register(
            &applied(reg("g1", 2, Role::Follower, 2, &[("T", 8)]), 41),
            9,
        )
        .unwrap();
        assert_eq!(r.route("T", 10).unwrap().queues[0].write_queue_nums, 8);
    }

    #[test]
    fn role_changes_move_the_route_at_once() {
        let mut r = Registry::new();
        r.register(&reg("g1", 1, Role::Leader, 1, &[("T", 4)]), 0)
            .unwrap();
        r.register(&reg("g1", 2, Role::Follower, 1, &[("T", 4)]), 0)
            .unwrap();
        r.register(&reg("g1", 2, Role::Leader, 2, &[("T", 4)]), 5)
            .unwrap();
        assert_eq!(r.route("T", 6).unwrap().groups[0].leader_addr, "g1-2:1");
    }

    #[test]
    fn silent_replicas_expire() {
        let mut r = Registry::new();
        r.register(&reg("g1", 1, Role::Leader, 1, &[("T", 4)]), 0)
            .unwrap();
        r.register(&reg("g1", 2, Role::Follower, 1, &[("T", 4)]), 100_000)
            .unwrap();
        // Reads ignore the silent leader before any scan: no leader, topics from the follower.
        let route = r.route("T", EXPIRE_MS + 1).unwrap();
        assert_eq!(route.groups[0].leader_addr, "");
        assert_eq!(route.groups[0].replicas.len(), 1);
        assert_eq!(r.scan(EXPIRE_MS + 1), vec![("g1".to_string(), 1)]);
        assert!(r.scan(EXPIRE_MS + 100_001).len() == 1);
        assert!(r.route("T", EXPIRE_MS + 100_001).is_none());
        assert!(r.cluster_info(EXPIRE_MS + 100_001).is_empty());
    }

    #[test]
    fn unregister_and_bad_registrations() {
        let mut r = Registry::new();
        r.register(&reg("g1", 1, Role::Leader, 1, &[("T", 4)]), 0)
            .unwrap();
        r.unregister("g1", 1);
        assert!(r.route("T", 0).is_none());
        let mut bad = reg("g 1", 1, Role::Leader, 1, &[]);
        assert!(r.register(&bad, 0).is_err());
        bad = reg("g1", 1, Role::Leader, 1, &[("bad topic", 1)]);
        assert!(r.register(&bad, 0).is_err());
        bad = reg("g1", 1, Role::Leader, 1, &[]);
        bad.addr.clear();
        assert!(r.register(&bad, 0).is_err());
        assert!(
            r.cluster_info(0).is_empty(),
            "nothing stored by refused registrations"
        );
    }
}
