//! Behaviour of the whole store: dispatch, queues, time lookup, key queries, truncation,
//! purge, retention, checkpoints and the metadata tables.

mod common;

use std::sync::Arc;

use raftmq_store::consumequeue::QueueId;
use raftmq_store::indexfile::KeyQuery;
use raftmq_store::meta::TopicConfig;
use raftmq_store::{LogIndex, Position, QueueOffset, SimDisk, Store, StoreConfig, StoreError};

fn q(topic: &str, id: u32) -> QueueId {
    QueueId {
        topic: topic.into(),
        queue_id: id,
    }
}

#[test]
fn dispatch_assigns_offsets_in_log_order_per_queue() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    let i1 = common::append_batch(
        &mut s,
        1,
        &[common::msg("T", 0, b"a", 10), common::msg("T", 1, b"b", 11)],
    );
    let i2 = common::append_batch(&mut s, 1, &[common::msg("T", 0, b"c", 12)]);
    let assigned = s.dispatch_upto(i2).unwrap();
    let got: Vec<(LogIndex, QueueId, u64)> = assigned
        .iter()
        .map(|a| (a.index, a.queue.clone(), a.offset.0))
        .collect();
    assert_eq!(
        got,
        vec![(i1, q("T", 0), 0), (i1, q("T", 1), 0), (i2, q("T", 0), 1)]
    );
    // Idempotent: dispatching again assigns nothing new.
    assert!(s.dispatch_upto(i2).unwrap().is_empty());
    assert_eq!(s.queue_bounds(&q("T", 0)), (QueueOffset(0), QueueOffset(2)));
    assert_eq!(
        s.read_queue_message(&q("T", 0), QueueOffset(1))
            .unwrap()
            .body,
        b"c"
    );
    let e = s.cq_entry(&q("T", 1), QueueOffset(0)).unwrap();
    assert_eq!(e.tag_hash, raftmq_store::message::tag_hash("tag1"));
    assert!(matches!(
        s.cq_entry(&q("T", 1), QueueOffset(1)),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(s.cq_entry(&q("nope", 0), QueueOffset(0)).is_err());
}

#[test]
fn consume_queue_time_lookup() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    for (i, ts) in [100u64, 200, 200, 300, 400].iter().enumerate() {
        common::append_batch(
            &mut s,
            1,
            &[common::msg("T", 0, format!("m{i}").as_bytes(), *ts)],
        );
    }
    s.dispatch_upto(LogIndex(5)).unwrap();
    let queue = q("T", 0);
    let at = |ts| s.offset_at_time(&queue, ts).unwrap().0;
    assert_eq!(at(0), 0);
    assert_eq!(at(100), 0);
    assert_eq!(at(101), 1);
    assert_eq!(at(200), 1);
    assert_eq!(at(250), 3);
    assert_eq!(at(400), 4);
    assert_eq!(at(401), 5, "past the newest message: the max offset");
}

#[test]
fn index_file_collisions_and_newest_first() {
    let disk = SimDisk::new();
    // 64 slots (test config): 200 distinct keys must collide in slots.
    let mut s = common::open(&disk);
    for i in 0..200u64 {
        let mut m = common::msg("T", 0, format!("b{i}").as_bytes(), 1000 + i);
        m.keys = vec![format!("k{}", i % 50), "shared".into()];
        common::append_batch(&mut s, 1, &[m]);
    }
    s.dispatch_upto(LogIndex(200)).unwrap();
    // Each k{n} was used 4 times; newest first.
    let hits = s.query_by_key(&KeyQuery::new("T", "k7", 10)).unwrap();
    let bodies: Vec<Vec<u8>> = hits.iter().map(|(_, m)| m.body.clone()).collect();
    assert_eq!(
        bodies,
        vec![
            b"b157".to_vec(),
            b"b107".to_vec(),
            b"b57".to_vec(),
            b"b7".to_vec()
        ]
    );
    // Bounded by max, newest first.
    let hits = s.query_by_key(&KeyQuery::new("T", "shared", 3)).unwrap();
    let bodies: Vec<Vec<u8>> = hits.iter().map(|(_, m)| m.body.clone()).collect();
    assert_eq!(
        bodies,
        vec![b"b199".to_vec(), b"b198".to_vec(), b"b197".to_vec()]
    );
    // Time range.
    let hits = s
        .query_by_key(&KeyQuery::new("T", "k7", 10).between(1100, 1160))
        .unwrap();
    assert_eq!(hits.len(), 2);
    // By unique id, and other topics do not match.
    assert_eq!(
        s.query_by_key(&KeyQuery::new("T", "id-b42", 5))
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.query_by_key(&KeyQuery::new("U", "k7", 5))
            .unwrap()
            .is_empty()
    );
    assert!(
        s.query_by_key(&KeyQuery::new("T", "absent", 5))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn index_files_roll_and_survive_restart() {
    let disk = SimDisk::new();
    let mut cfg = StoreConfig::for_tests();
    cfg.index_max_entries = 16;
    let mut s = Store::open(Arc::new(disk.clone()), cfg.clone()).unwrap();
    for i in 0..40u64 {
        common::append_batch(
            &mut s,
            1,
            &[common::msg("T", 0, format!("r{i}").as_bytes(), 10 + i)],
        );
    }
    s.dispatch_upto(LogIndex(20)).unwrap();
    common::set_applied(&s, LogIndex(20), true);
    s.checkpoint().unwrap();
    s.dispatch_upto(LogIndex(40)).unwrap();
    common::set_applied(&s, LogIndex(40), true);
    drop(s);
    disk.power_loss(3);
    let s = Store::open(Arc::new(disk.clone()), cfg).unwrap();
    // Entries rebuilt after the checkpoint are found again, old ones too.
    for i in [0u64, 19, 20, 39] {
        let hits = s
            .query_by_key(&KeyQuery::new("T", &format!("key-r{i}"), 5))
            .unwrap();
        assert_eq!(hits.len(), 1, "key r{i}");
    }
}

#[test]
fn truncate_after_then_append() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    for i in 0..5u64 {
        common::append_batch(
            &mut s,
            1,
            &[common::msg("T", 0, format!("x{i}").as_bytes(), i)],
        );
    }
    s.dispatch_upto(LogIndex(2)).unwrap();
    s.checkpoint().unwrap();
    s.truncate_after(Some(LogIndex(3))).unwrap();
    assert_eq!(s.log_bounds().unwrap().1, Some((LogIndex(3), 1)));
    assert!(s.read_entry(LogIndex(4)).is_err());
    let i = common::append_batch(&mut s, 2, &[common::msg("T", 0, b"new4", 9)]);
    assert_eq!(i, LogIndex(4));
    s.sync().unwrap();
    drop(s);
    disk.power_loss(0);
    let mut s = common::open(&disk);
    assert_eq!(s.log_bounds().unwrap().1, Some((LogIndex(4), 2)));
    s.dispatch_upto(LogIndex(4)).unwrap();
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|o| {
            s.read_queue_message(&q("T", 0), QueueOffset(o))
                .unwrap()
                .body
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            b"x0".to_vec(),
            b"x1".to_vec(),
            b"x2".to_vec(),
            b"new4".to_vec()
        ]
    );
}

#[test]
#[should_panic(expected = "would remove dispatched")]
fn truncating_dispatched_entries_is_a_broken_invariant() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    common::append_batch(&mut s, 1, &[common::msg("T", 0, b"a", 1)]);
    common::append_batch(&mut s, 1, &[common::msg("T", 0, b"b", 1)]);
    s.dispatch_upto(LogIndex(2)).unwrap();
    let _ = s.truncate_after(Some(LogIndex(1)));
}

#[test]
fn truncate_below_the_checkpoint_then_crash() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    for i in 0..6u64 {
        common::append_batch(
            &mut s,
            1,
            &[common::msg("T", 0, format!("y{i}").as_bytes(), i)],
        );
    }
    s.checkpoint().unwrap();
    s.truncate_after(Some(LogIndex(2))).unwrap();
    drop(s);
    disk.power_loss(5);
    let s = common::open(&disk);
    assert_eq!(s.log_bounds().unwrap().1.map(|x| x.0), Some(LogIndex(2)));
}

#[test]
fn purge_upto_forgets_indexes() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    for i in 0..10u64 {
        common::append_batch(
            &mut s,
            1,
            &[common::msg("T", 0, format!("p{i}").as_bytes(), i)],
        );
    }
    s.purge_upto(LogIndex(4)).unwrap();
    assert_eq!(s.log_bounds().unwrap().0, LogIndex(5));
    assert_eq!(s.purged(), Some(LogIndex(4)));
    assert!(s.read_entry(LogIndex(4)).is_err());
    assert!(s.read_entry(LogIndex(5)).is_ok());
    drop(s);
    let s = common::open(&disk);
    assert_eq!(s.log_bounds().unwrap().0, LogIndex(5));
    assert_eq!(s.purged(), Some(LogIndex(4)));
}

#[test]
fn retention_deletes_old_applied_segments_and_moves_queue_minimums() {
    let disk = SimDisk::new();
    let mut cfg = StoreConfig::for_tests();
    cfg.file_reserved_time_ms = 1000;
    let mut s = Store::open(Arc::new(disk.clone()), cfg.clone()).unwrap();
    let body = vec![b'z'; 3000];
    // ~20 records per 64 KiB segment; timestamps 1 ms apart from 10_000.
    for i in 0..100u64 {
        let mut m = common::msg("T", 0, &body, 10_000 + i);
        m.keys = vec![format!("rk{i}")];
        common::append_batch(&mut s, 1, &[m]);
    }
    let segments = s.reader().segment_starts().len();
    assert!(segments >= 4, "{segments}");
    // Nothing is applied yet: nothing may go, however old.
    assert_eq!(s.delete_expired(u64::MAX).unwrap().segments_deleted, 0);
    s.dispatch_upto(LogIndex(100)).unwrap();
    // Not old enough.
    assert_eq!(s.delete_expired(10_000).unwrap().segments_deleted, 0);
    let r = s.delete_expired(10_000 + 1000 + 45).unwrap();
    assert!(r.segments_deleted >= 1, "{r:?}");
    assert_eq!(s.reader().first(), r.first_position);
    let (min, max) = s.queue_bounds(&q("T", 0));
    assert!(min.0 > 0 && max.0 == 100, "{min} {max}");
    let e = s.cq_entry(&q("T", 0), min).unwrap();
    assert!(e.position >= r.first_position);
    assert!(s.cq_entry(&q("T", 0), QueueOffset(min.0 - 1)).is_err());
    assert!(s.read_entry(s.log_bounds().unwrap().0).is_ok());
    // Everything old: all but the newest segment go; queries skip deleted data.
    let r2 = s.delete_expired(u64::MAX).unwrap();
    assert_eq!(s.reader().segment_starts().len(), 1, "{r2:?}");
    assert!(
        s.query_by_key(&KeyQuery::new("T", "rk0", 5))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.query_by_key(&KeyQuery::new("T", "rk99", 5))
            .unwrap()
            .len(),
        1
    );
    let first = s.reader().first();
    drop(s);
    let s = Store::open(Arc::new(disk.clone()), cfg).unwrap();
    assert_eq!(s.reader().first(), first);
    assert_eq!(s.queue_bounds(&q("T", 0)).1, QueueOffset(100));
    s.verify().unwrap();
}

#[test]
fn redispatch_after_crash_uses_the_applied_index() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    for i in 0..8u64 {
        common::append_batch(
            &mut s,
            1,
            &[common::msg(
                "T",
                (i % 2) as u32,
                format!("d{i}").as_bytes(),
                i,
            )],
        );
    }
    s.sync().unwrap();
    s.dispatch_upto(LogIndex(3)).unwrap();
    s.checkpoint().unwrap();
    s.dispatch_upto(LogIndex(6)).unwrap();
    common::set_applied(&s, LogIndex(6), true);
    drop(s);
    disk.power_loss(9);
    let s = common::open(&disk);
    assert_eq!(s.dispatched(), Some(LogIndex(6)));
    assert_eq!(s.queue_bounds(&q("T", 0)).1, QueueOffset(3));
    assert_eq!(s.queue_bounds(&q("T", 1)).1, QueueOffset(3));
    assert_eq!(
        s.read_queue_message(&q("T", 1), QueueOffset(2))
            .unwrap()
            .body,
        b"d5"
    );
}

#[test]
fn meta_tables_round_trip_and_survive_power_loss() {
    let disk = SimDisk::new();
    let s = common::open(&disk);
    let t = TopicConfig {
        name: "T".into(),
        read_queue_nums: 4,
        write_queue_nums: 4,
        perm: 6,
        message_type: raftmq_store::meta::TopicMessageType::Fifo,
    };
    let mut txn = s.meta().begin(true).unwrap();
    txn.put_topic(&t).unwrap();
    txn.set_consumer_offset("g", "T", 1, QueueOffset(42))
        .unwrap();
    txn.commit().unwrap();
    let mut txn = s.meta().begin(false).unwrap();
    txn.set_consumer_offset("g", "T", 1, QueueOffset(99))
        .unwrap();
    txn.commit().unwrap();
    assert_eq!(
        s.meta().consumer_offset("g", "T", 1).unwrap(),
        Some(QueueOffset(99))
    );
    drop(s);
    disk.power_loss(4);
    let s = common::open(&disk);
    assert_eq!(s.meta().topic("T").unwrap(), Some(t.clone()));
    assert_eq!(s.meta().topics().unwrap(), vec![t]);
    // The non-durable commit may or may not have survived; the durable one did.
    let off = s.meta().consumer_offset("g", "T", 1).unwrap();
    assert!(
        off == Some(QueueOffset(42)) || off == Some(QueueOffset(99)),
        "{off:?}"
    );
    let mut txn = s.meta().begin(true).unwrap();
    assert!(txn.delete_topic("T").unwrap());
    txn.commit().unwrap();
    assert!(s.meta().topic("T").unwrap().is_none());
    assert_eq!(s.meta().consumer_offsets().unwrap().len(), 1);
}

#[test]
fn oversized_entries_are_refused_and_store_nothing() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    let payload = vec![0u8; StoreConfig::for_tests().max_record_bytes as usize];
    let e = raftmq_store::EntryRef {
        term: 1,
        index: LogIndex(1),
        kind: raftmq_store::RecordKind::MESSAGES,
        timestamp_ms: 0,
        payload: &payload,
    };
    assert!(matches!(
        s.append(&[e]),
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(s.reader().written(), Position(0));
    assert_eq!(s.log_bounds().unwrap().1, None);
}

#[test]
fn invalid_configuration_is_refused_with_numbers() {
    let mut cfg = StoreConfig::for_tests();
    cfg.segment_bytes = cfg.max_record_bytes;
    let err = Store::open(Arc::new(SimDisk::new()), cfg).unwrap_err();
    assert!(
        err.to_string()
            .contains(&StoreConfig::for_tests().max_record_bytes.to_string()),
        "{err}"
    );
}

#[test]
fn a_messages_entry_that_does_not_decode_is_skipped_not_fatal() {
    let disk = SimDisk::new();
    let mut s = common::open(&disk);
    let junk = [1u8, 2, 3];
    let e = raftmq_store::EntryRef {
        term: 1,
        index: LogIndex(1),
        kind: raftmq_store::RecordKind::MESSAGES,
        timestamp_ms: 0,
        payload: &junk,
    };
    s.append(&[e]).unwrap();
    common::append_batch(&mut s, 1, &[common::msg("T", 0, b"ok", 1)]);
    let a = s.dispatch_upto(LogIndex(2)).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].offset, QueueOffset(0));
}

/// A store on a `LazyDisk` whose process dies (nothing dropped, nothing flushed) reopens on
/// the real disk with what it synced and nothing it did not: the chaos harness's power loss.
#[test]
fn a_store_on_a_lazy_disk_keeps_what_it_synced_through_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let disk = std::sync::Arc::new(raftmq_store::MmapDisk::open(dir.path()).unwrap());
    let mut store = raftmq_store::Store::open(
        std::sync::Arc::new(raftmq_store::LazyDisk::new(disk)),
        raftmq_store::StoreConfig::for_tests(),
    )
    .unwrap();
    for i in 0..5u64 {
        common::append_batch(
            &mut store,
            1,
            &[common::msg("T", 0, format!("synced {i}").as_bytes(), i)],
        );
    }
    store.sync().unwrap();
    for i in 5..9u64 {
        common::append_batch(
            &mut store,
            1,
            &[common::msg("T", 0, format!("lost {i}").as_bytes(), i)],
        );
    }
    assert_eq!(store.log_bounds().unwrap().1.map(|l| l.0.0), Some(9));
    // The process is killed: no destructor runs.
    std::mem::forget(store);
    let store = raftmq_store::Store::open(
        std::sync::Arc::new(raftmq_store::MmapDisk::open(dir.path()).unwrap()),
        raftmq_store::StoreConfig::for_tests(),
    )
    .unwrap();
    assert_eq!(
        store.log_bounds().unwrap().1.map(|l| l.0.0),
        Some(5),
        "exactly the synced entries"
    );
}
