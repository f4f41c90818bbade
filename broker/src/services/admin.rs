//! The `Admin` service: topics, stats, consumer progress, the group's Raft status, leader
//! transfer and membership. Changes go through Raft (leader only); reads are local.

use std::collections::BTreeSet;
use std::sync::Arc;

use raftmq_proto::v1::admin_server::{Admin, AdminServer};
use raftmq_proto::v1::*;
use tonic::{Request, Response};

use crate::error::{Refusal, respond};
use crate::shared::Shared;

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

/// An empty answer (only a status) from a membership or topic change.
fn done<T: crate::error::Reply>(r: Result<(), impl Into<Refusal>>) -> Res<T> {
    respond(r.map(|()| T::default()).map_err(Into::into))
}

#[tonic::async_trait]
impl Admin for AdminImpl {
    async fn create_topic(&self, req: Request<CreateTopicRequest>) -> Res<CreateTopicResponse> {
        let r = match req.into_inner().topic {
            None => Err(Refusal::InvalidArgument("no topic".into())),
            Some(t) => self.shared.managers.topics.create(t).await,
        };
        done(r)
    }

    async fn delete_topic(&self, req: Request<DeleteTopicRequest>) -> Res<DeleteTopicResponse> {
        done(
            self.shared
                .managers
                .topics
                .delete(req.into_inner().topic)
                .await,
        )
    }

    async fn put_group(&self, req: Request<PutGroupRequest>) -> Res<PutGroupResponse> {
        let req = req.into_inner();
        let r = match req.group {
            None => Err(Refusal::InvalidArgument("no group".into())),
            Some(g) => {
                self.shared
                    .managers
                    .group_configs
                    .put(g, req.must_exist)
                    .await
            }
        };
        done(r)
    }

    async fn list_groups(&self, _req: Request<ListGroupsRequest>) -> Res<ListGroupsResponse> {
        let r = self.shared.managers.group_configs.list();
        respond(r.map(|groups| ListGroupsResponse {
            status: None,
            groups,
        }))
    }

    async fn browse_queue(&self, req: Request<BrowseQueueRequest>) -> Res<BrowseQueueResponse> {
        let r = self.shared.managers.messages.browse(&req.into_inner());
        respond(r.map(|p| match p.status {
            Some(s) if s.code != 0 => BrowseQueueResponse {
                status: Some(s),
                min_offset: p.min_offset,
                max_offset: p.max_offset,
                ..Default::default()
            },
            _ => BrowseQueueResponse {
                status: None,
                messages: p.messages,
                next_offset: p.next_offset,
                min_offset: p.min_offset,
                max_offset: p.max_offset,
            },
        }))
    }

    async fn process_stats(&self, _req: Request<ProcessStatsRequest>) -> Res<ProcessStatsResponse> {
        let (cpu_user_us, cpu_system_us) = crate::process::cpu_us();
        respond(Ok(ProcessStatsResponse {
            status: None,
            cpu_user_us,
            cpu_system_us,
            rss_bytes: crate::process::rss_bytes(),
            pid: std::process::id(),
        }))
    }

    async fn list_topics(&self, _req: Request<ListTopicsRequest>) -> Res<ListTopicsResponse> {
        respond(Ok(ListTopicsResponse {
            status: None,
            topics: self.shared.managers.topics.list(),
        }))
    }

    async fn topic_stats(&self, req: Request<TopicStatsRequest>) -> Res<TopicStatsResponse> {
        let r = self.shared.managers.topics.stats(&req.into_inner().topic);
        respond(r.map(|queues| TopicStatsResponse {
            status: None,
            group: self.shared.group().to_string(),
            queues,
        }))
    }

    async fn consumer_progress(
        &self,
        req: Request<ConsumerProgressRequest>,
    ) -> Res<ConsumerProgressResponse> {
        let req = req.into_inner();
        let r = self
            .shared
            .managers
            .offsets
            .progress(&req.consumer_group, &req.topic);
        respond(r.map(|queues| ConsumerProgressResponse {
            status: None,
            queues,
        }))
    }

    async fn list_transactions(
        &self,
        req: Request<ListTransactionsRequest>,
    ) -> Res<ListTransactionsResponse> {
        respond(self.shared.managers.transactions.list(&req.into_inner()))
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
        respond(Ok(GroupStatusResponse {
            status: None,
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
        done(self.shared.replica.transfer_leader(to).await)
    }

    async fn add_replica(&self, req: Request<AddReplicaRequest>) -> Res<AddReplicaResponse> {
        let req = req.into_inner();
        if req.replica_id == 0 || req.addr.parse::<std::net::SocketAddr>().is_err() {
            return done(Err(Refusal::InvalidArgument(
                "replica id ≥ 1 and a host:port address".into(),
            )));
        }
        done(
            self.shared
                .replica
                .add_learner(req.replica_id, &req.addr)
                .await,
        )
    }

    async fn change_voters(&self, req: Request<ChangeVotersRequest>) -> Res<ChangeVotersResponse> {
        let voters: BTreeSet<u64> = req.into_inner().voter_ids.into_iter().collect();
        done(self.shared.replica.change_voters(voters).await)
    }

    async fn remove_replica(
        &self,
        req: Request<RemoveReplicaRequest>,
    ) -> Res<RemoveReplicaResponse> {
        let id = req.into_inner().replica_id;
        done(self.shared.replica.remove(id).await)
    }
}
