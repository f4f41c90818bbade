//! Consumer group configurations, replicated like topics: how many times a message is handed
//! back before it goes to the dead-letter queue, the retry backoff, where a new group starts.
//!
//! # Table (MetaStore)
//! `groups`: group name → record (little-endian):
//!
//! | size   | field |
//! |--------|-------|
//! | 1      | version = 1 |
//! | 4      | `max_reconsume_times` (0: the broker's default) |
//! | 1      | `consume_from`: 0 last, 1 first |
//! | 2      | `n`, the number of backoff steps (≤ [`MAX_BACKOFF_STEPS`]) |
//! | 8 × n  | backoff of retry `i + 1`, in ms (`n` = 0: the broker's default) |
//! | 1      | version 2 only: flags, bit 0 `fifo` (other bits zero) |
//!
//! A group without flags is written as version 1 (as before flags existed).
//!
//! A record that does not parse (bad version, bad length, too many steps, unknown
//! `consume_from`) is reported as malformed, never guessed at.

use redb::{ReadableTable, TableDefinition};

use crate::codec::{PutLe, Reader};
use crate::error::{Result, StoreError};
use crate::meta::{MetaStore, MetaTxn, meta_err};

const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const VERSION: u8 = 1;
/// The version with a flags byte.
const VERSION_FLAGS: u8 = 2;
const FLAG_FIFO: u8 = 1;

/// The most backoff steps a group may name.
pub const MAX_BACKOFF_STEPS: usize = 64;
/// The most `max_reconsume_times` a group may ask for.
pub const MAX_RECONSUME_TIMES: u32 = 1_000;

/// Where a consumer group with no committed offset on a queue starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupConsumeFrom {
    /// At the queue's end (messages sent from now on).
    #[default]
    Last,
    /// At the queue's first retained message.
    First,
}

/// A consumer group's configuration in this broker group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    /// Deliveries that may fail before the message goes to `%DLQ%<group>` (0: the broker's
    /// default).
    pub max_reconsume_times: u32,
    /// The delay before retry `i + 1` (empty: the broker's `timer.retry_backoff`).
    pub retry_backoff_ms: Vec<u64>,
    pub consume_from: GroupConsumeFrom,
    /// RocketMQ 5 FIFO consumption (POP): a queue is held while a message of it handed out
    /// is neither acknowledged nor visible again.
    pub fifo: bool,
}

impl GroupConfig {
    /// Checks the limits a stored record must keep.
    pub fn validate(&self) -> Result<()> {
        if self.retry_backoff_ms.len() > MAX_BACKOFF_STEPS {
            return Err(StoreError::malformed(
                "group config",
                format!(
                    "{} backoff steps (at most {MAX_BACKOFF_STEPS})",
                    self.retry_backoff_ms.len()
                ),
            ));
        }
        if self.max_reconsume_times > MAX_RECONSUME_TIMES {
            return Err(StoreError::malformed(
                "group config",
                format!(
                    "max_reconsume_times {} (at most {MAX_RECONSUME_TIMES})",
                    self.max_reconsume_times
                ),
            ));
        }
        Ok(())
    }

    /// The record (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(9 + 8 * self.retry_backoff_ms.len());
        b.put_u8(if self.fifo { VERSION_FLAGS } else { VERSION });
        b.put_u32(self.max_reconsume_times);
        b.put_u8(match self.consume_from {
            GroupConsumeFrom::Last => 0,
            GroupConsumeFrom::First => 1,
        });
        b.put_u16(self.retry_backoff_ms.len() as u16);
        for d in &self.retry_backoff_ms {
            b.put_u64(*d);
        }
        if self.fifo {
            b.put_u8(FLAG_FIFO);
        }
        b
    }

    /// Parses a record of group `name`.
    pub fn decode(name: &str, b: &[u8]) -> Result<GroupConfig> {
        let mut r = Reader::new(b, "group config");
        let v = r.u8()?;
        if v != VERSION && v != VERSION_FLAGS {
            return Err(StoreError::malformed(
                "group config",
                format!("unknown version {v}"),
            ));
        }
        let max_reconsume_times = r.u32()?;
        let consume_from = match r.u8()? {
            0 => GroupConsumeFrom::Last,
            1 => GroupConsumeFrom::First,
            x => {
                return Err(StoreError::malformed(
                    "group config",
                    format!("unknown consume_from {x}"),
                ));
            }
        };
        let n = r.u16()? as usize;
        if n > MAX_BACKOFF_STEPS {
            return Err(StoreError::malformed(
                "group config",
                format!("{n} backoff steps (at most {MAX_BACKOFF_STEPS})"),
            ));
        }
        let mut retry_backoff_ms = Vec::with_capacity(n);
        for _ in 0..n {
            retry_backoff_ms.push(r.u64()?);
        }
        let fifo = if v == VERSION_FLAGS {
            match r.u8()? {
                0 => false,
                FLAG_FIFO => true,
                x => {
                    return Err(StoreError::malformed(
                        "group config",
                        format!("unknown flags {x:#x}"),
                    ));
                }
            }
        } else {
            false
        };
        r.finish()?;
        let g = GroupConfig {
            name: name.to_string(),
            max_reconsume_times,
            retry_backoff_ms,
            consume_from,
            fifo,
        };
        g.validate()?;
        Ok(g)
    }
}

pub(crate) fn ensure_tables(t: &mut MetaTxn) -> Result<()> {
    t.txn.open_table(GROUPS).map_err(meta_err)?;
    Ok(())
}

impl MetaStore {
    /// One consumer group's configuration, if it has one.
    pub fn group(&self, name: &str) -> Result<Option<GroupConfig>> {
        self.read(|t| {
            let table = t.open_table(GROUPS).map_err(meta_err)?;
            match table.get(name).map_err(meta_err)? {
                Some(v) => GroupConfig::decode(name, v.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Every configured consumer group, by name.
    pub fn groups(&self) -> Result<Vec<GroupConfig>> {
        self.read(|t| {
            let table = t.open_table(GROUPS).map_err(meta_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(meta_err)? {
                let (k, v) = row.map_err(meta_err)?;
                out.push(GroupConfig::decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }
}

impl MetaTxn {
    /// Creates or replaces a group's configuration.
    pub fn put_group(&mut self, g: &GroupConfig) -> Result<()> {
        g.validate()?;
        let mut table = self.txn.open_table(GROUPS).map_err(meta_err)?;
        table
            .insert(g.name.as_str(), g.encode().as_slice())
            .map_err(meta_err)?;
        Ok(())
    }

    /// Removes every group configuration (a snapshot install replaces them all).
    pub fn clear_groups(&mut self) -> Result<()> {
        self.txn.delete_table(GROUPS).map_err(meta_err)?;
        self.txn.open_table(GROUPS).map_err(meta_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> GroupConfig {
        GroupConfig {
            name: "G".into(),
            max_reconsume_times: 3,
            retry_backoff_ms: vec![1_000, 60_000],
            consume_from: GroupConsumeFrom::First,
            fifo: false,
        }
    }

    #[test]
    fn golden_bytes() {
        let b = g().encode();
        assert_eq!(
            b,
            [
                1, // version
                3, 0, 0, 0, // max_reconsume_times
                1, // consume_from: first
                2, 0, // steps
                0xe8, 0x03, 0, 0, 0, 0, 0, 0, // 1 000 ms
                0x60, 0xea, 0, 0, 0, 0, 0, 0, // 60 000 ms
            ]
        );
        assert_eq!(GroupConfig::decode("G", &b).unwrap(), g());
    }

    #[test]
    fn a_fifo_group_is_version_2_with_its_flag() {
        let f = GroupConfig { fifo: true, ..g() };
        let b = f.encode();
        assert_eq!(b[0], 2);
        assert_eq!(*b.last().unwrap(), 1);
        assert_eq!(GroupConfig::decode("G", &b).unwrap(), f);
        let mut bad = b.clone();
        *bad.last_mut().unwrap() = 4;
        assert!(GroupConfig::decode("G", &bad).is_err(), "unknown flag");
        assert!(
            GroupConfig::decode("G", &b[..b.len() - 1]).is_err(),
            "flags cut"
        );
    }

    #[test]
    fn bad_records_are_malformed() {
        let good = g().encode();
        let mut bad_version = good.clone();
        bad_version[0] = 3;
        let mut bad_from = good.clone();
        bad_from[5] = 7;
        let mut too_many = good.clone();
        too_many[6] = 65;
        let mut huge_max = good.clone();
        huge_max[1..5].copy_from_slice(&5_000u32.to_le_bytes());
        let mut long = good.clone();
        long.push(0);
        for (what, b) in [
            ("version", bad_version),
            ("consume_from", bad_from),
            ("steps", too_many),
            ("max", huge_max),
            ("trailing byte", long),
            ("cut", good[..good.len() - 1].to_vec()),
            ("empty", vec![]),
        ] {
            assert!(
                matches!(
                    GroupConfig::decode("G", &b),
                    Err(StoreError::Malformed { .. })
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn limits_are_checked_before_storing() {
        let mut x = g();
        x.retry_backoff_ms = vec![1; MAX_BACKOFF_STEPS + 1];
        assert!(x.validate().is_err());
        x.retry_backoff_ms = vec![1; MAX_BACKOFF_STEPS];
        assert!(x.validate().is_ok());
    }
}
