//! Retention through Raft over real gRPC on loopback: once old CommitLog segments expire,
//! each replica snapshots at a segment boundary, purges its Raft log and deletes the
//! segments. A follower that was down meanwhile, and a brand-new replica, can then only be
//! brought up to date by the boundary snapshot: they reset their store to the leader's chain
//! point and receive the retained entries at the same positions, byte for byte, with the
//! same queue offsets, topics, consumer offsets and transaction table; and they survive a
//! restart. An undecided transaction's half message holds its segment against retention.
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Node, metrics, retry_not_leader, start_with, write_retrying};
use raftmq_raft::inspect::{applied_index, queue_contents, raw_log};
use raftmq_raft::types::{OffsetCommit, TopicSpec};
use raftmq_raft::{GroupSpec, MetaCommand, NodeId, Replica, ReplicaConfig, TxnOutcome};
use raftmq_store::{Message, txn};
use raftmq_testkit::{wait_for, wait_until};

const QUEUES: u32 = 3;

fn config(id: NodeId) -> ReplicaConfig {
    let mut c = common::config(id);
    c.store.segment_bytes = 256 * 1024;
    c.store.max_record_bytes = 128 * 1024;
    c.store.file_reserved_time_ms = 0;
    c.batch.max_bytes = 64 * 1024;
    c
}

/// Writes `batches` writes of 16 messages of 1 KiB, spread over the queues.
async fn write_batches(leader: &Replica, from: u64, batches: u64) -> anyhow::Result<()> {
    for b in from..from + batches {
        let msgs = (0..16u64)
            .map(|k| Message {
                topic: "T".into(),
                queue_id: ((b + k) % u64::from(QUEUES)) as u32,
                msg_id: format!("m{b}-{k}"),
                keys: vec![format!("key{b}")],
                body: vec![(b % 251) as u8; 1024],
                ..Default::default()
            })
            .collect();
        write_retrying(leader, msgs).await?;
    }
    Ok(())
}

/// A half message of producer group `G` on queue 0.
fn half(n: u64) -> Message {
    let mut m = Message {
        topic: "T".into(),
        msg_id: format!("h{n}"),
        body: format!("half {n}").into_bytes(),
        sys_flag: txn::SYS_FLAG_TXN_PREPARED,
        ..Default::default()
    };
    m.properties
        .insert(txn::PROPERTY_PRODUCER_GROUP.into(), "G".into());
    m
}

/// Stores half `n`; returns its position.
async fn store_half(leader: &Replica, n: u64) -> anyhow::Result<u64> {
    let a = retry_not_leader(|| leader.write(vec![half(n)])).await?;
    assert_eq!(a[0].topic, txn::HALF_TOPIC, "a half goes to the half queue");
    Ok(a[0].position.0)
}

/// Commits half `n` at `pos`, as the broker does (a copy flagged commit, naming the half).
async fn commit_half(leader: &Replica, n: u64, pos: u64) -> anyhow::Result<()> {
    let mut m = half(n);
    m.sys_flag = txn::SYS_FLAG_TXN_COMMIT;
    m.properties
        .insert(txn::PROPERTY_HALF_POSITION.into(), pos.to_string());
    let r = retry_not_leader(|| leader.write_alone(m.clone())).await?;
    assert_eq!(r.txn, Some(TxnOutcome::Decided));
    Ok(())
}

async fn rollback_half(leader: &Replica, n: u64, pos: u64) -> anyhow::Result<()> {
    let cmd = MetaCommand::RollbackTransaction {
        half: pos,
        msg_id: format!("h{n}"),
        producer_group: "G".into(),
        reason: "test".into(),
        decided_ms: 1,
    };
    let r = retry_not_leader(|| leader.propose(cmd.clone())).await?;
    assert_eq!(r.txn, Some(TxnOutcome::Decided));
    Ok(())
}

async fn commit_offset(leader: &Replica, offset: u64) -> anyhow::Result<()> {
    let cmd = MetaCommand::CommitOffsets {
        group: "G".into(),
        offsets: (0..QUEUES)
            .map(|q| OffsetCommit {
                topic: "T".into(),
                queue_id: q,
                offset: raftmq_store::QueueOffset(offset + u64::from(q)),
            })
            .collect(),
    };
    retry_not_leader(|| leader.propose(cmd.clone())).await?;
    Ok(())
}

/// Runs retention on `r` until it has purged its Raft log (a leader defers the purge while a
/// replication still reads the entries), for a bounded time.
async fn retain(r: &Replica) -> anyhow::Result<u64> {
    let what = format!("replica {} to purge", r.node_id());
    let purged = wait_for(Duration::from_secs(20), &what, || async {
        match r.run_retention(u64::MAX / 2).await {
            Ok(o) if o.segments_deleted > 0 => {
                Ok(Ok(o.purged_upto.expect("deleted segments are purged")))
            }
            Ok(o) => Err(format!("{o:?}")),
            // A failure ends the wait: it is the test's error, not "not yet".
            Err(e) => Ok(Err(e)),
        }
    })
    .await?;
    Ok(purged)
}

/// `r` holds exactly what `leader` holds from `r`'s first retained entry on, at the same
/// positions, and the same metadata.
fn assert_same_tail(leader: &Replica, r: &Replica, upto: u64) -> anyhow::Result<()> {
    let mine = raw_log(r.store(), upto)?;
    anyhow::ensure!(!mine.is_empty(), "replica {} holds no entries", r.node_id());
    let theirs: Vec<_> = raw_log(leader.store(), upto)?
        .into_iter()
        .filter(|rec| rec.index >= mine[0].index)
        .collect();
    assert!(
        mine == theirs,
        "replica {}: log from {} differs from the leader's",
        r.node_id(),
        mine[0].index
    );
    let (lq, rq) = (queue_contents(leader.store())?, queue_contents(r.store())?);
    assert_eq!(lq.keys().collect::<Vec<_>>(), rq.keys().collect::<Vec<_>>());
    for (q, msgs) in &rq {
        let first = msgs.first().map_or(u64::MAX, |m| m.0);
        let lmsgs: Vec<_> = lq[q].iter().filter(|m| m.0 >= first).cloned().collect();
        assert_eq!(msgs, &lmsgs, "queue {q:?}");
        assert_eq!(
            msgs.last().map(|m| m.0),
            lq[q].last().map(|m| m.0),
            "queue {q:?} ends where the leader's ends"
        );
    }
    let (ls, rs) = (leader.store().lock(), r.store().lock());
    assert_eq!(ls.meta().topics()?, rs.meta().topics()?);
    assert_eq!(ls.meta().consumer_offsets()?, rs.meta().consumer_offsets()?);
    // Undecided transactions travel with a snapshot (decided ones do not: see
    // `SnapshotState::transactions`).
    assert_eq!(
        ls.meta().transactions(false, usize::MAX)?,
        rs.meta().transactions(false, usize::MAX)?,
        "replica {}: the undecided transactions",
        r.node_id()
    );
    Ok(())
}

async fn converge(nodes: &BTreeMap<NodeId, Node>, leader: &Replica) -> anyhow::Result<u64> {
    let target = applied_index(leader.store()).expect("applied");
    for n in nodes.values() {
        let rs = n.replica.store().clone();
        wait_until(
            Duration::from_secs(30),
            "a replica to converge",
            move || applied_index(&rs) >= Some(target),
        )
        .await;
    }
    Ok(target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_and_new_replicas_catch_up_from_a_boundary_snapshot() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = |id: NodeId| {
        let d = tmp.path().join(format!("n{id}"));
        std::fs::create_dir_all(&d).map(|_| d)
    };
    let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start_with(config(id), dir(id)?, None).await?);
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
    let topic = MetaCommand::PutTopic(TopicSpec {
        name: "T".into(),
        read_queue_nums: QUEUES,
        write_queue_nums: QUEUES,
        perm: 6,
        message_type: raftmq_store::meta::TopicMessageType::Fifo,
    });
    retry_not_leader(|| leader.propose(topic.clone())).await?;
    let group = GroupSpec {
        name: "CG".into(),
        max_reconsume_times: 3,
        retry_backoff_ms: vec![100, 200],
        consume_first: true,
        fifo: true,
    };
    retry_not_leader(|| leader.propose(MetaCommand::PutGroup(group.clone()))).await?;
    write_batches(&leader, 0, 10).await?;
    commit_offset(&leader, 5).await?;
    // Two transactions in the first segment: one committed later, one left undecided.
    let h1 = store_half(&leader, 1).await?;
    let h2 = store_half(&leader, 2).await?;
    assert!(h2 < 256 * 1024, "in the first segment");

    // A follower goes down; the others write on for several segments and purge.
    let lagging = *nodes
        .keys()
        .find(|&&id| id != leader_id)
        .expect("a follower");
    let lag_addr = nodes[&lagging].addr;
    nodes.remove(&lagging).expect("present").stop().await;
    write_batches(&leader, 10, 80).await?;
    commit_offset(&leader, 40).await?;
    // POP state (a cursor, messages in flight) travels with the snapshot too.
    let claim = MetaCommand::PopClaim {
        group: "PG".into(),
        topic: "T".into(),
        queue_id: 0,
        max: 3,
        now_ms: 1_000,
        invisible_ms: 1 << 40,
        start_offset: 0,
        retained_from: 0,
        fifo: false,
    };
    retry_not_leader(|| leader.propose(claim.clone())).await?;
    // The undecided half holds its segment: nothing expires.
    for n in nodes.values() {
        let o = n.replica.run_retention(u64::MAX / 2).await?;
        assert_eq!(o.segments_deleted, 0, "replica {}: {o:?}", n.id);
    }
    commit_half(&leader, 1, h1).await?;
    rollback_half(&leader, 2, h2).await?;
    // A third stays undecided across the snapshot install.
    let h3 = store_half(&leader, 3).await?;
    write_batches(&leader, 90, 1).await?;
    for n in nodes.values() {
        let purged = retain(&n.replica).await?;
        let first = n.replica.store().lock().log_bounds()?.0;
        assert_eq!(first.0, purged + 1, "replica {}", n.id);
        assert!(purged > 20, "several segments went: purged up to {purged}");
    }

    // The follower returns: its log ends before the leader's first entry, so it installs
    // the boundary snapshot, resets its store and receives the rest.
    nodes.insert(
        lagging,
        start_with(config(lagging), dir(lagging)?, Some(lag_addr)).await?,
    );
    write_batches(&leader, 90, 10).await?;
    let target = converge(&nodes, &leader).await?;
    let r = nodes[&lagging].replica.clone();
    assert!(
        metrics(&r).snapshot.is_some(),
        "the lagging replica installed a snapshot"
    );
    {
        let store = r.store().lock();
        let first = store.log_bounds()?.0;
        let leader_first = leader.store().lock().log_bounds()?.0;
        assert_eq!(
            first, leader_first,
            "the snapshot ends where the leader's log starts: every retained entry came"
        );
        assert!(
            first.0 > 20,
            "the store restarted past the purge: first entry {first}"
        );
        assert!(store.reader().first().0 > 0);
        assert_eq!(
            store.reader().first().0 % (256 * 1024),
            0,
            "at a segment start"
        );
    }
    assert_same_tail(&leader, &r, target)?;
    {
        let (pending, _) = r.store().lock().meta().transactions(false, 10)?;
        assert_eq!(
            pending.len(),
            1,
            "the undecided transaction came with the snapshot"
        );
        assert_eq!(pending[0].half.0, h3);
        assert_eq!(
            r.store().lock().meta().groups()?,
            vec![group.to_config()],
            "the group config came with the snapshot"
        );
        assert_eq!(
            r.store().lock().meta().topic("T")?.map(|t| t.message_type),
            Some(raftmq_store::meta::TopicMessageType::Fifo),
            "the topic's message type came with the snapshot"
        );
        let pop = r.store().lock().meta().pop_state()?;
        assert!(
            !pop.cursors.is_empty(),
            "a POP cursor came with the snapshot"
        );
        assert_eq!(pop, leader.store().lock().meta().pop_state()?);
    }
    // Decided on the new leader's word after the install: committed on every replica.
    commit_half(&leader, 3, h3).await?;

    // A brand-new replica joins after the purge.
    let n4 = start_with(config(4), dir(4)?, None).await?;
    leader.add_learner(4, &n4.addr.to_string()).await?;
    nodes.insert(4, n4);
    write_batches(&leader, 100, 10).await?;
    commit_offset(&leader, 90).await?;
    let target = converge(&nodes, &leader).await?;
    for id in [lagging, 4] {
        assert_same_tail(&leader, &nodes[&id].replica, target)?;
    }

    // Both restart from what they installed and still agree.
    for id in [lagging, 4] {
        let n = nodes.remove(&id).expect("present");
        let addr = n.addr;
        n.stop().await;
        nodes.insert(id, start_with(config(id), dir(id)?, Some(addr)).await?);
    }
    write_batches(&leader, 110, 5).await?;
    let target = converge(&nodes, &leader).await?;
    for id in [lagging, 4] {
        let r = nodes[&id].replica.clone();
        assert_same_tail(&leader, &r, target)?;
        r.store().lock().verify()?;
    }
    for (_, n) in nodes {
        n.stop().await;
    }
    Ok(())
}
