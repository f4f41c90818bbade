//! Three replicas over real gRPC on loopback, real files: writes flow, the leader's server is
//! stopped, a new leader is elected and writes continue; no acknowledged write is lost; the
//! old leader rejoins as a follower and converges to a byte-identical committed log.
#![cfg(not(madsim))]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{leader_of, start};
use raftmq_raft::NodeId;
use raftmq_raft::WriteError;
use raftmq_raft::inspect::{applied_index, queue_contents, raw_log};
use raftmq_store::Message;
use raftmq_testkit::wait_until;

#[derive(Default)]
struct Acks {
    /// msg_id → (queue id, queue offset, ack time)
    by_id: HashMap<String, (u32, u64, Instant, NodeId)>,
    /// per client, msg ids in ack order
    per_client: BTreeMap<u32, Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stop_fails_over_and_loses_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let nodes = common::start_group(tmp.path(), 3).await?;

    let nodes = Arc::new(tokio::sync::RwLock::new(nodes));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop_writes = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let nodes = nodes.clone();
        let acks = acks.clone();
        let stop_writes = stop_writes.clone();
        clients.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop_writes.load(std::sync::atomic::Ordering::Acquire) {
                let target = {
                    let g = nodes.read().await;
                    leader_of(&g).and_then(|i| g[i].as_ref().map(|n| (n.id, n.replica.clone())))
                };
                let Some((leader, replica)) = target else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let id = format!("c{c}-{seq}");
                let msg = Message {
                    topic: "T".into(),
                    queue_id: c,
                    msg_id: id.clone(),
                    body: vec![c as u8; 1024],
                    ..Default::default()
                };
                match replica.write(vec![msg]).await {
                    Ok(a) => {
                        assert_eq!(a.len(), 1);
                        assert_eq!(a[0].queue_id, c);
                        let mut g = acks.lock().expect("acks lock");
                        g.by_id
                            .insert(id.clone(), (c, a[0].queue_offset.0, Instant::now(), leader));
                        g.per_client.entry(c).or_default().push(id);
                        seq += 1;
                    }
                    // Not committed, or unknown: retry with a new id (the old one may or may not
                    // appear: indeterminate, never counted as lost).
                    Err(WriteError::NotLeader { .. }) | Err(WriteError::Unavailable(_)) => {
                        seq += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => panic!("unexpected write error: {e}"),
                }
            }
        }));
    }

    let acked = |n: usize| {
        let acks = acks.clone();
        move || {
            let now = acks.lock().expect("acks lock").by_id.len();
            if now >= n {
                Ok(())
            } else {
                Err(format!("{now} acknowledged"))
            }
        }
    };
    wait_until(
        Duration::from_secs(30),
        "300 acknowledged writes",
        acked(300),
    )
    .await;

    // Stop the leader's server and its Raft.
    let (old_idx, old_id, old_addr, old_dir, stopped_at) = {
        let mut g = nodes.write().await;
        let i = leader_of(&g).expect("a leader while writes flow");
        let mut n = g[i].take().expect("leader present");
        let _ = n.stop.take().expect("running").send(());
        let t0 = Instant::now();
        n.replica.shutdown().await;
        let _ = n.server.await;
        (i, n.id, n.addr, n.dir.clone(), t0)
    };
    println!("old leader stopped in {:?}", stopped_at.elapsed());
    {
        let nodes = nodes.clone();
        let t = wait_until(Duration::from_secs(10), "new leader", move || {
            let g = nodes.try_read().ok()?;
            leader_of(&g).map(|_| Instant::now())
        })
        .await;
        println!("new leader after {:?}", t - stopped_at);
    }
    let first_after = {
        let acks = acks.clone();
        wait_until(
            Duration::from_secs(10),
            "a write acknowledged by a new leader",
            move || {
                let g = acks.lock().expect("acks lock");
                g.by_id
                    .values()
                    .filter(|(_, _, t, l)| *t > stopped_at && *l != old_id)
                    .map(|(_, _, t, _)| *t)
                    .min()
            },
        )
        .await
    };
    let failover = first_after - stopped_at;
    println!("failover: leader stop -> first acknowledged write on the new leader: {failover:?}");

    let before = acks.lock().expect("acks lock").by_id.len();
    wait_until(
        Duration::from_secs(30),
        "300 more writes",
        acked(before + 300),
    )
    .await;

    // The old leader rejoins on its old address and data.
    let node = start(old_id, old_dir, Some(old_addr)).await?;
    nodes.write().await[old_idx] = Some(node);
    let before = acks.lock().expect("acks lock").by_id.len();
    wait_until(
        Duration::from_secs(30),
        "200 more writes",
        acked(before + 200),
    )
    .await;
    stop_writes.store(true, std::sync::atomic::Ordering::Release);
    for c in clients {
        c.await?;
    }

    // Convergence: every replica applies the leader's last index.
    let g = nodes.read().await;
    let leader = leader_of(&g).expect("a leader at the end");
    let target =
        applied_index(g[leader].as_ref().expect("present").replica.store()).expect("applied");
    for n in g.iter().flatten() {
        let rs = n.replica.store().clone();
        wait_until(Duration::from_secs(20), "replica to converge", move || {
            applied_index(&rs) >= Some(target)
        })
        .await;
    }
    let old = g[old_idx].as_ref().expect("restarted");
    let m = openraft::async_runtime::WatchReceiver::borrow_watched(&old.replica.raft().metrics())
        .clone();
    assert!(
        !m.state.is_leader() || leader == old_idx,
        "old leader state {:?}",
        m.state
    );

    // Committed logs are byte-identical; queues agree.
    let logs: Vec<_> = g
        .iter()
        .flatten()
        .map(|n| raw_log(n.replica.store(), target))
        .collect::<Result<_, _>>()?;
    for l in &logs[1..] {
        assert_eq!(l.len(), logs[0].len());
        assert!(l == &logs[0], "committed logs differ between replicas");
    }
    let queues: Vec<_> = g
        .iter()
        .flatten()
        .map(|n| queue_contents(n.replica.store()))
        .collect::<Result<_, _>>()?;
    for q in &queues[1..] {
        assert_eq!(q, &queues[0], "queues differ between replicas");
    }

    // No acknowledged write is lost, each sits at the offset it was acknowledged with, and
    // each client's acknowledgements are in queue order.
    let acks = acks.lock().expect("acks lock");
    for (id, (q, off, _, _)) in &acks.by_id {
        let msgs = &queues[0][&("T".to_string(), *q)];
        let found = msgs.iter().find(|(o, _)| o == off).map(|(_, m)| m);
        assert_eq!(
            found,
            Some(id),
            "acknowledged {id} at {q}/{off} is not there"
        );
    }
    for (c, ids) in &acks.per_client {
        let offs: Vec<u64> = ids.iter().map(|i| acks.by_id[i].1).collect();
        assert!(
            offs.windows(2).all(|w| w[0] < w[1]),
            "client {c} acks out of order"
        );
    }
    println!(
        "acknowledged writes: {}, failover {failover:?}",
        acks.by_id.len()
    );
    Ok(())
}

/// A leader cut off from every follower cannot commit: a write to it is refused as
/// `Unavailable` (retriable, outcome unknown) once it has heard from no quorum for longer than
/// an election timeout, rather than held until the client gives up; new writes are refused at
/// once; and it says so (`leads_without_quorum`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_quorum_refuses_writes_instead_of_holding_them() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let mut nodes = common::start_group(tmp.path(), 3).await?;
    let l = wait_until(Duration::from_secs(15), "a leader", || leader_of(&nodes)).await;
    let leader = nodes[l].as_ref().expect("leader").replica.clone();
    let msg = |id: &str| Message {
        topic: "T".into(),
        queue_id: 0,
        msg_id: id.into(),
        body: b"x".to_vec(),
        ..Default::default()
    };
    common::write_retrying(&leader, vec![msg("before")]).await?;
    assert!(!leader.leads_without_quorum());
    // Both followers stop: the leader is alone.
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != l {
            n.take().expect("follower").stop().await;
        }
    }
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), leader.write(vec![msg("alone")]))
        .await
        .expect(
            "a write to a leader without its quorum must not be held until the client gives up",
        );
    assert!(matches!(r, Err(WriteError::Unavailable(_))), "{r:?}");
    let limit = common::config(1).timeouts.election_max_ms;
    assert!(
        started.elapsed() < Duration::from_millis(limit + 2_000),
        "refused {:?} after the followers stopped",
        started.elapsed()
    );
    assert!(leader.leads_without_quorum());
    // The next write is refused at once.
    let t = Instant::now();
    assert!(matches!(
        leader.write(vec![msg("again")]).await,
        Err(WriteError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_millis(500));
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    Ok(())
}

/// A group of one is its own quorum: its leader never counts as cut off, however long it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_one_is_its_own_quorum() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let nodes = common::start_group(tmp.path(), 1).await?;
    wait_until(Duration::from_secs(15), "a leader", || leader_of(&nodes)).await;
    let r = nodes[0].as_ref().expect("node").replica.clone();
    let msg = |id: &str| Message {
        topic: "T".into(),
        queue_id: 0,
        msg_id: id.into(),
        body: b"x".to_vec(),
        ..Default::default()
    };
    common::write_retrying(&r, vec![msg("a")]).await?;
    let limit = common::config(1).timeouts.election_max_ms;
    tokio::time::sleep(Duration::from_millis(limit * 2 + 200)).await;
    assert!(!r.leads_without_quorum());
    r.write(vec![msg("b")]).await?;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
    Ok(())
}
