//! POP consumption state applied through Raft (one replica, real gRPC): claims hand out new
//! messages and redeliver expired ones ahead of them with attempts + 1, acks and changes
//! need the current receipt's epoch, and the group's committed offset follows the lowest
//! message in flight.
#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use common::{leader_of, retry_not_leader, start_group};
use raftmq_raft::types::TopicSpec;
use raftmq_raft::{MetaCommand, PopClaimed, PopOutcome, Replica};
use raftmq_store::Message;
use raftmq_testkit::wait_until;

async fn claim(r: &Replica, max: u32, now_ms: u64, invisible_ms: u64) -> Vec<PopClaimed> {
    claim_as(r, max, now_ms, invisible_ms, false).await
}

async fn claim_as(
    r: &Replica,
    max: u32,
    now_ms: u64,
    invisible_ms: u64,
    fifo: bool,
) -> Vec<PopClaimed> {
    let cmd = MetaCommand::PopClaim {
        group: "G".into(),
        topic: "T".into(),
        queue_id: 0,
        max,
        now_ms,
        invisible_ms,
        start_offset: 0,
        retained_from: 0,
        fifo,
    };
    match retry_not_leader(|| r.propose(cmd.clone()))
        .await
        .expect("applied")
        .pop
    {
        Some(PopOutcome::Claimed(c)) => c,
        other => panic!("a claim's outcome: {other:?}"),
    }
}

async fn ack(r: &Replica, offset: u64, epoch: u64) -> Option<PopOutcome> {
    let cmd = MetaCommand::PopAck {
        group: "G".into(),
        topic: "T".into(),
        queue_id: 0,
        offset,
        epoch,
    };
    retry_not_leader(|| r.propose(cmd.clone()))
        .await
        .expect("applied")
        .pop
}

fn committed(r: &Replica) -> Option<u64> {
    r.store()
        .view()
        .meta()
        .consumer_offset("G", "T", 0)
        .expect("read")
        .map(|o| o.0)
}

async fn one_replica_with_five_messages(
    tmp: &std::path::Path,
) -> anyhow::Result<(Vec<Option<common::Node>>, Replica)> {
    let nodes = start_group(tmp, 1).await?;
    let i = wait_until(Duration::from_secs(10), "a leader", || leader_of(&nodes)).await;
    let r = nodes[i].as_ref().expect("started").replica.clone();
    let topic = MetaCommand::PutTopic(TopicSpec {
        name: "T".into(),
        read_queue_nums: 1,
        write_queue_nums: 1,
        perm: 6,
        message_type: Default::default(),
    });
    retry_not_leader(|| r.propose(topic.clone())).await?;
    let msgs: Vec<Message> = (0..5)
        .map(|n| Message {
            topic: "T".into(),
            queue_id: 0,
            msg_id: format!("m{n}"),
            body: vec![b'x'],
            ..Default::default()
        })
        .collect();
    retry_not_leader(|| r.write(msgs.clone())).await?;
    Ok((nodes, r))
}

#[tokio::test]
async fn claims_acks_and_changes_follow_the_receipts() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (nodes, r) = one_replica_with_five_messages(tmp.path()).await?;
    let first = claim(&r, 3, 1_000, 10_000).await;
    assert_eq!(
        first.iter().map(|c| c.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(
        first
            .iter()
            .all(|c| c.attempts == 1 && c.visible_at_ms == 11_000)
    );
    // Nothing expired yet: the rest of the new ones.
    let second = claim(&r, 10, 2_000, 10_000).await;
    assert_eq!(second.iter().map(|c| c.offset).collect::<Vec<_>>(), [3, 4]);
    assert!(
        claim(&r, 10, 3_000, 10_000).await.is_empty(),
        "all in flight"
    );
    assert_eq!(committed(&r), Some(0));

    // An ack needs the current epoch; a second ack of the same receipt is stale.
    assert_eq!(ack(&r, 0, first[0].epoch).await, Some(PopOutcome::Acked));
    assert_eq!(ack(&r, 0, first[0].epoch).await, Some(PopOutcome::Stale));
    assert_eq!(
        ack(&r, 1, first[1].epoch + 1_000).await,
        Some(PopOutcome::Stale)
    );
    assert_eq!(committed(&r), Some(1));

    // A change replaces the receipt: the old one no longer acks.
    let change = MetaCommand::PopChangeInvisible {
        group: "G".into(),
        topic: "T".into(),
        queue_id: 0,
        offset: 1,
        epoch: first[1].epoch,
        visible_at_ms: 50_000,
    };
    let changed = retry_not_leader(|| r.propose(change.clone())).await?.pop;
    let Some(PopOutcome::Changed { epoch }) = changed else {
        panic!("changed: {changed:?}")
    };
    assert_eq!(ack(&r, 1, first[1].epoch).await, Some(PopOutcome::Stale));

    // At 12 s offsets 2..5 are visible again (redelivered, attempts 2); 1 is not (50 s).
    let again = claim(&r, 10, 12_000, 10_000).await;
    assert_eq!(
        again.iter().map(|c| c.offset).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert!(again.iter().all(|c| c.attempts == 2));
    assert_eq!(ack(&r, 1, epoch).await, Some(PopOutcome::Acked));
    for c in &again {
        assert_eq!(ack(&r, c.offset, c.epoch).await, Some(PopOutcome::Acked));
    }
    assert_eq!(committed(&r), Some(5));
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    Ok(())
}

/// A FIFO group's queue is held while a message handed out is unacknowledged and invisible;
/// then the unacknowledged ones go again, in order and alone, before anything new.
#[tokio::test]
async fn a_fifo_queue_is_held_until_its_messages_are_acknowledged() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (nodes, r) = one_replica_with_five_messages(tmp.path()).await?;
    let offsets = |c: &[PopClaimed]| c.iter().map(|c| c.offset).collect::<Vec<_>>();
    let first = claim_as(&r, 2, 1_000, 10_000, true).await;
    assert_eq!(offsets(&first), [0, 1]);
    assert!(
        claim_as(&r, 2, 2_000, 10_000, true).await.is_empty(),
        "held"
    );
    assert_eq!(ack(&r, 0, first[0].epoch).await, Some(PopOutcome::Acked));
    assert!(
        claim_as(&r, 2, 3_000, 10_000, true).await.is_empty(),
        "held while 1 is invisible"
    );
    // 1's time ran out: it goes again, alone, before 2.
    let again = claim_as(&r, 2, 12_000, 10_000, true).await;
    assert_eq!(offsets(&again), [1]);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(ack(&r, 1, again[0].epoch).await, Some(PopOutcome::Acked));
    assert_eq!(
        offsets(&claim_as(&r, 2, 13_000, 10_000, true).await),
        [2, 3]
    );
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    Ok(())
}
