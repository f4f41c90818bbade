//! Options the client builders share, declared, defaulted and checked once.
//!
//! - [`ClientOptions`]: what the producer, the push consumer and the pull consumer all take —
//!   the name servers and the group — and the [`Routes`] made from them.
//! - [`ConsumeOptions`]: what both consumers take — where a queue without a committed offset
//!   starts, and how many messages one pull brings.
//! - [`SendOptions`]: what both producers (plain and transactional) take — how long a send
//!   may take and how often it is retried.
//!
//! Each builder holds them (fields `opts`, `consume`, `send`) and gets their setters from
//! [`client_setters!`], [`consume_setters!`] and [`send_setters!`]: inherent methods, so
//! callers need no trait in scope, with doc examples written for the builder they are generated
//! into.

use std::time::Duration;

use raftmq_proto::limits::{PULL_MESSAGES_DEFAULT, PULL_MESSAGES_MAX, check_name};

use crate::error::ClientError;
use crate::policy::offsets::ConsumeFrom;
use crate::route::Routes;

/// Default time a sync send may take, retries included.
///
/// ```
/// assert_eq!(raftmq_client::producer::SEND_TIMEOUT_DEFAULT.as_secs(), 10);
/// ```
pub const SEND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default retries of a failed sync send on another queue.
///
/// ```
/// assert_eq!(raftmq_client::producer::RETRIES_DEFAULT, 2);
/// ```
pub const RETRIES_DEFAULT: u32 = 2;

/// A client id for a builder not given one: the process id and a fresh unique id, so two
/// clients of one process differ. A valid name (`check_name`): brokers check the id a client
/// channel's hello carries.
pub(crate) fn default_client_id() -> String {
    format!("{}-{}", std::process::id(), crate::msg_id::new_msg_id())
}

/// The name servers and the group.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientOptions {
    /// Name server addresses (`host:port`); at least one.
    pub namesrv_addrs: Vec<String>,
    /// The producer or consumer group.
    pub group: String,
}

impl ClientOptions {
    /// Checks the settings; `kind` names the group in errors ("producer", "consumer").
    pub(crate) fn validate(&self, kind: &str) -> Result<(), ClientError> {
        if self.namesrv_addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "at least one name server address".into(),
            ));
        }
        check_name(&format!("{kind} group"), &self.group)
            .map_err(|e| ClientError::InvalidArgument(e.message))
    }

    /// Routes and connections over these name servers, starting at one picked by the process
    /// id (so a fleet of clients spreads over the name servers).
    pub(crate) fn routes(&self) -> Routes {
        let start = std::process::id() as usize % self.namesrv_addrs.len().max(1);
        Routes::new(self.namesrv_addrs.clone(), start)
    }
}

/// Where a new group starts, and the messages per pull.
#[derive(Debug, Clone)]
pub(crate) struct ConsumeOptions {
    pub from: ConsumeFrom,
    /// Messages per pull, at most: `1..=PULL_MESSAGES_MAX`.
    pub pull_batch_size: u32,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            from: ConsumeFrom::default(),
            pull_batch_size: PULL_MESSAGES_DEFAULT,
        }
    }
}

impl ConsumeOptions {
    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if !(1..=PULL_MESSAGES_MAX).contains(&self.pull_batch_size) {
            return Err(ClientError::InvalidArgument(format!(
                "pull_batch_size {} is not in 1..={PULL_MESSAGES_MAX}",
                self.pull_batch_size
            )));
        }
        Ok(())
    }
}

/// How long a send may take and how often it is retried.
#[derive(Debug, Clone)]
pub(crate) struct SendOptions {
    /// The time one send may take, retries included; positive.
    pub send_timeout: Duration,
    /// Retries of a failed send on another queue (ordered sends: until the timeout).
    pub retries: u32,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            send_timeout: SEND_TIMEOUT_DEFAULT,
            retries: RETRIES_DEFAULT,
        }
    }
}

impl SendOptions {
    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.send_timeout.is_zero() {
            return Err(ClientError::InvalidArgument(
                "send_timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The setters of [`ClientOptions`], for a builder with a field `opts: ClientOptions`.
///
/// `$kind` names the group in the docs ("producer", "consumer"); `$base` is the source of an
/// expression making a builder of that type that is valid apart from its name servers (for
/// the doc examples).
macro_rules! client_setters {
    ($kind:literal, $base:literal) => {
        /// The name servers: one is picked at start, the next on each failure.
        ///
        /// ```
        #[doc = concat!("let b = ", $base, ";")]
        /// assert!(b.clone().build().is_err(), "a name server is required");
        /// assert!(b.namesrv_addrs(["10.0.0.1:9876", "10.0.0.2:9876"]).build().is_ok());
        /// ```
        pub fn namesrv_addrs<I, S>(mut self, addrs: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.opts.namesrv_addrs = addrs.into_iter().map(Into::into).collect();
            self
        }

        #[doc = concat!("The ", $kind, " group (`[A-Za-z0-9_%|-]`, 1 to 127 bytes).")]
        ///
        /// ```
        #[doc = concat!("let b = ", $base, ".namesrv_addrs([\"127.0.0.1:9876\"]);")]
        /// assert!(b.clone().group("orders-2").build().is_ok());
        /// assert!(b.group("bad group").build().is_err());
        /// ```
        pub fn group(mut self, group: impl Into<String>) -> Self {
            self.opts.group = group.into();
            self
        }
    };
}
pub(crate) use client_setters;

/// The setters of [`ConsumeOptions`], for a builder with a field `consume: ConsumeOptions`;
/// `$base` as for [`client_setters!`], but valid as it is.
macro_rules! consume_setters {
    ($base:literal) => {
        /// Where a queue without a committed offset starts (default: last, i.e. only messages
        /// arriving from now on).
        ///
        /// ```
        /// use raftmq_client::consumer::ConsumeFrom;
        #[doc = concat!("let b = ", $base, ";")]
        /// assert!(b.clone().consume_from(ConsumeFrom::First).build().is_ok());
        /// assert!(b.consume_from(ConsumeFrom::Timestamp(1_700_000_000_000)).build().is_ok());
        /// ```
        pub fn consume_from(mut self, from: $crate::policy::offsets::ConsumeFrom) -> Self {
            self.consume.from = from;
            self
        }

        /// Messages per pull, at most (default 32, at most 1024). A push consumer pulls a
        /// queue again only after its listener took the last pull, so this is also the most
        /// it holds per queue.
        ///
        /// ```
        #[doc = concat!("let b = ", $base, ";")]
        /// assert!(b.clone().pull_batch_size(64).build().is_ok());
        /// assert!(b.clone().pull_batch_size(0).build().is_err());
        /// assert!(b.pull_batch_size(2000).build().is_err());
        /// ```
        pub fn pull_batch_size(mut self, n: u32) -> Self {
            self.consume.pull_batch_size = n;
            self
        }
    };
}
pub(crate) use consume_setters;

/// The setters of [`SendOptions`], for a builder with a field `send: SendOptions`; `$base` as
/// for [`client_setters!`], but valid as it is.
macro_rules! send_setters {
    ($base:literal) => {
        /// How long a send may take, retries included (default 10 s).
        ///
        /// ```
        /// use std::time::Duration;
        #[doc = concat!("let b = ", $base, ";")]
        /// assert!(b.clone().send_timeout(Duration::from_secs(3)).build().is_ok());
        /// assert!(b.send_timeout(Duration::ZERO).build().is_err(), "must be positive");
        /// ```
        pub fn send_timeout(mut self, t: std::time::Duration) -> Self {
            self.send.send_timeout = t;
            self
        }

        /// Retries of a failed send on another queue (default 2; never for ordered sends,
        /// which retry their one queue until the send timeout).
        ///
        /// ```
        #[doc = concat!("let b = ", $base, ";")]
        /// assert!(b.retries(0).build().is_ok());
        /// ```
        pub fn retries(mut self, n: u32) -> Self {
            self.send.retries = n;
            self
        }
    };
}
pub(crate) use send_setters;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_servers_and_a_valid_group_are_required() {
        let ok = ClientOptions {
            namesrv_addrs: vec!["a:1".into()],
            group: "G".into(),
        };
        assert!(ok.validate("producer").is_ok());
        let no_ns = ClientOptions {
            namesrv_addrs: Vec::new(),
            ..ok.clone()
        };
        assert!(no_ns.validate("producer").is_err());
        let bad = ClientOptions {
            group: "a b".into(),
            ..ok
        };
        let Err(ClientError::InvalidArgument(m)) = bad.validate("consumer") else {
            panic!("a bad group name is refused");
        };
        assert!(m.contains("consumer group"), "{m}");
    }

    #[test]
    fn a_send_timeout_must_be_positive() {
        let mut s = SendOptions::default();
        assert_eq!(s.send_timeout, SEND_TIMEOUT_DEFAULT);
        assert!(s.validate().is_ok());
        s.send_timeout = Duration::ZERO;
        assert!(s.validate().is_err());
    }

    #[test]
    fn default_client_ids_differ_and_are_valid_names() {
        let id = default_client_id();
        assert_ne!(id, default_client_id());
        assert!(check_name("client id", &id).is_ok(), "{id}");
    }

    #[test]
    fn pull_batch_size_is_bounded() {
        let mut c = ConsumeOptions::default();
        assert_eq!(c.pull_batch_size, 32);
        assert!(c.validate().is_ok());
        c.pull_batch_size = 0;
        assert!(c.validate().is_err());
        c.pull_batch_size = PULL_MESSAGES_MAX + 1;
        let Err(ClientError::InvalidArgument(m)) = c.validate() else {
            panic!("too large");
        };
        assert!(m.contains("1025"), "the error carries the number: {m}");
    }
}
