//! The broker's configuration: one TOML file per replica, every field documented here and
//! validated at start ([`BrokerConfig::validate`]) with errors that carry the numbers.
//!
//! ```toml
//! cluster = "DefaultCluster"          # the cluster this group belongs to
//! group = "g1"                        # the broker group (one Raft group)
//! replica_id = 1                      # this replica's id in the group (≥ 1)
//! listen = "127.0.0.1:10911"          # gRPC: Messaging, Admin and Raft on one port
//! data_dir = "./data/g1-1"            # this replica's own directory
//! namesrv_addrs = ["127.0.0.1:9876"]  # every name server (registered with all of them)
//! auto_create_topics = false          # create unknown topics on first send (4 queues)
//! flush = "sync"                      # "sync" (ack after fsync) or "async"
//! flush_interval_ms = 500             # with "async": the background sync's period
//! segment_mib = 1024                  # CommitLog segment size (same on every replica)
//! index_max_entries = 20000000        # keys per IndexFile (RocketMQ's maxIndexNum)
//! index_hash_slots = 5000000          # hash slots per IndexFile (maxHashSlotNum)
//! file_reserved_hours = 72            # retention: delete segments older than this
//! client_expire_ms = 30000            # drop a consumer member silent this long
//!
//! [initial_members]                   # the group's first voters: replica id = address
//! 1 = "127.0.0.1:10911"               # (odd count; the lowest id forms the group)
//! 2 = "127.0.0.1:10912"
//! 3 = "127.0.0.1:10913"
//!
//! [raft]                              # optional; these are the defaults
//! heartbeat_ms = 60
//! election_min_ms = 300
//! election_max_ms = 600
//!
//! [transaction]                       # optional; these are the defaults
//! timeout_ms = 6000                   # first check of an undecided transaction this long after its half message
//! check_interval_ms = 60000           # then a check this often
//! max_checks = 15                     # then roll it back ("check limit")
//! scan_interval_ms = 1000             # how often the leader's checker looks for due checks
//!
//! [timer]                             # optional; these are the defaults (docs/timers.md)
//! delay_levels = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
//! max_delay_ms = 259200000            # 3 days: a later delivery time is refused
//! scan_interval_ms = 100              # how often the leader's scheduler looks for due timers
//! batch = 256                         # most messages one delivery entry carries
//! retry_backoff = "10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"  # by attempt
//! max_reconsume_times = 16            # attempts before the DLQ, unless the consumer says
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use raftmq_raft::replica::RETENTION_INTERVAL_MS_DEFAULT;
use raftmq_raft::{BatchLimits, RaftTimeouts, ReplicaConfig};
use raftmq_store::{FlushMode, StoreConfig};
use serde::Deserialize;

/// Queues of an auto-created topic.
pub const AUTO_CREATE_QUEUES: u32 = 4;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Flush mode as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    #[default]
    Sync,
    Async,
}

/// Raft timing as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        let t = RaftTimeouts::default();
        Self {
            heartbeat_ms: t.heartbeat_ms,
            election_min_ms: t.election_min_ms,
            election_max_ms: t.election_max_ms,
        }
    }
}

/// The transaction checker's settings as written in the file (docs/transactions.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionSection {
    /// An undecided transaction is first checked this long after its half message was stored.
    pub timeout_ms: u64,
    /// Then checked again this often.
    pub check_interval_ms: u64,
    /// Checks sent before the transaction is rolled back (reason "check limit").
    pub max_checks: u32,
    /// How often the leader's checker looks for due checks.
    pub scan_interval_ms: u64,
}

impl Default for TransactionSection {
    fn default() -> Self {
        Self {
            timeout_ms: 6_000,
            check_interval_ms: 60_000,
            max_checks: 15,
            scan_interval_ms: 1_000,
        }
    }
}

/// The timer scheduler's and retry's settings as written in the file (docs/timers.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimerSection {
    /// Delay levels 1..=N, as durations separated by spaces ("1s 5s 10s … 2h").
    pub delay_levels: String,
    /// The longest delay accepted, from the broker's clock at send.
    pub max_delay_ms: u64,
    /// How often the leader's scheduler looks for due timers.
    pub scan_interval_ms: u64,
    /// Most messages one delivery entry carries.
    pub batch: usize,
    /// The retry delay after attempt 1, 2, …; the last repeats.
    pub retry_backoff: String,
    /// Attempts before a message goes to its group's DLQ, for consumers that do not say.
    pub max_reconsume_times: u32,
}

impl Default for TimerSection {
    fn default() -> Self {
        Self {
            delay_levels: "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".into(),
            max_delay_ms: 3 * 24 * 3_600_000,
            scan_interval_ms: 100,
            batch: 256,
            retry_backoff: "10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".into(),
            max_reconsume_times: 16,
        }
    }
}

/// Parses "1s 5s 1m 2h 500ms" into milliseconds.
pub fn parse_durations(s: &str) -> Result<Vec<u64>, String> {
    s.split_whitespace()
        .map(|d| {
            let (num, unit) = d
                .find(|c: char| !c.is_ascii_digit())
                .map_or((d, ""), |i| d.split_at(i));
            let n: u64 = num
                .parse()
                .map_err(|_| format!("{d:?} is not a duration"))?;
            let scale = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(format!("{d:?}: unit must be ms, s, m, h or d")),
            };
            n.checked_mul(scale)
                .ok_or_else(|| format!("{d:?} overflows"))
        })
        .collect()
}

fn default_cluster() -> String {
    "DefaultCluster".into()
}
fn default_segment_mib() -> u64 {
    1024
}
fn default_flush_interval_ms() -> u64 {
    500
}
fn default_reserved_hours() -> u64 {
    72
}
fn default_index_max_entries() -> u32 {
    StoreConfig::default().index_max_entries
}
fn default_index_hash_slots() -> u32 {
    StoreConfig::default().index_slots
}

/// A client not heard from for this long is dropped, by default: three heartbeats of the
/// SDK's default interval (10 s). RocketMQ waits 120 s but also sees a crashed client's
/// connection close at once; over gRPC the heartbeat is the only sign, so a crashed member's
/// queues go to the others after this long. Broker setting `client_expire_ms`.
pub const CLIENT_EXPIRE_MS: u64 = 30_000;

fn default_client_expire_ms() -> u64 {
    CLIENT_EXPIRE_MS
}

/// One replica's configuration; see the module docs for the file format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub group: String,
    pub replica_id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub namesrv_addrs: Vec<String>,
    #[serde(default)]
    pub auto_create_topics: bool,
    #[serde(default)]
    pub flush: Flush,
    /// With `flush = "async"`: how often the background sync runs (RocketMQ's
    /// `flushIntervalCommitLog`).
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default = "default_segment_mib")]
    pub segment_mib: u64,
    #[serde(default = "default_reserved_hours")]
    pub file_reserved_hours: u64,
    /// Keys per IndexFile; a file takes 24 bytes per key and 4 per slot, zero-filled when
    /// made (the defaults: 500 MB).
    #[serde(default = "default_index_max_entries")]
    pub index_max_entries: u32,
    /// Hash slots per IndexFile.
    #[serde(default = "default_index_hash_slots")]
    pub index_hash_slots: u32,
    /// A client (consumer member) silent this long is dropped from its groups and loses its
    /// queue locks; its queues then go to the others.
    #[serde(default = "default_client_expire_ms")]
    pub client_expire_ms: u64,
    /// Replica id → address of the group's first voters (keys are strings in TOML).
    pub initial_members: BTreeMap<String, String>,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub transaction: TransactionSection,
    #[serde(default)]
    pub timer: TimerSection,
    /// Not in the file: test hook for smaller segments (bytes; overrides `segment_mib`).
    #[serde(skip)]
    pub segment_bytes_override: Option<u64>,
    /// Not in the file: deliberate bugs for the simulator's mutation checks.
    #[serde(skip)]
    pub mutations: raftmq_raft::Mutations,
}

impl BrokerConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let c = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(c)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let c: BrokerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// The initial voters with numeric ids.
    pub fn members(&self) -> Result<BTreeMap<u64, String>, ConfigError> {
        self.initial_members
            .iter()
            .map(|(k, v)| {
                k.parse::<u64>().map(|id| (id, v.clone())).map_err(|_| {
                    ConfigError::Invalid(format!("initial_members key {k:?} is not a replica id"))
                })
            })
            .collect()
    }

    /// Checks every field; the replica's own checks run too ([`ReplicaConfig::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (what, name) in [("cluster", &self.cluster), ("group", &self.group)] {
            if let Err(e) = raftmq_proto::limits::check_name(what, name) {
                return bad(e.message);
            }
        }
        if self.replica_id == 0 {
            return bad("replica_id must be ≥ 1".into());
        }
        for (key, value, max) in [
            (
                "index_max_entries",
                self.index_max_entries,
                raftmq_store::indexfile::ENTRIES_MAX,
            ),
            (
                "index_hash_slots",
                self.index_hash_slots,
                raftmq_store::indexfile::SLOTS_MAX,
            ),
        ] {
            if value == 0 || value > max {
                return bad(format!("{key} must be in 1..={max}, got {value}"));
            }
        }
        if self.client_expire_ms < 1000 {
            return bad(format!(
                "client_expire_ms must be ≥ 1000 (several client heartbeats), got {}",
                self.client_expire_ms
            ));
        }
        let members = self.members()?;
        if members.is_empty() || members.len().is_multiple_of(2) {
            return bad(format!(
                "initial_members needs an odd number of replicas, got {}",
                members.len()
            ));
        }
        if members.contains_key(&0) {
            return bad("replica id 0 in initial_members".into());
        }
        if self.segment_mib == 0 || self.segment_mib > 16 * 1024 {
            return bad(format!(
                "segment_mib must be 1..=16384, got {}",
                self.segment_mib
            ));
        }
        let t = &self.transaction;
        if t.check_interval_ms < 100 || t.scan_interval_ms < 10 || t.max_checks == 0 {
            return bad(format!(
                "transaction: check_interval_ms must be ≥ 100 (got {}), scan_interval_ms ≥ 10 (got {}), max_checks ≥ 1 (got {})",
                t.check_interval_ms, t.scan_interval_ms, t.max_checks
            ));
        }
        let tm = &self.timer;
        let levels = parse_durations(&tm.delay_levels)
            .map_err(|e| ConfigError::Invalid(format!("timer.delay_levels: {e}")))?;
        let backoff = parse_durations(&tm.retry_backoff)
            .map_err(|e| ConfigError::Invalid(format!("timer.retry_backoff: {e}")))?;
        if levels.is_empty() || levels.len() > 64 || backoff.is_empty() {
            return bad(format!(
                "timer: 1 to 64 delay_levels (got {}) and at least one retry_backoff",
                levels.len()
            ));
        }
        if let Some(d) = levels
            .iter()
            .chain(&backoff)
            .find(|d| **d > tm.max_delay_ms)
        {
            return bad(format!(
                "timer: a delay of {d} ms is past max_delay_ms {}",
                tm.max_delay_ms
            ));
        }
        if tm.scan_interval_ms < 10
            || tm.batch == 0
            || tm.batch > 4096
            || tm.max_reconsume_times == 0
        {
            return bad(format!(
                "timer: scan_interval_ms must be ≥ 10 (got {}), batch 1..=4096 (got {}), max_reconsume_times ≥ 1",
                tm.scan_interval_ms, tm.batch
            ));
        }
        if self.file_reserved_hours == 0 {
            return bad("file_reserved_hours must be ≥ 1".into());
        }
        for a in &self.namesrv_addrs {
            if a.parse::<SocketAddr>().is_err() {
                return bad(format!("namesrv address {a:?} is not host:port"));
            }
        }
        self.replica_config()
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The replica's configuration derived from this file.
    pub fn replica_config(&self) -> ReplicaConfig {
        let mut store = StoreConfig::default();
        store.segment_bytes = self
            .segment_bytes_override
            .unwrap_or(self.segment_mib << 20);
        store.max_record_bytes = store.max_record_bytes.min(store.segment_bytes / 2);
        store.flush_mode = match self.flush {
            Flush::Sync => FlushMode::Sync,
            Flush::Async => FlushMode::Async,
        };
        store.flush_interval_ms = self.flush_interval_ms;
        store.file_reserved_time_ms = self.file_reserved_hours * 3_600_000;
        store.index_max_entries = self.index_max_entries;
        store.index_slots = self.index_hash_slots;
        // One group-commit entry may fill a whole record: any request within the wire limits
        // fits (a 4 MiB body plus its encoding), and the broker answers MESSAGE_TOO_LARGE for
        // one that does not.
        let mut batch = BatchLimits::default();
        let record_room = store
            .max_record_bytes
            .saturating_sub(4 + raftmq_store::commitlog::record::HEADER_LEN as u64);
        batch.max_bytes = record_room as usize;
        ReplicaConfig {
            group: self.group.clone(),
            node_id: self.replica_id,
            store,
            timeouts: RaftTimeouts {
                heartbeat_ms: self.raft.heartbeat_ms,
                election_min_ms: self.raft.election_min_ms,
                election_max_ms: self.raft.election_max_ms,
            },
            batch,
            retention_interval_ms: RETENTION_INTERVAL_MS_DEFAULT,
            mutations: self.mutations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
group = "g1"
replica_id = 2
listen = "127.0.0.1:10912"
data_dir = "/tmp/x"
namesrv_addrs = ["127.0.0.1:9876"]
[initial_members]
1 = "127.0.0.1:10911"
2 = "127.0.0.1:10912"
3 = "127.0.0.1:10913"
"#;

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let c = BrokerConfig::parse(GOOD).unwrap();
        assert_eq!(c.cluster, "DefaultCluster");
        assert_eq!(c.flush, Flush::Sync);
        assert_eq!(c.members().unwrap().len(), 3);
        assert_eq!(c.replica_config().store.segment_bytes, 1 << 30);
        assert_eq!(
            c.replica_config().store.index_max_entries,
            StoreConfig::default().index_max_entries
        );
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start().to_string() + "\n")
            .collect();
        let c = BrokerConfig::parse(&example).unwrap();
        assert_eq!(c.replica_id, 1);
    }

    #[test]
    fn bad_configurations_are_refused_with_numbers() {
        let cases = [
            (
                GOOD.replace("replica_id = 2", "replica_id = 0"),
                "replica_id",
            ),
            (GOOD.replace("3 = \"127.0.0.1:10913\"\n", ""), "odd"),
            (GOOD.replace("group = \"g1\"", "group = \"g 1\""), "group"),
            (
                GOOD.replace("[initial_members]", "segment_mib = 0\n[initial_members]"),
                "segment_mib",
            ),
            (
                GOOD.replace("[initial_members]", "colour = 1\n[initial_members]"),
                "colour",
            ),
            (
                GOOD.replace(
                    "[initial_members]",
                    "index_max_entries = 0\n[initial_members]",
                ),
                "index_max_entries",
            ),
            (
                GOOD.replace(
                    "[initial_members]",
                    "index_hash_slots = 999999999\n[initial_members]",
                ),
                "index_hash_slots must be in 1..=16777216, got 999999999",
            ),
            (GOOD.replace("9876\"]", "9876\", \"nope\"]"), "nope"),
            (
                GOOD.replace(
                    "[initial_members]",
                    "[transaction]\nmax_checks = 0\n[initial_members]",
                ),
                "max_checks",
            ),
            (
                GOOD.replace(
                    "[initial_members]",
                    "[raft]\nheartbeat_ms = 500\n[initial_members]",
                ),
                "heartbeat",
            ),
        ];
        for (text, needle) in cases {
            let e = BrokerConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
