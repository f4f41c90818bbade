//! Client channels: the broker's way to call a client (transaction checks now; any
//! server→client request later).
//!
//! A client opens one `Channel` stream per broker group, to its leader, and names the producer
//! and consumer groups it speaks for in its hello. The leader keeps every open channel here,
//! by group; a request for "some member of group G" goes to one of them, round-robin. A
//! channel is dropped when its client ends the stream, when a send to it fails or finds it
//! full, and all of them when this replica stops leading (their clients then reconnect to the
//! new leader). Per replica, in memory: nothing here needs to survive a failover, because the
//! clients reconnect and whatever was asked is asked again by the new leader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raftmq_proto::v1::ServerFrame;
use tokio::sync::{Notify, mpsc};

/// Frames buffered per channel before it counts as stuck (and is dropped).
pub const CHANNEL_BUFFER: usize = 256;

/// What the stream of one channel carries.
pub type Frame = Result<ServerFrame, tonic::Status>;

struct Conn {
    id: u64,
    client_id: String,
    tx: mpsc::Sender<Frame>,
    /// Told when the broker drops the channel, so that the task reading the client's side
    /// lets go of it (an open request stream would keep the HTTP/2 stream, and a shutting
    /// down server, waiting).
    dropped: Arc<Notify>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.dropped.notify_one();
    }
}

/// The open channels of one replica, by group.
#[derive(Default)]
pub struct ClientChannels {
    by_group: Mutex<HashMap<String, Vec<Conn>>>,
    /// Set by [`ClientChannels::close`]: no channel is taken any more.
    closed: std::sync::atomic::AtomicBool,
    next_id: AtomicU64,
    turn: AtomicU64,
}

impl ClientChannels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Conn>>> {
        // A panic while holding this lock cannot leave the map half-edited (each edit is
        // one push or retain), so a poisoned lock is still usable.
        self.by_group.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a channel for `groups`; returns its id (for [`ClientChannels::remove`]) and
    /// what is notified once the broker dropped it from every group. `None` once closed.
    pub fn add(
        &self,
        client_id: &str,
        groups: &[String],
        tx: mpsc::Sender<Frame>,
    ) -> Option<(u64, Arc<Notify>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(Notify::new());
        let mut map = self.lock();
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        for g in groups {
            map.entry(g.clone()).or_default().push(Conn {
                id,
                client_id: client_id.to_string(),
                tx: tx.clone(),
                dropped: dropped.clone(),
            });
        }
        Some((id, dropped))
    }

    /// Ends every channel and takes no more (the replica is shutting down).
    pub fn close(&self) {
        let mut map = self.lock();
        self.closed.store(true, Ordering::Release);
        map.clear();
    }

    /// Forgets channel `id`.
    pub fn remove(&self, id: u64) {
        let mut map = self.lock();
        for conns in map.values_mut() {
            conns.retain(|c| c.id != id);
        }
        map.retain(|_, conns| !conns.is_empty());
    }

    /// Ends every channel (this replica stopped leading).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Whether some member of `group` is connected.
    pub fn connected(&self, group: &str) -> bool {
        self.lock().get(group).is_some_and(|c| !c.is_empty())
    }

    /// The client ids connected for `group`.
    pub fn members(&self, group: &str) -> Vec<String> {
        let map = self.lock();
        let mut ids: Vec<String> = map
            .get(group)
            .map(|c| c.iter().map(|c| c.client_id.clone()).collect())
            .unwrap_or_default();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Sends `frame` to one member of `group` (round-robin); returns the client id it went
    /// to, or `None` when no member took it. A member whose channel is closed or full is
    /// dropped and the next one tried.
    pub fn send_to_one(&self, group: &str, frame: ServerFrame) -> Option<String> {
        let mut map = self.lock();
        let conns = map.get_mut(group)?;
        while !conns.is_empty() {
            let i = (self.turn.fetch_add(1, Ordering::Relaxed) % conns.len() as u64) as usize;
            match conns[i].tx.try_send(Ok(frame.clone())) {
                Ok(()) => return Some(conns[i].client_id.clone()),
                Err(e) => {
                    tracing::info!(group, client = %conns[i].client_id, error = %e, "dropping a client channel");
                    conns.swap_remove(i);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> ServerFrame {
        ServerFrame::default()
    }

    #[tokio::test]
    async fn members_get_requests_in_turn_and_closed_ones_are_dropped() {
        let ch = ClientChannels::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, rx2) = mpsc::channel(4);
        let (a, _) = ch.add("a", &["G".into()], tx1).unwrap();
        ch.add("b", &["G".into(), "H".into()], tx2).unwrap();
        assert_eq!(ch.members("G"), vec!["a".to_string(), "b".to_string()]);
        let mut to = Vec::new();
        for _ in 0..2 {
            to.push(ch.send_to_one("G", frame()).unwrap());
        }
        to.sort();
        assert_eq!(to, vec!["a".to_string(), "b".to_string()]);
        assert!(rx1.recv().await.is_some());
        drop(rx2);
        // b is closed: every request now reaches a.
        for _ in 0..3 {
            assert_eq!(ch.send_to_one("G", frame()).as_deref(), Some("a"));
        }
        assert!(
            !ch.members("H").is_empty(),
            "b is dropped only where a send failed"
        );
        ch.remove(a);
        assert_eq!(ch.send_to_one("G", frame()), None);
        let mut left = 0;
        while rx1.recv().await.is_some() {
            left += 1;
        }
        assert_eq!(
            left, 3,
            "frames sent before the removal stay readable, then it ends"
        );
        assert!(!ch.connected("G"));
        ch.clear();
        assert!(!ch.connected("H"));
        // Closed: no channel is taken any more.
        ch.close();
        let (tx3, _rx3) = mpsc::channel(4);
        assert!(ch.add("c", &["G".into()], tx3).is_none());
    }

    #[tokio::test]
    async fn a_full_channel_is_dropped() {
        let ch = ClientChannels::default();
        let (tx, _rx) = mpsc::channel(1);
        let (_, dropped) = ch.add("a", &["G".into()], tx).unwrap();
        assert!(ch.send_to_one("G", frame()).is_some());
        assert_eq!(ch.send_to_one("G", frame()), None);
        assert!(!ch.connected("G"));
        // The reader of the client's side is told.
        tokio::time::timeout(std::time::Duration::from_secs(1), dropped.notified())
            .await
            .expect("notified");
    }
}
