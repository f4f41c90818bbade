//! Wire ↔ store conversions and `offsetMsgId`.
//!
//! `offsetMsgId` = 16 upper-case hex digits of the CommitLog position followed by the group
//! name. Committed CommitLogs are byte-identical on every replica of a group, so it names the
//! same message on any of them (docs/architecture.md, invariant 1).

use raftmq_proto::v1 as pb;
use raftmq_store::{Message, Position, QueueOffset};

/// A store message from a producer's wire message (the queue is chosen by the caller; the
/// store timestamp is set by the writer).
pub fn to_store(m: pb::Message, queue_id: u32) -> Message {
    Message {
        topic: m.topic,
        queue_id,
        tags: m.tags,
        keys: m.keys,
        properties: m.properties.into_iter().collect(),
        flag: m.flag,
        sys_flag: 0,
        reconsume_times: m.reconsume_times,
        born_timestamp_ms: m.born_timestamp_ms,
        store_timestamp_ms: 0,
        born_host: m.born_host,
        msg_id: m.msg_id,
        body: m.body,
    }
}

/// A consumer's view of a stored message.
/// `queue_offset` is `None` where it is not known (a key query, a purged queue entry): the
/// wire says `u64::MAX` then, as RocketMQ says -1.
pub fn to_wire(
    m: Message,
    queue_offset: Option<QueueOffset>,
    position: Position,
    group: &str,
) -> pb::StoredMessage {
    pb::StoredMessage {
        queue_id: m.queue_id,
        queue_offset: queue_offset.map_or(u64::MAX, |o| o.0),
        store_timestamp_ms: m.store_timestamp_ms,
        position: position.0,
        offset_msg_id: offset_msg_id(group, position),
        group: group.to_string(),
        message: Some(pb::Message {
            topic: m.topic,
            queue_id: Some(m.queue_id),
            tags: m.tags,
            keys: m.keys,
            properties: m.properties.into_iter().collect(),
            flag: m.flag,
            body: m.body,
            born_timestamp_ms: m.born_timestamp_ms,
            born_host: m.born_host,
            msg_id: m.msg_id,
            reconsume_times: m.reconsume_times,
        }),
    }
}

/// The `offsetMsgId` of the message at `position` in `group`.
pub fn offset_msg_id(group: &str, position: Position) -> String {
    format!("{:016X}{group}", position.0)
}

/// `(group, position)` from an `offsetMsgId`.
pub fn parse_offset_msg_id(id: &str) -> Option<(&str, Position)> {
    if id.len() <= 16 || !id.is_char_boundary(16) {
        return None;
    }
    let (hex, group) = id.split_at(16);
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(hex, 16)
        .ok()
        .map(|p| (group, Position(p)))
}

/// Tag hashes a subscription selects: `None` = everything (`*` or empty).
pub fn subscription_hashes(expr: &str) -> Result<Option<Vec<u64>>, String> {
    let expr = expr.trim();
    if expr.is_empty() || expr == "*" {
        return Ok(None);
    }
    let mut out = Vec::new();
    for tag in expr.split("||") {
        let tag = tag.trim();
        if tag.is_empty() || tag.len() > raftmq_proto::limits::FIELD_MAX {
            return Err(format!("bad tag expression {expr:?}"));
        }
        out.push(raftmq_store::message::tag_hash(tag));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_msg_ids_round_trip_and_reject_garbage() {
        let id = offset_msg_id("g1", Position(0x1234));
        assert_eq!(id, "0000000000001234g1");
        assert_eq!(parse_offset_msg_id(&id), Some(("g1", Position(0x1234))));
        for bad in [
            "",
            "0000000000001234",
            "000000000000123xg1",
            "000000000000123ag1",
            "é000000000000000g",
        ] {
            assert_eq!(parse_offset_msg_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn subscriptions() {
        assert_eq!(subscription_hashes("*"), Ok(None));
        assert_eq!(subscription_hashes(""), Ok(None));
        let h = subscription_hashes("A || B").unwrap().unwrap();
        assert_eq!(
            h,
            vec![
                raftmq_store::message::tag_hash("A"),
                raftmq_store::message::tag_hash("B")
            ]
        );
        assert!(subscription_hashes("A || ").is_err());
    }
}
