//! Topics: lookup (for sends and pulls), auto-create on first send, create/delete through
//! Raft, the list the name servers get, and per-queue stats.

use raftmq_proto::limits::{QUEUE_NUMS_MAX, check_name};
use raftmq_proto::v1::{QueueStats, TopicConfig};
use raftmq_raft::types::TopicSpec;
use raftmq_raft::{MetaCommand, Replica};
use raftmq_store::consumequeue::QueueId;
use raftmq_store::meta::{self, TopicMessageType, perm};

use crate::config::AUTO_CREATE_QUEUES;
use crate::error::Refusal;

/// The topics of one replica.
#[derive(Clone)]
pub struct TopicManager {
    replica: Replica,
    group: String,
    auto_create: bool,
}

impl TopicManager {
    pub fn new(replica: Replica, group: &str, auto_create: bool) -> Self {
        TopicManager {
            replica,
            group: group.to_string(),
            auto_create,
        }
    }

    /// A topic's configuration as applied on this replica.
    pub fn get(&self, name: &str) -> Result<meta::TopicConfig, Refusal> {
        let t = self.replica.store().view().meta().topic(name)?;
        t.ok_or_else(|| Refusal::TopicNotFound {
            topic: name.to_string(),
            group: self.group.clone(),
        })
    }

    /// The topic a send goes to, created with [`AUTO_CREATE_QUEUES`] queues when it does not
    /// exist and auto-create is on; refused unless it is writable.
    pub async fn for_send(&self, name: &str) -> Result<meta::TopicConfig, Refusal> {
        refuse_system(name)?;
        let t = match self.get(name) {
            Err(Refusal::TopicNotFound { .. }) if self.auto_create => {
                self.put(TopicSpec {
                    name: name.to_string(),
                    read_queue_nums: AUTO_CREATE_QUEUES,
                    write_queue_nums: AUTO_CREATE_QUEUES,
                    perm: perm::READ | perm::WRITE,
                    message_type: TopicMessageType::Mixed,
                })
                .await?;
                self.get(name)?
            }
            other => other?,
        };
        if t.perm & perm::WRITE == 0 {
            return Err(Refusal::NoPermission(format!(
                "topic {name:?} is not writable (perm {})",
                t.perm
            )));
        }
        if t.write_queue_nums == 0 {
            return Err(Refusal::NoPermission(format!(
                "topic {name:?} has no write queues"
            )));
        }
        Ok(t)
    }

    /// The broker's own topic `name` (a group's retry topic or DLQ), created with one queue
    /// and `perm` when missing; its perm is not checked (the broker writes there whatever
    /// clients may do).
    pub async fn ensure_internal(
        &self,
        name: &str,
        perm: u32,
    ) -> Result<meta::TopicConfig, Refusal> {
        match self.get(name) {
            Err(Refusal::TopicNotFound { .. }) => {
                self.put(TopicSpec {
                    name: name.to_string(),
                    read_queue_nums: 1,
                    write_queue_nums: 1,
                    perm,
                    message_type: TopicMessageType::Mixed,
                })
                .await?;
                self.get(name)
            }
            other => other,
        }
    }

    /// The topic a pull of `queue_id` reads, refused unless readable and the queue exists.
    pub fn for_pull(&self, name: &str, queue_id: u32) -> Result<meta::TopicConfig, Refusal> {
        let t = self.get(name)?;
        if t.perm & perm::READ == 0 {
            return Err(Refusal::NoPermission(format!(
                "topic {name:?} is not readable (perm {})",
                t.perm
            )));
        }
        if queue_id >= t.read_queue_nums {
            return Err(Refusal::InvalidArgument(format!(
                "queue {queue_id} of topic {name:?}: it has {} read queues",
                t.read_queue_nums
            )));
        }
        Ok(t)
    }

    /// Creates or updates a topic (leader only: through Raft).
    pub async fn create(&self, t: TopicConfig) -> Result<(), Refusal> {
        let message_type = check_topic(&t)?;
        self.put(TopicSpec {
            name: t.name,
            read_queue_nums: t.read_queue_nums,
            write_queue_nums: t.write_queue_nums,
            perm: t.perm,
            message_type,
        })
        .await
    }

    /// Deletes an existing topic (leader only: through Raft).
    pub async fn delete(&self, name: String) -> Result<(), Refusal> {
        check_name("topic", &name)?;
        self.get(&name)?;
        self.replica
            .propose(MetaCommand::DeleteTopic { name })
            .await?;
        Ok(())
    }

    async fn put(&self, spec: TopicSpec) -> Result<(), Refusal> {
        self.replica.propose(MetaCommand::PutTopic(spec)).await?;
        Ok(())
    }

    /// Every topic as applied on this replica (what it registers with the name servers).
    pub fn list(&self) -> Vec<TopicConfig> {
        self.replica
            .store()
            .view()
            .meta()
            .topics()
            .unwrap_or_default()
            .into_iter()
            .map(|t| TopicConfig {
                name: t.name,
                read_queue_nums: t.read_queue_nums,
                write_queue_nums: t.write_queue_nums,
                perm: t.perm,
                message_type: i32::from(t.message_type.code()),
            })
            .collect()
    }

    /// Each queue's offset range.
    pub fn stats(&self, name: &str) -> Result<Vec<QueueStats>, Refusal> {
        let t = self.get(name)?;
        let view = self.replica.store().view();
        Ok((0..t.read_queue_nums.max(t.write_queue_nums))
            .map(|q| {
                let (min, max) = view.queue_bounds(&QueueId {
                    topic: name.to_string(),
                    queue_id: q,
                });
                QueueStats {
                    queue_id: q,
                    min_offset: min.0,
                    max_offset: max.0,
                }
            })
            .collect())
    }
}

/// Topics whose names start with this are the broker's own (the transaction half queue);
/// clients can neither create, send to nor pull from them.
pub const SYSTEM_TOPIC_PREFIX: &str = "RMQ_SYS_";

/// Refuses a system topic's name.
pub fn refuse_system(name: &str) -> Result<(), Refusal> {
    if name.starts_with(SYSTEM_TOPIC_PREFIX) {
        return Err(Refusal::NoPermission(format!(
            "{name:?} is a system topic (prefix {SYSTEM_TOPIC_PREFIX})"
        )));
    }
    Ok(())
}

/// Checks a topic configuration from the wire; answers its message type.
pub fn check_topic(t: &TopicConfig) -> Result<TopicMessageType, Refusal> {
    check_name("topic", &t.name)?;
    refuse_system(&t.name)?;
    for (what, n) in [
        ("read_queue_nums", t.read_queue_nums),
        ("write_queue_nums", t.write_queue_nums),
    ] {
        if n == 0 || n > QUEUE_NUMS_MAX {
            return Err(Refusal::InvalidArgument(format!(
                "{what} must be 1..={QUEUE_NUMS_MAX}, got {n}"
            )));
        }
    }
    if !matches!(t.perm, 0 | 2 | 4 | 6) {
        return Err(Refusal::InvalidArgument(format!(
            "perm must be 0, 2 (write), 4 (read) or 6, got {}",
            t.perm
        )));
    }
    u8::try_from(t.message_type)
        .ok()
        .and_then(TopicMessageType::from_code)
        .ok_or_else(|| {
            Refusal::InvalidArgument(format!(
                "message_type must be 0 (MIXED), 1 (NORMAL), 2 (FIFO), 3 (DELAY) or 4 \
                 (TRANSACTION), got {}",
                t.message_type
            ))
        })
}
