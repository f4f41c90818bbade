//! `raftmq`: one command for everything.
//!
//! Today it has the storage tools; `namesrv`, `broker`, `dev`, the admin commands, `send`,
//! `consume` and `bench` arrive with the issues that build them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftmq_store::{MmapDisk, Store, StoreConfig};

#[derive(Parser)]
#[command(
    name = "raftmq",
    version,
    about = "A RocketMQ-model message queue replicated with Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Storage tools that work on a replica's data directory.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Opens a data directory as a broker would (recovering a torn tail), verifies every
    /// retained CommitLog record, and prints a summary. Exits non-zero on corruption.
    Check {
        /// The replica's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// CommitLog segment size the directory was written with.
        #[arg(long, default_value_t = StoreConfig::default().segment_bytes)]
        segment_bytes: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Store(StoreCommand::Check {
            data_dir,
            segment_bytes,
        }) => check(data_dir, segment_bytes),
    }
}

fn check(data_dir: PathBuf, segment_bytes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.is_dir(),
        "{} is not a directory",
        data_dir.display()
    );
    let disk =
        MmapDisk::open(&data_dir).with_context(|| format!("opening {}", data_dir.display()))?;
    // max_record_bytes only limits new appends; a smaller segment must still pass validation.
    let defaults = StoreConfig::default();
    let max_record_bytes = defaults
        .max_record_bytes
        .min(segment_bytes.saturating_sub(64));
    let config = StoreConfig {
        segment_bytes,
        max_record_bytes,
        ..defaults
    };
    let store = Store::open(Arc::new(disk), config).context("recovering the store")?;
    let entries = store.verify().context("verifying the CommitLog")?;
    let (first, last) = store.log_bounds()?;
    let r = store.reader();
    println!(
        "commitlog: positions [{}, {}), synced to {}, {} segment(s)",
        r.first(),
        r.written(),
        r.synced(),
        r.segment_starts().len()
    );
    match last {
        Some((last, term)) => println!(
            "raft log: indexes [{first}, {last}] (last term {term}), {entries} entries verified"
        ),
        None => println!("raft log: empty (next index {first})"),
    }
    println!("dispatched up to: {:?}", store.dispatched().map(|i| i.0));
    for (q, min, max) in store.queues() {
        println!("queue {}#{}: offsets [{min}, {max})", q.topic, q.queue_id);
    }
    for t in store.meta().topics()? {
        println!(
            "topic {}: read {} write {} perm {}",
            t.name, t.read_queue_nums, t.write_queue_nums, t.perm
        );
    }
    Ok(())
}
