//! Faults, by real means: SIGKILL, SIGSTOP/SIGCONT, nftables rules in the nodes'
//! namespaces, SIGKILL on lazy disks (a power cut), and damaged files on a stopped replica.
//! One fault at a time: it starts, holds for a while, is healed; then the cluster gets a
//! quiet while before the next.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::cluster::{Cluster, State, leader};
use crate::history::{Op, Recorder, Type};
use crate::net::Net;

/// A kind of fault (`--nemesis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// SIGKILL some brokers, start them again at the heal.
    Kill,
    /// SIGSTOP some brokers, SIGCONT them at the heal.
    Pause,
    /// Cut the brokers' network into parts.
    Partition,
    /// Drop a share of every packet arriving at the brokers.
    Loss,
    /// Delay the Raft traffic between brokers (100 ms ± 50 ms one way by default).
    Delay,
    /// SIGKILL brokers running on lazy disks: what was not synced is gone, as in a power cut.
    Power,
    /// Damage a stopped replica's CommitLog (bit flips or a cut tail), then start it again.
    Corrupt,
    /// A random one of the others each time (kill is then a power cut: the disks are lazy).
    All,
    /// No faults.
    None,
}

impl Kind {
    /// Whether the brokers must run on lazy disks.
    pub fn lazy(self) -> bool {
        matches!(self, Kind::Power | Kind::All)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Loss => "loss",
            Kind::Delay => "delay",
            Kind::Power => "power",
            Kind::Corrupt => "corrupt",
            Kind::All => "all",
            Kind::None => "none",
        }
    }
}

/// The fault schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: Kind,
    /// How long a fault holds.
    pub hold: Duration,
    /// The quiet time after a heal.
    pub quiet: Duration,
    /// Loss, percent of packets.
    pub loss_percent: u32,
    /// Delay, ms one way, and its jitter.
    pub delay_ms: (u64, u64),
}

/// One fault in force: what heals it.
#[derive(Debug, Clone)]
enum Active {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    Network,
    Delay(Vec<u64>),
    Nothing,
}

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    pub net: Arc<Net>,
    pub rec: Recorder,
    /// Kill, pause and power faults hit every broker.
    pub all_at_once: bool,
    rng: StdRng,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Nemesis {
    pub fn new(cluster: Arc<Mutex<Cluster>>, net: Arc<Net>, rec: Recorder, seed: u64) -> Self {
        Nemesis {
            cluster,
            net,
            rec,
            all_at_once: false,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Runs the schedule until `until` (ms since the run began), then heals everything.
    pub async fn run(&mut self, s: &Schedule, until: u64) -> anyhow::Result<()> {
        if s.kind == Kind::None {
            return Ok(());
        }
        // Let the workload warm up before the first fault.
        tokio::time::sleep(s.quiet).await;
        while self.rec.now() + s.hold.as_millis() as u64 <= until {
            let kind = match s.kind {
                Kind::All => {
                    let kinds = [
                        Kind::Power,
                        Kind::Pause,
                        Kind::Partition,
                        Kind::Loss,
                        Kind::Delay,
                        Kind::Corrupt,
                    ];
                    kinds[self.rng.random_range(0..kinds.len())]
                }
                k => k,
            };
            let active = self.start(kind, s).await?;
            tokio::time::sleep(s.hold).await;
            self.heal(active)?;
            if self.rec.now() + s.quiet.as_millis() as u64 > until {
                break;
            }
            tokio::time::sleep(s.quiet).await;
        }
        Ok(())
    }

    /// Picks brokers for a kill or a pause: one, the leader, a minority, a majority, or all.
    async fn targets(&mut self) -> (Vec<u64>, &'static str) {
        let ids = lock(&self.cluster).ids();
        let n = ids.len();
        if self.all_at_once {
            return (ids, "all");
        }
        let leader = leader().await.map(|(id, _)| id);
        let mut shuffled = ids.clone();
        for i in (1..n).rev() {
            let j = self.rng.random_range(0..=i);
            shuffled.swap(i, j);
        }
        match self.rng.random_range(0..5) {
            0 => (shuffled[..1].to_vec(), "one"),
            1 => match leader {
                Some(l) => (vec![l], "leader"),
                None => (shuffled[..1].to_vec(), "one (no leader known)"),
            },
            2 => (shuffled[..(n - 1) / 2].to_vec(), "minority"),
            3 => (shuffled[..n / 2 + 1].to_vec(), "majority"),
            _ => (ids, "all"),
        }
    }

    fn note(&self, kind: Type, f: &str, what: String) {
        self.rec
            .record(Op::new(self.rec.now(), "nemesis", kind, f).value(what));
    }

    async fn start(&mut self, kind: Kind, s: &Schedule) -> anyhow::Result<Active> {
        Ok(match kind {
            Kind::Kill | Kind::Power => {
                let (ids, how) = self.targets().await;
                let what = if kind == Kind::Power {
                    "power cut"
                } else {
                    "kill"
                };
                self.note(Type::Info, "start", format!("{what} {ids:?} ({how})"));
                let mut c = lock(&self.cluster);
                for &id in &ids {
                    c.kill(id);
                }
                Active::Restart(ids)
            }
            Kind::Pause => {
                let (ids, how) = self.targets().await;
                self.note(Type::Info, "start", format!("pause {ids:?} ({how})"));
                let mut c = lock(&self.cluster);
                for &id in &ids {
                    c.pause(id);
                }
                Active::Resume(ids)
            }
            Kind::Partition => {
                let (sees, how) = self.partition_plan().await;
                self.note(Type::Info, "start", format!("partition {how}: {sees:?}"));
                self.net.partition(&sees)?;
                Active::Network
            }
            Kind::Loss => {
                let ids = lock(&self.cluster).ids();
                self.note(
                    Type::Info,
                    "start",
                    format!("loss {}% at {ids:?}", s.loss_percent),
                );
                self.net.loss(&ids, s.loss_percent)?;
                Active::Network
            }
            Kind::Delay => {
                let ids = lock(&self.cluster).ids();
                let (ms, jitter) = s.delay_ms;
                self.note(
                    Type::Info,
                    "start",
                    format!("delay {ms} ms ± {jitter} ms between {ids:?}"),
                );
                lock(&self.cluster).set_delay(&ids, ms, jitter)?;
                Active::Delay(ids)
            }
            Kind::Corrupt => {
                let what = self.corrupt().await?;
                self.note(Type::Info, "start", what);
                Active::Nothing
            }
            Kind::All | Kind::None => Active::Nothing,
        })
    }

    fn heal(&mut self, active: Active) -> anyhow::Result<()> {
        let what = match &active {
            Active::Restart(ids) => {
                let mut c = lock(&self.cluster);
                for &id in ids {
                    c.start_broker(id)?;
                }
                format!("restart {ids:?}")
            }
            Active::Resume(ids) => {
                let mut c = lock(&self.cluster);
                for &id in ids {
                    c.resume(id);
                }
                format!("resume {ids:?}")
            }
            Active::Network => {
                self.net.heal()?;
                "network healed".to_string()
            }
            Active::Delay(ids) => {
                lock(&self.cluster).set_delay(ids, 0, 0)?;
                "delay removed".to_string()
            }
            Active::Nothing => "nothing to heal".to_string(),
        };
        self.note(Type::Info, "stop", what);
        Ok(())
    }

    /// Heals whatever the harness left: every broker running, the network whole.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        self.net.heal()?;
        let mut c = lock(&self.cluster);
        let ids = c.ids();
        c.set_delay(&ids, 0, 0)?;
        for id in c.ids() {
            match c.state(id) {
                State::Paused => c.resume(id),
                State::Down => c.start_broker(id)?,
                State::Running => {}
            }
        }
        Ok(())
    }

    /// Which nodes each node still hears: random halves, the leader alone, a bridge (one
    /// node hears both sides, which do not hear each other), or (five nodes) a ring of
    /// overlapping majorities.
    async fn partition_plan(&mut self) -> (Vec<(u64, BTreeSet<u64>)>, &'static str) {
        let ids = lock(&self.cluster).ids();
        let n = ids.len();
        let mut shuffled = ids.clone();
        for i in (1..n).rev() {
            let j = self.rng.random_range(0..=i);
            shuffled.swap(i, j);
        }
        let modes = if n >= 5 { 4 } else { 3 };
        match self.rng.random_range(0..modes) {
            0 => {
                let (a, b) = shuffled.split_at(n / 2);
                (halves(a, b), "random halves")
            }
            1 => {
                let l = leader().await.map(|(id, _)| id).unwrap_or(shuffled[0]);
                let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != l).collect();
                (halves(&[l], &rest), "leader isolated")
            }
            2 => {
                // shuffled[0] is the bridge; the rest split in two sides.
                let bridge = shuffled[0];
                let (a, b) = shuffled[1..].split_at((n - 1) / 2);
                let mut sees: Vec<(u64, BTreeSet<u64>)> = Vec::new();
                for &x in a {
                    sees.push((x, a.iter().copied().chain([bridge]).collect()));
                }
                for &x in b {
                    sees.push((x, b.iter().copied().chain([bridge]).collect()));
                }
                sees.push((bridge, ids.iter().copied().collect()));
                (sees, "bridge")
            }
            _ => {
                // Node at ring position i hears positions i-1, i, i+1 (a majority of five).
                let sees = (0..n)
                    .map(|i| {
                        let heard = [(i + n - 1) % n, i, (i + 1) % n]
                            .into_iter()
                            .map(|p| shuffled[p])
                            .collect();
                        (shuffled[i], heard)
                    })
                    .collect();
                (sees, "majorities ring")
            }
        }
    }

    /// Stops a random follower, damages its newest CommitLog segment (a few bit flips in
    /// its written part, or its written part cut short), and starts it again.
    async fn corrupt(&mut self) -> anyhow::Result<String> {
        let ids = lock(&self.cluster).ids();
        let leader = leader().await.map(|(id, _)| id);
        let followers: Vec<u64> = ids.iter().copied().filter(|&i| Some(i) != leader).collect();
        if followers.is_empty() {
            // A group of one has no peer to repair from.
            return Ok("corrupt: no follower to damage".into());
        }
        let id = followers[self.rng.random_range(0..followers.len())];
        let mut c = lock(&self.cluster);
        c.kill(id);
        let dir = c.data_dir(id).join("commitlog");
        let what = match newest_segment(&dir) {
            Some(seg) => {
                let how = damage(&seg, &mut self.rng)?;
                format!("corrupt n{id}: {how} in {}", seg.display())
            }
            None => format!("corrupt n{id}: no CommitLog segment yet"),
        };
        c.start_broker(id)?;
        Ok(what)
    }
}

fn halves(a: &[u64], b: &[u64]) -> Vec<(u64, BTreeSet<u64>)> {
    let mut sees = Vec::new();
    for &x in a {
        sees.push((x, a.iter().copied().collect()));
    }
    for &x in b {
        sees.push((x, b.iter().copied().collect()));
    }
    sees
}

/// The newest CommitLog segment with something written in it (a segment just rolled to is
/// all zeros).
fn newest_segment(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut segs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    segs.sort();
    segs.into_iter()
        .rev()
        .find(|p| std::fs::read(p).is_ok_and(|b| b.iter().any(|&x| x != 0)))
}

/// Damages `path`'s written part (up to its last non-zero byte): flips 1–8 random bits, or
/// zeroes its last 1–64 KiB (a cut tail: the segment is preallocated, so a cut is zeros).
pub fn damage(path: &std::path::Path, rng: &mut impl Rng) -> anyhow::Result<String> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let Some(end) = bytes.iter().rposition(|&b| b != 0).map(|p| p + 1) else {
        return Ok("nothing written".into());
    };
    let how = if rng.random_bool(0.5) {
        let flips = rng.random_range(1..=8);
        let mut at = Vec::new();
        for _ in 0..flips {
            let pos = rng.random_range(0..end);
            bytes[pos] ^= 1 << rng.random_range(0..8);
            at.push(pos);
        }
        at.sort_unstable();
        format!("{flips} bit(s) flipped at {at:?} of {end} written bytes")
    } else {
        let cut = rng.random_range(1..=64 * 1024).min(end);
        bytes[end - cut..end].fill(0);
        format!("last {cut} of {end} written bytes cut")
    };
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(how)
}
