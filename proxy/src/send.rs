//! A v2 message checked as Apache's proxy checks it, and turned into a raftmq message: the
//! client's message id, tag, keys and user properties kept; the message group (FIFO) picks the
//! queue; the delivery time (DELAY) makes it a timed message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftmq_client::Message;
use raftmq_proto::limits::{BODY_MAX, FIELD_MAX};
use raftmq_proto::rocketmq::v2::{self as v2, Code, Encoding, MessageType};
use raftmq_proto::v1::TopicMessageType;

use crate::codes::V2Error;

/// Most user properties on one message, and their bytes together (Apache's limits).
pub const USER_PROPERTIES_MAX: usize = 128;
pub const USER_PROPERTIES_BYTES_MAX: usize = 16 * 1024;
/// Longest message group (Apache: under 64 bytes).
pub const MESSAGE_GROUP_MAX: usize = 64;
/// Furthest a delivery time may be ahead (Apache: one day).
pub const DELIVERY_AHEAD_MAX: Duration = Duration::from_secs(24 * 3600);

/// The property holding a FIFO message's group (RocketMQ's sharding key).
pub const PROPERTY_MESSAGE_GROUP: &str = "__SHARDINGKEY";
/// The property saying the body is GZIP-compressed as the client sent it.
pub const PROPERTY_BODY_ENCODING: &str = "__RMQ5_BODY_ENCODING";
/// Properties raftmq itself reads or writes: a user property may not take their names.
pub const RESERVED_PROPERTIES: [&str; 11] = [
    PROPERTY_MESSAGE_GROUP,
    PROPERTY_BODY_ENCODING,
    "PGROUP",
    "RAFTMQ_TXN_HALF",
    "TRANSACTION_CHECK_TIMES",
    "TIMER_DELIVER_MS",
    "DELAY",
    "RAFTMQ_TIMER",
    "TIMER_DELAY_MS",
    "RETRY_TOPIC",
    "ORIGIN_MESSAGE_ID",
];

/// A checked v2 message, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub message: Message,
    /// FIFO: the queue is chosen by this group.
    pub message_group: Option<String>,
    pub message_id: String,
    pub message_type: MessageType,
}

/// Checks `m` and makes it a raftmq message (`now_ms`: the gateway's clock, for the delivery
/// time's bound).
pub fn outgoing(m: &v2::Message, now_ms: u64) -> Result<Outgoing, V2Error> {
    let topic = m
        .topic
        .as_ref()
        .ok_or_else(|| V2Error::new(Code::IllegalTopic, "a message names its topic"))?;
    crate::service::check_namespace(topic)?;
    if topic.name.is_empty() || topic.name.len() > raftmq_proto::limits::TOPIC_NAME_MAX {
        return Err(V2Error::new(
            Code::IllegalTopic,
            format!("topic name of {} bytes", topic.name.len()),
        ));
    }
    let sp = m
        .system_properties
        .as_ref()
        .ok_or_else(|| V2Error::new(Code::BadRequest, "a message has system properties"))?;
    if sp.message_id.is_empty() || sp.message_id.len() > FIELD_MAX {
        return Err(V2Error::new(
            Code::IllegalMessageId,
            format!("message id of {} bytes", sp.message_id.len()),
        ));
    }
    if m.body.is_empty() {
        return Err(V2Error::new(Code::MessageBodyEmpty, "the body is empty"));
    }
    if m.body.len() > BODY_MAX {
        return Err(V2Error::new(
            Code::MessageBodyTooLarge,
            format!("a body of {} bytes, more than {BODY_MAX}", m.body.len()),
        ));
    }
    let tag = sp.tag.clone().unwrap_or_default();
    if tag.len() > FIELD_MAX || tag.contains('|') || tag.chars().any(char::is_control) {
        return Err(V2Error::new(
            Code::IllegalMessageTag,
            format!("tag {tag:?}: at most {FIELD_MAX} bytes, no '|', no control characters"),
        ));
    }
    for k in &sp.keys {
        if k.is_empty() || k.len() > FIELD_MAX || k.chars().any(char::is_control) {
            return Err(V2Error::new(
                Code::IllegalMessageKey,
                format!("key {k:?}: 1 to {FIELD_MAX} bytes, no control characters"),
            ));
        }
    }
    let bytes: usize = m
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if m.user_properties.len() > USER_PROPERTIES_MAX || bytes > USER_PROPERTIES_BYTES_MAX {
        return Err(V2Error::new(
            Code::MessagePropertiesTooLarge,
            format!(
                "{} user properties of {bytes} bytes (at most {USER_PROPERTIES_MAX}, {USER_PROPERTIES_BYTES_MAX} bytes)",
                m.user_properties.len()
            ),
        ));
    }
    for k in m.user_properties.keys() {
        if k.is_empty() || RESERVED_PROPERTIES.contains(&k.as_str()) {
            return Err(V2Error::new(
                Code::IllegalMessagePropertyKey,
                format!("user property key {k:?} is reserved"),
            ));
        }
    }
    let message_type = MessageType::try_from(sp.message_type).unwrap_or(MessageType::Unspecified);
    let group = sp.message_group.clone().filter(|g| !g.is_empty());
    if let Some(g) = &group
        && (g.len() >= MESSAGE_GROUP_MAX || g.chars().any(char::is_control))
    {
        return Err(V2Error::new(
            Code::IllegalMessageGroup,
            format!("message group {g:?}: under {MESSAGE_GROUP_MAX} bytes, no control characters"),
        ));
    }
    let deliver_at_ms = sp.delivery_timestamp.as_ref().map(timestamp_ms);
    match message_type {
        MessageType::Fifo if group.is_none() => {
            return Err(conflict("a FIFO message has a message group"));
        }
        MessageType::Delay if deliver_at_ms.is_none() => {
            return Err(conflict("a DELAY message has a delivery time"));
        }
        MessageType::Normal if group.is_some() || deliver_at_ms.is_some() => {
            return Err(conflict(
                "a NORMAL message has neither a message group nor a delivery time",
            ));
        }
        MessageType::Transaction if group.is_some() || deliver_at_ms.is_some() => {
            return Err(conflict(
                "a TRANSACTION message has neither a message group nor a delivery time",
            ));
        }
        MessageType::Lite | MessageType::Priority => {
            return Err(V2Error::new(
                Code::Unsupported,
                format!("{} messages are not served yet", message_type.as_str_name()),
            ));
        }
        _ => {}
    }
    // A message that does not say its type has the one its properties give it.
    let message_type = match message_type {
        MessageType::Unspecified if group.is_some() => MessageType::Fifo,
        MessageType::Unspecified if deliver_at_ms.is_some() => MessageType::Delay,
        MessageType::Unspecified => MessageType::Normal,
        t => t,
    };
    let mut msg = Message::new(topic.name.clone(), m.body.clone())
        .with_tags(tag)
        .with_keys(sp.keys.iter().cloned())
        .with_msg_id(sp.message_id.clone());
    for (k, v) in &m.user_properties {
        msg = msg.with_property(k.clone(), v.clone());
    }
    if sp.body_encoding == Encoding::Gzip as i32 {
        msg = msg.with_property(PROPERTY_BODY_ENCODING, "GZIP");
    }
    if let Some(g) = &group {
        msg = msg.with_property(PROPERTY_MESSAGE_GROUP, g.clone());
    }
    if let Some(at) = deliver_at_ms {
        if at > now_ms.saturating_add(DELIVERY_AHEAD_MAX.as_millis() as u64) {
            return Err(V2Error::new(
                Code::IllegalDeliveryTime,
                format!("delivery time {at} ms is more than {DELIVERY_AHEAD_MAX:?} ahead"),
            ));
        }
        // A time already past is delivered at once.
        if at > now_ms {
            msg = msg.with_deliver_at_ms(at);
        }
    }
    Ok(Outgoing {
        message: msg,
        message_group: group,
        message_id: sp.message_id.clone(),
        message_type,
    })
}

/// Refuses a message of a type its topic does not take (a MIXED topic takes any).
pub fn check_topic_type(topic_type: TopicMessageType, o: &Outgoing) -> Result<(), V2Error> {
    if crate::routes::accepted_types(topic_type).contains(&o.message_type) {
        return Ok(());
    }
    Err(conflict(&format!(
        "topic {:?} takes {} messages, not {}",
        o.message.topic(),
        topic_type.as_str_name(),
        o.message_type.as_str_name()
    )))
}

fn conflict(what: &str) -> V2Error {
    V2Error::new(Code::MessagePropertyConflictWithType, what.to_string())
}

fn timestamp_ms(t: &prost_types::Timestamp) -> u64 {
    (t.seconds.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add((t.nanos.max(0) as u64) / 1_000_000)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_proto::rocketmq::v2::{Resource, SystemProperties};

    fn msg(f: impl FnOnce(&mut v2::Message)) -> v2::Message {
        let mut m = v2::Message {
            topic: Some(Resource {
                resource_namespace: String::new(),
                name: "T".into(),
            }),
            user_properties: Default::default(),
            system_properties: Some(SystemProperties {
                message_id: "01ABC".into(),
                message_type: MessageType::Normal as i32,
                tag: Some("TagA".into()),
                keys: vec!["k1".into()],
                ..Default::default()
            }),
            body: b"hello".to_vec(),
        };
        f(&mut m);
        m
    }

    fn code(m: v2::Message) -> Code {
        outgoing(&m, 1_000).map_or_else(|e| e.code, |_| Code::Ok)
    }

    #[test]
    fn a_normal_message_keeps_the_clients_id_tag_keys_and_properties() {
        let o = outgoing(
            &msg(|m| {
                m.user_properties.insert("region".into(), "eu".into());
            }),
            1_000,
        )
        .unwrap();
        assert_eq!(o.message.msg_id(), Some("01ABC"));
        assert_eq!(o.message.tags(), "TagA");
        assert_eq!(o.message.keys(), ["k1".to_string()]);
        assert_eq!(o.message.property("region"), Some("eu"));
        assert_eq!(o.message_group, None);
    }

    #[test]
    fn bad_messages_get_the_codes_clients_act_on() {
        assert_eq!(code(msg(|m| m.body.clear())), Code::MessageBodyEmpty);
        assert_eq!(
            code(msg(|m| m.body = vec![0; BODY_MAX + 1])),
            Code::MessageBodyTooLarge
        );
        let sp = |m: &mut v2::Message| m.system_properties.as_mut().unwrap().clone();
        assert_eq!(
            code(msg(|m| {
                let mut s = sp(m);
                s.message_id.clear();
                m.system_properties = Some(s);
            })),
            Code::IllegalMessageId
        );
        assert_eq!(
            code(msg(
                |m| m.system_properties.as_mut().unwrap().tag = Some("a|b".into())
            )),
            Code::IllegalMessageTag
        );
        assert_eq!(
            code(msg(|m| {
                m.user_properties.insert("DELAY".into(), "3".into());
            })),
            Code::IllegalMessagePropertyKey
        );
        assert_eq!(
            code(msg(|m| {
                let s = m.system_properties.as_mut().unwrap();
                s.message_type = MessageType::Fifo as i32;
            })),
            Code::MessagePropertyConflictWithType
        );
        assert_eq!(
            code(msg(|m| {
                let s = m.system_properties.as_mut().unwrap();
                s.message_type = MessageType::Fifo as i32;
                s.message_group = Some("g".repeat(MESSAGE_GROUP_MAX));
            })),
            Code::IllegalMessageGroup
        );
        assert_eq!(
            code(msg(|m| {
                let s = m.system_properties.as_mut().unwrap();
                s.message_type = MessageType::Delay as i32;
                s.delivery_timestamp = Some(prost_types::Timestamp {
                    seconds: 2 * 24 * 3600,
                    nanos: 0,
                });
            })),
            Code::IllegalDeliveryTime
        );
        assert_eq!(
            code(msg(
                |m| m.topic.as_mut().unwrap().resource_namespace = "ns".into()
            )),
            Code::BadRequest
        );
    }

    #[test]
    fn a_typed_topic_takes_only_its_type() {
        let normal = outgoing(&msg(|_| {}), 1_000).unwrap();
        let fifo = outgoing(
            &msg(|m| {
                let s = m.system_properties.as_mut().unwrap();
                s.message_type = MessageType::Unspecified as i32;
                s.message_group = Some("g".into());
            }),
            1_000,
        )
        .unwrap();
        assert_eq!(
            fifo.message_type,
            MessageType::Fifo,
            "inferred from the group"
        );
        for o in [&normal, &fifo] {
            assert!(check_topic_type(TopicMessageType::Mixed, o).is_ok());
        }
        assert!(check_topic_type(TopicMessageType::Normal, &normal).is_ok());
        assert!(check_topic_type(TopicMessageType::Fifo, &fifo).is_ok());
        for (t, o) in [
            (TopicMessageType::Fifo, &normal),
            (TopicMessageType::Normal, &fifo),
            (TopicMessageType::Transaction, &normal),
            (TopicMessageType::Delay, &fifo),
        ] {
            assert_eq!(
                check_topic_type(t, o).unwrap_err().code,
                Code::MessagePropertyConflictWithType,
                "{t:?}"
            );
        }
    }

    #[test]
    fn fifo_and_delay_messages() {
        let o = outgoing(
            &msg(|m| {
                let s = m.system_properties.as_mut().unwrap();
                s.message_type = MessageType::Fifo as i32;
                s.message_group = Some("order-7".into());
            }),
            1_000,
        )
        .unwrap();
        assert_eq!(o.message_group.as_deref(), Some("order-7"));
        assert_eq!(o.message.property(PROPERTY_MESSAGE_GROUP), Some("order-7"));
        let o = outgoing(
            &msg(|m| {
                let s = m.system_properties.as_mut().unwrap();
                s.message_type = MessageType::Delay as i32;
                s.delivery_timestamp = Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                });
            }),
            1_000,
        )
        .unwrap();
        assert_eq!(o.message.property("TIMER_DELIVER_MS"), Some("5000"));
    }
}
