//! `raftmq bench proxy`: the RocketMQ 5 gateway's cost, spoken to as RocketMQ 5 clients speak
//! (the generated `apache.rocketmq.v2` client over gRPC).
//!
//! 1. **Send**: `--senders` tasks, each one `SendMessage` of one message at a time (as the
//!    official Python and Java clients send), for `--duration` seconds.
//! 2. **Receive + ack**: `--receivers` tasks, each `ReceiveMessage` of up to `--batch` from any
//!    queue of the broker group, then one `AckMessage` per message, until everything sent was
//!    acked or `--duration` more seconds passed.
//!
//! Compare with `raftmq bench produce --no-auto-batch --producers N --in-flight 1` (the native
//! path, one request per send) on the same cluster. Use a fresh topic and group.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use raftmq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use raftmq_proto::rocketmq::v2::*;
use tokio::sync::Mutex;

use crate::bench::histogram;

/// The options of `bench proxy`.
#[derive(clap::Args)]
pub struct ProxyBench {
    /// The gateway.
    #[arg(long, default_value = "127.0.0.1:8081")]
    proxy: String,
    /// A topic that exists (create it first).
    #[arg(long, default_value = "BenchProxy")]
    topic: String,
    /// The broker group holding it.
    #[arg(long, default_value = "g1")]
    broker_group: String,
    #[arg(long, default_value = "bench-proxy")]
    group: String,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 16)]
    senders: usize,
    #[arg(long, default_value_t = 4)]
    receivers: usize,
    #[arg(long, default_value_t = 32)]
    batch: i32,
    /// Seconds of sending (and at most as many more of receiving).
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

fn req<T>(m: T, client: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if let Ok(v) = client.parse() {
        r.metadata_mut().insert("x-mq-client-id", v);
    }
    r
}

fn resource(name: &str) -> Resource {
    Resource {
        resource_namespace: String::new(),
        name: name.into(),
    }
}

fn ok(s: &Option<Status>) -> bool {
    s.as_ref().is_some_and(|s| s.code == Code::Ok as i32)
}

pub async fn run(b: ProxyBench) -> anyhow::Result<()> {
    let c = MessagingServiceClient::connect(format!("http://{}", b.proxy))
        .await
        .with_context(|| format!("connecting to {}", b.proxy))?
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let start = Instant::now();
    let until = start + Duration::from_secs(b.duration);
    let body = vec![b'x'; b.size];
    let mut tasks = Vec::new();
    for s in 0..b.senders {
        let (mut c, sent, failed, hist, body, topic) = (
            c.clone(),
            sent.clone(),
            failed.clone(),
            hist.clone(),
            body.clone(),
            b.topic.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = format!("bench-sender-{s}");
            let mut i = 0u64;
            while Instant::now() < until {
                let m = Message {
                    topic: Some(resource(&topic)),
                    user_properties: Default::default(),
                    system_properties: Some(SystemProperties {
                        message_id: format!("B{s:04}{i:016X}"),
                        message_type: MessageType::Normal as i32,
                        ..Default::default()
                    }),
                    body: body.clone(),
                };
                let t = Instant::now();
                let r = c
                    .send_message(req(SendMessageRequest { messages: vec![m] }, &client))
                    .await;
                match r {
                    Ok(r) if ok(&r.get_ref().status) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        let us = t.elapsed().as_micros() as u64;
                        let _ = hist.lock().await.record(us.max(1));
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = sent.load(Ordering::Relaxed);
    let h = hist.lock().await;
    println!(
        "proxy send: {n} msgs in {secs:.1} s = {:.0} msgs/s ({} senders, 1 message per request); latency us p50 {} p99 {} max {}; {} failed",
        n as f64 / secs,
        b.senders,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        failed.load(Ordering::Relaxed)
    );
    drop(h);

    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(b.duration);
    let mut tasks = Vec::new();
    for r in 0..b.receivers {
        let (mut c, acked, b2) = (
            c.clone(),
            acked.clone(),
            (
                b.topic.clone(),
                b.group.clone(),
                b.broker_group.clone(),
                b.batch,
            ),
        );
        tasks.push(tokio::spawn(async move {
            let (topic, group, broker, batch) = b2;
            let client = format!("bench-receiver-{r}");
            while Instant::now() < until && acked.load(Ordering::Relaxed) < n {
                let rq = ReceiveMessageRequest {
                    group: Some(resource(&group)),
                    message_queue: Some(MessageQueue {
                        topic: Some(resource(&topic)),
                        id: -1,
                        permission: Permission::ReadWrite as i32,
                        broker: Some(Broker {
                            name: broker.clone(),
                            id: 0,
                            endpoints: None,
                        }),
                        accept_message_types: vec![],
                    }),
                    filter_expression: None,
                    batch_size: batch,
                    invisible_duration: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    auto_renew: false,
                    long_polling_timeout: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    attempt_id: None,
                };
                let Ok(resp) = c.receive_message(req(rq, &client)).await else {
                    continue;
                };
                let mut stream = resp.into_inner();
                let mut handles = Vec::new();
                while let Ok(Some(x)) = stream.message().await {
                    if let Some(receive_message_response::Content::Message(m)) = x.content
                        && let Some(h) = m.system_properties.and_then(|s| s.receipt_handle)
                    {
                        handles.push(h);
                    }
                }
                for h in handles {
                    let a = AckMessageRequest {
                        group: Some(resource(&group)),
                        topic: Some(resource(&topic)),
                        entries: vec![AckMessageEntry {
                            message_id: String::new(),
                            receipt_handle: h,
                            lite_topic: None,
                        }],
                    };
                    if let Ok(r) = c.ack_message(req(a, &client)).await
                        && ok(&r.get_ref().status)
                    {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let a = acked.load(Ordering::Relaxed);
    println!(
        "proxy receive+ack: {a} of {n} msgs in {secs:.1} s = {:.0} msgs/s ({} receivers, batches of {}, one ack per message)",
        a as f64 / secs,
        b.receivers,
        b.batch
    );
    Ok(())
}
