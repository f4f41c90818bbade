//! `raftmq bench txn-check`: how late the broker's check of an undecided transaction comes.
//!
//! Sends `--count` half messages whose local transaction answers `Unknown`, so that each is
//! left to the broker's checker. For each, the delay measured is from the moment it became
//! due — its store time (the leader's clock, carried by the check's message) plus the
//! broker's `[transaction] timeout_ms`, which the bench is told with `--txn-timeout-ms` —
//! to the arrival of its first check here (this machine's clock: on one machine the two
//! agree). Every check is answered `Commit`, so the run leaves nothing undecided.
//!
//! The checks of this run's halves are told apart by a property carrying a run id
//! ([`RUN_PROPERTY`]); a check of another half of the producer group (an earlier run's,
//! interrupted) is answered `Commit` too and counted apart. The run is bounded: at most
//! [`COUNT_MAX`] halves, and it waits at most `--wait-secs` past the last half's due time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use raftmq_client::transaction::{LocalTransactionState, fn_listener};
use raftmq_client::{Message, TransactionProducer};
use tokio::sync::Semaphore;

/// The property that marks this run's halves (value: the run id).
pub const RUN_PROPERTY: &str = "raftmq-bench-run";
/// Most halves one run sends.
pub const COUNT_MAX: u64 = 100_000;
/// Most sends in flight.
pub const IN_FLIGHT_MAX: usize = 1024;
/// Longest wait for checks past the last half's due time.
pub const WAIT_SECS_MAX: u64 = 3600;

/// The options of `bench txn-check`.
#[derive(clap::Args)]
pub struct TxnCheck {
    #[arg(long, default_value = "127.0.0.1:9876")]
    namesrv: String,
    #[arg(long, default_value = "BenchTopic")]
    topic: String,
    /// Half messages to send.
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Sends in flight.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// The brokers' `[transaction] timeout_ms` (the delay is measured from the half's store
    /// time plus this).
    #[arg(long, default_value_t = 6000)]
    txn_timeout_ms: u64,
    /// How long to wait for checks past the last half's due time (seconds).
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    #[arg(long, default_value = "raftmq-bench-txn-check")]
    producer_group: String,
}

/// What the listener records (a lock: the listener is synchronous and runs on the SDK's
/// tasks; nothing awaits while holding it).
#[derive(Default)]
struct Arrivals {
    /// msg_id → delay (ms) of the first check of each of this run's halves.
    first: HashMap<String, i64>,
    /// Checks of this run's halves after the first (an answer lost, or asked again).
    repeated: u64,
    /// Checks of other halves of the producer group.
    others: u64,
}

fn lock(a: &Mutex<Arrivals>) -> std::sync::MutexGuard<'_, Arrivals> {
    a.lock()
        .expect("lock poisoned: a panic broke this state; see [profile.release]")
}

/// Nearest-rank percentile `q` (0..=1) of sorted `v`.
pub fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The result line.
pub fn summary(sent: u64, failed: u64, delays: &mut [i64], repeated: u64, others: u64) -> String {
    delays.sort_unstable();
    let p = |q| percentile(delays, q).map_or("-".to_string(), |v| v.to_string());
    format!(
        "txn-check: {sent} halves stored, {} first checks arrived; delay from timeout to check ms min {} p50 {} p99 {} max {}; {repeated} repeated checks, {others} checks of other halves, {failed} sends failed",
        delays.len(),
        p(0.0),
        p(0.5),
        p(0.99),
        p(1.0),
    )
}

/// Runs the bench; see the module docs.
pub async fn txn_check(o: TxnCheck) -> anyhow::Result<()> {
    ensure!(
        (1..=COUNT_MAX).contains(&o.count),
        "--count must be 1..={COUNT_MAX}"
    );
    ensure!(
        (1..=IN_FLIGHT_MAX).contains(&o.in_flight),
        "--in-flight must be 1..={IN_FLIGHT_MAX}"
    );
    ensure!(
        o.wait_secs <= WAIT_SECS_MAX,
        "--wait-secs must be ≤ {WAIT_SECS_MAX}"
    );
    let run = format!("{}-{}", std::process::id(), crate::now_ms());
    let arrivals: Arc<Mutex<Arrivals>> = Arc::default();
    let (seen, run_id, timeout_ms) = (arrivals.clone(), run.clone(), o.txn_timeout_ms);
    let producer = TransactionProducer::builder()
        .namesrv_addrs(o.namesrv.split(','))
        .group(o.producer_group.as_str())
        // Checks are answered as they come: a check dropped at the bound would be asked again
        // only a check interval later, and measured as a repeat instead of its first arrival.
        .max_checks_in_flight(raftmq_client::transaction::CHECKS_IN_FLIGHT_MAX)
        .listener(fn_listener(
            |_, _| LocalTransactionState::Unknown,
            move |m| {
                let now = crate::now_ms() as i64;
                let mut a = lock(&seen);
                if m.properties.get(RUN_PROPERTY) != Some(&run_id) {
                    a.others += 1;
                } else if a.first.contains_key(&m.msg_id) {
                    a.repeated += 1;
                } else {
                    let due = m.store_timestamp_ms.saturating_add(timeout_ms) as i64;
                    a.first.insert(m.msg_id.clone(), now - due);
                }
                LocalTransactionState::Commit
            },
        ))
        .build()?;
    producer.start().await?;

    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(o.in_flight));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.count {
        let permit = in_flight.clone().acquire_owned().await?;
        let (p, sent, failed) = (producer.clone(), sent.clone(), failed.clone());
        let m =
            Message::new(o.topic.as_str(), vec![b'x'; o.size]).with_property(RUN_PROPERTY, &run);
        tasks.push(tokio::spawn(async move {
            match p.send_in_transaction(m, &()).await {
                Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let sent = sent.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    eprintln!(
        "{sent} halves stored in {:.1} s; waiting for their checks (due {} ms after each)",
        started.elapsed().as_secs_f64(),
        o.txn_timeout_ms
    );
    // Wait until every stored half was checked, or the last one is overdue by wait_secs.
    let until =
        Instant::now() + Duration::from_millis(o.txn_timeout_ms) + Duration::from_secs(o.wait_secs);
    while Instant::now() < until && (lock(&arrivals).first.len() as u64) < sent {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Shutdown waits for the answers being sent.
    producer.shutdown().await;
    let a = std::mem::take(&mut *lock(&arrivals));
    let mut delays: Vec<i64> = a.first.into_values().collect();
    let arrived = delays.len() as u64;
    println!(
        "{}",
        summary(sent, failed, &mut delays, a.repeated, a.others)
    );
    if arrived < sent {
        eprintln!(
            "{} halves got no check in time (still pending; `raftmq txn list` shows them)",
            sent - arrived
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn the_summary_sorts_and_says_what_is_missing() {
        let mut d = vec![30, -2, 10];
        let s = summary(4, 1, &mut d, 2, 0);
        assert_eq!(
            s,
            "txn-check: 4 halves stored, 3 first checks arrived; delay from timeout to check ms min -2 p50 10 p99 30 max 30; 2 repeated checks, 0 checks of other halves, 1 sends failed"
        );
        assert!(summary(0, 0, &mut [], 0, 0).contains("min - p50 - p99 - max -"));
    }
}
