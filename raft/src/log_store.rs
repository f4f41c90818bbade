//! openraft's log storage over the store: the CommitLog **is** the Raft log.
//!
//! [`ReplicaStore`] is one replica's [`Store`] shared by the three users openraft demands as
//! separate objects (log storage, log readers, state machine). It sits behind a
//! `std::sync::Mutex` because every store call is short and synchronous (writes go to the
//! page cache or `SimDisk`; syncs happen in the flusher task, outside the lock) and nothing
//! awaits while holding it. Clients' reads (pulls, lookups, queries) do not take it: they
//! use the store's [`ReadView`], which publishes only applied, complete data.
//!
//! # Durability contract (what openraft relies on)
//! - `append` writes the records, then signals [`IOFlushed`] only once the flusher reports
//!   them synced, in [`FlushMode::Sync`]. In [`FlushMode::Async`] it signals after the write
//!   (RocketMQ's `ASYNC_FLUSH`: a power loss of a majority can lose acknowledged entries; the
//!   operator chose that).
//! - `save_vote` commits the vote durably (a redb `Immediate` commit) before it returns.
//! - The last purged log id is stored with the purge, so `get_log_state` can name it after the
//!   Raft index forgot the entry.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use raftmq_store::flush::FlushHandle;
use raftmq_store::{FlushMode, LogIndex, Position, ReadView, Store, StoreError};

use crate::keys;
use crate::mutations::Mutations;
use crate::types::{
    EncodedEntry, Entry, LogId, TypeConfig, Vote, decode_value, encode_value, log_id,
};

/// One replica's store, shared; see the module docs.
#[derive(Debug, Clone)]
pub struct ReplicaStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Mutex<Store>,
    /// Read handles that never take `store`'s lock (pulls, lookups, queries).
    view: ReadView,
    flusher: FlushHandle,
    mode: FlushMode,
    mutations: Mutations,
    /// The boundary snapshot retention wants next (its last index; 0 = none asked).
    snapshot_target: AtomicU64,
    /// One past the highest committed index openraft reported (0: none yet). Kept in memory
    /// only, to check `committed <= last` and that it never goes back ([`check_committed`]).
    committed_end: AtomicU64,
    /// Woken (all waiters) after every apply: long-polling pulls wait on it.
    applied: tokio::sync::Notify,
}

pub(crate) fn io_err(e: StoreError) -> io::Error {
    io::Error::other(e)
}

impl ReplicaStore {
    /// The deliberate bugs switched on (none outside the simulator).
    pub fn mutations(&self) -> Mutations {
        self.inner.mutations
    }

    /// Wraps an opened store and starts its flusher (must run inside a runtime).
    pub fn new(store: Store, mutations: Mutations) -> Self {
        let cfg = store.config().clone();
        let flusher = FlushHandle::spawn(store.reader(), cfg.flush_mode, cfg.flush_interval_ms);
        ReplicaStore {
            inner: Arc::new(Inner {
                view: store.view(),
                store: Mutex::new(store),
                flusher,
                mode: cfg.flush_mode,
                mutations,
                snapshot_target: AtomicU64::new(0),
                committed_end: AtomicU64::new(0),
                applied: tokio::sync::Notify::new(),
            }),
        }
    }

    /// What readers use instead of [`lock`](Self::lock): the store's published CommitLog,
    /// ConsumeQueues, IndexFile and MetaStore (see [`ReadView`]). A pull scanning thousands
    /// of entries through it never delays an append, an apply or a vote.
    pub fn view(&self) -> &ReadView {
        &self.inner.view
    }

    /// Locks the store for a short synchronous operation (never hold it across an await).
    /// This is the appender's lock (Raft's log storage and the state machine); readers use
    /// [`view`](Self::view).
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // Never poisoned in a release build (panic = "abort": see the workspace Cargo.toml).
        self.inner
            .store
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    /// Asks the snapshot builder for the boundary snapshot ending at `last` (retention is
    /// about to purge up to it), so that a replica installing it receives every entry the
    /// others retain.
    pub fn set_snapshot_target(&self, last: u64) {
        self.inner.snapshot_target.store(last, Ordering::Release);
    }

    /// The last index of the boundary snapshot retention asked for (0: none).
    pub fn snapshot_target(&self) -> u64 {
        self.inner.snapshot_target.load(Ordering::Acquire)
    }

    /// Notified (every waiter) each time entries are applied or a snapshot installed: a
    /// reader waiting for new messages registers `applied_signal().notified()` *before*
    /// looking, then waits on it.
    pub fn applied_signal(&self) -> &tokio::sync::Notify {
        &self.inner.applied
    }

    /// The group-commit flusher.
    pub fn flusher(&self) -> &FlushHandle {
        &self.inner.flusher
    }

    /// Stops the flusher (after a last sync).
    pub fn stop(&self) {
        self.inner.flusher.stop();
    }

    fn read_value<T: for<'de> serde::Deserialize<'de>>(&self, key: &str) -> io::Result<Option<T>> {
        let raw = self.lock().meta().raft(key).map_err(io_err)?;
        raw.map(|b| decode_value(&b, key)).transpose()
    }

    fn write_value<T: serde::Serialize>(&self, key: &str, v: &T, durable: bool) -> io::Result<()> {
        let store = self.lock();
        let mut txn = store.meta().begin(durable).map_err(io_err)?;
        txn.put_raft(key, &encode_value(v)).map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    /// Entries `[start, end)` decoded.
    fn entries(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let store = self.lock();
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(4096) as usize);
        for i in start..end {
            let rec = store.read_entry(LogIndex(i)).map_err(io_err)?;
            let enc = EncodedEntry {
                term: rec.header.term,
                index: rec.header.index.0,
                kind: rec.header.kind,
                timestamp_ms: rec.header.timestamp_ms,
                payload: rec.payload,
            };
            out.push(enc.decode()?);
        }
        Ok(out)
    }

    fn last_log_id(&self) -> io::Result<Option<LogId>> {
        let (_, last) = self.lock().log_bounds().map_err(io_err)?;
        Ok(last.map(|(i, t)| log_id(t, i.0)))
    }
}

/// openraft's log storage handle.
#[derive(Debug, Clone)]
pub struct LogStore {
    rs: ReplicaStore,
}

impl LogStore {
    pub fn new(rs: ReplicaStore) -> Self {
        LogStore { rs }
    }
}

/// A log reader (replication tasks hold one each).
pub type LogReader = LogStore;

fn range_to_bounds(range: &impl RangeBounds<u64>, first: u64, end: u64) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => first,
    };
    let stop = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => end,
    };
    (start.max(first), stop.min(end))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (first, last) = self.rs.lock().log_bounds().map_err(io_err)?;
        let end = last.map_or(first.0, |(l, _)| l.0 + 1);
        let (start, stop) = range_to_bounds(&range, first.0, end);
        if start >= stop {
            return Ok(Vec::new());
        }
        self.rs.entries(start, stop)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.rs.read_value(keys::VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogId> = self.rs.read_value(keys::PURGED)?;
        let last = self.rs.last_log_id()?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Not persisted (openraft then recovers the committed index from a quorum, as before);
    /// used to assert that the committed index never passes the end of the local log and
    /// never goes back.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let Some(c) = committed else {
            return Ok(());
        };
        let (last, purged) = {
            let store = self.rs.lock();
            let (_, last) = store.log_bounds().map_err(io_err)?;
            (last.map(|(i, _)| i.0), store.purged().map(|p| p.0))
        };
        let prev = self
            .rs
            .inner
            .committed_end
            .fetch_max(c.index + 1, Ordering::AcqRel);
        check_committed(c.index, prev, last.max(purged));
        Ok(())
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        if self.rs.inner.mutations.skip_vote() {
            return Ok(());
        }
        self.rs.write_value(keys::VOTE, vote, true)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let encoded: Vec<EncodedEntry> = entries
            .into_iter()
            .map(|e| EncodedEntry::encode(&e))
            .collect();
        if encoded.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let refs: Vec<_> = encoded.iter().map(EncodedEntry::as_ref).collect();
        let end = {
            let mut store = self.rs.lock();
            let locs = store.append(&refs).map_err(io_err)?;
            let last = locs
                .last()
                .expect("one location per entry, and entries is not empty");
            Position(last.position.0 + u64::from(last.len))
        };
        if self.rs.inner.mode == FlushMode::Async || self.rs.inner.mutations.ack_before_sync() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let flusher = self.rs.inner.flusher.clone();
        tokio::spawn(async move {
            let r = flusher.wait_durable(end).await.map_err(io_err);
            callback.io_completed(r);
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep = last_log_id.map(|l| LogIndex(l.index));
        self.rs.lock().truncate_after(keep).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purged id first: if we crash in between, the index still holds the
        // entries and a second purge is a no-op. Boundary snapshots before the purge point
        // can never be used again (the log they continue from is gone): drop them.
        let mut store = self.rs.lock();
        let stale = store
            .meta()
            .raft_keys(keys::BOUNDARY_PREFIX)
            .map_err(io_err)?;
        let keep_from = crate::keys::boundary_key(log_id.index);
        let mut txn = store.meta().begin(true).map_err(io_err)?;
        txn.put_raft(keys::PURGED, &encode_value(&log_id))
            .map_err(io_err)?;
        for k in stale.iter().filter(|k| **k < keep_from) {
            txn.delete_raft(k).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        store.purge_upto(LogIndex(log_id.index)).map_err(io_err)
    }
}

/// `committed <= last` (an index is committed only once this replica holds it) and the
/// committed index never goes back (`prev_end` is one past the previous one). A failure is
/// a broken Raft invariant: crash rather than apply or serve a log that disagrees.
fn check_committed(committed: u64, prev_end: u64, last: Option<u64>) {
    assert!(
        last.is_some_and(|l| committed <= l),
        "committed index {committed} is past the local log's end {last:?}"
    );
    assert!(
        committed + 1 >= prev_end,
        "committed index went back from {} to {committed}",
        prev_end - 1
    );
}

#[cfg(test)]
mod tests {
    use super::check_committed;

    #[test]
    fn committed_within_the_log_and_forward_only() {
        check_committed(5, 0, Some(5));
        check_committed(5, 6, Some(9));
        assert!(std::panic::catch_unwind(|| check_committed(6, 0, Some(5))).is_err());
        assert!(std::panic::catch_unwind(|| check_committed(4, 6, Some(9))).is_err());
        assert!(std::panic::catch_unwind(|| check_committed(0, 0, None)).is_err());
    }
}
