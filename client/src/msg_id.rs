//! Client-made message ids (`msgId`): unique without coordination.
//!
//! An id is 40 upper-case hex digits, five 32-bit fields:
//!
//! | field | meaning |
//! |---|---|
//! | 0 | the producer's IPv4 address (127.0.0.1 if none can be found) |
//! | 1 | the process id |
//! | 2 | a random number drawn once per process (two processes reusing a pid, or two hosts behind one address, still differ) |
//! | 3 | seconds since 2020-01-01 UTC when the id was made |
//! | 4 | a per-process counter |
//!
//! Two ids from one process differ in the counter (4 billion per second before it could wrap
//! onto an id of the same second); ids from two processes differ in the address, pid or random.

#[cfg(not(madsim))]
use std::hash::{BuildHasher, Hasher};
#[cfg(not(madsim))]
use std::sync::OnceLock;
#[cfg(not(madsim))]
use std::sync::atomic::{AtomicU32, Ordering};

/// 2020-01-01T00:00:00Z in Unix seconds.
const EPOCH_2020_S: u64 = 1_577_836_800;

#[cfg(not(madsim))]
struct Prefix {
    ip: u32,
    pid: u32,
    random: u32,
}

#[cfg(not(madsim))]
fn prefix() -> &'static Prefix {
    static PREFIX: OnceLock<Prefix> = OnceLock::new();
    PREFIX.get_or_init(|| {
        // `RandomState` is seeded from the OS's randomness: a portable source without a
        // dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(now_nanos());
        Prefix {
            ip: local_ipv4(),
            pid: std::process::id(),
            random: h.finish() as u32,
        }
    })
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The address the host would use to reach the outside (no packet is sent), else loopback.
#[cfg(not(madsim))]
fn local_ipv4() -> u32 {
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        })
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    u32::from(ip)
}

/// A new unique message id.
///
/// ```
/// let a = raftmq_client::msg_id::new_msg_id();
/// let b = raftmq_client::msg_id::new_msg_id();
/// assert_eq!(a.len(), 40);
/// assert_ne!(a, b);
/// ```
#[cfg(not(madsim))]
pub fn new_msg_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let p = prefix();
    let secs = (now_nanos() / 1_000_000_000) as u64;
    let t = secs.saturating_sub(EPOCH_2020_S) as u32;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:08X}{:08X}{:08X}{t:08X}{n:08X}", p.ip, p.pid, p.random)
}

/// Under simulation: no process-wide state and no real socket (a run must replay exactly,
/// also when several seeds run in one process); 64 random bits from the seeded runtime make
/// ids unique within a run.
#[cfg(madsim)]
pub fn new_msg_id() -> String {
    use madsim::rand::Rng;
    let mut rng = madsim::rand::thread_rng();
    let (a, b): (u32, u32) = (rng.r#gen(), rng.r#gen());
    let secs = (now_nanos() / 1_000_000_000) as u64;
    let t = secs.saturating_sub(EPOCH_2020_S) as u32;
    format!(
        "{:08X}{:08X}{a:08X}{t:08X}{b:08X}",
        u32::from(std::net::Ipv4Addr::LOCALHOST),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_threads_and_carry_the_pid() {
        let ids: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..10_000).map(|_| new_msg_id()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        let set: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        let pid = format!("{:08X}", std::process::id());
        assert!(ids.iter().all(|id| id.len() == 40 && id[8..16] == pid));
        assert!(
            ids.iter()
                .all(|id| id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}
