//! The product under madsim (first steps of the whole-cluster simulation): a name server, one
//! three-replica broker group and clients using the real SDK, each on its own simulated node,
//! storage on `SimDisk`. Optionally, while the producer sends, broker replicas are killed and
//! restarted (one at a time, seeded). What the clients saw is judged by
//! [`crate::queue_checks`]: nothing acknowledged lost, nothing unexpected, each message at the
//! queue offset it was acknowledged with, no offset reused; duplicates only with faults.
//!
//! Messages are identified by their body (`m<i>`, unique per run and known before the send, so
//! a failed send can be named as indeterminate).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle;
use raftmq_broker::{Broker, BrokerConfig};
use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer};
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::{CreateTopicRequest, GetClusterInfoRequest, GetRouteRequest, TopicConfig};
use raftmq_store::SimDisk;

use crate::queue_checks::{QueueHistory, QueueViolation, check_queue_history, duplicate_count};

const NAMESRV: &str = "10.0.1.1:9876";
const REPLICAS: usize = 3;

fn broker_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, 11 + i as u8], 10911))
}

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub messages: u32,
    /// Kill and restart broker replicas while sending.
    pub crashes: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            messages: 200,
            crashes: true,
        }
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub history: QueueHistory,
    pub violations: Vec<QueueViolation>,
    /// The faults injected, as a timeline.
    pub faults: Vec<String>,
}

impl Outcome {
    /// A readable report: counts, violations, the fault timeline.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} acked, {} indeterminate, {} deliveries, {} duplicated\n",
            self.history.acked.len(),
            self.history.indeterminate.len(),
            self.history.consumed.len(),
            duplicate_count(&self.history)
        );
        for v in &self.violations {
            s.push_str(&format!("VIOLATION {v:?}\n"));
        }
        s.push_str("faults:\n");
        for f in &self.faults {
            s.push_str(&format!("  {f}\n"));
        }
        s
    }
}

fn config(i: usize) -> BrokerConfig {
    let members: String = (0..REPLICAS)
        .map(|j| format!("{} = \"{}\"\n", j + 1, broker_addr(j)))
        .collect();
    let mut c = BrokerConfig::parse(&format!(
        "group = \"g1\"\nreplica_id = {}\nlisten = \"{}\"\ndata_dir = \"/sim/g1-{}\"\nnamesrv_addrs = [\"{NAMESRV}\"]\n[initial_members]\n{members}",
        i + 1,
        broker_addr(i),
        i + 1
    ))
    .expect("a valid generated configuration");
    c.segment_bytes_override = Some(256 * 1024);
    c
}

/// Runs the scenario on the current madsim runtime.
pub async fn run(cfg: ClusterConfig) -> Outcome {
    let handle = Handle::current();
    let ns_addr: SocketAddr = NAMESRV.parse().expect("literal address");
    let _ns = handle
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
    let disks: Vec<SimDisk> = (0..REPLICAS).map(|_| SimDisk::new()).collect();
    let mut nodes = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let d = disk.clone();
        nodes.push(
            handle
                .create_node()
                .name(format!("g1-{}", i + 1))
                .ip(broker_addr(i).ip())
                .init(move || {
                    // A fresh view of the disk per incarnation (see store_scenario).
                    let d = d.incarnation();
                    async move {
                        let b = Broker::start(config(i), Arc::new(d))
                            .await
                            .expect("broker starts");
                        // Keep it (and its server) alive for the node's lifetime.
                        std::future::pending::<()>().await;
                        drop(b);
                    }
                })
                .build(),
        );
    }
    let client = handle
        .create_node()
        .name("client")
        .ip([10, 0, 1, 100].into())
        .build();
    let history: Arc<Mutex<QueueHistory>> = Arc::default();
    let sending_done = Arc::new(AtomicBool::new(false));
    let work = {
        let (history, done, messages) = (history.clone(), sending_done.clone(), cfg.messages);
        client.spawn(async move { clients(history, done, messages).await })
    };
    let mut faults = Vec::new();
    if cfg.crashes {
        let start = tokio::time::Instant::now();
        // Up to four crashes, one replica down at a time, while the producer sends.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(300..1500))).await;
            if sending_done.load(Ordering::Acquire) {
                break;
            }
            let i = thread_rng().gen_range(0..REPLICAS);
            let down = thread_rng().gen_range(0..1000);
            faults.push(format!(
                "t={}ms crash g1-{}, down {down}ms",
                start.elapsed().as_millis(),
                i + 1
            ));
            handle.kill(nodes[i].id());
            disks[i].fence();
            tokio::time::sleep(Duration::from_millis(down)).await;
            handle.restart(nodes[i].id());
        }
        faults.push(format!("t={}ms faults stop", start.elapsed().as_millis()));
    }
    work.await.expect("client task");
    let history = history.lock().expect("history").clone();
    let violations = check_queue_history(&history, cfg.crashes);
    Outcome {
        history,
        violations,
        faults,
    }
}

/// The producer and the consumer; records what they saw.
async fn clients(history: Arc<Mutex<QueueHistory>>, done: Arc<AtomicBool>, messages: u32) {
    create_topic().await;
    let h2 = history.clone();
    let consumer = PushConsumer::builder()
        .namesrv_addrs([NAMESRV])
        .group("C")
        .client_id("c1")
        .subscribe("T", "*")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500))
        .concurrent(move |msgs| {
            let mut h = h2.lock().expect("history");
            for m in msgs {
                h.consumed.push((
                    "c1".into(),
                    String::from_utf8_lossy(&m.body).into_owned(),
                    (m.queue.group.clone(), m.queue.queue_id),
                    m.queue_offset,
                ));
            }
            ConsumeResult::Success
        })
        .build()
        .expect("valid consumer");
    consumer.start().await.expect("consumer starts");
    let producer = Producer::builder()
        .namesrv_addrs([NAMESRV])
        .group("P")
        .build()
        .expect("valid producer");
    producer.start().await.expect("producer starts");
    for i in 0..messages {
        let body = format!("m{i}");
        match producer.send(Message::new("T", body.clone())).await {
            Ok(r) => {
                history
                    .lock()
                    .expect("history")
                    .acked
                    .insert(body, ((r.queue.group, r.queue.queue_id), r.queue_offset));
            }
            Err(_) => {
                history.lock().expect("history").indeterminate.insert(body);
            }
        }
    }
    done.store(true, Ordering::Release);
    // Liveness: after the faults, everything acknowledged is consumed within a bound.
    for _ in 0..1200 {
        let all_in = {
            let h = history.lock().expect("history");
            let got: std::collections::BTreeSet<&String> =
                h.consumed.iter().map(|c| &c.1).collect();
            h.acked.keys().all(|k| got.contains(k))
        };
        if all_in {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    producer.shutdown().await;
}

/// Creates topic `T` (4 queues) on the group's leader once the name server knows one, and
/// waits until it is routed.
async fn create_topic() {
    loop {
        if let Ok(mut ns) = NameServerClient::connect(format!("http://{NAMESRV}")).await {
            let info = ns.get_cluster_info(GetClusterInfoRequest {}).await;
            if let Ok(info) = info
                && let Some(g) = info
                    .into_inner()
                    .groups
                    .into_iter()
                    .find(|g| !g.leader_addr.is_empty())
                && let Ok(mut admin) =
                    AdminClient::connect(format!("http://{}", g.leader_addr)).await
            {
                let r = admin
                    .create_topic(CreateTopicRequest {
                        topic: Some(TopicConfig {
                            name: "T".into(),
                            read_queue_nums: 4,
                            write_queue_nums: 4,
                            perm: 6,
                        }),
                    })
                    .await;
                if r.is_ok_and(|r| r.get_ref().status.as_ref().is_some_and(|s| s.code == 0)) {
                    loop {
                        let route = ns.get_route(GetRouteRequest { topic: "T".into() }).await;
                        if route
                            .is_ok_and(|r| r.get_ref().status.as_ref().is_some_and(|s| s.code == 0))
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
