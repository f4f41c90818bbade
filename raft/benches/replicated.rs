//! Replicated append throughput of a 3-replica group (one process, loopback gRPC, real files)
//! versus the same store appending alone, 1 KiB messages, flush `sync` and `async`, in one run.
//!
//! Each case warms up for 1.5 s first (a new store zero-fills its next segment in the
//! background, and the first fsyncs queue behind that). Both sides take the same shape: `CLIENTS` concurrent writers, each sending one message at a
//! time; a single writer task batches whatever is queued (up to 1024 messages / 4 MiB) into one
//! record. The store alone then appends and waits for the flusher; the group proposes through
//! Raft (append, replicate to a quorum, sync on each, apply).
//!
//! Run: `cargo bench -p raftmq-raft --bench replicated` (env `BENCH_SECS`, default 3;
//! `BENCH_MODES=sync` or `async` for one flush mode).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftmq_raft::{Replica, ReplicaConfig};
use raftmq_store::flush::FlushHandle;
use raftmq_store::message::encode_batch;
use raftmq_store::{
    EntryRef, FlushMode, LogIndex, Message, MmapDisk, Position, RecordKind, Store, StoreConfig,
};
use tokio::sync::{mpsc, oneshot};

const CLIENTS: usize = 256;
const BODY: usize = 1024;
const BATCH_MAX: usize = 1024;

fn store_config(mode: FlushMode) -> StoreConfig {
    StoreConfig {
        segment_bytes: 256 << 20,
        max_record_bytes: 8 << 20,
        flush_mode: mode,
        ..StoreConfig::default()
    }
}

fn message(c: usize) -> Message {
    Message {
        topic: "Bench".into(),
        queue_id: (c % 8) as u32,
        body: vec![b'x'; BODY],
        ..Default::default()
    }
}

/// What one case measured, inside its window.
struct Rate {
    msgs_per_sec: f64,
    /// Process CPU (user + system) per acknowledged message, microseconds.
    cpu_us_per_msg: f64,
}

/// Drives `CLIENTS` writers for `secs` seconds after a warm-up; returns messages/s and the
/// process CPU per message in the window.
/// Failed writes inside the measured window are reported (the first one's error too).
async fn drive<F, Fut>(secs: f64, write: F) -> Rate
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let count = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (count, failed, measuring, stop, write) = (
            count.clone(),
            failed.clone(),
            measuring.clone(),
            stop.clone(),
            write.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match write(c).await {
                    Ok(()) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if measuring.load(Ordering::Relaxed) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed write in the measured window: {e}");
                        }
                    }
                    Err(_) => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    measuring.store(true, Ordering::Relaxed);
    let (c0, t0, cpu0) = (count.load(Ordering::Relaxed), Instant::now(), cpu_secs());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1, cpu1) = (count.load(Ordering::Relaxed), Instant::now(), cpu_secs());
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{failed} writes failed in the measured window");
    }
    for t in tasks {
        let _ = t.await;
    }
    let n = (c1 - c0).max(1) as f64;
    Rate {
        msgs_per_sec: (c1 - c0) as f64 / (t1 - t0).as_secs_f64(),
        cpu_us_per_msg: (cpu1 - cpu0) * 1e6 / n,
    }
}

type Req = (Message, oneshot::Sender<Result<(), String>>);

/// The store alone, with the same single-writer batching as a replica.
async fn store_alone(mode: FlushMode, secs: f64) -> anyhow::Result<Rate> {
    let dir = tempfile::tempdir()?;
    let disk = Arc::new(MmapDisk::open(dir.path())?);
    let mut store = Store::open(disk, store_config(mode))?;
    let flusher = FlushHandle::spawn(store.reader(), mode, 500);
    let (tx, mut rx) = mpsc::channel::<Req>(4096);
    tokio::spawn(async move {
        let mut index = 1u64;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let (msgs, replies): (Vec<Message>, Vec<oneshot::Sender<_>>) =
                batch.into_iter().unzip();
            let payload = encode_batch(&msgs).expect("valid batch");
            let entry = EntryRef {
                term: 1,
                index: LogIndex(index),
                kind: RecordKind::MESSAGES,
                timestamp_ms: 1,
                payload: &payload,
            };
            index += 1;
            let loc = store.append(&[entry]).expect("append")[0];
            store.dispatch_upto(LogIndex(index - 1)).expect("dispatch");
            let end = Position(loc.position.0 + u64::from(loc.len));
            let f = flusher.clone();
            tokio::spawn(async move {
                let r = f.wait_durable(end).await.map_err(|e| e.to_string());
                for reply in replies {
                    let _ = reply.send(r.clone());
                }
            });
        }
    });
    let rate = drive(secs, move |c| {
        let tx = tx.clone();
        async move {
            let (rtx, rrx) = oneshot::channel();
            if tx.send((message(c), rtx)).await.is_err() {
                return Err("writer stopped".to_string());
            }
            rrx.await
                .unwrap_or_else(|_| Err("writer dropped the write".to_string()))
        }
    })
    .await;
    Ok(rate)
}

/// A 3-replica group over loopback gRPC, writing through the leader.
async fn group(mode: FlushMode, secs: f64) -> anyhow::Result<Rate> {
    let tmp = tempfile::tempdir()?;
    let mut replicas = Vec::new();
    let mut voters = BTreeMap::new();
    let mut stops = Vec::new();
    for id in 1..=3u64 {
        let dir = tmp.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir)?;
        let cfg = ReplicaConfig {
            group: "bench".into(),
            node_id: id,
            store: store_config(mode),
            timeouts: Default::default(),
            batch: raftmq_raft::BatchLimits {
                max_messages: BATCH_MAX,
                max_bytes: 4 << 20,
            },
            retention_interval_ms: 0,
            mutations: Default::default(),
        };
        let r = Replica::start(Arc::new(MmapDisk::open(&dir)?), cfg).await?;
        let incoming = raftmq_raft::network::listen("127.0.0.1:0".parse()?)?;
        voters.insert(id, incoming.local_addr()?.to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = r.raft_service();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        stops.push(stop);
        replicas.push(r);
    }
    replicas[0].initialize(&voters).await?;
    while !replicas.iter().any(|r| r.raft().is_leader()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Writers follow the leader: a leadership change (the start-up fsyncs of three new
    // stores on one disk can delay heartbeats past an election timeout) redirects them.
    let leader = Arc::new(AtomicU64::new(
        replicas
            .iter()
            .find(|r| r.raft().is_leader())
            .map_or(1, |r| r.node_id()),
    ));
    let all = Arc::new(replicas.clone());
    let rate = drive(secs, move |c| {
        let (leader, all) = (leader.clone(), all.clone());
        async move {
            let id = leader.load(Ordering::Relaxed);
            let r = &all[(id - 1) as usize];
            match r.write(vec![message(c)]).await {
                Ok(_) => Ok(()),
                Err(raftmq_raft::WriteError::NotLeader {
                    leader_id: Some(l), ..
                }) => {
                    leader.store(l, Ordering::Relaxed);
                    Err(format!("leader moved from {id} to {l}"))
                }
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    for r in &replicas {
        r.shutdown().await;
    }
    for s in stops {
        let _ = s.send(());
    }
    Ok(rate)
}

/// CPU seconds this process has used so far (user + system), from `/proc/self/stat`.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    // `RUST_LOG=openraft=info` (for example) shows what Raft does under the load.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("1 KiB messages, {CLIENTS} concurrent writers, {secs} s per case");
    // `BENCH_MODES=async` (or `sync`) runs one flush mode only.
    let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "sync,async".into());
    for mode in [FlushMode::Sync, FlushMode::Async] {
        let name = format!("{mode:?}").to_lowercase();
        if !modes.split(',').any(|m| m.trim() == name) {
            continue;
        }
        // `BENCH_GROUP_ONLY=1` skips the store-alone side (for profiling the group).
        let alone = if std::env::var_os("BENCH_GROUP_ONLY").is_some() {
            Rate {
                msgs_per_sec: f64::NAN,
                cpu_us_per_msg: f64::NAN,
            }
        } else {
            rt.block_on(store_alone(mode, secs))?
        };
        // Let the store-alone case's writeback and file deletion finish before the group
        // starts, so one case's disk work does not land in the other's window.
        let _ = std::process::Command::new("sync").status();
        std::thread::sleep(Duration::from_secs(1));
        let replicated = rt.block_on(group(mode, secs))?;
        println!(
            "flush {:<5} store alone {:>9.0} msg/s ({:>4.1} us CPU/msg) | 3-replica group {:>9.0} msg/s ({:>4.1} us CPU/msg) | ratio {:>5.1}%",
            format!("{mode:?}"),
            alone.msgs_per_sec,
            alone.cpu_us_per_msg,
            replicated.msgs_per_sec,
            replicated.cpu_us_per_msg,
            100.0 * replicated.msgs_per_sec / alone.msgs_per_sec
        );
    }
    Ok(())
}
