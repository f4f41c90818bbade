//! Timed messages and consumer retry: what a send with a delay becomes, the leader's
//! scheduler, recalls, and send-back to a group's retry topic or DLQ.
//!
//! State: the pending index and the scheduler's cursor are Raft state (see
//! `raftmq_store::timer` and `raftmq_raft::timer_apply`). This manager keeps only the highest
//! key it proposed while leading, so that it does not propose a batch again before the last
//! one applied; a new leader starts from the cursor in the log.
//!
//! A send may ask for a delay three ways, as RocketMQ's clients do (properties):
//! `DELAY` (a level, 1-based; 0 means none), `TIMER_DELAY_MS` (relative) or
//! `TIMER_DELIVER_MS` (absolute, ms since the epoch). The broker turns each into
//! `TIMER_DELIVER_MS` with its own clock, refuses a level it does not have or a time past
//! `max_delay_ms` (DELAY_OUT_OF_RANGE), and sends a time already past as a plain message.

use std::sync::Mutex;

use raftmq_proto::v1::SendBackRequest;
use raftmq_raft::{Replica, TimerOutcome, WriteError};
use raftmq_store::Message;
use raftmq_store::meta::perm;
use raftmq_store::timer::{
    PROPERTY_DELAY_LEVEL, PROPERTY_DELIVER_MS, PROPERTY_TIMER_KEY, TimerKey,
};

use crate::config::{TimerSection, parse_durations};
use crate::convert::parse_offset_msg_id;
use crate::error::Refusal;
use crate::managers::topics::TopicManager;

/// Property a client may set: the delay in ms from the broker's receipt.
pub const PROPERTY_DELAY_MS: &str = "TIMER_DELAY_MS";
/// Property of a retried message: the topic it was first sent to (RocketMQ's `RETRY_TOPIC`).
pub const PROPERTY_RETRY_TOPIC: &str = "RETRY_TOPIC";
/// Property of a retried message: its first msg id (RocketMQ's `ORIGIN_MESSAGE_ID`).
pub const PROPERTY_ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
/// Prefix of a consumer group's retry topic.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic.
pub const DLQ_PREFIX: &str = "%DLQ%";

/// What one scheduler pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPass {
    /// Copies proposed.
    pub proposed: usize,
    /// Copies apply admitted.
    pub delivered: usize,
}

/// Timers of one replica.
pub struct TimerManager {
    replica: Replica,
    group: String,
    topics: TopicManager,
    config: TimerSection,
    levels: Vec<u64>,
    backoff: Vec<u64>,
    batch_max_bytes: usize,
    /// The highest key this replica proposed while leading, in the term it led.
    proposed: Mutex<Option<(u64, TimerKey)>>,
    /// The `retry_count_off_by_one` mutation (checker tests only).
    retry_off_by_one: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TimerManager {
    pub fn new(
        replica: Replica,
        group: &str,
        topics: TopicManager,
        config: TimerSection,
        batch_max_bytes: usize,
        retry_off_by_one: bool,
    ) -> Self {
        // Validated with the configuration.
        let levels = parse_durations(&config.delay_levels).unwrap_or_default();
        let backoff = parse_durations(&config.retry_backoff).unwrap_or_default();
        TimerManager {
            replica,
            group: group.to_string(),
            topics,
            config,
            levels,
            backoff,
            batch_max_bytes,
            proposed: Mutex::new(None),
            retry_off_by_one,
        }
    }

    /// Turns a send's delay properties into `TIMER_DELIVER_MS` (see the module docs); returns
    /// the due time of a timed message.
    pub fn prepare(&self, m: &mut Message, now_ms: u64) -> Result<Option<u64>, Refusal> {
        if m.properties.contains_key(PROPERTY_TIMER_KEY) {
            return Err(Refusal::InvalidArgument(format!(
                "property {PROPERTY_TIMER_KEY} is the broker's own"
            )));
        }
        let due = self.due_of(m, now_ms)?;
        m.properties.remove(PROPERTY_DELAY_MS);
        match due {
            Some(d) if d > now_ms => {
                m.properties
                    .insert(PROPERTY_DELIVER_MS.into(), d.to_string());
                Ok(Some(d))
            }
            // Past or now: a plain message.
            _ => {
                m.properties.remove(PROPERTY_DELIVER_MS);
                m.properties.remove(PROPERTY_DELAY_LEVEL);
                Ok(None)
            }
        }
    }

    fn due_of(&self, m: &Message, now_ms: u64) -> Result<Option<u64>, Refusal> {
        let num = |k: &str| -> Result<Option<u64>, Refusal> {
            m.properties
                .get(k)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        Refusal::InvalidArgument(format!("property {k}={v:?} is not a number"))
                    })
                })
                .transpose()
        };
        let due = match (
            num(PROPERTY_DELAY_LEVEL)?,
            num(PROPERTY_DELAY_MS)?,
            num(PROPERTY_DELIVER_MS)?,
        ) {
            (None | Some(0), None, None) => return Ok(None),
            (Some(level), None, None) => {
                let Some(d) = usize::try_from(level)
                    .ok()
                    .and_then(|l| self.levels.get(l - 1))
                else {
                    return Err(Refusal::DelayOutOfRange(format!(
                        "delay level {level}: this broker has levels 1..={}",
                        self.levels.len()
                    )));
                };
                now_ms + d
            }
            (None | Some(0), Some(d), None) => now_ms.saturating_add(d),
            (None | Some(0), None, Some(at)) => at,
            _ => {
                return Err(Refusal::InvalidArgument(format!(
                    "give one of {PROPERTY_DELAY_LEVEL}, {PROPERTY_DELAY_MS} and {PROPERTY_DELIVER_MS}"
                )));
            }
        };
        if due > now_ms.saturating_add(self.config.max_delay_ms) {
            return Err(Refusal::DelayOutOfRange(format!(
                "delivery at {due} is {} ms away, past the maximum delay of {} ms",
                due - now_ms,
                self.config.max_delay_ms
            )));
        }
        Ok(Some(due))
    }

    /// Forgets what this replica proposed as leader (it no longer leads).
    pub fn step_down(&self) {
        *lock(&self.proposed) = None;
    }

    /// The next delivery on the leader of `term`: copies of the due timers past the cursor
    /// and past what this leader already proposed (at most `batch`, within the entry size),
    /// remembered as proposed. `None` if nothing is due. The caller proposes them with
    /// [`TimerManager::propose`]; several may be in flight (a stale or repeated one is
    /// refused copy by copy at apply).
    pub fn next_delivery(&self, term: u64, now_ms: u64) -> Result<Option<Vec<Message>>, Refusal> {
        let view = self.replica.store().view();
        let cursor = view.meta().timer_cursor()?;
        let mine = lock(&self.proposed)
            .filter(|(t, _)| *t == term)
            .map(|(_, k)| k);
        let after = cursor.max(mine);
        let due = view.meta().timers_due(after, now_ms, self.config.batch)?;
        let mut copies = Vec::with_capacity(due.len());
        let mut bytes = 0;
        let mut last = None;
        for t in due {
            let mut m = match view.read_message(t.key.position, t.size) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(key = %t.key, error = %e, "timed message unreadable; not delivered");
                    return Err(e.into());
                }
            };
            m.properties
                .insert(PROPERTY_TIMER_KEY.into(), t.key.to_string());
            bytes += m.encoded_len();
            if bytes > self.batch_max_bytes && !copies.is_empty() {
                break;
            }
            last = Some(t.key);
            copies.push(m);
        }
        let Some(last) = last else {
            return Ok(None);
        };
        *lock(&self.proposed) = Some((term, last));
        Ok(Some(copies))
    }

    /// Proposes a delivery from [`TimerManager::next_delivery`]; what apply admitted.
    pub async fn propose(&self, copies: Vec<Message>) -> Result<DeliveryPass, Refusal> {
        let proposed = copies.len();
        match self.replica.write_entry(copies).await {
            Ok(r) => Ok(DeliveryPass {
                proposed,
                delivered: r.assigned.len(),
            }),
            Err(e) => {
                // Maybe applied, maybe not: the next pass starts from the cursor.
                *lock(&self.proposed) = None;
                Err(e.into())
            }
        }
    }

    /// One scheduler pass: the next delivery, proposed and waited for.
    pub async fn deliver_due(&self, term: u64, now_ms: u64) -> Result<DeliveryPass, Refusal> {
        match self.next_delivery(term, now_ms)? {
            Some(copies) => self.propose(copies).await,
            None => Ok(DeliveryPass::default()),
        }
    }

    /// Recalls the timed message named by `handle` (its offset msg id).
    pub async fn recall(&self, handle: &str) -> Result<(), Refusal> {
        let not_found = || {
            Refusal::TimerNotFound(format!(
                "no timed message {handle:?} in group {:?}",
                self.group
            ))
        };
        let Some((group, position)) = parse_offset_msg_id(handle) else {
            return Err(Refusal::InvalidArgument(format!(
                "{handle:?} is not a recall handle"
            )));
        };
        if group != self.group {
            return Err(not_found());
        }
        // Everything committed is applied here before the index is read.
        self.replica.read_barrier().await?;
        let view = self.replica.store().view();
        let Some(t) = view.meta().timer_at(position)? else {
            // Already recalled and not yet behind the cursor: recalling again succeeds (a
            // client retries a recall whose answer it lost).
            if view
                .meta()
                .timers_recalled()?
                .iter()
                .any(|k| k.position == position)
            {
                return Ok(());
            }
            // Delivered or recalled long ago, or never a timed message.
            return match view.read_message_at(position) {
                Ok(m) if m.properties.contains_key(PROPERTY_DELIVER_MS) => Err(
                    Refusal::TimerNotPending(format!("{handle:?} was delivered or recalled")),
                ),
                _ => Err(not_found()),
            };
        };
        let r = self
            .replica
            .propose(raftmq_raft::MetaCommand::RecallTimer {
                due_ms: t.key.due_ms,
                position: t.key.position.0,
            })
            .await?;
        match r.timer {
            Some(TimerOutcome::Recalled) => Ok(()),
            _ => Err(Refusal::TimerNotPending(format!(
                "{handle:?} was delivered or recalled"
            ))),
        }
    }

    /// Takes back a message a consumer of `req.consumer_group` could not consume: to the
    /// group's retry topic, due after the backoff for its attempt, or past the group's
    /// maximum to its DLQ. Returns the topic it went to (empty: an orderly consumer retries
    /// in place) and the maximum applied.
    pub async fn send_back(
        &self,
        req: &SendBackRequest,
        now_ms: u64,
    ) -> Result<(String, u32), Refusal> {
        raftmq_proto::limits::check_name("consumer group", &req.consumer_group)?;
        let not_held = || {
            Refusal::MessageNotFound(format!(
                "message {:?} is not held by group {:?}",
                req.offset_msg_id, self.group
            ))
        };
        let (group, position) = parse_offset_msg_id(&req.offset_msg_id).ok_or_else(not_held)?;
        if group != self.group {
            return Err(not_held());
        }
        let mut m = self
            .replica
            .store()
            .view()
            .read_message_at(position)
            .map_err(|_| not_held())?;
        if m.topic
            .starts_with(crate::managers::topics::SYSTEM_TOPIC_PREFIX)
        {
            return Err(not_held());
        }
        // The request's maximum (a consumer's own setting), else the group's config, else
        // the broker's default; likewise the backoff.
        let group_cfg = self
            .replica
            .store()
            .view()
            .meta()
            .group(&req.consumer_group)?;
        let max = match (req.max_reconsume_times, &group_cfg) {
            (0, Some(g)) if g.max_reconsume_times > 0 => g.max_reconsume_times,
            (0, _) => self.config.max_reconsume_times,
            (n, _) => n,
        };
        let backoff = match &group_cfg {
            Some(g) if !g.retry_backoff_ms.is_empty() => g.retry_backoff_ms.as_slice(),
            _ => self.backoff.as_slice(),
        };
        // The attempt that failed was the message's `reconsume_times + 1`-th delivery.
        let to_dlq = if self.retry_off_by_one {
            req.reconsume_times > max
        } else {
            req.reconsume_times >= max
        };
        if req.orderly && !to_dlq {
            // Retried in place by the consumer: nothing to store yet.
            return Ok((String::new(), max));
        }
        m.properties
            .entry(PROPERTY_RETRY_TOPIC.into())
            .or_insert_with(|| m.topic.clone());
        m.properties
            .entry(PROPERTY_ORIGIN_MESSAGE_ID.into())
            .or_insert_with(|| m.msg_id.clone());
        for p in [
            PROPERTY_TIMER_KEY,
            PROPERTY_DELIVER_MS,
            PROPERTY_DELAY_LEVEL,
        ] {
            m.properties.remove(p);
        }
        m.reconsume_times = req.reconsume_times + 1;
        m.queue_id = 0;
        m.sys_flag = 0;
        let topic = if to_dlq {
            let dlq = format!("{DLQ_PREFIX}{}", req.consumer_group);
            self.topics.ensure_internal(&dlq, 0).await?;
            dlq
        } else {
            let retry = format!("{RETRY_PREFIX}{}", req.consumer_group);
            self.topics
                .ensure_internal(&retry, perm::READ | perm::WRITE)
                .await?;
            let delay = match req.delay_level {
                0 => {
                    let i = (req.reconsume_times as usize).min(backoff.len() - 1);
                    backoff[i]
                }
                l => *self.levels.get(l as usize - 1).ok_or_else(|| {
                    Refusal::DelayOutOfRange(format!(
                        "delay level {l}: this broker has levels 1..={}",
                        self.levels.len()
                    ))
                })?,
            };
            m.properties
                .insert(PROPERTY_DELIVER_MS.into(), (now_ms + delay).to_string());
            retry
        };
        m.topic = topic.clone();
        self.replica.write(vec![m]).await.map_err(|e| match e {
            WriteError::InvalidArgument(s) => Refusal::MessageTooLarge(s),
            other => other.into(),
        })?;
        Ok((topic, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_durations("1s 5s 1m 2h 500ms 1d").unwrap(),
            vec![1_000, 5_000, 60_000, 7_200_000, 500, 86_400_000]
        );
        for bad in ["1", "s", "1x", "-1s", "99999999999999999999s"] {
            assert!(parse_durations(bad).is_err(), "{bad}");
        }
    }
}
