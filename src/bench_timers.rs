//! `raftmq bench timers`: how many due timers per second the leader's scheduler delivers, and
//! what pending timers cost the brokers in memory.
//!
//! 1. **Load**: sends `--count` timed messages (in batches of `--batch`, `--in-flight` batches
//!    at once), all due at one moment, `--due-in-secs` after the run starts — far enough
//!    ahead that every one is still pending when the load ends.
//! 2. **Pending**: prints the brokers' resident memory (`RssAnon` — heap, stacks, redb's
//!    page cache — and, apart, `RssFile`, the mapped CommitLog pages the kernel may reclaim;
//!    from `/proc` of the `--broker-pid` processes: the bench must run on their machine)
//!    before the load and with every timer pending.
//! 3. **Drain**: from the due moment, polls the topic's queue ends (`TopicStats` on every
//!    group's leader) every 50 ms until all `--count` copies are delivered; the scheduler's
//!    rate is the count over the time from the due moment to the last copy's arrival.
//!
//! Use a fresh topic (the drain counts everything in its queues). Bounded: at most
//! [`COUNT_MAX`] messages, and the drain waits at most `--wait-secs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use raftmq_client::{Message, Producer};
use tokio::sync::Semaphore;

use crate::ops::{Cluster, topic_stats};

/// Most messages one run sends.
pub const COUNT_MAX: u64 = 5_000_000;
/// How often the drain looks at the queues.
const POLL: Duration = Duration::from_millis(50);

/// The options of `bench timers`.
#[derive(clap::Args)]
pub struct Timers {
    #[arg(long, default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// A topic that holds nothing yet.
    #[arg(long, default_value = "BenchTimers")]
    topic: String,
    /// Timed messages to send.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Messages per send request.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Send requests in flight.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// When the messages fall due, counted from the start of the run (seconds).
    #[arg(long, default_value_t = 60)]
    due_in_secs: u64,
    /// How long to wait for the drain past the due moment (seconds).
    #[arg(long, default_value_t = 600)]
    wait_secs: u64,
    /// Broker processes whose memory to report (same machine).
    #[arg(long = "broker-pid")]
    broker_pids: Vec<u32>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One field of `/proc/<pid>/status` in MiB.
fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// Prints each broker's resident memory: its own (anonymous: heap, stacks, redb's cache) and
/// the file pages it has mapped (the CommitLog's mmap: page cache the kernel may reclaim).
fn print_rss(when: &str, pids: &[u32]) -> anyhow::Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut each = Vec::new();
    for &p in pids {
        each.push(format!(
            "{p}: anon {:.0} MiB (+ file {:.0} MiB)",
            status_mib(p, "RssAnon")?,
            status_mib(p, "RssFile")?
        ));
    }
    println!("broker RSS {when}: {}", each.join(", "));
    Ok(())
}

/// Copies delivered so far: the sum of the topic's queue ends over every group.
async fn delivered(cluster: &Cluster, topic: &str) -> anyhow::Result<u64> {
    Ok(topic_stats(cluster, topic)
        .await?
        .iter()
        .flat_map(|s| s.queues.iter())
        .map(|q| q.max_offset)
        .sum())
}

pub async fn run(t: Timers) -> anyhow::Result<()> {
    ensure!(
        t.count > 0 && t.count <= COUNT_MAX,
        "--count must be 1..={COUNT_MAX}"
    );
    ensure!(
        t.batch > 0 && t.in_flight > 0,
        "--batch and --in-flight must be positive"
    );
    let cluster = Cluster::new(&t.namesrv);
    let before = delivered(&cluster, &t.topic).await.unwrap_or(0);
    ensure!(
        before == 0,
        "topic {} already holds {before} messages: use a fresh topic",
        t.topic
    );
    print_rss("before the load", &t.broker_pids)?;
    let start = Instant::now();
    let due_at = now_ms() + t.due_in_secs * 1000;
    let p = Producer::builder()
        .namesrv_addrs(t.namesrv.split(','))
        .group("raftmq-bench-timers")
        .build()?;
    p.start().await?;
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(t.in_flight));
    let body = vec![b'x'; t.size];
    let mut tasks = Vec::new();
    let mut next = 0u64;
    while next < t.count {
        let n = (t.count - next).min(t.batch as u64);
        let batch: Vec<Message> = (0..n)
            .map(|_| Message::new(t.topic.as_str(), body.clone()).with_deliver_at_ms(due_at))
            .collect();
        next += n;
        let permit = permits.clone().acquire_owned().await?;
        let (p, sent, failed) = (p.clone(), sent.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            match p.send_batch(batch).await {
                Ok(r) => sent.fetch_add(r.len() as u64, Ordering::Relaxed),
                Err(_) => failed.fetch_add(n, Ordering::Relaxed),
            };
            drop(permit);
        }));
    }
    for task in tasks {
        task.await?;
    }
    p.shutdown().await;
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let load = start.elapsed();
    println!(
        "load: {sent} timed messages pending in {:.1} s ({:.0} msgs/s); {failed} failed",
        load.as_secs_f64(),
        sent as f64 / load.as_secs_f64().max(1e-9)
    );
    ensure!(
        now_ms() < due_at,
        "the load took longer than --due-in-secs: raise it (the drain would start mid-load)"
    );
    let early = delivered(&cluster, &t.topic).await?;
    ensure!(early == 0, "{early} delivered before their due time");
    print_rss(&format!("with {sent} timers pending"), &t.broker_pids)?;

    // The drain: from the due moment until every copy is in the queues.
    tokio::time::sleep(Duration::from_millis(due_at.saturating_sub(now_ms()))).await;
    let due = Instant::now();
    let limit = due + Duration::from_secs(t.wait_secs);
    let mut last = (0u64, due);
    loop {
        let n = delivered(&cluster, &t.topic).await?;
        if n != last.0 {
            last = (n, Instant::now());
        }
        if n >= sent || Instant::now() > limit {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let (n, at) = last;
    let secs = at.duration_since(due).as_secs_f64().max(1e-9);
    println!(
        "drain: {n} of {sent} delivered in {secs:.2} s after their due time = {:.0} timers/s",
        n as f64 / secs
    );
    print_rss("after the drain", &t.broker_pids)?;
    ensure!(n >= sent, "only {n} of {sent} delivered within --wait-secs");
    Ok(())
}
