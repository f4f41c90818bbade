//! A stopped leader does not hold the SDK's sends: three `raftmq broker` processes; the
//! leader is SIGSTOPped (its sockets stay open, so calls to it neither fail nor answer); the
//! rest of the group elects a successor within about a second, and a producer's sends reach
//! it — the send in flight gives up its call once the name server names the successor
//! (`Producer::leader_replaced`), and later sends follow the refreshed route. Found by the
//! chaos harness (docs/chaos.md): every send waited for as long as the leader stayed paused.

mod common;

use std::time::{Duration, Instant};

use raftmq_client::{Message, Producer};
use raftmq_testkit::wait_for;

use common::{create_topic, start_group, wait_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_reach_the_successor_of_a_paused_leader() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (procs, ns) = start_group(tmp.path(), "");
    let first = wait_leader(&ns, None, Duration::from_secs(30)).await;
    create_topic(&ns, "T", 4).await;
    let p = Producer::builder()
        .namesrv_addrs([ns.clone()])
        .group("P")
        .send_timeout(Duration::from_secs(3))
        .build()?;
    p.start().await?;
    // Warm: a send acknowledged, so the route (leader = `first`) is cached.
    wait_for(
        Duration::from_secs(30),
        "a first send acknowledged",
        || async {
            p.send(Message::new("T", "warm"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let leader = wait_leader(&ns, None, Duration::from_secs(10)).await;
    assert_eq!(leader, first, "no election while warming up");
    let pid = procs.0.get(&leader).expect("the leader's process").id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let paused = Instant::now();
    let mut acked = 0;
    let mut first_ack = None;
    while paused.elapsed() < Duration::from_secs(12) && acked < 20 {
        if p.send(Message::new("T", format!("m{acked}"))).await.is_ok() {
            first_ack.get_or_insert(paused.elapsed());
            acked += 1;
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let first_ack = first_ack.expect("no send was acknowledged while the leader was paused");
    assert!(
        first_ack < Duration::from_secs(5),
        "first acknowledgement {first_ack:?} after the pause"
    );
    assert_eq!(acked, 20, "later sends follow the new leader");
    let new = wait_leader(&ns, None, Duration::from_secs(10)).await;
    assert_ne!(new, leader, "a successor leads");
    p.shutdown().await;
    Ok(())
}
