//! The MetaStore (redb on the disk seam) under power loss: durable commits survive, and the
//! database keeps working after any number of power cuts.

use raftmq_store::meta::MetaStore;
use raftmq_store::{LogId, LogIndex, QueueOffset, SimDisk};

#[test]
fn durable_commits_survive_repeated_power_loss() {
    for seed in 0..20u64 {
        let disk = SimDisk::new();
        let mut durable_applied = 0u64;
        let mut n = 0u64;
        for round in 0..6u64 {
            let meta = MetaStore::open(&disk)
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: open: {e}"));
            if let Some(a) = meta.applied().unwrap() {
                assert!(
                    a.index.0 >= durable_applied,
                    "seed {seed}: applied went back to {} < {durable_applied}",
                    a.index.0
                );
            }
            let commits = 5 + (seed * 7 + round * 3) % 40;
            for _ in 0..commits {
                n += 1;
                let durable = !(n + seed).is_multiple_of(3);
                let mut txn = meta.begin(durable).unwrap();
                for q in 0..(n % 50) as u32 {
                    txn.set_consumer_offset(
                        "group-with-a-long-name",
                        &format!("topic-{}", n % 7),
                        q,
                        QueueOffset(n),
                    )
                    .unwrap();
                }
                txn.set_applied(&LogId {
                    term: 1,
                    node_id: 1,
                    index: LogIndex(n),
                })
                .unwrap();
                txn.commit()
                    .unwrap_or_else(|e| panic!("seed {seed} round {round} commit {n}: {e}"));
                if durable {
                    durable_applied = n;
                }
            }
            if (seed + round) % 2 == 0 {
                drop(meta);
            } else {
                std::mem::forget(meta);
            }
            disk.power_loss(seed * 31 + round);
        }
    }
}

/// The pattern of the store's own use: many small non-durable commits (the applied id),
/// a durable checkpoint now and then, power loss, reopen, and keep going.
#[test]
fn checkpoint_pattern_survives_power_loss() {
    use std::collections::BTreeMap;

    use raftmq_store::consumequeue::QueueId;
    use raftmq_store::meta::Checkpoint;

    for seed in 0..20u64 {
        let disk = SimDisk::new();
        let mut applied = 0u64;
        for round in 0..4u64 {
            let view = disk.incarnation();
            let meta = MetaStore::open(&view)
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: open: {e}"));
            let batches = 20 + (seed * 13 + round * 7) % 30;
            for b in 0..batches {
                applied += 1;
                let mut txn = meta.begin(false).unwrap();
                txn.set_applied(&LogId {
                    term: 1,
                    node_id: 1,
                    index: LogIndex(applied),
                })
                .unwrap();
                txn.commit()
                    .unwrap_or_else(|e| panic!("seed {seed} round {round} applied {applied}: {e}"));
                if b % 8 == 7 {
                    let mut ends = BTreeMap::new();
                    for q in 0..2 {
                        ends.insert(
                            QueueId {
                                topic: "T".into(),
                                queue_id: q,
                            },
                            applied * 3 + u64::from(q),
                        );
                    }
                    let mut txn = meta.begin(true).unwrap();
                    txn.set_checkpoint(&Checkpoint::default(), &ends).unwrap();
                    txn.commit().unwrap_or_else(|e| {
                        panic!("seed {seed} round {round} checkpoint at {applied}: {e}")
                    });
                }
            }
            disk.fence();
            drop(meta);
            disk.power_loss(seed + round);
        }
    }
}
