//! Consumer group configurations (max reconsume times, retry backoff, where a new group
//! starts), replicated like topics: `PutGroup` goes through Raft, reads are local.

use raftmq_proto::v1::ConsumerGroupConfig;
use raftmq_raft::{GroupSpec, MetaCommand, Replica};
use raftmq_store::groups::{GroupConfig, GroupConsumeFrom, MAX_BACKOFF_STEPS, MAX_RECONSUME_TIMES};

use crate::error::Refusal;

/// The group configs of one replica.
#[derive(Clone)]
pub struct GroupConfigs {
    replica: Replica,
}

impl GroupConfigs {
    pub fn new(replica: Replica) -> Self {
        GroupConfigs { replica }
    }

    /// Creates or updates `g` (with `must_exist`: only updates). Leader only.
    pub async fn put(&self, g: ConsumerGroupConfig, must_exist: bool) -> Result<(), Refusal> {
        raftmq_proto::limits::check_name("consumer group", &g.name)?;
        if g.retry_backoff_ms.len() > MAX_BACKOFF_STEPS {
            return Err(Refusal::InvalidArgument(format!(
                "{} backoff steps: at most {MAX_BACKOFF_STEPS}",
                g.retry_backoff_ms.len()
            )));
        }
        if g.max_reconsume_times > MAX_RECONSUME_TIMES {
            return Err(Refusal::InvalidArgument(format!(
                "max_reconsume_times {}: at most {MAX_RECONSUME_TIMES}",
                g.max_reconsume_times
            )));
        }
        if must_exist {
            // Everything committed is applied here before the table is read.
            self.replica.read_barrier().await?;
            if self.get(&g.name)?.is_none() {
                return Err(Refusal::GroupNotFound(format!(
                    "consumer group {:?} has no configuration (create it first)",
                    g.name
                )));
            }
        }
        self.replica
            .propose(MetaCommand::PutGroup(GroupSpec {
                name: g.name,
                max_reconsume_times: g.max_reconsume_times,
                retry_backoff_ms: g.retry_backoff_ms,
                consume_first: g.consume_first,
                fifo: g.fifo,
            }))
            .await?;
        Ok(())
    }

    /// One group's configuration as applied here.
    pub fn get(&self, name: &str) -> Result<Option<GroupConfig>, Refusal> {
        Ok(self.replica.store().view().meta().group(name)?)
    }

    /// Every configured group as applied here.
    pub fn list(&self) -> Result<Vec<ConsumerGroupConfig>, Refusal> {
        Ok(self
            .replica
            .store()
            .view()
            .meta()
            .groups()?
            .into_iter()
            .map(to_wire)
            .collect())
    }
}

fn to_wire(g: GroupConfig) -> ConsumerGroupConfig {
    ConsumerGroupConfig {
        name: g.name,
        max_reconsume_times: g.max_reconsume_times,
        retry_backoff_ms: g.retry_backoff_ms,
        consume_first: g.consume_from == GroupConsumeFrom::First,
        fifo: g.fifo,
    }
}
