//! Sends a few messages to `Demo` (start `raftmq dev` and `raftmq topic create --topic Demo`
//! first): `cargo run -p raftmq-client --example producer [namesrv]`.

use raftmq_client::{Message, Producer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let namesrv = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9876".into());
    let producer = Producer::builder()
        .namesrv_addrs([namesrv])
        .group("example-producers")
        .build()?;
    producer.start().await?;
    for i in 0..10 {
        let msg = Message::new("Demo", format!("hello {i}"))
            .with_tags(if i % 2 == 0 { "Even" } else { "Odd" })
            .with_keys([format!("key-{i}")]);
        let r = producer.send(msg).await?;
        println!(
            "sent {} → {}#{} offset {}",
            r.msg_id, r.queue.group, r.queue.queue_id, r.queue_offset
        );
    }
    producer.shutdown().await;
    Ok(())
}
