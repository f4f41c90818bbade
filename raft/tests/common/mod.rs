//! Helpers shared by the real-network tests: start a replica behind a gRPC server on
//! loopback, find the leader, retry a write refused while leadership settles.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftmq_raft::{NodeId, Replica, ReplicaConfig, WriteError};
use raftmq_store::Message;
use raftmq_store::{MmapDisk, StoreConfig};
use raftmq_testkit::wait_for;
use tokio::sync::oneshot;

pub struct Node {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
    pub replica: Replica,
    pub stop: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<()>,
}

pub fn config(id: NodeId) -> ReplicaConfig {
    let mut store = StoreConfig::for_tests();
    store.segment_bytes = 1 << 20;
    store.max_record_bytes = 256 * 1024;
    ReplicaConfig {
        group: "g1".into(),
        node_id: id,
        store,
        timeouts: Default::default(),
        batch: raftmq_raft::BatchLimits {
            max_messages: 256,
            max_bytes: 128 * 1024,
        },
        retention_interval_ms: 0,
        mutations: Default::default(),
    }
}

pub async fn start(
    id: NodeId,
    dir: std::path::PathBuf,
    addr: Option<SocketAddr>,
) -> anyhow::Result<Node> {
    start_with(config(id), dir, addr).await
}

pub async fn start_with(
    config: ReplicaConfig,
    dir: std::path::PathBuf,
    addr: Option<SocketAddr>,
) -> anyhow::Result<Node> {
    let id = config.node_id;
    let disk = Arc::new(MmapDisk::open(&dir)?);
    let replica = Replica::start(disk, config).await?;
    let incoming = raftmq_raft::network::listen(addr.unwrap_or_else(raftmq_testkit::free_addr))?;
    let addr = incoming.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = replica.raft_service();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Node {
        id,
        addr,
        dir,
        replica,
        stop: Some(stop),
        server,
    })
}

/// Starts replicas `1..=n` under `root` (each in `n<id>/`, on a free port) and forms the group
/// from replica 1.
pub async fn start_group(root: &std::path::Path, n: u64) -> anyhow::Result<Vec<Option<Node>>> {
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for id in 1..=n {
        let dir = root.join(format!("n{id}"));
        std::fs::create_dir_all(&dir)?;
        nodes.push(Some(start(id, dir, None).await?));
    }
    let voters: std::collections::BTreeMap<NodeId, String> = nodes
        .iter()
        .flatten()
        .map(|n| (n.id, n.addr.to_string()))
        .collect();
    nodes[0]
        .as_ref()
        .expect("started")
        .replica
        .initialize(&voters)
        .await?;
    Ok(nodes)
}

pub fn leader_of(nodes: &[Option<Node>]) -> Option<usize> {
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n {
            let m = n.replica.raft().metrics();
            let m = openraft::async_runtime::WatchReceiver::borrow_watched(&m).clone();
            if m.current_leader == Some(n.id) && m.state.is_leader() {
                return Some(i);
            }
        }
    }
    None
}

impl Node {
    /// Stops the server and Raft (as a crash of the process would, minus the disk).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.replica.shutdown().await;
        let _ = self.server.await;
    }
}

pub fn metrics(r: &Replica) -> openraft::RaftMetrics<raftmq_raft::TypeConfig> {
    openraft::async_runtime::WatchReceiver::borrow_watched(&r.raft().metrics()).clone()
}

/// Runs `f` until it does not fail with `NotLeader`, for a bounded time: a new leader
/// accepts writes once a quorum has acknowledged it (its lease), and not while the group
/// reconfigures.
pub async fn retry_not_leader<T, Fut>(mut f: impl FnMut() -> Fut) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = Result<T, WriteError>>,
{
    let done = wait_for(
        Duration::from_secs(10),
        "a write not refused as NotLeader",
        || {
            let attempt = f();
            async move {
                match attempt.await {
                    Err(e @ WriteError::NotLeader { .. }) => Err(e.to_string()),
                    done => Ok(done),
                }
            }
        },
    )
    .await;
    Ok(done?)
}

/// Writes `messages` through `leader` (retrying `NotLeader`); returns the queue offsets.
pub async fn write_retrying(leader: &Replica, messages: Vec<Message>) -> anyhow::Result<Vec<u64>> {
    let a = retry_not_leader(|| leader.write(messages.clone())).await?;
    Ok(a.into_iter().map(|a| a.queue_offset.0).collect())
}
