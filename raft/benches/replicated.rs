//! Replicated append throughput of a 3-replica group (one process, loopback gRPC, real files)
//! versus the same store appending alone, 1 KiB messages, flush `sync` and `async`, in one run.
//!
//! Both sides take the same shape: `CLIENTS` concurrent writers, each sending one message at a
//! time; a single writer task batches whatever is queued (up to 1024 messages / 4 MiB) into one
//! record. The store alone then appends and waits for the flusher; the group proposes through
//! Raft (append, replicate to a quorum, sync on each, apply).
//!
//! Run: `cargo bench -p raftmq-raft --bench replicated` (env `BENCH_SECS`, default 3).

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

/// Drives `CLIENTS` writers for `secs` seconds after a warm-up; returns messages/s.
async fn drive<F, Fut>(secs: f64, write: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (count, stop, write) = (count.clone(), stop.clone(), write.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if write(c).await {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (count.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

type Req = (Message, oneshot::Sender<bool>);

/// The store alone, with the same single-writer batching as a replica.
async fn store_alone(mode: FlushMode, secs: f64) -> anyhow::Result<f64> {
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
            let (msgs, replies): (Vec<Message>, Vec<oneshot::Sender<bool>>) =
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
                let ok = f.wait_durable(end).await.is_ok();
                for r in replies {
                    let _ = r.send(ok);
                }
            });
        }
    });
    let rate = drive(secs, move |c| {
        let tx = tx.clone();
        async move {
            let (rtx, rrx) = oneshot::channel();
            if tx.send((message(c), rtx)).await.is_err() {
                return false;
            }
            rrx.await.unwrap_or(false)
        }
    })
    .await;
    Ok(rate)
}

/// A 3-replica group over loopback gRPC, writing through the leader.
async fn group(mode: FlushMode, secs: f64) -> anyhow::Result<f64> {
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
            mutations: Default::default(),
        };
        let r = Replica::start(Arc::new(MmapDisk::open(&dir)?), cfg).await?;
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?;
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
    let leader = loop {
        if let Some(r) = replicas.iter().find(|r| r.raft().is_leader()) {
            break r.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let rate = drive(secs, move |c| {
        let leader = leader.clone();
        async move { leader.write(vec![message(c)]).await.is_ok() }
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

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("1 KiB messages, {CLIENTS} concurrent writers, {secs} s per case");
    for mode in [FlushMode::Sync, FlushMode::Async] {
        let alone = rt.block_on(store_alone(mode, secs))?;
        let replicated = rt.block_on(group(mode, secs))?;
        println!(
            "flush {:<5} store alone {:>9.0} msg/s | 3-replica group {:>9.0} msg/s | ratio {:>5.1}%",
            format!("{mode:?}"),
            alone,
            replicated,
            100.0 * replicated / alone
        );
    }
    Ok(())
}
