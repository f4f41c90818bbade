//! Delay without netem: this kernel has no `sch_netem`, so the harness delays the brokers'
//! Raft traffic in user space. Each broker's namespace runs a relay process
//! (`raftmq-jepsen relay`) on the address the group's membership names for that broker (port
//! [`crate::cluster::RAFT_PORT`]); it forwards to the broker's own port. Peers dial the
//! membership address, so every Raft byte between brokers passes a relay; clients use the
//! broker's own address and are not delayed.
//!
//! The relay reads its delay from a control file every 100 ms: `"<ms> <jitter ms>"` (`"0 0"`:
//! none). Each chunk read from either side is held for a delay drawn uniformly from
//! `ms ± jitter` before it is written on — one-way, in both directions, as netem on every
//! node's interface would — and never before the chunk ahead of it (a TCP stream keeps its
//! order).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// `raftmq-jepsen relay`: forwards `listen` → `to`, delayed as `control` says.
#[derive(Debug, Clone, clap::Parser)]
pub struct RelayArgs {
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    #[arg(long)]
    pub to: std::net::SocketAddr,
    #[arg(long)]
    pub control: PathBuf,
}

/// Writes a delay for a relay to pick up.
pub fn set_delay(control: &Path, ms: u64, jitter_ms: u64) -> std::io::Result<()> {
    let tmp = control.with_extension("tmp");
    std::fs::write(&tmp, format!("{ms} {jitter_ms}\n"))?;
    std::fs::rename(tmp, control)
}

fn read_delay(control: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(control).unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Runs the relay until killed.
pub fn main(args: RelayArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: RelayArgs) -> anyhow::Result<()> {
    // (delay ms << 32) | jitter ms
    let delay = Arc::new(AtomicU64::new(0));
    {
        let (delay, control) = (delay.clone(), args.control.clone());
        tokio::spawn(async move {
            loop {
                let (ms, jitter) = read_delay(&control);
                delay.store(
                    (ms.min(u32::MAX.into()) << 32) | jitter.min(u32::MAX.into()),
                    Ordering::Release,
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let listener = TcpListener::bind(args.listen).await?;
    loop {
        let (inbound, _) = listener.accept().await?;
        let (to, delay) = (args.to, delay.clone());
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(to).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, delay.clone()));
            tokio::spawn(pump(or, iw, delay));
        });
    }
}

/// Copies `from` to `to`, each chunk held for the current delay (in order).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut last = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let d = delay.load(Ordering::Acquire);
        let (ms, jitter) = (d >> 32, d & 0xffff_ffff);
        let held = if ms == 0 {
            0
        } else {
            let lo = ms.saturating_sub(jitter);
            rng.random_range(lo..=ms + jitter)
        };
        let at = (Instant::now() + Duration::from_millis(held)).max(last);
        last = at;
        if tx.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
