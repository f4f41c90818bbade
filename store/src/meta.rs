//! MetaStore: typed metadata tables in redb, on the same disk seam as everything else.
//!
//! Why redb and not sled: sled 0.34 is beta, last released in 2021, with open crash-durability
//! reports, and it starts OS threads — which madsim forbids, so it could never run inside
//! the deterministic simulation. redb is stable, crash-safe (copy-on-write B-trees with
//! checksummed commit slots), starts no thread, and its `StorageBackend` trait lets its file
//! live behind [`crate::disk`], so a simulated power loss reaches metadata too.
//!
//! Tables (keys → values):
//! - `topics`: topic name → [`TopicConfig`] (encoded below);
//! - `consumer_offsets`: (group, topic, queue id) → next queue offset to consume;
//! - `state`: `"applied"` → the applied [`LogId`], `"checkpoint"` → the store [`Checkpoint`],
//!   `"reset_pending"` → one byte, 1 while a [`crate::Store::reset_to`] may not have removed
//!   the old files yet (0 or absent otherwise);
//! - `cq_ends`: (topic, queue id) → ConsumeQueue end offset at the checkpoint.
//! - `raft`: key → bytes owned by the Raft layer (the vote, the applied membership, the
//!   snapshot, the purged log id, boundary snapshots `boundary/<index:020>`, the reset count
//!   `resets`); each value carries its own version, documented in `raftmq-raft`.
//! - `txn_pending` / `txn_decided`: half message position → [`TxnRecord`] (encoded in
//!   [`crate::txn`]): undecided transactions, and decided ones still on record;
//! - `txn_refused_commits`: log index → 0, the commit entries apply refused (a second
//!   decision), kept until a checkpoint passes them (see [`crate::txn`]).
//! - `timers`, `timers_by_position`, `timers_recalled`, `timer_refused_copies` and the state
//!   key `timer_cursor`: pending timers and the scheduler's progress (see [`crate::timer`]).
//! - `groups`: consumer group name → its configuration (see [`crate::groups`]).
//! - `pop_cursors`, `pop_inflight`: POP consumption state (see [`crate::pop`]).
//!
//! Encodings of values (little-endian, each starting with a version byte = 1):
//! - `TopicConfig`: see [`TopicConfig`] (version 2 adds a message type);
//! - `LogId`: version u8, term u64, node_id u64, index u64;
//! - `Checkpoint`: version u8, position u64, prev_crc u32, has_last u8, last_index u64,
//!   log_first u64, dispatched_has u8, dispatched_index u64, dispatched_position u64, index_seq u64,
//!   index_count u32, index_begin_ts u64, purged_has u8, purged_index u64.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend,
    TableDefinition,
};

use crate::codec::{PutLe, Reader};
use crate::commitlog::ChainPoint;
use crate::consumequeue::QueueId;
use crate::disk::{Disk, DiskFile};
use crate::error::{Result, StoreError};
use crate::indexfile::IndexCheckpoint;
use crate::txn::TxnRecord;
use crate::types::{LogId, LogIndex, Position, QueueOffset};
use serde::{Deserialize, Serialize};

/// The redb file.
pub const FILE: &str = "meta.redb";
/// The most memory redb may cache pages in (its default is 1 GiB). It bounds what a large
/// table — a million pending timers, many consumer offsets — costs in memory: past it, pages
/// are read again from the file (the OS page cache). Measured by `raftmq bench timers`.
pub const CACHE_BYTES: usize = 32 << 20;

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const OFFSETS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("consumer_offsets");
pub(crate) const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const CQ_ENDS: TableDefinition<(&str, u32), u64> = TableDefinition::new("cq_ends");
const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");
const TXN_PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("txn_pending");
const TXN_DECIDED: TableDefinition<u64, &[u8]> = TableDefinition::new("txn_decided");
const TXN_REFUSED: TableDefinition<u64, u8> = TableDefinition::new("txn_refused_commits");
const VERSION: u8 = 1;

/// Read and write permission bits of a topic (RocketMQ's `perm`).
pub mod perm {
    /// Consumers may read.
    pub const READ: u32 = 4;
    /// Producers may write.
    pub const WRITE: u32 = 2;
}

/// Identifies a committed consumer offset: (consumer group, topic, queue id).
pub type OffsetKey = (String, String, u32);

/// The kind of messages a topic takes (RocketMQ 5's `message.type` topic attribute). Sends
/// of another kind are refused by the RocketMQ 5 gateway; `Mixed` (every topic made before
/// types existed, and the default) takes any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
pub enum TopicMessageType {
    #[default]
    Mixed,
    Normal,
    Fifo,
    Delay,
    Transaction,
}

impl TopicMessageType {
    /// Every type, in code order (the code is the index).
    pub const ALL: [TopicMessageType; 5] = [
        TopicMessageType::Mixed,
        TopicMessageType::Normal,
        TopicMessageType::Fifo,
        TopicMessageType::Delay,
        TopicMessageType::Transaction,
    ];

    /// The stable code (the record byte and the `raftmq.v1.TopicMessageType` number).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type of `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// Its name as the CLI takes and prints it (RocketMQ's spelling).
    pub fn name(self) -> &'static str {
        match self {
            TopicMessageType::Mixed => "MIXED",
            TopicMessageType::Normal => "NORMAL",
            TopicMessageType::Fifo => "FIFO",
            TopicMessageType::Delay => "DELAY",
            TopicMessageType::Transaction => "TRANSACTION",
        }
    }

    /// The type named `s` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// A topic's configuration in this broker group.
///
/// Its record: version u8 (1, or 2 when it has a message type), read_queue_nums u32,
/// write_queue_nums u32, perm u32, and for version 2 the message type's code u8. A `Mixed`
/// topic is written as version 1, as before types existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub message_type: TopicMessageType,
}

/// The topic record version with a message type byte.
const TOPIC_VERSION_TYPED: u8 = 2;

impl TopicConfig {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let typed = self.message_type != TopicMessageType::Mixed;
        let mut b = Vec::with_capacity(14);
        b.put_u8(if typed { TOPIC_VERSION_TYPED } else { VERSION });
        b.put_u32(self.read_queue_nums);
        b.put_u32(self.write_queue_nums);
        b.put_u32(self.perm);
        if typed {
            b.put_u8(self.message_type.code());
        }
        b
    }

    pub(crate) fn decode(name: &str, b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b, "topic config");
        let v = r.u8()?;
        if v != VERSION && v != TOPIC_VERSION_TYPED {
            return Err(StoreError::malformed(
                "topic config",
                format!("unknown version {v}"),
            ));
        }
        let mut t = TopicConfig {
            name: name.to_string(),
            read_queue_nums: r.u32()?,
            write_queue_nums: r.u32()?,
            perm: r.u32()?,
            message_type: TopicMessageType::Mixed,
        };
        if v == TOPIC_VERSION_TYPED {
            let code = r.u8()?;
            t.message_type = TopicMessageType::from_code(code).ok_or_else(|| {
                StoreError::malformed("topic config", format!("unknown message type {code}"))
            })?;
        }
        r.finish()?;
        Ok(t)
    }
}

/// What the store had made durable at its last checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The CommitLog and Raft index are durable and consistent below this chain point.
    pub log: ChainPoint,
    /// First index held by the Raft index (equal to its end when it is empty).
    pub log_first: LogIndex,
    /// Highest log index dispatched into ConsumeQueue and IndexFile (durably), if any …
    pub dispatched_index: Option<LogIndex>,
    /// … and the end of its record: every ConsumeQueue entry below it is durable.
    pub dispatched_position: Position,
    /// The IndexFile's state.
    pub index: IndexCheckpoint,
    /// The Raft index was purged up to here (inclusive).
    pub purged_index: Option<LogIndex>,
}

fn put_opt(b: &mut Vec<u8>, v: Option<LogIndex>) {
    b.put_u8(u8::from(v.is_some()));
    b.put_u64(v.map_or(0, |i| i.0));
}

fn get_opt(r: &mut Reader<'_>) -> Result<Option<LogIndex>> {
    let has = r.u8()?;
    let v = r.u64()?;
    match has {
        0 => Ok(None),
        1 => Ok(Some(LogIndex(v))),
        x => Err(StoreError::malformed(
            "checkpoint",
            format!("option tag {x}"),
        )),
    }
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96);
        b.put_u8(VERSION);
        b.put_u64(self.log.position.0);
        b.put_u32(self.log.prev_crc);
        put_opt(&mut b, self.log.last_index);
        b.put_u64(self.log_first.0);
        put_opt(&mut b, self.dispatched_index);
        b.put_u64(self.dispatched_position.0);
        b.put_u64(self.index.seq);
        b.put_u32(self.index.count);
        b.put_u64(self.index.begin_ts);
        put_opt(&mut b, self.purged_index);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b, "checkpoint");
        check_version(r.u8()?, "checkpoint")?;
        let c = Checkpoint {
            log: ChainPoint {
                position: Position(r.u64()?),
                prev_crc: r.u32()?,
                last_index: get_opt(&mut r)?,
            },
            log_first: LogIndex(r.u64()?),
            dispatched_index: get_opt(&mut r)?,
            dispatched_position: Position(r.u64()?),
            index: IndexCheckpoint {
                seq: r.u64()?,
                count: r.u32()?,
                begin_ts: r.u64()?,
            },
            purged_index: get_opt(&mut r)?,
        };
        r.finish()?;
        Ok(c)
    }
}

fn check_version(v: u8, what: &'static str) -> Result<()> {
    if v != VERSION {
        return Err(StoreError::malformed(what, format!("unknown version {v}")));
    }
    Ok(())
}

pub(crate) fn encode_log_id(id: &LogId) -> Vec<u8> {
    let mut b = Vec::with_capacity(25);
    b.put_u8(VERSION);
    b.put_u64(id.term);
    b.put_u64(id.node_id);
    b.put_u64(id.index.0);
    b
}

pub(crate) fn decode_log_id(b: &[u8]) -> Result<LogId> {
    let mut r = Reader::new(b, "log id");
    check_version(r.u8()?, "log id")?;
    let id = LogId {
        term: r.u64()?,
        node_id: r.u64()?,
        index: LogIndex(r.u64()?),
    };
    r.finish()?;
    Ok(id)
}

pub(crate) fn meta_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Meta(Box::new(e.into()))
}

/// redb's storage, on the disk seam.
#[derive(Debug)]
struct SeamBackend {
    file: Arc<dyn DiskFile>,
}

fn to_io(e: crate::disk::DiskError) -> std::io::Error {
    std::io::Error::other(e)
}

impl StorageBackend for SeamBackend {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        Ok(self.file.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.file.read_at(offset, out).map_err(to_io)
    }

    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        self.file.set_len(len).map_err(to_io)
    }

    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        self.file.sync_all().map_err(to_io)
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.file.write_at(offset, data).map_err(to_io)
    }
}

/// The metadata store; see the module docs.
#[derive(Debug)]
pub struct MetaStore {
    db: Database,
}

impl MetaStore {
    /// Opens (creating if missing) the metadata database.
    pub fn open(disk: &dyn Disk) -> Result<Self> {
        let file = if disk.exists(FILE) {
            disk.open(FILE)?
        } else {
            disk.create(FILE, 0)?
        };
        // Every page's checksum is verified at open: a file damaged outside redb (bit rot, a
        // bad sector, an edit) is refused as corrupt; opened without the check, redb trusts
        // its file and may panic on it (found by tests/fuzz_files.rs).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create_with_backend(SeamBackend { file })
            .map_err(meta_err)?;
        let store = Self { db };
        // Create every table once so that reads never meet a missing table.
        let mut txn = store.begin(true)?;
        txn.ensure_tables()?;
        txn.commit()?;
        Ok(store)
    }

    /// Starts a write transaction; `durable` commits wait for the data to be synced.
    pub fn begin(&self, durable: bool) -> Result<MetaTxn> {
        let mut txn = self.db.begin_write().map_err(meta_err)?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(meta_err)?;
        Ok(MetaTxn { txn })
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_read().map_err(meta_err)?;
        f(&txn)
    }

    /// A value of the Raft layer, if set.
    pub fn raft(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|t| {
            let table = t.open_table(RAFT).map_err(meta_err)?;
            Ok(table
                .get(key)
                .map_err(meta_err)?
                .map(|v| v.value().to_vec()))
        })
    }

    /// One topic's configuration.
    pub fn topic(&self, name: &str) -> Result<Option<TopicConfig>> {
        self.read(|t| {
            let table = t.open_table(TOPICS).map_err(meta_err)?;
            match table.get(name).map_err(meta_err)? {
                Some(v) => Ok(Some(TopicConfig::decode(name, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Result<Vec<TopicConfig>> {
        self.read(|t| {
            let table = t.open_table(TOPICS).map_err(meta_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(meta_err)? {
                let (k, v) = row.map_err(meta_err)?;
                out.push(TopicConfig::decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// The committed offset of a consumer group on one queue.
    pub fn consumer_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<QueueOffset>> {
        self.read(|t| {
            let table = t.open_table(OFFSETS).map_err(meta_err)?;
            Ok(table
                .get((group, topic, queue_id))
                .map_err(meta_err)?
                .map(|v| QueueOffset(v.value())))
        })
    }

    /// Every committed offset: ((group, topic, queue id), offset).
    pub fn consumer_offsets(&self) -> Result<Vec<(OffsetKey, QueueOffset)>> {
        self.read(|t| {
            let table = t.open_table(OFFSETS).map_err(meta_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(meta_err)? {
                let (k, v) = row.map_err(meta_err)?;
                let (g, tp, q) = k.value();
                out.push(((g.to_string(), tp.to_string(), q), QueueOffset(v.value())));
            }
            Ok(out)
        })
    }

    /// The last applied log id.
    pub fn applied(&self) -> Result<Option<LogId>> {
        self.state("applied")
            .and_then(|v| v.map(|b| decode_log_id(&b)).transpose())
    }

    /// Whether a reset (snapshot install) was recorded and its file removal may not have
    /// finished; see [`crate::Store::reset_to`].
    pub fn reset_pending(&self) -> Result<bool> {
        Ok(self.state("reset_pending")?.is_some_and(|v| v == [1]))
    }

    /// The Raft-layer keys starting with `prefix`, in key order.
    pub fn raft_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.read(|t| {
            let table = t.open_table(RAFT).map_err(meta_err)?;
            let mut out = Vec::new();
            for row in table.range(prefix..).map_err(meta_err)? {
                let (k, _) = row.map_err(meta_err)?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push(k.value().to_string());
            }
            Ok(out)
        })
    }

    /// One transaction, undecided or decided.
    pub fn transaction(&self, half: Position) -> Result<Option<TxnRecord>> {
        self.read(|t| {
            for def in [TXN_PENDING, TXN_DECIDED] {
                let table = t.open_table(def).map_err(meta_err)?;
                if let Some(v) = table.get(half.0).map_err(meta_err)? {
                    return TxnRecord::decode(v.value()).map(Some);
                }
            }
            Ok(None)
        })
    }

    /// Up to `limit` undecided (`decided == false`) or decided transactions, by half
    /// position, and how many the table holds in all.
    pub fn transactions(&self, decided: bool, limit: usize) -> Result<(Vec<TxnRecord>, u64)> {
        self.transactions_after(decided, None, limit)
    }

    /// [`MetaStore::transactions`] whose half lies after `after` (all with `None`).
    pub fn transactions_after(
        &self,
        decided: bool,
        after: Option<Position>,
        limit: usize,
    ) -> Result<(Vec<TxnRecord>, u64)> {
        self.read(|t| {
            let table = t
                .open_table(if decided { TXN_DECIDED } else { TXN_PENDING })
                .map_err(meta_err)?;
            let mut out = Vec::new();
            let rows = match after {
                Some(p) if p.0 == u64::MAX => return Ok((out, table.len().map_err(meta_err)?)),
                Some(p) => table.range(p.0 + 1..).map_err(meta_err)?,
                None => table.range(0..).map_err(meta_err)?,
            };
            for row in rows.take(limit) {
                let (_, v) = row.map_err(meta_err)?;
                out.push(TxnRecord::decode(v.value())?);
            }
            Ok((out, table.len().map_err(meta_err)?))
        })
    }

    /// The lowest half message position of an undecided transaction (retention keeps its
    /// segment).
    pub fn oldest_pending_half(&self) -> Result<Option<Position>> {
        self.read(|t| {
            let table = t.open_table(TXN_PENDING).map_err(meta_err)?;
            Ok(table
                .first()
                .map_err(meta_err)?
                .map(|(k, _)| Position(k.value())))
        })
    }

    /// Whether apply refused the commit in entry `index`.
    pub fn commit_refused(&self, index: LogIndex) -> Result<bool> {
        self.read(|t| {
            let table = t.open_table(TXN_REFUSED).map_err(meta_err)?;
            Ok(table.get(index.0).map_err(meta_err)?.is_some())
        })
    }

    /// The last checkpoint.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        self.state("checkpoint")
            .and_then(|v| v.map(|b| Checkpoint::decode(&b)).transpose())
    }

    /// ConsumeQueue ends at the last checkpoint.
    pub fn cq_ends(&self) -> Result<BTreeMap<QueueId, u64>> {
        self.read(|t| {
            let table = t.open_table(CQ_ENDS).map_err(meta_err)?;
            let mut out = BTreeMap::new();
            for row in table.iter().map_err(meta_err)? {
                let (k, v) = row.map_err(meta_err)?;
                let (topic, queue_id) = k.value();
                out.insert(
                    QueueId {
                        topic: topic.to_string(),
                        queue_id,
                    },
                    v.value(),
                );
            }
            Ok(out)
        })
    }

    pub(crate) fn state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.read(|t| {
            let table = t.open_table(STATE).map_err(meta_err)?;
            Ok(table
                .get(key)
                .map_err(meta_err)?
                .map(|v| v.value().to_vec()))
        })
    }
}

/// A write transaction: every change in it commits atomically.
pub struct MetaTxn {
    pub(crate) txn: redb::WriteTransaction,
}

impl MetaTxn {
    fn ensure_tables(&mut self) -> Result<()> {
        self.txn.open_table(TOPICS).map_err(meta_err)?;
        self.txn.open_table(OFFSETS).map_err(meta_err)?;
        self.txn.open_table(STATE).map_err(meta_err)?;
        self.txn.open_table(CQ_ENDS).map_err(meta_err)?;
        self.txn.open_table(RAFT).map_err(meta_err)?;
        self.txn.open_table(TXN_PENDING).map_err(meta_err)?;
        self.txn.open_table(TXN_DECIDED).map_err(meta_err)?;
        self.txn.open_table(TXN_REFUSED).map_err(meta_err)?;
        crate::timer::ensure_tables(self)?;
        crate::groups::ensure_tables(self)?;
        crate::pop::ensure_tables(self)?;
        Ok(())
    }

    /// One transaction, undecided or decided, as this transaction sees it.
    pub fn transaction(&self, half: Position) -> Result<Option<TxnRecord>> {
        for def in [TXN_PENDING, TXN_DECIDED] {
            let table = self.txn.open_table(def).map_err(meta_err)?;
            if let Some(v) = table.get(half.0).map_err(meta_err)? {
                return TxnRecord::decode(v.value()).map(Some);
            }
        }
        Ok(None)
    }

    /// Records a transaction in the table its state belongs to.
    pub fn put_transaction(&mut self, r: &TxnRecord) -> Result<()> {
        let (to, from) = if r.pending() {
            (TXN_PENDING, TXN_DECIDED)
        } else {
            (TXN_DECIDED, TXN_PENDING)
        };
        self.txn
            .open_table(from)
            .map_err(meta_err)?
            .remove(r.half.0)
            .map_err(meta_err)?;
        self.txn
            .open_table(to)
            .map_err(meta_err)?
            .insert(r.half.0, r.encode().as_slice())
            .map_err(meta_err)?;
        Ok(())
    }

    /// Forgets decided transactions whose half message lies below `below`; returns how many.
    pub fn forget_decided_below(&mut self, below: Position) -> Result<u64> {
        let mut table = self.txn.open_table(TXN_DECIDED).map_err(meta_err)?;
        let gone = table
            .extract_from_if(..below.0, |_, _| true)
            .map_err(meta_err)?;
        let mut n = 0;
        for row in gone {
            row.map_err(meta_err)?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes every transaction (a snapshot install replaces them all).
    pub fn clear_transactions(&mut self) -> Result<()> {
        for def in [TXN_PENDING, TXN_DECIDED] {
            self.txn.delete_table(def).map_err(meta_err)?;
            self.txn.open_table(def).map_err(meta_err)?;
        }
        Ok(())
    }

    /// Records that apply refused the commit in entry `index` (see [`crate::txn`]).
    pub fn refuse_commit(&mut self, index: LogIndex) -> Result<()> {
        let mut table = self.txn.open_table(TXN_REFUSED).map_err(meta_err)?;
        table.insert(index.0, 0).map_err(meta_err)?;
        Ok(())
    }

    /// Forgets refused commits at or below `upto` (a checkpoint has passed them: no replay
    /// will meet them again).
    pub fn forget_refused_upto(&mut self, upto: LogIndex) -> Result<()> {
        let mut table = self.txn.open_table(TXN_REFUSED).map_err(meta_err)?;
        let gone = table
            .extract_from_if(..=upto.0, |_, _| true)
            .map_err(meta_err)?;
        for row in gone {
            row.map_err(meta_err)?;
        }
        Ok(())
    }

    /// Creates or replaces a topic.
    pub fn put_topic(&mut self, t: &TopicConfig) -> Result<()> {
        let mut table = self.txn.open_table(TOPICS).map_err(meta_err)?;
        table
            .insert(t.name.as_str(), t.encode().as_slice())
            .map_err(meta_err)?;
        Ok(())
    }

    /// Deletes a topic; returns whether it existed.
    pub fn delete_topic(&mut self, name: &str) -> Result<bool> {
        let mut table = self.txn.open_table(TOPICS).map_err(meta_err)?;
        Ok(table.remove(name).map_err(meta_err)?.is_some())
    }

    /// Records a consumer group's offset on one queue.
    pub fn set_consumer_offset(
        &mut self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: QueueOffset,
    ) -> Result<()> {
        let mut table = self.txn.open_table(OFFSETS).map_err(meta_err)?;
        table
            .insert((group, topic, queue_id), offset.0)
            .map_err(meta_err)?;
        Ok(())
    }

    /// Raises a consumer group's offset on one queue; a lower (stale) offset is ignored.
    /// Returns whether it changed.
    pub fn advance_consumer_offset(
        &mut self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: QueueOffset,
    ) -> Result<bool> {
        let mut table = self.txn.open_table(OFFSETS).map_err(meta_err)?;
        let cur = table
            .get((group, topic, queue_id))
            .map_err(meta_err)?
            .map(|v| v.value());
        if cur.is_some_and(|c| c >= offset.0) {
            return Ok(false);
        }
        table
            .insert((group, topic, queue_id), offset.0)
            .map_err(meta_err)?;
        Ok(true)
    }

    /// Records the last applied log id.
    pub fn set_applied(&mut self, id: &LogId) -> Result<()> {
        self.put_state("applied", &encode_log_id(id))
    }

    /// Records a checkpoint together with the ConsumeQueue ends it vouches for.
    pub fn set_checkpoint(
        &mut self,
        c: &Checkpoint,
        cq_ends: &BTreeMap<QueueId, u64>,
    ) -> Result<()> {
        self.put_state("checkpoint", &c.encode())?;
        let mut table = self.txn.open_table(CQ_ENDS).map_err(meta_err)?;
        for (q, end) in cq_ends {
            table
                .insert((q.topic.as_str(), q.queue_id), *end)
                .map_err(meta_err)?;
        }
        Ok(())
    }

    /// Removes every topic (a snapshot install replaces them all).
    pub fn clear_topics(&mut self) -> Result<()> {
        self.txn.delete_table(TOPICS).map_err(meta_err)?;
        self.txn.open_table(TOPICS).map_err(meta_err)?;
        Ok(())
    }

    /// Removes every consumer offset (a snapshot install replaces them all).
    pub fn clear_consumer_offsets(&mut self) -> Result<()> {
        self.txn.delete_table(OFFSETS).map_err(meta_err)?;
        self.txn.open_table(OFFSETS).map_err(meta_err)?;
        Ok(())
    }

    /// Removes every recorded ConsumeQueue end (the next checkpoint records the new ones).
    pub fn clear_cq_ends(&mut self) -> Result<()> {
        self.txn.delete_table(CQ_ENDS).map_err(meta_err)?;
        self.txn.open_table(CQ_ENDS).map_err(meta_err)?;
        Ok(())
    }

    /// Marks a reset as started (`true`) or finished (`false`); see [`MetaStore::reset_pending`].
    pub fn set_reset_pending(&mut self, pending: bool) -> Result<()> {
        self.put_state("reset_pending", &[u8::from(pending)])
    }

    /// Removes a value of the Raft layer, if present.
    pub fn delete_raft(&mut self, key: &str) -> Result<()> {
        let mut table = self.txn.open_table(RAFT).map_err(meta_err)?;
        table.remove(key).map_err(meta_err)?;
        Ok(())
    }

    /// Stores a value of the Raft layer (see the `raft` table in the module docs).
    pub fn put_raft(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let mut table = self.txn.open_table(RAFT).map_err(meta_err)?;
        table.insert(key, value).map_err(meta_err)?;
        Ok(())
    }

    pub(crate) fn put_state(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let mut table = self.txn.open_table(STATE).map_err(meta_err)?;
        table.insert(key, value).map_err(meta_err)?;
        Ok(())
    }

    /// Commits every change of the transaction atomically.
    pub fn commit(self) -> Result<()> {
        self.txn.commit().map_err(meta_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_encodings_golden_bytes() {
        let t = TopicConfig {
            name: "T".into(),
            read_queue_nums: 4,
            write_queue_nums: 2,
            perm: 6,
            message_type: TopicMessageType::Mixed,
        };
        assert_eq!(
            t.encode(),
            [
                &[1u8][..],
                &4u32.to_le_bytes(),
                &2u32.to_le_bytes(),
                &6u32.to_le_bytes()
            ]
            .concat()
        );
        assert_eq!(TopicConfig::decode("T", &t.encode()).unwrap(), t);
        for ty in TopicMessageType::ALL {
            let typed = TopicConfig {
                message_type: ty,
                ..t.clone()
            };
            let b = typed.encode();
            if ty == TopicMessageType::Mixed {
                assert_eq!(b, t.encode(), "a mixed topic is still a version 1 record");
            } else {
                assert_eq!((b[0], b.len(), b[13]), (2, 14, ty.code()));
            }
            assert_eq!(TopicConfig::decode("T", &b).unwrap(), typed);
            assert_eq!(TopicMessageType::parse(&ty.name().to_lowercase()), Some(ty));
        }
        let mut bad = TopicConfig {
            message_type: TopicMessageType::Fifo,
            ..t.clone()
        }
        .encode();
        bad[13] = 5;
        assert!(TopicConfig::decode("T", &bad).is_err(), "unknown type code");
        assert!(
            TopicConfig::decode("T", &bad[..13]).is_err(),
            "type byte cut"
        );
        bad[0] = 3;
        assert!(TopicConfig::decode("T", &bad).is_err(), "unknown version");
        let id = LogId {
            term: 7,
            node_id: 2,
            index: LogIndex(9),
        };
        assert_eq!(
            encode_log_id(&id),
            [
                &[1u8][..],
                &7u64.to_le_bytes(),
                &2u64.to_le_bytes(),
                &9u64.to_le_bytes()
            ]
            .concat()
        );
        assert_eq!(decode_log_id(&encode_log_id(&id)).unwrap(), id);
        let c = Checkpoint {
            log: ChainPoint {
                position: Position(100),
                prev_crc: 0xABCD,
                last_index: Some(LogIndex(5)),
            },
            log_first: LogIndex(1),
            dispatched_index: None,
            dispatched_position: Position(50),
            index: IndexCheckpoint {
                seq: 2,
                count: 3,
                begin_ts: 4,
            },
            purged_index: Some(LogIndex(0)),
        };
        let b = c.encode();
        let expected = [
            &[1u8][..],
            &100u64.to_le_bytes(),
            &0xABCDu32.to_le_bytes(),
            &[1],
            &5u64.to_le_bytes(),
            &1u64.to_le_bytes(),
            &[0],
            &0u64.to_le_bytes(),
            &50u64.to_le_bytes(),
            &2u64.to_le_bytes(),
            &3u32.to_le_bytes(),
            &4u64.to_le_bytes(),
            &[1],
            &0u64.to_le_bytes(),
        ]
        .concat();
        assert_eq!(b, expected);
        assert_eq!(Checkpoint::decode(&b).unwrap(), c);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(TopicConfig::decode("T", &[2, 0, 0]).is_err());
        assert!(TopicConfig::decode("T", &[1, 0]).is_err());
        assert!(decode_log_id(&[1; 30]).is_err(), "trailing bytes");
        let mut c = Checkpoint::default().encode();
        c[13] = 7; // option tag
        assert!(Checkpoint::decode(&c).is_err());
    }
}
