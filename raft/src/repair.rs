//! Repair of a replica whose CommitLog is damaged below its synced marker (bit rot, a cut
//! file): the store refuses to open it (`StoreError::Corrupt`), and this is what happens next.
//!
//! The damaged suffix cannot be served, and it cannot be trusted for elections: the replica
//! may have acknowledged entries that are now unreadable, and the leader may have counted
//! those acknowledgements to commit them. So:
//!
//! 1. [`plan`] reads, from the damaged store, the replica's vote (it must survive: forgetting
//!    a vote could let the replica vote twice in one term) and an upper bound of the index of
//!    the last entry it had synced — so of every entry it can have acknowledged
//!    ([`raftmq_store::commitlog::Damage::synced_index_bound`]).
//! 2. The caller moves the damaged data aside (kept for inspection, never read again) and
//!    calls [`prepare`] on an empty directory: a new store holding only the vote and
//!    [`keys::REPAIR_UNTIL`] = that bound.
//! 3. The replica starts with an empty log. Its vote is not the initial one, so it never
//!    forms a group; it has no membership until the leader sends one, so it is no candidate.
//!    The leader finds its log empty and re-sends everything (or installs a snapshot).
//!    While its log is below the bound the replica **refuses every vote request** and
//!    **never campaigns** (elections switched off): an election that counted it could pick a
//!    leader missing an entry committed with its lost acknowledgement. Once its log reaches
//!    the bound it holds every entry it ever acknowledged again: the key is removed and it
//!    takes part in elections as before ([`finish`]).
//!
//! The whole log is re-sent, not just the damaged suffix: simple, and the only way to also
//! rebuild the state derived from the dropped entries (queues, offsets, transactions). The
//! bound assumes sync flush (acknowledged ⇒ synced); with async flush an acknowledged entry
//! may be past it, which async flush never promised to keep.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use raftmq_store::{Disk, Store, StoreConfig, StoreError};

use crate::keys;
use crate::types::{decode_value, encode_value};

/// What [`plan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The persisted vote, as stored (absent: the replica never voted).
    pub vote: Option<Vec<u8>>,
    /// The log must reach this index before the replica votes again.
    pub repair_until: u64,
    /// What is damaged, for the log.
    pub damage: String,
}

/// `Some` if the store on `disk` is damaged below its synced marker and can be repaired
/// from the group; `None` if it is not damaged (its open failed for another reason).
pub fn plan(disk: Arc<dyn Disk>, config: &StoreConfig) -> Result<Option<Plan>, StoreError> {
    let Some(d) = Store::find_damage(disk.clone(), config)? else {
        return Ok(None);
    };
    let meta = raftmq_store::meta::MetaStore::open(disk.as_ref())?;
    let vote = meta.raft(keys::VOTE)?;
    // A repair interrupted before the log was refilled: keep the larger bound.
    let earlier: u64 = match meta.raft(keys::REPAIR_UNTIL)? {
        Some(b) => decode_value(&b, keys::REPAIR_UNTIL).map_err(|e| StoreError::Corrupt {
            file: raftmq_store::meta::FILE.into(),
            position: 0,
            reason: format!("repair_until: {e}"),
        })?,
        None => 0,
    };
    Ok(Some(Plan {
        vote,
        repair_until: d.synced_index_bound().max(earlier),
        damage: format!(
            "{} at byte {} (last good entry {:?}; synced up to byte {})",
            d.why, d.good_end.position.0, d.good_end.last_index, d.synced
        ),
    }))
}

/// Makes a new, empty store on `disk` (an empty directory) that holds `plan`'s vote and
/// repair bound.
pub fn prepare(disk: Arc<dyn Disk>, config: &StoreConfig, plan: &Plan) -> Result<(), StoreError> {
    let store = Store::open(disk, config.clone())?;
    let mut txn = store.meta().begin(true)?;
    if let Some(v) = &plan.vote {
        txn.put_raft(keys::VOTE, v)?;
    }
    txn.put_raft(keys::REPAIR_UNTIL, &encode_value(&plan.repair_until))?;
    txn.commit()
}

/// The repair state a running replica shares with its Raft service: the index its log must
/// reach before it votes again (0: not repairing).
#[derive(Debug, Clone, Default)]
pub struct Repairing(Arc<AtomicU64>);

impl Repairing {
    pub fn until(&self) -> Option<u64> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    pub(crate) fn set(&self, until: u64) {
        self.0.store(until.max(1), Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Reads the repair bound a replica starts with.
pub(crate) fn read_until(rs: &crate::log_store::ReplicaStore) -> std::io::Result<Option<u64>> {
    let raw = rs
        .lock()
        .meta()
        .raft(keys::REPAIR_UNTIL)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    raw.map(|b| decode_value(&b, keys::REPAIR_UNTIL))
        .transpose()
}

/// Waits until the log reaches the bound, then ends the repair: the key removed durably,
/// votes and elections back on.
pub(crate) async fn finish(
    raft: crate::Raft,
    rs: crate::log_store::ReplicaStore,
    repairing: Repairing,
    until: u64,
) {
    let mut metrics = raft.metrics();
    loop {
        let last = openraft::async_runtime::WatchReceiver::borrow_watched(&metrics)
            .last_log_index
            .unwrap_or(0);
        if last >= until {
            break;
        }
        if openraft::async_runtime::WatchReceiver::changed(&mut metrics)
            .await
            .is_err()
        {
            return;
        }
    }
    let done = (|| -> Result<(), StoreError> {
        let store = rs.lock();
        let mut txn = store.meta().begin(true)?;
        txn.delete_raft(keys::REPAIR_UNTIL)?;
        txn.commit()
    })();
    match done {
        Ok(()) => {
            repairing.clear();
            raft.runtime_config().elect(true);
            tracing::warn!(
                until,
                "repair done: the log holds every entry this replica acknowledged; it votes again"
            );
        }
        Err(e) => tracing::error!(error = %e, "repair: could not record the end of the repair"),
    }
}
