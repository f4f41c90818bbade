//! One Raft group of three replicas under faults (madsim only).
//!
//! Each replica is a madsim node running the real [`Replica`] (openraft + store on its own
//! [`SimDisk`], which lives outside the node so it survives kill and power loss) and serving
//! the real tonic `RaftService` on `10.0.0.<n>:7000`. Clients on their own node write unique
//! messages (all to queue 0 of topic `T`, so queue offsets are one global order) through the
//! replica that leads, and record what was acknowledged.
//!
//! Faults, one at a time, seeded: isolate a node (the leader or any), one-way link loss, kill
//! and restart (process crash), power loss of one replica (unsynced tails lost, last write
//! torn), and message delay. After the fault window everything is healed; the group must then
//! accept a write within a bound (liveness) and every replica must apply the same log.
//!
//! Checkers: [`crate::history::check_all`] (acknowledged writes present at their offsets, in
//! per-client order, no gaps, no duplicates, nothing unexpected) on the queue, plus
//! [`check_replicas`](crate::replica_checks::check_replicas) (committed CommitLogs byte-identical, queues identical) and
//! [`check_leaders`](crate::replica_checks::check_leaders) (at most one leader per term).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle;
use openraft::async_runtime::WatchReceiver;
use raftmq_raft::inspect::queue_contents;
use raftmq_raft::{Mutations, NodeId, Replica, ReplicaConfig};
use raftmq_store::{Message, SimDisk, StoreConfig};
use raftmq_testkit::{Deadline, wait_until};

use crate::history::{FinalLog, History, Violation, WriteId, check_all};
use crate::replica_checks::{
    Archive, ReplicaViolation, check_archive, check_leaders, check_replicas, check_terms, observe,
    observe_term, placeholder_metrics, read_replicas,
};

/// A wait of up to `secs` seconds, checking every 20 ms (the interval these waits were
/// written with: it is part of each seed's schedule).
fn within(secs: u64) -> Deadline {
    Deadline::every(Duration::from_secs(secs), Duration::from_millis(20))
}

/// Replicas in the group.
const REPLICAS: usize = 3;
const PORT: u16 = 7000;

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub clients: u32,
    pub writes_per_client: u32,
    /// How long faults are injected, in simulated time.
    pub fault_window: Duration,
    /// Deliberate bugs (checker tests).
    pub mutations: Mutations,
    /// Which fault kinds may be drawn (see [`Fault`]); all by default.
    pub faults: Vec<Fault>,
    /// Run retention on every replica (small segments, one second of reservation) so that
    /// logs are purged and lagging replicas install boundary snapshots; on by default.
    pub retention: bool,
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    IsolateLeader,
    IsolateAny,
    OneWayLoss,
    KillRestart,
    PowerLoss,
    Delay,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            clients: 4,
            writes_per_client: 80,
            fault_window: Duration::from_secs(8),
            mutations: Mutations::default(),
            faults: vec![
                Fault::IsolateLeader,
                Fault::IsolateAny,
                Fault::OneWayLoss,
                Fault::KillRestart,
                Fault::PowerLoss,
                Fault::Delay,
            ],
            retention: true,
        }
    }
}

/// How often the harness runs retention on each replica, and how long segments are kept.
const RETENTION_EVERY: Duration = Duration::from_millis(300);
const RESERVED_MS: u64 = 1000;

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub history: History,
    pub log: FinalLog,
    pub violations: Vec<Violation>,
    pub replica_violations: Vec<ReplicaViolation>,
    /// Snapshot installs that reset a replica's store, summed over the live replicas.
    pub resets: u64,
    /// The first queue offset every live replica still holds at the end (retention).
    pub retained_from: u64,
}

impl Outcome {
    /// A readable report: violations and the fault timeline.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} acked, {} indeterminate, {} in the final queue (retained from offset {}), {} snapshot resets\n",
            self.history.acked.len(),
            self.history.indeterminate.len(),
            self.log.len(),
            self.retained_from,
            self.resets
        );
        for v in &self.violations {
            s.push_str(&format!("VIOLATION {v:?}\n"));
        }
        for v in &self.replica_violations {
            s.push_str(&format!("REPLICAS {v:?}\n"));
        }
        s.push_str("faults:\n");
        for f in &self.history.faults {
            s.push_str(&format!("  {f}\n"));
        }
        s
    }

    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.replica_violations.is_empty()
    }
}

type Registry = Arc<Mutex<Vec<Option<Replica>>>>;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], PORT))
}

fn config(i: usize, mutations: Mutations) -> ReplicaConfig {
    let mut store = StoreConfig::for_tests();
    // Small segments so that a run fills several and retention has work.
    store.segment_bytes = 16 * 1024;
    store.max_record_bytes = 12 * 1024;
    store.file_reserved_time_ms = RESERVED_MS;
    ReplicaConfig {
        group: "g1".into(),
        node_id: i as NodeId + 1,
        store,
        timeouts: Default::default(),
        batch: raftmq_raft::BatchLimits {
            max_messages: 64,
            max_bytes: 8 * 1024,
        },
        retention_interval_ms: 0,
        mutations,
    }
}

async fn replica_node(i: usize, disk: SimDisk, registry: Registry, mutations: Mutations) {
    let replica = Replica::start(Arc::new(disk), config(i, mutations))
        .await
        .unwrap_or_else(|e| panic!("replica {} failed to start: {e}", i + 1));
    registry.lock().expect("registry lock")[i] = Some(replica.clone());
    let listen = SocketAddr::from(([0, 0, 0, 0], PORT));
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(replica.raft_service())
        .serve(listen)
        .await
    {
        panic!("replica {} server failed: {e}", i + 1);
    }
}

fn leader(registry: &Registry) -> Option<(usize, Replica)> {
    let g = registry.lock().expect("registry lock");
    g.iter().enumerate().find_map(|(i, r)| {
        let r = r.as_ref()?;
        let m = r.raft().metrics().borrow_watched().clone();
        (m.state.is_leader() && m.current_leader == Some(r.node_id())).then(|| (i, r.clone()))
    })
}

fn parse_id(msg_id: &str) -> Option<WriteId> {
    let (c, s) = msg_id.split_once('-')?;
    Some(WriteId {
        client: c.parse().ok()?,
        seq: s.parse().ok()?,
    })
}

async fn client(id: u32, writes: u32, registry: Registry, history: Arc<Mutex<History>>) {
    // Continue after this client's last recorded write (the liveness probe calls again).
    let mut seq = {
        let h = history.lock().expect("history lock");
        h.acked
            .iter()
            .map(|(w, _)| *w)
            .chain(h.indeterminate.iter().copied())
            .filter(|w| w.client == id)
            .map(|w| w.seq + 1)
            .max()
            .unwrap_or(0)
    };
    let writes = seq + writes;
    while seq < writes {
        let Some((_, replica)) = leader(&registry) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let w = WriteId { client: id, seq };
        seq += 1;
        let msg = Message {
            topic: "T".into(),
            queue_id: 0,
            msg_id: format!("{id}-{}", w.seq),
            body: vec![id as u8; 100],
            ..Message::default()
        };
        match tokio::time::timeout(Duration::from_secs(3), replica.write(vec![msg])).await {
            Ok(Ok(a)) if a.len() == 1 => {
                history
                    .lock()
                    .expect("history lock")
                    .acked
                    .push((w, a[0].queue_offset.0));
            }
            // NotLeader means not committed; counting it as indeterminate is merely lenient.
            other => {
                if std::env::var("RAFTMQ_SIM_LOG").is_ok() {
                    eprintln!(
                        "CLIENT {id}-{} {:?}",
                        w.seq,
                        other.map(|r| r.map(|a| a.len()))
                    );
                }
                history
                    .lock()
                    .expect("history lock")
                    .indeterminate
                    .insert(w);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let pause = thread_rng().gen_range(0..15);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

struct Cluster {
    handle: Handle,
    nodes: Vec<madsim::runtime::NodeHandle>,
    disks: Vec<SimDisk>,
    registry: Registry,
    history: Arc<Mutex<History>>,
}

impl Cluster {
    fn note(&self, s: String) {
        self.history.lock().expect("history lock").faults.push(s);
    }

    fn down(&self, i: usize) {
        self.handle.kill(self.nodes[i].id());
        self.disks[i].fence();
        self.registry.lock().expect("registry lock")[i] = None;
    }

    fn up(&self, i: usize) {
        self.handle.restart(self.nodes[i].id());
    }

    async fn inject(&self, fault: Fault, t: u128) {
        let net = NetSim::current();
        let pick = thread_rng().gen_range(0..REPLICAS);
        let hold = Duration::from_millis(thread_rng().gen_range(200..1500));
        match fault {
            Fault::IsolateLeader | Fault::IsolateAny => {
                let i = match (fault, leader(&self.registry)) {
                    (Fault::IsolateLeader, Some((l, _))) => l,
                    _ => pick,
                };
                self.note(format!("t={t}ms isolate n{} for {hold:?}", i + 1));
                net.clog_node(self.nodes[i].id());
                tokio::time::sleep(hold).await;
                net.unclog_node(self.nodes[i].id());
            }
            Fault::OneWayLoss => {
                let j = (pick + thread_rng().gen_range(1..REPLICAS)) % REPLICAS;
                self.note(format!(
                    "t={t}ms drop n{}->n{} for {hold:?}",
                    pick + 1,
                    j + 1
                ));
                net.clog_link(self.nodes[pick].id(), self.nodes[j].id());
                tokio::time::sleep(hold).await;
                net.unclog_link(self.nodes[pick].id(), self.nodes[j].id());
            }
            Fault::KillRestart => {
                let down = Duration::from_millis(thread_rng().gen_range(0..800));
                self.note(format!("t={t}ms crash n{}, down {down:?}", pick + 1));
                self.down(pick);
                tokio::time::sleep(down).await;
                self.up(pick);
            }
            Fault::PowerLoss => {
                self.down(pick);
                let report = self.disks[pick].power_loss(thread_rng().r#gen());
                self.note(format!(
                    "t={t}ms power loss n{}, torn {:?}",
                    pick + 1,
                    report.torn
                ));
                tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..500))).await;
                self.up(pick);
            }
            Fault::Delay => {
                let max = thread_rng().gen_range(20..200);
                self.note(format!("t={t}ms latency 1..{max}ms for {hold:?}"));
                net.update_config(|c| {
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(max)
                });
                tokio::time::sleep(hold).await;
                net.update_config(|c| *c = madsim::net::Config::default());
            }
        }
    }
}

/// The replicas that are running now.
fn live_replicas(registry: &Registry) -> Vec<Replica> {
    registry
        .lock()
        .expect("registry lock")
        .iter()
        .flatten()
        .cloned()
        .collect()
}

/// Each live replica's Raft state, for failure reports.
fn describe(registry: &Registry) -> String {
    let g = registry.lock().expect("registry lock");
    let mut s = format!("at {:?}\n", std::time::SystemTime::now());
    for (i, r) in g.iter().enumerate() {
        match r {
            None => s.push_str(&format!("n{}: down\n", i + 1)),
            Some(r) => {
                let m = r.raft().metrics().borrow_watched().clone();
                s.push_str(&format!(
                    "n{}: {:?} term {} leader {:?} last {:?} applied {:?} vote {}\n",
                    i + 1,
                    m.state,
                    m.current_term,
                    m.current_leader,
                    m.last_log_index,
                    m.last_applied,
                    m.vote
                ));
            }
        }
    }
    s
}

/// Runs one scenario on the current madsim runtime.
pub async fn run(cfg: ScenarioConfig) -> Outcome {
    let handle = Handle::current();
    let cluster = start_cluster(&handle, &cfg);
    form_group(&cluster.registry).await;
    let watch = spawn_monitors(&handle, &cluster.registry, cfg.retention);

    let clients_node = handle.create_node().name("clients").build();
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        clients.push(clients_node.spawn(client(
            c,
            cfg.writes_per_client,
            cluster.registry.clone(),
            cluster.history.clone(),
        )));
    }
    inject_faults(&cluster, &cfg).await;
    let target = await_liveness(&cluster, &cfg, &clients_node, clients).await;
    check(&cluster, &watch, target)
}

/// The replica nodes, each on its own disk, started (not yet a group).
fn start_cluster(handle: &Handle, cfg: &ScenarioConfig) -> Cluster {
    let registry: Registry = Arc::new(Mutex::new(vec![None; REPLICAS]));
    let history = Arc::new(Mutex::new(History::default()));
    let disks: Vec<SimDisk> = (0..REPLICAS).map(|_| SimDisk::new()).collect();
    let mut nodes = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let (d, r, m) = (disk.clone(), registry.clone(), cfg.mutations);
        nodes.push(
            handle
                .create_node()
                .name(format!("n{}", i + 1))
                .ip(addr(i).ip())
                // A fresh view of the disk per incarnation (see store_scenario).
                .init(move || replica_node(i, d.incarnation(), r.clone(), m))
                .build(),
        );
    }
    Cluster {
        handle: handle.clone(),
        nodes,
        disks,
        registry,
        history,
    }
}

/// Waits for every replica to start, then forms the group from the first one.
async fn form_group(registry: &Registry) {
    wait_until(within(5), "liveness: replicas start", || {
        registry
            .lock()
            .expect("registry lock")
            .iter()
            .all(Option::is_some)
    })
    .await;
    let voters: BTreeMap<NodeId, String> = (0..REPLICAS)
        .map(|i| (i as NodeId + 1, addr(i).to_string()))
        .collect();
    let first = registry.lock().expect("registry lock")[0]
        .clone()
        .expect("started");
    first.initialize(&voters).await.expect("initialize");
}

/// What the monitors saw during the run.
#[derive(Default)]
struct Watch {
    /// Leaders seen per term.
    leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>>,
    /// Each replica's terms in the order seen.
    terms: Arc<Mutex<Vec<(NodeId, u64)>>>,
    /// Every queue offset as observed (retention deletes old messages; the archive still
    /// knows them), and conflicts found while observing.
    archive: Arc<Mutex<(Archive, Vec<ReplicaViolation>)>>,
}

/// Watches leaders per term; records every queue as observed and runs retention right
/// after observing (if `retention`).
fn spawn_monitors(handle: &Handle, registry: &Registry, retention: bool) -> Watch {
    let watch = Watch::default();
    let monitor_node = handle.create_node().name("monitor").build();
    if retention {
        let (registry, archive) = (registry.clone(), watch.archive.clone());
        monitor_node.spawn(async move {
            loop {
                tokio::time::sleep(RETENTION_EVERY).await;
                for r in live_replicas(&registry) {
                    // No await between reading the queue and retention choosing its cut: every
                    // message retention may delete was dispatched, hence observed, here.
                    observe_queue(&r, &archive);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), r.run_retention(now)).await;
                }
            }
        });
    }
    let (registry, leaders, terms) = (registry.clone(), watch.leaders.clone(), watch.terms.clone());
    monitor_node.spawn(async move {
        let mut tick = 0u64;
        loop {
            for r in live_replicas(&registry) {
                let m = r.raft().metrics().borrow_watched().clone();
                let applied = m.last_applied.map(|l| l.index);
                if !placeholder_metrics(m.current_term, m.last_log_index, applied) {
                    observe_term(
                        &mut terms.lock().expect("terms lock"),
                        r.node_id(),
                        m.current_term,
                    );
                }
                if m.state.is_leader() {
                    leaders
                        .lock()
                        .expect("leaders lock")
                        .entry(m.current_term)
                        .or_default()
                        .insert(r.node_id());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            tick += 1;
            if std::env::var("RAFTMQ_SIM_LOG").is_ok() && tick.is_multiple_of(200) {
                eprintln!(
                    "MONITOR {:?}\n{}",
                    std::time::SystemTime::now(),
                    describe(&registry)
                );
            }
        }
    });
    watch
}

/// Injects seeded faults, one at a time, for the fault window; then everything is healed.
async fn inject_faults(cluster: &Cluster, cfg: &ScenarioConfig) {
    let start = tokio::time::Instant::now();
    while start.elapsed() < cfg.fault_window && !cfg.faults.is_empty() {
        let wait = thread_rng().gen_range(100..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let fault = cfg.faults[thread_rng().gen_range(0..cfg.faults.len())];
        cluster.inject(fault, start.elapsed().as_millis()).await;
    }
    cluster.note(format!(
        "t={}ms faults stop, all healed",
        start.elapsed().as_millis()
    ));
}

/// After healing: the clients finish, a probe write is acknowledged, and every replica
/// applies the leader's last entry, each within a bound. Returns that entry's index.
async fn await_liveness(
    cluster: &Cluster,
    cfg: &ScenarioConfig,
    clients_node: &madsim::runtime::NodeHandle,
    clients: Vec<madsim::task::JoinHandle<()>>,
) -> u64 {
    let (registry, history) = (&cluster.registry, &cluster.history);
    // Bounded: a group that never elects a leader again (a mutation can do that) must fail
    // the run, not spin in simulated time forever.
    for c in clients {
        let done = tokio::time::timeout(Duration::from_secs(60), c).await;
        assert!(
            done.is_ok(),
            "liveness: clients did not finish their writes within 60 s after the faults\n{}",
            describe(registry)
        );
    }

    // The group must accept a write within a bound. The probe retries (a write can be
    // refused while leadership settles) until one is acknowledged.
    let probe = {
        let (registry, history) = (registry.clone(), history.clone());
        let id = cfg.clients;
        clients_node.spawn(async move {
            let mut attempts = 0;
            loop {
                client(id, 1, registry.clone(), history.clone()).await;
                attempts += 1;
                let acked = history
                    .lock()
                    .expect("history lock")
                    .acked
                    .iter()
                    .any(|(w, _)| w.client == id);
                if acked {
                    return attempts;
                }
            }
        })
    };
    let live = tokio::time::timeout(Duration::from_secs(15), probe).await;
    assert!(
        live.is_ok(),
        "liveness: no write acknowledged within 15 s after healing\n{:?}\n{}",
        history.lock().expect("history").faults,
        describe(registry)
    );

    // Convergence: every replica applies the leader's last entry.
    let (_, l) = wait_until(within(10), "liveness: a leader after healing", || {
        leader(registry)
    })
    .await;
    let target = l
        .raft()
        .metrics()
        .borrow_watched()
        .last_log_index
        .expect("leader has a log");
    wait_until(within(20), "liveness: replicas converge", || {
        registry
            .lock()
            .expect("registry lock")
            .iter()
            .flatten()
            .all(|r| raftmq_raft::inspect::applied_index(r.store()) >= Some(target))
    })
    .await;
    target
}

/// Runs every checker on the converged replicas (up to `target`) and what was watched, then
/// stops the replicas.
fn check(cluster: &Cluster, watch: &Watch, target: u64) -> Outcome {
    let reps = live_replicas(&cluster.registry);
    let (logs, queues) = read_replicas(&reps, target);
    let mut replica_violations = check_replicas(&logs, &queues);
    replica_violations.extend(check_leaders(&watch.leaders.lock().expect("leaders lock")));
    replica_violations.extend(check_terms(&watch.terms.lock().expect("terms lock")));
    let resets = reps
        .iter()
        .map(|r| raftmq_raft::inspect::reset_count(r.store()).expect("read resets"))
        .sum();

    // The final queue, and below what every replica still holds, what was observed before
    // retention deleted it.
    let key = ("T".to_string(), 0);
    let last_queue = queues[0].get(&key).cloned().unwrap_or_default();
    let retained_from = queues
        .iter()
        .filter_map(|q| q.get(&key).and_then(|m| m.first()).map(|m| m.0))
        .max()
        .unwrap_or(0);
    let (archived, conflicts) = {
        let a = watch.archive.lock().expect("archive lock");
        (a.0.clone(), a.1.clone())
    };
    replica_violations.extend(conflicts);
    replica_violations.extend(check_archive(&archived, &last_queue));
    let mut log = FinalLog::new();
    let below = archived
        .range(..last_queue.first().map_or(0, |m| m.0))
        .map(|(o, id)| (*o, id.clone()));
    for (off, id) in below.chain(last_queue.iter().cloned()) {
        if let Some(w) = parse_id(&id) {
            log.insert(off, w);
        }
    }
    for i in 0..REPLICAS {
        cluster.down(i);
    }
    let history = cluster.history.lock().expect("history lock").clone();
    let violations = check_all(&history, &log);
    Outcome {
        history,
        log,
        violations,
        replica_violations,
        resets,
        retained_from,
    }
}

/// Adds what `r`'s queue `T/0` holds now to the archive (and any conflict with it).
fn observe_queue(r: &Replica, archive: &Mutex<(Archive, Vec<ReplicaViolation>)>) {
    let Ok(q) = queue_contents(r.store()) else {
        return;
    };
    let Some(msgs) = q.get(&("T".to_string(), 0)) else {
        return;
    };
    let mut a = archive.lock().expect("archive lock");
    let found = observe(&mut a.0, msgs);
    a.1.extend(found);
}
