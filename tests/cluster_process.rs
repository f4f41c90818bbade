//! The real thing: a name server and a three-replica broker group as separate `raftmq`
//! processes on loopback. 10 000 messages are sent by concurrent producers; mid-stream the
//! leader's process is killed with SIGKILL; the producers carry on through the new leader;
//! afterwards every acknowledged message is consumed.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::*;
use raftmq_testkit::{wait_for, wait_until};

use common::{code, consume_all, leader, sigkill, start_group, wait_leader};

const MESSAGES: u64 = 10_000;
const PER_REQUEST: u64 = 5;
const PRODUCERS: u64 = 8;
const QUEUES: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_a_sigkilled_leader() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut procs, ns) = start_group(tmp.path(), "");
    let first = wait_leader(&ns, None, Duration::from_secs(30)).await;
    // Create the topic (retrying while the lease settles).
    wait_for(Duration::from_secs(10), "topic T created", || async {
        let l = wait_leader(&ns, None, Duration::from_secs(10)).await;
        let r = AdminClient::connect(format!("http://{l}"))
            .await
            .expect("connect to the leader")
            .create_topic(CreateTopicRequest {
                topic: Some(TopicConfig {
                    name: "T".into(),
                    read_queue_nums: QUEUES,
                    write_queue_nums: QUEUES,
                    perm: 6,
                    ..Default::default()
                }),
            })
            .await
            .expect("create_topic answers")
            .into_inner();
        if code(&r.status) == ErrorCode::Ok {
            Ok(())
        } else {
            Err(format!("create topic: {:?}", r.status))
        }
    })
    .await;

    // Producers: each sends its share in requests of PER_REQUEST messages, retrying a request
    // until it is acknowledged (a request whose answer was lost may be stored twice: that is
    // a duplicate, allowed; a lost acknowledged message is not).
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (ns, acked, sent) = (ns.clone(), acked.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let share = MESSAGES / PRODUCERS;
            let mut next = 0;
            // Where to send next: the last leader seen or hinted.
            let target = Mutex::new(wait_leader(&ns, None, Duration::from_secs(10)).await);
            while next < share {
                let ids: Vec<String> = (next..next + PER_REQUEST)
                    .map(|i| format!("p{p}-{i}"))
                    .collect();
                let messages = ids
                    .iter()
                    .map(|id| Message {
                        topic: "T".into(),
                        queue_id: Some(((next / PER_REQUEST) % u64::from(QUEUES)) as u32),
                        msg_id: id.clone(),
                        body: id.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect();
                let what = format!("producer {p}'s messages from {next} acknowledged");
                wait_for(Duration::from_secs(60), &what, || async {
                    let to = target.lock().expect("target").clone();
                    let r = async {
                        MessagingClient::connect(format!("http://{to}"))
                            .await?
                            .send(SendRequest {
                                producer_group: "P".into(),
                                messages: Clone::clone(&messages),
                                ..Default::default()
                            })
                            .await
                            .map(|r| r.into_inner())
                            .map_err(anyhow::Error::from)
                    }
                    .await;
                    match r {
                        Ok(r) if code(&r.status) == ErrorCode::Ok => Ok(()),
                        Ok(r) if code(&r.status) == ErrorCode::NotLeader => {
                            let seen = format!("{:?} from {to}", r.status);
                            *target.lock().expect("target") =
                                r.status.map(|s| s.leader_addr).unwrap_or_default();
                            Err(seen)
                        }
                        failed => {
                            if let Some(l) = leader(&ns).await {
                                *target.lock().expect("target") = l;
                            }
                            Err(match failed {
                                Ok(r) => format!("{:?} from {to}", r.status),
                                Err(e) => format!("{e} from {to}"),
                            })
                        }
                    }
                })
                .await;
                acked.lock().expect("acked").extend(ids);
                sent.fetch_add(PER_REQUEST, Ordering::Relaxed);
                next += PER_REQUEST;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    // Mid-stream: SIGKILL the leader's process.
    wait_until(Duration::from_secs(120), "half the messages sent", || {
        let n = sent.load(Ordering::Relaxed);
        if n >= MESSAGES / 2 {
            Ok(())
        } else {
            Err(format!("producers too slow: {n}"))
        }
    })
    .await;
    let victim = leader(&ns).await.unwrap_or(first);
    sigkill(&mut procs, &victim);
    let at = sent.load(Ordering::Relaxed);
    let new_leader = wait_leader(&ns, Some(&victim), Duration::from_secs(30)).await;
    for t in tasks {
        t.await??;
    }
    let acked = acked.lock().expect("acked").clone();
    assert_eq!(acked.len() as u64, MESSAGES);
    eprintln!("killed leader {victim} after {at} acks; new leader {new_leader}");

    // Consume every queue from the start on the new leader.
    let leader_now = wait_leader(&ns, Some(&victim), Duration::from_secs(10)).await;
    let consumed = consume_all(&leader_now, "T", QUEUES).await?;
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !consumed.contains_key(*id))
        .collect();
    let dups = consumed.values().filter(|&&n| n > 1).count();
    eprintln!(
        "consumed {} distinct, {dups} duplicated, {} lost",
        consumed.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but not consumed: {} e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        consumed.keys().all(|id| id.starts_with('p')),
        "nothing unexpected"
    );
    Ok(())
}
