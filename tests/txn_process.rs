//! Transactions through real processes: a name server and a three-replica group of `raftmq`
//! processes on loopback; 1 000 transactions in flight at once from one `TransactionProducer`
//! (a third commit at once, a third roll back, a third answer `Unknown` and are decided by
//! the broker's check); mid-stream the leader's process is SIGKILLed. Afterwards: every
//! committed message is consumed, no rolled-back one is, every unknown one was checked and
//! ended as its check answered, and nothing is left undecided.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::consumer::{ConsumeFrom, ReceivedMessage};
use raftmq_client::transaction::{LocalTransactionState, TransactionProducer, fn_listener};
use raftmq_client::{ConsumeResult, Message, PushConsumer};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::*;
use raftmq_testkit::{wait_for, wait_until};

use common::{code, create_topic, leader, sigkill, start_group, wait_leader};

const TRANSACTIONS: u64 = 1_000;
const QUEUES: u32 = 4;

/// What transaction `i` did locally: commit (`i % 3 == 0`), roll back (`1`), or unknown at
/// first (`2`), then on a check commit for even `i`, roll back for odd.
fn truth(i: u64) -> bool {
    match i % 3 {
        0 => true,
        1 => false,
        _ => i.is_multiple_of(2),
    }
}

fn index(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("t")?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_transactions_through_a_sigkilled_leader() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut procs, ns) = start_group(
        tmp.path(),
        "[transaction]\ntimeout_ms = 2000\ncheck_interval_ms = 1000\nscan_interval_ms = 100\n",
    );
    wait_leader(&ns, None, Duration::from_secs(30)).await;
    create_topic(&ns, "TX", QUEUES).await;

    let checked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let c2 = checked.clone();
    let listener = fn_listener(
        |m: &Message, _| match index(m.body()).map(|i| (i % 3, truth(i))) {
            Some((2, _)) | None => LocalTransactionState::Unknown,
            Some((_, true)) => LocalTransactionState::Commit,
            Some((_, false)) => LocalTransactionState::Rollback,
        },
        move |m: &ReceivedMessage| match index(&m.body) {
            Some(i) => {
                c2.lock().expect("checked").insert(i);
                if truth(i) {
                    LocalTransactionState::Commit
                } else {
                    LocalTransactionState::Rollback
                }
            }
            None => LocalTransactionState::Unknown,
        },
    );
    let producer = TransactionProducer::builder()
        .namesrv_addrs([ns.as_str()])
        .group("TP")
        .listener(listener)
        .topics(["TX"])
        .send_timeout(Duration::from_secs(20))
        .build()?;
    // Starting opens the channels, so it waits for the topic's route to reach the name server.
    wait_for(Duration::from_secs(15), "the producer started", || async {
        producer.start().await.map_err(|e| e.to_string())
    })
    .await;

    // All in flight at once; each retried until its half message is acknowledged (a send
    // whose answer was lost may leave a second half: it is checked and ends the same way).
    let stored = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..TRANSACTIONS {
        let (p, stored) = (producer.clone(), stored.clone());
        tasks.push(tokio::spawn(async move {
            let what = format!("transaction t{i} stored");
            wait_for(Duration::from_secs(90), &what, || async {
                let r = p
                    .send_in_transaction(Message::new("TX", format!("t{i}")), &())
                    .await;
                r.map_err(|e| e.to_string())
            })
            .await;
            stored.fetch_add(1, Ordering::Relaxed);
        }));
    }
    wait_until(
        Duration::from_secs(120),
        "a third of the halves stored",
        || {
            let n = stored.load(Ordering::Relaxed);
            if n >= TRANSACTIONS / 3 {
                Ok(())
            } else {
                Err(format!("only {n}"))
            }
        },
    )
    .await;
    let victim = leader(&ns).await.expect("a leader");
    sigkill(&mut procs, &victim);
    let at = stored.load(Ordering::Relaxed);
    let next = wait_leader(&ns, Some(&victim), Duration::from_secs(30)).await;
    for t in tasks {
        t.await?;
    }
    eprintln!("killed leader {victim} after {at} halves; new leader {next}");

    // Nothing left undecided (the unknown ones by their checks).
    wait_for(
        Duration::from_secs(60),
        "every transaction decided",
        || async {
            let l = wait_leader(&ns, Some(&victim), Duration::from_secs(10)).await;
            let r = AdminClient::connect(format!("http://{l}"))
                .await
                .ok()?
                .list_transactions(ListTransactionsRequest::default())
                .await
                .ok()?
                .into_inner();
            (code(&r.status) == ErrorCode::Ok && r.pending == 0).then_some(())
        },
    )
    .await;

    // Consume everything: exactly the committed ones arrive.
    let want: BTreeSet<u64> = (0..TRANSACTIONS).filter(|&i| truth(i)).collect();
    let got: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let g2 = got.clone();
    let consumer = PushConsumer::builder()
        .namesrv_addrs([ns.as_str()])
        .group("CT")
        .consume_from(ConsumeFrom::First)
        .subscribe("TX", "*")
        .concurrent(move |msgs: &[ReceivedMessage]| {
            let mut g = g2.lock().expect("got");
            g.extend(msgs.iter().filter_map(|m| index(&m.body)));
            ConsumeResult::Success
        })
        .build()?;
    consumer.start().await?;
    wait_until(
        Duration::from_secs(60),
        "every committed message consumed",
        || {
            let g = got.lock().expect("got");
            let missing = want.difference(&g).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} committed not consumed yet"))
            }
        },
    )
    .await;
    // Anything else would be here by now too (it would sit in the same queues).
    tokio::time::sleep(Duration::from_secs(2)).await;
    consumer.shutdown().await;
    producer.shutdown().await;
    let got = got.lock().expect("got").clone();
    let unexpected: Vec<u64> = got.difference(&want).copied().collect();
    assert!(
        unexpected.is_empty(),
        "rolled back yet consumed: {unexpected:?}"
    );
    let checked = checked.lock().expect("checked").clone();
    let unknown: BTreeSet<u64> = (0..TRANSACTIONS).filter(|i| i % 3 == 2).collect();
    let unchecked: Vec<u64> = unknown.difference(&checked).copied().collect();
    assert!(
        unchecked.is_empty(),
        "unknown but never checked: {unchecked:?}"
    );
    eprintln!(
        "{} committed and consumed, {} checked ({} unknown)",
        got.len(),
        checked.len(),
        unknown.len()
    );
    Ok(())
}
