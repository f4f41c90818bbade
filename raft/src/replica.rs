//! One replica of a broker group: its store, its openraft instance, its group-commit writer,
//! and the membership operations.
//!
//! # Group commit
//! Concurrent writes go through one writer task per replica ([`Writer`]), reached through a
//! bounded channel ([`WRITE_QUEUE_MAX`] requests: beyond that, callers wait, which is the
//! back-pressure). The task takes every request already queued, up to
//! [`BatchLimits::max_messages`] messages and [`BatchLimits::max_bytes`] bytes, stamps the
//! store time, encodes them as one `Messages` entry and hands it to openraft without waiting
//! for the commit (`client_write_ff`), so the next batch is formed while this one replicates:
//! Raft pipelines batches. A small task per batch waits for the apply result and splits the
//! assigned offsets back to the callers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::impls::{BasicNode, ProgressResponder};
use openraft::{ChangeMembers, Config, SnapshotPolicy};
use raftmq_store::message::encode_batch;
use raftmq_store::{Disk, Message, Store, StoreConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::Raft;
use crate::log_store::{LogStore, ReplicaStore};
use crate::mutations::Mutations;
use crate::network::{NetworkFactory, RaftServer};
use crate::state_machine::StateMachine;
use crate::types::{AssignedOffset, Command, CommandResult, MetaCommand, NodeId, TypeConfig};

/// Requests waiting for the writer, at most.
pub const WRITE_QUEUE_MAX: usize = 4096;
/// Batches proposed and not yet applied, at most. Raft replicates one AppendEntries at a
/// time per follower, so a few batches in flight keep it busy; past that, proposing every
/// request on arrival would make one entry per message (and pay Raft's per-entry cost for
/// each), while waiting lets the queue fill the next batch: group commit.
pub const INFLIGHT_BATCHES_MAX: usize = 4;

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] raftmq_store::StoreError),
    #[error("state machine: {0}")]
    StateMachine(#[source] std::io::Error),
    #[error("raft: {0}")]
    Raft(#[source] Fatal<TypeConfig>),
}

/// Why a write or an admin operation failed. Clone (one failure answers every request of
/// a batch), so sources are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This replica does not lead; the leader is given when known.
    #[error("not the leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The replica is shutting down or Raft stopped; the write may or may not have been
    /// committed (indeterminate).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Raft stopped (shut down, or a fatal storage error): indeterminate, like `Unavailable`.
    #[error("unavailable: raft stopped: {0}")]
    Stopped(#[source] Arc<Fatal<TypeConfig>>),
    /// The store failed under an operation (retention, say).
    #[error("unavailable: store: {0}")]
    Store(#[source] Arc<raftmq_store::StoreError>),
}

impl From<Fatal<TypeConfig>> for WriteError {
    fn from(f: Fatal<TypeConfig>) -> Self {
        WriteError::Stopped(Arc::new(f))
    }
}

impl From<raftmq_store::StoreError> for WriteError {
    fn from(e: raftmq_store::StoreError) -> Self {
        WriteError::Store(Arc::new(e))
    }
}

/// How much the writer puts in one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_messages: 1024,
            max_bytes: 4 << 20,
        }
    }
}

/// Raft timing (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimeouts {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTimeouts {
    fn default() -> Self {
        RaftTimeouts {
            heartbeat_ms: 60,
            election_min_ms: 300,
            election_max_ms: 600,
        }
    }
}

/// Everything one replica needs; validated by [`ReplicaConfig::validate`].
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The broker group (every replica of it uses the same name).
    pub group: String,
    pub node_id: NodeId,
    pub store: StoreConfig,
    pub timeouts: RaftTimeouts,
    pub batch: BatchLimits,
    /// How often the replica runs retention ([`Replica::run_retention`]); 0 = never on its
    /// own (the caller runs it). Brokers use [`RETENTION_INTERVAL_MS_DEFAULT`].
    pub retention_interval_ms: u64,
    /// Test-only deliberate bugs.
    pub mutations: Mutations,
}

/// The usual retention interval: RocketMQ checks for expired files every 10 s.
pub const RETENTION_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// How long retention waits for openraft to take the snapshot and purge the log.
pub const RETENTION_RAFT_WAIT_MS: u64 = 5_000;

/// What one retention run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// The Raft log was purged up to here (inclusive), if anything.
    pub purged_upto: Option<u64>,
    /// CommitLog segments deleted.
    pub segments_deleted: u64,
    /// The first retained CommitLog position afterwards.
    pub first_position: u64,
}

impl ReplicaConfig {
    /// Checks the configuration; errors carry the numbers.
    pub fn validate(&self) -> Result<(), StartError> {
        let bad = |m: String| Err(StartError::Config(m));
        if self.group.is_empty() || self.group.len() > 127 {
            return bad(format!(
                "group name must be 1..=127 bytes, got {}",
                self.group.len()
            ));
        }
        let t = self.timeouts;
        let append_min = crate::network::APPEND_TIMEOUT_MIN.as_millis() as u64;
        if t.heartbeat_ms == 0
            || t.election_min_ms <= t.heartbeat_ms * 2
            || t.election_min_ms <= append_min
            || t.election_max_ms <= t.election_min_ms
        {
            return bad(format!(
                "need 0 < heartbeat_ms ({}) < election_min_ms/2 ({}), election_min_ms > {append_min} and election_min_ms < election_max_ms ({})",
                t.heartbeat_ms, t.election_min_ms, t.election_max_ms
            ));
        }
        if self.batch.max_messages == 0 || self.batch.max_bytes == 0 {
            return bad("batch limits must be positive".into());
        }
        // A batch is a 4-byte count plus the messages, in one record with a 44-byte header.
        let record =
            self.batch.max_bytes as u64 + 4 + raftmq_store::commitlog::record::HEADER_LEN as u64;
        if record > self.store.max_record_bytes {
            return bad(format!(
                "a full batch (max_bytes {}) makes a {record}-byte record, over the store's max_record_bytes {}",
                self.batch.max_bytes, self.store.max_record_bytes
            ));
        }
        if self.batch.max_messages > raftmq_store::message::BATCH_MESSAGES_MAX {
            return bad(format!(
                "batch max_messages {} is over {}",
                self.batch.max_messages,
                raftmq_store::message::BATCH_MESSAGES_MAX
            ));
        }
        self.store.validate()?;
        Ok(())
    }

    fn raft_config(&self) -> Result<Config, StartError> {
        let c = Config {
            cluster_name: self.group.clone(),
            heartbeat_interval: self.timeouts.heartbeat_ms,
            election_timeout_min: self.timeouts.election_min_ms,
            election_timeout_max: self.timeouts.election_max_ms,
            // The log is purged by retention, never by entry count (see docs/architecture.md).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            max_payload_entries: 256,
            // A replica that found its log damaged drops it and is refilled by the leader
            // (see `repair`): its log goes back past what the leader had matched.
            allow_log_reversion: Some(true),
            // A restarted leader must win an election like anyone else: resuming its term
            // without one, after a power cut took an unsynced tail that a follower quorum had
            // already committed, it would append different entries at those indexes and the
            // followers would truncate committed entries (found by the chaos harness: a
            // transaction check, committed before it was asked, asked again).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        c.validate().map_err(|e| StartError::Config(e.to_string()))
    }
}

/// The voters of a group, checked before they are used: an odd count (so a quorum is a
/// strict majority that survives `(n-1)/2` failures) and distinct addresses.
pub fn validate_voters(voters: &BTreeMap<NodeId, String>) -> Result<(), WriteError> {
    if voters.is_empty() || voters.len().is_multiple_of(2) {
        return Err(WriteError::InvalidArgument(format!(
            "a group needs an odd number of voters, got {}",
            voters.len()
        )));
    }
    let addrs: BTreeSet<&String> = voters.values().collect();
    if addrs.len() != voters.len() {
        return Err(WriteError::InvalidArgument(
            "two voters share an address".into(),
        ));
    }
    Ok(())
}

struct WriteReq {
    messages: Vec<Message>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<AssignedOffset>, WriteError>>,
}

/// Handle to the group-commit writer task; see the module docs.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WriteReq>,
}

/// A running replica.
#[derive(Clone)]
pub struct Replica {
    config: Arc<ReplicaConfig>,
    raft: Raft,
    store: ReplicaStore,
    writer: Writer,
    /// Set by [`Replica::close_streams`]; read by the `RaftService`.
    streams_closing: Arc<std::sync::atomic::AtomicBool>,
    /// Set while the replica refills a log it dropped as damaged (see [`crate::repair`]).
    repairing: crate::repair::Repairing,
}

/// How often a write waiting to commit checks that its leader still hears from a quorum.
const QUORUM_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

fn quorum_lost() -> WriteError {
    WriteError::Unavailable(
        "this leader has heard from no quorum for longer than an election timeout; the write may or may not be committed: retry on the group's leader".into(),
    )
}

fn map_write_err(
    e: RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        // The entry was proposed and then discarded by a new leader: not committed.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => WriteError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            WriteError::InvalidArgument(c.to_string())
        }
        RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => {
            WriteError::InvalidArgument(p.to_string())
        }
        RaftError::Fatal(f) => f.into(),
    }
}

fn map_client_write_err(e: ClientWriteError<crate::types::TypeConfig>) -> WriteError {
    map_write_err(RaftError::APIError(e))
}

impl Replica {
    /// Opens the store on `disk` and starts Raft (must run inside a runtime). A new replica
    /// waits to be initialized ([`Replica::initialize`]) or added by a leader.
    pub async fn start(disk: Arc<dyn Disk>, config: ReplicaConfig) -> Result<Replica, StartError> {
        config.validate()?;
        let raft_config = Arc::new(config.raft_config()?);
        let store = Store::open(disk, config.store.clone())?;
        let rs = ReplicaStore::new(store, config.mutations);
        let sm = StateMachine::open(rs.clone()).map_err(StartError::StateMachine)?;
        let network = NetworkFactory::new(&config.group, config.store.segment_bytes);
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network,
            LogStore::new(rs.clone()),
            sm,
        )
        .await
        .map_err(StartError::Raft)?;
        let repairing = crate::repair::Repairing::default();
        if let Some(until) = crate::repair::read_until(&rs).map_err(StartError::StateMachine)? {
            // A log being refilled after damage: no vote, no candidacy until it holds every
            // entry this replica may have acknowledged.
            raft.runtime_config().elect(false);
            repairing.set(until);
            tracing::warn!(
                until,
                "repairing a damaged log: refilling it from the group; no votes until it reaches entry {until}"
            );
            tokio::spawn(crate::repair::finish(
                raft.clone(),
                rs.clone(),
                repairing.clone(),
                until,
            ));
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
        tokio::spawn(run_writer(raft.clone(), config.batch, rx));
        let replica = Replica {
            config: Arc::new(config),
            raft,
            store: rs,
            writer: Writer { tx },
            streams_closing: Arc::default(),
            repairing,
        };
        if replica.config.retention_interval_ms > 0 {
            tokio::spawn(run_retention_timer(replica.clone()));
        }
        Ok(replica)
    }

    /// Retention through Raft: if CommitLog segments have expired
    /// ([`raftmq_store::Store::expired_before`]), find the newest boundary snapshot at or
    /// below the cut, make sure openraft's snapshot covers it (triggering a build of that
    /// boundary snapshot), have openraft purge its log up to it, and only then delete
    /// the segments. Any step that openraft defers (a leader keeps entries a replication
    /// still reads) leaves the rest for the next run. Every replica runs it on its own.
    pub async fn run_retention(&self, now_ms: u64) -> Result<RetentionOutcome, WriteError> {
        let (start, last) = {
            let store = self.store.lock();
            let first_position = store.reader().first().0;
            let nothing = RetentionOutcome {
                first_position,
                ..RetentionOutcome::default()
            };
            let Some(cut) = store.expired_before(now_ms).map_err(WriteError::from)? else {
                return Ok(nothing);
            };
            // The newest segment start at or below the cut that has a boundary snapshot.
            let mut found = None;
            for start in store.reader().segment_starts().into_iter().rev() {
                if start > cut || start.0 == 0 {
                    continue;
                }
                let first = store.first_index_at(start).map_err(WriteError::from)?;
                let last = first.0 - 1;
                let key = crate::keys::boundary_key(last);
                if store.meta().raft(&key).map_err(WriteError::from)?.is_some() {
                    found = Some((start, last));
                    break;
                }
            }
            match found {
                Some(f) => f,
                None => return Ok(nothing),
            }
        };
        let wait = std::time::Duration::from_millis(RETENTION_RAFT_WAIT_MS);
        let metrics = self.metrics();
        if metrics.snapshot.is_none_or(|s| s.index < last) {
            self.store.set_snapshot_target(last);
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(WriteError::from)?;
            let r = self
                .raft
                .wait(Some(wait))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= last),
                    "boundary snapshot",
                )
                .await;
            if r.is_err() {
                return Ok(self.retention_outcome(None, 0));
            }
        }
        if self.metrics().purged.is_none_or(|p| p.index < last) {
            self.raft
                .trigger()
                .purge_log(last)
                .await
                .map_err(WriteError::from)?;
            let r = self
                .raft
                .wait(Some(wait))
                .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purge")
                .await;
            if r.is_err() {
                return Ok(self.retention_outcome(None, 0));
            }
        }
        // openraft reports the purge once our `purge` returned: the Raft index forgot them.
        let report = self
            .store
            .lock()
            .delete_segments_before(start)
            .map_err(WriteError::from)?;
        Ok(self.retention_outcome(Some(last), report.segments_deleted))
    }

    fn retention_outcome(
        &self,
        purged_upto: Option<u64>,
        segments_deleted: u64,
    ) -> RetentionOutcome {
        RetentionOutcome {
            purged_upto,
            segments_deleted,
            first_position: self.store.lock().reader().first().0,
        }
    }

    fn metrics(&self) -> openraft::RaftMetrics<crate::types::TypeConfig> {
        openraft::async_runtime::WatchReceiver::borrow_watched(&self.raft.metrics()).clone()
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The shared store (for reads: ConsumeQueues, messages, metadata).
    pub fn store(&self) -> &ReplicaStore {
        &self.store
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The `RaftService` to add to this replica's gRPC server.
    pub fn raft_service(&self) -> crate::network::RaftService {
        RaftServer::new(
            &self.config.group,
            self.config.store.segment_bytes,
            self.raft.clone(),
            self.streams_closing.clone(),
        )
        .repairing(self.repairing.clone())
        .into_service()
    }

    /// While the replica refills a log it dropped as damaged: the index the log must reach
    /// before it votes again ([`crate::repair`]).
    pub fn repairing_until(&self) -> Option<u64> {
        self.repairing.until()
    }

    /// Ends the append streams other replicas hold open to this one's `RaftService` (within
    /// 50 ms) and refuses new ones. Call it before waiting for the gRPC server's graceful
    /// stop while Raft still runs: the group's leader never closes its stream to a follower,
    /// so the stop would wait for it forever. (Shutting Raft down ends them too.)
    pub fn close_streams(&self) {
        self.streams_closing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Forms a new group of `voters` (node id → address); call on one replica only.
    pub async fn initialize(&self, voters: &BTreeMap<NodeId, String>) -> Result<(), WriteError> {
        validate_voters(voters)?;
        let nodes: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
            .collect();
        self.raft.initialize(nodes).await.map_err(|e| match e {
            RaftError::APIError(e) => WriteError::InvalidArgument(e.to_string()),
            RaftError::Fatal(f) => f.into(),
        })
    }

    /// Appends messages through group commit; returns the queue offsets assigned, in order.
    pub async fn write(&self, messages: Vec<Message>) -> Result<Vec<AssignedOffset>, WriteError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut bytes = 0;
        for m in &messages {
            m.validate()
                .map_err(|e| WriteError::InvalidArgument(e.to_string()))?;
            bytes += m.encoded_len();
        }
        if bytes > self.config.batch.max_bytes {
            return Err(WriteError::InvalidArgument(format!(
                "{bytes} bytes in one write, over the {} byte limit",
                self.config.batch.max_bytes
            )));
        }
        if self.leads_without_quorum() {
            return Err(quorum_lost());
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .tx
            .send(WriteReq {
                messages,
                bytes,
                reply,
            })
            .await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?;
        // A leader cut off from its quorum cannot commit: its clients are told so within
        // [`QUORUM_CHECK`] of the loss rather than waiting out their own timeouts, and
        // retry on the new leader (the write's fate is unknown: it commits if this leader
        // hears from its quorum again before a new one is elected).
        tokio::select! {
            biased;
            r = rx => r.map_err(|_| WriteError::Unavailable("writer dropped the request".into()))?,
            () = self.until_quorum_lost() => Err(quorum_lost()),
        }
    }

    /// Whether this replica leads but has heard from no quorum for longer than the longest
    /// election timeout: the others may have elected a new leader already, and nothing it
    /// writes can commit until it hears from a quorum again. (DLedger's leader steps down
    /// in the same case.) Brokers then answer as a replica that does not lead.
    pub fn leads_without_quorum(&self) -> bool {
        let m = self.raft.metrics();
        let m = openraft::async_runtime::WatchReceiver::borrow_watched(&m);
        if !m.state.is_leader() {
            return false;
        }
        // Alone in its group, it is its own quorum (openraft does not refresh the quorum's
        // acknowledgement time then).
        let mut voters = m.membership_config.membership().voter_ids();
        if voters.next() == Some(self.config.node_id) && voters.next().is_none() {
            return false;
        }
        let limit = std::time::Duration::from_millis(self.config.timeouts.election_max_ms);
        m.last_quorum_acked
            .as_ref()
            .is_some_and(|t| openraft::Instant::elapsed(&**t) > limit)
    }

    /// Resolves once [`Replica::leads_without_quorum`] holds (checked every [`QUORUM_CHECK`]).
    async fn until_quorum_lost(&self) {
        loop {
            tokio::time::sleep(QUORUM_CHECK).await;
            if self.leads_without_quorum() {
                return;
            }
        }
    }

    /// Appends one message as an entry of its own, outside group commit, and resolves once
    /// applied: a transaction's commit message, whose fate apply decides (see
    /// [`crate::txn_apply`]; the result says what it did).
    pub async fn write_alone(&self, msg: Message) -> Result<CommandResult, WriteError> {
        self.write_entry(vec![msg]).await
    }

    /// Appends `messages` as one entry of their own, outside group commit, and resolves once
    /// applied: a timer delivery, whose copies apply admits one by one (see
    /// [`crate::timer_apply`]).
    pub async fn write_entry(
        &self,
        mut messages: Vec<Message>,
    ) -> Result<CommandResult, WriteError> {
        let mut bytes = 0;
        for m in &messages {
            m.validate()
                .map_err(|e| WriteError::InvalidArgument(e.to_string()))?;
            bytes += m.encoded_len();
        }
        // Refused here, before Raft: an entry the store cannot append would stop the leader.
        if messages.is_empty() || bytes > self.config.batch.max_bytes {
            return Err(WriteError::InvalidArgument(format!(
                "{} messages of {bytes} bytes in one entry (1 to the {} byte limit)",
                messages.len(),
                self.config.batch.max_bytes
            )));
        }
        let timestamp_ms = now_ms();
        for m in &mut messages {
            m.store_timestamp_ms = timestamp_ms;
        }
        let batch =
            encode_batch(&messages).map_err(|e| WriteError::InvalidArgument(e.to_string()))?;
        let r = self
            .raft
            .client_write(Command::Messages {
                timestamp_ms,
                batch,
            })
            .await
            .map_err(map_write_err)?;
        Ok(r.data)
    }

    /// Waits until this replica, as the leader, has applied everything committed before the
    /// call (a read after it sees every acknowledged write); `Unavailable` if it cannot
    /// confirm its leadership.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        self.raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                RaftError::APIError(e) => {
                    WriteError::Unavailable(format!("leadership not confirmed: {e}"))
                }
                RaftError::Fatal(f) => f.into(),
            })
    }

    /// Replicates a metadata command; resolves once applied.
    pub async fn propose(&self, cmd: MetaCommand) -> Result<CommandResult, WriteError> {
        let r = self
            .raft
            .client_write(Command::Meta(cmd))
            .await
            .map_err(map_write_err)?;
        Ok(r.data)
    }

    /// Adds a learner (it starts receiving the log; it does not vote).
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), WriteError> {
        self.raft
            .add_learner(
                id,
                BasicNode {
                    addr: addr.to_string(),
                },
                true,
            )
            .await
            .map(|_| ())
            .map_err(map_write_err)
    }

    /// Makes `voters` the voter set: learners among them are promoted, voters left out leave
    /// the group (learners not named stay learners). Refused when empty or when a named
    /// replica is not already a member. An even count is allowed as a step (removing a broken
    /// replica before adding it back or replacing it): it tolerates no more failures than one
    /// voter fewer, so end with an odd count.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), WriteError> {
        if voters.is_empty() {
            return Err(WriteError::InvalidArgument(
                "a group needs at least one voter".into(),
            ));
        }
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map(|_| ())
            .map_err(map_write_err)
    }

    /// Removes a learner from the group (a voter leaves through [`Replica::change_voters`]).
    pub async fn remove(&self, id: NodeId) -> Result<(), WriteError> {
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(map_write_err)
    }

    /// Asks the leader to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), WriteError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(WriteError::from)
    }

    /// Stops Raft and the flusher.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.store.stop();
    }
}

/// Runs retention every `retention_interval_ms` until Raft shuts down.
async fn run_retention_timer(replica: Replica) {
    let every = std::time::Duration::from_millis(replica.config.retention_interval_ms);
    loop {
        tokio::time::sleep(every).await;
        if replica.metrics().state == openraft::ServerState::Shutdown {
            return;
        }
        match replica.run_retention(now_ms()).await {
            Ok(o) if o.segments_deleted > 0 => {
                tracing::info!(purged_upto = ?o.purged_upto, segments = o.segments_deleted, first = o.first_position, "retention");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed; retrying later"),
        }
    }
}

async fn run_writer(raft: Raft, limits: BatchLimits, mut rx: mpsc::Receiver<WriteReq>) {
    let inflight = Arc::new(Semaphore::new(INFLIGHT_BATCHES_MAX));
    while let Some(first) = rx.recv().await {
        // While the pipeline is full, requests pile up in the queue and ride the next batch.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut fill = BatchFill::new(first.messages.len(), first.bytes);
        let mut batch = vec![first];
        while !fill.full(&limits) {
            let Ok(r) = rx.try_recv() else { break };
            if !fill.admit(r.messages.len(), r.bytes, &limits) {
                // Does not fit: it opens the next batch.
                propose_batch(&raft, std::mem::take(&mut batch), None).await;
                fill = BatchFill::new(r.messages.len(), r.bytes);
            }
            batch.push(r);
        }
        propose_batch(&raft, batch, Some(permit)).await;
    }
}

/// How full the batch being gathered is: the writer's batching rule, apart from its I/O.
/// A request joins the batch if the batch stays within both limits; the first request of a
/// batch always joins (a single request is bounded by the broker's own checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchFill {
    messages: usize,
    bytes: usize,
}

impl BatchFill {
    fn new(messages: usize, bytes: usize) -> Self {
        BatchFill { messages, bytes }
    }

    /// No more requests are gathered once a limit is reached.
    fn full(&self, limits: &BatchLimits) -> bool {
        self.messages >= limits.max_messages || self.bytes >= limits.max_bytes
    }

    /// Adds a request if it fits; false (and unchanged) if it must open the next batch.
    fn admit(&mut self, messages: usize, bytes: usize, limits: &BatchLimits) -> bool {
        let next = BatchFill::new(self.messages + messages, self.bytes + bytes);
        if next.messages > limits.max_messages || next.bytes > limits.max_bytes {
            return false;
        }
        *self = next;
        true
    }
}

/// Hands each request its share of the offsets apply assigned to the whole batch, in order;
/// an error if apply assigned another number of offsets than the batch had messages.
fn split_assigned(
    assigned: Vec<AssignedOffset>,
    counts: &[usize],
) -> Result<Vec<Vec<AssignedOffset>>, String> {
    let total: usize = counts.iter().sum();
    if assigned.len() != total {
        return Err(format!(
            "apply assigned {} offsets for {total} messages",
            assigned.len()
        ));
    }
    let mut it = assigned.into_iter();
    Ok(counts
        .iter()
        .map(|&n| it.by_ref().take(n).collect())
        .collect())
}

/// The wall clock in milliseconds since the epoch: the clock a leader writes into entries
/// (store times, transaction decisions) and schedules by.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Proposes one batch; `permit` (a slot of the writer's pipeline) is held until the batch
/// is applied or has failed.
async fn propose_batch(raft: &Raft, batch: Vec<WriteReq>, permit: Option<OwnedSemaphorePermit>) {
    if batch.is_empty() {
        return;
    }
    let timestamp_ms = now_ms();
    let mut counts = Vec::with_capacity(batch.len());
    let mut all = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for r in batch {
        counts.push(r.messages.len());
        for mut m in r.messages {
            m.store_timestamp_ms = timestamp_ms;
            all.push(m);
        }
        replies.push(r.reply);
    }
    let encoded = match encode_batch(&all) {
        Ok(b) => b,
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(WriteError::InvalidArgument(e.to_string())));
            }
            return;
        }
    };
    let (responder, rx) = ProgressResponder::complete_only();
    let cmd = Command::Messages {
        timestamp_ms,
        batch: encoded,
    };
    if let Err(f) = raft.client_write_ff(cmd, Some(responder)).await {
        let e = WriteError::from(f);
        for r in replies {
            let _ = r.send(Err(e.clone()));
        }
        return;
    }
    tokio::spawn(async move {
        let outcome = rx.await;
        // The pipeline slot frees as soon as Raft is done with the batch.
        drop(permit);
        let result = match outcome {
            Ok(Ok(resp)) => Ok(resp.data.assigned),
            Ok(Err(e)) => Err(map_client_write_err(e)),
            Err(_) => Err(WriteError::Unavailable("raft dropped the write".into())),
        };
        match result.and_then(|a| {
            split_assigned(a, &counts).map_err(|msg| {
                tracing::error!("{msg}");
                WriteError::Unavailable(msg)
            })
        }) {
            Ok(shares) => {
                for (reply, share) in replies.into_iter().zip(shares) {
                    let _ = reply.send(Ok(share));
                }
            }
            Err(e) => {
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BatchLimits {
        BatchLimits {
            max_messages: 10,
            max_bytes: 1000,
        }
    }

    #[test]
    fn a_batch_takes_requests_while_both_limits_hold() {
        let l = limits();
        let mut f = BatchFill::new(4, 400);
        assert!(!f.full(&l));
        assert!(f.admit(6, 100, &l), "exactly at the message limit joins");
        assert_eq!(f, BatchFill::new(10, 500));
        assert!(f.full(&l));
        let mut f = BatchFill::new(1, 900);
        assert!(
            !f.admit(1, 101, &l),
            "over the byte limit opens the next batch"
        );
        assert_eq!(
            f,
            BatchFill::new(1, 900),
            "a refused request changes nothing"
        );
        assert!(f.admit(1, 100, &l));
        assert!(f.full(&l));
        // The first request of a batch is taken whatever its size.
        assert!(BatchFill::new(50, 5000).full(&l));
    }

    fn a(offset: u64) -> AssignedOffset {
        AssignedOffset {
            topic: "T".into(),
            queue_id: 0,
            queue_offset: raftmq_store::QueueOffset(offset),
            position: raftmq_store::Position(offset * 100),
            size: 10,
        }
    }

    #[test]
    fn each_request_gets_its_own_offsets_in_order() {
        let shares = split_assigned((0..5).map(a).collect(), &[2, 0, 3]).unwrap();
        let offsets: Vec<Vec<u64>> = shares
            .iter()
            .map(|s| s.iter().map(|x| x.queue_offset.0).collect())
            .collect();
        assert_eq!(offsets, vec![vec![0, 1], vec![], vec![2, 3, 4]]);
        assert!(split_assigned((0..4).map(a).collect(), &[2, 3]).is_err());
    }
}
