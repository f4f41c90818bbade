//! The whole product under madsim: a name server, two broker groups of three replicas
//! (`Broker::start` on `SimDisk`), producers and consumers using the real SDK, each on its
//! own simulated node, under a seeded mix of faults.
//!
//! Workloads (all at once):
//! - queue: producer `qp` sends unique values (`q<i>`) with sync sends to topics `Q1` (4
//!   queues per group) and `Q2` (2 per group); consumer group `CQ` (clustering, concurrent
//!   listener) with members `cq1`, `cq2` from the start, `cq3` joining and `cq2` leaving at
//!   seeded times;
//! - ordered: producer `op` sends `o<key>-<seq>` for 8 keys with `send_ordered` (hash of the
//!   key) to `O` (4 queues per group); consumer group `CO` (orderly listener), `co1`, `co2`;
//! - offsets: consumers crash (node killed) and restart as a new incarnation (`cq1#1`), which
//!   resumes from the committed offsets;
//! - transactions (when [`ClusterConfig::transactions`] is set): [`crate::txn_workload`], with
//!   the faults [`Fault::TXN`] added and [`crate::txn_checks`] judging the outcome.
//!
//! Faults, one at a time, seeded ([`Fault`]): partitions (a group's leader isolated, a random
//! split of every node into two sides, one-way loss, a client cut from a group, the name
//! server cut off), broker kill + restart, power loss of one replica (unsynced tails lost,
//! last write torn), delay, packet loss, leader transfer and membership change (a replica
//! removed from the voters, added back as a learner, promoted) — the last two through the
//! Admin API. The run ends healed: every replica up and a voter, the network clean.
//!
//! Then liveness (a send acknowledged by each group, every acknowledged message consumed,
//! every group's replicas converged, each within a bound), and the checkers:
//! [`crate::queue_checks`] over what the clients saw and the committed offsets each replica
//! applied, [`crate::replica_checks`] over each group's logs, queues and leaders.
//!
//! Messages are identified by their body (unique per run and known before the send, so a
//! failed send is named as indeterminate).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use openraft::async_runtime::WatchReceiver;
use raftmq_broker::{Broker, BrokerConfig};
use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::producer::SelectByHash;
use raftmq_client::rebalance::MessageQueue;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer};
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::{
    AddReplicaRequest, ChangeVotersRequest, ConsumerGroupConfig, CreateTopicRequest,
    GetRouteRequest, PutGroupRequest, Status, TopicConfig, TransferLeaderRequest,
};
use raftmq_raft::inspect::consumer_offsets;
use raftmq_raft::{Mutations, NodeId, Replica};
use raftmq_store::SimDisk;
use raftmq_testkit::{Deadline, try_wait_for, wait_for};

use crate::queue_checks::{
    Event, QueueHistory, QueueViolation, check_queue_history, duplicate_counts,
};
use crate::replica_checks::{
    ReplicaViolation, check_leaders, check_replicas, check_terms, observe_term,
    placeholder_metrics, read_replicas,
};
use crate::timer_checks::{TimerHistory, TimerViolation};
use crate::timer_workload::{self, TimerWorld};
use crate::txn_checks::{TxnHistory, TxnViolation};
use crate::txn_workload::{self, TxnWorld};

const NAMESRV: &str = "10.0.1.1:9876";
const GROUPS: [&str; 2] = ["g1", "g2"];
const REPLICAS: usize = 3;
/// Topics: (name, queues per group, orderly).
const TOPICS: [(&str, u32); 3] = [("Q1", 4), ("Q2", 2), ("O", 4)];
const ORDERED_KEYS: u32 = 8;
/// Consumer members' heartbeat interval.
const HEARTBEAT: Duration = Duration::from_secs(1);

fn broker_addr(g: usize, i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 2 + g as u8, 11 + i as u8], 10911))
}

fn broker_name(g: usize, i: usize) -> String {
    format!("{}-{}", GROUPS[g], i + 1)
}

/// A consumer member: name, consumer group, topics, orderly listener.
struct Member {
    name: &'static str,
    group: &'static str,
    topics: &'static [&'static str],
    orderly: bool,
}

const MEMBERS: [Member; 5] = [
    Member {
        name: "cq1",
        group: "CQ",
        topics: &["Q1", "Q2"],
        orderly: false,
    },
    Member {
        name: "cq2",
        group: "CQ",
        topics: &["Q1", "Q2"],
        orderly: false,
    },
    Member {
        name: "cq3",
        group: "CQ",
        topics: &["Q1", "Q2"],
        orderly: false,
    },
    Member {
        name: "co1",
        group: "CO",
        topics: &["O"],
        orderly: true,
    },
    Member {
        name: "co2",
        group: "CO",
        topics: &["O"],
        orderly: true,
    },
];
/// `cq2` leaves, `cq3` joins (indexes into [`MEMBERS`]).
const LEAVER: usize = 1;
const JOINER: usize = 2;

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    IsolateLeader,
    /// The leader cut from its followers only: clients and the name server still reach it.
    LeaderCutOff,
    Split,
    OneWay,
    ClientCut,
    NamesrvCut,
    KillRestart,
    PowerLoss,
    Delay,
    Loss,
    TransferLeader,
    Membership,
    ConsumerCrash,
    /// The transactional sender killed (and restarted as a new producer).
    ProducerCrash,
    /// A group's leader killed while a local transaction runs (half stored, no decision).
    TxnLeaderKill,
}

impl Fault {
    /// The faults of the transactional workload (drawn only when it runs).
    pub const TXN: [Fault; 2] = [Fault::ProducerCrash, Fault::TxnLeaderKill];

    pub const ALL: [Fault; 13] = [
        Fault::IsolateLeader,
        Fault::LeaderCutOff,
        Fault::Split,
        Fault::OneWay,
        Fault::ClientCut,
        Fault::NamesrvCut,
        Fault::KillRestart,
        Fault::PowerLoss,
        Fault::Delay,
        Fault::Loss,
        Fault::TransferLeader,
        Fault::Membership,
        Fault::ConsumerCrash,
    ];
}

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How long producers send and faults are injected (simulated time).
    pub fault_window: Duration,
    /// Which fault kinds may be drawn; none = a run without faults.
    pub faults: Vec<Fault>,
    /// At most this many queue and ordered sends.
    pub queue_messages: u32,
    pub ordered_messages: u32,
    /// Deliberate bugs (mutation checks).
    pub mutations: Mutations,
    /// How long a partition, delay or loss lasts (ms, drawn from this range).
    pub hold_ms: std::ops::Range<u64>,
    /// At most this many transactions (0: no transactional workload).
    pub transactions: u32,
    /// At most this many timed messages (0: no timed workload).
    pub timers: u32,
    /// At most this many POP messages (0: no POP workload; see [`crate::pop_workload`]).
    pub pop: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            fault_window: Duration::from_secs(6),
            faults: Fault::ALL.to_vec(),
            queue_messages: 240,
            ordered_messages: 160,
            mutations: Mutations::default(),
            hold_ms: 200..1500,
            transactions: 0,
            timers: 0,
            pop: 0,
        }
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub history: QueueHistory,
    pub violations: Vec<QueueViolation>,
    /// Per broker group.
    pub replica_violations: Vec<(String, ReplicaViolation)>,
    /// Bounds missed after healing.
    pub liveness: Vec<String>,
    /// The faults injected and the membership events, as a timeline.
    pub timeline: Vec<String>,
    /// The transactional workload's history and what its checkers found.
    pub txn: TxnHistory,
    pub txn_violations: Vec<TxnViolation>,
    /// The timed workload's history and what its checkers found.
    pub timer: TimerHistory,
    pub timer_violations: Vec<TimerViolation>,
    /// The POP workload's history and what its checkers found.
    pub pop: crate::pop_checks::PopHistory,
    pub pop_violations: Vec<crate::pop_checks::PopViolation>,
    /// The same for the FIFO consumer group.
    pub pop_fifo: crate::pop_checks::PopHistory,
    pub pop_fifo_violations: Vec<crate::pop_checks::PopViolation>,
}

/// The POP part of a report: counts, violations, and the first violated message's story.
fn pop_report(
    label: &str,
    p: &crate::pop_checks::PopHistory,
    violations: &[crate::pop_checks::PopViolation],
) -> String {
    let mut s = String::new();
    if !p.sent.is_empty() {
        s.push_str(&format!(
            "pop{label}: {} acked sends, {} indeterminate, {} deliveries, {} acks, {} changes\n",
            p.sent.len(),
            p.indeterminate.len(),
            p.deliveries.len(),
            p.acks.len(),
            p.changes.len()
        ));
    }
    for v in violations {
        s.push_str(&format!("POP{label} VIOLATION {v:?}\n"));
    }
    let Some(body) = violations.first().map(|v| format!("{v:?}")) else {
        return s;
    };
    // Every message the violation names (a FIFO one names two).
    for b in p
        .sent
        .iter()
        .chain(&p.indeterminate)
        .filter(|b| body.contains(&format!("\"{b}\"")))
    {
        s.push_str(&format!("  story of {b}:\n"));
        for d in p.deliveries.iter().filter(|d| &d.body == b) {
            s.push_str(&format!("  pop delivery {d:?}\n"));
        }
        let copies: Vec<(&String, u64)> = p
            .deliveries
            .iter()
            .filter(|d| &d.body == b)
            .map(|d| (&d.queue, d.offset))
            .collect();
        for c in p.changes.iter().filter(|c| copies.contains(&(&c.0, c.1))) {
            s.push_str(&format!("  pop change {c:?}\n"));
        }
        for a in p.acks.iter().filter(|a| copies.contains(&(&a.0, a.1))) {
            s.push_str(&format!("  pop ack {a:?}\n"));
        }
        for u in p.unknown.iter().filter(|u| copies.contains(&(&u.0, u.1))) {
            s.push_str(&format!("  pop unknown outcome {u:?}\n"));
        }
    }
    s
}

impl Outcome {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
            && self.replica_violations.is_empty()
            && self.liveness.is_empty()
            && self.txn_violations.is_empty()
            && self.timer_violations.is_empty()
            && self.pop_violations.is_empty()
            && self.pop_fifo_violations.is_empty()
    }

    /// A readable report: a one-line reproduction, counts, violations, the timeline.
    pub fn report(&self, test: &str) -> String {
        let (redelivered, stored_twice) = duplicate_counts(&self.history);
        let deliveries = self.history.deliveries().count();
        let mut s = format!(
            "reproduce: MADSIM_TEST_SEED={} MADSIM_TEST_NUM=1 RUSTFLAGS=\"--cfg madsim -C opt-level=1\" CARGO_TARGET_DIR=target/sim cargo test -p raftmq-sim --test cluster {test} -- --exact --nocapture\n\
             {} acked, {} indeterminate, {} deliveries, {redelivered} redelivered, {stored_twice} stored twice (retried sends)\n",
            self.seed,
            self.history.acked.len(),
            self.history.indeterminate.len(),
            deliveries,
        );
        for v in &self.violations {
            s.push_str(&format!("VIOLATION {v:?}\n"));
        }
        if !self.txn.halves.is_empty() || !self.txn.indeterminate.is_empty() {
            let t = &self.txn;
            s.push_str(&format!(
                "transactions: {} halves acked, {} indeterminate, {} checks, {} deliveries, {} decided, {} pending\n",
                t.halves.len(),
                t.indeterminate.len(),
                t.checks.len(),
                t.deliveries.len(),
                t.decided.len(),
                t.pending.len()
            ));
        }
        for v in &self.txn_violations {
            s.push_str(&format!("TXN VIOLATION {v:?}\n"));
        }
        if !self.timer.sent.is_empty() {
            let t = &self.timer;
            s.push_str(&format!(
                "timers: {} acked, {} indeterminate, {} recalled ({} of them delivered from a retried send's other timer), {} deliveries, {} stored from two timers (retried sends)\n",
                t.sent.len(),
                t.indeterminate.len(),
                t.recalled.len(),
                t.recalled
                    .iter()
                    .filter(|b| t.delivered_from.contains_key(*b))
                    .count(),
                t.deliveries.len(),
                crate::timer_checks::retried_sends(t)
            ));
            let r = &t.retry;
            s.push_str(&format!(
                "retry: {} acked, {} indeterminate, {} deliveries, {} dead letters\n",
                r.sent.len(),
                r.indeterminate.len(),
                r.deliveries.len(),
                r.dlq.values().map(Vec::len).sum::<usize>()
            ));
        }
        for v in &self.timer_violations {
            s.push_str(&format!("TIMER VIOLATION {v:?}\n"));
        }
        s.push_str(&pop_report("", &self.pop, &self.pop_violations));
        s.push_str(&pop_report(
            " fifo",
            &self.pop_fifo,
            &self.pop_fifo_violations,
        ));
        // The first violated queue's timeline, for triage.
        let queue = self.violations.iter().find_map(|v| match v {
            QueueViolation::Lost { id } => self.history.acked.get(id).map(|a| a.0.clone()),
            QueueViolation::Redelivered { queue, .. }
            | QueueViolation::Skipped { queue, .. }
            | QueueViolation::OutOfOrder { queue, .. } => Some(queue.clone()),
            _ => None,
        });
        if let Some(q) = queue {
            s.push_str(&format!("events of {q:?} (and every crash), last 60:\n"));
            let shown: Vec<&Event> = self
                .history
                .events
                .iter()
                .filter(|e| match e {
                    Event::Consumed { queue, .. } | Event::Released { queue, .. } => *queue == q,
                    Event::Crashed { .. } => true,
                })
                .collect();
            for e in &shown[shown.len().saturating_sub(60)..] {
                s.push_str(&format!("  {e:?}\n"));
            }
            let acked: Vec<(&String, u64)> = self
                .history
                .acked
                .iter()
                .filter(|(_, (aq, _))| *aq == q)
                .map(|(id, (_, o))| (id, *o))
                .collect();
            s.push_str(&format!("acknowledged on {q:?}: {acked:?}\n"));
        }
        for (g, v) in &self.replica_violations {
            s.push_str(&format!("REPLICAS {g}: {v:?}\n"));
        }
        for l in &self.liveness {
            s.push_str(&format!("LIVENESS {l}\n"));
        }
        s.push_str("timeline:\n");
        for f in &self.timeline {
            s.push_str(&format!("  {f}\n"));
        }
        s
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("lock poisoned: a panic broke this state; see [profile.release]")
}

fn config(g: usize, i: usize, mutations: Mutations) -> BrokerConfig {
    let members: String = (0..REPLICAS)
        .map(|j| format!("{} = \"{}\"\n", j + 1, broker_addr(g, j)))
        .collect();
    let mut c = BrokerConfig::parse(&format!(
        "group = \"{}\"\nreplica_id = {}\nlisten = \"{}\"\ndata_dir = \"/sim/{}\"\nnamesrv_addrs = [\"{NAMESRV}\"]\n[initial_members]\n{members}",
        GROUPS[g],
        i + 1,
        broker_addr(g, i),
        broker_name(g, i)
    ))
    .expect("a valid generated configuration");
    c.segment_bytes_override = Some(256 * 1024);
    // Small IndexFiles (the default is 500 MB, held twice by the simulated disk).
    c.index_max_entries = 100_000;
    c.index_hash_slots = 25_000;
    c.mutations = mutations;
    c.transaction.timeout_ms = txn_workload::TIMEOUT_MS;
    c.transaction.check_interval_ms = txn_workload::CHECK_INTERVAL_MS;
    c.transaction.max_checks = txn_workload::MAX_CHECKS;
    c.transaction.scan_interval_ms = 200;
    c.timer.retry_backoff = crate::retry_workload::BACKOFF.into();
    // Members heartbeat every second here (HEARTBEAT); a crashed one's queues move on after
    // three missed heartbeats.
    c.client_expire_ms = 3 * HEARTBEAT.as_millis() as u64;
    c
}

/// The queues each running member holds now (by member index).
type Holding = Arc<Mutex<BTreeMap<usize, BTreeSet<MessageQueue>>>>;

/// Live replicas by group.
type Registry = Arc<Mutex<Vec<Vec<Option<Replica>>>>>;

/// Everything the harness drives.
struct Sim {
    handle: Handle,
    start: tokio::time::Instant,
    namesrv: NodeHandle,
    brokers: Vec<Vec<NodeHandle>>,
    disks: Vec<Vec<SimDisk>>,
    registry: Registry,
    /// The node admin calls are made from (the harness's own node has no address).
    control: NodeHandle,
    clients: Vec<(String, NodeHandle)>,
    consumers: Arc<Mutex<Vec<Option<NodeHandle>>>>,
    /// Current incarnation name of each member.
    names: Arc<Mutex<Vec<String>>>,
    left: Arc<Vec<AtomicBool>>,
    history: Arc<Mutex<QueueHistory>>,
    timeline: Arc<Mutex<Vec<String>>>,
    /// Members whose leaving (shutdown) finished.
    left_done: Arc<Mutex<Vec<String>>>,
    hold_ms: std::ops::Range<u64>,
    /// The queues each running member holds now (by member index).
    holding: Holding,
    /// The transactional workload and its sender's node, when it runs.
    txn: Option<(TxnWorld, NodeHandle)>,
    timer: Option<TimerWorld>,
    pop: Option<crate::pop_workload::PopWorld>,
}

impl Sim {
    fn note(&self, s: impl AsRef<str>) {
        note(&self.timeline, self.start, s.as_ref());
    }

    async fn on_control<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        self.control.spawn(f).await.expect("control task")
    }

    fn leader(&self, g: usize) -> Option<(usize, Replica)> {
        leader_of(&self.registry, g)
    }

    fn down(&self, g: usize, i: usize) {
        self.handle.kill(self.brokers[g][i].id());
        self.disks[g][i].fence();
        lock(&self.registry)[g][i] = None;
    }

    fn up(&self, g: usize, i: usize) {
        self.handle.restart(self.brokers[g][i].id());
    }

    /// Every node that takes part in partitions: (name, node).
    fn net_nodes(&self) -> Vec<(String, madsim::task::NodeId)> {
        let mut v = vec![("namesrv".to_string(), self.namesrv.id())];
        for (g, nodes) in self.brokers.iter().enumerate() {
            for (i, n) in nodes.iter().enumerate() {
                v.push((broker_name(g, i), n.id()));
            }
        }
        for (name, n) in &self.clients {
            v.push((name.clone(), n.id()));
        }
        for (k, n) in lock(&self.consumers).iter().enumerate() {
            if let Some(n) = n {
                v.push((MEMBERS[k].name.to_string(), n.id()));
            }
        }
        v
    }

    async fn inject(&self, fault: Fault) {
        let net = NetSim::current();
        let g = thread_rng().gen_range(0..GROUPS.len());
        let pick = thread_rng().gen_range(0..REPLICAS);
        let hold = Duration::from_millis(thread_rng().gen_range(self.hold_ms.clone()));
        match fault {
            Fault::IsolateLeader => {
                let i = self.leader(g).map_or(pick, |(l, _)| l);
                self.note(format!(
                    "isolate {} (leader) for {hold:?}",
                    broker_name(g, i)
                ));
                net.clog_node(self.brokers[g][i].id());
                tokio::time::sleep(hold).await;
                net.unclog_node(self.brokers[g][i].id());
            }
            Fault::LeaderCutOff => {
                let l = self.leader(g).map_or(pick, |(l, _)| l);
                self.note(format!(
                    "cut {} (leader) from its followers for {hold:?}",
                    broker_name(g, l)
                ));
                let ids: Vec<_> = self.brokers[g].iter().map(NodeHandle::id).collect();
                for (j, f) in ids.iter().enumerate() {
                    if j != l {
                        net.clog_link(ids[l], *f);
                        net.clog_link(*f, ids[l]);
                    }
                }
                tokio::time::sleep(hold).await;
                for (j, f) in ids.iter().enumerate() {
                    if j != l {
                        net.unclog_link(ids[l], *f);
                        net.unclog_link(*f, ids[l]);
                    }
                }
            }
            Fault::Split => {
                let nodes = self.net_nodes();
                let side: Vec<bool> = nodes.iter().map(|_| thread_rng().gen_bool(0.5)).collect();
                let names = |s: bool| -> Vec<&str> {
                    nodes
                        .iter()
                        .zip(&side)
                        .filter(|(_, x)| **x == s)
                        .map(|(n, _)| n.0.as_str())
                        .collect()
                };
                self.note(format!(
                    "split {:?} | {:?} for {hold:?}",
                    names(true),
                    names(false)
                ));
                let pairs = cross_pairs(&nodes, &side);
                for &(a, b) in &pairs {
                    net.clog_link(a, b);
                    net.clog_link(b, a);
                }
                tokio::time::sleep(hold).await;
                for &(a, b) in &pairs {
                    net.unclog_link(a, b);
                    net.unclog_link(b, a);
                }
            }
            Fault::OneWay => {
                let nodes = self.net_nodes();
                let a = thread_rng().gen_range(0..nodes.len());
                let b = (a + thread_rng().gen_range(1..nodes.len())) % nodes.len();
                self.note(format!("drop {}->{} for {hold:?}", nodes[a].0, nodes[b].0));
                net.clog_link(nodes[a].1, nodes[b].1);
                tokio::time::sleep(hold).await;
                net.unclog_link(nodes[a].1, nodes[b].1);
            }
            Fault::ClientCut => {
                let nodes = self.net_nodes();
                let clients: Vec<_> = nodes
                    .iter()
                    .filter(|(n, _)| !n.starts_with('g') && n != "namesrv")
                    .collect();
                let (name, c) = clients[thread_rng().gen_range(0..clients.len())];
                self.note(format!("cut {name} from {} for {hold:?}", GROUPS[g]));
                for b in &self.brokers[g] {
                    net.clog_link(*c, b.id());
                    net.clog_link(b.id(), *c);
                }
                tokio::time::sleep(hold).await;
                for b in &self.brokers[g] {
                    net.unclog_link(*c, b.id());
                    net.unclog_link(b.id(), *c);
                }
            }
            Fault::NamesrvCut => {
                self.note(format!("isolate namesrv for {hold:?}"));
                net.clog_node(self.namesrv.id());
                tokio::time::sleep(hold).await;
                net.unclog_node(self.namesrv.id());
            }
            Fault::KillRestart => {
                let down = Duration::from_millis(thread_rng().gen_range(0..800));
                self.note(format!("crash {}, down {down:?}", broker_name(g, pick)));
                self.down(g, pick);
                tokio::time::sleep(down).await;
                self.up(g, pick);
            }
            Fault::PowerLoss => {
                self.down(g, pick);
                let report = self.disks[g][pick].power_loss(thread_rng().r#gen());
                self.note(format!(
                    "power loss {}, torn {:?}",
                    broker_name(g, pick),
                    report.torn
                ));
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..500))).await;
                self.up(g, pick);
            }
            Fault::Delay => {
                let max = thread_rng().gen_range(20..200);
                self.note(format!("latency 1..{max}ms for {hold:?}"));
                net.update_config(|c| {
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(max)
                });
                tokio::time::sleep(hold).await;
                net.update_config(|c| *c = madsim::net::Config::default());
            }
            Fault::Loss => {
                let rate = thread_rng().gen_range(0.05..0.3);
                self.note(format!("packet loss {rate:.2} for {hold:?}"));
                net.update_config(|c| c.packet_loss_rate = rate);
                tokio::time::sleep(hold).await;
                net.update_config(|c| *c = madsim::net::Config::default());
            }
            Fault::TransferLeader => {
                let Some((l, _)) = self.leader(g) else {
                    self.note(format!("transfer leader of {}: no leader", GROUPS[g]));
                    return;
                };
                let to = (l + thread_rng().gen_range(1..REPLICAS)) % REPLICAS;
                let reg = self.registry.clone();
                let r = self
                    .on_control(async move {
                        admin(&reg, g, Duration::from_secs(3), |mut a| async move {
                            a.transfer_leader(TransferLeaderRequest {
                                to_replica_id: to as u64 + 1,
                            })
                            .await
                            .map(|r| r.into_inner().status)
                        })
                        .await
                    })
                    .await;
                self.note(format!(
                    "transfer leader {} -> {}: {}",
                    broker_name(g, l),
                    broker_name(g, to),
                    outcome(&r)
                ));
            }
            Fault::Membership => {
                let others: Vec<u64> = (0..REPLICAS)
                    .filter(|&j| j != pick)
                    .map(|j| j as u64 + 1)
                    .collect();
                let reg = self.registry.clone();
                let r = self
                    .on_control(async move { change_voters(&reg, g, others).await })
                    .await;
                self.note(format!(
                    "remove {} from the voters: {}",
                    broker_name(g, pick),
                    outcome(&r)
                ));
                tokio::time::sleep(hold).await;
                let addr = broker_addr(g, pick).to_string();
                let reg = self.registry.clone();
                let r = self
                    .on_control(async move {
                        admin(&reg, g, Duration::from_secs(5), |mut a| {
                            let addr = addr.clone();
                            async move {
                                a.add_replica(AddReplicaRequest {
                                    replica_id: pick as u64 + 1,
                                    addr,
                                })
                                .await
                                .map(|r| r.into_inner().status)
                            }
                        })
                        .await
                    })
                    .await;
                self.note(format!(
                    "add {} back as a learner: {}",
                    broker_name(g, pick),
                    outcome(&r)
                ));
                let reg = self.registry.clone();
                let all = (1..=REPLICAS as u64).collect();
                let r = self
                    .on_control(async move { change_voters(&reg, g, all).await })
                    .await;
                self.note(format!("promote {}: {}", broker_name(g, pick), outcome(&r)));
            }
            Fault::ProducerCrash => {
                let Some((_, tp1)) = &self.txn else { return };
                let down = Duration::from_millis(thread_rng().gen_range(0..1000));
                self.note(format!("crash producer tp1, down {down:?}"));
                self.handle.kill(tp1.id());
                tokio::time::sleep(down).await;
                self.handle.restart(tp1.id());
            }
            Fault::TxnLeaderKill => {
                let Some((world, _)) = &self.txn else { return };
                world.arm_kill.store(true, Ordering::Release);
                let rang =
                    tokio::time::timeout(Duration::from_secs(2), world.kill_now.notified()).await;
                world.arm_kill.store(false, Ordering::Release);
                let i = self.leader(g).map_or(pick, |(l, _)| l);
                let down = Duration::from_millis(thread_rng().gen_range(0..800));
                self.note(format!(
                    "crash {} (leader) {} a local transaction, down {down:?}",
                    broker_name(g, i),
                    if rang.is_ok() {
                        "during"
                    } else {
                        "(no transaction ran) after"
                    }
                ));
                self.down(g, i);
                tokio::time::sleep(down).await;
                self.up(g, i);
            }
            Fault::ConsumerCrash => {
                let running: Vec<usize> = lock(&self.consumers)
                    .iter()
                    .enumerate()
                    .filter(|(k, n)| n.is_some() && !self.left[*k].load(Ordering::Acquire))
                    .map(|(k, _)| k)
                    .collect();
                let Some(&k) = running.get(thread_rng().gen_range(0..running.len().max(1))) else {
                    return;
                };
                let down = Duration::from_millis(thread_rng().gen_range(0..1000));
                let name = lock(&self.names)[k].clone();
                self.note(format!("crash consumer {name}, down {down:?}"));
                let id = lock(&self.consumers)[k].as_ref().map(NodeHandle::id);
                if let Some(id) = id {
                    lock(&self.history)
                        .events
                        .push(Event::Crashed { consumer: name });
                    self.handle.kill(id);
                    lock(&self.holding).remove(&k);
                    tokio::time::sleep(down).await;
                    self.handle.restart(id);
                }
            }
        }
    }
}

fn note(timeline: &Mutex<Vec<String>>, start: tokio::time::Instant, s: &str) {
    lock(timeline).push(format!("t={}ms {s}", start.elapsed().as_millis()));
}

fn outcome(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("failed ({e})"),
    }
}

/// Node pairs on different sides.
fn cross_pairs(
    nodes: &[(String, madsim::task::NodeId)],
    side: &[bool],
) -> Vec<(madsim::task::NodeId, madsim::task::NodeId)> {
    let mut out = Vec::new();
    for (a, (_, x)) in nodes.iter().enumerate() {
        for (b, (_, y)) in nodes.iter().enumerate().skip(a + 1) {
            if side[a] != side[b] {
                out.push((*x, *y));
            }
        }
    }
    out
}

fn leader_of(registry: &Registry, g: usize) -> Option<(usize, Replica)> {
    let reg = lock(registry);
    reg[g].iter().enumerate().find_map(|(i, r)| {
        let r = r.as_ref()?;
        let m = r.raft().metrics().borrow_watched().clone();
        (m.state.is_leader() && m.current_leader == Some(r.node_id())).then(|| (i, r.clone()))
    })
}

fn voters(r: &Replica) -> BTreeSet<NodeId> {
    r.raft()
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// Calls the Admin API of group `g`'s leader until it answers OK or `limit` passes.
async fn admin<F, Fut>(registry: &Registry, g: usize, limit: Duration, f: F) -> Result<(), String>
where
    F: Fn(AdminClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Status>, tonic::Status>>,
{
    try_wait_for(
        Deadline::every(limit, Duration::from_millis(100)),
        || async {
            let Some((l, _)) = leader_of(registry, g) else {
                return Err("no leader".to_string());
            };
            let call = async {
                let c = AdminClient::connect(format!("http://{}", broker_addr(g, l)))
                    .await
                    .map_err(|e| e.to_string())?;
                f(c).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(Duration::from_secs(2), call).await {
                Ok(Ok(Some(s))) if s.code == 0 => Ok(()),
                Ok(Ok(s)) => Err(format!("{s:?}")),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("timeout".into()),
            }
        },
    )
    .await
    .map_err(|t| t.last.unwrap_or_default())
}

async fn change_voters(registry: &Registry, g: usize, ids: Vec<u64>) -> Result<(), String> {
    admin(registry, g, Duration::from_secs(5), |mut a| {
        let voter_ids = ids.clone();
        async move {
            a.change_voters(ChangeVotersRequest { voter_ids })
                .await
                .map(|r| r.into_inner().status)
        }
    })
    .await
}

/// Runs the scenario on the current madsim runtime.
pub async fn run(cfg: ClusterConfig) -> Outcome {
    let handle = Handle::current();
    let start = tokio::time::Instant::now();
    let ns_addr: SocketAddr = NAMESRV.parse().expect("literal address");
    let namesrv = handle
        .create_node()
        .name("namesrv")
        .ip(ns_addr.ip())
        .init(move || async move {
            let svc = raftmq_namesrv::NamesrvHandle::new().into_service();
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve(ns_addr)
                .await;
        })
        .build();
    let registry: Registry = Arc::new(Mutex::new(vec![vec![None; REPLICAS]; GROUPS.len()]));
    let disks: Vec<Vec<SimDisk>> = (0..GROUPS.len())
        .map(|_| (0..REPLICAS).map(|_| SimDisk::new()).collect())
        .collect();
    // Each replica's incarnation: a restarted replica replays its log, so its applied
    // offsets pass through older values again; offsets are compared within one incarnation.
    let gens: Arc<Mutex<Vec<Vec<u32>>>> =
        Arc::new(Mutex::new(vec![vec![0; REPLICAS]; GROUPS.len()]));
    let mut brokers = Vec::new();
    for (g, group_disks) in disks.iter().enumerate() {
        let mut nodes = Vec::new();
        for (i, disk) in group_disks.iter().enumerate() {
            let (d, reg, m, gens) = (disk.clone(), registry.clone(), cfg.mutations, gens.clone());
            nodes.push(
                handle
                    .create_node()
                    .name(broker_name(g, i))
                    .ip(broker_addr(g, i).ip())
                    .init(move || {
                        // A fresh view of the disk per incarnation (see store_scenario).
                        let d = d.incarnation();
                        let (reg, gens) = (reg.clone(), gens.clone());
                        async move {
                            let b = Broker::start(config(g, i, m), Arc::new(d))
                                .await
                                .unwrap_or_else(|e| panic!("{} starts: {e}", broker_name(g, i)));
                            lock(&reg)[g][i] = Some(b.replica().clone());
                            lock(&gens)[g][i] += 1;
                            // Keep it (and its server) alive for the node's lifetime.
                            std::future::pending::<()>().await;
                            drop(b);
                        }
                    })
                    .build(),
            );
        }
        brokers.push(nodes);
    }
    let client_node =
        |name: &str, ip: [u8; 4]| handle.create_node().name(name).ip(IpAddr::from(ip)).build();
    let control = client_node("control", [10, 0, 6, 1]);
    let qp = client_node("qp", [10, 0, 4, 1]);
    let op = client_node("op", [10, 0, 4, 2]);
    let history: Arc<Mutex<QueueHistory>> = Arc::default();
    lock(&history).orderly_topics = ["O".to_string()].into();
    let sim = Sim {
        handle: handle.clone(),
        start,
        namesrv,
        brokers,
        disks,
        registry: registry.clone(),
        control: control.clone(),
        clients: vec![("qp".into(), qp.clone()), ("op".into(), op.clone())],
        consumers: Arc::new(Mutex::new((0..MEMBERS.len()).map(|_| None).collect())),
        names: Arc::new(Mutex::new(
            MEMBERS.iter().map(|m| m.name.to_string()).collect(),
        )),
        left: Arc::new((0..MEMBERS.len()).map(|_| AtomicBool::new(false)).collect()),
        history: history.clone(),
        timeline: Arc::default(),
        left_done: Arc::default(),
        holding: Arc::default(),
        hold_ms: cfg.hold_ms.clone(),
        txn: None,
        timer: None,
        pop: None,
    };

    // Topics on both groups, routed by the name server.
    control
        .spawn(create_topics(
            registry.clone(),
            cfg.transactions > 0,
            cfg.timers > 0,
            cfg.pop > 0,
        ))
        .await
        .expect("control task");
    sim.note("topics created and routed");
    // After the topics: a consumer started before its topic is routed waits a whole route
    // refresh (30 s) to see it.
    let mut sim = sim;
    if cfg.transactions > 0 {
        let world = TxnWorld::new(start, cfg.transactions, start.elapsed() + cfg.fault_window);
        let tp1 = txn_workload::node(&handle, "tp1", [10, 0, 4, 3], &world, NAMESRV, true);
        let tp2 = txn_workload::node(&handle, "tp2", [10, 0, 4, 4], &world, NAMESRV, false);
        let w = world.clone();
        let ct1 = handle
            .create_node()
            .name("ct1")
            .ip(IpAddr::from([10, 0, 4, 5]))
            .init(move || txn_workload::consumer_node(w.clone(), NAMESRV))
            .build();
        sim.clients.extend([
            ("tp1".into(), tp1.clone()),
            ("tp2".into(), tp2),
            ("ct1".into(), ct1),
        ]);
        sim.txn = Some((world, tp1));
    }
    if cfg.timers > 0 {
        let world = TimerWorld::new(start, cfg.timers, start.elapsed() + cfg.fault_window);
        let [tm1, tc1, tr1, trc1] = timer_workload::nodes(&handle, &world, NAMESRV);
        sim.clients.extend([
            ("tm1".into(), tm1),
            ("tc1".into(), tc1),
            ("tr1".into(), tr1),
            ("trc1".into(), trc1),
        ]);
        sim.timer = Some(world);
    }
    if cfg.pop > 0 {
        let world =
            crate::pop_workload::PopWorld::new(start, cfg.pop, start.elapsed() + cfg.fault_window);
        let [pp1, pc1, pc2] = crate::pop_workload::nodes(&handle, &world, NAMESRV);
        sim.clients.extend([
            ("pp1".into(), pp1),
            ("pc1".into(), pc1),
            ("pc2".into(), pc2),
        ]);
        sim.pop = Some(world);
    }
    let sim = sim;

    // Monitors: leaders per term per group, committed offsets per replica.
    let leaders: Arc<Mutex<Vec<BTreeMap<u64, BTreeSet<NodeId>>>>> =
        Arc::new(Mutex::new(vec![BTreeMap::new(); GROUPS.len()]));
    let terms: Arc<Mutex<Vec<Vec<(NodeId, u64)>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); GROUPS.len()]));
    {
        let gens = gens.clone();
        let (registry, leaders, history, terms) = (
            registry.clone(),
            leaders.clone(),
            history.clone(),
            terms.clone(),
        );
        control.spawn(async move {
            let mut seen: BTreeMap<(String, (String, String, u32)), u64> = BTreeMap::new();
            let mut tick = 0u64;
            loop {
                let reps: Vec<(usize, usize, Replica)> = {
                    let reg = lock(&registry);
                    reg.iter()
                        .enumerate()
                        .flat_map(|(g, rs)| {
                            rs.iter()
                                .enumerate()
                                .filter_map(move |(i, r)| r.clone().map(|r| (g, i, r)))
                        })
                        .collect()
                };
                for (g, i, r) in &reps {
                    let m = r.raft().metrics().borrow_watched().clone();
                    let applied = m.last_applied.map(|l| l.index);
                    if !placeholder_metrics(m.current_term, m.last_log_index, applied) {
                        observe_term(&mut lock(&terms)[*g], r.node_id(), m.current_term);
                    }
                    if m.state.is_leader() {
                        lock(&leaders)[*g]
                            .entry(m.current_term)
                            .or_default()
                            .insert(r.node_id());
                    }
                    if tick.is_multiple_of(10)
                        && let Ok(offsets) = consumer_offsets(r.store())
                    {
                        let name = format!("{}#{}", broker_name(*g, *i), lock(&gens)[*g][*i]);
                        let mut h = lock(&history);
                        for (key, off) in offsets.into_iter().map(|(k, o)| (k, o.0)) {
                            let k = (name.clone(), key);
                            if seen.get(&k) != Some(&off) {
                                let (cg, topic, q) = k.1.clone();
                                h.commits.push((
                                    name.clone(),
                                    cg,
                                    (format!("{topic}@{}", GROUPS[*g]), q),
                                    off,
                                ));
                                seen.insert(k, off);
                            }
                        }
                    }
                }
                tick += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    // Consumers: all but the joiner now; the joiner and the leaver at seeded times.
    let window = cfg.fault_window;
    for k in 0..MEMBERS.len() {
        if k != JOINER {
            start_member(&sim, k);
        }
    }
    let join_at =
        Duration::from_millis(thread_rng().gen_range(300..window.as_millis() as u64 - 1000));
    let leave_at =
        Duration::from_millis(thread_rng().gen_range(300..window.as_millis() as u64 - 1000));

    // Producers.
    let sending_until = start.elapsed() + window;
    let q_task = qp.spawn(queue_producer(
        history.clone(),
        cfg.queue_messages,
        start,
        sending_until,
    ));
    let o_task = op.spawn(ordered_producer(
        history.clone(),
        cfg.ordered_messages,
        start,
        sending_until,
    ));

    // Faults (and the membership workload) until the window closes.
    let (mut joined, mut leaving) = (false, false);
    let fault_start = start.elapsed();
    while start.elapsed() < fault_start + window {
        let wait = Duration::from_millis(thread_rng().gen_range(100..600));
        tokio::time::sleep(wait).await;
        let t = start.elapsed() - fault_start;
        if !joined && t >= join_at {
            joined = true;
            sim.note(format!(
                "{} joins {}",
                MEMBERS[JOINER].name, MEMBERS[JOINER].group
            ));
            start_member(&sim, JOINER);
        }
        if !leaving && t >= leave_at {
            leaving = true;
            sim.note(format!(
                "{} leaves {}",
                lock(&sim.names)[LEAVER],
                MEMBERS[LEAVER].group
            ));
            sim.left[LEAVER].store(true, Ordering::Release);
        }
        if !cfg.faults.is_empty() {
            let f = cfg.faults[thread_rng().gen_range(0..cfg.faults.len())];
            sim.inject(f).await;
        }
    }
    if !joined {
        start_member(&sim, JOINER);
    }
    if !leaving {
        sim.left[LEAVER].store(true, Ordering::Release);
    }
    sim.note("faults stop, all healed");
    let healed_ms = raftmq_raft::replica::now_ms();

    let mut liveness = Vec::new();
    q_task.await.expect("queue producer");
    o_task.await.expect("ordered producer");
    sim.note("producers done");

    // Healed: every replica a voter again (a membership change may have been cut short).
    for g in 0..GROUPS.len() {
        let full: BTreeSet<NodeId> = (1..=REPLICAS as NodeId).collect();
        let restored =
            || std::future::ready(leader_of(&registry, g).is_some_and(|(_, l)| voters(&l) == full));
        if try_wait_for(within(20), restored).await.is_err() {
            let (reg, ids) = (registry.clone(), full.iter().copied().collect());
            let r = sim
                .on_control(async move { change_voters(&reg, g, ids).await })
                .await;
            if try_wait_for(within(20), restored).await.is_err() {
                liveness.push(format!(
                    "{}: voters not restored to {full:?} ({})",
                    GROUPS[g],
                    outcome(&r)
                ));
            }
        }
    }

    // Liveness: a send acknowledged by each group, then every acknowledged message consumed.
    let probes = qp.spawn(probe(history.clone()));
    match tokio::time::timeout(Duration::from_secs(30), probes).await {
        Ok(_) => sim.note("probe sends acknowledged by every group"),
        Err(_) => {
            let info = control.spawn(cluster_info()).await.expect("control task");
            liveness.push(format!(
                "no probe send acknowledged by every group within 30 s; the name server says: {info}"
            ));
        }
    }
    let caught_up = try_wait_for(within(60), || {
        let h = lock(&history);
        let got: BTreeSet<&str> = h.deliveries().map(|d| d.1).collect();
        std::future::ready(h.acked.keys().all(|k| got.contains(k.as_str())))
    })
    .await;
    if caught_up.is_ok() {
        sim.note("consumers caught up");
    } else {
        liveness.push("consumers did not catch up within 60 s".into());
    }

    // The member that left finished leaving (its shutdown returned).
    let left = try_wait_for(within(30), || {
        std::future::ready(!lock(&sim.left_done).is_empty())
    })
    .await;
    if left.is_err() {
        liveness.push(format!(
            "{}: leaving (shutdown) did not finish",
            MEMBERS[LEAVER].name
        ));
    }

    // Rebalancing settles: each queue held by exactly one member of each consumer group (two
    // members may hold one while a change is seen at different moments; one lets go).
    let all_queues: BTreeMap<&str, BTreeSet<MessageQueue>> = ["CQ", "CO"]
        .into_iter()
        .map(|cg| {
            let qs = MEMBERS
                .iter()
                .filter(|m| m.group == cg)
                .flat_map(|m| m.topics.iter())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .flat_map(|t| {
                    let n = TOPICS.iter().find(|x| x.0 == *t).map_or(0, |x| x.1);
                    GROUPS.iter().flat_map(move |g| {
                        (0..n).map(move |q| MessageQueue {
                            topic: t.to_string(),
                            group: g.to_string(),
                            queue_id: q,
                        })
                    })
                })
                .collect();
            (cg, qs)
        })
        .collect();
    // Settled means so for two seconds on end (members see a change at different moments).
    let mut since: Option<tokio::time::Instant> = None;
    let settled = try_wait_for(within(30), || {
        let h = lock(&sim.holding);
        let mut unsettled = String::new();
        for (cg, qs) in &all_queues {
            for q in qs {
                let holders: Vec<&str> = h
                    .iter()
                    .filter(|(k, held)| MEMBERS[**k].group == *cg && held.contains(q))
                    .map(|(k, _)| MEMBERS[*k].name)
                    .collect();
                if holders.len() != 1 {
                    unsettled.push_str(&format!("{cg} {q:?} held by {holders:?}; "));
                }
            }
        }
        if !unsettled.is_empty() {
            since = None;
            return std::future::ready(Err(unsettled));
        }
        let held_for = since
            .get_or_insert_with(tokio::time::Instant::now)
            .elapsed();
        std::future::ready(if held_for >= Duration::from_secs(2) {
            Ok(())
        } else {
            Err(String::new())
        })
    })
    .await;
    match settled {
        Ok(()) => sim.note("every queue held by one member"),
        Err(t) => liveness.push(format!(
            "assignment did not settle within 30 s: {}",
            t.last.unwrap_or_default()
        )),
    }

    // Convergence: every replica of a group applies its leader's last entry.
    let mut replica_violations = Vec::new();
    for g in 0..GROUPS.len() {
        // Done with the leader's last index once every replica applied it.
        let converged = try_wait_for(within(20), || {
            std::future::ready(leader_of(&registry, g).and_then(|(_, l)| {
                let t = l.raft().metrics().borrow_watched().last_log_index;
                lock(&registry)[g]
                    .iter()
                    .all(|r| {
                        r.as_ref()
                            .is_some_and(|r| raftmq_raft::inspect::applied_index(r.store()) >= t)
                    })
                    .then_some(t)
            }))
        })
        .await;
        let Some(target) = converged.ok().flatten() else {
            liveness.push(format!(
                "{}: replicas did not converge within 20 s",
                GROUPS[g]
            ));
            continue;
        };
        let reps: Vec<Replica> = lock(&registry)[g].iter().flatten().cloned().collect();
        let (logs, queues) = read_replicas(&reps, target);
        let mut found = check_replicas(&logs, &queues);
        found.extend(check_leaders(&lock(&leaders)[g]));
        found.extend(check_terms(&lock(&terms)[g]));
        replica_violations.extend(found.into_iter().map(|v| (GROUPS[g].to_string(), v)));
    }

    let (txn, txn_violations) = match &sim.txn {
        Some((world, _)) => {
            let leaders = || (0..GROUPS.len()).map(|g| leader_of(&registry, g).map(|(_, l)| l));
            let note = |s: &str| sim.note(s);
            txn_workload::settle(world, leaders, note, within, &mut liveness).await
        }
        None => Default::default(),
    };
    let (timer, timer_violations) = match &sim.timer {
        Some(world) => {
            let leaders = || (0..GROUPS.len()).map(|g| leader_of(&registry, g).map(|(_, l)| l));
            let note = |s: &str| sim.note(s);
            timer_workload::settle(world, healed_ms, leaders, note, within).await
        }
        None => Default::default(),
    };
    let (pop, pop_violations, pop_fifo, pop_fifo_violations) = match &sim.pop {
        Some(world) => {
            let note = |s: &str| sim.note(s);
            let s = crate::pop_workload::settle(world, note, within, &mut liveness).await;
            (s.history, s.violations, s.fifo_history, s.fifo_violations)
        }
        None => Default::default(),
    };
    let history = lock(&history).clone();
    let violations = check_queue_history(&history);
    let timeline = lock(&sim.timeline).clone();
    sim.end().await;
    Outcome {
        seed: handle.seed(),
        history,
        violations,
        replica_violations,
        liveness,
        timeline,
        txn,
        txn_violations,
        timer,
        timer_violations,
        pop,
        pop_violations,
        pop_fifo,
        pop_fifo_violations,
    }
}

impl Sim {
    /// Ends the run: kills every node, then lets the runtime drop their tasks. madsim drops
    /// a task's future only when it polls the task again (a killed node's tasks are woken
    /// for that) and never at the end of a run, so a task still waiting when `run` returned
    /// stayed allocated with everything it held — a whole cluster's stores, ~155 MB a seed —
    /// whenever its waker sat in state the task itself kept alive (a `Notify` in an `Arc`
    /// the task holds: every flusher, every long poll). A production runtime drops every
    /// task when it shuts down, so this is the simulator's own bookkeeping.
    async fn end(&self) {
        let mut nodes = vec![self.namesrv.id(), self.control.id()];
        nodes.extend(self.brokers.iter().flatten().map(NodeHandle::id));
        nodes.extend(self.clients.iter().map(|(_, n)| n.id()));
        nodes.extend(lock(&self.consumers).iter().flatten().map(NodeHandle::id));
        for id in nodes {
            self.handle.kill(id);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts member `k` on its own node; a restarted node is the next incarnation.
fn start_member(sim: &Sim, k: usize) {
    let incarnation = Arc::new(AtomicU32::new(0));
    let (names, left, history) = (sim.names.clone(), sim.left.clone(), sim.history.clone());
    let log = (
        sim.timeline.clone(),
        sim.start,
        sim.left_done.clone(),
        sim.holding.clone(),
    );
    let node = sim
        .handle
        .create_node()
        .name(MEMBERS[k].name)
        .ip(IpAddr::from([10, 0, 5, 1 + k as u8]))
        .init(move || {
            let n = incarnation.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}#{n}", MEMBERS[k].name);
            lock(&names)[k] = name.clone();
            let (left, history, log) = (left.clone(), history.clone(), log.clone());
            async move {
                if left[k].load(Ordering::Acquire) {
                    // Told to leave while it was down: it is gone.
                    lock(&log.2).push(name);
                } else {
                    member(k, name, left, history, log).await;
                }
                std::future::pending::<()>().await;
            }
        })
        .build();
    lock(&sim.consumers)[k] = Some(node);
}

fn queue_of(q: &MessageQueue) -> crate::queue_checks::Queue {
    (format!("{}@{}", q.topic, q.group), q.queue_id)
}

/// One consumer incarnation: consumes (recording every delivery), records the queues it
/// lets go, and leaves the group when told.
async fn member(
    k: usize,
    name: String,
    left: Arc<Vec<AtomicBool>>,
    history: Arc<Mutex<QueueHistory>>,
    (timeline, start, done, holding): (
        Arc<Mutex<Vec<String>>>,
        tokio::time::Instant,
        Arc<Mutex<Vec<String>>>,
        Holding,
    ),
) {
    let m = &MEMBERS[k];
    let (h, n) = (history.clone(), name.clone());
    // Queues it consumed from since the last look (a queue taken and let go between two
    // looks is still seen as let go).
    let touched: Arc<Mutex<BTreeSet<MessageQueue>>> = Arc::default();
    let t2 = touched.clone();
    let listener = move |msgs: &[raftmq_client::consumer::ReceivedMessage]| {
        let mut h = lock(&h);
        for msg in msgs {
            let body = String::from_utf8_lossy(&msg.body).into_owned();
            h.consumed(&n, &body, queue_of(&msg.queue), msg.queue_offset);
            lock(&t2).insert(msg.queue.clone());
        }
        ConsumeResult::Success
    };
    let mut b = PushConsumer::builder()
        .namesrv_addrs([NAMESRV])
        .group(m.group)
        .client_id(name.clone())
        .heartbeat_every(HEARTBEAT)
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500));
    for t in m.topics {
        b = b.subscribe(*t, "*");
    }
    let b = if m.orderly {
        b.orderly(listener)
    } else {
        b.concurrent(listener)
    };
    let consumer = b.build().expect("a valid consumer");
    while consumer.start().await.is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut held: BTreeSet<MessageQueue> = BTreeSet::new();
    loop {
        if left[k].load(Ordering::Acquire) {
            // It holds its queues until shutdown returns (the batches in hand are finished).
            let t = tokio::time::Instant::now();
            consumer.shutdown().await;
            // Afterwards it holds nothing: every queue it held or consumed from (it may have
            // taken one after the last look, while shutting down).
            let mut h = lock(&history);
            held.extend(std::mem::take(&mut *lock(&touched)));
            let mut gone: BTreeSet<crate::queue_checks::Queue> =
                held.iter().map(queue_of).collect();
            gone.extend(h.deliveries().filter(|d| d.0 == name).map(|d| d.2.clone()));
            for queue in gone {
                h.events.push(Event::Released {
                    consumer: name.clone(),
                    queue,
                });
            }
            lock(&holding).remove(&k);
            note(
                &timeline,
                start,
                &format!("{name} left (shutdown took {:?})", t.elapsed()),
            );
            lock(&done).push(name);
            return;
        }
        let now: BTreeSet<MessageQueue> = consumer.assigned().into_iter().collect();
        {
            let mut h = lock(&history);
            held.extend(std::mem::take(&mut *lock(&touched)));
            for q in held.difference(&now) {
                h.events.push(Event::Released {
                    consumer: name.clone(),
                    queue: queue_of(q),
                });
            }
        }
        lock(&holding).insert(k, now.clone());
        held = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A workload's push consumer builder: `group` as member `client_id` on `topic` (all tags),
/// from the first message, heartbeating every second, long polls of 500 ms.
pub(crate) fn workload_consumer(
    namesrv: &str,
    group: &str,
    client_id: &str,
    topic: &str,
) -> raftmq_client::consumer::PushConsumerBuilder {
    PushConsumer::builder()
        .namesrv_addrs([namesrv])
        .group(group)
        .client_id(client_id)
        .heartbeat_every(Duration::from_secs(1))
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500))
        .subscribe(topic, "*")
}

/// Starts `c` (retried until the name server answers) and keeps it running for the node's
/// life.
pub(crate) async fn run_consumer(c: PushConsumer) {
    while c.start().await.is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::future::pending::<()>().await;
    drop(c);
}

/// A started producer of `group` (starting retried until the name server answers).
pub(crate) async fn new_producer(namesrv: &str, group: &str) -> Producer {
    let p = Producer::builder()
        .namesrv_addrs([namesrv])
        .group(group)
        .build()
        .expect("a valid producer");
    while p.start().await.is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p
}

fn record_send(
    history: &Mutex<QueueHistory>,
    producer: &str,
    body: String,
    r: Result<raftmq_client::SendResult, raftmq_client::ClientError>,
) -> Option<String> {
    let mut h = lock(history);
    match r {
        Ok(r) => {
            h.acked
                .insert(body.clone(), (queue_of(&r.queue), r.queue_offset));
            h.ack_order.push((producer.into(), body));
            Some(r.queue.group)
        }
        Err(_) => {
            h.indeterminate.insert(body);
            None
        }
    }
}

async fn queue_producer(
    history: Arc<Mutex<QueueHistory>>,
    max: u32,
    start: tokio::time::Instant,
    until: Duration,
) {
    let p = new_producer(NAMESRV, "PQ").await;
    let mut i = 0;
    while i < max && start.elapsed() < until {
        let topic = if i % 3 == 2 { "Q2" } else { "Q1" };
        let body = format!("q{i}");
        let r = p.send(Message::new(topic, body.clone())).await;
        record_send(&history, "qp", body, r);
        i += 1;
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(5..30))).await;
    }
    p.shutdown().await;
}

async fn ordered_producer(
    history: Arc<Mutex<QueueHistory>>,
    max: u32,
    start: tokio::time::Instant,
    until: Duration,
) {
    let p = new_producer(NAMESRV, "PO").await;
    let mut seq = vec![0u32; ORDERED_KEYS as usize];
    let mut i = 0;
    while i < max && start.elapsed() < until {
        let k = thread_rng().gen_range(0..ORDERED_KEYS);
        let body = format!("o{k}-{}", seq[k as usize]);
        seq[k as usize] += 1;
        let r = p
            .send_ordered(
                Message::new("O", body.clone()),
                &SelectByHash,
                &format!("k{k}"),
            )
            .await;
        record_send(&history, "op", body, r);
        i += 1;
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(5..30))).await;
    }
    p.shutdown().await;
}

/// Sends probes to `Q1` until each group acknowledged one.
async fn probe(history: Arc<Mutex<QueueHistory>>) {
    let p = new_producer(NAMESRV, "PP").await;
    let mut groups = BTreeSet::new();
    let mut i = 0;
    while groups.len() < GROUPS.len() {
        let body = format!("p{i}");
        i += 1;
        let r = p.send(Message::new("Q1", body.clone())).await;
        if std::env::var("RAFTMQ_SIM_LOG").is_ok() {
            eprintln!(
                "PROBE {body} {:?} {:?}",
                std::time::SystemTime::now(),
                r.as_ref().map(|r| &r.queue)
            );
        }
        if let Some(g) = record_send(&history, "probe", body, r) {
            groups.insert(g);
        }
    }
    p.shutdown().await;
}

/// What the name server knows of the groups, for reports.
async fn cluster_info() -> String {
    let call = async {
        let mut ns = NameServerClient::connect(format!("http://{NAMESRV}"))
            .await
            .ok()?;
        let r = ns
            .get_cluster_info(raftmq_proto::v1::GetClusterInfoRequest {})
            .await
            .ok()?;
        let route = ns
            .get_route(GetRouteRequest { topic: "Q1".into() })
            .await
            .ok()?
            .into_inner();
        let route: Vec<String> = route
            .queues
            .iter()
            .map(|q| format!("{}/{}w{}", q.group, q.read_queue_nums, q.write_queue_nums))
            .collect();
        Some(
            format!("route of Q1 {route:?}; ")
                + &r.into_inner()
                    .groups
                    .iter()
                    .map(|g| {
                        let rs: Vec<String> = g
                            .replicas
                            .iter()
                            .map(|r| {
                                format!(
                                    "{}:{:?}@t{} {}ms ago",
                                    r.replica_id,
                                    r.role(),
                                    r.term,
                                    r.last_seen_ms_ago
                                )
                            })
                            .collect();
                        format!("{} leader {:?} [{}]", g.group, g.leader_addr, rs.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
        )
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "(no answer)".into())
}

/// Creates every topic on each group's leader, then waits until the name server routes each
/// topic to both groups.
/// How often the harness's waits check (the interval they were written with: it is part of
/// each seed's schedule, so the named regression seeds replay the runs they were found in).
const POLL: Duration = Duration::from_millis(50);

/// A wait of up to `secs` seconds, checking every [`POLL`].
fn within(secs: u64) -> Deadline {
    Deadline::every(Duration::from_secs(secs), POLL)
}

async fn create_topics(registry: Registry, transactions: bool, timers: bool, pop: bool) {
    let mut topics = TOPICS.to_vec();
    if pop {
        topics.push(crate::pop_workload::TOPIC);
    }
    if transactions {
        topics.push(txn_workload::TOPIC);
    }
    if timers {
        topics.push(timer_workload::TOPIC);
        topics.push(crate::retry_workload::TOPIC);
    }
    for g in 0..GROUPS.len() {
        for &(name, queues) in &topics {
            let r = admin(&registry, g, Duration::from_secs(60), |mut a| async move {
                a.create_topic(CreateTopicRequest {
                    topic: Some(TopicConfig {
                        name: name.into(),
                        read_queue_nums: queues,
                        write_queue_nums: queues,
                        perm: 6,
                        ..Default::default()
                    }),
                })
                .await
                .map(|r| r.into_inner().status)
            })
            .await;
            r.unwrap_or_else(|e| panic!("creating {name} on {}: {e}", GROUPS[g]));
        }
        if pop {
            let r = admin(&registry, g, Duration::from_secs(60), |mut a| async move {
                a.put_group(PutGroupRequest {
                    group: Some(ConsumerGroupConfig {
                        name: crate::pop_workload::FIFO_GROUP.into(),
                        consume_first: true,
                        fifo: true,
                        ..Default::default()
                    }),
                    must_exist: false,
                })
                .await
                .map(|r| r.into_inner().status)
            })
            .await;
            r.unwrap_or_else(|e| panic!("configuring the FIFO POP group on {}: {e}", GROUPS[g]));
        }
    }
    let routed_by = tokio::time::Instant::now() + Duration::from_secs(60);
    for &(name, _) in &topics {
        let left = routed_by.saturating_duration_since(tokio::time::Instant::now());
        let what = format!("topic {name} routed to every group");
        wait_for(Deadline::every(left, POLL), &what, || async {
            if let Ok(mut ns) = NameServerClient::connect(format!("http://{NAMESRV}")).await
                && let Ok(r) = ns.get_route(GetRouteRequest { topic: name.into() }).await
            {
                let groups: BTreeSet<String> =
                    r.into_inner().queues.into_iter().map(|q| q.group).collect();
                if groups.len() == GROUPS.len() {
                    return true;
                }
            }
            false
        })
        .await;
    }
}
