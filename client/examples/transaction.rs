//! Sends a few transactional messages to `Demo` (start `raftmq dev` and `raftmq topic create
//! --topic Demo` first): `cargo run -p raftmq-client --example transaction [namesrv]`.
//!
//! Even-numbered orders commit, odd ones roll back, and every fifth leaves its outcome
//! `Unknown`, so that the broker checks it later (the check then commits it).

use std::time::Duration;

use raftmq_client::transaction::{LocalTransactionState, fn_listener};
use raftmq_client::{Message, TransactionProducer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let namesrv = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9876".into());
    let producer = TransactionProducer::builder()
        .namesrv_addrs([namesrv])
        .group("example-tx-producers")
        .topics(["Demo"])
        .listener(fn_listener(
            |_msg, arg| match arg.downcast_ref::<u32>() {
                Some(i) if i % 5 == 0 => LocalTransactionState::Unknown,
                Some(i) if i % 2 == 0 => LocalTransactionState::Commit,
                _ => LocalTransactionState::Rollback,
            },
            |msg| {
                println!("checked {} (keys {:?}): commit", msg.msg_id, msg.keys);
                LocalTransactionState::Commit
            },
        ))
        .build()?;
    producer.start().await?;
    for i in 0..10u32 {
        let msg = Message::new("Demo", format!("order {i}")).with_keys([format!("order-{i}")]);
        let r = producer.send_in_transaction(msg, &i).await?;
        println!(
            "{} → {:?} (end error: {:?})",
            r.half.msg_id, r.local_state, r.end_error
        );
    }
    // Wait a little for the broker's checks of the Unknown ones.
    tokio::time::sleep(Duration::from_secs(20)).await;
    producer.shutdown().await;
    Ok(())
}
