//! `Store::reset_to`: a replica that installs a snapshot taken at a segment boundary throws
//! its log away and continues at the leader's chain point, so that every entry it receives
//! afterwards lands at the same position, with the same bytes and queue offsets.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use raftmq_store::commitlog::ChainPoint;
use raftmq_store::consumequeue::QueueId;
use raftmq_store::indexfile::{IndexCheckpoint, KeyQuery};
use raftmq_store::meta::{Checkpoint, TopicConfig};
use raftmq_store::store::ResetPoint;
use raftmq_store::{
    EntryRef, LogId, LogIndex, QueueOffset, SimDisk, Store, StoreConfig, StoreError,
};

fn q(topic: &str, id: u32) -> QueueId {
    QueueId {
        topic: topic.into(),
        queue_id: id,
    }
}

fn topic(name: &str) -> TopicConfig {
    TopicConfig {
        name: name.into(),
        read_queue_nums: 2,
        write_queue_nums: 2,
        perm: 6,
        message_type: Default::default(),
    }
}

/// A leader store holding `n` entries of one ~3 KB message each, alternating queues T/0 and
/// T/1 (about 20 entries per 64 KiB test segment), all dispatched.
fn leader(n: u64) -> Store {
    let mut s = common::open(&SimDisk::new());
    let body = vec![b'r'; 3000];
    for i in 0..n {
        let mut m = common::msg("T", (i % 2) as u32, &body, 10_000 + i);
        m.keys = vec![format!("k{i}")];
        m.msg_id = format!("id{i}");
        common::append_batch(&mut s, 1 + i / 40, &[m]);
    }
    s.dispatch_upto(LogIndex(n)).unwrap();
    s
}

/// The `nth` segment boundary of `s` (1 = the start of the second segment) and the queue
/// ends just before it.
fn boundary(s: &Store, nth: usize) -> ResetPoint {
    let last = s.log_bounds().unwrap().1.unwrap().0;
    let mut found = 0;
    for i in 1..=last.0 {
        if let Some(point) = s.segment_boundary_at(LogIndex(i)).unwrap() {
            found += 1;
            if found == nth {
                // One message per entry, alternating queues: entries 1..i-1 hold i-1 messages.
                let before = i - 1;
                let queue_ends =
                    BTreeMap::from([(q("T", 0), before.div_ceil(2)), (q("T", 1), before / 2)]);
                return ResetPoint {
                    log: point,
                    queue_ends,
                };
            }
        }
    }
    panic!("no boundary {nth} in {last} entries");
}

fn copy_entries(from: &Store, to: &mut Store, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let rec = from.read_entry(LogIndex(i)).unwrap();
        let e = EntryRef {
            term: rec.header.term,
            index: rec.header.index,
            kind: rec.header.kind,
            timestamp_ms: rec.header.timestamp_ms,
            payload: &rec.payload,
        };
        let loc = to.append(&[e]).unwrap();
        assert_eq!(loc[0].position, rec.position, "entry {i} landed elsewhere");
    }
}

fn applied_at(txn: &mut raftmq_store::meta::MetaTxn, index: LogIndex) -> raftmq_store::Result<()> {
    txn.set_applied(&LogId {
        term: 1,
        node_id: 0,
        index,
    })
}

/// Everything the follower holds from `first` on equals the leader: entries (bytes and
/// positions), queue entries and messages by key.
fn assert_same_from(
    leader: &Store,
    follower: &Store,
    first: LogIndex,
    ends: &BTreeMap<QueueId, u64>,
) {
    let last = leader.log_bounds().unwrap().1.unwrap().0;
    assert_eq!(follower.log_bounds().unwrap().1.unwrap().0, last);
    for i in first.0..=last.0 {
        assert_eq!(
            leader.read_entry(LogIndex(i)).unwrap(),
            follower.read_entry(LogIndex(i)).unwrap(),
            "entry {i}"
        );
    }
    for (queue, &end) in ends {
        let (min, max) = follower.queue_bounds(queue);
        assert_eq!(
            min,
            QueueOffset(end),
            "{queue:?} starts at the snapshot's end"
        );
        assert_eq!(max, leader.queue_bounds(queue).1, "{queue:?}");
        for o in min.0..max.0 {
            assert_eq!(
                follower.cq_entry(queue, QueueOffset(o)).unwrap(),
                leader.cq_entry(queue, QueueOffset(o)).unwrap(),
                "{queue:?} offset {o}"
            );
        }
    }
    let hits = follower
        .query_by_key(&KeyQuery::new("T", &format!("k{}", last.0 - 1), 4))
        .unwrap();
    assert_eq!(hits.len(), 1, "the newest message is indexed by key again");
    follower.verify().unwrap();
}

#[test]
fn reset_continues_the_log_at_identical_positions_and_survives_power_loss() {
    let a = leader(100);
    let point = boundary(&a, 2);
    let first = LogIndex(point.log.last_index.unwrap().0 + 1);
    assert!(first.0 > 30, "{first}");

    // The follower lags: it holds (and applied) only the first 5 entries.
    let disk = SimDisk::new();
    let mut b = common::open(&disk);
    copy_entries(&a, &mut b, 1..=5);
    b.dispatch_upto(LogIndex(5)).unwrap();
    {
        let mut txn = b.meta().begin(true).unwrap();
        txn.put_topic(&topic("Old")).unwrap();
        applied_at(&mut txn, LogIndex(5)).unwrap();
        txn.commit().unwrap();
    }
    b.checkpoint().unwrap();

    b.reset_to(&point, |txn| {
        txn.clear_topics()?;
        txn.put_topic(&topic("T"))?;
        applied_at(txn, LogIndex(first.0 - 1))
    })
    .unwrap();
    assert_eq!(b.log_bounds().unwrap(), (first, None));
    assert_eq!(b.reader().first(), point.log.position);
    assert_eq!(b.reader().written(), point.log.position);
    assert_eq!(b.purged(), Some(LogIndex(first.0 - 1)));
    assert_eq!(b.dispatched(), Some(LogIndex(first.0 - 1)));
    assert!(b.read_entry(LogIndex(5)).is_err(), "the old log is gone");
    let names: Vec<String> = b
        .meta()
        .topics()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["T"]);

    // Power loss right after the reset: it was durable.
    drop(b);
    disk.power_loss(3);
    let mut b = common::open(&disk);
    assert_eq!(b.log_bounds().unwrap(), (first, None));
    assert_eq!(
        b.queue_bounds(&q("T", 0)),
        (
            QueueOffset(point.queue_ends[&q("T", 0)]),
            QueueOffset(point.queue_ends[&q("T", 0)])
        )
    );

    // Replication delivers the rest; it lands where it landed on the leader.
    copy_entries(&a, &mut b, first.0..=100);
    let assigned = b.dispatch_upto(LogIndex(100)).unwrap();
    assert_eq!(assigned.len() as u64, 101 - first.0);
    assert_same_from(&a, &b, first, &point.queue_ends);
    b.sync().unwrap();
    {
        let mut txn = b.meta().begin(true).unwrap();
        applied_at(&mut txn, LogIndex(100)).unwrap();
        txn.commit().unwrap();
    }
    drop(b);
    disk.power_loss(4);
    let b = common::open(&disk);
    assert_same_from(&a, &b, first, &point.queue_ends);
}

#[test]
fn an_interrupted_reset_is_finished_at_open() {
    let a = leader(100);
    let point = boundary(&a, 1);
    let first = LogIndex(point.log.last_index.unwrap().0 + 1);
    // The follower holds everything the leader holds up to entry 60, applied.
    let disk = SimDisk::new();
    let mut b = common::open(&disk);
    copy_entries(&a, &mut b, 1..=60);
    b.dispatch_upto(LogIndex(60)).unwrap();
    common::set_applied(&b, LogIndex(60), true);
    b.checkpoint().unwrap();
    // The state a crash leaves right after reset_to's first durable commit: new checkpoint
    // and the pending mark, every old file still there.
    {
        let mut txn = b.meta().begin(true).unwrap();
        txn.set_reset_pending(true).unwrap();
        txn.clear_cq_ends().unwrap();
        txn.set_checkpoint(
            &Checkpoint {
                log: point.log,
                log_first: first,
                dispatched_index: Some(LogIndex(first.0 - 1)),
                dispatched_position: point.log.position,
                index: IndexCheckpoint::default(),
                purged_index: Some(LogIndex(first.0 - 1)),
            },
            &point.queue_ends,
        )
        .unwrap();
        applied_at(&mut txn, LogIndex(first.0 - 1)).unwrap();
        txn.commit().unwrap();
    }
    drop(b);
    disk.power_loss(5);
    let mut b = common::open(&disk);
    assert!(!b.meta().reset_pending().unwrap());
    assert_eq!(b.log_bounds().unwrap(), (first, None));
    assert_eq!(b.reader().first(), point.log.position);
    copy_entries(&a, &mut b, first.0..=100);
    b.dispatch_upto(LogIndex(100)).unwrap();
    assert_same_from(&a, &b, first, &point.queue_ends);
}

#[test]
fn bad_reset_points_are_refused_and_change_nothing() {
    let a = leader(40);
    let mut point = boundary(&a, 1);
    let disk = SimDisk::new();
    let mut b = common::open(&disk);
    copy_entries(&a, &mut b, 1..=3);
    let before = b.log_bounds().unwrap();
    point.log.position.0 += 1;
    let e = b.reset_to(&point, |_| Ok(())).unwrap_err();
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e}");
    let e = b
        .reset_to(
            &ResetPoint {
                log: ChainPoint::default(),
                queue_ends: BTreeMap::new(),
            },
            |_| Ok(()),
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e}");
    assert_eq!(b.log_bounds().unwrap(), before);
    assert!(!b.meta().reset_pending().unwrap());
}

#[test]
fn segments_go_only_after_raft_forgot_them() {
    let mut cfg = StoreConfig::for_tests();
    cfg.file_reserved_time_ms = 0;
    let mut s = Store::open(Arc::new(SimDisk::new()), cfg).unwrap();
    let body = vec![b'x'; 3000];
    for i in 0..60u64 {
        common::append_batch(&mut s, 1, &[common::msg("T", 0, &body, 10_000 + i)]);
    }
    s.dispatch_upto(LogIndex(60)).unwrap();
    let cut = s.expired_before(u64::MAX).unwrap().expect("old segments");
    let first = s.first_index_at(cut).unwrap();
    let e = s.delete_segments_before(cut).unwrap_err();
    assert!(matches!(e, StoreError::InvalidArgument(_)), "{e}");
    assert_eq!(s.log_bounds().unwrap().0, LogIndex(1), "nothing purged");
    s.purge_upto(LogIndex(first.0 - 1)).unwrap();
    let r = s.delete_segments_before(cut).unwrap();
    assert!(r.segments_deleted >= 2, "{r:?}");
    assert_eq!(s.reader().first(), cut);
    assert!(s.read_entry(first).is_ok());
}
