//! The Raft layer's decoders — log records into openraft entries, the append requests and
//! snapshot metadata a peer sends, the values kept in the MetaStore — fed arbitrary bytes and
//! mutated valid encodings (`raftmq_testkit::fuzz`): a value or an error, never a panic,
//! never an allocation past the bound. `RAFTMQ_FUZZ_CASES=1000000 cargo test --release -p
//! raftmq-raft fuzz` for millions of cases.

use std::collections::{BTreeMap, BTreeSet};

use openraft::entry::EntryPayload;
use openraft::impls::BasicNode;
use prost::Message as _;
use raftmq_store::RecordKind;
use raftmq_testkit::fuzz::{self, Tracking, alloc_bound};

use crate::network::{entry_from, pb, pb_entry, vote_from};
use crate::state_machine::SnapshotState;
use crate::types::{
    Command, EncodedEntry, Entry, LogId, MetaCommand, SnapshotMeta, TopicSpec, Vote, decode_value,
    encode_value, log_id,
};

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// JSON values and protobuf messages hold their input's strings: a few times its length.
fn bound() -> impl Fn(usize) -> usize {
    alloc_bound(16 << 10)
}

fn membership() -> openraft::Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = (1..=3)
        .map(|i| {
            (
                i,
                BasicNode {
                    addr: format!("127.0.0.1:{}", 10910 + i),
                },
            )
        })
        .collect();
    openraft::Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).expect("valid")
}

fn entries() -> Vec<Entry> {
    vec![
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
            payload: EntryPayload::Normal(Command::Meta(MetaCommand::PutTopic(TopicSpec {
                name: "T".into(),
                read_queue_nums: 8,
                write_queue_nums: 8,
                perm: 6,
                message_type: raftmq_store::meta::TopicMessageType::Delay,
            }))),
        },
        Entry {
            log_id: log_id(4, 10),
            payload: EntryPayload::Normal(Command::Meta(MetaCommand::DeleteTopic {
                name: "t".into(),
            })),
        },
        Entry {
            log_id: log_id(4, 11),
            payload: EntryPayload::Membership(membership()),
        },
        Entry {
            log_id: log_id(4, 12),
            payload: EntryPayload::Normal(Command::Meta(MetaCommand::PopClaim {
                group: "G".into(),
                topic: "T".into(),
                queue_id: 1,
                max: 32,
                now_ms: 1_000,
                invisible_ms: 30_000,
                start_offset: 0,
                retained_from: 0,
                fifo: true,
            })),
        },
        Entry {
            log_id: log_id(4, 13),
            payload: EntryPayload::Normal(Command::Meta(MetaCommand::PopChangeInvisible {
                group: "G".into(),
                topic: "T".into(),
                queue_id: 1,
                offset: 5,
                epoch: 12,
                visible_at_ms: 9_000,
            })),
        },
    ]
}

#[test]
fn fuzz_log_records_into_entries() {
    // A record as the CommitLog scan hands it over: its kind byte, then its payload.
    let valid: Vec<Vec<u8>> = entries()
        .iter()
        .map(|e| {
            let enc = EncodedEntry::encode(e);
            let mut b = vec![enc.kind.0];
            b.extend_from_slice(&enc.payload);
            b
        })
        .collect();
    fuzz::decoder("raft record", &valid, bound(), |b| {
        let (&kind, payload) = b.split_first().ok_or("empty")?;
        EncodedEntry {
            term: 4,
            index: 9,
            kind: RecordKind(kind),
            timestamp_ms: 1,
            payload: payload.to_vec(),
        }
        .decode()
        .map(drop)
        .map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_append_requests_from_a_peer() {
    let request = |entries: Vec<Entry>| pb::AppendEntriesRequest {
        group: Some(pb::GroupId {
            name: "g1".into(),
            segment_bytes: 1 << 30,
        }),
        vote: Some(pb::Vote {
            term: 4,
            node_id: 1,
            committed: true,
        }),
        prev_log_id: Some(pb::LogId { term: 3, index: 6 }),
        leader_commit: Some(pb::LogId { term: 3, index: 6 }),
        entries: entries
            .iter()
            .map(|e| pb_entry(EncodedEntry::encode(e)))
            .collect(),
    };
    let valid = vec![
        request(entries()).encode_to_vec(),
        request(Vec::new()).encode_to_vec(),
    ];
    fuzz::decoder("AppendEntriesRequest", &valid, bound(), |b| {
        let r = pb::AppendEntriesRequest::decode(b).map_err(|e| e.to_string())?;
        vote_from(r.vote).map_err(|e| e.to_string())?;
        for e in r.entries {
            entry_from(e).map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    let votes = vec![
        pb::VoteRequest {
            group: Some(pb::GroupId {
                name: "g1".into(),
                segment_bytes: 1 << 30,
            }),
            vote: Some(pb::Vote {
                term: 5,
                node_id: 2,
                committed: false,
            }),
            last_log_id: Some(pb::LogId { term: 4, index: 11 }),
            leadership_transfer: false,
        }
        .encode_to_vec(),
    ];
    fuzz::decoder("VoteRequest", &votes, bound(), |b| {
        let r = pb::VoteRequest::decode(b).map_err(|e| e.to_string())?;
        vote_from(r.vote).map(drop).map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_stored_and_sent_values() {
    let vote = Vote::new_committed(4, 1);
    fuzz::decoder("vote value", &[encode_value(&vote)], bound(), |b| {
        decode_value::<Vote>(b, "vote")
    });
    let id: LogId = log_id(4, 11);
    fuzz::decoder("log id value", &[encode_value(&id)], bound(), |b| {
        decode_value::<LogId>(b, "log id")
    });
    let meta = SnapshotMeta {
        last_log_id: Some(id),
        last_membership: openraft::StoredMembership::new(Some(id), membership()),
    };
    fuzz::decoder("snapshot meta", &[encode_value(&meta)], bound(), |b| {
        decode_value::<SnapshotMeta>(b, "snapshot meta")
    });
    let state = SnapshotState {
        last_log_id: Some(id),
        membership: openraft::StoredMembership::new(Some(id), membership()),
        topics: vec![("T".into(), 8, 8, 6)],
        topic_types: vec![("T".into(), raftmq_store::meta::TopicMessageType::Fifo)],
        consumer_offsets: vec![("G".into(), "T".into(), 0, raftmq_store::QueueOffset(5))],
        queue_ends: vec![("T".into(), 0, 9)],
        transactions: vec!["00ff".into()],
        timer_cursor: Some("1000:77".into()),
        timers_recalled: vec!["1001:78".into()],
        groups: vec![("G".into(), "01".into())],
        pop_cursors: vec![("G".into(), "T".into(), 0, 7)],
        pop_inflight: vec![("G".into(), "T".into(), 0, 6, 60_000, 42, 2)],
        boundary: None,
    };
    fuzz::decoder("snapshot state", &[encode_value(&state)], bound(), |b| {
        decode_value::<SnapshotState>(b, "snapshot")
    });
}
