//! A real cluster on loopback for black-box tests: one name server and one three-replica
//! broker group, each replica a `Broker` with its own data directory and gRPC port.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftmq_broker::{Broker, BrokerConfig};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::*;
use raftmq_store::MmapDisk;
use raftmq_testkit::wait_for;
use tonic::transport::Channel;

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub namesrv: String,
    /// A second, independent name server (brokers register with both).
    pub namesrv2: String,
    pub configs: BTreeMap<u64, BrokerConfig>,
    pub brokers: BTreeMap<u64, Broker>,
    namesrv_stop: Option<tokio::sync::watch::Sender<()>>,
}

pub use raftmq_testkit::free_addr;

pub fn code(s: &Option<Status>) -> ErrorCode {
    s.as_ref()
        .and_then(|s| ErrorCode::try_from(s.code).ok())
        .unwrap_or(ErrorCode::Internal)
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Cluster> {
        Self::start_with(|_| {}).await
    }

    /// [`Cluster::start`] with `edit` applied to every replica's configuration.
    pub async fn start_with(edit: impl Fn(&mut BrokerConfig)) -> anyhow::Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let (ns_addr, ns2_addr) = (free_addr(), free_addr());
        let (stop, stopped) = tokio::sync::watch::channel(());
        for addr in [ns_addr, ns2_addr] {
            let svc = raftmq_namesrv::NamesrvHandle::new().into_service();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_shutdown(addr, async move {
                        let _ = stopped.changed().await;
                    })
                    .await;
            });
        }
        let addrs: BTreeMap<u64, std::net::SocketAddr> =
            (1..=3).map(|i| (i, free_addr())).collect();
        let mut configs = BTreeMap::new();
        for (&id, addr) in &addrs {
            let members: String = addrs
                .iter()
                .map(|(i, a)| format!("{i} = \"{a}\"\n"))
                .collect();
            let text = format!(
                "group = \"g1\"\nreplica_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"{}\"\nnamesrv_addrs = [\"{ns_addr}\", \"{ns2_addr}\"]\n[initial_members]\n{members}",
                tmp.path().join(format!("g1-{id}")).display()
            );
            let mut c = BrokerConfig::parse(&text)?;
            c.segment_bytes_override = Some(4 << 20);
            // Small IndexFiles: the default 500 MB each, zero-filled on three replicas at
            // once, slowed the first syncs by seconds.
            c.index_max_entries = 100_000;
            c.index_hash_slots = 25_000;
            edit(&mut c);
            configs.insert(id, c);
        }
        let mut cluster = Cluster {
            tmp,
            namesrv: ns_addr.to_string(),
            namesrv2: ns2_addr.to_string(),
            configs,
            brokers: BTreeMap::new(),
            namesrv_stop: Some(stop),
        };
        for id in 1..=3 {
            cluster.start_broker(id).await?;
        }
        cluster.wait_leader(Duration::from_secs(15)).await;
        Ok(cluster)
    }

    pub async fn start_broker(&mut self, id: u64) -> anyhow::Result<()> {
        let c = self.configs[&id].clone();
        std::fs::create_dir_all(&c.data_dir)?;
        let disk = Arc::new(MmapDisk::open(&c.data_dir)?);
        let b = Broker::start(c, disk).await?;
        self.brokers.insert(id, b);
        Ok(())
    }

    pub async fn stop_broker(&mut self, id: u64) {
        if let Some(b) = self.brokers.remove(&id) {
            b.shutdown().await;
        }
    }

    pub fn addr(&self, id: u64) -> String {
        self.configs[&id].listen.to_string()
    }

    /// The replica that leads and whose lease lets it take writes (a GroupStatus says
    /// LEADER); waits up to `limit`.
    pub async fn wait_leader(&self, limit: Duration) -> u64 {
        wait_for(limit, "a leader that takes writes", || async {
            for &id in self.brokers.keys() {
                if let Ok(mut a) = self.admin(id).await
                    && let Ok(r) = a.group_status(GroupStatusRequest {}).await
                    && r.get_ref().role == Role::Leader as i32
                {
                    return Some(id);
                }
            }
            None
        })
        .await
    }

    pub async fn messaging(&self, id: u64) -> anyhow::Result<MessagingClient<Channel>> {
        Ok(MessagingClient::connect(format!("http://{}", self.addr(id))).await?)
    }

    pub async fn admin(&self, id: u64) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::connect(format!("http://{}", self.addr(id))).await?)
    }

    /// Creates a topic through the leader, retrying while leadership settles.
    pub async fn create_topic(&self, name: &str, queues: u32, perm: u32) -> anyhow::Result<()> {
        let topic = TopicConfig {
            name: name.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm,
            ..Default::default()
        };
        let what = format!("topic {name} created by a leader");
        let r = wait_for(Duration::from_secs(10), &what, || async {
            let leader = self.wait_leader(Duration::from_secs(10)).await;
            let request = CreateTopicRequest {
                topic: Some(topic.clone()),
            };
            let r = match self.admin(leader).await {
                Ok(mut a) => a.create_topic(request).await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match r.map(tonic::Response::into_inner) {
                Ok(r)
                    if matches!(
                        code(&r.status),
                        ErrorCode::NotLeader | ErrorCode::Unavailable
                    ) =>
                {
                    Err(format!("{:?}", r.status))
                }
                // Any other answer, or a failed call, ends the wait.
                done => Ok(done),
            }
        })
        .await?;
        match code(&r.status) {
            ErrorCode::Ok => Ok(()),
            c => anyhow::bail!("create topic: {c:?} {:?}", r.status),
        }
    }

    /// Makes `call` on whichever replica leads until one answers with a status other than
    /// NOT_LEADER or UNAVAILABLE (three replicas on two cores do elect), within 15 s.
    #[allow(dead_code)]
    pub async fn on_leader<T, F, Fut>(
        &self,
        what: &str,
        status: fn(&T) -> &Option<Status>,
        call: F,
    ) -> T
    where
        F: Fn(MessagingClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        wait_for(Duration::from_secs(15), what, || async {
            let leader = self.wait_leader(Duration::from_secs(15)).await;
            let r = call(self.messaging(leader).await.ok()?)
                .await
                .ok()?
                .into_inner();
            (!matches!(
                code(status(&r)),
                ErrorCode::NotLeader | ErrorCode::Unavailable
            ))
            .then_some(r)
        })
        .await
    }

    /// Puts a consumer group's configuration through whichever replica leads; the status
    /// it answered (retrying NOT_LEADER and UNAVAILABLE for a bounded time).
    #[allow(dead_code)]
    pub async fn put_group(
        &self,
        group: ConsumerGroupConfig,
        must_exist: bool,
    ) -> anyhow::Result<ErrorCode> {
        let r = wait_for(
            Duration::from_secs(10),
            "a group config put by a leader",
            || async {
                let leader = self.wait_leader(Duration::from_secs(10)).await;
                let req = PutGroupRequest {
                    group: Some(group.clone()),
                    must_exist,
                };
                let r = self.admin(leader).await.ok()?.put_group(req).await.ok()?;
                let c = code(&r.into_inner().status);
                (!matches!(c, ErrorCode::NotLeader | ErrorCode::Unavailable)).then_some(c)
            },
        )
        .await;
        Ok(r)
    }

    /// Sends through whichever replica leads, following NOT_LEADER hints and retrying
    /// UNAVAILABLE, for a bounded time.
    pub async fn send(&self, messages: Vec<Message>) -> anyhow::Result<SendResponse> {
        self.send_request(SendRequest {
            producer_group: "P".into(),
            messages,
            transactional: false,
        })
        .await
    }

    /// [`Cluster::send`] of a whole request.
    pub async fn send_request(&self, request: SendRequest) -> anyhow::Result<SendResponse> {
        // The replica to try next; none until a leader is found.
        let target: Cell<Option<u64>> = Cell::new(None);
        wait_for(
            Duration::from_secs(15),
            "a send not refused as NOT_LEADER or UNAVAILABLE",
            || async {
                let to = match target.get() {
                    Some(id) => id,
                    None => self.wait_leader(Duration::from_secs(10)).await,
                };
                let request = request.clone();
                let r = match self.messaging(to).await {
                    Ok(mut m) => m.send(request).await.map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                let r = match r {
                    Ok(r) => r.into_inner(),
                    // A failed call ends the wait.
                    Err(e) => return Ok(Err(e)),
                };
                if !matches!(
                    code(&r.status),
                    ErrorCode::NotLeader | ErrorCode::Unavailable
                ) {
                    return Ok(Ok(r));
                }
                let hint = r
                    .status
                    .as_ref()
                    .map(|s| s.leader_addr.clone())
                    .unwrap_or_default();
                let next = match self
                    .configs
                    .iter()
                    .find(|(_, c)| c.listen.to_string() == hint)
                {
                    Some((&id, _)) if self.brokers.contains_key(&id) => id,
                    _ => self.wait_leader(Duration::from_secs(10)).await,
                };
                target.set(Some(next));
                Err(format!("{:?} from replica {to}", r.status))
            },
        )
        .await
    }

    pub async fn shutdown(mut self) {
        for id in self.brokers.keys().copied().collect::<Vec<_>>() {
            self.stop_broker(id).await;
        }
        if let Some(s) = self.namesrv_stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn msg(topic: &str, queue: Option<u32>, body: &str) -> Message {
    Message {
        topic: topic.into(),
        queue_id: queue,
        tags: "TagA".into(),
        keys: vec![format!("key-{body}")],
        properties: [("p".to_string(), format!("v-{body}"))]
            .into_iter()
            .collect(),
        body: body.as_bytes().to_vec(),
        born_timestamp_ms: 1,
        born_host: "127.0.0.1:1".into(),
        msg_id: format!("id-{body}"),
        ..Default::default()
    }
}
