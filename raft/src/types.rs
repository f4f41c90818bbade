//! The Raft type configuration, the commands a group replicates, and how an openraft entry
//! becomes a CommitLog record (and back).
//!
//! # Entry ↔ record
//! Every openraft entry is one CommitLog record whose header carries the entry's term and
//! index (see `raftmq_store::commitlog::record`). The record's `kind` says what the payload is:
//!
//! | kind | payload | header `timestamp_ms` |
//! |------|---------|-----------------------|
//! | 1 `MESSAGES` | a message batch (`raftmq_store::message`), the store's own format | the leader's store time |
//! | 2 `RAFT_BLANK` | empty (the no-op a new leader commits) | 0 |
//! | 3 `MEMBERSHIP` | `version u8 = 1` + the membership as JSON | 0 |
//! | 4 `COMMAND` | `version u8 = 1` + a [`MetaCommand`] as JSON | 0 |
//!
//! The same five fields travel over the network ([`EncodedEntry`]), so a follower writes
//! exactly the bytes the leader wrote: committed CommitLogs are byte-identical. Metadata
//! commands are rare and small, hence JSON; messages are the hot path and are never
//! re-encoded.
//!
//! Log ids use openraft's standard leader id (one leader per term), so a log id is
//! `(term, index)`: exactly what a record header holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

use openraft::impls::leader_id_std;
use openraft::{EntryPayload, Membership};
use raftmq_store::{LogIndex, Position, QueueOffset, RecordKind};
use serde::{Deserialize, Serialize};

use crate::rt::RaftRuntime;

/// A replica's id within its group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// raftmq's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::impls::BasicNode,
        LeaderId = leader_id_std::LeaderId<u64, NodeId>,
        AsyncRuntime = RaftRuntime,
);

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// Record kind of the blank entry a new leader commits.
pub const RAFT_BLANK: RecordKind = RecordKind(2);
/// Record kind of a membership entry.
pub const MEMBERSHIP: RecordKind = RecordKind(3);
/// Record kind of a metadata command.
pub const COMMAND: RecordKind = RecordKind(4);
/// Version byte of JSON payloads (kinds 3 and 4).
const JSON_VERSION: u8 = 1;

/// What a group replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A batch of messages in the store's message format, validated before it was proposed.
    /// `timestamp_ms` is the leader's store time, written into the record header.
    Messages { timestamp_ms: u64, batch: Vec<u8> },
    /// A metadata change.
    Meta(MetaCommand),
}

/// Metadata changes, applied to the MetaStore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create or update a topic.
    PutTopic(TopicSpec),
    /// Delete a topic.
    DeleteTopic { name: String },
    /// Record a consumer group's offsets.
    CommitOffsets {
        group: String,
        offsets: Vec<OffsetCommit>,
    },
    /// Roll back the transaction of the half message at `half` (if still undecided, with this
    /// msg_id and producer group). `decided_ms` is the proposing leader's clock.
    RollbackTransaction {
        half: u64,
        msg_id: String,
        producer_group: String,
        reason: String,
        decided_ms: u64,
    },
    /// The leader's checker asks (or is about to ask) a producer about the transaction at
    /// `half`: its check count becomes `checks` and the next check is due at `next_check_ms`
    /// (leader clock). Ignored once decided, and when it would not raise the count (then the
    /// outcome says `NotRaised`).
    CheckTransaction {
        half: u64,
        msg_id: String,
        checks: u32,
        next_check_ms: u64,
    },
    /// Recall the pending timer `(due_ms, position)`: its delivery copies are refused from
    /// now on (see `raftmq_store::timer`).
    RecallTimer { due_ms: u64, position: u64 },
    /// Create or update a consumer group's configuration.
    PutGroup(GroupSpec),
    /// POP: hands out up to `max` messages of `queue_id` to consumer `group` until
    /// `now_ms + invisible_ms` (leader clock): first those in flight whose time ran out
    /// (delivered again, attempts + 1), then new ones from the group's cursor (a group new
    /// to the queue starts at `start_offset`). `retained_from` is the queue's first retained
    /// offset as the proposing leader saw it: in-flight messages below it are dropped and the
    /// cursor raised to it. Both come from the leader, never from the applying replica's
    /// store, whose retention may be elsewhere. See [`crate::pop_apply`].
    PopClaim {
        group: String,
        topic: String,
        queue_id: u32,
        max: u32,
        now_ms: u64,
        invisible_ms: u64,
        start_offset: u64,
        retained_from: u64,
        /// The group consumes in FIFO order: the queue is held while a message handed out
        /// is neither acknowledged nor visible again; then the unacknowledged ones are
        /// handed out again, in order, before anything new.
        #[serde(default)]
        fifo: bool,
    },
    /// POP: the message at `offset`, handed out under receipt `epoch`, is consumed.
    PopAck {
        group: String,
        topic: String,
        queue_id: u32,
        offset: u64,
        epoch: u64,
    },
    /// POP: the message at `offset` under receipt `epoch` becomes visible at
    /// `visible_at_ms` instead (a nack with backoff, a renewal); its receipt is replaced.
    PopChangeInvisible {
        group: String,
        topic: String,
        queue_id: u32,
        offset: u64,
        epoch: u64,
        visible_at_ms: u64,
    },
}

/// A consumer group's configuration as replicated (see `raftmq_store::groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    /// 0: the broker's default.
    pub max_reconsume_times: u32,
    /// Empty: the broker's default backoff.
    pub retry_backoff_ms: Vec<u64>,
    /// A group without a committed offset starts at the first retained message (else at
    /// the end).
    pub consume_first: bool,
    /// RocketMQ 5 FIFO consumption (see `raftmq_store::groups`).
    #[serde(default)]
    pub fifo: bool,
}

impl GroupSpec {
    /// The store's form.
    pub fn to_config(&self) -> raftmq_store::groups::GroupConfig {
        raftmq_store::groups::GroupConfig {
            name: self.name.clone(),
            max_reconsume_times: self.max_reconsume_times,
            retry_backoff_ms: self.retry_backoff_ms.clone(),
            consume_from: if self.consume_first {
                raftmq_store::groups::GroupConsumeFrom::First
            } else {
                raftmq_store::groups::GroupConsumeFrom::Last
            },
            fifo: self.fifo,
        }
    }
}

/// A topic's configuration as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    /// Absent in entries written before topics had types: `Mixed`.
    #[serde(default)]
    pub message_type: raftmq_store::meta::TopicMessageType,
}

/// One queue's committed consumer offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    pub topic: String,
    pub queue_id: u32,
    pub offset: QueueOffset,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Messages { batch, .. } => write!(f, "Messages({} bytes)", batch.len()),
            Command::Meta(m) => write!(f, "{m:?}"),
        }
    }
}

/// What apply assigned to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedOffset {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: QueueOffset,
    /// CommitLog position of the message (the same on every replica).
    pub position: Position,
    pub size: u32,
}

/// What applying a transaction decision (a commit message or a rollback) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// This entry decided the transaction.
    Decided,
    /// It was already decided (`commit` says how); nothing changed.
    AlreadyDecided { commit: bool },
    /// No transaction at that position (or it was forgotten); nothing changed.
    NotFound,
    /// The transaction has another msg_id or producer group; nothing changed.
    Mismatch,
    /// A check count not above the recorded one (a checker that read the table before an
    /// earlier check was applied: a new leader still applying its predecessor's entries);
    /// nothing changed, and that check must not be asked.
    NotRaised,
}

/// What applying a timer recall did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerOutcome {
    /// The timer was pending: it will never be delivered.
    Recalled,
    /// The timer was delivered (or recalled) already; nothing changed.
    NotPending,
}

/// The state machine's answer to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandResult {
    /// Queue offsets of the entry's messages, in batch order (half messages: in the half
    /// queue).
    pub assigned: Vec<AssignedOffset>,
    /// For a transaction decision: what it did.
    #[serde(default)]
    pub txn: Option<TxnOutcome>,
    /// For a timer recall: what it did.
    #[serde(default)]
    pub timer: Option<TimerOutcome>,
    /// For a POP command: what it did.
    #[serde(default)]
    pub pop: Option<PopOutcome>,
}

/// What applying a POP command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PopOutcome {
    /// Handed out (possibly nothing), by offset.
    Claimed(Vec<PopClaimed>),
    /// Acknowledged: the message left the in-flight table.
    Acked,
    /// Its invisible time changed; the new receipt's epoch.
    Changed { epoch: u64 },
    /// No message in flight at that offset under that epoch (acknowledged already, or the
    /// receipt was replaced): nothing changed.
    Stale,
}

/// One message a claim handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopClaimed {
    pub offset: u64,
    pub epoch: u64,
    pub attempts: u32,
    pub visible_at_ms: u64,
}

/// An entry in its record form: what is written to the CommitLog and sent to followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEntry {
    pub term: u64,
    pub index: u64,
    pub kind: RecordKind,
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn json_payload<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![JSON_VERSION];
    // Serializing plain data structs to a Vec cannot fail.
    serde_json::to_writer(&mut out, v).expect("plain data serializes");
    out
}

fn from_json<T: for<'de> Deserialize<'de>>(payload: &[u8], what: &str) -> io::Result<T> {
    match payload.split_first() {
        Some((&JSON_VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|e| bad(format!("{what}: {e}")))
        }
        Some((v, _)) => Err(bad(format!("{what}: unknown version {v}"))),
        None => Err(bad(format!("{what}: empty payload"))),
    }
}

impl EncodedEntry {
    /// The record form of `entry`.
    pub fn encode(entry: &Entry) -> EncodedEntry {
        let (kind, timestamp_ms, payload) = match &entry.payload {
            EntryPayload::Blank => (RAFT_BLANK, 0, Vec::new()),
            EntryPayload::Normal(Command::Messages {
                timestamp_ms,
                batch,
            }) => (RecordKind::MESSAGES, *timestamp_ms, batch.clone()),
            EntryPayload::Normal(Command::Meta(m)) => (COMMAND, 0, json_payload(m)),
            EntryPayload::Membership(m) => (MEMBERSHIP, 0, json_payload(m)),
        };
        EncodedEntry {
            term: entry.log_id.leader_id.term,
            index: entry.log_id.index,
            kind,
            timestamp_ms,
            payload,
        }
    }

    /// The openraft entry this record holds; errors (never panics) on anything malformed.
    pub fn decode(self) -> io::Result<Entry> {
        let payload = match self.kind {
            RecordKind::MESSAGES => EntryPayload::Normal(Command::Messages {
                timestamp_ms: self.timestamp_ms,
                batch: self.payload,
            }),
            RAFT_BLANK if self.payload.is_empty() => EntryPayload::Blank,
            RAFT_BLANK => return Err(bad("blank entry with a payload")),
            COMMAND => EntryPayload::Normal(Command::Meta(from_json(&self.payload, "command")?)),
            MEMBERSHIP => {
                let m: Membership<NodeId, openraft::impls::BasicNode> =
                    from_json(&self.payload, "membership")?;
                EntryPayload::Membership(valid_membership(m)?)
            }
            other => return Err(bad(format!("unknown entry kind {}", other.0))),
        };
        Ok(Entry {
            log_id: log_id(self.term, self.index),
            payload,
        })
    }

    /// As the store appends it.
    pub fn as_ref(&self) -> raftmq_store::EntryRef<'_> {
        raftmq_store::EntryRef {
            term: self.term,
            index: LogIndex(self.index),
            kind: self.kind,
            timestamp_ms: self.timestamp_ms,
            payload: &self.payload,
        }
    }
}

/// `m` as decoded, if it is a membership openraft can use: deserializing skips the checks
/// `Membership::new` makes (every voter has a node), and an empty joint config, or an empty
/// config in it, would make any set of nodes a quorum.
fn valid_membership(
    m: Membership<NodeId, openraft::impls::BasicNode>,
) -> io::Result<Membership<NodeId, openraft::impls::BasicNode>> {
    let configs = m.get_joint_config().clone();
    if configs.is_empty() || configs.iter().any(BTreeSet::is_empty) {
        return Err(bad("membership: an empty voter set"));
    }
    let nodes: BTreeMap<NodeId, openraft::impls::BasicNode> =
        m.nodes().map(|(id, n)| (*id, n.clone())).collect();
    Membership::new(configs, nodes).map_err(|e| bad(format!("membership: {e}")))
}

/// A log id from its parts.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(
        openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(term),
        index,
    )
}

/// JSON with a version byte, for small Raft values kept in the MetaStore.
pub(crate) fn encode_value<T: Serialize>(v: &T) -> Vec<u8> {
    json_payload(v)
}

/// Inverse of [`encode_value`].
pub(crate) fn decode_value<T: for<'de> Deserialize<'de>>(b: &[u8], what: &str) -> io::Result<T> {
    from_json(b, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_written_before_types_is_mixed() {
        let old = br#"{"PutTopic":{"name":"T","read_queue_nums":4,"write_queue_nums":4,"perm":6}}"#;
        let mut payload = vec![JSON_VERSION];
        payload.extend_from_slice(old);
        let m: MetaCommand = from_json(&payload, "meta").unwrap();
        let MetaCommand::PutTopic(t) = m else {
            panic!("a topic: {m:?}")
        };
        assert_eq!(t.message_type, raftmq_store::meta::TopicMessageType::Mixed);
        let typed = MetaCommand::PutTopic(TopicSpec {
            message_type: raftmq_store::meta::TopicMessageType::Transaction,
            ..t
        });
        assert_eq!(
            from_json::<MetaCommand>(&json_payload(&typed), "meta").unwrap(),
            typed
        );
    }

    #[test]
    fn entries_round_trip_through_records() {
        let entries = [
            Entry {
                log_id: log_id(3, 7),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(3, 8),
                payload: EntryPayload::Normal(Command::Messages {
                    timestamp_ms: 42,
                    batch: vec![1, 2, 3],
                }),
            },
            Entry {
                log_id: log_id(4, 9),
                payload: EntryPayload::Normal(Command::Meta(MetaCommand::DeleteTopic {
                    name: "t".into(),
                })),
            },
        ];
        for e in entries {
            let enc = EncodedEntry::encode(&e);
            assert_eq!(enc.clone().decode().expect("decodes"), e);
        }
    }

    fn json_bytes(text: &str) -> Vec<u8> {
        let mut b = vec![JSON_VERSION];
        b.extend_from_slice(text.as_bytes());
        b
    }

    #[test]
    fn malformed_records_are_errors() {
        let base = EncodedEntry {
            term: 1,
            index: 1,
            kind: COMMAND,
            timestamp_ms: 0,
            payload: vec![],
        };
        for (kind, payload) in [
            (COMMAND, vec![]),
            (COMMAND, vec![9, b'{', b'}']),
            (COMMAND, vec![1, b'{']),
            (RAFT_BLANK, vec![0]),
            (MEMBERSHIP, vec![1, b'[']),
            // Decodes as JSON, but no usable membership: a voter without a node, no voter set,
            // an empty voter set.
            (MEMBERSHIP, json_bytes(r#"{"configs":[[1]],"nodes":{}}"#)),
            (MEMBERSHIP, json_bytes(r#"{"configs":[],"nodes":{}}"#)),
            (
                MEMBERSHIP,
                json_bytes(r#"{"configs":[[]],"nodes":{"1":{"addr":"a"}}}"#),
            ),
            (RecordKind(77), vec![]),
        ] {
            let e = EncodedEntry {
                kind,
                payload,
                ..base.clone()
            };
            let shown = format!("{:?}", e.payload);
            assert!(e.decode().is_err(), "{shown}");
        }
    }
}
