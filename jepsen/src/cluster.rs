//! The processes of a run: a name server and one broker group of `replicas` real `raftmq`
//! processes, each started inside its own namespace (`ip netns exec`, which execs, so the
//! child's pid is the broker's) with its own data directory and a log file that every
//! incarnation appends to.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::*;

use crate::net::{NAMESRV, NAMESRV_ADDR, node_addr, node_ns};

/// The group's name.
pub const GROUP: &str = "g1";
/// The port every process listens on (each in its own namespace, at its own address).
pub const BROKER_PORT: u16 = 7000;
/// The port of the relay in front of each broker (see [`crate::relay`]): the group's
/// membership names it, so Raft traffic between brokers passes the relay.
pub const RAFT_PORT: u16 = 7001;
pub const NAMESRV_PORT: u16 = 9876;

/// How a broker is started.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// `--lazy-disk`: unsynced writes live in memory only, so a SIGKILL is a power cut.
    pub lazy_disk: bool,
    /// `flush = "sync"` or `"async"` (acknowledged before the fsync: loses messages in a
    /// power cut, which shows the checker fires).
    pub flush: String,
    /// Sections appended to every broker's configuration (after `[initial_members]`).
    pub extra: String,
}

/// One broker process's state as the harness left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
    Down,
}

pub struct Cluster {
    pub raftmq: PathBuf,
    pub dir: PathBuf,
    pub replicas: u64,
    opts: BrokerOptions,
    namesrv: Option<Child>,
    brokers: BTreeMap<u64, (Option<Child>, State)>,
    relays: Vec<Child>,
}

pub fn namesrv_addr() -> String {
    format!("{NAMESRV_ADDR}:{NAMESRV_PORT}")
}

pub fn broker_addr(id: u64) -> String {
    format!("{}:{BROKER_PORT}", node_addr(id))
}

/// The address the group's membership names for broker `id`: its relay.
pub fn member_addr(id: u64) -> String {
    format!("{}:{RAFT_PORT}", node_addr(id))
}

impl Cluster {
    /// Writes every broker's configuration under `dir` and starts every process.
    pub fn start(
        raftmq: &Path,
        dir: &Path,
        replicas: u64,
        opts: BrokerOptions,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let members: String = (1..=replicas)
            .map(|i| format!("{i} = \"{}\"\n", member_addr(i)))
            .collect();
        for id in 1..=replicas {
            let text = format!(
                "group = \"{GROUP}\"\nreplica_id = {id}\nlisten = \"{}\"\ndata_dir = \"{}\"\n\
                 namesrv_addrs = [\"{}\"]\nsegment_mib = 16\nindex_max_entries = 100000\n\
                 index_hash_slots = 25000\nflush = \"{}\"\n[initial_members]\n{members}{}",
                broker_addr(id),
                dir.join(format!("data/n{id}")).display(),
                namesrv_addr(),
                opts.flush,
                opts.extra,
            );
            std::fs::write(dir.join(format!("n{id}.toml")), text)?;
        }
        let mut c = Cluster {
            raftmq: raftmq.to_path_buf(),
            dir: dir.to_path_buf(),
            replicas,
            opts,
            namesrv: None,
            brokers: BTreeMap::new(),
            relays: Vec::new(),
        };
        let me = std::env::current_exe()?;
        for id in 1..=replicas {
            let control = c.delay_file(id);
            crate::relay::set_delay(&control, 0, 0)?;
            let relay = c.spawn_program(
                &me,
                &node_ns(id),
                &format!("relay-n{id}"),
                &[
                    "relay",
                    "--listen",
                    &member_addr(id),
                    "--to",
                    &broker_addr(id),
                    "--control",
                    control.to_str().context("utf-8 path")?,
                ],
            )?;
            c.relays.push(relay);
        }
        let ns = c.spawn(
            NAMESRV,
            "namesrv",
            &["namesrv", "--listen", &namesrv_addr()],
        )?;
        c.namesrv = Some(ns);
        for id in 1..=replicas {
            c.brokers.insert(id, (None, State::Down));
            c.start_broker(id)?;
        }
        Ok(c)
    }

    fn spawn(&self, ns: &str, log: &str, args: &[&str]) -> anyhow::Result<Child> {
        self.spawn_program(&self.raftmq, ns, log, args)
    }

    fn spawn_program(
        &self,
        program: &Path,
        ns: &str,
        log: &str,
        args: &[&str],
    ) -> anyhow::Result<Child> {
        let path = self.dir.join("logs").join(format!("{log}.log"));
        let out = OpenOptions::new().create(true).append(true).open(&path)?;
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {log}"))
    }

    /// Starts broker `id` (again), if it is down.
    pub fn start_broker(&mut self, id: u64) -> anyhow::Result<()> {
        if self.brokers[&id].1 != State::Down {
            return Ok(());
        }
        let cfg = self.dir.join(format!("n{id}.toml"));
        let cfg = cfg.to_str().context("utf-8 path")?.to_string();
        let mut args = vec!["broker", "--config", cfg.as_str()];
        if self.opts.lazy_disk {
            args.push("--lazy-disk");
        }
        let child = self.spawn(&node_ns(id), &format!("n{id}"), &args)?;
        self.brokers.insert(id, (Some(child), State::Running));
        Ok(())
    }

    pub fn state(&self, id: u64) -> State {
        self.brokers[&id].1
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.replicas).collect()
    }

    fn signal(&mut self, id: u64, sig: i32) {
        if let Some((Some(child), _)) = self.brokers.get(&id) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
        }
    }

    /// SIGKILLs broker `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if self.state(id) == State::Down {
            return;
        }
        self.signal(id, libc::SIGKILL);
        self.signal(id, libc::SIGCONT);
        if let Some((Some(mut child), _)) = self.brokers.remove(&id) {
            let _ = child.wait();
        }
        self.brokers.insert(id, (None, State::Down));
    }

    /// SIGSTOPs broker `id`.
    pub fn pause(&mut self, id: u64) {
        if self.state(id) == State::Running {
            self.signal(id, libc::SIGSTOP);
            self.brokers.entry(id).and_modify(|b| b.1 = State::Paused);
        }
    }

    /// SIGCONTs broker `id`.
    pub fn resume(&mut self, id: u64) {
        if self.state(id) == State::Paused {
            self.signal(id, libc::SIGCONT);
            self.brokers.entry(id).and_modify(|b| b.1 = State::Running);
        }
    }

    /// The control file of broker `id`'s relay.
    fn delay_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("relay-n{id}.delay"))
    }

    /// Delays the Raft traffic into and out of each of `ids` by `ms` ± `jitter_ms`, one way
    /// (0: none).
    pub fn set_delay(&self, ids: &[u64], ms: u64, jitter_ms: u64) -> anyhow::Result<()> {
        for &id in ids {
            crate::relay::set_delay(&self.delay_file(id), ms, jitter_ms)?;
        }
        Ok(())
    }

    /// Broker `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("data/n{id}"))
    }

    /// Whether broker `id`'s process has exited by itself (it refused to start, or died).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        match self.brokers.get_mut(&id) {
            Some((Some(child), _)) => child.try_wait().ok().flatten(),
            _ => None,
        }
    }

    /// Kills every process.
    pub fn stop_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
        if let Some(mut ns) = self.namesrv.take() {
            let _ = ns.kill();
            let _ = ns.wait();
        }
        for mut r in self.relays.drain(..) {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The group's leader as the name server has it, if any.
pub async fn leader() -> Option<(u64, String)> {
    let mut ns = NameServerClient::connect(format!("http://{}", namesrv_addr()))
        .await
        .ok()?;
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        ns.get_cluster_info(GetClusterInfoRequest {}),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    let addr = r
        .groups
        .into_iter()
        .find(|g| g.group == GROUP)
        .map(|g| g.leader_addr)
        .filter(|a| !a.is_empty())?;
    let id = (1..=9).find(|&i| broker_addr(i) == addr)?;
    Some((id, addr))
}

/// Asks broker `id` itself whether it leads (GroupStatus), bounded by a short timeout.
pub async fn leads(id: u64) -> bool {
    let call = async {
        let mut a = AdminClient::connect(format!("http://{}", broker_addr(id)))
            .await
            .ok()?;
        let r = a.group_status(GroupStatusRequest {}).await.ok()?;
        Some(r.get_ref().role == Role::Leader as i32)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), call).await,
        Ok(Some(true))
    )
}

/// Whether the name server routes `topic` (the leader registered it).
async fn routed(topic: &str) -> bool {
    let call = async {
        let mut ns = NameServerClient::connect(format!("http://{}", namesrv_addr()))
            .await
            .ok()?;
        let r = ns
            .get_route(GetRouteRequest {
                topic: topic.into(),
            })
            .await
            .ok()?
            .into_inner();
        Some(!r.queues.is_empty())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), call).await,
        Ok(Some(true))
    )
}

/// Creates `topic` with `queues` queues on the leader, retrying until it is taken or
/// `limit` passes; then waits until the name server routes it.
pub async fn create_topic(topic: &str, queues: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::from("no leader yet");
    while tokio::time::Instant::now() < deadline {
        if let Some((_, addr)) = leader().await {
            let call = async {
                AdminClient::connect(format!("http://{addr}"))
                    .await?
                    .create_topic(CreateTopicRequest {
                        topic: Some(TopicConfig {
                            name: topic.into(),
                            read_queue_nums: queues,
                            write_queue_nums: queues,
                            perm: 6,
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(anyhow::Error::from)
            };
            match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(Ok(r)) => {
                    let code = r
                        .status
                        .as_ref()
                        .and_then(|s| ErrorCode::try_from(s.code).ok())
                        .unwrap_or(ErrorCode::Internal);
                    if code == ErrorCode::Ok {
                        while !routed(topic).await {
                            anyhow::ensure!(
                                tokio::time::Instant::now() < deadline,
                                "topic {topic} created but not routed within {limit:?}"
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        return Ok(());
                    }
                    last = format!("{:?}", r.status);
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("topic {topic} not created within {limit:?}: {last}")
}

/// Broker `id`'s own view (role, term, leader id), bounded by a short timeout.
pub async fn status(id: u64) -> Option<(Role, u64, Option<u64>)> {
    let call = async {
        let mut a = AdminClient::connect(format!("http://{}", broker_addr(id)))
            .await
            .ok()?;
        let r = a
            .group_status(GroupStatusRequest {})
            .await
            .ok()?
            .into_inner();
        Some((r.role(), r.term, r.leader_id))
    };
    tokio::time::timeout(Duration::from_millis(500), call)
        .await
        .ok()
        .flatten()
}

/// Records, until `stop`, every change of each broker's view (role and term) and of the
/// leader the name server names: the report's timeline of who led when.
pub async fn watch(
    replicas: u64,
    rec: crate::history::Recorder,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use crate::history::{Op, Type};
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let mut seen = Vec::new();
        for id in 1..=replicas {
            let v = match status(id).await {
                Some((role, term, leader)) => {
                    format!("{} term {term} leader {leader:?}", role.as_str_name())
                }
                None => "unreachable".to_string(),
            };
            seen.push((format!("n{id}"), v));
        }
        let ns = leader()
            .await
            .map(|(id, _)| format!("n{id}"))
            .unwrap_or_else(|| "none".into());
        seen.push(("namesrv".into(), format!("leader {ns}")));
        for (who, v) in seen {
            if last.get(&who) != Some(&v) {
                rec.record(Op::new(rec.now(), &who, Type::Info, "status").value(&v));
                last.insert(who, v);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
