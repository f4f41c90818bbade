//! `raftmq bench produce|consume|txn-check|timers`: load over the SDK, with a live progress
//! line and an HDR histogram of latencies (send → acknowledgement for produce, or send →
//! commit acknowledged with `--transactional`; store → delivery for consume). `produce` also
//! prints the brokers' CPU per message: every registered replica's process CPU time
//! (`Admin.ProcessStats`) before and after the run, summed. `txn-check` lives in
//! `bench_txn`, `timers` in `bench_timers`.

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
        /// Send every message in a transaction of its own whose local transaction commits at
        /// once; counts committed transactions (half stored, then commit acknowledged).
        #[arg(long)]
        transactional: bool,
        /// One request per send (the SDK's auto-batching off), to compare.
        #[arg(long)]
        no_auto_batch: bool,
        /// Messages per send: above 1, each send is one `send_batch` of this many (one queue,
        /// one request), counted as that many messages; latency is per batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
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
        /// Start a new group at the queues' first offsets (a catch-up read of what is stored)
        /// instead of their ends.
        #[arg(long)]
        from_first: bool,
    },
    /// Measures the delay from a transaction's timeout to its check: sends halves whose local
    /// transaction answers Unknown, and for each the time from (stored + --txn-timeout-ms) to
    /// the arrival of its first check (answered Commit).
    TxnCheck(crate::bench_txn::TxnCheck),
    /// Loads timed messages all due at one moment, reports the brokers' memory with them
    /// pending, then how many per second the scheduler delivers (see `bench_timers`).
    Timers(crate::bench_timers::Timers),
    /// Kills the leader of a group (brokers on this machine, restarted by a supervisor) while
    /// a producer sends, and reports detection, election, first commit and first ack.
    Failover(crate::bench_failover::Failover),
    /// The RocketMQ 5 gateway's send and receive + ack, spoken to as RocketMQ 5 clients speak
    /// (see `bench_proxy`).
    Proxy(crate::bench_proxy::ProxyBench),
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What a run counted and how long it took.
struct Counted<'a> {
    what: &'a str,
    /// What `n` counts ("msgs", "txns").
    unit: &'a str,
    n: u64,
    bytes: u64,
    elapsed: Duration,
    failed: u64,
}

fn report(c: Counted<'_>, h: &Histogram<u64>) {
    let Counted {
        what,
        unit,
        n,
        bytes,
        elapsed,
        failed,
    } = c;
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{what}: {n} {unit} in {secs:.1} s = {:.0} {unit}/s, {:.2} MB/s; latency us p50 {} p99 {} p999 {} max {}; {failed} failed",
        n as f64 / secs,
        bytes as f64 / secs / 1e6,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    );
}

/// Prints a progress line every second until `until`.
pub(crate) async fn progress(count: Arc<AtomicU64>, until: Instant) {
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

/// CPU time used so far (user + system, µs) by every broker replica registered with the
/// name server, by address; a replica that does not answer is left out.
/// What the bench asks every replica before and after a run.
#[derive(Default)]
struct ServerStats {
    /// Process CPU time (µs) by process (host/pid).
    cpu: std::collections::BTreeMap<String, u64>,
    /// The highest Raft term any replica of the group reported, by group.
    terms: std::collections::BTreeMap<String, u64>,
}

async fn server_stats(cluster: &crate::ops::Cluster) -> ServerStats {
    let mut out = ServerStats::default();
    let Ok(groups) = cluster.groups().await else {
        return out;
    };
    for g in &groups {
        for r in &g.replicas {
            let stats = async {
                let mut a = crate::ops::admin(&r.addr).await?;
                let p = a
                    .process_stats(raftmq_proto::v1::ProcessStatsRequest {})
                    .await?
                    .into_inner();
                let s = a
                    .group_status(raftmq_proto::v1::GroupStatusRequest {})
                    .await?
                    .into_inner();
                anyhow::Ok((p, s))
            };
            if let Ok(Ok((p, s))) = tokio::time::timeout(Duration::from_secs(2), stats).await {
                // One entry per process (host + pid): replicas sharing a process count once.
                let host = r.addr.rsplit_once(':').map_or(r.addr.as_str(), |(h, _)| h);
                out.cpu
                    .insert(format!("{host}/{}", p.pid), p.cpu_user_us + p.cpu_system_us);
                let t = out.terms.entry(g.group.clone()).or_default();
                *t = (*t).max(s.term);
            }
        }
    }
    out
}

/// Prints how many times each group's term moved during the run: every election (a leader
/// lost, or a replica that stopped hearing from it) raises it. 0 is the target under load.
fn print_elections(before: &ServerStats, after: &ServerStats) {
    let moved: Vec<String> = after
        .terms
        .iter()
        .filter_map(|(g, t)| {
            before
                .terms
                .get(g)
                .map(|b| format!("{g} {} (term {b} -> {t})", t.saturating_sub(*b)))
        })
        .collect();
    if moved.is_empty() {
        println!("elections: not measured (no replica answered GroupStatus before and after)");
    } else {
        println!("elections during the run: {}", moved.join(", "));
    }
}

/// Prints the brokers' CPU over the run per message: summed over the replicas seen both
/// before and after (the brokers must run on their own: anything else they do counts too).
fn print_server_cpu(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    n: u64,
    unit: &str,
) {
    let deltas: Vec<u64> = after
        .iter()
        .filter_map(|(a, t)| before.get(a).map(|b| t.saturating_sub(*b)))
        .collect();
    if deltas.is_empty() || n == 0 {
        println!("server CPU: not measured (no broker answered ProcessStats before and after)");
        return;
    }
    let total: u64 = deltas.iter().sum();
    println!(
        "server CPU: {:.0} ms over {} broker processes = {:.1} us per {}",
        total as f64 / 1000.0,
        deltas.len(),
        total as f64 / n as f64,
        unit.trim_end_matches('s')
    );
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
            transactional,
            no_auto_batch,
            batch,
        } => {
            anyhow::ensure!(
                producers > 0 && in_flight > 0 && batch > 0,
                "--producers, --in-flight and --batch must be ≥ 1"
            );
            anyhow::ensure!(
                batch == 1 || !transactional,
                "--batch is for plain sends (a transaction holds one message)"
            );
            let cluster = crate::ops::Cluster::new(&namesrv);
            // Producers start (and fetch their routes) before the clock does.
            let mut started_producers = Vec::new();
            for _ in 0..producers {
                let p = Sender::start(&namesrv, in_flight, transactional, !no_auto_batch).await?;
                p.warm_up(&topic).await?;
                started_producers.push(p);
            }
            let before = server_stats(&cluster).await;
            let until = Instant::now() + Duration::from_secs(duration);
            let count = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let hist = Arc::new(Mutex::new(histogram()));
            let prog = tokio::spawn(progress(count.clone(), until));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for p in &started_producers {
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
                            match p.send_n(&topic, &body, batch).await {
                                Ok(()) => {
                                    count.fetch_add(batch as u64, Ordering::Relaxed);
                                    let us = t0.elapsed().as_micros() as u64;
                                    let _ = hist
                                        .lock()
                                        .expect("lock poisoned: a panic broke this state; see [profile.release]")
                                        .record(us.max(1));
                                }
                                Err(()) => {
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
            let elapsed = started.elapsed();
            for p in started_producers {
                p.shutdown().await;
            }
            let n = count.load(Ordering::Relaxed);
            let h = hist
                .lock()
                .expect("lock poisoned: a panic broke this state; see [profile.release]")
                .clone();
            let (what, unit) = if transactional {
                (
                    "produce (transactional: half stored, then commit acknowledged)",
                    "txns",
                )
            } else {
                ("produce", "msgs")
            };
            report(
                Counted {
                    what,
                    unit,
                    n,
                    bytes: n * size as u64,
                    elapsed,
                    failed: failed.load(Ordering::Relaxed),
                },
                &h,
            );
            let after = server_stats(&cluster).await;
            print_server_cpu(&before.cpu, &after.cpu, n, unit);
            print_elections(&before, &after);
        }
        BenchCommand::Consume {
            namesrv,
            topic,
            group,
            duration,
            from_first,
        } => {
            use raftmq_client::consumer::ConsumeFrom;
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
                .consume_from(if from_first {
                    ConsumeFrom::First
                } else {
                    ConsumeFrom::Last
                })
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
                Counted {
                    what: "consume (store → delivery)",
                    unit: "msgs",
                    n: count.load(Ordering::Relaxed),
                    bytes: bytes.load(Ordering::Relaxed),
                    elapsed: started.elapsed(),
                    failed: 0,
                },
                &h,
            );
        }
        BenchCommand::TxnCheck(t) => crate::bench_txn::txn_check(t).await?,
        BenchCommand::Timers(t) => crate::bench_timers::run(t).await?,
        BenchCommand::Failover(f) => crate::bench_failover::run(f).await?,
        BenchCommand::Proxy(p) => crate::bench_proxy::run(p).await?,
    }
    Ok(())
}

/// One producer of `bench produce`: plain, or transactional (each send a transaction of its
/// own that commits at once).
#[derive(Clone)]
enum Sender {
    Plain(raftmq_client::Producer),
    Transactional(raftmq_client::TransactionProducer),
}

impl Sender {
    async fn start(
        namesrv: &str,
        in_flight: usize,
        transactional: bool,
        auto_batch: bool,
    ) -> anyhow::Result<Self> {
        use raftmq_client::transaction::{LocalTransactionState, fn_listener};
        if !transactional {
            let p = raftmq_client::Producer::builder()
                .namesrv_addrs(namesrv.split(','))
                .group("raftmq-bench")
                .max_in_flight(in_flight)
                .auto_batch(auto_batch)
                .build()?;
            p.start().await?;
            return Ok(Sender::Plain(p));
        }
        let p = raftmq_client::TransactionProducer::builder()
            .namesrv_addrs(namesrv.split(','))
            .group("raftmq-bench-tx")
            // Every local transaction commits, so a check (after a lost commit) says so too.
            .listener(fn_listener(
                |_, _| LocalTransactionState::Commit,
                |_| LocalTransactionState::Commit,
            ))
            .build()?;
        p.start().await?;
        Ok(Sender::Transactional(p))
    }

    /// Sends `n` messages of `body` to `topic`: one send, or (n > 1, plain) one batch.
    async fn send_n(&self, topic: &str, body: &[u8], n: usize) -> Result<(), ()> {
        match self {
            Sender::Plain(p) if n > 1 => {
                let msgs = (0..n)
                    .map(|_| raftmq_client::Message::new(topic, body.to_vec()))
                    .collect();
                p.send_batch(msgs).await.map(|_| ()).map_err(|_| ())
            }
            _ => {
                self.send(raftmq_client::Message::new(topic, body.to_vec()))
                    .await
            }
        }
    }

    /// Sends `m`; `Err(())` if it was not stored (or, transactional, not committed).
    async fn send(&self, m: raftmq_client::Message) -> Result<(), ()> {
        match self {
            Sender::Plain(p) => p.send(m).await.map(|_| ()).map_err(|_| ()),
            Sender::Transactional(p) => match p.send_in_transaction(m, &()).await {
                Ok(r) if r.end_error.is_none() && r.committed.is_some() => Ok(()),
                _ => Err(()),
            },
        }
    }

    /// Sends one message until one is stored (at most 30 s): the route is fetched and the
    /// connection made before the clock starts. The message is not counted.
    async fn warm_up(&self, topic: &str) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let m = raftmq_client::Message::new(topic, "warm-up");
            match self.send(m).await {
                Ok(()) => return Ok(()),
                Err(()) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(()) => anyhow::bail!("no send to {topic} succeeded within 30 s"),
            }
        }
    }

    async fn shutdown(&self) {
        match self {
            Sender::Plain(p) => p.shutdown().await,
            Sender::Transactional(p) => p.shutdown().await,
        }
    }
}
