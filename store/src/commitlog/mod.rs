//! The CommitLog: the Raft log of a broker group, as fixed-size segment files.
//!
//! Segment `k` is the file `commitlog/<20-digit k × segment_bytes>` and holds the positions
//! `[k × segment_bytes, (k + 1) × segment_bytes)`. A record never spans two segments: when
//! the next record does not fit (see [`CommitLog::append`]) the rest of the segment is filled
//! with a blank record and the record starts the next segment. Because the rule depends only
//! on record sizes and `segment_bytes`, replicas that hold the same entries hold the same
//! bytes at the same positions.
//!
//! Record format: [`record`]. Invariants kept here:
//! - records are chained (`prev_crc`) and indexes of non-blank records are consecutive;
//! - `marker <= synced <= written` (asserted at every sync); `written` is the end of the last complete record and is
//!   published (release) only after the bytes are written, so a reader (acquire) below it
//!   always sees whole records;
//! - the synced marker (a [`SlotFile`]) is never above what is really synced: data is synced
//!   first, then the marker is written and synced. Recovery treats a bad record below the
//!   marker as corruption, and one at or above it as the torn end of the log. The group-commit
//!   flusher lets the marker trail the synced end by a bounded time so that an acknowledgement
//!   costs one flush, not two (see [`CommitLogReader::sync_data_to`]).

pub mod record;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::disk::{Disk, DiskFile, PAGE_BYTES};
use crate::error::{Result, StoreError};
use crate::slotfile::SlotFile;
use crate::types::{LogIndex, Position};
use record::{EntryRef, HEADER_LEN, Invalid, RecordHeader, RecordKind};

/// Directory of the segments.
pub const DIR: &str = "commitlog";
/// The synced-position marker.
const SYNCED_MARKER: &str = "commitlog.synced";
/// A zero-filled file made ahead of time, renamed into place when the log rolls (creating
/// and zero-filling a segment takes long: it must not stall an append).
const SPARE: &str = "commitlog.spare";
/// What appends are padded with to the end of their last page.
static PAGE_OF_ZEROS: [u8; PAGE_BYTES as usize] = [0; PAGE_BYTES as usize];

/// The spare segment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spare {
    Absent,
    Creating,
    Ready,
}

/// Name of the segment starting at `start`.
pub fn segment_path(start: u64) -> String {
    format!("{DIR}/{start:020}")
}

/// Where a scan or an append continues from: a position at a record boundary, the crc of
/// the record before it, and the index the next entry must carry (if known).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainPoint {
    pub position: Position,
    pub prev_crc: u32,
    /// Index of the last entry before `position`, if any.
    pub last_index: Option<LogIndex>,
}

/// A record found by a recovery scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    pub position: Position,
    pub header: RecordHeader,
}

/// A record read back by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub position: Position,
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

/// Where an appended entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLoc {
    pub position: Position,
    pub len: u32,
}

/// State shared by the writer, readers and the flusher.
#[derive(Debug)]
pub(crate) struct Shared {
    disk: Arc<dyn Disk>,
    segment_bytes: u64,
    /// Segment number → file. A lock because the writer adds and removes segments while
    /// readers and the flusher look them up; it is held only to clone an `Arc` or edit the
    /// map (no I/O, no await under it).
    segments: RwLock<BTreeMap<u64, Arc<dyn DiskFile>>>,
    written: AtomicU64,
    synced: AtomicU64,
    first: AtomicU64,
    /// The marker, behind a lock that also serializes syncing with truncation: a sync must
    /// not raise the marker over a range that a concurrent truncation is taking back. Held
    /// during the sync I/O (never across an await).
    flush: Mutex<FlushState>,
    /// A lock because the writer takes the spare while a background task may be making it;
    /// held only to flip the state and, by the writer, for the rename (no await under it).
    spare: Mutex<Spare>,
}

#[derive(Debug)]
struct FlushState {
    marker: SlotFile,
    /// Set after a failed sync: nothing is synced or acknowledged after it (after a failed
    /// fsync the kernel may have dropped the dirty pages; retrying would lie).
    failed: Option<String>,
}

/// The writer's handle; readers use [`CommitLogReader`].
#[derive(Debug)]
pub struct CommitLog {
    shared: Arc<Shared>,
    /// The chain state after the last record written.
    tail: ChainPoint,
    buf: Vec<u8>,
}

/// A cheap, cloneable read handle.
#[derive(Debug, Clone)]
pub struct CommitLogReader {
    shared: Arc<Shared>,
}

impl CommitLog {
    /// Opens the CommitLog and recovers its end by scanning from `from` (the checkpoint).
    /// Returns the log and every record found at or after `from`, in order.
    ///
    /// Errors with [`StoreError::Corrupt`] if a record below the synced marker does not
    /// verify, or a segment the marker covers is missing.
    pub fn open(
        disk: Arc<dyn Disk>,
        segment_bytes: u64,
        from: ChainPoint,
    ) -> Result<(Self, Vec<ScannedRecord>)> {
        let shared = Shared::open(disk, segment_bytes, from)?;
        if shared.disk.exists(SPARE) {
            // Possibly half zero-filled when the process died: make a new one later.
            shared.disk.remove(SPARE)?;
        }
        let mut log = CommitLog {
            shared,
            tail: from,
            buf: Vec::new(),
        };
        let scanned = log.recover(from)?;
        // The segment the next append goes to is made now: making one (zero-filling it) takes
        // a fraction of a second, which must not stall the first appends of a new log.
        let end = log.shared.written.load(Ordering::Acquire);
        log.shared.ensure_segment(end / segment_bytes)?;
        Ok((log, scanned))
    }

    /// Scans the CommitLog as [`CommitLog::open`] does, changing nothing, and says whether a
    /// record below the synced marker fails to verify (or a segment the marker covers is
    /// missing): the damage [`CommitLog::open`] refuses with [`StoreError::Corrupt`].
    /// `None`: the log opens (a torn tail above the marker is not damage).
    pub fn find_damage(
        disk: Arc<dyn Disk>,
        segment_bytes: u64,
        from: ChainPoint,
    ) -> Result<Option<Damage>> {
        let sh = Shared::open(disk, segment_bytes, from)?;
        let synced = sh.flush_state().marker.value();
        let (end, _, why) = sh.scan(from)?;
        if end.position.0 >= synced {
            return Ok(None);
        }
        let (after, last_index) = sh.follow_headers(end, synced);
        Ok(Some(Damage {
            good_end: end,
            synced,
            why: why.map_or_else(|| "missing segment".to_string(), |w| w.to_string()),
            after,
            last_index,
        }))
    }
}

/// Damage below the synced marker: see [`CommitLog::find_damage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The chain state after the last record that verifies.
    pub good_end: ChainPoint,
    /// The synced marker: every byte below it had been synced.
    pub synced: u64,
    /// What failed at `good_end`.
    pub why: String,
    /// How far past the damage the records' lengths and indexes are still vouched for: the
    /// start of the first record whose length is not ([`Shared::follow_headers`]), and the
    /// index of the last entry before it.
    pub after: u64,
    pub last_index: Option<LogIndex>,
}

impl Damage {
    /// An upper bound of the index of the last entry that had been synced: the last good
    /// index plus one entry per [`HEADER_LEN`] bytes between the damage and the marker (no
    /// record is shorter than its header). A replica acknowledges an entry only once it is
    /// synced (sync flush), so no entry it acknowledged has a larger index.
    ///
    /// Past the damage, records whose length and index the chain still vouches for are
    /// counted exactly ([`Shared::follow_headers`]): a flipped bit in a payload costs nothing;
    /// only the bytes from the first record no header vouches for count one entry per 44.
    pub fn synced_index_bound(&self) -> u64 {
        let lost_bytes = self.synced.saturating_sub(self.after);
        let most = lost_bytes.div_ceil(HEADER_LEN as u64);
        self.last_index.map_or(0, |i| i.0) + most
    }
}

impl Shared {
    /// The segments on disk and the synced marker, before any scan.
    fn open(disk: Arc<dyn Disk>, segment_bytes: u64, from: ChainPoint) -> Result<Arc<Shared>> {
        let mut segments = BTreeMap::new();
        for name in disk.list(DIR)? {
            let Some(start) = parse_segment_name(&name) else {
                return Err(StoreError::corrupt(
                    format!("{DIR}/{name}"),
                    0,
                    "unexpected file in the commitlog",
                ));
            };
            if start % segment_bytes != 0 {
                return Err(StoreError::Config(format!(
                    "segment {name} does not start at a multiple of segment_bytes {segment_bytes}"
                )));
            }
            let file = disk.open(&segment_path(start))?;
            if file.len() != segment_bytes {
                return Err(StoreError::Config(format!(
                    "segment {name} is {} bytes but segment_bytes is {segment_bytes}",
                    file.len()
                )));
            }
            segments.insert(start / segment_bytes, file);
        }
        let marker = SlotFile::open(disk.as_ref(), SYNCED_MARKER, from.position.0)?;
        let first = segments
            .keys()
            .next()
            .map_or(from.position.0, |k| k * segment_bytes);
        let shared = Arc::new(Shared {
            disk,
            segment_bytes,
            segments: RwLock::new(segments),
            written: AtomicU64::new(from.position.0),
            synced: AtomicU64::new(from.position.0),
            first: AtomicU64::new(first),
            flush: Mutex::new(FlushState {
                marker,
                failed: None,
            }),
            spare: Mutex::new(Spare::Absent),
        });
        Ok(shared)
    }
}

impl CommitLog {
    fn recover(&mut self, from: ChainPoint) -> Result<Vec<ScannedRecord>> {
        let sh = &self.shared;
        let synced_marker = sh.flush_state().marker.value();
        if from.position.0 < sh.first.load(Ordering::Acquire) {
            return Err(StoreError::corrupt(
                segment_path(from.position.0 / sh.segment_bytes * sh.segment_bytes),
                from.position.0,
                "the checkpoint points below the first segment",
            ));
        }
        let (end, scanned, why) = sh.scan(from)?;
        if end.position.0 < synced_marker {
            let seg = end.position.0 / sh.segment_bytes * sh.segment_bytes;
            let reason = why.map_or_else(|| "missing segment".to_string(), |w| w.to_string());
            return Err(StoreError::corrupt(
                segment_path(seg),
                end.position.0,
                format!("{reason}; the log was synced up to {synced_marker}"),
            ));
        }
        if let Some(why) = why {
            tracing::info!(position = end.position.0, %why, "commitlog: cut the torn tail");
        }
        // Segments past the one holding the end hold only unsynced bytes: drop them.
        let keep = end.position.0 / sh.segment_bytes;
        let extra: Vec<u64> = sh
            .segments_read()
            .range(keep + 1..)
            .map(|(k, _)| *k)
            .collect();
        for k in extra {
            sh.remove_segment(k)?;
        }
        sh.written.store(end.position.0, Ordering::Release);
        sh.synced
            .store(synced_marker.min(end.position.0), Ordering::Release);
        self.tail = end;
        Ok(scanned)
    }

    /// A read handle.
    pub fn reader(&self) -> CommitLogReader {
        CommitLogReader {
            shared: self.shared.clone(),
        }
    }

    /// The chain state after the last record.
    pub fn tail(&self) -> ChainPoint {
        self.tail
    }

    /// Appends entries, in order, as consecutive records; returns where each landed. The
    /// bytes are written (visible to readers) but not synced: see [`CommitLogReader::sync_to`].
    ///
    /// A record fits in the current segment if it leaves at least [`HEADER_LEN`] bytes free
    /// for the blank that will close the segment (`pos_in_segment + len + HEADER_LEN <=
    /// segment_bytes`); otherwise a blank fills the rest and the record opens the next segment.
    pub fn append(&mut self, entries: &[EntryRef<'_>]) -> Result<Vec<RecordLoc>> {
        self.shared.check_not_failed()?;
        let seg_bytes = self.shared.segment_bytes;
        let mut next_index = self.tail.last_index.map(|i| i.0 + 1);
        for e in entries {
            let len = HEADER_LEN as u64 + e.payload.len() as u64;
            if e.kind == RecordKind::BLANK
                || len + HEADER_LEN as u64 > seg_bytes
                || len > record::RECORD_MAX as u64
            {
                return Err(StoreError::InvalidArgument(format!(
                    "entry {} of {len} bytes (kind {}) cannot be stored in {seg_bytes}-byte segments",
                    e.index, e.kind.0
                )));
            }
            if next_index.is_some_and(|n| n != e.index.0) {
                return Err(StoreError::InvalidArgument(format!(
                    "entry index {} does not follow {:?}",
                    e.index, self.tail.last_index
                )));
            }
            next_index = Some(e.index.0 + 1);
        }
        let mut locs = Vec::with_capacity(entries.len());
        let mut pos = self.tail.position.0;
        let mut crc = self.tail.prev_crc;
        // Headers are encoded into `buf`; payloads are written from the caller's slices.
        // `run` is the entries of the current segment, written with one vectored write.
        self.buf.clear();
        let mut run: Vec<&EntryRef<'_>> = Vec::new();
        let mut run_start = pos;
        if !entries.is_empty() {
            self.shared.ensure_segment(pos / seg_bytes)?;
        }
        for e in entries {
            let len = (HEADER_LEN + e.payload.len()) as u64;
            let in_seg = pos % seg_bytes;
            if in_seg + len + HEADER_LEN as u64 > seg_bytes {
                let blank_len = seg_bytes - in_seg;
                crc = record::encode_blank(&mut self.buf, blank_len as u32, crc);
                self.write_run(run_start, &run, true)?;
                run.clear();
                pos += blank_len;
                self.shared.ensure_segment(pos / seg_bytes)?;
                run_start = pos;
            }
            crc = record::encode_header(&mut self.buf, e, crc);
            run.push(e);
            locs.push(RecordLoc {
                position: Position(pos),
                len: len as u32,
            });
            pos += len;
        }
        self.write_run(run_start, &run, false)?;
        if let Some(last) = entries.last() {
            self.tail = ChainPoint {
                position: Position(pos),
                prev_crc: crc,
                last_index: Some(last.index),
            };
        }
        self.shared.written.store(pos, Ordering::Release);
        Ok(locs)
    }

    /// Writes the records of `run` (headers from `buf`, in order, then a blank header if
    /// `blank`) at `start`, all inside one segment, as one vectored write; clears `buf`.
    fn write_run(&mut self, start: u64, run: &[&EntryRef<'_>], blank: bool) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let seg_bytes = self.shared.segment_bytes;
        let file = self.shared.segment(start / seg_bytes).ok_or_else(|| {
            StoreError::corrupt(
                segment_path(start / seg_bytes * seg_bytes),
                start,
                "segment vanished",
            )
        })?;
        let mut slices: Vec<&[u8]> = Vec::with_capacity(2 * run.len() + 1);
        for (k, e) in run.iter().enumerate() {
            slices.push(&self.buf[k * HEADER_LEN..(k + 1) * HEADER_LEN]);
            slices.push(e.payload);
        }
        if blank {
            slices.push(&self.buf[run.len() * HEADER_LEN..]);
        }
        debug_assert_eq!(
            self.buf.len(),
            (run.len() + usize::from(blank)) * HEADER_LEN
        );
        // Zeros to the end of the last page (what the log holds past its end is garbage or
        // zeros): each page's first write then covers it from its start, so the kernel never
        // reads a page of a segment zero-filled around the page cache
        // (`Disk::create_sequential`).
        let end = start % seg_bytes + slices.iter().map(|b| b.len() as u64).sum::<u64>();
        let pad = (end.next_multiple_of(PAGE_BYTES).min(seg_bytes)).saturating_sub(end);
        if pad > 0 {
            slices.push(&PAGE_OF_ZEROS[..pad as usize]);
        }
        file.write_vectored_at(start % seg_bytes, &slices)?;
        // Read the run's first header back: a short or misplaced write must never be
        // acknowledged (one small read per append call).
        let mut back = [0u8; HEADER_LEN];
        file.read_at(start % seg_bytes, &mut back)?;
        assert!(
            back[..] == self.buf[..HEADER_LEN],
            "the record header at {start} reads back other than written"
        );
        self.buf.clear();
        Ok(())
    }

    /// Where the log ends after removing every record at or after `at` (a record boundary
    /// at or above the first retained position). `kept_end` is the end of the last record
    /// kept, when the caller knows it (the Raft index does).
    ///
    /// When `at` opens a segment, the previous segment was closed by a blank only because
    /// the removed record did not fit there; the blank goes too and the log ends at
    /// `kept_end`. Otherwise the next record would open the new segment where a replica that
    /// never held the removed records puts it in the previous one, and committed logs would
    /// differ in their positions (docs/architecture.md, invariant 1: committed CommitLogs are byte-identical).
    /// Only where the previous segment is not this replica's (the log starts at `at` after a
    /// snapshot install) does the log end at `at`.
    pub fn truncation_point(&self, at: Position, kept_end: Option<Position>) -> Result<ChainPoint> {
        let sh = &self.shared;
        let header = sh.read_header(at.0)?;
        if header.kind == RecordKind::BLANK {
            return Err(StoreError::InvalidArgument(format!(
                "cannot truncate at {at}: a blank fill"
            )));
        }
        let last_index = header.index.0.checked_sub(1).map(LogIndex);
        match kept_end {
            Some(end) if end < at => {
                let blank = sh.read_header(end.0)?;
                if blank.kind != RecordKind::BLANK || end.0 + u64::from(blank.len) != at.0 {
                    return Err(StoreError::corrupt(
                        segment_path(end.0 / sh.segment_bytes * sh.segment_bytes),
                        end.0,
                        format!("the last kept record ends here, but no blank reaches {at}"),
                    ));
                }
                Ok(ChainPoint {
                    position: end,
                    prev_crc: blank.prev_crc,
                    last_index,
                })
            }
            Some(end) if end > at => Err(StoreError::InvalidArgument(format!(
                "the last kept record ends at {end}, past the first removed one at {at}"
            ))),
            _ => Ok(ChainPoint {
                position: at,
                prev_crc: header.prev_crc,
                last_index,
            }),
        }
    }

    /// Removes every record from `point` on ([`truncation_point`](Self::truncation_point)
    /// says where); the chain continues from `point`.
    ///
    /// Durability order: the synced marker is lowered first, then the record (or blank) at
    /// `point` is overwritten with zeros and synced, so that neither a crash in between nor
    /// stale records after it can bring the removed entries back.
    pub fn truncate(&mut self, point: ChainPoint) -> Result<()> {
        let sh = self.shared.clone();
        let at = point.position.0;
        let written = sh.written.load(Ordering::Acquire);
        if at >= written {
            return Ok(());
        }
        assert!(
            at >= sh.first.load(Ordering::Acquire),
            "truncating at {at}, below the first retained position"
        );
        let mut fs = sh.flush_state();
        if fs.marker.value() > at {
            fs.marker.store(at)?;
        }
        sh.synced.fetch_min(at, Ordering::AcqRel);
        let seg = at / sh.segment_bytes;
        let file = sh.segment(seg).ok_or_else(|| {
            StoreError::corrupt(segment_path(seg * sh.segment_bytes), at, "segment vanished")
        })?;
        let in_seg = at % sh.segment_bytes;
        file.write_at(in_seg, &[0u8; HEADER_LEN])?;
        file.sync_range(in_seg, HEADER_LEN as u64)?;
        drop(fs);
        let extra: Vec<u64> = sh
            .segments_read()
            .range(seg + 1..)
            .map(|(k, _)| *k)
            .collect();
        for k in extra {
            sh.remove_segment(k)?;
        }
        sh.written.store(at, Ordering::Release);
        self.tail = point;
        Ok(())
    }

    /// Removes every segment and restarts the log, empty, at `point` (a snapshot install:
    /// the next record goes at `point.position`, a segment start, chained to
    /// `point.prev_crc`). The synced marker goes to `point.position` first, so that a crash
    /// part way never finds it above the (now missing) records.
    pub fn reset(&mut self, point: ChainPoint) -> Result<()> {
        let sh = self.shared.clone();
        if !point.position.0.is_multiple_of(sh.segment_bytes) {
            return Err(StoreError::InvalidArgument(format!(
                "reset to {} which is not a segment start",
                point.position
            )));
        }
        let mut fs = sh.flush_state();
        fs.marker.store(point.position.0)?;
        let all: Vec<u64> = sh.segments_read().keys().copied().collect();
        for k in all {
            sh.remove_segment(k)?;
        }
        // A ready spare stays: its stale records never chain to what is written over them.
        sh.first.store(point.position.0, Ordering::Release);
        sh.written.store(point.position.0, Ordering::Release);
        sh.synced.store(point.position.0, Ordering::Release);
        drop(fs);
        self.tail = point;
        Ok(())
    }

    /// Removes every CommitLog file (the segments, the spare and the synced marker) from
    /// `disk`: the first step of finishing an interrupted reset at open.
    pub fn wipe(disk: &dyn Disk) -> Result<()> {
        for name in disk.list(DIR)? {
            disk.remove(&format!("{DIR}/{name}"))?;
        }
        for f in [SPARE, SYNCED_MARKER] {
            if disk.exists(f) {
                disk.remove(f)?;
            }
        }
        Ok(())
    }

    /// Deletes every whole segment that ends at or before `before`. The segment holding
    /// `before` and everything after it are kept.
    pub fn purge_before(&mut self, before: Position) -> Result<u64> {
        let sh = &self.shared;
        let last_seg = self.tail.position.0 / sh.segment_bytes;
        let cut = (before.0 / sh.segment_bytes).min(last_seg);
        let doomed: Vec<u64> = sh.segments_read().range(..cut).map(|(k, _)| *k).collect();
        if let Some(&k) = doomed.last() {
            sh.first
                .store((k + 1) * sh.segment_bytes, Ordering::Release);
        }
        for &k in &doomed {
            if !sh.recycle_segment(k)? {
                sh.remove_segment(k)?;
            }
        }
        Ok(doomed.len() as u64)
    }
}

impl CommitLogReader {
    /// Syncs everything written up to `end` (a record boundary at or below
    /// [`written`](Self::written)), then raises the synced marker. One call covers every
    /// append before it: this is the group commit.
    pub fn sync_to(&self, end: Position) -> Result<()> {
        self.shared.sync_to(end.0, true)
    }

    /// Syncs everything written up to `end` without raising the synced marker: the data is
    /// durable (acknowledge it), and one data-only flush is paid instead of two. The marker
    /// then trails the synced end until [`sync_marker`](Self::sync_marker); recovery reports a
    /// bad record below the marker as corruption and cuts one at or above it, so while it
    /// trails, a record acknowledged in that gap that later rots on disk would be cut, not
    /// reported. Nothing acknowledged is lost by it: the data itself is durable.
    pub fn sync_data_to(&self, end: Position) -> Result<()> {
        self.shared.sync_to(end.0, false)
    }

    /// Raises the synced marker to the synced end (one small write and sync).
    pub fn sync_marker(&self) -> Result<()> {
        self.shared.sync_to(0, true)
    }

    /// The synced marker: recovery treats a bad record below it as corruption.
    pub fn synced_marker(&self) -> Position {
        Position(self.shared.flush_state().marker.value())
    }

    /// Reads and verifies the record at `position`.
    pub fn read(&self, position: Position) -> Result<Record> {
        let sh = &self.shared;
        let header = sh.read_header(position.0)?;
        if header.kind == RecordKind::BLANK {
            return Err(StoreError::InvalidArgument(format!(
                "position {position} is a blank fill"
            )));
        }
        let seg = position.0 / sh.segment_bytes;
        let file = sh.segment(seg).expect("read_header found this segment");
        let mut bytes = vec![0u8; header.len as usize];
        file.read_at(position.0 % sh.segment_bytes, &mut bytes)?;
        record::check_crc(&header, &bytes)
            .map_err(|why| StoreError::corrupt(file.path(), position.0, why.to_string()))?;
        bytes.drain(..HEADER_LEN);
        Ok(Record {
            position,
            header,
            payload: bytes,
        })
    }

    /// Reads `len` raw bytes at `position` (a message inside a record); they must lie below
    /// the written end, inside one segment.
    pub fn read_bytes(&self, position: Position, len: u32) -> Result<Vec<u8>> {
        let sh = &self.shared;
        sh.check_readable(position.0, u64::from(len))?;
        let file = sh
            .segment(position.0 / sh.segment_bytes)
            .ok_or(StoreError::OutOfRange {
                what: "position",
                value: position.0,
                first: sh.first.load(Ordering::Acquire),
                end: sh.written.load(Ordering::Acquire),
            })?;
        let mut bytes = vec![0u8; len as usize];
        file.read_at(position.0 % sh.segment_bytes, &mut bytes)?;
        Ok(bytes)
    }

    /// Reads the header of the record at `position` (verified only for a blank).
    pub fn read_header(&self, position: Position) -> Result<RecordHeader> {
        self.shared.read_header(position.0)
    }

    /// End of the last complete record written.
    pub fn written(&self) -> Position {
        Position(self.shared.written.load(Ordering::Acquire))
    }

    /// End of the synced prefix.
    pub fn synced(&self) -> Position {
        Position(self.shared.synced.load(Ordering::Acquire))
    }

    /// Start of the first retained segment.
    pub fn first(&self) -> Position {
        Position(self.shared.first.load(Ordering::Acquire))
    }

    /// Bytes per segment.
    pub fn segment_bytes(&self) -> u64 {
        self.shared.segment_bytes
    }

    /// Start positions of the retained segments, in order.
    pub fn segment_starts(&self) -> Vec<Position> {
        let sh = &self.shared;
        sh.segments_read()
            .keys()
            .map(|k| Position(k * sh.segment_bytes))
            .collect()
    }

    /// Reads and verifies every retained record from the first segment to the written end
    /// (magic, length, CRC, chain, consecutive indexes). Recovery verifies only what follows
    /// the checkpoint; this is the full check an operator (or a test) can ask for.
    pub fn verify(&self) -> Result<u64> {
        let sh = &self.shared;
        let first = sh.first.load(Ordering::Acquire);
        let written = sh.written.load(Ordering::Acquire);
        if first >= written {
            return Ok(0);
        }
        // The first retained record chains to a purged one: take its prev_crc as given.
        let header = sh.read_header(first)?;
        let from = ChainPoint {
            position: Position(first),
            prev_crc: header.prev_crc,
            last_index: None,
        };
        let (end, records, why) = sh.scan(from)?;
        if end.position.0 < written {
            let seg = end.position.0 / sh.segment_bytes * sh.segment_bytes;
            let reason = why.map_or_else(|| "unexpected end".to_string(), |w| w.to_string());
            return Err(StoreError::corrupt(
                segment_path(seg),
                end.position.0,
                reason,
            ));
        }
        Ok(records.len() as u64)
    }

    /// Whether a spare segment should be made now: none exists or is being made, and the
    /// writer is past half of its segment.
    pub fn wants_spare(&self) -> bool {
        let sh = &self.shared;
        let in_seg = sh.written.load(Ordering::Acquire) % sh.segment_bytes;
        in_seg >= sh.segment_bytes / 2
            && *sh
                .spare
                .lock()
                .expect("lock poisoned: a panic broke this state; see [profile.release]")
                == Spare::Absent
    }

    /// Makes the spare segment (zero-filled, durable) if there is none; the next roll renames
    /// it into place instead of creating a segment. Blocking I/O: run it off the append path.
    pub fn prepare_spare(&self) -> Result<bool> {
        let sh = &self.shared;
        {
            let mut spare = sh
                .spare
                .lock()
                .expect("lock poisoned: a panic broke this state; see [profile.release]");
            if *spare != Spare::Absent {
                return Ok(false);
            }
            *spare = Spare::Creating;
        }
        if sh.disk.exists(SPARE) {
            sh.disk.remove(SPARE)?;
        }
        let result = sh.disk.create_sequential(SPARE, sh.segment_bytes);
        let mut spare = sh
            .spare
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]");
        match result {
            Ok(_) => {
                *spare = Spare::Ready;
                Ok(true)
            }
            Err(e) => {
                *spare = Spare::Absent;
                Err(e.into())
            }
        }
    }

    /// The sync error that stopped the log, if any.
    pub fn failure(&self) -> Option<String> {
        self.shared.flush_state().failed.clone()
    }
}

impl Shared {
    fn segments_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<dyn DiskFile>>> {
        self.segments
            .read()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    fn flush_state(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.flush
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    fn segment(&self, k: u64) -> Option<Arc<dyn DiskFile>> {
        self.segments_read().get(&k).cloned()
    }

    fn ensure_segment(&self, k: u64) -> Result<()> {
        if self.segment(k).is_some() {
            return Ok(());
        }
        let path = segment_path(k * self.segment_bytes);
        let file = {
            let mut spare = self
                .spare
                .lock()
                .expect("lock poisoned: a panic broke this state; see [profile.release]");
            if *spare == Spare::Ready {
                *spare = Spare::Absent;
                self.disk.rename(SPARE, &path)?;
                self.disk.open(&path)?
            } else {
                drop(spare);
                self.disk.create_sequential(&path, self.segment_bytes)?
            }
        };
        self.segments
            .write()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
            .insert(k, file);
        Ok(())
    }

    /// Keeps a deleted segment as the spare when there is none: its blocks are already
    /// written, so reusing it spares the zero-filling of a new one (the way PostgreSQL recycles
    /// WAL segments). Its stale records can never join the log: they do not chain
    /// (`prev_crc`) to the records written over them. Returns whether it was recycled.
    fn recycle_segment(&self, k: u64) -> Result<bool> {
        let mut spare = self
            .spare
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]");
        if *spare != Spare::Absent {
            return Ok(false);
        }
        self.segments
            .write()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
            .remove(&k);
        self.disk
            .rename(&segment_path(k * self.segment_bytes), SPARE)?;
        *spare = Spare::Ready;
        Ok(true)
    }

    fn remove_segment(&self, k: u64) -> Result<()> {
        self.segments
            .write()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
            .remove(&k);
        self.disk.remove(&segment_path(k * self.segment_bytes))?;
        Ok(())
    }

    fn check_not_failed(&self) -> Result<()> {
        match &self.flush_state().failed {
            Some(e) => Err(StoreError::Closed(format!(
                "commitlog sync failed earlier: {e}"
            ))),
            None => Ok(()),
        }
    }

    fn check_readable(&self, position: u64, len: u64) -> Result<()> {
        let first = self.first.load(Ordering::Acquire);
        let end = self.written.load(Ordering::Acquire);
        if position < first || position.saturating_add(len) > end {
            return Err(StoreError::OutOfRange {
                what: "position",
                value: position,
                first,
                end,
            });
        }
        let seg_end = (position / self.segment_bytes + 1) * self.segment_bytes;
        if position + len > seg_end {
            return Err(StoreError::InvalidArgument(format!(
                "[{position}, +{len}) crosses a segment end"
            )));
        }
        Ok(())
    }

    fn read_header(&self, position: u64) -> Result<RecordHeader> {
        self.check_readable(position, HEADER_LEN as u64)?;
        let seg = position / self.segment_bytes;
        let file = self.segment(seg).ok_or_else(|| {
            StoreError::corrupt(
                segment_path(seg * self.segment_bytes),
                position,
                "segment missing",
            )
        })?;
        let mut b = [0u8; HEADER_LEN];
        file.read_at(position % self.segment_bytes, &mut b)?;
        let room = (seg + 1) * self.segment_bytes - position;
        let header = record::parse_header(&b, room)
            .map_err(|why| StoreError::corrupt(file.path(), position, why.to_string()))?;
        record::check_version(&b, file.path(), position)?;
        if header.kind == RecordKind::BLANK {
            record::check_crc(&header, &b)
                .map_err(|why| StoreError::corrupt(file.path(), position, why.to_string()))?;
        }
        Ok(header)
    }

    /// Syncs the data up to `end`; with `marker`, also raises the synced marker to it.
    fn sync_to(&self, end: u64, marker: bool) -> Result<()> {
        let mut fs = self.flush_state();
        if let Some(e) = &fs.failed {
            return Err(StoreError::Closed(format!(
                "commitlog sync failed earlier: {e}"
            )));
        }
        // Nothing below the first retained segment is left to sync (retention removed it).
        let from = self
            .synced
            .load(Ordering::Acquire)
            .max(self.first.load(Ordering::Acquire));
        let end = end.min(self.written.load(Ordering::Acquire));
        let mut result = Ok(());
        if end > from {
            result = self.sync_range(from, end);
            if result.is_ok() {
                self.synced.store(end, Ordering::Release);
            }
        }
        if marker && result.is_ok() {
            let synced = self.synced.load(Ordering::Acquire);
            if fs.marker.value() < synced {
                result = fs.marker.store(synced);
            }
        }
        if let Err(e) = &result {
            fs.failed = Some(e.to_string());
        }
        // Marker ordering (module docs): marker <= synced <= written. The flush state is
        // held, and a truncation lowers synced under it before it lowers written.
        let (synced, written) = (
            self.synced.load(Ordering::Acquire),
            self.written.load(Ordering::Acquire),
        );
        assert!(
            fs.marker.value() <= synced && synced <= written,
            "commitlog markers out of order: marker {} synced {synced} written {written}",
            fs.marker.value()
        );
        result
    }

    fn sync_range(&self, from: u64, end: u64) -> Result<()> {
        let mut pos = from;
        while pos < end {
            let seg = pos / self.segment_bytes;
            let seg_end = (seg + 1) * self.segment_bytes;
            let upto = end.min(seg_end);
            let file = self.segment(seg).ok_or_else(|| {
                StoreError::corrupt(
                    segment_path(seg * self.segment_bytes),
                    pos,
                    "segment missing during sync",
                )
            })?;
            file.sync_range(pos - seg * self.segment_bytes, upto - pos)?;
            pos = upto;
        }
        Ok(())
    }

    /// Past damage at `end` (below `limit`, the synced marker): follows the records' headers
    /// without trusting their crcs. A record's header is taken when its `prev_crc` continues
    /// the chain and its index the count (blanks carry none); its length only when the header
    /// it leads to continues the chain from it (its `prev_crc` is this record's stored crc,
    /// its index the next) — a length that a flipped bit changed lands on bytes that do not,
    /// but for a 2^-32 chance. Returns the start of the first record whose length is not
    /// vouched for (or `limit`) and the index of the last entry before it.
    fn follow_headers(&self, end: ChainPoint, limit: u64) -> (u64, Option<LogIndex>) {
        let header_at = |pos: u64| -> Option<RecordHeader> {
            let file = self.segment(pos / self.segment_bytes)?;
            let in_seg = pos % self.segment_bytes;
            let mut buf = [0u8; HEADER_LEN];
            file.read_at(in_seg, &mut buf).ok()?;
            if buf.iter().all(|&b| b == 0) {
                return None;
            }
            record::parse_header(&buf, self.segment_bytes - in_seg).ok()
        };
        let next_index = |i: Option<LogIndex>| i.map_or(0, |i| i.0 + 1);
        // Whether `h` continues the chain after crc `prev` and index `last`.
        let continues = |h: &RecordHeader, prev: u32, last: Option<LogIndex>| {
            h.prev_crc == prev && (h.kind == RecordKind::BLANK || h.index.0 == next_index(last))
        };
        let (mut pos, mut last, mut prev) = (end.position.0, end.last_index, end.prev_crc);
        while pos < limit {
            let Some(h) = header_at(pos) else { break };
            if !continues(&h, prev, last) {
                break;
            }
            let next = pos + u64::from(h.len);
            // A record ending at the marker is vouched for by the header after it too, if the
            // unsynced tail holds one.
            if h.len == 0 || next > limit {
                break;
            }
            let after = if h.kind == RecordKind::BLANK {
                last
            } else {
                Some(LogIndex(next_index(last)))
            };
            match header_at(next) {
                Some(h2) if continues(&h2, h.crc, after) => {}
                _ => break,
            }
            (pos, last, prev) = (next, after, h.crc);
        }
        (pos.min(limit), last)
    }

    /// Follows the chain from `from` to the first record that does not verify (or a
    /// missing segment). Returns the chain point at the end, the records found, and why the
    /// scan stopped (`None` for a clean end: zeros or a missing next segment).
    fn scan(&self, from: ChainPoint) -> Result<(ChainPoint, Vec<ScannedRecord>, Option<Invalid>)> {
        let mut at = from;
        let mut out = Vec::new();
        let mut header_buf = [0u8; HEADER_LEN];
        let mut body = Vec::new();
        loop {
            let p = at.position.0;
            let seg = p / self.segment_bytes;
            let Some(file) = self.segment(seg) else {
                return Ok((at, out, None));
            };
            let in_seg = p % self.segment_bytes;
            let room = self.segment_bytes - in_seg;
            file.read_at(in_seg, &mut header_buf)?;
            if header_buf.iter().all(|&b| b == 0) {
                return Ok((at, out, None));
            }
            let h = match record::parse_header(&header_buf, room) {
                Ok(h) => h,
                Err(why) => return Ok((at, out, Some(why))),
            };
            if h.prev_crc != at.prev_crc {
                return Ok((
                    at,
                    out,
                    Some(Invalid::Chain {
                        prev_crc: h.prev_crc,
                        expected: at.prev_crc,
                    }),
                ));
            }
            if h.kind == RecordKind::BLANK {
                if let Err(why) = record::check_crc(&h, &header_buf) {
                    return Ok((at, out, Some(why)));
                }
                record::check_version(&header_buf, file.path(), p)?;
                at.position = Position(p + u64::from(h.len));
                at.prev_crc = h.crc;
                continue;
            }
            body.resize(h.len as usize, 0);
            file.read_at(in_seg, &mut body)?;
            if let Err(why) = record::check_crc(&h, &body) {
                return Ok((at, out, Some(why)));
            }
            record::check_version(&header_buf, file.path(), p)?;
            if at.last_index.is_some_and(|i| i.0 + 1 != h.index.0) {
                return Err(StoreError::corrupt(
                    file.path(),
                    p,
                    format!(
                        "entry index {} does not follow {:?}",
                        h.index, at.last_index
                    ),
                ));
            }
            out.push(ScannedRecord {
                position: at.position,
                header: h,
            });
            at = ChainPoint {
                position: Position(p + u64::from(h.len)),
                prev_crc: h.crc,
                last_index: Some(h.index),
            };
        }
    }
}

fn parse_segment_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests;
