//! `raftmq bench failover`: from a leader's SIGKILL to the first acknowledged send of a
//! producer that was already running, in stages, over several trials.
//!
//! The brokers must run on this machine (the bench kills the leader by the pid it reports in
//! `Admin.ProcessStats`) under a supervisor that starts a killed broker again
//! (`scripts/bench-group.sh --restart`), so every trial starts from a whole group.
//!
//! One SDK producer sends all along (`--in-flight` sends at once). Each trial:
//! 1. waits until every replica of the group answers, one leads, and sends are acknowledged;
//! 2. kills the leader (`SIGKILL`) at `t0`;
//! 3. polls the replicas (`GroupStatus`, every 5 ms) for the stages:
//!    **detection** — a replica's term passes the old one (its election timer fired: it
//!    stopped hearing from the leader, or the killed one came back and stood for election);
//!    **election** — a replica leads in the new term;
//!    **first commit** — the new leader's committed index reaches the last index it had when
//!    first seen leading (the entry every new leader commits to start its term);
//! 4. **first ack** — the first acknowledgement of a send *started after* `t0`;
//!    **redirect** = first ack − election: the SDK finding the new leader.
//!
//! Bounded: every wait has a deadline; at most [`TRIALS_MAX`] trials.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use raftmq_client::{Message, Producer};
use raftmq_proto::v1::{GroupStatusRequest, GroupStatusResponse, ProcessStatsRequest, Role};

use crate::ops::{Cluster, admin};

/// Most trials one run makes.
pub const TRIALS_MAX: usize = 100;
/// How often the replicas are asked for their state.
const POLL: Duration = Duration::from_millis(5);
/// How long a trial may take to see each stage, and the group to be whole again.
const STAGE_WAIT: Duration = Duration::from_secs(30);
const WHOLE_WAIT: Duration = Duration::from_secs(90);

/// The options of `bench failover`.
#[derive(clap::Args)]
pub struct Failover {
    #[arg(long, default_value = "127.0.0.1:9876")]
    namesrv: String,
    #[arg(long, default_value = "BenchTopic")]
    topic: String,
    /// Leader kills.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Sends in flight all along.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Seconds of steady sending between a whole group and the next kill.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
}

/// When each stage was reached, counted from the kill.
#[derive(Debug, Clone, Copy)]
struct Stages {
    detection: Duration,
    election: Duration,
    first_commit: Duration,
    first_ack: Duration,
}

/// Send start and acknowledgement times of the running producer.
#[derive(Default)]
struct Acks {
    /// (started, acknowledged) of every acknowledged send, in acknowledgement order.
    done: Vec<(Instant, Instant)>,
}

impl Acks {
    /// The first acknowledgement of a send started after `t0`.
    fn first_started_after(&self, t0: Instant) -> Option<Instant> {
        self.done
            .iter()
            .filter(|(s, _)| *s > t0)
            .map(|(_, a)| *a)
            .min()
    }
}

async fn status(addr: &str) -> Option<GroupStatusResponse> {
    let call = async {
        let mut a = admin(addr).await?;
        anyhow::Ok(a.group_status(GroupStatusRequest {}).await?.into_inner())
    };
    tokio::time::timeout(Duration::from_millis(500), call)
        .await
        .ok()?
        .ok()
}

/// The group's replica addresses, from the name server.
async fn replicas(cluster: &Cluster) -> anyhow::Result<(String, Vec<String>)> {
    let groups = cluster.groups().await?;
    ensure!(
        groups.len() == 1,
        "bench failover wants a cluster of one group"
    );
    let g = &groups[0];
    Ok((
        g.group.clone(),
        g.replicas.iter().map(|r| r.addr.clone()).collect(),
    ))
}

/// Waits until every replica answers, all agree on one leader in one term, and all applied
/// (nearly) what it committed;
/// returns the leader's address and status.
async fn whole(addrs: &[String]) -> anyhow::Result<(String, GroupStatusResponse)> {
    let end = Instant::now() + WHOLE_WAIT;
    while Instant::now() < end {
        let mut all = Vec::new();
        for a in addrs {
            all.push((a.clone(), status(a).await));
        }
        if all.iter().all(|(_, s)| s.is_some()) {
            let all: Vec<(String, GroupStatusResponse)> = all
                .into_iter()
                .map(|(a, s)| (a, s.expect("checked")))
                .collect();
            let leader = all
                .iter()
                .find(|(_, s)| s.role == Role::Leader as i32)
                .cloned();
            // Settled: every replica in the leader's term and naming it (a leader that lost
            // an election it has not heard of yet is not the one to kill).
            let agreed = |l: &GroupStatusResponse| {
                all.iter()
                    .all(|(_, s)| s.term == l.term && s.leader_id == Some(l.replica_id))
            };
            if let Some((addr, l)) = leader.filter(|(_, l)| agreed(l)) {
                let committed = l.committed_index.unwrap_or(0);
                if all
                    .iter()
                    .all(|(_, s)| s.applied_index.unwrap_or(0) + 1000 >= committed)
                {
                    return Ok((addr, l));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the group was not whole again within {WHOLE_WAIT:?}: are the brokers run under a supervisor that restarts them (scripts/bench-group.sh --restart)?"
    )
}

/// One trial: kill the leader, watch the replicas, wait for the producer's first ack.
async fn trial(addrs: &[String], acks: &Mutex<Acks>) -> anyhow::Result<Stages> {
    let (leader, before) = whole(addrs).await?;
    let pid = admin(&leader)
        .await?
        .process_stats(ProcessStatsRequest {})
        .await
        .with_context(|| format!("ProcessStats of {leader}"))?
        .into_inner()
        .pid;
    ensure!(pid != 0, "{leader} did not report its pid");
    ensure!(
        pid != std::process::id(),
        "{leader} runs in this process (raftmq dev?): the bench kills broker processes"
    );
    let old_term = before.term;
    let t0 = Instant::now();
    // SAFETY: kill(2) takes no pointers; the pid is a broker process the group reported.
    let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    ensure!(r == 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
    let end = t0 + STAGE_WAIT;
    let (mut detection, mut election, mut first_commit) = (None, None, None);
    // Each (replica, term) seen leading: its last index when first seen so. A leader that
    // loses its term to another election before committing is simply passed by.
    let mut leading: std::collections::BTreeMap<(String, u64), u64> = Default::default();
    while first_commit.is_none() && Instant::now() < end {
        // Every replica, the killed one too: restarted by its supervisor before the others'
        // election timers fire, it may win the next term itself (its log is the longest).
        for a in addrs {
            let Some(s) = status(a).await else { continue };
            if s.term > old_term && detection.is_none() {
                detection = Some(t0.elapsed());
            }
            if s.term > old_term && s.role == Role::Leader as i32 {
                election.get_or_insert_with(|| t0.elapsed());
                let start = *leading
                    .entry((a.clone(), s.term))
                    .or_insert(s.last_log_index.unwrap_or(0));
                if s.committed_index.unwrap_or(0) >= start && first_commit.is_none() {
                    first_commit = Some(t0.elapsed());
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let (Some(detection), Some(election), Some(first_commit)) = (detection, election, first_commit)
    else {
        bail!("no new leader committed within {STAGE_WAIT:?} of the kill");
    };
    let first_ack = loop {
        if let Some(a) = acks.lock().expect("acks lock").first_started_after(t0) {
            break a.duration_since(t0);
        }
        ensure!(
            Instant::now() < end,
            "no send acknowledged within {STAGE_WAIT:?} of the kill"
        );
        tokio::time::sleep(POLL).await;
    };
    Ok(Stages {
        // Polling sees an election a little after the timer that started it fired.
        detection: detection.min(election),
        election,
        first_commit,
        first_ack,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(o: Failover) -> anyhow::Result<()> {
    ensure!(
        (1..=TRIALS_MAX).contains(&o.trials),
        "--trials must be 1..={TRIALS_MAX}"
    );
    let cluster = Cluster::new(&o.namesrv);
    let (group, addrs) = replicas(&cluster).await?;
    ensure!(
        addrs.len() >= 3,
        "{group} has {} replicas; a failover needs 3",
        addrs.len()
    );
    let producer = Producer::builder()
        .namesrv_addrs(o.namesrv.split(','))
        .group("raftmq-bench-failover")
        .build()?;
    producer.start().await?;
    let acks: Arc<Mutex<Acks>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..o.in_flight.max(1) {
        let (p, acks, stop, topic) = (
            producer.clone(),
            acks.clone(),
            stop.clone(),
            o.topic.clone(),
        );
        senders.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                if p.send(Message::new(topic.as_str(), "failover"))
                    .await
                    .is_ok()
                {
                    let mut a = acks.lock().expect("acks lock");
                    a.done.push((started, Instant::now()));
                    // Only the recent past matters to a trial.
                    if a.done.len() > 200_000 {
                        a.done.drain(..100_000);
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    println!(
        "failover of {group}: {} trials, {} sends in flight; stages from the SIGKILL",
        o.trials, o.in_flight
    );
    let mut all = Vec::new();
    for i in 1..=o.trials {
        whole(&addrs).await?;
        tokio::time::sleep(Duration::from_secs(o.settle_secs)).await;
        let s = trial(&addrs, &acks)
            .await
            .with_context(|| format!("trial {i}"))?;
        println!(
            "trial {i:2}: detection {}, election {}, first commit {}, first ack {} (redirect {})",
            ms(s.detection),
            ms(s.election),
            ms(s.first_commit),
            ms(s.first_ack),
            ms(s.first_ack.saturating_sub(s.election))
        );
        all.push(s);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    producer.shutdown().await;
    let max = |f: fn(&Stages) -> Duration| all.iter().map(f).max().unwrap_or_default();
    let mut acks_sorted: Vec<Duration> = all.iter().map(|s| s.first_ack).collect();
    acks_sorted.sort();
    println!(
        "max over {} trials: detection {}, election {}, first commit {}, first ack {}; median first ack {}",
        all.len(),
        ms(max(|s| s.detection)),
        ms(max(|s| s.election)),
        ms(max(|s| s.first_commit)),
        ms(max(|s| s.first_ack)),
        ms(acks_sorted[acks_sorted.len() / 2])
    );
    Ok(())
}
