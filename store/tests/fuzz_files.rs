//! Every file of a store — CommitLog segments, ConsumeQueue and Raft-index entry files, the
//! IndexFile, the checkpoint registers, the MetaStore — replaced by arbitrary bytes or a
//! mutation of its real content (`raftmq_testkit::fuzz`), then the store opened: it opens (and
//! then reads its whole log and queues) or refuses with an error — never a panic, never an
//! allocation past the bound. The other files are left as they were, so each case is one
//! damaged file in an otherwise whole store. `RAFTMQ_FUZZ_CASES` scales the cases (a
//! twentieth of it per file, as each opens a store).
//!
//! It found that redb, the MetaStore's engine, trusts its file: a flipped byte in a table
//! definition panicked inside redb at open. The MetaStore now opens with redb's integrity
//! check (every page checksum verified), which refuses such a file as corrupt.

mod common;

use std::sync::Arc;

use raftmq_store::{SimDisk, Store, StoreConfig};
use raftmq_testkit::fuzz::{self, Tracking};

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// A small store with several segments, dispatched queues, a checkpoint and synced data.
fn store_on_disk() -> SimDisk {
    let disk = SimDisk::new();
    let mut store = common::open(&disk);
    for i in 0..80u64 {
        let batch: Vec<_> = (0..3)
            .map(|j| {
                let body = format!("{i}-{j}-{}", "x".repeat((i as usize * 97) % 3000));
                common::msg(
                    ["A", "B"][(j % 2) as usize],
                    (i % 3) as u32,
                    body.as_bytes(),
                    1000 + i,
                )
            })
            .collect();
        let last = common::append_batch(&mut store, 1, &batch);
        if i % 10 == 9 {
            store.dispatch_upto(last).expect("dispatch");
            common::set_applied(&store, last, true);
            store.checkpoint().expect("checkpoint");
        }
    }
    store.sync().expect("sync");
    drop(store);
    disk
}

/// Measures the damage as a repair would (`Store::find_damage`), then opens a store on `disk`
/// and reads everything it says it holds: every log entry, every queue's messages, and a key
/// query (errors are fine; panics are not).
fn open_and_read(disk: SimDisk) -> Result<(), String> {
    if let Ok(Some(d)) = Store::find_damage(Arc::new(disk.clone()), &StoreConfig::for_tests()) {
        let _ = d.synced_index_bound();
    }
    let mut store =
        Store::open(Arc::new(disk), StoreConfig::for_tests()).map_err(|e| e.to_string())?;
    let (first, last) = store.log_bounds().map_err(|e| e.to_string())?;
    if let Some((last, _)) = last {
        for i in first.0..=last.0 {
            let _ = store.read_entry(raftmq_store::LogIndex(i));
        }
        // Dispatch what the checkpoint did not cover, as a restarted replica does.
        let _ = store.dispatch_upto(last);
    }
    for (q, min, max) in store.queues() {
        for o in min.0..max.0.min(min.0 + 1000) {
            let _ = store.read_queue_message(&q, raftmq_store::QueueOffset(o));
        }
    }
    let _ = store.verify();
    Ok(())
}

#[test]
fn every_damaged_file_opens_or_is_refused() {
    let disk = store_on_disk();
    let paths = disk.paths();
    assert!(
        paths.iter().filter(|p| p.starts_with("commitlog/")).count() >= 3,
        "several segments: {paths:?}"
    );
    open_and_read(disk.durable_copy()).expect("the undamaged store opens");
    let cases = (fuzz::cases() / 20).max(50);
    for path in &paths {
        let original = disk.durable_bytes(path).expect("listed");
        let mut rng = fuzz::Rng::new(fuzz::seed() ^ (path.len() as u64 * 131 + 7));
        for case in 0..cases {
            let damaged = fuzz::input(&mut rng, std::slice::from_ref(&original));
            let copy = disk.durable_copy();
            copy.replace_file(path, &damaged).expect("replace");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fuzz::peak_allocation(|| open_and_read(copy))
            }));
            let (_, peak) = outcome.unwrap_or_else(|_| {
                panic!(
                    "opening the store panicked with {path} damaged (case {case}, {} bytes)",
                    damaged.len()
                )
            });
            let bound = (64 << 20) + 8 * damaged.len();
            assert!(
                peak <= bound,
                "{path} case {case}: allocated {peak} bytes at once (bound {bound})"
            );
        }
        eprintln!("fuzz {path}: {cases} damaged copies opened or refused");
    }
}
