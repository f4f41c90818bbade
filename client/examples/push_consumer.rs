//! Consumes `Demo` (tag `Even` only) for ten seconds:
//! `cargo run -p raftmq-client --example push_consumer [namesrv]`.

use std::time::Duration;

use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::{ConsumeResult, PushConsumer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let namesrv = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9876".into());
    let consumer = PushConsumer::builder()
        .namesrv_addrs([namesrv])
        .group("example-consumers")
        .subscribe("Demo", "Even")
        .consume_from(ConsumeFrom::First)
        .concurrent(|msgs| {
            for m in msgs {
                println!(
                    "{}#{} offset {}: {}",
                    m.queue.group,
                    m.queue.queue_id,
                    m.queue_offset,
                    String::from_utf8_lossy(&m.body)
                );
            }
            ConsumeResult::Success
        })
        .build()?;
    consumer.start().await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    consumer.shutdown().await;
    Ok(())
}
