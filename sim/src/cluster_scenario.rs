//! The product under madsim (first step of the whole-cluster simulation): a name server, one
//! three-replica broker group and clients using the real SDK, each on its own simulated node,
//! storage on `SimDisk`. No faults yet: this run shows the whole stack is deterministic and
//! delivers every acknowledged message; fault injection and the queue-semantics checkers build
//! on it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use raftmq_broker::{Broker, BrokerConfig};
use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer};
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::{CreateTopicRequest, GetRouteRequest, TopicConfig};
use raftmq_store::SimDisk;

const NAMESRV: &str = "10.0.1.1:9876";
const REPLICAS: usize = 3;

fn broker_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, 11 + i as u8], 10911))
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Message ids acknowledged to the producer.
    pub acked: BTreeSet<String>,
    /// Message id → times consumed.
    pub consumed: BTreeMap<String, u32>,
}

impl Outcome {
    /// Acknowledged but never consumed.
    pub fn lost(&self) -> Vec<&String> {
        self.acked
            .iter()
            .filter(|id| !self.consumed.contains_key(*id))
            .collect()
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

/// Runs the scenario on the current madsim runtime: `messages` sent, all consumed.
pub async fn run(messages: u32) -> Outcome {
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
    client
        .spawn(async move {
            create_topic().await;
            let acked = Arc::new(Mutex::new(BTreeSet::new()));
            let consumed: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
            let seen = Arc::new(AtomicU64::new(0));
            let (c2, s2) = (consumed.clone(), seen.clone());
            let consumer = PushConsumer::builder()
                .namesrv_addrs([NAMESRV])
                .group("C")
                .client_id("c1")
                .subscribe("T", "*")
                .consume_from(ConsumeFrom::First)
                .long_poll(Duration::from_millis(500))
                .concurrent(move |msgs| {
                    let mut c = c2.lock().expect("consumed");
                    for m in msgs {
                        *c.entry(m.msg_id.clone()).or_default() += 1;
                    }
                    s2.fetch_add(msgs.len() as u64, Ordering::Relaxed);
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
                if let Ok(r) = producer.send(Message::new("T", format!("m{i}"))).await {
                    acked.lock().expect("acked").insert(r.msg_id);
                }
            }
            let want = acked.lock().expect("acked").len();
            for _ in 0..600 {
                if consumed.lock().expect("consumed").len() >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            consumer.shutdown().await;
            producer.shutdown().await;
            let acked = acked.lock().expect("acked").clone();
            let consumed = consumed.lock().expect("consumed").clone();
            Outcome { acked, consumed }
        })
        .await
        .expect("client task")
}

/// Creates topic `T` (4 queues) on the group's leader once the name server knows one, and waits
/// until it is routed.
async fn create_topic() {
    loop {
        if let Ok(mut ns) = NameServerClient::connect(format!("http://{NAMESRV}")).await {
            let info = ns
                .get_cluster_info(raftmq_proto::v1::GetClusterInfoRequest {})
                .await;
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
