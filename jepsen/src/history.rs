//! The history of a run: every client operation and every fault, one JSON object per line
//! (`history.jsonl`), in the order they happened, with times in milliseconds since the run
//! began. Jepsen's shape: an operation is invoked, then completes `ok` (it happened), `fail`
//! (it did not) or `info` (unknown: it may or may not have happened — a send that timed out).
//! Deliveries to consumers are `ok` operations of their own (`receive`), as are the moments a
//! consumer lets a queue go (`release`); faults are `nemesis` operations (`start`/`stop`).

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raftmq_check::queue::{Event, Queue, QueueHistory};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Milliseconds since the run began.
    pub time: u64,
    /// Who: a producer (`p3`), a consumer incarnation (`c1#0`), or `nemesis`.
    pub process: String,
    #[serde(rename = "type")]
    pub kind: Type,
    /// `send`, `receive`, `release`, `crash`; for the nemesis `start` / `stop`.
    pub f: String,
    /// The topic of a send, a delivery or a released queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The message's value (its body), or the fault's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Why a send failed, or what a fault did; for transactions, the half's id or the
    /// table's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A transaction's half message: its CommitLog position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half: Option<u64>,
    /// A transaction check's number; the copies of a stored timed message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// The wall clock (ms since the epoch; the brokers share it) where a check compares
    /// with the brokers' times: timed messages' deliveries, the final heal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall: Option<u64>,
    /// A timed message's due time as acknowledged, and the earliest any attempt asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<u64>,
    /// The timer (`group/position`) a timed message was delivered from or a recall named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<String>,
}

impl Op {
    pub fn new(time: u64, process: &str, kind: Type, f: &str) -> Op {
        Op {
            time,
            process: process.into(),
            kind,
            f: f.into(),
            topic: None,
            value: None,
            queue: None,
            offset: None,
            error: None,
            half: None,
            number: None,
            wall: None,
            due: None,
            asked: None,
            timer: None,
        }
    }

    pub fn topic(mut self, t: &str) -> Op {
        self.topic = Some(t.into());
        self
    }

    pub fn value(mut self, v: impl Into<String>) -> Op {
        self.value = Some(v.into());
        self
    }

    pub fn at(mut self, queue: u32, offset: u64) -> Op {
        self.queue = Some(queue);
        self.offset = Some(offset);
        self
    }

    pub fn error(mut self, e: impl Into<String>) -> Op {
        self.error = Some(e.into());
        self
    }
}

/// Where operations are recorded while a run goes: shared by every task, written to the
/// JSONL file as they come (so a run that dies still leaves its history).
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<(Vec<Op>, std::io::BufWriter<std::fs::File>)>>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let f = std::fs::File::create(path)?;
        Ok(Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new((Vec::new(), std::io::BufWriter::new(f)))),
        })
    }

    /// Milliseconds since the run began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Records `op` (its time is set by the caller, usually [`Recorder::now`]).
    pub fn record(&self, op: Op) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(line) = serde_json::to_string(&op) {
            let _ = writeln!(g.1, "{line}");
        }
        g.0.push(op);
    }

    /// Every operation so far (and flushes the file).
    pub fn ops(&self) -> Vec<Op> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = g.1.flush();
        g.0.clone()
    }
}

/// Reads a history file back.
pub fn read(path: &Path) -> anyhow::Result<Vec<Op>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut ops = Vec::new();
    for (n, line) in f.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(ops)
}

/// The queue history the shared checkers read (`raftmq_check::queue`), from the operations on
/// `topic` (held by broker group `group`); `orderly`: its consumers are orderly, so the
/// history's order checks apply to its queues. A consumer's crash ends its hold on every
/// topic.
pub fn queue_history(ops: &[Op], topic: &str, group: &str, orderly: bool) -> QueueHistory {
    let q = |id: u32| -> Queue { (format!("{topic}@{group}"), id) };
    let mut h = QueueHistory::default();
    if orderly {
        h.orderly_topics.insert(topic.to_string());
    }
    for op in ops {
        if op.f != "crash" && op.topic.as_deref() != Some(topic) {
            continue;
        }
        let value = op.value.clone().unwrap_or_default();
        match (op.f.as_str(), op.kind) {
            ("send", Type::Ok) => {
                if let (Some(queue), Some(offset)) = (op.queue, op.offset) {
                    h.acked.insert(value.clone(), (q(queue), offset));
                    h.ack_order.push((op.process.clone(), value));
                }
            }
            ("send", Type::Info) => {
                h.indeterminate.insert(value);
            }
            ("receive", Type::Ok) => {
                if let (Some(queue), Some(offset)) = (op.queue, op.offset) {
                    h.consumed(&op.process, &value, q(queue), offset);
                }
            }
            ("release", _) => {
                if let Some(queue) = op.queue {
                    h.events.push(Event::Released {
                        consumer: op.process.clone(),
                        queue: q(queue),
                    });
                }
            }
            ("crash", _) => h.events.push(Event::Crashed {
                consumer: op.process.clone(),
            }),
            _ => {}
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_round_trips_through_jsonl_and_feeds_the_checkers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        let r = Recorder::create(&path).expect("create");
        let op = |t, p: &str, k, f: &str| Op::new(t, p, k, f).topic("T");
        r.record(op(1, "p0", Type::Invoke, "send").value("a"));
        r.record(op(2, "p0", Type::Ok, "send").value("a").at(1, 0));
        r.record(op(3, "p0", Type::Invoke, "send").value("b"));
        r.record(op(4, "p0", Type::Ok, "send").value("b").at(1, 1));
        r.record(op(5, "c0#0", Type::Ok, "receive").value("a").at(1, 0));
        // Another topic's operations are not this topic's history.
        r.record(
            Op::new(6, "p1", Type::Ok, "send")
                .topic("U")
                .value("x")
                .at(0, 0),
        );
        let ops = r.ops();
        assert_eq!(read(&path).expect("read"), ops);
        let h = queue_history(&ops, "T", "C", false);
        let v = raftmq_check::queue::check_queue_history(&h);
        // "b" was acknowledged and never consumed: the shared checker says so.
        assert_eq!(
            v,
            vec![raftmq_check::queue::QueueViolation::Lost { id: "b".into() }]
        );
    }
}
