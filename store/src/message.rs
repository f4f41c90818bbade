//! The `Messages` payload: the encoding of a batch of messages inside one CommitLog record.
//!
//! A ConsumeQueue entry points at one *message* inside a record (its own position and size),
//! so each message is self-delimiting and carries its own CRC: reading a message by its
//! position needs no other bytes.
//!
//! # Layout (version 1, little-endian)
//!
//! Payload:
//!
//! | offset | size | field                                         |
//! |--------|------|-----------------------------------------------|
//! | 0      | 4    | `count`: messages in the batch, 1..=[`BATCH_MESSAGES_MAX`] |
//! | 4      | …    | `count` messages, back to back                 |
//!
//! Message:
//!
//! | offset | size  | field                                                     |
//! |--------|-------|-----------------------------------------------------------|
//! | 0      | 4     | `len`: bytes of this message including `len`, ≤ [`MESSAGE_MAX`] |
//! | 4      | 4     | `crc`: CRC32C of bytes `[8, len)`                           |
//! | 8      | 1     | `version` = 1                                              |
//! | 9      | 3     | reserved, zero                                             |
//! | 12     | 4     | `queue_id`                                                 |
//! | 16     | 4     | `flag` (user flag)                                         |
//! | 20     | 4     | `sys_flag`                                                 |
//! | 24     | 4     | `reconsume_times`                                          |
//! | 28     | 8     | `born_timestamp_ms`                                        |
//! | 36     | 8     | `store_timestamp_ms` (set by the leader before proposing) |
//! | 44     | 2+n   | `topic` (UTF-8, n ≤ [`TOPIC_MAX`])                         |
//! | …      | 2+n   | `msg_id`: the producer's unique id (n ≤ [`ID_MAX`])        |
//! | …      | 2+n   | `born_host` (`ip:port`, n ≤ [`ID_MAX`])                    |
//! | …      | 2+n   | `tags` (empty = no tag, n ≤ [`TAG_MAX`])                    |
//! | …      | 2     | key count (≤ [`KEYS_MAX`]), then each key as 2+n (n ≤ [`KEY_MAX`]) |
//! | …      | 4     | properties byte length (≤ [`PROPERTIES_MAX`]), then pairs of 2+n name, 2+n value |
//! | …      | 4+n   | `body` (n ≤ [`BODY_MAX`])                                  |
//!
//! Properties are kept sorted by name (a `BTreeMap`), so the encoding of a message is a pure
//! function of its fields: every replica writes the same bytes.

use std::collections::BTreeMap;

use crate::codec::{PutLe, Reader};
use crate::error::{Result, StoreError};

/// Message format version written by this code.
pub const MESSAGE_VERSION: u8 = 1;
/// Bytes before the variable-length fields.
pub const MESSAGE_FIXED_LEN: usize = 44;
/// Largest topic name, in bytes (the wire limit, 127, is stricter).
pub const TOPIC_MAX: usize = 255;
/// Largest tag, in bytes.
pub const TAG_MAX: usize = 255;
/// Largest single key, in bytes.
pub const KEY_MAX: usize = 255;
/// Most keys on one message.
pub const KEYS_MAX: usize = 64;
/// Largest message id or born host, in bytes.
pub const ID_MAX: usize = 255;
/// Largest encoded properties block, in bytes.
pub const PROPERTIES_MAX: usize = 32 * 1024;
/// Largest body, in bytes.
pub const BODY_MAX: usize = 4 * 1024 * 1024;
/// Largest encoded message.
pub const MESSAGE_MAX: usize = BODY_MAX + PROPERTIES_MAX + 64 * 1024;
/// Most messages in one batch.
pub const BATCH_MESSAGES_MAX: usize = 65_536;

/// One message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    pub queue_id: u32,
    /// One tag, or empty for none.
    pub tags: String,
    /// Business keys, indexed for query.
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub flag: u32,
    pub sys_flag: u32,
    pub reconsume_times: u32,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub born_host: String,
    /// The producer-made unique id (`msgId`), indexed for query.
    pub msg_id: String,
    pub body: Vec<u8>,
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(StoreError::InvalidArgument(format!(
            "{field} is {len} bytes, more than {max}"
        )));
    }
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.put_u16(s.len() as u16);
    out.extend_from_slice(s.as_bytes());
}

impl Message {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        check_len("topic", self.topic.len(), TOPIC_MAX)?;
        check_len("tags", self.tags.len(), TAG_MAX)?;
        check_len("msg_id", self.msg_id.len(), ID_MAX)?;
        check_len("born_host", self.born_host.len(), ID_MAX)?;
        check_len("key count", self.keys.len(), KEYS_MAX)?;
        for k in &self.keys {
            check_len("key", k.len(), KEY_MAX)?;
        }
        check_len("properties", self.properties_len(), PROPERTIES_MAX)?;
        check_len("body", self.body.len(), BODY_MAX)?;
        Ok(())
    }

    fn properties_len(&self) -> usize {
        self.properties
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum()
    }

    /// The encoded size of this message.
    pub fn encoded_len(&self) -> usize {
        MESSAGE_FIXED_LEN
            + 2 * 4
            + self.topic.len()
            + self.msg_id.len()
            + self.born_host.len()
            + self.tags.len()
            + 2
            + self.keys.iter().map(|k| 2 + k.len()).sum::<usize>()
            + 4
            + self.properties_len()
            + 4
            + self.body.len()
    }

    /// Appends the encoding of this message to `out`. Fails (writing nothing) if a field is
    /// over its limit.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        self.validate()?;
        let start = out.len();
        let len = self.encoded_len();
        out.reserve(len);
        out.put_u32(len as u32);
        out.put_u32(0); // crc, patched below
        out.put_u8(MESSAGE_VERSION);
        out.extend_from_slice(&[0; 3]);
        out.put_u32(self.queue_id);
        out.put_u32(self.flag);
        out.put_u32(self.sys_flag);
        out.put_u32(self.reconsume_times);
        out.put_u64(self.born_timestamp_ms);
        out.put_u64(self.store_timestamp_ms);
        put_str16(out, &self.topic);
        put_str16(out, &self.msg_id);
        put_str16(out, &self.born_host);
        put_str16(out, &self.tags);
        out.put_u16(self.keys.len() as u16);
        for k in &self.keys {
            put_str16(out, k);
        }
        out.put_u32(self.properties_len() as u32);
        for (k, v) in &self.properties {
            put_str16(out, k);
            put_str16(out, v);
        }
        out.put_u32(self.body.len() as u32);
        out.extend_from_slice(&self.body);
        assert_eq!(
            out.len() - start,
            len,
            "encoded_len must match the encoding"
        );
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Decodes one message that fills `bytes` exactly, verifying its length and CRC.
    pub fn decode(bytes: &[u8]) -> Result<Message> {
        MessageView::parse(bytes)?.to_message()
    }
}

/// A message decoded in place: every check [`Message::decode`] makes, nothing copied (the
/// dispatch path needs the routing fields of every message, never its body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView<'a> {
    pub topic: &'a str,
    pub queue_id: u32,
    pub tags: &'a str,
    pub keys: Vec<&'a str>,
    /// The encoded properties block (already checked; see [`MessageView::properties`]).
    properties: &'a [u8],
    pub flag: u32,
    pub sys_flag: u32,
    pub reconsume_times: u32,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub born_host: &'a str,
    pub msg_id: &'a str,
    pub body: &'a [u8],
}

impl<'a> MessageView<'a> {
    /// Parses one message that fills `bytes` exactly, verifying its length and CRC.
    pub fn parse(bytes: &'a [u8]) -> Result<MessageView<'a>> {
        let mut r = Reader::new(bytes, "message");
        let len = r.u32()? as usize;
        if len != bytes.len() || !(MESSAGE_FIXED_LEN..=MESSAGE_MAX).contains(&len) {
            return Err(StoreError::malformed(
                "message",
                format!(
                    "length field {len} does not match {} available bytes",
                    bytes.len()
                ),
            ));
        }
        let crc = r.u32()?;
        let actual = crc32c::crc32c(&bytes[8..]);
        if crc != actual {
            return Err(StoreError::malformed(
                "message",
                format!("crc {crc:#010x} != computed {actual:#010x}"),
            ));
        }
        let version = r.u8()?;
        if version != MESSAGE_VERSION {
            return Err(StoreError::malformed(
                "message",
                format!("unknown version {version}"),
            ));
        }
        r.bytes(3)?;
        let queue_id = r.u32()?;
        let flag = r.u32()?;
        let sys_flag = r.u32()?;
        let reconsume_times = r.u32()?;
        let born_timestamp_ms = r.u64()?;
        let store_timestamp_ms = r.u64()?;
        let topic = r.str16("topic", TOPIC_MAX)?;
        let msg_id = r.str16("msg_id", ID_MAX)?;
        let born_host = r.str16("born_host", ID_MAX)?;
        let tags = r.str16("tags", TAG_MAX)?;
        let key_count = r.u16()? as usize;
        if key_count > KEYS_MAX {
            return Err(StoreError::malformed(
                "message",
                format!("{key_count} keys, more than {KEYS_MAX}"),
            ));
        }
        let mut keys = Vec::with_capacity(key_count);
        for _ in 0..key_count {
            keys.push(r.str16("key", KEY_MAX)?);
        }
        let props_len = r.u32()? as usize;
        if props_len > PROPERTIES_MAX {
            return Err(StoreError::malformed(
                "message",
                format!("properties {props_len} > {PROPERTIES_MAX}"),
            ));
        }
        let properties = r.bytes(props_len)?;
        for p in properties_of(properties) {
            p?;
        }
        let body_len = r.u32()? as usize;
        if body_len > BODY_MAX {
            return Err(StoreError::malformed(
                "message",
                format!("body {body_len} > {BODY_MAX}"),
            ));
        }
        let body = r.bytes(body_len)?;
        r.finish()?;
        Ok(MessageView {
            topic,
            queue_id,
            tags,
            keys,
            properties,
            flag,
            sys_flag,
            reconsume_times,
            born_timestamp_ms,
            store_timestamp_ms,
            born_host,
            msg_id,
            body,
        })
    }

    /// The properties, in encoded (sorted) order.
    pub fn properties(&self) -> impl Iterator<Item = Result<(&'a str, &'a str)>> + 'a {
        properties_of(self.properties)
    }

    /// An owned copy.
    pub fn to_message(&self) -> Result<Message> {
        let mut properties = BTreeMap::new();
        for p in self.properties() {
            let (k, v) = p?;
            properties.insert(k.to_string(), v.to_string());
        }
        Ok(Message {
            topic: self.topic.to_string(),
            queue_id: self.queue_id,
            tags: self.tags.to_string(),
            keys: self.keys.iter().map(|k| k.to_string()).collect(),
            properties,
            flag: self.flag,
            sys_flag: self.sys_flag,
            reconsume_times: self.reconsume_times,
            born_timestamp_ms: self.born_timestamp_ms,
            store_timestamp_ms: self.store_timestamp_ms,
            born_host: self.born_host.to_string(),
            msg_id: self.msg_id.to_string(),
            body: self.body.to_vec(),
        })
    }
}

/// The name/value pairs of an encoded properties block.
fn properties_of(block: &[u8]) -> impl Iterator<Item = Result<(&str, &str)>> {
    let mut pr = Reader::new(block, "message properties");
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pr.remaining() == 0 {
            return None;
        }
        let pair = pr
            .str16("property name", PROPERTIES_MAX)
            .and_then(|k| Ok((k, pr.str16("property value", PROPERTIES_MAX)?)));
        failed = pair.is_err();
        Some(pair)
    })
}

/// Encodes a batch as a `Messages` record payload.
pub fn encode_batch(messages: &[Message]) -> Result<Vec<u8>> {
    if messages.is_empty() || messages.len() > BATCH_MESSAGES_MAX {
        return Err(StoreError::InvalidArgument(format!(
            "a batch holds 1..={BATCH_MESSAGES_MAX} messages, not {}",
            messages.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + messages.iter().map(Message::encoded_len).sum::<usize>());
    out.put_u32(messages.len() as u32);
    for m in messages {
        m.encode_into(&mut out)?;
    }
    Ok(out)
}

/// Where one message sits inside a `Messages` payload: byte offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSpan {
    pub offset: u32,
    pub len: u32,
}

/// Splits a `Messages` payload into its messages' spans, checking every length first.
/// The messages themselves are not decoded (see [`Message::decode`]).
pub fn split_batch(payload: &[u8]) -> Result<Vec<MessageSpan>> {
    let mut r = Reader::new(payload, "messages payload");
    let count = r.u32()? as usize;
    if count == 0 || count > BATCH_MESSAGES_MAX {
        return Err(StoreError::malformed(
            "messages payload",
            format!("count {count}"),
        ));
    }
    let mut spans = Vec::with_capacity(count.min(payload.len() / MESSAGE_FIXED_LEN + 1));
    for _ in 0..count {
        let offset = r.position();
        let len = r.u32()? as usize;
        if !(MESSAGE_FIXED_LEN..=MESSAGE_MAX).contains(&len) {
            return Err(StoreError::malformed(
                "messages payload",
                format!("message length {len}"),
            ));
        }
        r.bytes(len - 4)?;
        spans.push(MessageSpan {
            offset: offset as u32,
            len: len as u32,
        });
    }
    r.finish()?;
    Ok(spans)
}

/// Decodes every message of a `Messages` payload.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<Message>> {
    split_batch(payload)?
        .into_iter()
        .map(|s| Message::decode(&payload[s.offset as usize..(s.offset + s.len) as usize]))
        .collect()
}

/// The stable 64-bit tag hash stored in ConsumeQueue entries (0 for no tag).
pub fn tag_hash(tags: &str) -> u64 {
    if tags.is_empty() {
        0
    } else {
        u64::from(crc32c::crc32c(tags.as_bytes())) | (1 << 32)
    }
}

#[cfg(test)]
mod tests;
