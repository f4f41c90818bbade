//! Newtypes that keep the four kinds of numbers apart: a [`Position`] is a byte position in
//! the CommitLog, a [`LogIndex`] a Raft log index, a [`QueueOffset`] a position within one
//! queue; a term stays a plain `u64` named `term`.

use std::fmt;

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype_u64!(
    /// A byte position in the CommitLog: the same message has the same position on every
    /// replica of a group (committed CommitLogs are byte-identical).
    Position
);
newtype_u64!(
    /// A Raft log index.
    LogIndex
);
newtype_u64!(
    /// A message's offset within its queue: entry `k` of a ConsumeQueue.
    QueueOffset
);

/// A Raft log id as the state machine records it: the leader that proposed the entry
/// (term and node id) and the entry's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogId {
    pub term: u64,
    pub node_id: u64,
    pub index: LogIndex,
}
