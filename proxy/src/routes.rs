//! Routes as RocketMQ 5 clients see them: every queue of every broker group holding the topic,
//! each group a broker `{name: group, id: 0}` whose endpoints are the gateway's own (the
//! address the client dialled, as Apache's proxy answers): the client sends everything to the
//! gateway, which forwards to the group's leader.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::rocketmq::v2::{
    Broker, Code, Endpoints, MessageQueue, MessageType, Permission, Resource,
};
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::{GetRouteRequest, GetRouteResponse, TopicMessageType};
use tonic::transport::Channel;

use crate::codes::{V2Error, from_wire};

/// How long one name server may take to answer.
pub const NAMESRV_TIMEOUT: Duration = Duration::from_secs(3);
/// The permission bits of a raftmq topic (RocketMQ's): readable, writable.
const PERM_READ: u32 = 4;
const PERM_WRITE: u32 = 2;

/// How long a topic's message type, as a route said it, is used before the route is asked
/// again (a changed type reaches sends within this; the SDK's routes are refreshed as often).
pub const TOPIC_TYPE_TTL: Duration = Duration::from_secs(30);

/// The name servers, asked in turn until one answers.
pub struct Namesrv {
    addrs: Vec<String>,
    channels: Mutex<BTreeMap<String, Channel>>,
    /// Each topic's message type as its last route said, and when.
    types: Mutex<BTreeMap<String, (TopicMessageType, tokio::time::Instant)>>,
    /// Each consumer group's policy as a broker last said, and when.
    policies: Mutex<BTreeMap<String, (GroupPolicy, tokio::time::Instant)>>,
}

impl Namesrv {
    pub fn new(addrs: Vec<String>) -> Self {
        Self {
            addrs,
            channels: Mutex::default(),
            types: Mutex::default(),
            policies: Mutex::default(),
        }
    }

    /// The message type of `topic` (see [`topic_type`]), from a route at most
    /// [`TOPIC_TYPE_TTL`] old. When no name server answers, the last type known is used, or
    /// `Mixed` (nothing refused: the send itself finds out whether the topic exists).
    pub async fn topic_type(&self, topic: &str) -> Result<TopicMessageType, V2Error> {
        let now = tokio::time::Instant::now();
        let known = lock(&self.types).get(topic).copied();
        if let Some((t, at)) = known
            && now.duration_since(at) < TOPIC_TYPE_TTL
        {
            return Ok(t);
        }
        match self.route(topic).await {
            Ok(r) => Ok(topic_type(&r)),
            Err(e) if e.code == Code::TopicNotFound => Err(e),
            Err(_) => Ok(known.map_or(TopicMessageType::Mixed, |(t, _)| t)),
        }
    }

    async fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some(c) = lock(&self.channels).get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("name server address {addr}: {e}"))?;
        let ch = tokio::time::timeout(NAMESRV_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| format!("connecting to {addr}: no answer within {NAMESRV_TIMEOUT:?}"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        lock(&self.channels).insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// The route of `topic` as the name servers know it.
    pub async fn route(&self, topic: &str) -> Result<GetRouteResponse, V2Error> {
        let mut last = String::from("no name server configured");
        for addr in &self.addrs {
            let ch = match self.channel(addr).await {
                Ok(ch) => ch,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut client = NameServerClient::new(ch);
            let call = client.get_route(GetRouteRequest {
                topic: topic.to_string(),
            });
            match tokio::time::timeout(NAMESRV_TIMEOUT, call).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let code = r
                        .status
                        .as_ref()
                        .and_then(|s| ErrorCode::try_from(s.code).ok())
                        .unwrap_or(ErrorCode::Internal);
                    return match code {
                        ErrorCode::Ok => {
                            lock(&self.types).insert(
                                topic.to_string(),
                                (topic_type(&r), tokio::time::Instant::now()),
                            );
                            Ok(r)
                        }
                        c => Err(V2Error::new(
                            from_wire(c),
                            r.status.map(|s| s.message).unwrap_or_default(),
                        )),
                    };
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {NAMESRV_TIMEOUT:?}"),
            }
            lock(&self.channels).remove(addr);
        }
        Err(V2Error::new(
            Code::InternalServerError,
            format!("no name server answered: {last}"),
        ))
    }
}

/// What the gateway takes from a consumer group's configuration (`raftmq group create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPolicy {
    /// FIFO consumption (`--fifo true`).
    pub fifo: bool,
    /// Deliveries before a message goes to the group's dead-letter queue: its
    /// `max_reconsume_times` + 1, as RocketMQ 5 counts (the first delivery is attempt 1).
    pub max_attempts: u32,
}

impl Default for GroupPolicy {
    /// A group nobody configured: the broker's default of 16 reconsumptions.
    fn default() -> Self {
        GroupPolicy {
            fifo: false,
            max_attempts: crate::settings::CONSUMER_MAX_ATTEMPTS as u32,
        }
    }
}

impl GroupPolicy {
    fn of(c: &raftmq_proto::v1::ConsumerGroupConfig) -> Self {
        GroupPolicy {
            fifo: c.fifo,
            max_attempts: match c.max_reconsume_times {
                0 => crate::settings::CONSUMER_MAX_ATTEMPTS as u32,
                n => n.saturating_add(1),
            },
        }
    }
}

impl Namesrv {
    /// Consumer group `group`'s policy as the first broker group that knows it says (the
    /// default when none does), from an answer at most [`TOPIC_TYPE_TTL`] old; when no
    /// broker answers, the last policy known, or the default.
    pub async fn group_policy(&self, group: &str) -> GroupPolicy {
        let now = tokio::time::Instant::now();
        let known = lock(&self.policies).get(group).copied();
        if let Some((p, at)) = known
            && now.duration_since(at) < TOPIC_TYPE_TTL
        {
            return p;
        }
        match self.ask_group_policy(group).await {
            Some(p) => {
                lock(&self.policies).insert(group.to_string(), (p, now));
                p
            }
            None => known.map(|(p, _)| p).unwrap_or_default(),
        }
    }

    /// `Some(policy)` once a broker group's leader answered its group list (the default if
    /// the group is not in it); `None` when none answered.
    async fn ask_group_policy(&self, group: &str) -> Option<GroupPolicy> {
        let addr = self.addrs.first()?;
        let ch = self.channel(addr).await.ok()?;
        let mut ns = NameServerClient::new(ch);
        let call = ns.get_cluster_info(raftmq_proto::v1::GetClusterInfoRequest {});
        let info = tokio::time::timeout(NAMESRV_TIMEOUT, call)
            .await
            .ok()?
            .ok()?;
        let mut answered = false;
        for g in info.into_inner().groups {
            if g.leader_addr.is_empty() {
                continue;
            }
            let look = async {
                let mut a = AdminClient::connect(format!("http://{}", g.leader_addr))
                    .await
                    .ok()?;
                let r = a
                    .list_groups(raftmq_proto::v1::ListGroupsRequest {})
                    .await
                    .ok()?
                    .into_inner();
                Some(r.groups.into_iter().find(|c| c.name == group))
            };
            match tokio::time::timeout(NAMESRV_TIMEOUT, look).await {
                Ok(Some(Some(c))) => return Some(GroupPolicy::of(&c)),
                Ok(Some(None)) => answered = true,
                _ => {}
            }
        }
        answered.then(GroupPolicy::default)
    }
}

/// A topic's message type as its route gives it: the type its groups agree on, or `Mixed`
/// (anything accepted) when they disagree — a topic being retyped group by group.
pub fn topic_type(route: &GetRouteResponse) -> TopicMessageType {
    let mut types = route.queues.iter().map(|q| type_of(q.message_type));
    let first = types.next().unwrap_or(TopicMessageType::Mixed);
    if types.all(|t| t == first) {
        first
    } else {
        TopicMessageType::Mixed
    }
}

fn type_of(code: i32) -> TopicMessageType {
    TopicMessageType::try_from(code).unwrap_or(TopicMessageType::Mixed)
}

/// The v2 message types a topic of type `t` accepts (a MIXED topic: the four kinds).
pub fn accepted_types(t: TopicMessageType) -> Vec<MessageType> {
    match t {
        TopicMessageType::Mixed => vec![
            MessageType::Normal,
            MessageType::Fifo,
            MessageType::Delay,
            MessageType::Transaction,
        ],
        TopicMessageType::Normal => vec![MessageType::Normal],
        TopicMessageType::Fifo => vec![MessageType::Fifo],
        TopicMessageType::Delay => vec![MessageType::Delay],
        TopicMessageType::Transaction => vec![MessageType::Transaction],
    }
}

/// The v2 queues of `topic` from its raftmq route, each group's broker reached at `endpoints`.
pub fn queues(
    topic: &Resource,
    route: &GetRouteResponse,
    endpoints: &Endpoints,
) -> Vec<MessageQueue> {
    let mut out = Vec::new();
    for q in &route.queues {
        for id in 0..q.read_queue_nums.max(q.write_queue_nums) {
            let read = q.perm & PERM_READ != 0 && id < q.read_queue_nums;
            let write = q.perm & PERM_WRITE != 0 && id < q.write_queue_nums;
            let permission = match (read, write) {
                (true, true) => Permission::ReadWrite,
                (true, false) => Permission::Read,
                (false, true) => Permission::Write,
                (false, false) => Permission::None,
            };
            out.push(MessageQueue {
                topic: Some(topic.clone()),
                id: id as i32,
                permission: permission as i32,
                broker: Some(Broker {
                    name: q.group.clone(),
                    // Clients use only brokers with id 0 ("no available message queues"
                    // otherwise).
                    id: 0,
                    endpoints: Some(endpoints.clone()),
                }),
                accept_message_types: accepted_types(type_of(q.message_type))
                    .into_iter()
                    .map(|t| t as i32)
                    .collect(),
            });
        }
    }
    out
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_proto::rocketmq::v2::{Address, AddressScheme};
    use raftmq_proto::v1::QueueData;

    #[test]
    fn each_group_is_a_broker_with_id_0_at_the_gateway() {
        let route = GetRouteResponse {
            status: None,
            queues: vec![
                QueueData {
                    group: "g1".into(),
                    read_queue_nums: 2,
                    write_queue_nums: 2,
                    perm: 6,
                    message_type: TopicMessageType::Fifo as i32,
                },
                QueueData {
                    group: "g2".into(),
                    read_queue_nums: 1,
                    write_queue_nums: 2,
                    perm: 6,
                    message_type: TopicMessageType::Fifo as i32,
                },
            ],
            groups: vec![],
        };
        let ep = Endpoints {
            scheme: AddressScheme::IPv4 as i32,
            addresses: vec![Address {
                host: "127.0.0.1".into(),
                port: 8081,
            }],
        };
        let topic = Resource {
            resource_namespace: String::new(),
            name: "T".into(),
        };
        let qs = queues(&topic, &route, &ep);
        assert_eq!(qs.len(), 4);
        assert!(qs.iter().all(|q| q.broker.as_ref().unwrap().id == 0));
        assert_eq!(qs[3].broker.as_ref().unwrap().name, "g2");
        assert_eq!(qs[3].permission, Permission::Write as i32);
        assert_eq!(qs[0].permission, Permission::ReadWrite as i32);
        assert_eq!(qs[0].broker.as_ref().unwrap().endpoints.as_ref(), Some(&ep));
        assert!(
            qs.iter()
                .all(|q| q.accept_message_types == [MessageType::Fifo as i32]),
            "a FIFO topic's queues accept FIFO messages only"
        );
        assert_eq!(topic_type(&route), TopicMessageType::Fifo);
    }

    #[test]
    fn groups_that_disagree_make_a_mixed_topic() {
        let q = |t: TopicMessageType| QueueData {
            group: "g".into(),
            read_queue_nums: 1,
            write_queue_nums: 1,
            perm: 6,
            message_type: t as i32,
        };
        let route = |qs| GetRouteResponse {
            status: None,
            queues: qs,
            groups: vec![],
        };
        use TopicMessageType::*;
        assert_eq!(topic_type(&route(vec![q(Delay), q(Delay)])), Delay);
        assert_eq!(topic_type(&route(vec![q(Delay), q(Normal)])), Mixed);
        assert_eq!(topic_type(&route(vec![])), Mixed);
        assert_eq!(accepted_types(Mixed).len(), 4);
        assert_eq!(accepted_types(Transaction), [MessageType::Transaction]);
    }
}
