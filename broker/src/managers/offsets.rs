//! Committed consumer offsets: queried by any replica from what it applied, committed
//! through Raft (so a new leader has them), and consumer progress (lag) for admin tools.
//! A committed offset only moves forward; the state machine keeps that (see `raftmq_raft`).

use raftmq_proto::limits::{COMMIT_OFFSETS_MAX, check_name};
use raftmq_proto::v1::{CommittedOffset, QueueProgress};
use raftmq_raft::types::OffsetCommit;
use raftmq_raft::{MetaCommand, Replica};
use raftmq_store::QueueOffset;
use raftmq_store::consumequeue::QueueId;

use crate::error::Refusal;

/// The consumer offsets of one replica.
pub struct OffsetManager {
    replica: Replica,
}

impl OffsetManager {
    pub fn new(replica: Replica) -> Self {
        OffsetManager { replica }
    }

    /// The committed offset of `group` on a queue, if any.
    pub fn query(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<QueueOffset>, Refusal> {
        check_name("consumer group", group)?;
        check_name("topic", topic)?;
        Ok(self
            .replica
            .store()
            .view()
            .meta()
            .consumer_offset(group, topic, queue_id)?)
    }

    /// Commits offsets through Raft (leader only). Each must be at most its queue's end.
    pub async fn commit(
        &self,
        group: String,
        offsets: Vec<CommittedOffset>,
    ) -> Result<(), Refusal> {
        check_name("consumer group", &group)?;
        if offsets.is_empty() || offsets.len() > COMMIT_OFFSETS_MAX {
            return Err(Refusal::InvalidArgument(format!(
                "1..={COMMIT_OFFSETS_MAX} offsets per commit, got {}",
                offsets.len()
            )));
        }
        for o in &offsets {
            check_name("topic", &o.topic)?;
            let (_, max) = self.replica.store().view().queue_bounds(&QueueId {
                topic: o.topic.clone(),
                queue_id: o.queue_id,
            });
            if o.offset > max.0 {
                return Err(Refusal::OffsetOutOfRange(format!(
                    "offset {} of {}:{} is past the queue's end {}",
                    o.offset, o.topic, o.queue_id, max.0
                )));
            }
        }
        let cmd = MetaCommand::CommitOffsets {
            group,
            offsets: offsets
                .into_iter()
                .map(|o| OffsetCommit {
                    topic: o.topic,
                    queue_id: o.queue_id,
                    offset: QueueOffset(o.offset),
                })
                .collect(),
        };
        self.replica.propose(cmd).await?;
        Ok(())
    }

    /// The group's committed offsets against each queue's end (`topic` empty: every topic).
    pub fn progress(&self, group: &str, topic: &str) -> Result<Vec<QueueProgress>, Refusal> {
        check_name("consumer group", group)?;
        let view = self.replica.store().view();
        let offsets = view.meta().consumer_offsets()?;
        Ok(offsets
            .into_iter()
            .filter(|((g, t, _), _)| g == group && (topic.is_empty() || t == topic))
            .map(|((_, t, q), o)| {
                let (_, max) = view.queue_bounds(&QueueId {
                    topic: t.clone(),
                    queue_id: q,
                });
                QueueProgress {
                    topic: t,
                    queue_id: q,
                    broker_offset: max.0,
                    consumer_offset: o.0,
                    lag: max.0.saturating_sub(o.0),
                }
            })
            .collect())
    }
}
