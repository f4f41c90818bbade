//! The transaction checker's count is a compare-and-raise in the log: a check number already
//! on record is refused (`NotRaised`), so a checker that read the table before an earlier
//! check was applied (a new leader still applying its predecessor's entries) does not ask the
//! same check twice. Found by the chaos harness and the simulator: a check asked twice.
#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use common::{leader_of, retry_not_leader, start_group};
use raftmq_raft::{MetaCommand, TxnOutcome};
use raftmq_store::{Message, txn};
use raftmq_testkit::wait_until;

#[tokio::test]
async fn a_check_count_not_above_the_record_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let nodes = start_group(tmp.path(), 1).await?;
    let i = wait_until(Duration::from_secs(10), "a leader", || leader_of(&nodes)).await;
    let leader = nodes[i].as_ref().expect("started").replica.clone();

    let mut m = Message {
        topic: "T".into(),
        msg_id: "h1".into(),
        body: b"half".to_vec(),
        sys_flag: txn::SYS_FLAG_TXN_PREPARED,
        ..Default::default()
    };
    m.properties
        .insert(txn::PROPERTY_PRODUCER_GROUP.into(), "G".into());
    let a = retry_not_leader(|| leader.write(vec![m.clone()])).await?;
    let half = a[0].position.0;

    let check = |checks| MetaCommand::CheckTransaction {
        half,
        msg_id: "h1".into(),
        checks,
        next_check_ms: 1,
    };
    let first = retry_not_leader(|| leader.propose(check(1))).await?;
    assert_eq!(first.txn, Some(TxnOutcome::Decided));
    // A second checker with a stale table asks for check 1 again: refused.
    let again = retry_not_leader(|| leader.propose(check(1))).await?;
    assert_eq!(again.txn, Some(TxnOutcome::NotRaised));
    let lower = retry_not_leader(|| leader.propose(check(0))).await?;
    assert_eq!(lower.txn, Some(TxnOutcome::NotRaised));
    let second = retry_not_leader(|| leader.propose(check(2))).await?;
    assert_eq!(second.txn, Some(TxnOutcome::Decided));
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    Ok(())
}
