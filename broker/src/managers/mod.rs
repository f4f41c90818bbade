//! The broker's managers: each owns one capability's state and operations, and answers with
//! a typed [`Refusal`](crate::error::Refusal). Services only validate the request's shape,
//! call a manager and turn its answer into a response.
//!
//! | manager | owns | state |
//! |---|---|---|
//! | [`topics`] | topic configs: lookup, auto-create, create/delete, stats | replicated (MetaStore, via Raft) |
//! | [`messages`] | sends (queue choice, batch limit) and reads (pull look, view, key query) | the CommitLog and ConsumeQueues |
//! | [`long_poll`] | held pulls, woken by apply | none (the replica's applied signal) |
//! | [`offsets`] | committed consumer offsets, consumer progress | replicated (MetaStore, via Raft) |
//! | [`consumer_groups`] | members by heartbeat, queue locks (orderly consumption) | per replica, in memory |
//! | [`group_configs`] | consumer group configs: max reconsume times, retry backoff, consume-from | replicated (MetaStore, via Raft) |
//! | [`transactions`] | half messages, `EndTransaction`, the leader's checker | replicated (the transaction table, via Raft) |
//! | [`channels`] | open client channels (server→client calls), by group | per replica (the leader's), in memory |
//! | [`timers`] | timed messages (delay levels, delivery times, recall), the leader's scheduler, send-back to retry/DLQ | replicated (the timer index and cursor, via Raft) |
//!
//! Where the next capabilities go: POP
//! consumption (`pop`: claims and receipt handles) — each a module here, each proposing its
//! decisions as Raft commands so a new leader continues them (docs/architecture.md: every piece of their
//! state is Raft state).

pub mod channels;
pub mod consumer_groups;
pub mod group_configs;
pub mod long_poll;
pub mod messages;
pub mod offsets;
pub mod pop;
pub mod timers;
pub mod topics;
pub mod transactions;

use std::sync::Arc;

use raftmq_raft::Replica;

use crate::config::BrokerConfig;

/// Every manager of one replica.
pub(crate) struct Managers {
    pub topics: topics::TopicManager,
    pub messages: messages::MessageManager,
    pub long_poll: long_poll::PullHolds,
    pub offsets: offsets::OffsetManager,
    pub pop: pop::PopManager,
    pub consumer_groups: consumer_groups::ConsumerGroups,
    pub group_configs: group_configs::GroupConfigs,
    pub transactions: transactions::TransactionManager,
    pub timers: timers::TimerManager,
    pub channels: Arc<channels::ClientChannels>,
}

impl Managers {
    pub fn new(config: &BrokerConfig, replica: &Replica, batch_max_bytes: usize) -> Self {
        let topics =
            topics::TopicManager::new(replica.clone(), &config.group, config.auto_create_topics);
        let channels = Arc::new(channels::ClientChannels::default());
        Managers {
            messages: messages::MessageManager::new(
                replica.clone(),
                &config.group,
                topics.clone(),
                batch_max_bytes,
                config.mutations.serve_uncommitted_pulls(),
            ),
            topics: topics.clone(),
            long_poll: long_poll::PullHolds::new(replica.clone()),
            offsets: offsets::OffsetManager::new(replica.clone()),
            pop: pop::PopManager::new(replica.clone(), &config.group, topics.clone()),
            consumer_groups: consumer_groups::ConsumerGroups::new(config.client_expire_ms),
            group_configs: group_configs::GroupConfigs::new(replica.clone()),
            transactions: transactions::TransactionManager::new(
                replica.clone(),
                &config.group,
                config.transaction,
                channels.clone(),
                config.mutations.checks_in_memory(),
            ),
            timers: timers::TimerManager::new(
                replica.clone(),
                &config.group,
                topics.clone(),
                config.timer.clone(),
                batch_max_bytes,
                config.mutations.retry_count_off_by_one(),
            ),
            channels,
        }
    }
}
