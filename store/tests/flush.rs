//! The flusher: group commit in sync mode, periodic sync in async mode, and a failed sync
//! that stops acknowledgements for good.

mod common;

use std::time::Duration;

use raftmq_store::flush::FlushHandle;
use raftmq_store::{FlushMode, LogIndex, SimDisk};
use raftmq_testkit::wait_until;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sync_mode_groups_concurrent_appends_into_few_syncs() {
    rt().block_on(async {
        let disk = SimDisk::new();
        let mut s = common::open(&disk);
        let flusher = FlushHandle::spawn(s.reader(), FlushMode::Sync, 500);
        let before = disk.stats().syncs;
        let mut waits = Vec::new();
        // 100 appends arrive before the flusher runs once: they must share syncs.
        for i in 0..100u64 {
            common::append_batch(
                &mut s,
                1,
                &[common::msg("T", 0, format!("g{i}").as_bytes(), i)],
            );
            let end = s.reader().written();
            let f = flusher.clone();
            waits.push(tokio::spawn(async move { f.wait_durable(end).await }));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let syncs = disk.stats().syncs - before;
        // One data sync + one marker sync per round; far fewer rounds than appends.
        assert!(syncs <= 10, "{syncs} syncs for 100 appends");
        assert_eq!(s.reader().synced(), s.reader().written());
        // Everything acknowledged survives a power loss.
        drop(s);
        disk.power_loss(1);
        let s = common::open(&disk);
        assert_eq!(s.log_bounds().unwrap().1.unwrap().0, LogIndex(100));
    });
}

#[test]
fn an_acknowledged_append_is_durable_even_when_the_next_one_is_not() {
    rt().block_on(async {
        let disk = SimDisk::new();
        let mut s = common::open(&disk);
        let flusher = FlushHandle::spawn(s.reader(), FlushMode::Sync, 500);
        common::append_batch(&mut s, 1, &[common::msg("T", 0, b"acked", 1)]);
        flusher.wait_durable(s.reader().written()).await.unwrap();
        common::append_batch(&mut s, 1, &[common::msg("T", 0, b"not-acked", 2)]);
        drop(s);
        disk.power_loss(77);
        let s = common::open(&disk);
        let last = s.log_bounds().unwrap().1.unwrap().0;
        assert!(last >= LogIndex(1));
    });
}

#[test]
fn async_mode_acknowledges_at_once_and_syncs_on_a_timer() {
    rt().block_on(async {
        let disk = SimDisk::new();
        let mut s = common::open(&disk);
        let flusher = FlushHandle::spawn(s.reader(), FlushMode::Async, 20);
        common::append_batch(&mut s, 1, &[common::msg("T", 0, b"a", 1)]);
        let end = s.reader().written();
        flusher.wait_durable(end).await.unwrap();
        // Acknowledged, but not synced yet …
        assert!(s.reader().synced() < end);
        // … until the interval passes.
        wait_until(Duration::from_secs(5), "async flush ran", || {
            s.reader().synced() >= end
        })
        .await;
    });
}

#[test]
fn a_failed_sync_fails_every_waiter_and_every_later_append() {
    rt().block_on(async {
        let disk = SimDisk::new();
        let mut s = common::open(&disk);
        let flusher = FlushHandle::spawn(s.reader(), FlushMode::Sync, 500);
        common::append_batch(&mut s, 1, &[common::msg("T", 0, b"a", 1)]);
        disk.set_fail_syncs(true);
        let err = flusher
            .wait_durable(s.reader().written())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected sync failure"), "{err}");
        // Clearing the fault does not resurrect the log: the dirty pages may be gone.
        disk.set_fail_syncs(false);
        let payload = raftmq_store::message::encode_batch(&[common::msg("T", 0, b"b", 2)]).unwrap();
        let e = raftmq_store::EntryRef {
            term: 1,
            index: LogIndex(2),
            kind: raftmq_store::RecordKind::MESSAGES,
            timestamp_ms: 2,
            payload: &payload,
        };
        assert!(s.append(&[e]).is_err());
        assert!(flusher.wait_durable(s.reader().written()).await.is_err());
        assert!(s.reader().failure().is_some());
    });
}

#[test]
fn stop_answers_pending_waiters() {
    rt().block_on(async {
        let disk = SimDisk::new();
        let mut s = common::open(&disk);
        let flusher = FlushHandle::spawn(s.reader(), FlushMode::Sync, 500);
        common::append_batch(&mut s, 1, &[common::msg("T", 0, b"a", 1)]);
        flusher.wait_durable(s.reader().written()).await.unwrap();
        flusher.stop();
        tokio::task::yield_now().await;
        common::append_batch(&mut s, 1, &[common::msg("T", 0, b"b", 2)]);
        assert!(flusher.wait_durable(s.reader().written()).await.is_err());
    });
}

#[test]
fn the_synced_marker_trails_under_load_and_catches_up_when_idle() {
    rt().block_on(async {
        let disk = SimDisk::new();
        let mut s = common::open(&disk);
        let flusher = FlushHandle::spawn(s.reader(), FlushMode::Sync, 500);
        common::append_batch(&mut s, 1, &[common::msg("T", 0, b"a", 1)]);
        let end = s.reader().written();
        flusher.wait_durable(end).await.unwrap();
        assert_eq!(s.reader().synced(), end, "acknowledged means synced");
        // Idle: within a few marker intervals the marker reaches the synced end.
        wait_until(Duration::from_secs(5), "the marker caught up", || {
            s.reader().synced_marker() >= end
        })
        .await;
        // Now a bit flip in that record is corruption, not a torn tail.
        drop(s);
        flusher.stop();
        disk.flip_bit(&raftmq_store::commitlog::segment_path(0), 50, 1)
            .unwrap();
        let err = raftmq_store::Store::open(
            std::sync::Arc::new(disk.incarnation()),
            raftmq_store::StoreConfig::for_tests(),
        )
        .unwrap_err();
        assert!(
            matches!(err, raftmq_store::StoreError::Corrupt { .. }),
            "{err}"
        );
    });
}
