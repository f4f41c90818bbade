//! Property tests of recovery: whatever sequence of appends, syncs, checkpoints and
//! dispatches ran, and wherever the power went, reopening recovers exactly a prefix of the
//! log that holds every synced record, and ConsumeQueues consistent with it. A bit flip in
//! the unsynced tail is detected and cut; one in synced data is reported as corruption.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftmq_store::consumequeue::QueueId;
use raftmq_store::{LogIndex, Message, SimDisk, Store, StoreError};

#[derive(Debug, Clone)]
enum Op {
    /// A batch: (queue id, body length) per message.
    Append(Vec<(u32, usize)>),
    Sync,
    Checkpoint,
    /// Dispatch everything appended and record it as applied (durably or not).
    Apply {
        durable: bool,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((0u32..3, 1usize..700), 1..4).prop_map(Op::Append),
        3 => Just(Op::Sync),
        1 => Just(Op::Checkpoint),
        2 => any::<bool>().prop_map(|durable| Op::Apply { durable }),
    ]
}

/// What the test knows about the log it wrote.
#[derive(Default)]
struct Model {
    /// Index → the batch appended there.
    batches: Vec<Vec<Message>>,
    /// Highest index known synced.
    synced: usize,
}

fn run(store: &mut Store, ops: &[Op]) -> Model {
    let mut m = Model::default();
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append(spec) => {
                let batch: Vec<Message> = spec
                    .iter()
                    .map(|(q, len)| {
                        counter += 1;
                        let mut body = format!("{counter}:").into_bytes();
                        body.resize(*len + body.len(), b'x');
                        common::msg(
                            ["A", "B"][(counter % 2) as usize],
                            *q,
                            &body,
                            1000 + counter,
                        )
                    })
                    .collect();
                common::append_batch(store, 1, &batch);
                m.batches.push(batch);
            }
            Op::Sync => {
                store.sync().unwrap();
                m.synced = m.batches.len();
            }
            Op::Checkpoint => {
                store.checkpoint().unwrap();
                m.synced = m.batches.len();
            }
            Op::Apply { durable } => {
                if let Some((last, _)) = store.log_bounds().unwrap().1 {
                    store.dispatch_upto(last).unwrap();
                    common::set_applied(store, last, *durable);
                }
            }
        }
    }
    m
}

/// The queues the first `n` batches must produce, in log order.
fn expected_queues(batches: &[Vec<Message>]) -> BTreeMap<QueueId, Vec<Vec<u8>>> {
    let mut out: BTreeMap<QueueId, Vec<Vec<u8>>> = BTreeMap::new();
    for m in batches.iter().flatten() {
        out.entry(QueueId {
            topic: m.topic.clone(),
            queue_id: m.queue_id,
        })
        .or_default()
        .push(m.body.clone());
    }
    out
}

fn check_recovered(store: &mut Store, model: &Model) -> Result<usize, TestCaseError> {
    let last = store
        .log_bounds()
        .unwrap()
        .1
        .map_or(0, |(i, _)| i.0 as usize);
    prop_assert!(
        last >= model.synced,
        "lost synced records: recovered {} < synced {}",
        last,
        model.synced
    );
    prop_assert!(last <= model.batches.len());
    for i in 1..=last {
        let rec = store.read_entry(LogIndex(i as u64)).unwrap();
        let got = raftmq_store::message::decode_batch(&rec.payload).unwrap();
        prop_assert_eq!(&got, &model.batches[i - 1], "record {} differs", i);
    }
    if last > 0 {
        store.dispatch_upto(LogIndex(last as u64)).unwrap();
    }
    let got = common::queue_contents(store);
    let want = expected_queues(&model.batches[..last]);
    // Queues created by records past the recovered end exist but must be empty.
    let none = Vec::new();
    for (q, bodies) in &got {
        prop_assert_eq!(bodies, want.get(q).unwrap_or(&none), "queue {:?}", q);
    }
    for q in want.keys() {
        prop_assert!(got.contains_key(q), "queue {:?} missing", q);
    }
    Ok(last)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn power_loss_recovers_a_prefix_with_every_synced_record(
        ops in proptest::collection::vec(arb_op(), 1..40),
        seed in any::<u64>(),
    ) {
        let disk = SimDisk::new();
        let mut store = common::open(&disk);
        let model = run(&mut store, &ops);
        drop(store);
        disk.power_loss(seed);
        let mut store = common::open(&disk);
        let last = check_recovered(&mut store, &model)?;
        // The store keeps working after recovery, and a second crash is survived too.
        let next = common::append_batch(&mut store, 2, &[common::msg("A", 0, b"after", 1)]);
        prop_assert_eq!(next.0 as usize, last + 1);
        store.sync().unwrap();
        drop(store);
        disk.power_loss(seed ^ 1);
        let store = common::open(&disk);
        prop_assert_eq!(store.log_bounds().unwrap().1.unwrap().0, next);
    }

    #[test]
    fn a_bit_flip_is_cut_in_the_tail_and_corruption_before_the_synced_position(
        ops in proptest::collection::vec(arb_op(), 1..30),
        pick in any::<prop::sample::Index>(),
        byte_pick in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let disk = SimDisk::new();
        let mut store = common::open(&disk);
        let model = run(&mut store, &ops);
        prop_assume!(!model.batches.is_empty());
        let k = pick.index(model.batches.len()) + 1;
        let rec = store.read_entry(LogIndex(k as u64)).unwrap();
        let seg = store.config().segment_bytes;
        let synced_pos = store.reader().synced();
        drop(store);
        let pos = rec.position.0;
        let byte = pos + byte_pick.index(rec.header.len as usize) as u64;
        let path = raftmq_store::commitlog::segment_path(pos / seg * seg);
        disk.flip_bit(&path, byte % seg, bit).unwrap();
        let record_end = pos + u64::from(rec.header.len);
        if record_end <= synced_pos.0 {
            // Synced data: the store must refuse it, naming the file and the record.
            let err = match Store::open(std::sync::Arc::new(disk.clone()), raftmq_store::StoreConfig::for_tests()) {
                Err(e) => e,
                Ok(s) => s.verify().expect_err("verify must find the flipped bit"),
            };
            match err {
                StoreError::Corrupt { file, position, .. } => {
                    prop_assert_eq!(file, path);
                    prop_assert_eq!(position, pos);
                }
                e => prop_assert!(false, "expected corruption, got {}", e),
            }
        } else {
            let mut store = common::open(&disk);
            let last = store.log_bounds().unwrap().1.map_or(0, |(i, _)| i.0 as usize);
            prop_assert_eq!(last, k - 1, "the flipped record and everything after it are cut");
            let model = Model { batches: model.batches[..k - 1].to_vec(), synced: model.synced.min(k - 1) };
            check_recovered(&mut store, &model)?;
        }
    }
}
