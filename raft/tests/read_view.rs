//! Reads off the write lock: a pull-sized scan (16 384 queue entries, each with its message)
//! through the store's read view runs while writes keep completing, and runs to the end
//! while another task holds the appender's lock.
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_proto::limits::PULL_SCAN_MAX;
use raftmq_store::consumequeue::QueueId;
use raftmq_store::{Message, QueueOffset, ReadView};

fn msg(n: u64) -> Message {
    Message {
        topic: "T".into(),
        queue_id: 0,
        msg_id: format!("m{n}"),
        body: vec![(n % 251) as u8; 64],
        ..Message::default()
    }
}

fn queue() -> QueueId {
    QueueId {
        topic: "T".into(),
        queue_id: 0,
    }
}

/// Reads offset `off` of queue `T/0` and its message; checks it is the one written there.
fn read(view: &ReadView, off: u64) -> anyhow::Result<()> {
    let e = view.cq_entry(&queue(), QueueOffset(off))?;
    let m = view.read_message(e.position, e.size)?;
    anyhow::ensure!(
        m.msg_id == format!("m{off}"),
        "offset {off} holds {}",
        m.msg_id
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The appender's lock is held across an await on purpose: the scan must finish without it.
#[allow(clippy::await_holding_lock)]
async fn a_pull_sized_scan_runs_while_writes_complete() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = common::start(1, dir.path().to_path_buf(), None).await?;
    node.replica
        .initialize(&BTreeMap::from([(1, node.addr.to_string())]))
        .await?;
    let batch = 256;
    for b in 0..PULL_SCAN_MAX / batch {
        let msgs = (b * batch..(b + 1) * batch).map(msg).collect();
        common::write_retrying(&node.replica, msgs).await?;
    }
    let view = node.replica.store().view().clone();
    let q = queue();
    assert_eq!(view.queue_bounds(&q).1, QueueOffset(PULL_SCAN_MAX));

    // A write is appended, committed and applied in the middle of the scan, sixteen times;
    // each is visible to the same view at once.
    let mut written = 0u64;
    for off in 0..PULL_SCAN_MAX {
        read(&view, off)?;
        if off % 1024 == 512 {
            let next = PULL_SCAN_MAX + written;
            let w = node.replica.write(vec![msg(next)]);
            let a = tokio::time::timeout(Duration::from_secs(10), w).await??;
            assert_eq!(a[0].queue_offset, QueueOffset(next));
            assert_eq!(view.queue_bounds(&q).1, QueueOffset(next + 1));
            written += 1;
        }
    }
    assert_eq!(written, PULL_SCAN_MAX / 1024);

    // The whole scan again, on another thread, while this task holds the appender's lock: it
    // finishes (if reads needed that lock, the scan would wait for it and time out).
    let appender = node.replica.store().lock();
    let reader = view.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        (0..PULL_SCAN_MAX).try_for_each(|off| read(&reader, off))
    });
    let r = tokio::time::timeout(Duration::from_secs(30), scanned).await;
    drop(appender);
    r.map_err(|_| anyhow::anyhow!("the scan waited for the appender's lock"))???;
    node.stop().await;
    Ok(())
}
