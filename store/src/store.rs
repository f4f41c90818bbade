//! The store: CommitLog + Raft index + ConsumeQueues + IndexFile + MetaStore, and the rules
//! that keep them consistent across crashes.
//!
//! # Derived structures and the checkpoint
//! The CommitLog is the only source of truth. The Raft index, the ConsumeQueues and the
//! IndexFile are derived from it; a [`Checkpoint`] in the MetaStore (committed durably, in one
//! redb transaction with every ConsumeQueue's end) records how far each was synced:
//! - the Raft index is durable up to the checkpoint's chain point; on open the CommitLog is
//!   scanned from there and the index rebuilt from the records found;
//! - ConsumeQueues and the IndexFile are durable up to `dispatched_index`; on open they are cut
//!   back to the checkpoint and the records in `(dispatched_index, applied]` are dispatched
//!   again (`applied` is the state machine's applied log id in the MetaStore). Dispatch
//!   assigns queue offsets in log order, so the replay assigns the same offsets.
//!
//! # Ownership
//! One task owns the `Store` (`&mut self` for every change). Readers that must not wait for
//! it use its [`ReadView`] (CommitLog, ConsumeQueues, IndexFile and MetaStore read handles,
//! each publishing only what is complete), and the group-commit flusher ([`crate::flush`])
//! holds a [`CommitLogReader`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::commitlog::record::{EntryRef, RecordKind};
use crate::commitlog::{ChainPoint, CommitLog, CommitLogReader, Damage, Record, RecordLoc};
use crate::config::StoreConfig;
use crate::consumequeue::{ConsumeQueues, CqEntry, QueueId};
use crate::disk::Disk;
use crate::error::{Result, StoreError};
use crate::indexfile::{IndexCheckpoint, IndexFileConfig, IndexFiles, KeyQuery};
use crate::message::{self, Message};
use crate::meta::{Checkpoint, MetaStore, MetaTxn};
use crate::raftindex::{IndexEntry, RaftIndex};
use crate::timer::{self, TimerKey};
use crate::txn::{self, DispatchGate, HALF_TOPIC};
use crate::types::{LogIndex, Position, QueueOffset};
use crate::view::ReadView;

/// A queue offset assigned to one message by dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub index: LogIndex,
    pub queue: QueueId,
    pub offset: QueueOffset,
    pub position: Position,
    pub size: u32,
}

/// What [`Store::delete_expired`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    pub segments_deleted: u64,
    pub first_position: Position,
}

/// Where a store restarts when it installs a snapshot taken at a segment boundary (see
/// [`Store::reset_to`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetPoint {
    /// A segment start, the crc of the record before it, and the index of the last entry
    /// before it (which must be known).
    pub log: ChainPoint,
    /// Every queue's next offset at that point.
    pub queue_ends: BTreeMap<QueueId, u64>,
}

/// The storage engine of one replica; see the module docs.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    log: CommitLog,
    reader: CommitLogReader,
    raft_index: RaftIndex,
    cqs: ConsumeQueues,
    meta: Arc<MetaStore>,
    /// Read handles; also where the IndexFile lives (behind its own mutex, shared by apply's
    /// puts and queries).
    view: ReadView,
    ckpt: Checkpoint,
    dispatched: Option<LogIndex>,
    dispatched_position: Position,
    purged: Option<LogIndex>,
}

impl Store {
    /// Whether [`Store::open`] would refuse this store because its CommitLog is damaged below
    /// the synced marker ([`CommitLog::find_damage`]); changes nothing on `disk`.
    pub fn find_damage(disk: Arc<dyn Disk>, config: &StoreConfig) -> Result<Option<Damage>> {
        let meta = MetaStore::open(disk.as_ref())?;
        if meta.reset_pending()? {
            return Ok(None);
        }
        let ckpt = meta.checkpoint()?.unwrap_or_default();
        drop(meta);
        CommitLog::find_damage(disk, config.segment_bytes, ckpt.log)
    }

    /// Opens the store on `disk`, recovering from whatever state a crash left.
    pub fn open(disk: Arc<dyn Disk>, config: StoreConfig) -> Result<Self> {
        config.validate()?;
        let meta = MetaStore::open(disk.as_ref())?;
        if meta.reset_pending()? {
            // A reset committed its new checkpoint and then stopped part way through removing
            // the old files: finish it before anything reads them.
            tracing::info!("store: finishing an interrupted reset");
            wipe_derived_and_log(disk.as_ref())?;
            let mut txn = meta.begin(true)?;
            txn.set_reset_pending(false)?;
            txn.commit()?;
        }
        let ckpt = meta.checkpoint()?.unwrap_or_default();
        let (log, scanned) = CommitLog::open(disk.clone(), config.segment_bytes, ckpt.log)?;
        let log_end = ckpt
            .log
            .last_index
            .map_or(ckpt.log_first, |i| LogIndex(i.0 + 1));
        let mut raft_index = RaftIndex::open(
            disk.clone(),
            config.raft_index_per_file,
            ckpt.log_first,
            log_end,
        )?;
        for r in &scanned {
            let e = IndexEntry {
                position: r.position,
                len: r.header.len,
                term: r.header.term,
            };
            raft_index.append(r.header.index, e)?;
        }
        let cqs = ConsumeQueues::open(disk.clone(), config.cq_per_file, &meta.cq_ends()?)?;
        let index_cfg = IndexFileConfig {
            slot_count: config.index_slots,
            max_entries: config.index_max_entries,
        };
        let index = Arc::new(Mutex::new(IndexFiles::open(
            disk.clone(),
            index_cfg,
            ckpt.index,
        )?));
        let meta = Arc::new(meta);
        let reader = log.reader();
        let view = ReadView {
            log: reader.clone(),
            queues: cqs.readers(),
            index,
            meta: meta.clone(),
        };
        let mut store = Store {
            config,
            log,
            reader,
            raft_index,
            cqs,
            meta,
            view,
            ckpt,
            dispatched: ckpt.dispatched_index,
            dispatched_position: ckpt.dispatched_position,
            purged: ckpt.purged_index,
        };
        store.cqs.truncate_from(ckpt.dispatched_position)?;
        store.cqs.purge_before(store.reader.first())?;
        store.redispatch()?;
        store.cqs.publish()?;
        Ok(store)
    }

    /// Dispatches again what the state machine had applied past the checkpoint.
    fn redispatch(&mut self) -> Result<()> {
        let Some(applied) = self.meta.applied()?.map(|a| a.index) else {
            return Ok(());
        };
        let last = self.raft_index.last();
        let target = match last {
            Some(l) if l < applied => {
                tracing::warn!(%applied, last = %l, "applied index is past the end of the log (async flush lost the tail)");
                l
            }
            Some(_) => applied,
            None => return Ok(()),
        };
        self.dispatch_upto(target)?;
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// A read handle on the CommitLog (also what the flusher syncs through).
    pub fn reader(&self) -> CommitLogReader {
        self.reader.clone()
    }

    /// The metadata store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// Read handles that do not need this `Store` (nor its owner's lock); see [`ReadView`].
    pub fn view(&self) -> ReadView {
        self.view.clone()
    }

    /// Appends Raft entries; returns where each landed. Written, not yet synced: in `Sync`
    /// flush mode acknowledge only after [`crate::flush::FlushHandle::wait_durable`] (or
    /// [`Store::sync`]) covers the last position.
    pub fn append(&mut self, entries: &[EntryRef<'_>]) -> Result<Vec<RecordLoc>> {
        for e in entries {
            if (e.payload.len() as u64).saturating_add(crate::commitlog::record::HEADER_LEN as u64)
                > self.config.max_record_bytes
            {
                return Err(StoreError::InvalidArgument(format!(
                    "entry {} is {} bytes, over max_record_bytes {}",
                    e.index,
                    e.payload.len(),
                    self.config.max_record_bytes
                )));
            }
        }
        let locs = self.log.append(entries)?;
        for (e, loc) in entries.iter().zip(&locs) {
            self.raft_index.append(
                e.index,
                IndexEntry {
                    position: loc.position,
                    len: loc.len,
                    term: e.term,
                },
            )?;
        }
        Ok(locs)
    }

    /// Syncs everything appended so far (without the flusher).
    pub fn sync(&self) -> Result<()> {
        self.reader.sync_to(self.reader.written())
    }

    /// First index held, and the last one with its term (`None` if empty).
    pub fn log_bounds(&self) -> Result<(LogIndex, Option<(LogIndex, u64)>)> {
        let last = match self.raft_index.last() {
            Some(i) => Some((i, self.raft_index.get(i)?.term)),
            None => None,
        };
        Ok((self.raft_index.first(), last))
    }

    /// The entries purged so far (inclusive), if any.
    pub fn purged(&self) -> Option<LogIndex> {
        self.purged
    }

    /// Reads the entry at `index`, checking that the record is the one the index names.
    pub fn read_entry(&self, index: LogIndex) -> Result<Record> {
        let at = self.raft_index.get(index)?;
        let rec = self.reader.read(at.position)?;
        if rec.header.index != index || rec.header.term != at.term || rec.header.len != at.len {
            return Err(StoreError::corrupt(
                crate::raftindex::DIR,
                index.0,
                format!(
                    "raft index says {at:?} but the record there is {:?}",
                    rec.header
                ),
            ));
        }
        Ok(rec)
    }

    /// The term of the entry at `index`.
    pub fn term_of(&self, index: LogIndex) -> Result<u64> {
        Ok(self.raft_index.get(index)?.term)
    }

    /// Removes every entry after `last_kept` (all of them if `None`). Only entries that were
    /// never dispatched (never committed) may be removed.
    pub fn truncate_after(&mut self, last_kept: Option<LogIndex>) -> Result<()> {
        let from = last_kept.map_or(self.raft_index.first(), |i| LogIndex(i.0 + 1));
        if from >= self.raft_index.end() {
            return Ok(());
        }
        assert!(
            self.dispatched.is_none_or(|d| d < from),
            "truncating {from} would remove dispatched (committed) entry {:?}",
            self.dispatched
        );
        let at = self.raft_index.get(from)?.position;
        // The end of the last kept entry, if the Raft index still holds it (not after a
        // snapshot install or a purge up to it).
        let kept_end = match last_kept {
            Some(k) if k >= self.raft_index.first() => {
                let e = self.raft_index.get(k)?;
                Some(Position(e.position.0 + u64::from(e.len)))
            }
            _ => None,
        };
        let point = self.log.truncation_point(at, kept_end)?;
        if self.ckpt.log.position > point.position {
            // The checkpoint must never point past the end of the log.
            self.raft_index.truncate(from)?;
            self.write_checkpoint(point)?;
        }
        self.log.truncate(point)?;
        self.raft_index.truncate(from)?;
        Ok(())
    }

    /// Forgets the entries up to `upto` (inclusive) for Raft (they stay in the CommitLog
    /// until retention deletes their segment).
    pub fn purge_upto(&mut self, upto: LogIndex) -> Result<()> {
        if self.purged.is_some_and(|p| p >= upto) {
            return Ok(());
        }
        self.raft_index.purge_before(LogIndex(upto.0 + 1))?;
        self.purged = Some(upto);
        self.checkpoint()
    }

    /// Throws away the whole log and every derived structure and restarts, empty, at
    /// `point`: the CommitLog continues at `point.log` (a segment start) with the same chain,
    /// the Raft index at the entry after `point.log.last_index`, every ConsumeQueue at its
    /// end in `point.queue_ends`; IndexFiles start over. `meta` adds the matching metadata
    /// (topics, offsets, applied id, Raft values) to the same transaction.
    ///
    /// Crash safety: the new checkpoint, the metadata and a "reset pending" mark commit
    /// durably in one transaction *before* any file is removed; [`Store::open`] finishes a
    /// reset it finds pending (removes every log and derived file) before reading them; the
    /// mark is cleared durably before this returns, so nothing appended afterwards can be
    /// wiped by a later open.
    pub fn reset_to(
        &mut self,
        point: &ResetPoint,
        meta: impl FnOnce(&mut MetaTxn) -> Result<()>,
    ) -> Result<()> {
        let seg = self.config.segment_bytes;
        let Some(last) = point.log.last_index else {
            return Err(StoreError::InvalidArgument(
                "reset point without a last index".into(),
            ));
        };
        if point.log.position.0 == 0 || !point.log.position.0.is_multiple_of(seg) {
            return Err(StoreError::InvalidArgument(format!(
                "reset point {} is not a segment start past 0 (segment_bytes {seg})",
                point.log.position
            )));
        }
        let first = LogIndex(last.0 + 1);
        let ckpt = Checkpoint {
            log: point.log,
            log_first: first,
            dispatched_index: Some(last),
            dispatched_position: point.log.position,
            index: IndexCheckpoint::default(),
            purged_index: Some(last),
        };
        let mut txn = self.meta.begin(true)?;
        txn.set_reset_pending(true)?;
        txn.clear_cq_ends()?;
        txn.set_checkpoint(&ckpt, &point.queue_ends)?;
        meta(&mut txn)?;
        txn.commit()?;
        self.log.reset(point.log)?;
        self.raft_index.reset(first)?;
        self.cqs.reset(&point.queue_ends)?;
        self.view.index().reset()?;
        self.ckpt = ckpt;
        self.dispatched = Some(last);
        self.dispatched_position = point.log.position;
        self.purged = Some(last);
        let mut txn = self.meta.begin(true)?;
        txn.set_reset_pending(false)?;
        txn.commit()?;
        tracing::info!(position = %point.log.position, first = %first, "store: reset to a snapshot point");
        Ok(())
    }

    /// If the entry at `index` opens a CommitLog segment (other than the first one), the
    /// chain point just before it: where a store restarted by [`Store::reset_to`] would
    /// continue so that this entry lands at the same position.
    pub fn segment_boundary_at(&self, index: LogIndex) -> Result<Option<ChainPoint>> {
        let at = self.raft_index.get(index)?.position;
        if at.0 == 0 || !at.0.is_multiple_of(self.config.segment_bytes) {
            return Ok(None);
        }
        let header = self.reader.read_header(at)?;
        Ok(Some(ChainPoint {
            position: at,
            prev_crc: header.prev_crc,
            last_index: index.0.checked_sub(1).map(LogIndex),
        }))
    }

    /// Builds ConsumeQueue and IndexFile entries for every entry in `(dispatched, upto]`, in
    /// log order, and returns the queue offsets assigned. Idempotent: entries already
    /// dispatched are skipped. Commit messages enter their queue unless apply refused them
    /// (the `ReplayGate`); the state machine decides with [`Store::dispatch_upto_gated`].
    pub fn dispatch_upto(&mut self, upto: LogIndex) -> Result<Vec<Assigned>> {
        let meta = self.meta.clone();
        let mut gate = ReplayGate {
            meta: &meta,
            error: None,
        };
        self.dispatch_upto_gated(upto, &mut gate)
    }

    /// [`Store::dispatch_upto`], with `gate` deciding what transactional messages do (see
    /// [`crate::txn`]). Half messages are assigned offsets in [`HALF_TOPIC`]/0.
    pub fn dispatch_upto_gated(
        &mut self,
        upto: LogIndex,
        gate: &mut dyn DispatchGate,
    ) -> Result<Vec<Assigned>> {
        let mut out = Vec::new();
        let mut next = self
            .dispatched
            .map_or(self.raft_index.first(), |d| LogIndex(d.0 + 1));
        while next <= upto {
            let rec = self.read_entry(next)?;
            if rec.header.kind == RecordKind::MESSAGES {
                self.dispatch_messages(&rec, gate, &mut out)?;
                if let Some(e) = gate.take_error() {
                    return Err(e);
                }
            }
            self.dispatched = Some(next);
            self.dispatched_position = Position(rec.position.0 + u64::from(rec.header.len));
            next = LogIndex(next.0 + 1);
        }
        self.cqs.publish()?;
        Ok(out)
    }

    fn dispatch_messages(
        &mut self,
        rec: &Record,
        gate: &mut dyn DispatchGate,
        out: &mut Vec<Assigned>,
    ) -> Result<()> {
        let base = rec.position.0 + crate::commitlog::record::HEADER_LEN as u64;
        // The payload was verified by its CRC and was validated before it was proposed; a
        // batch that still does not decode is skipped identically on every replica.
        let spans = match message::split_batch(&rec.payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(index = %rec.header.index, error = %e, "undecodable messages entry; not dispatched");
                return Ok(());
            }
        };
        for span in spans {
            let bytes = &rec.payload[span.offset as usize..(span.offset + span.len) as usize];
            let m = match message::MessageView::parse(bytes) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(index = %rec.header.index, error = %e, "undecodable message; not dispatched");
                    continue;
                }
            };
            let position = Position(base + u64::from(span.offset));
            let half = txn::is_half(&m) && !gate.halves_visible();
            if let Some(commits) = txn::commit_of(&m) {
                let admitted =
                    commits.is_some_and(|p| gate.admit_commit(rec.header.index, p, m.msg_id));
                if !admitted {
                    continue;
                }
            }
            if let Some(delivers) = timer::delivery_of(&m)
                && !delivers.is_some_and(|k| gate.admit_timer(position, k))
            {
                continue;
            }
            // A timed message waits in the timer queue (the Raft layer indexes it by due time).
            let waits = timer::deliver_ms_of(&m).is_some() && !gate.timers_immediate();
            let system = if half {
                Some(HALF_TOPIC)
            } else if waits {
                Some(timer::TIMER_TOPIC)
            } else {
                None
            };
            let queue = QueueId {
                topic: system.unwrap_or(m.topic).to_string(),
                queue_id: if system.is_some() { 0 } else { m.queue_id },
            };
            let entry = CqEntry {
                position,
                size: span.len,
                tag_hash: message::tag_hash(m.tags),
            };
            let offset = self.cqs.append(&queue, entry)?;
            // A half or timed message is found by its position; its keys are indexed when
            // its commit or delivery enters its queue.
            if system.is_none() {
                let mut index = self.view.index();
                for key in m
                    .keys
                    .iter()
                    .chain(std::iter::once(&m.msg_id))
                    .filter(|k| !k.is_empty())
                {
                    index.put(m.topic, key, position, span.len, m.store_timestamp_ms)?;
                }
            }
            out.push(Assigned {
                index: rec.header.index,
                queue,
                offset,
                position,
                size: span.len,
            });
        }
        Ok(())
    }

    /// Verifies every retained CommitLog record (see [`CommitLogReader::verify`]); returns
    /// how many entries it checked.
    pub fn verify(&self) -> Result<u64> {
        self.reader.verify()
    }

    /// The highest dispatched index.
    pub fn dispatched(&self) -> Option<LogIndex> {
        self.dispatched
    }

    /// Makes everything durable and records a checkpoint, so that the next open scans and
    /// rebuilds only what comes after.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.sync()?;
        let tail = self.log.tail();
        self.write_checkpoint(tail)
    }

    fn write_checkpoint(&mut self, log: ChainPoint) -> Result<()> {
        self.raft_index.sync()?;
        self.cqs.sync()?;
        let index = self.view.index().sync()?;
        let ckpt = Checkpoint {
            log,
            log_first: self.raft_index.first(),
            dispatched_index: self.dispatched,
            dispatched_position: self.dispatched_position,
            index,
            purged_index: self.purged,
        };
        let mut txn = self.meta.begin(true)?;
        txn.set_checkpoint(&ckpt, &self.cqs.ends())?;
        if let Some(d) = self.dispatched {
            txn.forget_refused_upto(d)?;
        }
        txn.forget_refused_copies_below(self.dispatched_position)?;
        txn.commit()?;
        self.ckpt = ckpt;
        Ok(())
    }

    // Reads go through the read view (one implementation for the owner and for readers
    // that do not take the owner's lock).

    /// The ConsumeQueue entry at `offset` of a queue.
    pub fn cq_entry(&self, queue: &QueueId, offset: QueueOffset) -> Result<CqEntry> {
        self.view.cq_entry(queue, offset)
    }

    /// The smallest and one-past-largest offsets of a queue (`(0, 0)` if it does not exist).
    pub fn queue_bounds(&self, queue: &QueueId) -> (QueueOffset, QueueOffset) {
        self.view.queue_bounds(queue)
    }

    /// Every queue with its bounds.
    pub fn queues(&self) -> Vec<(QueueId, QueueOffset, QueueOffset)> {
        self.view.queues()
    }

    /// Reads and verifies the message at `position` (`size` bytes).
    pub fn read_message(&self, position: Position, size: u32) -> Result<Message> {
        self.view.read_message(position, size)
    }

    /// Reads and verifies the message starting at `position` (see
    /// [`ReadView::read_message_at`]).
    pub fn read_message_at(&self, position: Position) -> Result<Message> {
        self.view.read_message_at(position)
    }

    /// Reads the message at a queue offset.
    pub fn read_queue_message(&self, queue: &QueueId, offset: QueueOffset) -> Result<Message> {
        self.view.read_queue_message(queue, offset)
    }

    /// The first offset of `queue` whose message was stored at or after `timestamp_ms`
    /// (the queue's max offset if none).
    pub fn offset_at_time(&self, queue: &QueueId, timestamp_ms: u64) -> Result<QueueOffset> {
        self.view.offset_at_time(queue, timestamp_ms)
    }

    /// Messages matching `q` by key or unique id, newest first (hash collisions removed).
    pub fn query_by_key(&self, q: &KeyQuery<'_>) -> Result<Vec<(Position, Message)>> {
        self.view.query_by_key(q)
    }

    /// Deletes whole CommitLog segments that are fully dispatched and older than
    /// `file_reserved_time_ms` at `now_ms`; moves ConsumeQueue minimums and the Raft index
    /// forward accordingly. A segment's age is taken from the first timestamped record of
    /// the segment after it (when it stopped being written); the newest segment is never
    /// deleted. (A replica purges through Raft instead: [`Store::expired_before`], then
    /// [`Store::purge_upto`] through openraft, then [`Store::delete_segments_before`].)
    pub fn delete_expired(&mut self, now_ms: u64) -> Result<RetentionReport> {
        let Some(new_first) = self.expired_before(now_ms)? else {
            return Ok(RetentionReport {
                segments_deleted: 0,
                first_position: self.reader.first(),
            });
        };
        let first_index = self.first_index_at(new_first)?;
        if let Some(last_gone) = first_index.0.checked_sub(1) {
            self.purge_upto(LogIndex(last_gone))?;
        }
        self.delete_segments_before(new_first)
    }

    /// The index of the entry at `position` (a record start, e.g. a segment start).
    pub fn first_index_at(&self, position: Position) -> Result<LogIndex> {
        Ok(self.reader.read_header(position)?.index)
    }

    /// Where retention may cut at `now_ms`: the start of the oldest segment to keep, if any
    /// older segment is expired and fully dispatched (see [`Store::delete_expired`]) and holds
    /// no undecided transaction's half message and no pending timer's message.
    pub fn expired_before(&self, now_ms: u64) -> Result<Option<Position>> {
        let seg = self.config.segment_bytes;
        let starts = self.reader.segment_starts();
        // An undecided transaction's half message keeps its segment (and every later one).
        // So does a pending timer's message.
        let oldest = match (
            self.meta.oldest_pending_half()?,
            self.meta.oldest_pending_timer()?,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let hold = oldest.map_or(u64::MAX, |p| p.0 - p.0 % seg);
        let mut cut = None;
        for w in starts.windows(2) {
            let (start, next) = (w[0], w[1]);
            if next.0 > self.dispatched_position.0 || next.0 > hold {
                break;
            }
            match self.first_timestamp(next)? {
                Some(ts) if ts.saturating_add(self.config.file_reserved_time_ms) <= now_ms => {
                    cut = Some(next)
                }
                _ => break,
            }
            debug_assert_eq!(start.0 + seg, next.0);
        }
        Ok(cut)
    }

    /// Deletes the CommitLog segments before `new_first` (a segment start) and the
    /// ConsumeQueue and IndexFile entries pointing into them. Refused unless every entry in
    /// them is dispatched and purged from the Raft index (Raft no longer needs them).
    pub fn delete_segments_before(&mut self, new_first: Position) -> Result<RetentionReport> {
        if new_first <= self.reader.first() {
            return Ok(RetentionReport {
                segments_deleted: 0,
                first_position: self.reader.first(),
            });
        }
        if !new_first.0.is_multiple_of(self.config.segment_bytes)
            || new_first > self.dispatched_position
        {
            return Err(StoreError::InvalidArgument(format!(
                "cannot delete before {new_first}: not a segment start at or below the dispatched end {}",
                self.dispatched_position
            )));
        }
        let first_index = self.first_index_at(new_first)?;
        if first_index > self.raft_index.first() {
            return Err(StoreError::InvalidArgument(format!(
                "cannot delete before {new_first}: Raft still holds entries from {} (purge up to {} first)",
                self.raft_index.first(),
                first_index.0 - 1
            )));
        }
        // The checkpoint must be at or past the new first position before segments go.
        self.checkpoint()?;
        let deleted = self.log.purge_before(new_first)?;
        self.cqs.purge_before(new_first)?;
        self.view.index().purge_before(new_first)?;
        self.write_checkpoint(self.log.tail())?;
        Ok(RetentionReport {
            segments_deleted: deleted,
            first_position: new_first,
        })
    }

    /// The timestamp of the first record with one, in the segment starting at `start`.
    fn first_timestamp(&self, start: Position) -> Result<Option<u64>> {
        let seg_end = start.0 + self.config.segment_bytes;
        let mut p = start;
        while p.0 < seg_end && p < self.reader.written() {
            let h = self.reader.read_header(p)?;
            if h.kind == RecordKind::BLANK {
                return Ok(None);
            }
            if h.timestamp_ms > 0 {
                return Ok(Some(h.timestamp_ms));
            }
            p = Position(p.0 + u64::from(h.len));
        }
        Ok(None)
    }
}

/// The gate of a replay after a crash: a commit or a timer's delivery copy enters its queue
/// unless apply recorded that it refused it (see [`crate::txn`] and [`crate::timer`]).
struct ReplayGate<'a> {
    meta: &'a MetaStore,
    /// The first error met (reported after the replay).
    error: Option<StoreError>,
}

impl DispatchGate for ReplayGate<'_> {
    fn take_error(&mut self) -> Option<StoreError> {
        self.error.take()
    }

    fn admit_commit(&mut self, index: LogIndex, _half: Position, _msg_id: &str) -> bool {
        match self.meta.commit_refused(index) {
            Ok(refused) => !refused,
            Err(e) => {
                self.error.get_or_insert(e);
                false
            }
        }
    }

    fn admit_timer(&mut self, copy: Position, _key: TimerKey) -> bool {
        match self.meta.timer_copy_refused(copy) {
            Ok(refused) => !refused,
            Err(e) => {
                self.error.get_or_insert(e);
                false
            }
        }
    }
}

/// Removes every CommitLog, Raft index, ConsumeQueue and IndexFile file (the MetaStore
/// stays): finishing an interrupted [`Store::reset_to`].
fn wipe_derived_and_log(disk: &dyn Disk) -> Result<()> {
    CommitLog::wipe(disk)?;
    for dir in [crate::raftindex::DIR, crate::indexfile::DIR] {
        for name in disk.list(dir)? {
            disk.remove(&format!("{dir}/{name}"))?;
        }
    }
    let cq = crate::consumequeue::DIR;
    for topic in disk.list_dirs(cq)? {
        for queue in disk.list_dirs(&format!("{cq}/{topic}"))? {
            let dir = format!("{cq}/{topic}/{queue}");
            for name in disk.list(&dir)? {
                disk.remove(&format!("{dir}/{name}"))?;
            }
        }
    }
    Ok(())
}
