//! A replica whose CommitLog is damaged below its synced marker is repaired from its group
//! (`raftmq_raft::repair`): three replicas over real gRPC and real files; a follower is
//! stopped and one bit of its last synced record flipped; it refuses to open; the repair plan
//! keeps its vote and bounds what it acknowledged; it restarts on an empty store, refuses every
//! vote request (a candidate sees it as down) until its log passes the bound, then votes again,
//! and ends byte-identical to the leader.
#![cfg(not(madsim))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, leader_of, metrics, start, write_retrying};
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::raft::v1::raft_service_client::RaftServiceClient;
use raftmq_raft::inspect::raw_log;
use raftmq_raft::{Replica, StartError};
use raftmq_store::{Message, MmapDisk, StoreError};
use raftmq_testkit::wait_until;

fn batch(from: u64, n: u64) -> Vec<Message> {
    (from..from + n)
        .map(|i| Message {
            topic: "T".into(),
            queue_id: (i % 4) as u32,
            msg_id: format!("m{i}"),
            body: vec![i as u8; 200],
            ..Default::default()
        })
        .collect()
}

/// A vote request for `node`'s group with `term`: the answer, or the gRPC status.
async fn ask_vote(
    addr: std::net::SocketAddr,
    term: u64,
) -> anyhow::Result<Result<pb::VoteResponse, tonic::Status>> {
    let mut c = RaftServiceClient::connect(format!("http://{addr}")).await?;
    let cfg = config(1);
    Ok(c.vote(pb::VoteRequest {
        group: Some(pb::GroupId {
            name: cfg.group.clone(),
            segment_bytes: cfg.store.segment_bytes,
        }),
        vote: Some(pb::Vote {
            term,
            node_id: 99,
            committed: false,
        }),
        last_log_id: Some(pb::LogId {
            term,
            index: 1 << 40,
        }),
        leadership_transfer: false,
    })
    .await
    .map(|r| r.into_inner()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_follower_is_refilled_and_votes_only_once_whole() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut nodes = common::start_group(tmp.path(), 3).await?;
    let leader = wait_until(Duration::from_secs(15), "a leader", || leader_of(&nodes)).await;
    let lr: Replica = nodes[leader].as_ref().expect("leader").replica.clone();
    for k in 0..20 {
        write_retrying(&lr, batch(k * 10, 10)).await?;
    }
    let f = (0..3).find(|&i| i != leader).expect("a follower");
    let last = metrics(&lr).last_log_index.expect("entries");
    let fr = nodes[f].as_ref().expect("follower").replica.clone();
    wait_until(
        Duration::from_secs(10),
        "the follower holds every entry",
        || metrics(&fr).last_log_index == Some(last),
    )
    .await;
    drop(fr);

    // Stop it and flip one bit of its last record (synced: it acknowledged it).
    let node = nodes[f].take().expect("follower");
    let (id, addr, dir) = (node.id, node.addr, node.dir.clone());
    node.stop().await;
    let seg = dir.join("commitlog/00000000000000000000");
    let mut bytes = std::fs::read(&seg)?;
    let end = bytes.iter().rposition(|&b| b != 0).expect("written") + 1;
    bytes[end - 5] ^= 0x10;
    std::fs::write(&seg, &bytes)?;
    let disk = Arc::new(MmapDisk::open(&dir)?);
    match Replica::start(disk.clone(), config(id)).await {
        Err(StartError::Store(StoreError::Corrupt { .. })) => {}
        Err(e) => panic!("expected the damage to be refused, got {e}"),
        Ok(_) => panic!("a damaged log below the synced marker must not open"),
    }

    // The plan: its vote kept, a bound over everything it can have acknowledged.
    let store_cfg = config(id).store;
    let plan = raftmq_raft::repair::plan(disk.clone(), &store_cfg)?.expect("damage found");
    drop(disk);
    assert!(plan.vote.is_some(), "it voted: the vote is kept");
    assert!(
        plan.repair_until >= last,
        "bound {} covers entry {last}",
        plan.repair_until
    );
    let aside = tmp.path().join(format!("n{id}.damaged"));
    std::fs::rename(&dir, &aside)?;
    std::fs::create_dir_all(&dir)?;
    raftmq_raft::repair::prepare(Arc::new(MmapDisk::open(&dir)?), &store_cfg, &plan)?;

    let node = start(id, dir.clone(), Some(addr)).await?;
    assert_eq!(node.replica.repairing_until(), Some(plan.repair_until));
    // Votes are refused while it refills, even for a candidate far ahead.
    let term = metrics(&lr).current_term + 100;
    match ask_vote(addr, term).await? {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        Ok(r) => panic!("a repairing replica answered a vote: {r:?}"),
    }
    let fr = node.replica.clone();
    nodes[f] = Some(node);

    // The leader refills it; more writes carry the group past the bound.
    let mut next = 200;
    while fr.repairing_until().is_some() {
        write_retrying(&lr, batch(next, 50)).await?;
        next += 50;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(next < 20_000, "the repair never ended: {:?}", metrics(&fr));
    }
    assert!(metrics(&fr).last_log_index >= Some(plan.repair_until));
    // It answers votes again (a stale term: refused, but answered).
    match ask_vote(addr, 0).await? {
        Ok(r) => assert!(!r.vote_granted),
        Err(s) => panic!("a repaired replica must answer votes: {s:?}"),
    }
    // And holds exactly the leader's log.
    let last = metrics(&lr).last_log_index.expect("entries");
    wait_until(Duration::from_secs(10), "the follower catches up", || {
        metrics(&fr).last_log_index == Some(last)
    })
    .await;
    assert_eq!(raw_log(fr.store(), last)?, raw_log(lr.store(), last)?);
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    Ok(())
}
