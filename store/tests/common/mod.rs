//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use raftmq_store::consumequeue::QueueId;
use raftmq_store::message::encode_batch;
use raftmq_store::{EntryRef, LogId, LogIndex, Message, RecordKind, SimDisk, Store, StoreConfig};

pub fn open(disk: &SimDisk) -> Store {
    Store::open(Arc::new(disk.clone()), StoreConfig::for_tests()).expect("open store")
}

pub fn msg(topic: &str, queue_id: u32, body: &[u8], ts: u64) -> Message {
    let id = String::from_utf8_lossy(&body[..body.len().min(24)]).into_owned();
    Message {
        topic: topic.into(),
        queue_id,
        tags: format!("tag{}", body.len() % 3),
        keys: vec![format!("key-{id}")],
        properties: BTreeMap::new(),
        born_timestamp_ms: ts,
        store_timestamp_ms: ts,
        born_host: "127.0.0.1:1".into(),
        msg_id: format!("id-{id}"),
        body: body.to_vec(),
        ..Message::default()
    }
}

/// Appends one Messages entry; returns its index.
pub fn append_batch(store: &mut Store, term: u64, batch: &[Message]) -> LogIndex {
    let next = store.log_bounds().unwrap().1.map_or(1, |(i, _)| i.0 + 1);
    let payload = encode_batch(batch).unwrap();
    let ts = batch
        .iter()
        .map(|m| m.store_timestamp_ms)
        .max()
        .unwrap_or(0);
    let e = EntryRef {
        term,
        index: LogIndex(next),
        kind: RecordKind::MESSAGES,
        timestamp_ms: ts,
        payload: &payload,
    };
    store.append(&[e]).unwrap();
    LogIndex(next)
}

/// Records `index` as applied, as the state machine does.
pub fn set_applied(store: &Store, index: LogIndex, durable: bool) {
    let mut txn = store.meta().begin(durable).unwrap();
    txn.set_applied(&LogId {
        term: 1,
        node_id: 1,
        index,
    })
    .unwrap();
    txn.commit().unwrap();
}

/// Every queue's messages, read back through the ConsumeQueue, in offset order.
pub fn queue_contents(store: &Store) -> BTreeMap<QueueId, Vec<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (q, min, max) in store.queues() {
        let mut v = Vec::new();
        for o in min.0..max.0 {
            v.push(
                store
                    .read_queue_message(&q, raftmq_store::QueueOffset(o))
                    .unwrap()
                    .body,
            );
        }
        out.insert(q, v);
    }
    out
}
