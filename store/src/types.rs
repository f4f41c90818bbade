//! The number types of the store: [`Position`], [`LogIndex`] and [`QueueOffset`] come from
//! `raftmq-types` (every crate shares them); [`LogId`] is the store's record of an applied
//! entry.

pub use raftmq_types::{LogIndex, Position, QueueOffset};

/// A Raft log id as the state machine records it: the leader that proposed the entry
/// (term and node id) and the entry's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogId {
    pub term: u64,
    pub node_id: u64,
    pub index: LogIndex,
}
