//! Where consumers keep their progress.
//!
//! - Clustering: on the brokers (`CommitOffset`, replicated through Raft; a new leader has
//!   them), committed every [`crate::consumer::COMMIT_EVERY`] and at shutdown.
//! - Broadcasting: a local file per client, replaced atomically (write a temporary file, sync
//!   it, rename it over the old one), one line per queue: `topic group queue_id offset`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use raftmq_types::QueueOffset;

use crate::error::ClientError;
use crate::rebalance::MessageQueue;

/// Longest offset file read back.
const FILE_MAX: u64 = 16 << 20;

/// A local offset file (broadcasting mode).
#[derive(Debug, Clone)]
pub struct LocalOffsets {
    path: PathBuf,
}

impl LocalOffsets {
    /// The offsets kept in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Reads every stored offset (none if the file does not exist). A malformed file is an
    /// error, never a silent restart from zero.
    pub fn load(&self) -> Result<BTreeMap<MessageQueue, QueueOffset>, ClientError> {
        let bad = |m: String| {
            ClientError::InvalidArgument(format!("offset file {}: {m}", self.path.display()))
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(bad(e.to_string())),
        };
        if meta.len() > FILE_MAX {
            return Err(bad(format!("{} bytes, more than {FILE_MAX}", meta.len())));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| bad(e.to_string()))?;
        let mut out = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            let parsed = match f.as_slice() {
                [t, g, q, o] => q
                    .parse::<u32>()
                    .ok()
                    .zip(o.parse::<u64>().ok())
                    .map(|(q, o)| (MessageQueue::new(t, g, q), QueueOffset(o))),
                _ => None,
            };
            let (q, o) = parsed
                .ok_or_else(|| bad(format!("line {} is not `topic group queue offset`", n + 1)))?;
            out.insert(q, o);
        }
        Ok(out)
    }

    /// Replaces the file with `offsets`, atomically and durably.
    pub fn store(&self, offsets: &BTreeMap<MessageQueue, QueueOffset>) -> Result<(), ClientError> {
        let err = |e: std::io::Error| {
            ClientError::InvalidArgument(format!("offset file {}: {e}", self.path.display()))
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        for (q, o) in offsets {
            writeln!(f, "{} {} {} {o}", q.topic, q.group, q.queue_id).map_err(err)?;
        }
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir).map_err(err)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_replace_and_refuse_garbage() {
        let dir = std::env::temp_dir().join(format!("raftmq-offsets-{}", std::process::id()));
        let f = LocalOffsets::new(dir.join("o"));
        assert!(f.load().unwrap().is_empty());
        let a: BTreeMap<_, _> = [
            (MessageQueue::new("T", "g1", 0), QueueOffset(5)),
            (MessageQueue::new("T", "g2", 3), QueueOffset(9)),
        ]
        .into();
        f.store(&a).unwrap();
        assert_eq!(f.load().unwrap(), a);
        let b: BTreeMap<_, _> = [(MessageQueue::new("T", "g1", 0), QueueOffset(6))].into();
        f.store(&b).unwrap();
        assert_eq!(f.load().unwrap(), b, "replaced, not merged");
        std::fs::write(dir.join("o"), "T g1 zero 5\n").unwrap();
        assert!(f.load().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
