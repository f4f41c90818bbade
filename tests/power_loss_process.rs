//! A whole group's power loss, on real processes: three `raftmq broker --lazy-disk` processes
//! (every write kept in memory until synced, so a SIGKILL loses what a power cut would — see
//! `raftmq_store::LazyDisk`) take sends from concurrent producers; mid-stream all three are
//! SIGKILLed at once and started again; the producers carry on; afterwards every
//! acknowledged message is consumed. Jepsen's NATS analysis lost 14 % of acknowledged writes
//! to exactly this fault.
//!
//! The same run with `flush = "async"` (acknowledged before the fsync) shows the check fires
//! on real processes: there the power cut takes acknowledged messages with it.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::*;
use raftmq_testkit::{wait_for, wait_until};

use common::{
    code, consume_all, create_topic, leader, restart_with, sigkill, start_group_with, wait_leader,
};

const MESSAGES: u64 = 2_000;
const PER_REQUEST: u64 = 5;
const PRODUCERS: u64 = 4;
const QUEUES: u32 = 4;
const LAZY: &[&str] = &["--lazy-disk"];
/// The async run's background sync period; the run waits past one before sending, so the
/// group's formation and its topic are on disk when the power goes.
const ASYNC_SYNC_EVERY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_whole_group_power_loss() -> anyhow::Result<()> {
    let lost = power_loss_run("flush = \"sync\"").await?;
    assert!(
        lost.is_empty(),
        "acknowledged but lost in the power cut: {} e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_before_the_fsync_loses_messages_in_a_power_loss() -> anyhow::Result<()> {
    // A background sync every 3 s (not 500 ms): what was acknowledged since the last one is
    // unsynced on every replica when the power goes. With 500 ms the replica elected
    // afterwards sometimes had synced all that was acknowledged, and nothing was lost (seen
    // since a restarted leader no longer resumes its term without an election).
    let lost = power_loss_run(&format!(
        "flush = \"async\"\nflush_interval_ms = {}",
        ASYNC_SYNC_EVERY.as_millis()
    ))
    .await?;
    assert!(
        !lost.is_empty(),
        "with acknowledgements before the fsync, the lazy disk's power cut must lose some"
    );
    Ok(())
}

/// Sends, cuts the power of the whole group mid-stream, sends on, consumes; returns the
/// acknowledged messages not consumed.
async fn power_loss_run(flush: &str) -> anyhow::Result<Vec<String>> {
    let tmp = tempfile::tempdir()?;
    let (mut procs, ns) = start_group_with(tmp.path(), flush, "", LAZY);
    wait_leader(&ns, None, Duration::from_secs(30)).await;
    create_topic(&ns, "T", QUEUES).await;
    if flush.contains("async") {
        tokio::time::sleep(ASYNC_SYNC_EVERY + Duration::from_millis(500)).await;
    }

    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (ns, acked, sent) = (ns.clone(), acked.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let share = MESSAGES / PRODUCERS;
            let mut next = 0;
            while next < share {
                let ids: Vec<String> = (next..next + PER_REQUEST)
                    .map(|i| format!("p{p}-{i}"))
                    .collect();
                let messages: Vec<Message> = ids
                    .iter()
                    .map(|id| Message {
                        topic: "T".into(),
                        queue_id: Some(((next / PER_REQUEST) % u64::from(QUEUES)) as u32),
                        msg_id: id.clone(),
                        body: id.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect();
                let what = format!("producer {p}'s messages from {next} acknowledged");
                // Retried until acknowledged: a request whose answer was lost may be stored
                // twice (a duplicate, allowed); an acknowledged one must never be lost.
                wait_for(Duration::from_secs(90), &what, || async {
                    let Some(to) = leader(&ns).await else {
                        return Err("no leader".to_string());
                    };
                    let r = async {
                        MessagingClient::connect(format!("http://{to}"))
                            .await?
                            .send(SendRequest {
                                producer_group: "P".into(),
                                messages: messages.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(|r| r.into_inner())
                            .map_err(anyhow::Error::from)
                    }
                    .await;
                    match r {
                        Ok(r) if code(&r.status) == ErrorCode::Ok => Ok(()),
                        Ok(r) => Err(format!("{:?} from {to}", r.status)),
                        Err(e) => Err(format!("{e} from {to}")),
                    }
                })
                .await;
                acked.lock().expect("acked").extend(ids);
                sent.fetch_add(PER_REQUEST, Ordering::Relaxed);
                next += PER_REQUEST;
            }
        }));
    }
    wait_until(Duration::from_secs(120), "half the messages sent", || {
        let n = sent.load(Ordering::Relaxed);
        if n >= MESSAGES / 2 {
            Ok(())
        } else {
            Err(format!("{n} acknowledged"))
        }
    })
    .await;
    // The power goes out on the whole group at once.
    let brokers: Vec<String> = procs.0.keys().filter(|a| **a != ns).cloned().collect();
    for b in &brokers {
        sigkill(&mut procs, b);
    }
    let at = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for b in &brokers {
        restart_with(&mut procs, tmp.path(), b, LAZY);
    }
    for t in tasks {
        t.await?;
    }
    let acked = acked.lock().expect("acked").clone();
    assert_eq!(acked.len() as u64, MESSAGES);
    eprintln!("power lost after {at} acknowledgements");

    let l = wait_leader(&ns, None, Duration::from_secs(30)).await;
    let consumed = consume_all(&l, "T", QUEUES).await?;
    let lost: Vec<String> = acked
        .iter()
        .filter(|id| !consumed.contains_key(*id))
        .cloned()
        .collect();
    let dups = consumed.values().filter(|&&n| n > 1).count();
    eprintln!(
        "{flush}: consumed {} distinct, {dups} duplicated, {} lost",
        consumed.len(),
        lost.len()
    );
    Ok(lost)
}
