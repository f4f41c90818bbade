//! The state machine: applies committed entries to the ConsumeQueues, the IndexFile and the
//! MetaStore.
//!
//! - A `Messages` entry is dispatched by the store: every message gets the next offset of its
//!   queue, in log order, and ConsumeQueue/IndexFile entries pointing back at its CommitLog
//!   position. Every replica assigns the same offsets because it applies the same log.
//! - A metadata command changes the MetaStore; a membership entry is recorded.
//! - All MetaStore effects of one `apply` call, and the applied log id, commit in one redb
//!   transaction, so the metadata state always matches the applied id exactly.
//! - Idempotent per log id: an entry at or below the applied id is skipped. After a crash the
//!   store re-dispatches `(checkpoint, applied]` itself (see `raftmq_store::store`) and openraft
//!   re-applies what follows, so nothing is applied twice and nothing is skipped.
//!
//! # Snapshots are taken at segment boundaries
//! A snapshot is the small metadata state (topics, consumer offsets, queue offset counters,
//! membership) at a log id, plus the CommitLog chain point after that entry. It is taken
//! only where the log can be cut: just before an entry that opens a CommitLog segment.
//! When apply reaches such an entry (index `F`, segment start `S`) it first saves the state
//! after `F - 1` as a *boundary snapshot* (MetaStore key `boundary/<F-1>`), in the same
//! transaction as the entries applied after it, so a crash never loses one that the applied
//! id has passed. Every replica records the same boundaries (same log, same positions).
//!
//! Retention (see [`crate::replica::Replica::run_retention`]) deletes the segments before
//! `S` only after openraft holds a snapshot at or past `F - 1` (the builder returns the
//! boundary snapshot at `F - 1`, never the applied state) and has purged its log up to
//! `F - 1`.
//! A replica that then needs entries before `F` receives the snapshot and, unless its own
//! log holds the snapshot's last entry, restarts its store at `S` with the same chain
//! ([`raftmq_store::Store::reset_to`]); every entry from `F` on then lands at the position it
//! has on the leader, byte for byte.

use std::collections::BTreeMap;
use std::io;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftTypeConfig};
use raftmq_store::commitlog::ChainPoint;
use raftmq_store::consumequeue::QueueId;
use raftmq_store::groups::GroupConfig;
use raftmq_store::meta::{MetaStore, MetaTxn, TopicConfig, TopicMessageType};
use raftmq_store::pop::{Inflight, PopQueue};
use raftmq_store::store::ResetPoint;
use raftmq_store::timer::TimerKey;
use raftmq_store::txn::TxnRecord;
use raftmq_store::{LogIndex, Position, QueueOffset, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::keys::{self, boundary_key};
use crate::log_store::{ReplicaStore, io_err};
use crate::pop_apply::apply_pop_command;
use crate::timer_apply::{apply_timer_command, record_timers, rekey_skipped};
use crate::txn_apply::{ApplyGate, apply_txn_command, record_halves};
use crate::types::{
    AssignedOffset, Command, CommandResult, LogId, MetaCommand, PopOutcome, SnapshotMeta,
    StoredMembership, TimerOutcome, TxnOutcome, TypeConfig, decode_value, encode_value,
};

/// Checkpoint the store after this many applied entries (bounds recovery's replay).
const CHECKPOINT_EVERY_ENTRIES: u64 = 4096;

/// The applied state of one replica; see the module docs.
#[derive(Debug)]
pub struct StateMachine {
    rs: ReplicaStore,
    applied: Option<LogId>,
    membership: StoredMembership,
    since_checkpoint: u64,
}

/// The snapshot's content (JSON with a version byte in the MetaStore and on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub last_log_id: Option<LogId>,
    pub membership: StoredMembership,
    pub topics: Vec<(String, u32, u32, u32)>,
    /// The message types of the topics that have one (`Mixed` ones are left out).
    #[serde(default)]
    pub topic_types: Vec<(String, TopicMessageType)>,
    pub consumer_offsets: Vec<(String, String, u32, QueueOffset)>,
    /// (topic, queue id, next offset).
    pub queue_ends: Vec<(String, u32, u64)>,
    /// The undecided transactions, each record encoded as in `raftmq_store::txn`, in hex.
    /// Decided ones are left out: they change nothing apply does (a late decision is refused
    /// whether its record is decided or gone), and they would make every snapshot grow with
    /// the transaction rate.
    #[serde(default)]
    pub transactions: Vec<String>,
    /// The timer cursor (`due:position`, see `raftmq_store::timer`), if anything was delivered.
    /// Pending timers are not carried: every timer pending at a boundary snapshot has its
    /// message before the boundary, and retention cuts there only once none of them is still
    /// pending on the leader, so an installing replica never needs them (docs/timers.md).
    #[serde(default)]
    pub timer_cursor: Option<String>,
    /// Recalled keys past the cursor (`due:position`).
    #[serde(default)]
    pub timers_recalled: Vec<String>,
    /// Consumer group configurations: (name, record encoded as in `raftmq_store::groups`, in
    /// hex).
    #[serde(default)]
    pub groups: Vec<(String, String)>,
    /// POP cursors: (group, topic, queue id, next offset).
    #[serde(default)]
    pub pop_cursors: Vec<(String, String, u32, u64)>,
    /// POP in-flight messages: (group, topic, queue id, offset, visible at ms, epoch,
    /// attempts).
    #[serde(default)]
    pub pop_inflight: Vec<(String, String, u32, u64, u64, u64, u32)>,
    /// Where the CommitLog continues after `last_log_id`, for a snapshot taken at a segment
    /// boundary (absent in a snapshot of the applied state).
    #[serde(default)]
    pub boundary: Option<Boundary>,
}

/// The CommitLog chain point just after a boundary snapshot's last entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boundary {
    /// The segment start.
    pub position: u64,
    /// The crc of the record before it.
    pub prev_crc: u32,
}

/// The newest boundary snapshot ending at or before `upto`, raw, if any.
pub(crate) fn boundary_upto(meta: &MetaStore, upto: u64) -> io::Result<Option<Vec<u8>>> {
    let limit = boundary_key(upto);
    let keys = meta.raft_keys(keys::BOUNDARY_PREFIX).map_err(io_err)?;
    match keys.into_iter().rev().find(|k| *k <= limit) {
        Some(k) => meta.raft(&k).map_err(io_err),
        None => Ok(None),
    }
}

/// The metadata state of `store` (its MetaStore as committed, its queue ends) labelled
/// with `applied` and `membership`.
fn state_of(
    store: &Store,
    applied: Option<LogId>,
    membership: &StoredMembership,
    boundary: Option<Boundary>,
) -> io::Result<SnapshotState> {
    let meta = store.meta();
    let pop = meta.pop_state().map_err(io_err)?;
    let topics = meta.topics().map_err(io_err)?;
    Ok(SnapshotState {
        last_log_id: applied,
        membership: membership.clone(),
        topic_types: topics
            .iter()
            .filter(|t| t.message_type != TopicMessageType::Mixed)
            .map(|t| (t.name.clone(), t.message_type))
            .collect(),
        topics: topics
            .into_iter()
            .map(|t| (t.name, t.read_queue_nums, t.write_queue_nums, t.perm))
            .collect(),
        consumer_offsets: meta
            .consumer_offsets()
            .map_err(io_err)?
            .into_iter()
            .map(|((g, t, q), o)| (g, t, q, o))
            .collect(),
        queue_ends: store
            .queues()
            .into_iter()
            .map(|(q, _, end)| (q.topic, q.queue_id, end.0))
            .collect(),
        transactions: meta
            .transactions(false, usize::MAX)
            .map_err(io_err)?
            .0
            .into_iter()
            .map(|r| to_hex(&r.encode()))
            .collect(),
        timer_cursor: meta.timer_cursor().map_err(io_err)?.map(|k| k.to_string()),
        timers_recalled: meta
            .timers_recalled()
            .map_err(io_err)?
            .into_iter()
            .map(|k| k.to_string())
            .collect(),
        groups: meta
            .groups()
            .map_err(io_err)?
            .into_iter()
            .map(|g| (g.name.clone(), to_hex(&g.encode())))
            .collect(),
        pop_cursors: pop
            .cursors
            .into_iter()
            .map(|(q, c)| (q.group, q.topic, q.queue_id, c))
            .collect(),
        pop_inflight: pop
            .inflight
            .into_iter()
            .map(|(q, o, f)| {
                (
                    q.group,
                    q.topic,
                    q.queue_id,
                    o,
                    f.visible_at_ms,
                    f.epoch,
                    f.attempts,
                )
            })
            .collect(),
        boundary,
    })
}

impl StateMachine {
    /// Loads the applied state from the MetaStore.
    pub fn open(rs: ReplicaStore) -> io::Result<Self> {
        let (applied, membership) = {
            let store = rs.lock();
            let applied = store
                .meta()
                .applied()
                .map_err(io_err)?
                .map(|a| crate::types::log_id(a.term, a.index.0));
            let membership = match store.meta().raft(keys::MEMBERSHIP).map_err(io_err)? {
                Some(b) => decode_value(&b, keys::MEMBERSHIP)?,
                None => StoredMembership::default(),
            };
            (applied, membership)
        };
        Ok(StateMachine {
            rs,
            applied,
            membership,
            since_checkpoint: 0,
        })
    }

    /// The shared store.
    pub fn store(&self) -> &ReplicaStore {
        &self.rs
    }

    /// Applies a run of entries; returns one result per entry (in order).
    fn apply_entries(&mut self, entries: &[crate::types::Entry]) -> io::Result<Vec<CommandResult>> {
        let mut results = Vec::with_capacity(entries.len());
        let rs = self.rs.clone();
        let mut store = rs.lock();
        let mut txn = store.meta().begin(false).map_err(io_err)?;
        let mut last = None;
        for e in entries {
            let index = e.log_id.index;
            if self.applied.as_ref().is_some_and(|a| a.index >= index) {
                results.push(CommandResult::default());
                continue;
            }
            // applied <= committed is openraft's to keep (its engine hands the state machine
            // only committed entries). It is not asserted against `save_committed` here: the
            // state machine's worker may apply an entry before the core's `save_committed`
            // for it reaches the log storage (seen in simulation: "applying entry 39, past
            // the committed index 38" on seeds 110851, 111039, 111963).
            if let Some(point) = store.segment_boundary_at(LogIndex(index)).map_err(io_err)? {
                txn = self.save_boundary(&store, txn, &mut last, index, point)?;
            }
            // Dispatch every entry once, in log order (it keeps the store's dispatched index in
            // step with the applied one); only `Messages` entries assign queue offsets.
            let decided_ms = match &e.payload {
                EntryPayload::Normal(Command::Messages { timestamp_ms, .. }) => *timestamp_ms,
                _ => 0,
            };
            let cursor_before = txn.timer_cursor().map_err(io_err)?;
            let mut gate = ApplyGate {
                txn: &mut txn,
                decided_ms,
                mutations: self.rs.mutations(),
                outcome: None,
                error: None,
            };
            let assigned = store
                .dispatch_upto_gated(LogIndex(index), &mut gate)
                .map_err(io_err)?;
            let outcome = gate.outcome;
            record_halves(&mut txn, &store, &assigned).map_err(io_err)?;
            rekey_skipped(&mut txn, cursor_before).map_err(io_err)?;
            record_timers(&mut txn, &store, &assigned).map_err(io_err)?;
            let mut result = result_of(index, assigned);
            let (txn_outcome, timer_outcome, pop_outcome) =
                self.apply_payload(&mut txn, &store, e)?;
            result.txn = outcome.or(txn_outcome);
            result.timer = timer_outcome;
            result.pop = pop_outcome;
            last = Some(e.log_id);
            results.push(result);
        }
        if let Some(l) = last {
            commit_applied(txn, l)?;
            self.applied = Some(l);
        } else {
            // Only a boundary snapshot (or nothing) in it: still commit.
            txn.commit().map_err(io_err)?;
        }
        self.since_checkpoint += entries.len() as u64;
        if self.since_checkpoint >= CHECKPOINT_EVERY_ENTRIES {
            store.checkpoint().map_err(io_err)?;
            self.since_checkpoint = 0;
        }
        Ok(results)
    }

    /// Entry `index` opens a segment: saves the state after `index - 1` as a boundary
    /// snapshot. The state is read from the committed MetaStore, so what this apply call
    /// applied so far (`last`) is committed first; the snapshot then commits with what
    /// follows, in the transaction returned.
    fn save_boundary(
        &mut self,
        store: &Store,
        mut txn: MetaTxn,
        last: &mut Option<LogId>,
        index: u64,
        point: ChainPoint,
    ) -> io::Result<MetaTxn> {
        if let Some(l) = last.take() {
            commit_applied(txn, l)?;
            self.applied = Some(l);
            txn = store.meta().begin(false).map_err(io_err)?;
        }
        if self.applied.as_ref().map(|a| a.index + 1) == Some(index) {
            let boundary = Boundary {
                position: point.position.0,
                prev_crc: point.prev_crc,
            };
            let state = state_of(store, self.applied, &self.membership, Some(boundary))?;
            txn.put_raft(&boundary_key(index - 1), &encode_value(&state))
                .map_err(io_err)?;
        } else {
            tracing::warn!(index, applied = ?self.applied, "segment boundary not after the applied entry; no boundary snapshot");
        }
        Ok(txn)
    }

    /// Applies what an entry changes besides messages: metadata and membership. Returns what
    /// a transaction command did.
    fn apply_payload(
        &mut self,
        txn: &mut MetaTxn,
        store: &Store,
        e: &crate::types::Entry,
    ) -> io::Result<(Option<TxnOutcome>, Option<TimerOutcome>, Option<PopOutcome>)> {
        match &e.payload {
            EntryPayload::Blank | EntryPayload::Normal(Command::Messages { .. }) => {}
            EntryPayload::Normal(Command::Meta(m)) => {
                let index = LogIndex(e.log_id.index);
                if let Some(outcome) = apply_txn_command(txn, index, m).map_err(io_err)? {
                    return Ok((Some(outcome), None, None));
                }
                if let Some(outcome) = apply_timer_command(txn, m).map_err(io_err)? {
                    return Ok((None, Some(outcome), None));
                }
                if let Some(outcome) =
                    apply_pop_command(txn, store, e.log_id.index, m, self.rs.mutations())
                        .map_err(io_err)?
                {
                    return Ok((None, None, Some(outcome)));
                }
                apply_meta(txn, m).map_err(io_err)?;
            }
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(e.log_id), m.clone());
                txn.put_raft(keys::MEMBERSHIP, &encode_value(&self.membership))
                    .map_err(io_err)?;
            }
        }
        Ok((None, None, None))
    }

    /// Restarts this replica at a leader's boundary snapshot: the store is reset to the
    /// snapshot's chain point and the metadata replaced, in one durable step.
    fn install_by_reset(
        &mut self,
        last: LogId,
        state: &SnapshotState,
        raw: &[u8],
    ) -> io::Result<()> {
        let Some(b) = state.boundary else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot at {last} has no segment boundary and this replica's log does not hold it"
                ),
            ));
        };
        let point = ResetPoint {
            log: ChainPoint {
                position: Position(b.position),
                prev_crc: b.prev_crc,
                last_index: Some(LogIndex(last.index)),
            },
            queue_ends: state
                .queue_ends
                .iter()
                .map(|(t, q, end)| {
                    (
                        QueueId {
                            topic: t.clone(),
                            queue_id: *q,
                        },
                        *end,
                    )
                })
                .collect(),
        };
        let transactions = state
            .transactions
            .iter()
            .map(|hex| {
                let raw = from_hex(hex).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "snapshot: a transaction is not hex",
                    )
                })?;
                TxnRecord::decode(&raw).map_err(io_err)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let groups = state
            .groups
            .iter()
            .map(|(name, hex)| {
                let raw = from_hex(hex).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "snapshot: a group config is not hex",
                    )
                })?;
                GroupConfig::decode(name, &raw).map_err(io_err)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let bad_key = |_| io::Error::new(io::ErrorKind::InvalidData, "snapshot: bad timer key");
        let timer_cursor: Option<TimerKey> = state
            .timer_cursor
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(bad_key)?;
        let recalled = state
            .timers_recalled
            .iter()
            .map(|k| k.parse::<TimerKey>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad_key)?;
        let mut store = self.rs.lock();
        let stale = store
            .meta()
            .raft_keys(keys::BOUNDARY_PREFIX)
            .map_err(io_err)?;
        let resets: u64 = match store.meta().raft(keys::RESETS).map_err(io_err)? {
            Some(b) => decode_value(&b, keys::RESETS)?,
            None => 0,
        };
        store
            .reset_to(&point, |txn| {
                txn.clear_topics()?;
                let types: BTreeMap<&str, TopicMessageType> = state
                    .topic_types
                    .iter()
                    .map(|(n, t)| (n.as_str(), *t))
                    .collect();
                for (name, r, w, perm) in &state.topics {
                    txn.put_topic(&TopicConfig {
                        name: name.clone(),
                        read_queue_nums: *r,
                        write_queue_nums: *w,
                        perm: *perm,
                        message_type: types.get(name.as_str()).copied().unwrap_or_default(),
                    })?;
                }
                txn.clear_consumer_offsets()?;
                for (g, t, q, o) in &state.consumer_offsets {
                    txn.set_consumer_offset(g, t, *q, *o)?;
                }
                txn.clear_transactions()?;
                for r in &transactions {
                    txn.put_transaction(r)?;
                }
                txn.clear_timers()?;
                if let Some(c) = timer_cursor {
                    txn.set_timer_cursor(c)?;
                }
                for k in &recalled {
                    txn.recall_timer(*k)?;
                }
                txn.clear_groups()?;
                for g in &groups {
                    txn.put_group(g)?;
                }
                txn.clear_pop()?;
                for (g, t, q, c) in &state.pop_cursors {
                    txn.set_pop_cursor(&pop_queue(g, t, *q), *c)?;
                }
                for (g, t, q, o, visible_at_ms, epoch, attempts) in &state.pop_inflight {
                    let f = Inflight {
                        visible_at_ms: *visible_at_ms,
                        epoch: *epoch,
                        attempts: *attempts,
                    };
                    txn.put_pop_inflight(&pop_queue(g, t, *q), *o, &f)?;
                }
                txn.set_applied(&raftmq_store::LogId {
                    term: last.leader_id.term,
                    node_id: 0,
                    index: LogIndex(last.index),
                })?;
                for k in &stale {
                    txn.delete_raft(k)?;
                }
                txn.put_raft(keys::MEMBERSHIP, &encode_value(&state.membership))?;
                txn.put_raft(keys::PURGED, &encode_value(&last))?;
                txn.put_raft(keys::RESETS, &encode_value(&(resets + 1)))?;
                txn.put_raft(keys::SNAPSHOT, raw)?;
                txn.put_raft(&boundary_key(last.index), raw)
            })
            .map_err(io_err)?;
        self.applied = Some(last);
        self.membership = state.membership.clone();
        self.since_checkpoint = 0;
        Ok(())
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Records `l` as applied in `txn` and commits it.
/// The answer to entry `index`: the queue offsets dispatch assigned to its messages.
fn result_of(index: u64, assigned: Vec<raftmq_store::store::Assigned>) -> CommandResult {
    CommandResult {
        assigned: assigned
            .into_iter()
            .filter(|a| a.index.0 == index)
            .map(|a| AssignedOffset {
                topic: a.queue.topic,
                queue_id: a.queue.queue_id,
                queue_offset: a.offset,
                position: a.position,
                size: a.size,
            })
            .collect(),
        txn: None,
        timer: None,
        pop: None,
    }
}

fn commit_applied(mut txn: MetaTxn, l: LogId) -> io::Result<()> {
    txn.set_applied(&raftmq_store::LogId {
        term: l.leader_id.term,
        node_id: 0,
        index: LogIndex(l.index),
    })
    .map_err(io_err)?;
    txn.commit().map_err(io_err)
}

fn apply_meta(txn: &mut MetaTxn, m: &MetaCommand) -> Result<(), StoreError> {
    match m {
        MetaCommand::PutTopic(t) => txn.put_topic(&TopicConfig {
            name: t.name.clone(),
            read_queue_nums: t.read_queue_nums,
            write_queue_nums: t.write_queue_nums,
            perm: t.perm,
            message_type: t.message_type,
        }),
        MetaCommand::DeleteTopic { name } => txn.delete_topic(name).map(|_| ()),
        // The broker checks the limits before proposing; a config past them (from a broker
        // with other limits) is skipped the same way on every replica, never fatal.
        MetaCommand::PutGroup(g) => {
            let g = g.to_config();
            match g.validate() {
                Ok(()) => txn.put_group(&g),
                Err(e) => {
                    tracing::warn!(group = %g.name, error = %e, "group config refused at apply");
                    Ok(())
                }
            }
        }
        // Committed offsets only move forward: a member that lost a queue may still commit
        // its older position after the new owner committed further (at-least-once, but the
        // group must not fall back). Moving back is an explicit reset, which is not a commit.
        MetaCommand::CommitOffsets { group, offsets } => {
            for o in offsets {
                txn.advance_consumer_offset(group, &o.topic, o.queue_id, o.offset)?;
            }
            Ok(())
        }
        // Applied by `apply_txn_command` and `apply_timer_command`.
        MetaCommand::RollbackTransaction { .. }
        | MetaCommand::CheckTransaction { .. }
        | MetaCommand::RecallTimer { .. }
        | MetaCommand::PopClaim { .. }
        | MetaCommand::PopAck { .. }
        | MetaCommand::PopChangeInvisible { .. } => Ok(()),
    }
}

fn pop_queue(group: &str, topic: &str, queue_id: u32) -> PopQueue {
    PopQueue {
        group: group.to_string(),
        topic: topic.to_string(),
        queue_id,
    }
}

/// Builds snapshots: the boundary snapshot retention asked for (see the module docs), or
/// the applied state when openraft insists and no boundary exists yet (then nothing was
/// purged, so no replica will need to install it).
#[derive(Debug)]
pub struct SnapshotBuilder {
    state: io::Result<(SnapshotState, Vec<u8>)>,
    rs: ReplicaStore,
}

type SnapshotOf = openraft::storage::Snapshot<
    <<TypeConfig as RaftTypeConfig>::LeaderId as openraft::vote::RaftLeaderId>::Committed,
    u64,
    openraft::impls::BasicNode,
    Vec<u8>,
>;

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, io::Error> {
        let (state, data) =
            std::mem::replace(&mut self.state, Err(io::Error::other("snapshot taken")))?;
        let meta = SnapshotMeta {
            last_log_id: state.last_log_id,
            last_membership: state.membership.clone(),
        };
        let store = self.rs.lock();
        let mut txn = store.meta().begin(true).map_err(io_err)?;
        txn.put_raft(keys::SNAPSHOT, &data).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + Send,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        let results = self.apply_entries(&batch)?;
        self.rs.applied_signal().notify_waiters();
        for (r, res) in responders.into_iter().zip(results) {
            if let Some(r) = r {
                r.send(res);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        // The boundary retention is purging up to, so that a replica installing the snapshot
        // receives every entry the others still hold; without one, the newest boundary.
        let target = match self.rs.snapshot_target() {
            0 if !force => return None,
            0 => u64::MAX,
            t => t,
        };
        let found = boundary_upto(self.rs.lock().meta(), target);
        let state = match found {
            Ok(Some(raw)) => {
                decode_value::<SnapshotState>(&raw, "boundary snapshot").map(|s| (s, raw))
            }
            Ok(None) if !force => return None,
            Ok(None) => {
                let store = self.rs.lock();
                state_of(&store, self.applied, &self.membership, None).map(|s| {
                    let raw = encode_value(&s);
                    (s, raw)
                })
            }
            Err(e) => Err(e),
        };
        Some(SnapshotBuilder {
            state,
            rs: self.rs.clone(),
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.try_create_snapshot_builder(true)
            .await
            .expect("a forced builder is always made")
    }

    /// Installs a leader's snapshot. If this replica's log already holds the snapshot's last
    /// entry (same term), every entry up to it is committed and identical to the leader's, so
    /// applying the local log reaches exactly the snapshot's state. Otherwise the store
    /// restarts at the snapshot's segment boundary (see the module docs).
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state: SnapshotState = decode_value(&snapshot, "snapshot")?;
        let Some(last) = meta.last_log_id else {
            return Ok(());
        };
        if state.last_log_id.as_ref() != Some(&last) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot meta {last} disagrees with its data {:?}",
                    state.last_log_id
                ),
            ));
        }
        let local_term = self.rs.lock().term_of(LogIndex(last.index)).ok();
        if local_term == Some(last.leader_id.term) {
            let from = self.applied.as_ref().map_or(0, |a| a.index + 1);
            let first = self.rs.lock().log_bounds().map_err(io_err)?.0.0;
            let entries = {
                let mut reader = crate::log_store::LogStore::new(self.rs.clone());
                use openraft::storage::RaftLogReader;
                reader
                    .try_get_log_entries(from.max(first)..last.index + 1)
                    .await?
            };
            self.apply_entries(&entries)?;
            self.membership = meta.last_membership.clone();
            let store = self.rs.lock();
            let mut txn = store.meta().begin(true).map_err(io_err)?;
            txn.put_raft(keys::MEMBERSHIP, &encode_value(&self.membership))
                .map_err(io_err)?;
            txn.put_raft(keys::SNAPSHOT, &snapshot).map_err(io_err)?;
            txn.commit().map_err(io_err)?;
            return Ok(());
        }
        self.install_by_reset(last, &state, &snapshot)?;
        self.rs.applied_signal().notify_waiters();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf>, io::Error> {
        let raw = self.rs.lock().meta().raft(keys::SNAPSHOT).map_err(io_err)?;
        let Some(raw) = raw else { return Ok(None) };
        let state: SnapshotState = decode_value(&raw, "snapshot")?;
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id: state.last_log_id,
                last_membership: state.membership,
            },
            snapshot: raw,
        }))
    }
}

#[cfg(test)]
mod hex_tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let b = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&b), "0001abff");
        assert_eq!(from_hex("0001abff"), Some(b));
        for bad in ["0", "zz", "0é"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
    }
}
