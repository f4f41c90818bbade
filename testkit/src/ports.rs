//! Loopback ports for servers that tests start.
//!
//! Binding `127.0.0.1:0` and releasing the port is not enough: the kernel hands the same
//! range (`ip_local_port_range`, 32768–60999 by default) to the *outgoing* connections of
//! every client in the test process, so a released port can become some gRPC channel's local
//! port before the server binds it ("Address already in use", seen in CI). The ports handed
//! out here come from below that range, where no outgoing connection is ever placed; a
//! process-wide counter keeps one test process from handing the same port out twice, a start
//! drawn from the process id and the clock keeps two processes apart, and each port is
//! checked free by binding it before it is returned.

use std::net::{SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The ports handed out: [`LOW`, `HIGH`).
const LOW: u32 = 20_000;
const HIGH: u32 = 32_768;

static NEXT: AtomicU32 = AtomicU32::new(0);
static START: OnceLock<u32> = OnceLock::new();

/// A loopback address no one is listening on and no outgoing connection will take.
///
/// # Panics
/// If every port of the range is taken (the test cannot run).
pub fn free_addr() -> SocketAddr {
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        (std::process::id().wrapping_mul(7919) ^ nanos) % (HIGH - LOW)
    });
    for _ in 0..HIGH - LOW {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start + n) % (HIGH - LOW);
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {LOW}..{HIGH}");
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let addrs: Vec<SocketAddr> = (0..200).map(|_| free_addr()).collect();
        let distinct: std::collections::BTreeSet<_> = addrs.iter().collect();
        assert_eq!(distinct.len(), addrs.len());
        for a in &addrs {
            assert!((LOW..HIGH).contains(&u32::from(a.port())), "{a}");
        }
        assert!(TcpListener::bind(addrs[0]).is_ok(), "{} is free", addrs[0]);
    }
}
