//! Transactional messages for RocketMQ 5 clients. The client decides, not the gateway: a
//! TRANSACTION send stores a half message through an SDK `TransactionProducer` whose local
//! transaction answers `Unknown` at once, and answers `transaction_id` = the half's offset msg
//! id (it names the broker group and the half's position). EndTransaction turns that back into
//! the half and commits or rolls it back. The broker's check of an orphaned half reaches the
//! gateway's producer (producer group = the topic, as Apache's proxy does) and is relayed as a
//! `RecoverOrphanedTransactionCommand` on the Telemetry stream of a live client that publishes
//! the topic; the check itself is answered `Unknown`, and the client's EndTransaction (source
//! SERVER_CHECK) decides before the next check.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use raftmq_client::consumer::ReceivedMessage;
use raftmq_client::rebalance::MessageQueue;
use raftmq_client::{
    LocalTransactionState, Message, SendResult, TransactionListener, TransactionProducer,
};
use raftmq_proto::rocketmq::v2::{
    self as v2, Code, RecoverOrphanedTransactionCommand, Resource, SystemProperties,
    TelemetryCommand, telemetry_command,
};

use crate::codes::V2Error;
use crate::routes::lock;
use crate::sessions::Sessions;

/// Relays a broker's check to a client publishing the topic.
struct Relay {
    sessions: Arc<Sessions>,
}

impl TransactionListener for Relay {
    fn execute_local(
        &self,
        _msg: &Message,
        _arg: &(dyn Any + Send + Sync),
    ) -> LocalTransactionState {
        // The client runs its own local transaction and ends it with EndTransaction.
        LocalTransactionState::Unknown
    }

    fn check_local(&self, msg: &ReceivedMessage) -> LocalTransactionState {
        let cmd = TelemetryCommand {
            status: None,
            command: Some(
                telemetry_command::Command::RecoverOrphanedTransactionCommand(
                    RecoverOrphanedTransactionCommand {
                        message: Some(orphan(msg)),
                        transaction_id: msg.offset_msg_id.clone(),
                    },
                ),
            ),
        };
        if !self.sessions.push_to_publisher(&msg.topic, cmd) {
            tracing::debug!(topic = %msg.topic, "no live client publishes the topic: the check waits for the next");
        }
        LocalTransactionState::Unknown
    }
}

/// The half message as the client's checker sees it.
fn orphan(m: &ReceivedMessage) -> v2::Message {
    v2::Message {
        topic: Some(Resource {
            resource_namespace: String::new(),
            name: m.topic.clone(),
        }),
        user_properties: m
            .properties
            .iter()
            .filter(|(k, _)| !crate::send::RESERVED_PROPERTIES.contains(&k.as_str()))
            .filter(|(k, _)| k.as_str() != "TRANSACTION_CHECK_TIMES")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        system_properties: Some(SystemProperties {
            tag: (!m.tags.is_empty()).then(|| m.tags.clone()),
            keys: m.keys.clone(),
            message_id: m.msg_id.clone(),
            message_type: v2::MessageType::Transaction as i32,
            queue_id: m.queue.queue_id as i32,
            // Clients refuse a message whose encoding is unspecified.
            body_encoding: if m
                .properties
                .get(crate::send::PROPERTY_BODY_ENCODING)
                .is_some_and(|e| e == "GZIP")
            {
                v2::Encoding::Gzip
            } else {
                v2::Encoding::Identity
            } as i32,
            body_digest: Some(v2::Digest {
                r#type: v2::DigestType::Md5 as i32,
                checksum: crate::receive::md5_upper_hex(&m.body),
            }),
            ..Default::default()
        }),
        body: m.body.clone(),
    }
}

/// One transactional producer per topic (its producer group), made on first use.
pub struct Transactions {
    namesrv: Vec<String>,
    sessions: Arc<Sessions>,
    producers: Mutex<BTreeMap<String, Arc<TransactionProducer>>>,
}

impl Transactions {
    pub fn new(namesrv: Vec<String>, sessions: Arc<Sessions>) -> Self {
        Transactions {
            namesrv,
            sessions,
            producers: Mutex::default(),
        }
    }

    /// The producer of `topic`'s group, started (connected to the groups holding the topic,
    /// so that checks of halves an earlier gateway stored reach it).
    pub async fn producer(&self, topic: &str) -> Result<Arc<TransactionProducer>, V2Error> {
        if let Some(p) = lock(&self.producers).get(topic) {
            return Ok(p.clone());
        }
        let p = TransactionProducer::builder()
            .namesrv_addrs(self.namesrv.iter().cloned())
            .group(topic)
            .topics([topic])
            .listener(Relay {
                sessions: self.sessions.clone(),
            })
            .build()
            .map_err(V2Error::from)?;
        p.start().await.map_err(V2Error::from)?;
        let p = Arc::new(p);
        let kept = {
            let mut ps = lock(&self.producers);
            ps.entry(topic.to_string()).or_insert(p.clone()).clone()
        };
        if !Arc::ptr_eq(&kept, &p) {
            p.shutdown().await;
        }
        Ok(kept)
    }

    /// Stores `msg` as a half message; the transaction id.
    pub async fn send_half(&self, msg: Message) -> Result<String, V2Error> {
        let p = self.producer(msg.topic()).await?;
        let r = p
            .send_in_transaction(msg, &())
            .await
            .map_err(V2Error::from)?;
        Ok(r.half.offset_msg_id)
    }

    /// Commits or rolls back the transaction `transaction_id` of message `message_id`.
    pub async fn end(
        &self,
        topic: &str,
        message_id: &str,
        transaction_id: &str,
        commit: bool,
    ) -> Result<(), V2Error> {
        let group = transaction_id
            .get(16..)
            .filter(|g| {
                !g.is_empty() && transaction_id[..16].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .ok_or_else(|| {
                V2Error::new(
                    Code::InvalidTransactionId,
                    format!("transaction id {transaction_id:?} is not one of ours"),
                )
            })?;
        let half = SendResult {
            msg_id: message_id.to_string(),
            offset_msg_id: transaction_id.to_string(),
            queue: MessageQueue::new(topic, group, 0),
            queue_offset: u64::MAX,
            recall_handle: None,
            deliver_at_ms: None,
        };
        let p = self.producer(topic).await?;
        match p.end_transaction(&half, commit).await {
            Ok(_) => Ok(()),
            // Decided this way already (a retried end, or the check's answer came first).
            Err(e) if e.code() == Some(raftmq_proto::ErrorCode::TxnAlreadyDecided) => Ok(()),
            Err(e) => Err(V2Error::from(e)),
        }
    }

    pub async fn shutdown(&self) {
        let ps: Vec<_> = std::mem::take(&mut *lock(&self.producers))
            .into_values()
            .collect();
        for p in ps {
            p.shutdown().await;
        }
    }
}
