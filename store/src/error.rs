//! The store's error type.

use crate::disk::DiskError;

/// Everything the store can fail with. Corruption carries the file and the byte position so
/// an operator can find it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk seam failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Data that was durable does not verify: the store refuses to go on rather than skip it.
    #[error("corruption in {file} at byte {position}: {reason}")]
    Corrupt {
        file: String,
        position: u64,
        reason: String,
    },
    /// Bytes that do not decode as the format they claim to be (wire or disk).
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A caller asked for something the store cannot do (too large, out of order, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A position, index or offset that the store does not hold (purged or not yet written).
    #[error("{what} {value} is out of range [{first}, {end})")]
    OutOfRange {
        what: &'static str,
        value: u64,
        first: u64,
        end: u64,
    },
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The metadata store (redb) failed.
    #[error("metadata store: {0}")]
    Meta(#[source] Box<redb::Error>),
    /// The store was closed, or its flusher stopped after an I/O error.
    #[error("store closed: {0}")]
    Closed(String),
}

/// Shorthand used throughout the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<String>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            file: file.into(),
            position,
            reason: reason.into(),
        }
    }
}
