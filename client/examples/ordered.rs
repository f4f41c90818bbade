//! An ordered pair: orders' events sent by order id to one queue each, consumed in order by
//! an orderly listener: `cargo run -p raftmq-client --example ordered [namesrv]`.

use std::time::Duration;

use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::producer::SelectByHash;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let namesrv = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9876".into());
    let consumer = PushConsumer::builder()
        .namesrv_addrs([namesrv.clone()])
        .group("example-orderly")
        .subscribe("Demo", "Order")
        .consume_from(ConsumeFrom::Last)
        .orderly(|msgs| {
            for m in msgs {
                println!(
                    "queue {} offset {}: {}",
                    m.queue.queue_id,
                    m.queue_offset,
                    String::from_utf8_lossy(&m.body)
                );
            }
            ConsumeResult::Success
        })
        .build()?;
    consumer.start().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let producer = Producer::builder()
        .namesrv_addrs([namesrv])
        .group("example-ordered")
        .build()?;
    producer.start().await?;
    for step in ["created", "paid", "shipped", "delivered"] {
        for order in ["A-1", "B-2", "C-3"] {
            let m = Message::new("Demo", format!("order {order} {step}")).with_tags("Order");
            producer.send_ordered(m, &SelectByHash, order).await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    producer.shutdown().await;
    consumer.shutdown().await;
    Ok(())
}
