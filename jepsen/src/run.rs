//! One run: network, processes, workload and faults for `--time`, a final heal, a recovery
//! phase, the drain, the checks, the report, and the cleanup.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::cluster::{self, BrokerOptions, Cluster, GROUP};
use crate::history::{Op, Recorder, Type};
use crate::nemesis::{Kind, Nemesis, Schedule};
use crate::net::Net;
use crate::report;
use crate::workload::{self, Consumers, Load, ORDERED, QUEUE, QUEUES, Spec};

/// raftmq-jepsen: chaos over real raftmq processes (needs root: it makes network namespaces).
#[derive(Debug, Clone, clap::Parser)]
#[command(version)]
pub struct Args {
    /// Seconds of faults and load (a recovery phase and the drain follow).
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Which faults.
    #[arg(long, value_enum, default_value_t = Kind::All)]
    pub nemesis: Kind,
    /// Replicas in the broker group (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// How long each fault holds, seconds.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// The quiet time after each heal, seconds.
    #[arg(long, default_value_t = 5)]
    pub quiet: u64,
    /// Packet loss for the loss fault, percent.
    #[arg(long, default_value_t = 30)]
    pub loss: u32,
    /// The delay fault: one-way delay of Raft traffic between brokers, ms.
    #[arg(long, default_value_t = 100)]
    pub delay: u64,
    /// The delay fault's jitter, ms (each chunk is held `delay ± jitter`).
    #[arg(long, default_value_t = 50)]
    pub jitter: u64,
    /// Kill, pause and power faults hit every broker at once instead of a random choice
    /// (one, the leader, a minority, a majority, all).
    #[arg(long)]
    pub all_at_once: bool,
    /// Sends per second to the queue workload's topic, all its producers together.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Sends per second of the ordered workload (ordered sends, an orderly consumer group;
    /// 0: none).
    #[arg(long, default_value_t = 200)]
    pub ordered_rate: u32,
    /// Producer tasks.
    #[arg(long, default_value_t = 32)]
    pub producers: u32,
    /// Transactions per second of the transactional workload (0: none).
    #[arg(long, default_value_t = 20)]
    pub txn_rate: u32,
    /// Timed messages per second of the timer workload (0: none).
    #[arg(long, default_value_t = 20)]
    pub timer_rate: u32,
    /// Consumers in the group.
    #[arg(long, default_value_t = 2)]
    pub consumers: u32,
    /// One consumer leaves and rejoins the group this often, seconds (0: never).
    #[arg(long, default_value_t = 15)]
    pub churn: u64,
    /// The brokers' flush mode: `sync` (acknowledge after the fsync) or `async`.
    #[arg(long, default_value = "sync")]
    pub flush: String,
    /// Exit 0 only if the checkers find lost acknowledged messages (to show they fire:
    /// with `--flush async --nemesis power --all-at-once`).
    #[arg(long)]
    pub expect_lost: bool,
    /// The report's folder (default /tmp/raftmq-jepsen/<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The `raftmq` binary (default: the one next to this binary).
    #[arg(long)]
    pub raftmq: Option<PathBuf>,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the brokers' data directories (removed by default: they are large).
    #[arg(long)]
    pub keep_data: bool,
    /// At most this long for the consumers to drain after the load stops, seconds.
    #[arg(long, default_value_t = 60)]
    pub drain: u64,
}

/// Runs once; the exit code says whether the history checks out.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.replicas % 2 == 1 && (1..=7).contains(&args.replicas),
        "--replicas must be odd, 1 to 7"
    );
    anyhow::ensure!(
        args.rate > 0 && args.producers > 0,
        "--rate and --producers must be positive"
    );
    let raftmq = match &args.raftmq {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("raftmq"),
    };
    anyhow::ensure!(
        raftmq.is_file(),
        "no raftmq binary at {} (--raftmq)",
        raftmq.display()
    );
    let out = match &args.out {
        Some(p) => p.clone(),
        None => PathBuf::from(format!(
            "/tmp/raftmq-jepsen/{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
        )),
    };
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    Net::preflight()?;
    let net = Arc::new(Net::setup(args.replicas)?);
    // The harness's own threads live in the bridge's namespace from here on: every thread
    // the runtime makes inherits it.
    let result = Net::enter_ctl().and_then(|()| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("runtime")?
            .block_on(run(&args, &raftmq, &out, net.clone()))
    });
    net.teardown();
    if !args.keep_data {
        let _ = std::fs::remove_dir_all(out.join("data"));
    }
    let summary = result?;
    print!("{}", report::text(&summary));
    println!("report: {}", out.join("report.html").display());
    let ok = if args.expect_lost {
        !summary.lost.is_empty()
    } else {
        summary.valid()
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run(
    args: &Args,
    raftmq: &std::path::Path,
    out: &std::path::Path,
    net: Arc<Net>,
) -> anyhow::Result<report::Summary> {
    let rec = Recorder::create(&out.join("history.jsonl"))?;
    let opts = BrokerOptions {
        lazy_disk: args.nemesis.lazy(),
        flush: args.flush.clone(),
        extra: crate::txn::broker_section(),
    };
    let cluster = Arc::new(Mutex::new(Cluster::start(
        raftmq,
        out,
        args.replicas,
        opts,
    )?));
    let start = tokio::time::Instant::now();
    while cluster::leader().await.is_none() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no leader within 60 s (see {}/logs)",
            out.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let load = Load {
        rate: args.rate,
        producers: args.producers,
        consumers: args.consumers,
        churn: (args.churn > 0).then(|| Duration::from_secs(args.churn)),
    };
    let mut workloads: Vec<(Spec, Load)> = vec![(QUEUE, load.clone())];
    if args.ordered_rate > 0 {
        let ordered = Load {
            rate: args.ordered_rate,
            producers: (args.producers / 4).max(1),
            ..load.clone()
        };
        workloads.push((ORDERED, ordered));
    }
    for (spec, _) in &workloads {
        cluster::create_topic(spec.topic, QUEUES, Duration::from_secs(30)).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut txns = if args.txn_rate > 0 {
        cluster::create_topic(crate::txn::TOPIC, QUEUES, Duration::from_secs(30)).await?;
        Some(crate::txn::Txns::start(rec.clone(), 2, args.txn_rate, stop.clone()).await?)
    } else {
        None
    };
    let mut timers = if args.timer_rate > 0 {
        cluster::create_topic(crate::timers::TOPIC, QUEUES, Duration::from_secs(30)).await?;
        Some(crate::timers::Timers::start(rec.clone(), args.timer_rate, stop.clone()).await?)
    } else {
        None
    };
    rec.record(Op::new(rec.now(), "harness", Type::Info, "ready"));

    let consumers: Vec<Consumers> = workloads
        .iter()
        .map(|(spec, load)| Consumers::start(*spec, load, rec.clone()))
        .collect();
    let watching = tokio::spawn(cluster::watch(args.replicas, rec.clone(), stop.clone()));
    let producing: Vec<_> = workloads
        .iter()
        .map(|(spec, load)| {
            let (spec, load, rec, stop) = (*spec, load.clone(), rec.clone(), stop.clone());
            tokio::spawn(async move { workload::produce(spec, &load, rec, stop).await })
        })
        .collect();

    let mut nemesis = Nemesis::new(cluster.clone(), net.clone(), rec.clone(), args.seed);
    nemesis.all_at_once = args.all_at_once;
    let schedule = Schedule {
        kind: args.nemesis,
        hold: Duration::from_secs(args.hold),
        quiet: Duration::from_secs(args.quiet),
        loss_percent: args.loss,
        delay_ms: (args.delay, args.jitter),
    };
    let until = rec.now() + args.time * 1000;
    nemesis.run(&schedule, until).await?;
    if rec.now() < until {
        tokio::time::sleep(Duration::from_millis(until - rec.now())).await;
    }
    // The final heal, then a recovery phase under load: the cluster must take sends again.
    nemesis.heal_all()?;
    let healed = rec.now();
    let mut heal = Op::new(healed, "nemesis", Type::Info, "final-heal").value("everything healed");
    heal.wall = Some(crate::timers::now_ms());
    rec.record(heal);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Release);
    for p in producing {
        p.await.context("producers")??;
    }
    if let Some(t) = &mut txns {
        t.stop_sending().await;
    }
    if let Some(t) = &mut timers {
        t.stop_sending().await;
    }
    let _ = watching.await;

    // Drain: the consumers get until every acknowledged message was delivered.
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(args.drain);
    let topics: Vec<(&str, bool)> = workloads
        .iter()
        .map(|(s, _)| (s.topic, s.ordered))
        .collect();
    loop {
        let ops = rec.ops();
        let missing: usize = topics
            .iter()
            .map(|&(topic, orderly)| {
                let h = crate::history::queue_history(&ops, topic, GROUP, orderly);
                let delivered: std::collections::BTreeSet<&str> =
                    h.deliveries().map(|d| d.1).collect();
                h.acked
                    .keys()
                    .filter(|k| !delivered.contains(k.as_str()))
                    .count()
            })
            .sum();
        if missing == 0 || tokio::time::Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(t) = txns {
        // Every transaction decided (checks answered by the producers, still running) and
        // every committed one delivered, within the check schedule's bound.
        let bound = crate::txn::TIMEOUT_MS
            + u64::from(crate::txn::MAX_CHECKS) * crate::txn::CHECK_INTERVAL_MS
            + 30_000;
        crate::txn::settle(&rec, Duration::from_millis(bound)).await?;
        t.shutdown().await;
    }
    if let Some(t) = timers {
        crate::timers::settle(&rec, Duration::from_secs(args.drain)).await?;
        t.shutdown().await;
    }
    for c in consumers {
        c.stop().await;
    }

    let ops = rec.ops();
    let mut summary = report::analyze(&ops, &topics, GROUP, args.nemesis.name());
    if args.txn_rate > 0 {
        report::add_transactions(&mut summary, &ops);
    }
    if args.timer_rate > 0 {
        report::add_timers(&mut summary, &ops);
    }
    if !ops
        .iter()
        .any(|o| o.f == "send" && o.kind == Type::Ok && o.time > healed)
    {
        summary
            .liveness
            .push("no send was acknowledged in the 10 s after the final heal".into());
    }
    {
        let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        for id in c.ids() {
            if let Some(status) = c.exited(id) {
                summary.liveness.push(format!(
                    "broker n{id} exited by itself ({status}): see logs/n{id}.log"
                ));
            }
        }
        c.stop_all();
    }
    report::write(out, &summary, &ops)?;
    Ok(summary)
}
