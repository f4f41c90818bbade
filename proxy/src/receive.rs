//! What POP consumption needs at the gateway: receipt handles, tag filters, the received
//! message in its v2 form, and the receive's timing (invisible time, long polling within the
//! call's deadline).

use std::time::Duration;

use md5::{Digest as _, Md5};
use raftmq_client::pop::Popped;
use raftmq_proto::rocketmq::v2::{
    self as v2, Code, Digest, DigestType, Encoding, FilterExpression, FilterType, MessageType,
    Resource, SystemProperties,
};

use crate::codes::V2Error;
use crate::send::{PROPERTY_BODY_ENCODING, PROPERTY_MESSAGE_GROUP};
use crate::settings::{LONG_POLLING_TIMEOUT, duration};

/// The shortest and longest invisible time a receive or change may ask for.
pub const INVISIBLE_MIN: Duration = Duration::from_secs(1);
pub const INVISIBLE_MAX: Duration = Duration::from_secs(12 * 3600);
/// How early a long poll answers before the call's deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Most messages one receive hands out.
pub const BATCH_MAX: i32 = 1024;
const HANDLE_VERSION: &str = "r1";

/// A receipt: which broker group's queue, the message's offset, the epoch of its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub broker_group: String,
    pub queue_id: u32,
    pub offset: u64,
    pub epoch: u64,
    /// The message's CommitLog position (its offset msg id, for the dead-letter queue).
    pub position: u64,
}

impl Receipt {
    /// `r1:<queue>:<offset>:<epoch>:<position>:<broker group>` (the group last: it may hold
    /// any character).
    pub fn encode(&self) -> String {
        format!(
            "{HANDLE_VERSION}:{}:{}:{}:{}:{}",
            self.queue_id, self.offset, self.epoch, self.position, self.broker_group
        )
    }

    /// The message's offset msg id in its broker group.
    pub fn offset_msg_id(&self) -> String {
        format!("{:016X}{}", self.position, self.broker_group)
    }

    pub fn parse(s: &str) -> Result<Receipt, V2Error> {
        let bad = || {
            V2Error::new(
                Code::InvalidReceiptHandle,
                format!("receipt handle {s:?} is not one of ours"),
            )
        };
        let mut p = s.splitn(6, ':');
        if p.next() != Some(HANDLE_VERSION) {
            return Err(bad());
        }
        let queue_id = p.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let offset = p.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let epoch = p.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let position = p.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let broker_group = p.next().filter(|g| !g.is_empty()).ok_or_else(bad)?;
        Ok(Receipt {
            broker_group: broker_group.to_string(),
            queue_id,
            offset,
            epoch,
            position,
        })
    }
}

/// A tag filter: `None` takes everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter(Option<Vec<String>>);

impl TagFilter {
    /// `*` or empty: every message; `a || b`: those tags. SQL92 is not served.
    pub fn parse(f: Option<&FilterExpression>) -> Result<TagFilter, V2Error> {
        let Some(f) = f else {
            return Ok(TagFilter(None));
        };
        if f.r#type == FilterType::Sql as i32 {
            return Err(V2Error::new(
                Code::IllegalFilterExpression,
                "SQL92 filters are not served by raftmq proxy; use tags",
            ));
        }
        let e = f.expression.trim();
        if e.is_empty() || e == "*" {
            return Ok(TagFilter(None));
        }
        let tags: Vec<String> = e.split("||").map(|t| t.trim().to_string()).collect();
        if tags.iter().any(|t| t.is_empty() || t.contains('*')) {
            return Err(V2Error::new(
                Code::IllegalFilterExpression,
                format!("filter {e:?}: `*`, or tags joined by `||`"),
            ));
        }
        Ok(TagFilter(Some(tags)))
    }

    pub fn matches(&self, tag: &str) -> bool {
        self.0.as_ref().is_none_or(|ts| ts.iter().any(|t| t == tag))
    }
}

/// The receive's invisible time: the request's, or `auto_renew` (the gateway renews).
pub fn invisible(
    req: &v2::ReceiveMessageRequest,
    auto_renew: Duration,
) -> Result<Duration, V2Error> {
    let d = match &req.invisible_duration {
        Some(d) => to_duration(d),
        None if req.auto_renew => return Ok(auto_renew),
        None => {
            return Err(V2Error::new(
                Code::IllegalInvisibleTime,
                "a receive without auto-renew names its invisible duration",
            ));
        }
    };
    check_invisible(d)
}

pub fn check_invisible(d: Duration) -> Result<Duration, V2Error> {
    if (INVISIBLE_MIN..=INVISIBLE_MAX).contains(&d) {
        Ok(d)
    } else {
        Err(V2Error::new(
            Code::IllegalInvisibleTime,
            format!("invisible duration {d:?}: {INVISIBLE_MIN:?} to {INVISIBLE_MAX:?}"),
        ))
    }
}

/// How long to wait for messages: the request's (at most the server's long-polling
/// timeout), ending [`DEADLINE_MARGIN`] before the call's deadline (`grpc-timeout`).
pub fn long_poll(req: &v2::ReceiveMessageRequest, deadline: Option<Duration>) -> Duration {
    let asked = req
        .long_polling_timeout
        .as_ref()
        .map_or(LONG_POLLING_TIMEOUT, to_duration)
        .min(LONG_POLLING_TIMEOUT);
    match deadline {
        Some(d) => asked.min(d.saturating_sub(DEADLINE_MARGIN)),
        None => asked,
    }
}

/// A `grpc-timeout` header value (`<digits><unit>`) as a duration.
pub fn grpc_timeout(v: &str) -> Option<Duration> {
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub fn to_duration(d: &prost_types::Duration) -> Duration {
    Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64)
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A handed-out message as RocketMQ 5 clients receive it.
pub fn to_v2(p: &Popped, topic: &Resource, broker_group: &str, invisible: Duration) -> v2::Message {
    let m = p.stored.message.clone().unwrap_or_default();
    let mut props: std::collections::HashMap<String, String> = m.properties.into_iter().collect();
    let gzip = props
        .remove(PROPERTY_BODY_ENCODING)
        .is_some_and(|e| e == "GZIP");
    let group = props.remove(PROPERTY_MESSAGE_GROUP);
    let deliver_at = props
        .remove("TIMER_DELIVER_MS")
        .and_then(|v| v.parse::<u64>().ok());
    for k in [
        "TIMER_DELAY_MS",
        "DELAY",
        "RAFTMQ_TIMER",
        "PGROUP",
        "RAFTMQ_TXN_HALF",
    ] {
        props.remove(k);
    }
    let message_type = if group.is_some() {
        MessageType::Fifo
    } else if deliver_at.is_some() {
        MessageType::Delay
    } else {
        MessageType::Normal
    };
    let receipt = Receipt {
        broker_group: broker_group.to_string(),
        queue_id: p.stored.queue_id,
        offset: p.offset(),
        epoch: p.epoch,
        position: p.stored.position,
    };
    v2::Message {
        topic: Some(topic.clone()),
        user_properties: props,
        system_properties: Some(SystemProperties {
            tag: (!m.tags.is_empty()).then(|| m.tags.clone()),
            keys: m.keys,
            message_id: m.msg_id,
            body_digest: Some(Digest {
                r#type: DigestType::Md5 as i32,
                checksum: md5_upper_hex(&m.body),
            }),
            body_encoding: if gzip {
                Encoding::Gzip
            } else {
                Encoding::Identity
            } as i32,
            message_type: message_type as i32,
            born_timestamp: Some(timestamp(m.born_timestamp_ms)),
            born_host: m.born_host,
            store_timestamp: Some(timestamp(p.stored.store_timestamp_ms)),
            store_host: broker_group.to_string(),
            delivery_timestamp: deliver_at.map(timestamp),
            receipt_handle: Some(receipt.encode()),
            queue_id: p.stored.queue_id as i32,
            queue_offset: Some(p.offset() as i64),
            invisible_duration: Some(duration(invisible)),
            delivery_attempt: Some(p.attempts as i32),
            message_group: group,
            ..Default::default()
        }),
        body: m.body,
    }
}

pub(crate) fn md5_upper_hex(b: &[u8]) -> String {
    Md5::digest(b).iter().map(|x| format!("{x:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_bad_ones_are_invalid() {
        let r = Receipt {
            broker_group: "g:1".into(),
            queue_id: 3,
            offset: 42,
            epoch: 77,
            position: 4096,
        };
        assert_eq!(Receipt::parse(&r.encode()).unwrap(), r);
        for bad in [
            "",
            "r1:1:2",
            "r2:1:2:3:4:g",
            "r1:x:2:3:4:g",
            "r1:1:2:3:4:",
            "r1:1:2:3:g",
        ] {
            assert_eq!(
                Receipt::parse(bad).unwrap_err().code,
                Code::InvalidReceiptHandle,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tag_filters() {
        let f = |e: &str| {
            TagFilter::parse(Some(&FilterExpression {
                r#type: FilterType::Tag as i32,
                expression: e.into(),
            }))
        };
        assert!(f("*").unwrap().matches("x"));
        let ab = f("a || b").unwrap();
        assert!(ab.matches("a") && ab.matches("b") && !ab.matches("c"));
        assert_eq!(f("a||").unwrap_err().code, Code::IllegalFilterExpression);
        let sql = TagFilter::parse(Some(&FilterExpression {
            r#type: FilterType::Sql as i32,
            expression: "a > 1".into(),
        }));
        assert_eq!(sql.unwrap_err().code, Code::IllegalFilterExpression);
    }

    #[test]
    fn long_polls_end_before_the_deadline() {
        let req = v2::ReceiveMessageRequest {
            long_polling_timeout: Some(duration(Duration::from_secs(30))),
            ..Default::default()
        };
        assert_eq!(long_poll(&req, None), LONG_POLLING_TIMEOUT);
        assert_eq!(
            long_poll(&req, grpc_timeout("5S")),
            Duration::from_millis(4_500)
        );
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("x"), None);
        assert_eq!(md5_upper_hex(b"hello"), "5D41402ABC4B2A76B9719D911017C592");
    }
}
