//! Real processes for the process tests: a name server and a three-replica group of
//! `raftmq` processes on loopback, and how to find the group's leader.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::*;
use raftmq_testkit::wait_for;

/// Kills every child on drop, so a failing test leaves no process behind.
pub struct Procs(pub BTreeMap<String, Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub use raftmq_testkit::free_port;

pub fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn raftmq")
}

pub fn code(s: &Option<Status>) -> ErrorCode {
    s.as_ref()
        .and_then(|s| ErrorCode::try_from(s.code).ok())
        .unwrap_or(ErrorCode::Internal)
}

pub async fn leader(namesrv: &str) -> Option<String> {
    let mut ns = NameServerClient::connect(format!("http://{namesrv}"))
        .await
        .ok()?;
    let r = ns
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .ok()?
        .into_inner();
    r.groups
        .into_iter()
        .find(|g| g.group == "g1")
        .map(|g| g.leader_addr)
        .filter(|a| !a.is_empty())
}

pub async fn wait_leader(namesrv: &str, not: Option<&str>, limit: Duration) -> String {
    let what = match not {
        Some(old) => format!("a leader other than {old}"),
        None => "a leader".to_string(),
    };
    wait_for(limit, &what, || async {
        leader(namesrv).await.filter(|l| Some(l.as_str()) != not)
    })
    .await
}

/// Starts a name server and group `g1` (three brokers, 16 MiB segments) under `dir`; `extra`
/// is appended to every broker's configuration (before `[initial_members]`, so it may open
/// its own sections only after that: see the callers). Returns the processes (killed on
/// drop) and the name server's address.
pub fn start_group(dir: &Path, extra: &str) -> (Procs, String) {
    start_group_with(dir, "", extra, &[])
}

/// [`start_group`] with `top` (top-level keys, before any section) in every broker's
/// configuration and `broker_args` added to every broker's command line.
pub fn start_group_with(
    dir: &Path,
    top: &str,
    extra: &str,
    broker_args: &[&str],
) -> (Procs, String) {
    let ns = format!("127.0.0.1:{}", free_port());
    let brokers: BTreeMap<u64, String> = (1..=3)
        .map(|i| (i, format!("127.0.0.1:{}", free_port())))
        .collect();
    let mut procs = Procs(BTreeMap::new());
    procs
        .0
        .insert(ns.clone(), spawn(&["namesrv", "--listen", &ns]));
    let members: String = brokers
        .iter()
        .map(|(i, a)| format!("{i} = \"{a}\"\n"))
        .collect();
    for (id, addr) in &brokers {
        let data = dir.join(format!("g1-{id}"));
        let cfg = dir.join(format!("g1-{id}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "group = \"g1\"\nreplica_id = {id}\nlisten = \"{addr}\"\ndata_dir = \"{}\"\nnamesrv_addrs = [\"{ns}\"]\nsegment_mib = 16\nindex_max_entries = 100000\nindex_hash_slots = 25000\n{top}\n[initial_members]\n{members}{extra}",
                data.display()
            ),
        )
        .expect("write a broker configuration");
        let mut args = vec!["broker", "--config", cfg.to_str().expect("utf-8 path")];
        args.extend_from_slice(broker_args);
        procs.0.insert(addr.clone(), spawn(&args));
    }
    (procs, ns)
}

/// SIGKILLs the process serving `addr` and reaps it.
pub fn sigkill(procs: &mut Procs, addr: &str) {
    let child = procs.0.get_mut(addr).expect("one of ours");
    // SAFETY: `kill` on a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "SIGKILL {addr}");
    let _ = child.wait();
}

/// Starts again the broker that served `addr` (its configuration is under `dir`, as
/// [`start_group`] wrote it).
pub fn restart(procs: &mut Procs, dir: &Path, addr: &str) {
    restart_with(procs, dir, addr, &[]);
}

/// [`restart`] with `broker_args` added to the command line.
pub fn restart_with(procs: &mut Procs, dir: &Path, addr: &str, broker_args: &[&str]) {
    let listen = format!("listen = \"{addr}\"");
    let cfg = (1..=3)
        .map(|id| dir.join(format!("g1-{id}.toml")))
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&listen)))
        .expect("a configuration for that address");
    let mut args = vec!["broker", "--config", cfg.to_str().expect("utf-8 path")];
    args.extend_from_slice(broker_args);
    procs.0.insert(addr.to_string(), spawn(&args));
}

/// Creates `topic` with `queues` queues (perm 6) on the group's leader, retrying while the
/// leader's lease settles.
pub async fn create_topic(namesrv: &str, topic: &str, queues: u32) {
    let what = format!("topic {topic} created");
    wait_for(Duration::from_secs(15), &what, || async {
        let l = wait_leader(namesrv, None, Duration::from_secs(10)).await;
        let r = admin_client::AdminClient::connect(format!("http://{l}"))
            .await
            .ok()?
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
            .ok()?
            .into_inner();
        (code(&r.status) == ErrorCode::Ok).then_some(())
    })
    .await;
}

/// Pulls every queue of `topic` (queues `0..queues`) from the start on `addr`, to the end;
/// returns how many times each msg id was read.
pub async fn consume_all(
    addr: &str,
    topic: &str,
    queues: u32,
) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut m = messaging_client::MessagingClient::connect(format!("http://{addr}")).await?;
    let mut consumed: BTreeMap<String, u32> = BTreeMap::new();
    for q in 0..queues {
        let mut offset = 0;
        loop {
            let r = m
                .pull(PullRequest {
                    consumer_group: "C".into(),
                    topic: topic.into(),
                    queue_id: q,
                    offset,
                    max_messages: 1024,
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
            for msg in &r.messages {
                *consumed
                    .entry(msg.message.as_ref().expect("message").msg_id.clone())
                    .or_default() += 1;
            }
            if r.next_offset == offset {
                break;
            }
            offset = r.next_offset;
        }
    }
    Ok(consumed)
}
