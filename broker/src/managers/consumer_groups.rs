//! Consumer groups as this replica knows them: who heartbeats in which group, and which
//! member holds which queue lock (orderly consumption). One state for both, because a
//! lock lives only as long as its holder heartbeats. [`Clients`] is the plain state (time
//! passed in, unit-tested); [`ConsumerGroups`] is the manager that guards it.
//!
//! This state is per replica and not replicated (as in RocketMQ, where it lives in the
//! master's memory): after a failover clients heartbeat to the new leader within one
//! heartbeat interval, and orderly consumers re-lock. A lock is a lease of [`LOCK_LEASE_MS`];
//! a client silent for `client_expire_ms` (default [`CLIENT_EXPIRE_MS`]) leaves its groups and loses its locks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use raftmq_proto::limits::{LOCK_QUEUES_MAX, check_name};
use raftmq_proto::v1::{ConsumerGroupInfo, QueueRef};

use crate::error::Refusal;

pub use crate::config::CLIENT_EXPIRE_MS;
/// How long a queue lock lasts unless renewed (RocketMQ: 60 s).
pub const LOCK_LEASE_MS: u64 = 60_000;
/// Most clients tracked.
pub const CLIENTS_MAX: usize = 100_000;

type QueueKey = (String, u32);

#[derive(Debug)]
pub struct Clients {
    /// A client silent this long is dropped.
    expire_ms: u64,
    /// client id → (last heartbeat, consumer groups).
    clients: BTreeMap<String, (u64, Vec<ConsumerGroupInfo>)>,
    /// (group, topic, queue) → (client id, lease end).
    locks: BTreeMap<(String, QueueKey), (String, u64)>,
}

impl Default for Clients {
    fn default() -> Self {
        Self::new(CLIENT_EXPIRE_MS)
    }
}

impl Clients {
    /// Tracks clients, dropping one silent for `expire_ms`.
    pub fn new(expire_ms: u64) -> Self {
        Self {
            expire_ms,
            clients: BTreeMap::new(),
            locks: BTreeMap::new(),
        }
    }

    /// Records a heartbeat. Errors if too many clients are tracked.
    pub fn heartbeat(
        &mut self,
        client_id: &str,
        groups: Vec<ConsumerGroupInfo>,
        now_ms: u64,
    ) -> Result<(), String> {
        if client_id.is_empty() || client_id.len() > 255 {
            return Err(format!(
                "client id must be 1..=255 bytes, got {}",
                client_id.len()
            ));
        }
        self.expire(now_ms);
        if !self.clients.contains_key(client_id) && self.clients.len() >= CLIENTS_MAX {
            return Err(format!("more than {CLIENTS_MAX} clients"));
        }
        self.clients.insert(client_id.to_string(), (now_ms, groups));
        Ok(())
    }

    /// Live members of a consumer group, sorted.
    pub fn consumers(&mut self, group: &str, now_ms: u64) -> Vec<String> {
        self.expire(now_ms);
        self.clients
            .iter()
            .filter(|(_, (_, gs))| gs.iter().any(|g| g.group == group))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Locks (or renews) the queues for `client_id`; returns those it now holds.
    pub fn lock(
        &mut self,
        group: &str,
        client_id: &str,
        queues: &[QueueRef],
        now_ms: u64,
    ) -> Vec<QueueRef> {
        self.expire(now_ms);
        let mut out = Vec::new();
        for q in queues {
            let key = (group.to_string(), (q.topic.clone(), q.queue_id));
            let free = match self.locks.get(&key) {
                None => true,
                Some((holder, until)) => holder == client_id || *until <= now_ms,
            };
            if free {
                self.locks
                    .insert(key, (client_id.to_string(), now_ms + LOCK_LEASE_MS));
                out.push(q.clone());
            }
        }
        out
    }

    /// Releases the queues `client_id` holds among `queues`.
    pub fn unlock(&mut self, group: &str, client_id: &str, queues: &[QueueRef]) {
        for q in queues {
            let key = (group.to_string(), (q.topic.clone(), q.queue_id));
            if self.locks.get(&key).is_some_and(|(h, _)| h == client_id) {
                self.locks.remove(&key);
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let gone: BTreeSet<String> = self
            .clients
            .iter()
            .filter(|(_, (t, _))| now_ms.saturating_sub(*t) > self.expire_ms)
            .map(|(id, _)| id.clone())
            .collect();
        self.clients.retain(|id, _| !gone.contains(id));
        self.locks
            .retain(|_, (holder, until)| *until > now_ms && !gone.contains(holder));
    }
}

/// The consumer-group manager: heartbeats, member lists and queue locks of one replica.
///
/// The state sits behind a `std::sync::Mutex` held only to read or edit the maps (never
/// across an await). Member lists and locks are the leader's: the services refuse them on a
/// follower, whose view no other member would share.
pub struct ConsumerGroups {
    clients: Mutex<Clients>,
}

impl ConsumerGroups {
    pub fn new(client_expire_ms: u64) -> Self {
        ConsumerGroups {
            clients: Mutex::new(Clients::new(client_expire_ms)),
        }
    }

    fn clients(&self) -> MutexGuard<'_, Clients> {
        // Never poisoned in a release build (panic = "abort": see the workspace Cargo.toml).
        self.clients
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    /// Records a client's heartbeat with the groups it consumes in.
    pub fn heartbeat(
        &self,
        client_id: &str,
        groups: Vec<ConsumerGroupInfo>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        for g in &groups {
            check_name("consumer group", &g.group)?;
        }
        self.clients()
            .heartbeat(client_id, groups, now_ms)
            .map_err(Refusal::InvalidArgument)
    }

    /// The live members of a group, sorted.
    pub fn members(&self, group: &str, now_ms: u64) -> Result<Vec<String>, Refusal> {
        check_name("consumer group", group)?;
        Ok(self.clients().consumers(group, now_ms))
    }

    /// Locks (or renews) queues for a client; returns those it now holds.
    pub fn lock(
        &self,
        group: &str,
        client_id: &str,
        queues: &[QueueRef],
        now_ms: u64,
    ) -> Result<Vec<QueueRef>, Refusal> {
        check_lock_request(group, client_id, queues)?;
        Ok(self.clients().lock(group, client_id, queues, now_ms))
    }

    /// Releases the queues a client holds among `queues`.
    pub fn unlock(&self, group: &str, client_id: &str, queues: &[QueueRef]) -> Result<(), Refusal> {
        check_name("consumer group", group)?;
        self.clients().unlock(group, client_id, queues);
        Ok(())
    }
}

/// A lock request's shape: a group name, a client id and at most [`LOCK_QUEUES_MAX`] queues.
pub fn check_lock_request(
    group: &str,
    client_id: &str,
    queues: &[QueueRef],
) -> Result<(), Refusal> {
    check_name("consumer group", group)?;
    if client_id.is_empty() || queues.len() > LOCK_QUEUES_MAX {
        return Err(Refusal::InvalidArgument(format!(
            "a client id and at most {LOCK_QUEUES_MAX} queues"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: u32) -> QueueRef {
        QueueRef {
            topic: "T".into(),
            queue_id: id,
        }
    }

    fn member(group: &str) -> Vec<ConsumerGroupInfo> {
        vec![ConsumerGroupInfo {
            group: group.into(),
            ..Default::default()
        }]
    }

    #[test]
    fn consumer_lists_follow_heartbeats_and_expire() {
        let mut c = Clients::default();
        c.heartbeat("b", member("G"), 0).unwrap();
        c.heartbeat("a", member("G"), 0).unwrap();
        c.heartbeat("x", member("H"), 0).unwrap();
        assert_eq!(c.consumers("G", 1), ["a", "b"]);
        c.heartbeat("a", member("G"), 100_000).unwrap();
        assert_eq!(c.consumers("G", CLIENT_EXPIRE_MS + 1), ["a"]);
        assert!(c.heartbeat("", member("G"), 0).is_err());
    }

    #[test]
    fn a_queue_lock_has_one_holder_until_released_or_expired() {
        let mut c = Clients::default();
        assert_eq!(c.lock("G", "a", &[q(0), q(1)], 0), [q(0), q(1)]);
        assert_eq!(c.lock("G", "b", &[q(1), q(2)], 10), [q(2)]);
        // Another group locks independently; the holder renews.
        assert_eq!(c.lock("H", "b", &[q(1)], 10), [q(1)]);
        assert_eq!(c.lock("G", "a", &[q(1)], 20), [q(1)]);
        c.unlock("G", "b", &[q(1)]);
        assert!(c.lock("G", "b", &[q(1)], 30).is_empty(), "b never held it");
        c.unlock("G", "a", &[q(1)]);
        assert_eq!(c.lock("G", "b", &[q(1)], 40), [q(1)]);
        // Expired lease: anyone may take it.
        assert_eq!(c.lock("G", "b", &[q(0)], LOCK_LEASE_MS + 1), [q(0)]);
    }
}
