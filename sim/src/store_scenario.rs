//! One replica's store under crashes and power loss, with concurrent clients (madsim only).
//!
//! A `store` node owns the [`Store`] and its group-commit flusher, on a [`SimDisk`] that lives
//! outside the node (so it survives a kill). Clients on their own node send writes over a
//! channel and record what was acknowledged. A fault task kills and restarts the store node
//! (process crash: nothing written is lost) or cuts its power (unsynced data lost, last write
//! torn). After the faults stop, a liveness write must succeed; then the final log is read
//! back and judged by [`crate::history`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle;
use raftmq_store::consumequeue::QueueId;
use raftmq_store::flush::FlushHandle;
use raftmq_store::message::{decode_batch, encode_batch};
use raftmq_store::{
    EntryRef, FlushMode, LogId, LogIndex, Message, RecordKind, SimDisk, Store, StoreConfig,
};
use tokio::sync::{mpsc, oneshot};

use crate::history::{FinalLog, History, Violation, WriteId, check_all};

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub clients: u32,
    pub writes_per_client: u32,
    /// How long faults are injected, in simulated time.
    pub fault_window: Duration,
    /// Mutation for checker tests: acknowledge before the sync. Must make `lost` fire.
    pub ack_before_sync: bool,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            clients: 4,
            writes_per_client: 60,
            fault_window: Duration::from_secs(4),
            ack_before_sync: false,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub history: History,
    pub log: FinalLog,
    pub violations: Vec<Violation>,
    /// Store-level consistency problems (ConsumeQueues vs log, verify).
    pub store_problems: Vec<String>,
}

impl Outcome {
    /// A readable report: violations and the fault timeline.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} acked, {} indeterminate, {} in the final log\n",
            self.history.acked.len(),
            self.history.indeterminate.len(),
            self.log.len()
        );
        for v in &self.violations {
            s.push_str(&format!("VIOLATION {v:?}\n"));
        }
        for p in &self.store_problems {
            s.push_str(&format!("STORE {p}\n"));
        }
        s.push_str("faults:\n");
        for f in &self.history.faults {
            s.push_str(&format!("  {f}\n"));
        }
        s
    }
}

struct Req {
    id: WriteId,
    reply: oneshot::Sender<Result<u64, String>>,
}

type Registry = Arc<Mutex<Option<mpsc::Sender<Req>>>>;

fn message_for(id: WriteId) -> Message {
    Message {
        topic: "T".into(),
        queue_id: id.client % 2,
        body: format!("{}:{}", id.client, id.seq).into_bytes(),
        keys: vec![format!("k{}-{}", id.client, id.seq)],
        store_timestamp_ms: 1,
        ..Message::default()
    }
}

fn parse_write(m: &Message) -> Option<WriteId> {
    let s = std::str::from_utf8(&m.body).ok()?;
    let (c, q) = s.split_once(':')?;
    Some(WriteId {
        client: c.parse().ok()?,
        seq: q.parse().ok()?,
    })
}

/// The store node's main task: recover, then serve writes until killed.
async fn store_node(disk: SimDisk, registry: Registry, ack_before_sync: bool) {
    let mut store = Store::open(Arc::new(disk), StoreConfig::for_tests())
        .unwrap_or_else(|e| panic!("the store failed to recover after a crash: {e}"));
    let flusher = FlushHandle::spawn(store.reader(), FlushMode::Sync, 500);
    let durable_index = Arc::new(AtomicU64::new(0));
    // Bounded: clients wait for room rather than queue without limit.
    let (tx, mut rx) = mpsc::channel::<Req>(64);
    *registry.lock().expect("registry lock") = Some(tx);
    let mut batches = 0u64;
    while let Some(first) = rx.recv().await {
        let mut reqs = vec![first];
        while reqs.len() < 16 {
            match rx.try_recv() {
                Ok(r) => reqs.push(r),
                Err(_) => break,
            }
        }
        let next = store
            .log_bounds()
            .expect("log bounds")
            .1
            .map_or(1, |(i, _)| i.0 + 1);
        let payloads: Vec<Vec<u8>> = reqs
            .iter()
            .map(|r| encode_batch(&[message_for(r.id)]).expect("valid message"))
            .collect();
        let entries: Vec<EntryRef<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(k, p)| EntryRef {
                term: 1,
                index: LogIndex(next + k as u64),
                kind: RecordKind::MESSAGES,
                timestamp_ms: 1,
                payload: p,
            })
            .collect();
        if let Err(e) = store.append(&entries) {
            for r in reqs {
                let _ = r.reply.send(Err(e.to_string()));
            }
            continue;
        }
        let end = store.reader().written();
        let last = next + reqs.len() as u64 - 1;
        let replies: Vec<(oneshot::Sender<Result<u64, String>>, u64)> = reqs
            .into_iter()
            .enumerate()
            .map(|(k, r)| (r.reply, next + k as u64))
            .collect();
        if ack_before_sync {
            for (reply, index) in replies {
                let _ = reply.send(Ok(index));
            }
        } else {
            let f = flusher.clone();
            let durable = durable_index.clone();
            tokio::spawn(async move {
                let r = f.wait_durable(end).await.map_err(|e| e.to_string());
                if r.is_ok() {
                    durable.fetch_max(last, Ordering::AcqRel);
                }
                for (reply, index) in replies {
                    let _ = reply.send(r.clone().map(|()| index));
                }
            });
        }
        // Apply what is durable, as a state machine would, and checkpoint now and then.
        let d = durable_index.load(Ordering::Acquire);
        if d > 0 && store.dispatched().is_none_or(|x| x.0 < d) {
            store.dispatch_upto(LogIndex(d)).expect("dispatch");
            let mut txn = store.meta().begin(false).expect("meta txn");
            txn.set_applied(&LogId {
                term: 1,
                node_id: 1,
                index: LogIndex(d),
            })
            .expect("set applied");
            txn.commit().expect("commit applied");
        }
        batches += 1;
        if batches % 8 == 0 {
            store.checkpoint().expect("checkpoint");
        }
    }
}

async fn client(id: u32, writes: u32, registry: Registry, history: Arc<Mutex<History>>) {
    let mut seq = 0;
    while seq < writes {
        let tx = registry.lock().expect("registry lock").clone();
        let Some(tx) = tx else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let w = WriteId { client: id, seq };
        let (rtx, rrx) = oneshot::channel();
        if tx.send(Req { id: w, reply: rtx }).await.is_err() {
            // Never delivered (the node was down): not sent, try again.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        seq += 1;
        match tokio::time::timeout(Duration::from_secs(2), rrx).await {
            Ok(Ok(Ok(index))) => history.lock().expect("history lock").acked.push((w, index)),
            _ => {
                history
                    .lock()
                    .expect("history lock")
                    .indeterminate
                    .insert(w);
            }
        }
        let pause = thread_rng().gen_range(0..20);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Runs one scenario on the current madsim runtime.
pub async fn run(cfg: ScenarioConfig) -> Outcome {
    let handle = Handle::current();
    let disk = SimDisk::new();
    let registry: Registry = Arc::new(Mutex::new(None));
    let history = Arc::new(Mutex::new(History::default()));

    let (d, r, mutant) = (disk.clone(), registry.clone(), cfg.ack_before_sync);
    let store = handle
        .create_node()
        .name("store")
        // Each incarnation gets its own view of the disk: `fence` at kill time cuts off the
        // old one, so a killed process's leftovers (destructors run by the simulator after
        // the kill) cannot write to the disk the new process uses.
        .init(move || store_node(d.incarnation(), r.clone(), mutant))
        .build();
    let clients_node = handle.create_node().name("clients").build();
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        clients.push(clients_node.spawn(client(
            c,
            cfg.writes_per_client,
            registry.clone(),
            history.clone(),
        )));
    }

    let start = tokio::time::Instant::now();
    while start.elapsed() < cfg.fault_window {
        let wait = thread_rng().gen_range(50..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let t = start.elapsed().as_millis();
        match thread_rng().gen_range(0..3) {
            0 => {
                handle.kill(store.id());
                disk.fence();
                *registry.lock().expect("registry lock") = None;
                let down = thread_rng().gen_range(0..100);
                tokio::time::sleep(Duration::from_millis(down)).await;
                handle.restart(store.id());
                history
                    .lock()
                    .expect("history lock")
                    .faults
                    .push(format!("t={t}ms crash, down {down}ms"));
            }
            1 => {
                handle.kill(store.id());
                disk.fence();
                *registry.lock().expect("registry lock") = None;
                let report = disk.power_loss(thread_rng().r#gen());
                handle.restart(store.id());
                history
                    .lock()
                    .expect("history lock")
                    .faults
                    .push(format!("t={t}ms power loss, torn {:?}", report.torn));
            }
            _ => {}
        }
    }
    history
        .lock()
        .expect("history lock")
        .faults
        .push(format!("t={}ms faults stop", start.elapsed().as_millis()));

    for c in clients {
        c.await.expect("client task");
    }
    // Liveness: after healing, a write must be acknowledged promptly.
    let probe = clients_node.spawn(client(cfg.clients, 1, registry.clone(), history.clone()));
    tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .expect("liveness: a write after healing did not finish within 10 s")
        .expect("probe task");
    let probe_acked = history
        .lock()
        .expect("history lock")
        .acked
        .iter()
        .any(|(w, _)| w.client == cfg.clients);
    assert!(
        probe_acked,
        "liveness: the write after healing was not acknowledged"
    );

    handle.kill(store.id());
    disk.fence();
    let history = history.lock().expect("history lock").clone();
    let (log, store_problems) = read_final(&disk);
    let violations = check_all(&history, &log);
    Outcome {
        history,
        log,
        violations,
        store_problems,
    }
}

/// Opens the store as the next process would and reads back the whole log; also checks that
/// the ConsumeQueues agree with the log.
fn read_final(disk: &SimDisk) -> (FinalLog, Vec<String>) {
    let mut problems = Vec::new();
    let mut store = match Store::open(Arc::new(disk.incarnation()), StoreConfig::for_tests()) {
        Ok(s) => s,
        Err(e) => return (FinalLog::new(), vec![format!("final open failed: {e}")]),
    };
    if let Err(e) = store.verify() {
        problems.push(format!("verify: {e}"));
    }
    let mut log = FinalLog::new();
    let mut per_queue: BTreeMap<QueueId, Vec<Vec<u8>>> = BTreeMap::new();
    let (first, last) = store.log_bounds().expect("bounds");
    if let Some((last, _)) = last {
        for i in first.0..=last.0 {
            let rec = store.read_entry(LogIndex(i)).expect("read entry");
            for m in decode_batch(&rec.payload).expect("decode") {
                if let Some(w) = parse_write(&m) {
                    log.insert(i, w);
                }
                per_queue
                    .entry(QueueId {
                        topic: m.topic.clone(),
                        queue_id: m.queue_id,
                    })
                    .or_default()
                    .push(m.body);
            }
        }
        store.dispatch_upto(last).expect("final dispatch");
    }
    for (q, bodies) in per_queue {
        let (min, max) = store.queue_bounds(&q);
        let got: Vec<Vec<u8>> = (min.0..max.0)
            .map(|o| {
                store
                    .read_queue_message(&q, raftmq_store::QueueOffset(o))
                    .map(|m| m.body)
                    .unwrap_or_default()
            })
            .collect();
        if got != bodies {
            problems.push(format!(
                "queue {q:?}: consume queue disagrees with the log ({} vs {})",
                got.len(),
                bodies.len()
            ));
        }
    }
    (log, problems)
}
