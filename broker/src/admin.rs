//! The `Admin` service: topics, stats, consumer progress, the group's Raft status, leader
//! transfer and membership. Changes go through Raft (leader only); reads are local.

use std::collections::BTreeSet;
use std::sync::Arc;

use raftmq_proto::ErrorCode;
use raftmq_proto::limits::{QUEUE_NUMS_MAX, check_name};
use raftmq_proto::v1::admin_server::{Admin, AdminServer};
use raftmq_proto::v1::*;
use raftmq_raft::MetaCommand;
use raftmq_raft::types::TopicSpec;
use raftmq_store::consumequeue::QueueId;
use tonic::{Request, Response};

use crate::broker::Shared;
use crate::convert::{ok, status, store_error, write_error};

#[cfg(not(madsim))]
pub type AdminService = AdminServer<AdminImpl>;
#[cfg(madsim)]
pub type AdminService = AdminServer<AdminImpl, tonic::codegen::IdentityInterceptor>;

pub(crate) fn service(shared: Arc<Shared>) -> AdminService {
    AdminServer::new(AdminImpl { shared })
}

/// The `Admin` service of one replica.
#[derive(Clone)]
pub struct AdminImpl {
    shared: Arc<Shared>,
}

type Res<T> = Result<Response<T>, tonic::Status>;

/// A topic configuration as the wire gives it, checked.
pub fn check_topic(t: &TopicConfig) -> Result<(), String> {
    check_name("topic", &t.name).map_err(|e| e.message)?;
    for (what, n) in [
        ("read_queue_nums", t.read_queue_nums),
        ("write_queue_nums", t.write_queue_nums),
    ] {
        if n == 0 || n > QUEUE_NUMS_MAX {
            return Err(format!("{what} must be 1..={QUEUE_NUMS_MAX}, got {n}"));
        }
    }
    if !matches!(t.perm, 0 | 2 | 4 | 6) {
        return Err(format!(
            "perm must be 0, 2 (write), 4 (read) or 6, got {}",
            t.perm
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Admin for AdminImpl {
    async fn create_topic(&self, req: Request<CreateTopicRequest>) -> Res<CreateTopicResponse> {
        let Some(t) = req.into_inner().topic else {
            return Ok(Response::new(CreateTopicResponse {
                status: status(ErrorCode::InvalidArgument, "no topic"),
            }));
        };
        if let Err(m) = check_topic(&t) {
            return Ok(Response::new(CreateTopicResponse {
                status: status(ErrorCode::InvalidArgument, m),
            }));
        }
        let r = self
            .shared
            .replica
            .propose(MetaCommand::PutTopic(TopicSpec {
                name: t.name,
                read_queue_nums: t.read_queue_nums,
                write_queue_nums: t.write_queue_nums,
                perm: t.perm,
            }))
            .await;
        Ok(Response::new(CreateTopicResponse {
            status: r.map_or_else(write_error, |_| ok()),
        }))
    }

    async fn delete_topic(&self, req: Request<DeleteTopicRequest>) -> Res<DeleteTopicResponse> {
        let name = req.into_inner().topic;
        if let Err(e) = check_name("topic", &name) {
            return Ok(Response::new(DeleteTopicResponse {
                status: status(e.code(), e.message),
            }));
        }
        if let Err(s) = crate::messaging::topic(&self.shared, &name) {
            return Ok(Response::new(DeleteTopicResponse { status: s }));
        }
        let r = self
            .shared
            .replica
            .propose(MetaCommand::DeleteTopic { name })
            .await;
        Ok(Response::new(DeleteTopicResponse {
            status: r.map_or_else(write_error, |_| ok()),
        }))
    }

    async fn list_topics(&self, _req: Request<ListTopicsRequest>) -> Res<ListTopicsResponse> {
        Ok(Response::new(ListTopicsResponse {
            status: ok(),
            topics: self.shared.topics(),
        }))
    }

    async fn topic_stats(&self, req: Request<TopicStatsRequest>) -> Res<TopicStatsResponse> {
        let name = req.into_inner().topic;
        let t = match crate::messaging::topic(&self.shared, &name) {
            Ok(t) => t,
            Err(s) => {
                return Ok(Response::new(TopicStatsResponse {
                    status: s,
                    ..Default::default()
                }));
            }
        };
        let store = self.shared.replica.store().lock();
        let queues = (0..t.read_queue_nums.max(t.write_queue_nums))
            .map(|q| {
                let (min, max) = store.queue_bounds(&QueueId {
                    topic: name.clone(),
                    queue_id: q,
                });
                QueueStats {
                    queue_id: q,
                    min_offset: min.0,
                    max_offset: max.0,
                }
            })
            .collect();
        Ok(Response::new(TopicStatsResponse {
            status: ok(),
            group: self.shared.group().to_string(),
            queues,
        }))
    }

    async fn consumer_progress(
        &self,
        req: Request<ConsumerProgressRequest>,
    ) -> Res<ConsumerProgressResponse> {
        let req = req.into_inner();
        if let Err(e) = check_name("consumer group", &req.consumer_group) {
            return Ok(Response::new(ConsumerProgressResponse {
                status: status(e.code(), e.message),
                queues: vec![],
            }));
        }
        let store = self.shared.replica.store().lock();
        let offsets = match store.meta().consumer_offsets() {
            Ok(o) => o,
            Err(e) => {
                return Ok(Response::new(ConsumerProgressResponse {
                    status: store_error(e),
                    queues: vec![],
                }));
            }
        };
        let queues = offsets
            .into_iter()
            .filter(|((g, t, _), _)| {
                *g == req.consumer_group && (req.topic.is_empty() || *t == req.topic)
            })
            .map(|((_, t, q), o)| {
                let (_, max) = store.queue_bounds(&QueueId {
                    topic: t.clone(),
                    queue_id: q,
                });
                QueueProgress {
                    topic: t,
                    queue_id: q,
                    broker_offset: max.0,
                    consumer_offset: o,
                    lag: max.0.saturating_sub(o),
                }
            })
            .collect();
        Ok(Response::new(ConsumerProgressResponse {
            status: ok(),
            queues,
        }))
    }

    async fn group_status(&self, _req: Request<GroupStatusRequest>) -> Res<GroupStatusResponse> {
        let m = self.shared.metrics();
        let (role, term) = self.shared.role();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        let replicas = membership
            .nodes()
            .map(|(id, n)| ReplicaStatus {
                replica_id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched.get(id).and_then(|l| l.as_ref().map(|l| l.index)),
            })
            .collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        Ok(Response::new(GroupStatusResponse {
            status: ok(),
            group: self.shared.group().to_string(),
            replica_id: self.shared.config.replica_id,
            role: role as i32,
            term,
            leader_id: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.as_ref().map(|c| c.index),
            applied_index: m.last_applied.map(|a| a.index),
            purged_index: m.purged.map(|p| p.index),
            replicas,
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Res<TransferLeaderResponse> {
        let to = req.into_inner().to_replica_id;
        let r = self.shared.replica.transfer_leader(to).await;
        Ok(Response::new(TransferLeaderResponse {
            status: r.map_or_else(write_error, |_| ok()),
        }))
    }

    async fn add_replica(&self, req: Request<AddReplicaRequest>) -> Res<AddReplicaResponse> {
        let req = req.into_inner();
        if req.replica_id == 0 || req.addr.parse::<std::net::SocketAddr>().is_err() {
            return Ok(Response::new(AddReplicaResponse {
                status: status(
                    ErrorCode::InvalidArgument,
                    "replica id ≥ 1 and a host:port address",
                ),
            }));
        }
        let r = self
            .shared
            .replica
            .add_learner(req.replica_id, &req.addr)
            .await;
        Ok(Response::new(AddReplicaResponse {
            status: r.map_or_else(write_error, |_| ok()),
        }))
    }

    async fn change_voters(&self, req: Request<ChangeVotersRequest>) -> Res<ChangeVotersResponse> {
        let voters: BTreeSet<u64> = req.into_inner().voter_ids.into_iter().collect();
        let r = self.shared.replica.change_voters(voters).await;
        Ok(Response::new(ChangeVotersResponse {
            status: r.map_or_else(write_error, |_| ok()),
        }))
    }

    async fn remove_replica(
        &self,
        req: Request<RemoveReplicaRequest>,
    ) -> Res<RemoveReplicaResponse> {
        let id = req.into_inner().replica_id;
        let r = self.shared.replica.remove(id).await;
        Ok(Response::new(RemoveReplicaResponse {
            status: r.map_or_else(write_error, |_| ok()),
        }))
    }
}
