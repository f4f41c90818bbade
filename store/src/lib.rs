//! raftmq-store: the storage engine of one broker replica.
//!
//! The CommitLog *is* the Raft log: a client's send becomes one Raft entry, appended as one
//! record to fixed-size, memory-mapped segment files; everything else is derived from it:
//! the Raft index (log index → position), the ConsumeQueues (queue offset → message), the
//! IndexFile (key → messages) and the metadata in the MetaStore.
//!
//! - [`disk`]: the seam every durable byte goes through ([`MmapDisk`], [`SimDisk`]);
//! - [`commitlog`]: segments, the record format, recovery of the valid end;
//! - [`message`]: the `Messages` payload (a batch of messages in one record);
//! - [`raftindex`], [`consumequeue`], [`indexfile`]: the derived structures;
//! - [`meta`]: redb tables (topics, consumer offsets, applied log id, checkpoint). redb, not
//!   sled: sled 0.34 is beta, unreleased since 2021, with open crash-durability reports, and
//!   it starts OS threads, which madsim forbids, so it could never run in the deterministic
//!   simulation; redb is stable, crash-safe, thread-free, and its `StorageBackend` puts its
//!   file on the same disk seam as everything else;
//! - [`txn`]: half messages, commits and the transaction table's record;
//! - [`flush`]: group commit (`Sync`) and periodic sync (`Async`);
//! - [`store`]: the whole, with the checkpoint that makes recovery cheap, and retention.
//!
//! Every format is documented as a byte table in its module, carries a magic number, a
//! version (unknown versions are rejected) and CRC32C, and is covered by a golden-bytes test.
//! Every length read from disk is checked against a `*_MAX` before anything is allocated.

mod codec;
pub mod commitlog;
pub mod config;
pub mod consumequeue;
pub mod disk;
pub mod entryfile;
pub mod error;
pub mod flush;
#[cfg(all(test, not(madsim)))]
mod fuzz_tests;
pub mod groups;
pub mod indexfile;
pub mod message;
pub mod meta;
pub mod pop;
pub mod raftindex;
mod slotfile;
pub mod store;
pub mod timer;
pub mod txn;
pub mod types;
pub mod view;

pub use commitlog::record::{EntryRef, RecordKind};
pub use config::{FlushMode, StoreConfig};
pub use disk::{Disk, DiskFile, LazyDisk, MmapDisk, SimDisk};
pub use error::{Result, StoreError};
pub use message::Message;
pub use store::Store;
pub use types::{LogId, LogIndex, Position, QueueOffset};
pub use view::ReadView;
