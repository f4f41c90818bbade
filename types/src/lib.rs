//! raftmq-types: the numbers every crate passes around, each its own type so that one cannot
//! be given where another is meant (a queue offset where a CommitLog position is expected
//! does not compile).
//!
//! One meaning per word: an **offset** is a message's place within its queue
//! ([`QueueOffset`]); a **position** is a byte position in the CommitLog ([`Position`]); an
//! **index** is a Raft log index ([`LogIndex`]); a **term** stays a plain `u64` named `term`.
//!
//! The store, Raft, the broker and the client SDK depend on it (the wire keeps plain
//! integers); it depends on nothing but `serde`. Each type serializes as its bare number (serde
//! `transparent`), so replicated commands and wire formats are the same as with a `u64`.

use std::fmt;

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
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
    /// A message's offset within its queue: entry `k` of a ConsumeQueue. Consumers commit
    /// the offset of the next message they want.
    QueueOffset
);

impl QueueOffset {
    /// The offset after this one.
    pub const fn next(self) -> QueueOffset {
        QueueOffset(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialize_as_bare_numbers() {
        assert_eq!(serde_json::to_string(&QueueOffset(7)).unwrap(), "7");
        assert_eq!(
            serde_json::from_str::<Position>("42").unwrap(),
            Position(42)
        );
        assert_eq!(LogIndex(3).next(), LogIndex(4));
        assert_eq!(QueueOffset(3).next().to_string(), "4");
    }
}
