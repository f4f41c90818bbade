//! Every decoder of the store's bytes — from the CommitLog, the index files, the registers
//! and the MetaStore's values — fed arbitrary bytes and mutated valid encodings
//! (`raftmq_testkit::fuzz`): a value or an error, never a panic, never an allocation past
//! the bound. `RAFTMQ_FUZZ_CASES=1000000 cargo test --release -p raftmq-store fuzz` for
//! millions of cases.

use std::collections::BTreeMap;

use raftmq_testkit::fuzz::{self, Tracking, alloc_bound};

use crate::commitlog::record::{self, EntryRef, HEADER_LEN, RECORD_MAX, RecordKind};
use crate::groups::{GroupConfig, GroupConsumeFrom};
use crate::indexfile::{self, Header};
use crate::message::{self, Message, MessageView};
use crate::meta::{self, Checkpoint, TopicConfig};
use crate::timer::{self, Timer, TimerKey};
use crate::txn::{Decision, TxnRecord};
use crate::types::{LogId, LogIndex, Position};

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// A decoder may hold its input's strings and bodies: a few times its length, plus a little.
fn bound() -> impl Fn(usize) -> usize {
    alloc_bound(4096)
}

fn messages() -> Vec<Message> {
    let mut props = BTreeMap::new();
    props.insert("UNIQ_KEY".to_string(), "abc".to_string());
    props.insert("DELAY".to_string(), "3".to_string());
    vec![
        Message {
            topic: "T".into(),
            queue_id: 3,
            tags: "TagA".into(),
            keys: vec!["k1".into(), "k2".into()],
            properties: props,
            born_timestamp_ms: 7,
            store_timestamp_ms: 9,
            born_host: "127.0.0.1:1".into(),
            msg_id: "M1".into(),
            body: b"hello".to_vec(),
            ..Message::default()
        },
        Message {
            topic: "%RETRY%G".into(),
            body: vec![0; 300],
            reconsume_times: 2,
            ..Message::default()
        },
        Message::default(),
    ]
}

#[test]
fn fuzz_message_decoders() {
    let ms = messages();
    let singles: Vec<Vec<u8>> = ms
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            m.encode_into(&mut out).expect("encode");
            out
        })
        .collect();
    fuzz::decoder("Message::decode", &singles, bound(), Message::decode);
    fuzz::decoder("MessageView::parse", &singles, bound(), |b| {
        let v = MessageView::parse(b)?;
        for p in v.properties() {
            p?;
        }
        v.to_message()
    });
    let batches: Vec<Vec<u8>> = vec![
        message::encode_batch(&ms).expect("batch"),
        message::encode_batch(&ms[..1]).expect("batch"),
    ];
    fuzz::decoder("split_batch", &batches, bound(), message::split_batch);
    fuzz::decoder("decode_batch", &batches, bound(), message::decode_batch);
}

#[test]
fn fuzz_commitlog_record_header() {
    // The scan reads a fixed header, then checks the crc over the record's bytes.
    let payload = message::encode_batch(&messages()).expect("batch");
    let mut valid = Vec::new();
    for (kind, payload) in [
        (RecordKind::MESSAGES, payload.as_slice()),
        (RecordKind(2), b"raft membership".as_slice()),
    ] {
        let mut out = Vec::new();
        record::encode_record(
            &mut out,
            &EntryRef {
                term: 3,
                index: LogIndex(42),
                kind,
                timestamp_ms: 5,
                payload,
            },
            0x1234,
        );
        valid.push(out);
    }
    let mut blank = Vec::new();
    record::encode_blank(&mut blank, 4096, 7);
    valid.push(blank);
    fuzz::decoder("commitlog record", &valid, bound(), |b| {
        let mut head = b.to_vec();
        head.resize(head.len().max(HEADER_LEN), 0);
        // The room left in the segment from the record's start (a blank runs to its end).
        let room = 1 << 20;
        let h = record::parse_header(&head, room).map_err(|e| e.to_string())?;
        record::check_version(&head, "seg", 0).map_err(|e| e.to_string())?;
        // A blank's crc covers its header only (its body is the segment's unused end).
        let covered = if h.kind == RecordKind::BLANK {
            HEADER_LEN
        } else {
            h.len as usize
        };
        let whole = head
            .get(..covered)
            .ok_or_else(|| "shorter than its length".to_string())?;
        assert!(h.kind == RecordKind::BLANK || h.len as usize <= RECORD_MAX);
        record::check_crc(&h, whole).map_err(|e| e.to_string())
    });
}

#[test]
fn fuzz_store_values() {
    let txn = |decision| TxnRecord {
        half: Position(0x0102),
        size: 77,
        msg_id: "M".into(),
        producer_group: "G".into(),
        topic: "T".into(),
        queue_id: 3,
        stored_ms: 5,
        checks: 2,
        next_check_ms: 9,
        decision,
    };
    let txns = vec![
        txn(None).encode(),
        txn(Some(Decision {
            commit: true,
            index: LogIndex(9),
            decided_ms: 11,
            reason: "check limit".into(),
        }))
        .encode(),
    ];
    fuzz::decoder("TxnRecord::decode", &txns, bound(), TxnRecord::decode);

    let key = TimerKey {
        due_ms: 1_000,
        position: Position(77),
    };
    let timers = vec![Timer { key, size: 300 }.encode()];
    fuzz::decoder("Timer::decode", &timers, bound(), |b| Timer::decode(key, b));
    let cursors = vec![timer::encode_cursor(key)];
    fuzz::decoder("timer cursor", &cursors, bound(), timer::decode_cursor);

    let groups = vec![
        GroupConfig {
            name: "G".into(),
            max_reconsume_times: 3,
            retry_backoff_ms: vec![1_000, 5_000],
            consume_from: GroupConsumeFrom::First,
            fifo: false,
        }
        .encode(),
        GroupConfig {
            name: "H".into(),
            max_reconsume_times: 0,
            retry_backoff_ms: vec![],
            consume_from: GroupConsumeFrom::Last,
            fifo: true,
        }
        .encode(),
    ];
    let inflight = vec![
        crate::pop::Inflight {
            visible_at_ms: 60_000,
            epoch: 42,
            attempts: 3,
        }
        .encode(),
    ];
    fuzz::decoder(
        "pop::Inflight::decode",
        &inflight,
        bound(),
        crate::pop::Inflight::decode,
    );
    fuzz::decoder("GroupConfig::decode", &groups, bound(), |b| {
        GroupConfig::decode("G", b)
    });

    let topics = vec![
        TopicConfig {
            name: "T".into(),
            read_queue_nums: 8,
            write_queue_nums: 8,
            perm: meta::perm::READ | meta::perm::WRITE,
            message_type: meta::TopicMessageType::Mixed,
        }
        .encode(),
        TopicConfig {
            name: "T".into(),
            read_queue_nums: 8,
            write_queue_nums: 8,
            perm: meta::perm::READ | meta::perm::WRITE,
            message_type: meta::TopicMessageType::Transaction,
        }
        .encode(),
    ];
    fuzz::decoder("TopicConfig::decode", &topics, bound(), |b| {
        TopicConfig::decode("T", b)
    });
    let checkpoints = vec![
        Checkpoint::default().encode(),
        Checkpoint {
            log_first: LogIndex(5),
            dispatched_index: Some(LogIndex(9)),
            purged_index: Some(LogIndex(4)),
            ..Checkpoint::default()
        }
        .encode(),
    ];
    fuzz::decoder(
        "Checkpoint::decode",
        &checkpoints,
        bound(),
        Checkpoint::decode,
    );
    let ids = vec![meta::encode_log_id(&LogId {
        term: 2,
        node_id: 1,
        index: LogIndex(10),
    })];
    fuzz::decoder("log id", &ids, bound(), meta::decode_log_id);
}

#[test]
fn fuzz_fixed_size_headers() {
    // These are read as whole fixed-size blocks from their files: the input is cut or padded
    // to that size, as a read of the file would give.
    let fixed = |b: &[u8], n: usize| {
        let mut v = b.to_vec();
        v.resize(n, 0);
        v
    };
    let headers = vec![
        Header {
            slot_count: 64,
            max_entries: 512,
            count: 3,
            ..Header::default()
        }
        .encode(),
    ];
    fuzz::decoder("IndexFile header", &headers, bound(), |b| {
        Header::decode(&fixed(b, indexfile::HEADER_LEN as usize), "index")
    });
    let slots = vec![crate::slotfile::encode(3, 99)];
    fuzz::decoder("slot", &slots, bound(), |b| {
        crate::slotfile::decode(&fixed(b, crate::slotfile::SLOT_LEN), "slot", 0)
    });
}
