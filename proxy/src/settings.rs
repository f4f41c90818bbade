//! The settings a client writes on its Telemetry stream, merged with the values the server
//! owns, echoed back with status OK. Clients act on the echo: a Python producer takes its body
//! limit from it (0 would refuse every send), a Java producer needs an exponential backoff, a
//! Python push consumer its long-polling timeout; without status OK a Python push consumer
//! fails its start.

use std::time::Duration;

use raftmq_proto::limits::BODY_MAX;

use crate::routes::GroupPolicy;
use raftmq_proto::rocketmq::v2::{
    CustomizedBackoff, ExponentialBackoff, Metric, RetryPolicy, Settings, retry_policy, settings,
};

/// How often a producer tries one send (the first try included).
pub const PRODUCER_MAX_ATTEMPTS: i32 = 3;
/// Most messages a push consumer asks for in one receive.
pub const RECEIVE_BATCH_SIZE: i32 = 32;
/// How long a receive may wait for messages.
pub const LONG_POLLING_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a message is delivered before it goes to the dead-letter queue, for a group with
/// the default configuration (16 reconsumptions).
pub const CONSUMER_MAX_ATTEMPTS: i32 = 17;
/// The redelivery delays after a failed consumption (RocketMQ's, from 1 s to 2 h).
pub const CONSUMER_BACKOFF_S: [u64; 18] = [
    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
];

/// The settings the server answers to `client`'s: the client's own, with every server-owned
/// value set (`group`: the consumer group's configuration, for a consumer). `None` when they
/// say neither what it publishes nor what it subscribes to (a malformed settings write).
pub fn merge(client: &Settings, group: GroupPolicy) -> Option<Settings> {
    let mut s = client.clone();
    match s.pub_sub.as_mut()? {
        settings::PubSub::Publishing(p) => {
            p.max_body_size = BODY_MAX as i32;
            p.validate_message_type = true;
            s.backoff_policy = Some(RetryPolicy {
                max_attempts: PRODUCER_MAX_ATTEMPTS,
                strategy: Some(retry_policy::Strategy::ExponentialBackoff(
                    ExponentialBackoff {
                        initial: Some(duration(Duration::from_millis(10))),
                        max: Some(duration(Duration::from_secs(1))),
                        multiplier: 2.0,
                    },
                )),
            });
        }
        settings::PubSub::Subscription(sub) => {
            // From the group's configuration, never from the client.
            sub.fifo = Some(group.fifo);
            sub.receive_batch_size = Some(RECEIVE_BATCH_SIZE);
            sub.long_polling_timeout = Some(duration(LONG_POLLING_TIMEOUT));
            s.backoff_policy = Some(RetryPolicy {
                max_attempts: group.max_attempts.min(i32::MAX as u32) as i32,
                strategy: Some(retry_policy::Strategy::CustomizedBackoff(
                    CustomizedBackoff {
                        next: CONSUMER_BACKOFF_S
                            .iter()
                            .map(|s| duration(Duration::from_secs(*s)))
                            .collect(),
                    },
                )),
            });
        }
    }
    s.metric = Some(Metric {
        on: false,
        endpoints: None,
    });
    Some(s)
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_proto::rocketmq::v2::{ClientType, Publishing, Subscription};

    #[test]
    fn producer_settings_get_the_body_limit_and_a_backoff() {
        let c = Settings {
            client_type: Some(ClientType::Producer as i32),
            pub_sub: Some(settings::PubSub::Publishing(Publishing::default())),
            ..Default::default()
        };
        let s = merge(&c, GroupPolicy::default()).expect("publishing");
        let Some(settings::PubSub::Publishing(p)) = &s.pub_sub else {
            panic!("publishing kept")
        };
        assert_eq!(p.max_body_size, BODY_MAX as i32);
        assert!(matches!(
            s.backoff_policy.and_then(|b| b.strategy),
            Some(retry_policy::Strategy::ExponentialBackoff(_))
        ));
        assert_eq!(s.client_type, c.client_type);
    }

    #[test]
    fn consumer_settings_get_polling_and_backoff_and_no_settings_is_refused() {
        let c = Settings {
            pub_sub: Some(settings::PubSub::Subscription(Subscription::default())),
            ..Default::default()
        };
        let group = GroupPolicy {
            fifo: true,
            max_attempts: 3,
        };
        let s = merge(&c, group).expect("subscription");
        let Some(settings::PubSub::Subscription(sub)) = &s.pub_sub else {
            panic!("subscription kept")
        };
        assert_eq!(
            sub.long_polling_timeout.as_ref().map(|d| d.seconds),
            Some(20)
        );
        assert_eq!(sub.receive_batch_size, Some(RECEIVE_BATCH_SIZE));
        assert_eq!(sub.fifo, Some(true));
        assert_eq!(
            s.backoff_policy.map(|b| b.max_attempts),
            Some(3),
            "the group's maximum attempts"
        );
        assert!(merge(&Settings::default(), GroupPolicy::default()).is_none());
    }
}
