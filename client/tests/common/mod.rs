//! An in-process cluster for the SDK's tests: a name server and a three-replica group over
//! loopback gRPC, with topic `T` (4 queues) created and routed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_broker::{Broker, BrokerConfig};
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::{CreateTopicRequest, GroupStatusRequest, PullRequest, Role, TopicConfig};
use raftmq_testkit::wait_for;

pub struct Local {
    pub _tmp: tempfile::TempDir,
    pub namesrv: String,
    pub brokers: BTreeMap<u64, Broker>,
}

use raftmq_testkit::free_addr as port;

pub async fn local() -> anyhow::Result<Local> {
    local_with(|_| {}).await
}

/// [`local`] with each broker's config edited.
pub async fn local_with(edit: impl Fn(&mut BrokerConfig)) -> anyhow::Result<Local> {
    let tmp = tempfile::tempdir()?;
    let ns = port();
    let svc = raftmq_namesrv::NamesrvHandle::new().into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve(ns),
    );
    let addrs: Vec<std::net::SocketAddr> = (0..3).map(|_| port()).collect();
    let members: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{} = \"{a}\"\n", i + 1))
        .collect();
    let mut brokers = BTreeMap::new();
    for (i, a) in addrs.iter().enumerate() {
        let dir = tmp.path().join(format!("r{i}"));
        std::fs::create_dir_all(&dir)?;
        let mut c = BrokerConfig::parse(&format!(
            "group = \"g1\"\nreplica_id = {}\nlisten = \"{a}\"\ndata_dir = \"{}\"\nnamesrv_addrs = [\"{ns}\"]\n[initial_members]\n{members}",
            i + 1,
            dir.display()
        ))?;
        c.segment_bytes_override = Some(16 << 20);
        // Small IndexFiles: the default 500 MB each, zero-filled on three replicas at once,
        // slowed the first syncs by seconds.
        c.index_max_entries = 100_000;
        c.index_hash_slots = 25_000;
        edit(&mut c);
        brokers.insert(
            i as u64 + 1,
            Broker::start(c, Arc::new(raftmq_store::MmapDisk::open(&dir)?)).await?,
        );
    }
    let l = Local {
        _tmp: tmp,
        namesrv: ns.to_string(),
        brokers,
    };
    // A topic with 4 queues, created on the leader once it takes writes; then routed, all
    // within one budget.
    let (budget, started) = (Duration::from_secs(20), Instant::now());
    wait_for(budget, "topic T created on a usable leader", || async {
        let Some(addr) = l.leader().await else {
            return Err("no leader".to_string());
        };
        let r = AdminClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the leader")
            .create_topic(CreateTopicRequest {
                topic: Some(TopicConfig {
                    name: "T".into(),
                    read_queue_nums: 4,
                    write_queue_nums: 4,
                    perm: 6,
                    ..Default::default()
                }),
            })
            .await
            .expect("create_topic answers")
            .into_inner();
        if r.status.as_ref().is_some_and(|s| s.code == 0) {
            Ok(())
        } else {
            Err(format!("{:?} from {addr}", r.status))
        }
    })
    .await;
    // The name server learns the topic at the leader's next registration (≤ 100 ms later).
    let ns = raftmq_proto::v1::name_server_client::NameServerClient::connect(format!(
        "http://{}",
        l.namesrv
    ))
    .await?;
    wait_for(
        budget.saturating_sub(started.elapsed()),
        "the name server to learn topic T",
        || async {
            let r = ns
                .clone()
                .get_route(raftmq_proto::v1::GetRouteRequest { topic: "T".into() })
                .await
                .expect("the name server answers")
                .into_inner();
            r.status.as_ref().is_some_and(|s| s.code == 0)
                && r.groups.iter().any(|g| !g.leader_addr.is_empty())
        },
    )
    .await;
    Ok(l)
}

impl Local {
    /// Creates or updates `topic` (one queue) with `perm` on the leader.
    pub async fn put_topic(&self, topic: &str, perm: u32) -> anyhow::Result<()> {
        let what = format!("topic {topic} put on the leader");
        wait_for(Duration::from_secs(20), &what, || async {
            let addr = self.leader().await?;
            let r = AdminClient::connect(format!("http://{addr}"))
                .await
                .ok()?
                .create_topic(CreateTopicRequest {
                    topic: Some(TopicConfig {
                        name: topic.into(),
                        read_queue_nums: 1,
                        write_queue_nums: 1,
                        perm,
                        ..Default::default()
                    }),
                })
                .await
                .ok()?
                .into_inner();
            r.status.as_ref().is_some_and(|s| s.code == 0).then_some(())
        })
        .await;
        Ok(())
    }

    /// (body, reconsume_times, properties) of queue 0 of `topic`, read on the leader.
    pub async fn queue0(
        &self,
        topic: &str,
    ) -> anyhow::Result<Vec<(String, u32, BTreeMap<String, String>)>> {
        let addr = self
            .leader()
            .await
            .ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let r = MessagingClient::connect(format!("http://{addr}"))
            .await?
            .pull(PullRequest {
                consumer_group: "check".into(),
                topic: topic.into(),
                queue_id: 0,
                offset: 0,
                max_messages: 256,
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            r.status.as_ref().is_none_or(|s| s.code == 0),
            "pull {topic}: {:?}",
            r.status
        );
        Ok(r.messages
            .into_iter()
            .filter_map(|s| s.message)
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.body).into_owned(),
                    m.reconsume_times,
                    m.properties.into_iter().collect(),
                )
            })
            .collect())
    }

    pub async fn leader(&self) -> Option<String> {
        for b in self.brokers.values() {
            let addr = b.addr().to_string();
            if let Ok(mut a) = AdminClient::connect(format!("http://{addr}")).await
                && let Ok(s) = a.group_status(GroupStatusRequest {}).await
                && s.get_ref().role == Role::Leader as i32
            {
                return Some(addr);
            }
        }
        None
    }

    /// Every message id in every queue of T, with its queue and offset, read on `addr`.
    pub async fn contents(&self, addr: &str) -> anyhow::Result<Vec<(u32, u64, String)>> {
        let mut m = MessagingClient::connect(format!("http://{addr}")).await?;
        let mut out = Vec::new();
        for q in 0..4 {
            let mut offset = 0;
            loop {
                let r = m
                    .pull(PullRequest {
                        consumer_group: "check".into(),
                        topic: "T".into(),
                        queue_id: q,
                        offset,
                        max_messages: 1024,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                for msg in r.messages {
                    out.push((q, msg.queue_offset, msg.message.expect("message").msg_id));
                }
                if r.next_offset == offset {
                    break;
                }
                offset = r.next_offset;
            }
        }
        Ok(out)
    }
}
