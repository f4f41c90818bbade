//! Limits of the wire contract, checked by servers before anything is stored (and by the
//! client before anything is sent). Each check returns a [`LimitError`] naming the field and
//! the numbers; servers answer it with [`LimitError::code`].

use std::fmt;

use crate::ErrorCode;
use crate::v1::Message;

/// Longest topic (and consumer/producer group) name, in bytes.
pub const TOPIC_NAME_MAX: usize = 127;
/// Longest message body.
pub const BODY_MAX: usize = 4 * 1024 * 1024;
/// Most bytes of user properties (keys + values).
pub const PROPERTIES_MAX: usize = 32 * 1024;
/// Most bytes of one send request's bodies and properties together.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most messages in one send request.
pub const BATCH_MESSAGES_MAX: usize = 1024;
/// Longest tag, key or msg id.
pub const FIELD_MAX: usize = 255;
/// Most keys on one message.
pub const KEYS_MAX: usize = 64;
/// Most queues a topic may have on one group.
pub const QUEUE_NUMS_MAX: u32 = 1024;
/// Most messages one pull returns.
pub const PULL_MESSAGES_MAX: u32 = 1024;
/// Longest a pull may be held (long polling).
pub const LONG_POLL_MS_MAX: u32 = 60_000;
/// Messages a pull returns when the request does not say.
pub const PULL_MESSAGES_DEFAULT: u32 = 32;
/// Bytes one pull returns at most (the request may ask for less).
pub const PULL_BYTES_MAX: u32 = 8 << 20;
/// Queue entries one pull looks at, at most (tag filtering may skip many).
pub const PULL_SCAN_MAX: u64 = 16_384;
/// Most offsets one commit may carry.
pub const COMMIT_OFFSETS_MAX: usize = 4096;
/// Most messages one key query returns.
pub const QUERY_MESSAGES_MAX: u32 = 64;
/// Most queues one lock (or unlock) request may name.
pub const LOCK_QUEUES_MAX: usize = 4096;
/// Largest gRPC message between clients and servers (brokers, name servers): a
/// [`BATCH_BYTES_MAX`] send or a [`PULL_BYTES_MAX`] pull plus framing, with room to spare.
pub const GRPC_MESSAGE_MAX: usize = 16 << 20;
/// Largest gRPC message between the replicas of a group. Larger than [`GRPC_MESSAGE_MAX`]:
/// one entry may be as large as the store's largest record (64 MiB); a snapshot is small
/// metadata.
pub const RAFT_GRPC_MESSAGE_MAX: usize = 80 << 20;

/// A request outside the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    pub code: ErrorCode,
    pub message: String,
}

impl LimitError {
    fn invalid(message: String) -> Self {
        Self {
            code: ErrorCode::InvalidArgument,
            message,
        }
    }

    fn too_large(message: String) -> Self {
        Self {
            code: ErrorCode::MessageTooLarge,
            message,
        }
    }

    /// The wire error code to answer with.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for LimitError {}

/// A topic or group name: 1..=127 bytes of `[A-Za-z0-9_%|-]`.
pub fn check_name(what: &str, name: &str) -> Result<(), LimitError> {
    if name.is_empty() || name.len() > TOPIC_NAME_MAX {
        return Err(LimitError::invalid(format!(
            "{what} name must be 1..={TOPIC_NAME_MAX} bytes, got {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '%' | '|' | '-')))
    {
        return Err(LimitError::invalid(format!(
            "{what} name {name:?} has {c:?}; allowed: [A-Za-z0-9_%|-]"
        )));
    }
    Ok(())
}

/// Bytes of a message's user properties (keys + values).
pub fn properties_bytes(m: &Message) -> usize {
    m.properties.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// One message: topic name, body and properties sizes, tag/key/id lengths.
pub fn check_message(m: &Message) -> Result<(), LimitError> {
    check_name("topic", &m.topic)?;
    if m.body.len() > BODY_MAX {
        return Err(LimitError::too_large(format!(
            "body is {} bytes, more than {BODY_MAX}",
            m.body.len()
        )));
    }
    let props = properties_bytes(m);
    if props > PROPERTIES_MAX {
        return Err(LimitError::too_large(format!(
            "properties are {props} bytes, more than {PROPERTIES_MAX}"
        )));
    }
    if m.keys.len() > KEYS_MAX {
        return Err(LimitError::invalid(format!(
            "{} keys, more than {KEYS_MAX}",
            m.keys.len()
        )));
    }
    for (what, v) in std::iter::once(("tags", &m.tags))
        .chain(std::iter::once(("msg_id", &m.msg_id)))
        .chain(m.keys.iter().map(|k| ("key", k)))
    {
        if v.len() > FIELD_MAX {
            return Err(LimitError::invalid(format!(
                "{what} is {} bytes, more than {FIELD_MAX}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// A send request's messages: 1..=1024, one topic, one queue if any is named, each within
/// the limits, together at most 4 MiB.
pub fn check_batch(messages: &[Message]) -> Result<(), LimitError> {
    let Some(first) = messages.first() else {
        return Err(LimitError::invalid("no messages".into()));
    };
    if messages.len() > BATCH_MESSAGES_MAX {
        return Err(LimitError::invalid(format!(
            "{} messages in one request, more than {BATCH_MESSAGES_MAX}",
            messages.len()
        )));
    }
    let mut bytes = 0usize;
    for m in messages {
        check_message(m)?;
        if m.topic != first.topic {
            return Err(LimitError::invalid(format!(
                "a batch holds one topic: {:?} and {:?}",
                first.topic, m.topic
            )));
        }
        if m.queue_id != first.queue_id {
            return Err(LimitError::invalid(
                "a batch names one queue (or none) for all its messages".into(),
            ));
        }
        bytes += m.body.len() + properties_bytes(m);
    }
    if bytes > BATCH_BYTES_MAX {
        return Err(LimitError::too_large(format!(
            "batch is {bytes} bytes, more than {BATCH_BYTES_MAX}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            body: b"x".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn names() {
        for ok in ["T", "Topic_1-a", "%RETRY%g", "a|b", &"x".repeat(127)] {
            check_name("topic", ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "é", "a.b", &"x".repeat(128)] {
            assert_eq!(
                check_name("topic", bad).unwrap_err().code(),
                ErrorCode::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn messages_and_batches() {
        check_batch(&[msg("T"), msg("T")]).unwrap();
        let mut big = msg("T");
        big.body = vec![0; BODY_MAX + 1];
        assert_eq!(
            check_message(&big).unwrap_err().code(),
            ErrorCode::MessageTooLarge
        );
        let mut props = msg("T");
        props
            .properties
            .insert("k".into(), "v".repeat(PROPERTIES_MAX));
        assert_eq!(
            check_message(&props).unwrap_err().code(),
            ErrorCode::MessageTooLarge
        );
        assert_eq!(
            check_batch(&[msg("T"), msg("U")]).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            check_batch(&[]).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        let mut q = msg("T");
        q.queue_id = Some(1);
        assert!(check_batch(&[msg("T"), q]).is_err());
        let mut half = msg("T");
        half.body = vec![0; BODY_MAX / 2 + 1];
        assert_eq!(
            check_batch(&[half.clone(), half]).unwrap_err().code(),
            ErrorCode::MessageTooLarge
        );
    }
}
