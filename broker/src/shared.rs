//! The state every service and manager of one replica shares: its configuration, its
//! [`Replica`] (store + Raft), the managers, and the replica's clock.
//!
//! Nothing here is behind a lock of its own: each manager guards its own state (see
//! [`crate::managers`]), and the store is reached through the replica.

use openraft::ServerState;
use raftmq_proto::v1::Role;
use raftmq_raft::{Replica, WriteError};

use crate::config::BrokerConfig;
use crate::managers::Managers;

/// State shared by the services of one replica.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub replica: Replica,
    pub managers: Managers,
    pub start: tokio::time::Instant,
}

impl Shared {
    /// Milliseconds since this replica started (client expiry and lock leases use it; they
    /// are per replica, so a local clock is enough).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn group(&self) -> &str {
        &self.config.group
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<raftmq_raft::TypeConfig> {
        openraft::async_runtime::WatchReceiver::borrow_watched(&self.replica.raft().metrics())
            .clone()
    }

    /// This replica's role as the name server and admin tools see it.
    pub fn role(&self) -> (Role, u64) {
        let m = self.metrics();
        let role = match m.state {
            // Cut off from its quorum: it acts as a replica that does not lead (not registered
            // as the leader, writes and leader reads refused) until it hears from one again.
            ServerState::Leader if self.replica.leads_without_quorum() => Role::Candidate,
            ServerState::Leader if m.current_leader == Some(self.config.replica_id) => Role::Leader,
            ServerState::Leader | ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Unknown,
        };
        (role, m.current_term)
    }

    pub fn is_leader(&self) -> bool {
        self.role().0 == Role::Leader
    }

    /// `NOT_LEADER` with the leader's address (`UNAVAILABLE` when none is known).
    pub fn not_leader(&self) -> WriteError {
        let m = self.metrics();
        // Never itself: a leader cut off from its quorum refuses, and must not send the
        // client back to itself.
        let leader_addr = m
            .current_leader
            .filter(|&id| id != self.config.replica_id)
            .and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            });
        WriteError::NotLeader {
            leader_id: None,
            leader_addr,
        }
    }
}
