//! Append throughput of the store versus the raw limit of the same disk, in one run.
//!
//! For 1 KiB messages in batches of 1, 16 and 128 (one batch = one Raft entry = one record):
//! - `raw_append_fdatasync`: plain `std::fs` on the same disk: append the batch's bytes to a
//!   file, then `fdatasync` (which also commits the growing size and allocation);
//! - `raw_overwrite_fdatasync`: the same over a file preallocated with written zeros, so each
//!   sync flushes data only — the best a synchronous log can do with one sync per batch;
//! - `store_sync`: `Store::append`, then wait for the group-commit flusher — one batch in
//!   flight, so every batch pays its own sync as the raw loops do (plus the task hand-offs of
//!   the runtime, as in a broker);
//! - `store_sync_grouped`: appends acknowledged by the group-commit flusher task, 8 batches in
//!   flight, as Raft drives the log (appends continue while a sync runs, so one sync covers
//!   several batches; the runtime's task hand-offs are included);
//! - `store_async`: `Store::append` only (the flusher syncs every 500 ms);
//! - `store_sync_recycled` (batch 128): `store_sync` on a log that is not zero-filling a new
//!   segment meanwhile, as a log whose retention recycles segments runs.
//!
//! The payload is encoded once: this measures the storage engine, not message encoding.
//! After each store case it prints the process's CPU time (user + system, every thread: the
//! writer, the flusher, the runtime, the background zero-fill) per message over the case's
//! timed iterations.
//! Run: `cargo bench -p raftmq-store --bench append`.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use raftmq_store::flush::FlushHandle;
use raftmq_store::message::encode_batch;
use raftmq_store::{
    EntryRef, FlushMode, LogIndex, Message, MmapDisk, RecordKind, Store, StoreConfig,
};

const MSG_BYTES: usize = 1024;
const BATCHES: [usize; 3] = [1, 16, 128];

fn bench_dir() -> tempfile::TempDir {
    // Same file system for the raw loop and the store.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

fn payload(batch: usize) -> Vec<u8> {
    let m = Message {
        topic: "bench".into(),
        body: vec![b'x'; MSG_BYTES],
        ..Message::default()
    };
    encode_batch(&vec![m; batch]).expect("encode")
}

fn config(mode: FlushMode) -> StoreConfig {
    StoreConfig {
        segment_bytes: 256 << 20,
        flush_mode: mode,
        ..StoreConfig::default()
    }
}

fn raw(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    for &batch in &BATCHES {
        let bytes = payload(batch);
        g.throughput(Throughput::Elements(batch as u64));
        // The literal baseline: append to a growing file, fdatasync each batch (each sync
        // also commits the new size and block allocation).
        g.bench_with_input(
            BenchmarkId::new("raw_append_fdatasync", batch),
            &batch,
            |b, _| {
                let dir = bench_dir();
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("raw"))
                    .unwrap();
                b.iter(|| {
                    f.write_all(&bytes).unwrap();
                    f.sync_data().unwrap();
                });
            },
        );
        // The stricter baseline: overwrite a file preallocated with written zeros, so a
        // sync flushes data only — the best a synchronous log can do on this disk.
        g.bench_with_input(
            BenchmarkId::new("raw_overwrite_fdatasync", batch),
            &batch,
            |b, _| {
                let dir = bench_dir();
                let path = dir.path().join("raw");
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .unwrap();
                let file_len: u64 = 256 << 20;
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..(file_len >> 20) {
                    f.write_all(&zeros).unwrap();
                }
                f.sync_all().unwrap();
                let mut pos = 0u64;
                b.iter(|| {
                    if pos + bytes.len() as u64 > file_len {
                        pos = 0;
                    }
                    f.seek(SeekFrom::Start(pos)).unwrap();
                    f.write_all(&bytes).unwrap();
                    f.sync_data().unwrap();
                    pos += bytes.len() as u64;
                });
            },
        );
    }
    g.finish();
}

/// Appends `iters` batches, keeping up to `in_flight` waiting for durability.
async fn store_loop(
    store: &mut Store,
    flusher: Option<&FlushHandle>,
    next: &mut u64,
    bytes: &[u8],
    iters: u64,
    in_flight: usize,
) -> Duration {
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..iters {
        let e = EntryRef {
            term: 1,
            index: LogIndex(*next),
            kind: RecordKind::MESSAGES,
            timestamp_ms: 1,
            payload: bytes,
        };
        store.append(&[e]).expect("append");
        *next += 1;
        if let Some(f) = flusher {
            let f = f.clone();
            let end = store.reader().written();
            pending.push_back(tokio::spawn(async move { f.wait_durable(end).await }));
            while pending.len() >= in_flight {
                pending
                    .pop_front()
                    .expect("non-empty")
                    .await
                    .expect("join")
                    .expect("durable");
            }
        }
    }
    for p in pending {
        p.await.expect("join").expect("durable");
    }
    start.elapsed()
}

/// The process's CPU time so far (user + system, all threads).
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; nothing else is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(r, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn store(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for &batch in &BATCHES {
        let bytes = payload(batch);
        g.throughput(Throughput::Elements(batch as u64));
        for (name, mode, in_flight, segment_bytes) in [
            ("store_sync", FlushMode::Sync, 1, 1u64 << 30),
            ("store_sync_grouped", FlushMode::Sync, 8, 1 << 30),
            ("store_async", FlushMode::Async, 0, 1 << 30),
            // A log whose next segment is recycled by retention: no zero-filling in the
            // window (4 GiB segments, spare made before timing).
            ("store_sync_recycled", FlushMode::Sync, 1, 4 << 30),
        ] {
            if segment_bytes > 1 << 30 && batch != 128 {
                continue;
            }
            // One store per case, opened and warmed (its first segment made) before timing;
            // the timed loop includes everything an append costs, also the background
            // zero-filling of the next segment once the writer is half-way through this one.
            let dir = bench_dir();
            let disk = Arc::new(MmapDisk::open(dir.path()).unwrap());
            let cfg = StoreConfig {
                segment_bytes,
                ..config(mode)
            };
            let mut store = Store::open(disk, cfg).unwrap();
            if segment_bytes > 1 << 30 {
                store.reader().prepare_spare().unwrap();
            }
            let flusher = rt.block_on(async { FlushHandle::spawn(store.reader(), mode, 500) });
            let mut next = 1u64;
            let f = (mode == FlushMode::Sync).then_some(&flusher);
            rt.block_on(store_loop(
                &mut store,
                Some(&flusher),
                &mut next,
                &bytes,
                1,
                1,
            ));
            store.sync().unwrap();
            let (mut cpu, mut msgs) = (Duration::ZERO, 0u64);
            g.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, _| {
                b.iter_custom(|iters| {
                    let before = process_cpu();
                    let took = rt.block_on(store_loop(
                        &mut store, f, &mut next, &bytes, iters, in_flight,
                    ));
                    cpu += process_cpu().saturating_sub(before);
                    msgs += iters * batch as u64;
                    took
                });
            });
            if msgs > 0 {
                println!(
                    "append/{name}/{batch}: CPU per message {:.2} µs ({msgs} messages)",
                    cpu.as_secs_f64() * 1e6 / msgs as f64
                );
            }
            flusher.stop();
            drop(store);
            drop(dir);
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = raw, store
}
criterion_main!(benches);
