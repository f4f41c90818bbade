//! Membership over real gRPC on loopback: a learner is added and catches up, promoted in
//! place of a voter (which leaves), another learner added and removed, leadership handed to
//! the new replica by name;
//! writes go on throughout, nothing acknowledged is lost, and the members end byte-identical.
//! Bad requests (no voters, an unknown replica) are refused and change nothing.
#![cfg(not(madsim))]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Node, leader_of, metrics, start};
use raftmq_raft::inspect::{applied_index, queue_contents, raw_log};
use raftmq_raft::{NodeId, Replica, WriteError};
use raftmq_store::Message;
use raftmq_testkit::wait_until;

fn voters(r: &Replica) -> BTreeSet<NodeId> {
    metrics(r)
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

fn members(r: &Replica) -> BTreeSet<NodeId> {
    metrics(r)
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect()
}

/// Writes `n` messages through `leader`, one at a time; returns (msg id, queue offset).
async fn write_n(leader: &Replica, from: u64, n: u64) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for i in from..from + n {
        let id = format!("m{i}");
        let msg = Message {
            topic: "T".into(),
            queue_id: 0,
            msg_id: id.clone(),
            body: vec![(i % 251) as u8; 512],
            ..Default::default()
        };
        let a = common::write_retrying(leader, vec![msg]).await?;
        out.push((id, a[0]));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_is_promoted_old_voter_leaves_and_leadership_moves() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
    for id in 1..=3u64 {
        let dir = tmp.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir)?;
        nodes.insert(id, start(id, dir, None).await?);
    }
    let addrs: BTreeMap<NodeId, String> =
        nodes.values().map(|n| (n.id, n.addr.to_string())).collect();
    nodes[&1].replica.initialize(&addrs).await?;
    let leader_id = wait_until(Duration::from_secs(10), "a leader", || {
        nodes
            .values()
            .find(|n| metrics(&n.replica).state.is_leader())
            .map(|n| n.id)
    })
    .await;
    let leader = nodes[&leader_id].replica.clone();
    let mut acked = write_n(&leader, 0, 100).await?;

    // Refused: no voters, and a voter set naming a replica that is not a member.
    let before = voters(&leader);
    let none = leader.change_voters(BTreeSet::new()).await;
    assert!(
        matches!(none, Err(WriteError::InvalidArgument(_))),
        "{none:?}"
    );
    let unknown = leader.change_voters(BTreeSet::from([1, 2, 9])).await;
    assert!(
        matches!(unknown, Err(WriteError::InvalidArgument(_))),
        "{unknown:?}"
    );
    assert_eq!(
        voters(&leader),
        before,
        "a refused change changed the voters"
    );

    // A fourth replica, empty, joins as a learner and catches up (add_learner waits for it).
    let dir4 = tmp.path().join("n4");
    std::fs::create_dir_all(&dir4)?;
    let n4 = start(4, dir4, None).await?;
    leader.add_learner(4, &n4.addr.to_string()).await?;
    nodes.insert(4, n4);
    assert_eq!(voters(&leader), before, "a learner does not vote");
    assert!(members(&leader).contains(&4));
    acked.extend(write_n(&leader, 100, 100).await?);

    // Promote it in place of a follower, then remove that follower.
    let gone = *before
        .iter()
        .find(|&&id| id != leader_id)
        .expect("a follower");
    let mut new_voters: BTreeSet<NodeId> = before.clone();
    new_voters.remove(&gone);
    new_voters.insert(4);
    leader.change_voters(new_voters.clone()).await?;
    assert_eq!(voters(&leader), new_voters);
    assert!(
        !members(&leader).contains(&gone),
        "a voter left out leaves the group"
    );
    nodes.remove(&gone).expect("present").stop().await;
    acked.extend(write_n(&leader, 200, 100).await?);

    // A learner can be removed outright.
    let dir5 = tmp.path().join("n5");
    std::fs::create_dir_all(&dir5)?;
    let n5 = start(5, dir5, None).await?;
    leader.add_learner(5, &n5.addr.to_string()).await?;
    assert!(members(&leader).contains(&5));
    leader.remove(5).await?;
    assert!(!members(&leader).contains(&5));
    assert_eq!(voters(&leader), new_voters);
    n5.stop().await;

    // Hand leadership to the new replica by name.
    leader.transfer_leader(4).await?;
    let n4 = nodes[&4].replica.clone();
    wait_until(Duration::from_secs(10), "replica 4 to lead", || {
        let m = metrics(&n4);
        m.state.is_leader() && m.current_leader == Some(4)
    })
    .await;
    acked.extend(write_n(&n4, 300, 100).await?);

    // The members converge, byte for byte, and hold every acknowledged write where it was
    // acknowledged.
    let target = applied_index(n4.store()).expect("applied");
    for n in nodes.values() {
        let rs = n.replica.store().clone();
        wait_until(Duration::from_secs(20), "a member to converge", move || {
            applied_index(&rs) >= Some(target)
        })
        .await;
    }
    let logs: Vec<_> = nodes
        .values()
        .map(|n| raw_log(n.replica.store(), target))
        .collect::<Result<_, _>>()?;
    for l in &logs[1..] {
        assert!(l == &logs[0], "committed logs differ between members");
    }
    let queues: Vec<_> = nodes
        .values()
        .map(|n| queue_contents(n.replica.store()))
        .collect::<Result<_, _>>()?;
    for q in &queues[1..] {
        assert_eq!(q, &queues[0], "queues differ between members");
    }
    let q = &queues[0][&("T".to_string(), 0)];
    assert_eq!(q.len(), acked.len(), "exactly the acknowledged writes");
    for (id, off) in &acked {
        assert_eq!(
            q.iter().find(|(o, _)| o == off).map(|(_, m)| m),
            Some(id),
            "acknowledged {id} at offset {off}"
        );
    }
    for (_, n) in nodes {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_of_helper_sees_no_leader_before_initialize() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("n1");
    std::fs::create_dir_all(&dir)?;
    let n = start(1, dir, None).await?;
    let nodes = vec![Some(n)];
    assert_eq!(leader_of(&nodes), None);
    // A replica that is not initialized refuses writes with NotLeader and no known leader.
    let r = nodes[0].as_ref().expect("started").replica.clone();
    let w = r
        .write(vec![Message {
            topic: "T".into(),
            body: b"x".to_vec(),
            ..Default::default()
        }])
        .await;
    assert!(
        matches!(
            w,
            Err(WriteError::NotLeader {
                leader_id: None,
                ..
            })
        ),
        "{w:?}"
    );
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    Ok(())
}
