//! The v2 requests a RocketMQ 5 client sends, fuzzed: arbitrary bytes and mutations of valid
//! encodings go through prost's decoder and then through every check the gateway makes
//! before it forwards anything (message checks and conversion, the topic type check,
//! receipts, filters, invisible times, long-poll times, the settings merge). Each must
//! answer a value or a v2 error: never a panic, never an allocation sized by the input alone.

use std::time::Duration;

use prost::Message as _;
use raftmq_proto::rocketmq::v2::{self as v2, settings, telemetry_command};
use raftmq_proto::v1::TopicMessageType;
use raftmq_proxy::receive::{self, Receipt, TagFilter};
use raftmq_proxy::routes::GroupPolicy;
use raftmq_proxy::send;
use raftmq_testkit::fuzz::{self, Tracking};

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Decoding keeps what the input holds (prost allocates no more than the bytes say, and
/// the checks copy a message at most a few times).
fn bound() -> impl Fn(usize) -> usize {
    |len| 16 * len + (64 << 10)
}

fn resource(name: &str) -> v2::Resource {
    v2::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    }
}

fn message(t: v2::MessageType, f: impl FnOnce(&mut v2::SystemProperties)) -> v2::Message {
    let mut sp = v2::SystemProperties {
        tag: Some("TagA".into()),
        keys: vec!["k1".into()],
        message_id: "01ABCDEF0123456789".into(),
        message_type: t as i32,
        body_encoding: v2::Encoding::Identity as i32,
        ..Default::default()
    };
    f(&mut sp);
    v2::Message {
        topic: Some(resource("T")),
        user_properties: [("a".to_string(), "b".to_string())].into(),
        system_properties: Some(sp),
        body: b"hello".to_vec(),
    }
}

#[test]
fn send_requests_decode_and_check_or_fail() {
    let sends = vec![
        v2::SendMessageRequest {
            messages: vec![
                message(v2::MessageType::Normal, |_| {}),
                message(v2::MessageType::Fifo, |sp| {
                    sp.message_group = Some("g".into())
                }),
                message(v2::MessageType::Delay, |sp| {
                    sp.delivery_timestamp = Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    })
                }),
                message(v2::MessageType::Transaction, |_| {}),
            ],
        }
        .encode_to_vec(),
    ];
    fuzz::decoder("v2 SendMessageRequest", &sends, bound(), |b| {
        let req = v2::SendMessageRequest::decode(b).map_err(|e| e.to_string())?;
        let mut refused = 0;
        for m in &req.messages {
            match send::outgoing(m, 1_700_000_000_000) {
                Ok(o) => {
                    for t in [TopicMessageType::Mixed, TopicMessageType::Fifo] {
                        refused += usize::from(send::check_topic_type(t, &o).is_err());
                    }
                }
                Err(_) => refused += 1,
            }
        }
        Ok::<_, String>(refused)
    });
}

#[test]
fn receive_requests_decode_and_check_or_fail() {
    let receives = vec![
        v2::ReceiveMessageRequest {
            group: Some(resource("G")),
            message_queue: None,
            filter_expression: Some(v2::FilterExpression {
                r#type: v2::FilterType::Tag as i32,
                expression: "a || b".into(),
            }),
            batch_size: 16,
            invisible_duration: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
            attempt_id: Some("attempt".into()),
        }
        .encode_to_vec(),
    ];
    fuzz::decoder("v2 ReceiveMessageRequest", &receives, bound(), |b| {
        let req = v2::ReceiveMessageRequest::decode(b).map_err(|e| e.to_string())?;
        let filter = TagFilter::parse(req.filter_expression.as_ref()).is_ok();
        let invisible = receive::invisible(&req, Duration::from_secs(60)).is_ok();
        let wait = receive::long_poll(&req, Some(Duration::from_secs(30)));
        Ok::<_, String>((filter, invisible, wait))
    });
}

#[test]
fn receipts_decode_and_parse_or_fail() {
    let acks = vec![
        v2::AckMessageRequest {
            group: Some(resource("G")),
            topic: Some(resource("T")),
            entries: vec![v2::AckMessageEntry {
                message_id: "01".into(),
                receipt_handle: "r1:3:17:42:1024:g1".into(),
                lite_topic: None,
            }],
        }
        .encode_to_vec(),
    ];
    fuzz::decoder("v2 AckMessageRequest receipts", &acks, bound(), |b| {
        let req = v2::AckMessageRequest::decode(b).map_err(|e| e.to_string())?;
        let parsed = req
            .entries
            .iter()
            .filter(|e| Receipt::parse(&e.receipt_handle).is_ok())
            .count();
        Ok::<_, String>(parsed)
    });
}

#[test]
fn settings_decode_and_merge_or_fail() {
    let telemetry = vec![
        v2::TelemetryCommand {
            status: None,
            command: Some(telemetry_command::Command::Settings(v2::Settings {
                client_type: Some(v2::ClientType::PushConsumer as i32),
                pub_sub: Some(settings::PubSub::Subscription(v2::Subscription {
                    group: Some(resource("G")),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    ];
    let policy = GroupPolicy {
        fifo: true,
        max_attempts: 3,
    };
    fuzz::decoder("v2 TelemetryCommand settings", &telemetry, bound(), |b| {
        let cmd = v2::TelemetryCommand::decode(b).map_err(|e| e.to_string())?;
        let merged = match cmd.command {
            Some(telemetry_command::Command::Settings(s)) => {
                raftmq_proxy::settings::merge(&s, policy).map(|m| m.encoded_len())
            }
            _ => None,
        };
        Ok::<_, String>(merged)
    });
}
