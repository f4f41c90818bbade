//! `raftmq bench produce|consume`: load over the SDK, with a live progress line and an HDR
//! histogram of latencies (send → acknowledgement for produce; store → delivery for consume).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Subcommand;
use hdrhistogram::Histogram;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Sends as fast as the in-flight bound allows for a duration.
    Produce {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long, default_value = "BenchTopic")]
        topic: String,
        /// Message body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Producer instances.
        #[arg(long, default_value_t = 4)]
        producers: usize,
        /// Sends in flight per producer.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Consumes a topic from its end for a duration.
    Consume {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long, default_value = "BenchTopic")]
        topic: String,
        #[arg(long, default_value = "bench-consumers")]
        group: String,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn report(what: &str, n: u64, bytes: u64, elapsed: Duration, h: &Histogram<u64>, failed: u64) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{what}: {n} msgs in {secs:.1} s = {:.0} msgs/s, {:.2} MB/s; latency us p50 {} p99 {} p999 {} max {}; {failed} failed",
        n as f64 / secs,
        bytes as f64 / secs / 1e6,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    );
}

/// Prints a progress line every second until `stop`.
async fn progress(count: Arc<AtomicU64>, until: Instant) {
    let start = Instant::now();
    let mut last = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = count.load(Ordering::Relaxed);
        eprint!(
            "\r{:>4.0}s {n:>10} msgs {:>8} msgs/s   ",
            start.elapsed().as_secs_f64(),
            n - last
        );
        last = n;
    }
    eprintln!();
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Produce {
            namesrv,
            topic,
            size,
            producers,
            in_flight,
            duration,
        } => {
            anyhow::ensure!(
                producers > 0 && in_flight > 0,
                "--producers and --in-flight must be ≥ 1"
            );
            let until = Instant::now() + Duration::from_secs(duration);
            let count = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let hist = Arc::new(Mutex::new(histogram()));
            let prog = tokio::spawn(progress(count.clone(), until));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..producers {
                let p = raftmq_client::Producer::builder()
                    .namesrv_addrs(namesrv.split(','))
                    .group("raftmq-bench")
                    .max_in_flight(in_flight)
                    .build()?;
                p.start().await?;
                for _ in 0..in_flight {
                    let (p, topic, count, failed, hist) = (
                        p.clone(),
                        topic.clone(),
                        count.clone(),
                        failed.clone(),
                        hist.clone(),
                    );
                    let body = vec![b'x'; size];
                    tasks.push(tokio::spawn(async move {
                        while Instant::now() < until {
                            let t0 = Instant::now();
                            match p
                                .send(raftmq_client::Message::new(topic.as_str(), body.clone()))
                                .await
                            {
                                Ok(_) => {
                                    count.fetch_add(1, Ordering::Relaxed);
                                    let us = t0.elapsed().as_micros() as u64;
                                    let _ = hist
                                        .lock()
                                        .expect("lock poisoned: a panic broke this state; see [profile.release]")
                                        .record(us.max(1));
                                }
                                Err(_) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }));
                }
            }
            for t in tasks {
                t.await?;
            }
            let _ = prog.await;
            let n = count.load(Ordering::Relaxed);
            let h = hist
                .lock()
                .expect("lock poisoned: a panic broke this state; see [profile.release]")
                .clone();
            report(
                "produce",
                n,
                n * size as u64,
                started.elapsed(),
                &h,
                failed.load(Ordering::Relaxed),
            );
        }
        BenchCommand::Consume {
            namesrv,
            topic,
            group,
            duration,
        } => {
            let until = Instant::now() + Duration::from_secs(duration);
            let count = Arc::new(AtomicU64::new(0));
            let bytes = Arc::new(AtomicU64::new(0));
            let hist = Arc::new(Mutex::new(histogram()));
            let (c2, b2, h2) = (count.clone(), bytes.clone(), hist.clone());
            let c = raftmq_client::PushConsumer::builder()
                .namesrv_addrs(namesrv.split(','))
                .group(group.as_str())
                .subscribe(topic.as_str(), "*")
                .batch_size(32)
                .concurrent(move |msgs| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let mut h = h2
                        .lock()
                        .expect("lock poisoned: a panic broke this state; see [profile.release]");
                    for m in msgs {
                        b2.fetch_add(m.body.len() as u64, Ordering::Relaxed);
                        let _ = h.record(now.saturating_sub(m.store_timestamp_ms).max(1) * 1000);
                    }
                    c2.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                    raftmq_client::ConsumeResult::Success
                })
                .build()?;
            let started = Instant::now();
            c.start().await?;
            progress(count.clone(), until).await;
            c.shutdown().await;
            let h = hist
                .lock()
                .expect("lock poisoned: a panic broke this state; see [profile.release]")
                .clone();
            report(
                "consume (store → delivery)",
                count.load(Ordering::Relaxed),
                bytes.load(Ordering::Relaxed),
                started.elapsed(),
                &h,
                0,
            );
        }
    }
    Ok(())
}
