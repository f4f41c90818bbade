//! The flusher: group commit in `Sync` mode, periodic sync in `Async` mode.
//!
//! One task owns the syncing. In `Sync` mode an appender calls
//! [`FlushHandle::wait_durable`] with the end of what it appended; the flusher wakes, syncs
//! everything written so far in one go (every append that arrived while the previous sync
//! ran rides on the next one), and answers every waiter whose end is now covered. The synced
//! marker (what recovery trusts to tell corruption from a torn tail) is raised by a second,
//! separate flush; to keep that flush off the acknowledgement path it is done at most every
//! [`MARKER_LAG_MS`] under load and at once when the flusher goes idle. In `Async` mode `wait_durable` answers at once and the flusher syncs every
//! `flush_interval_ms`.
//!
//! After a failed sync the flusher stops and every waiter, now and later, gets the error:
//! after a failed fsync the kernel may have dropped the dirty pages, so a retry could
//! acknowledge data that is not on disk.
//!
//! The task uses the workspace `tokio` (madsim under `--cfg madsim`). Each sync runs on the
//! blocking pool in production, so an fsync never stalls an async worker, and inline under
//! madsim, where no OS thread may start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::commitlog::CommitLogReader;
use crate::config::FlushMode;
use crate::error::{Result, StoreError};
use crate::types::Position;

/// How long, at most, the synced marker trails the acknowledged end under load (it catches
/// up as soon as the flusher is idle this long).
pub const MARKER_LAG_MS: u64 = 10;

/// A sync that takes this long is logged (a warning): the disk is the bottleneck then.
pub const SLOW_SYNC: Duration = Duration::from_millis(100);

/// Most waiters at once; past it `wait_durable` fails fast instead of queueing without bound.
pub const WAITERS_MAX: usize = 1 << 16;

/// Handle to the flusher task; cheap to clone.
#[derive(Debug, Clone)]
pub struct FlushHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    reader: CommitLogReader,
    mode: FlushMode,
    interval: Duration,
    /// How long the synced marker may trail the acknowledged end while appends keep coming.
    marker_lag: Duration,
    notify: Notify,
    /// Waiters by (end position, arrival number). A lock because appenders add and the
    /// flusher drains; held only to edit the map (no I/O, no await).
    state: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    by_end: BTreeMap<(u64, u64), oneshot::Sender<Result<(), String>>>,
    next_seq: u64,
    failed: Option<String>,
    stopped: bool,
}

impl FlushHandle {
    /// Starts the flusher task on the current runtime.
    pub fn spawn(reader: CommitLogReader, mode: FlushMode, flush_interval_ms: u64) -> Self {
        let inner = Arc::new(Inner {
            reader,
            mode,
            interval: Duration::from_millis(flush_interval_ms.max(1)),
            marker_lag: Duration::from_millis(MARKER_LAG_MS),
            notify: Notify::new(),
            state: Mutex::new(Waiters::default()),
        });
        let task = inner.clone();
        tokio::spawn(async move { task.run().await });
        Self { inner }
    }

    /// Resolves once everything up to `end` is durable (`Sync` mode), or at once (`Async`).
    pub async fn wait_durable(&self, end: Position) -> Result<()> {
        if self.inner.mode == FlushMode::Async || self.inner.reader.synced() >= end {
            return self.inner.check_failed();
        }
        let rx = {
            let mut st = self.inner.lock();
            if let Some(e) = &st.failed {
                return Err(StoreError::Closed(format!("flush failed: {e}")));
            }
            if st.stopped {
                return Err(StoreError::Closed("flusher stopped".into()));
            }
            if st.by_end.len() >= WAITERS_MAX {
                return Err(StoreError::Closed(format!(
                    "more than {WAITERS_MAX} appends wait for a sync"
                )));
            }
            let (tx, rx) = oneshot::channel();
            let seq = st.next_seq;
            st.next_seq += 1;
            st.by_end.insert((end.0, seq), tx);
            rx
        };
        self.inner.notify.notify_one();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Closed(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Closed("flusher stopped".into())),
        }
    }

    /// Stops the flusher after one last sync; waiters not covered by it get an error.
    pub fn stop(&self) {
        self.inner.lock().stopped = true;
        self.inner.notify.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.state
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    fn check_failed(&self) -> Result<()> {
        match &self.lock().failed {
            Some(e) => Err(StoreError::Closed(format!("flush failed: {e}"))),
            None => Ok(()),
        }
    }

    async fn run(self: Arc<Self>) {
        let mut marker_at = tokio::time::Instant::now();
        loop {
            let marker_lags = self.reader.synced_marker() < self.reader.synced();
            match self.mode {
                FlushMode::Sync => {
                    tokio::select! {
                        biased;
                        _ = self.notify.notified() => {}
                        // Idle with the marker behind: bring it up to date now.
                        _ = tokio::time::sleep(self.marker_lag), if marker_lags => {
                            if self.marker_round().await {
                                return;
                            }
                            marker_at = tokio::time::Instant::now();
                            continue;
                        }
                    }
                }
                FlushMode::Async => {
                    tokio::select! {
                        biased;
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep(self.interval) => {}
                    }
                }
            }
            let stopping = self.lock().stopped;
            let target = self.reader.written();
            // Sync mode acknowledges after the data flush alone; the marker follows at most
            // `marker_lag` later (see `CommitLogReader::sync_data_to`). Async mode and the
            // last round before stopping sync both.
            let data_only = self.mode == FlushMode::Sync && !stopping;
            let reader = self.reader.clone();
            let started = tokio::time::Instant::now();
            let result = off_runtime(move || {
                if data_only {
                    reader.sync_data_to(target)
                } else {
                    reader.sync_to(target)
                }
            })
            .await;
            let took = started.elapsed();
            if took >= SLOW_SYNC {
                tracing::warn!(
                    ms = took.as_millis() as u64,
                    "slow commitlog sync: every acknowledgement waited this long"
                );
            }
            let mut done = self.answer(result.map_err(|e| e.to_string()));
            if !done && self.mode == FlushMode::Sync && marker_at.elapsed() >= self.marker_lag {
                done = self.marker_round().await;
                marker_at = tokio::time::Instant::now();
            }
            if !done && self.reader.wants_spare() {
                prepare_spare(self.reader.clone());
            }
            if done || stopping {
                let mut st = self.lock();
                st.stopped = true;
                for (_, tx) in std::mem::take(&mut st.by_end) {
                    let _ = tx.send(Err("flusher stopped".into()));
                }
                return;
            }
        }
    }

    /// Raises the synced marker; returns true if the flusher must stop (the sync failed).
    async fn marker_round(&self) -> bool {
        let reader = self.reader.clone();
        match off_runtime(move || reader.sync_marker()).await {
            Ok(()) => false,
            Err(e) => self.answer(Err(e.to_string())),
        }
    }

    /// Answers the waiters the last sync covered; returns true if the flusher must stop.
    fn answer(&self, result: Result<(), String>) -> bool {
        let synced = self.reader.synced().0;
        let mut st = self.lock();
        match result {
            Ok(()) => {
                let rest = st.by_end.split_off(&(synced + 1, 0));
                for (_, tx) in std::mem::replace(&mut st.by_end, rest) {
                    let _ = tx.send(Ok(()));
                }
                // Waiters past the synced end (a truncation lowered it, or they arrived
                // after the sync started) need another round.
                if !st.by_end.is_empty() {
                    self.notify.notify_one();
                }
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "commitlog sync failed; the store stops acknowledging writes");
                for (_, tx) in std::mem::take(&mut st.by_end) {
                    let _ = tx.send(Err(e.clone()));
                }
                st.failed = Some(e);
                true
            }
        }
    }
}

/// Runs a sync where it does not stall the async workers: on a blocking-pool thread in
/// production (an fsync can take tens of milliseconds, during which a worker would serve no
/// timer, heartbeat or RPC); inline under madsim, where threads are forbidden and `SimDisk`
/// is instant.
async fn off_runtime(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    #[cfg(not(madsim))]
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Closed("runtime shutting down".into())),
    }
    #[cfg(madsim)]
    f()
}

/// Makes the next CommitLog segment ahead of time, off the flusher: on a blocking-pool thread
/// in production; inline under madsim, where threads are forbidden and `SimDisk` is instant.
fn prepare_spare(reader: CommitLogReader) {
    let work = move || {
        if let Err(e) = reader.prepare_spare() {
            tracing::warn!(error = %e, "could not prepare the next commitlog segment; the roll will create it");
        }
    };
    #[cfg(not(madsim))]
    drop(tokio::task::spawn_blocking(move || {
        // Zero-filling a segment is bulk I/O that nobody waits for: let the device serve the
        // flusher's syncs first (honoured by I/O schedulers with priorities, e.g. mq-deadline).
        set_io_priority_idle(true);
        work();
        set_io_priority_idle(false);
    }));
    #[cfg(madsim)]
    work();
}

/// Puts the calling thread in the idle I/O class (or back to the default). Best effort.
#[cfg(not(madsim))]
fn set_io_priority_idle(idle: bool) {
    #[cfg(target_os = "linux")]
    {
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        let prio = if idle {
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT
        } else {
            0
        };
        // SAFETY: ioprio_set(who = this thread, prio) takes no pointers.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0 as libc::c_long,
                prio,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = idle;
}
