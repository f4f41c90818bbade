//! Timed messages and retry over real gRPC on loopback (one name server, a three-replica
//! group): delivery not before due and in due order, recall, the codes of bad delays and
//! recalls, delivery that continues across a leader change with nothing repeated, and
//! send-back to the retry topic and then the DLQ, by the request's maximum or the consumer
//! group's replicated config, and an orderly consumer's send-back (nothing stored until the
//! maximum).
#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Cluster, code, msg};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::*;
use raftmq_testkit::wait_for;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn timed(topic: &str, body: &str, props: &[(&str, String)]) -> Message {
    let mut m = msg(topic, Some(0), body);
    m.msg_id = format!("id-{body}");
    m.properties = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    m
}

/// Queue 0 of `topic` (up to 256 messages), pulled at the leader, whatever the answer.
async fn pull_raw(c: &Cluster, topic: &str) -> anyhow::Result<PullResponse> {
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    Ok(c.messaging(leader)
        .await?
        .pull(PullRequest {
            consumer_group: "C".into(),
            topic: topic.into(),
            queue_id: 0,
            offset: 0,
            max_messages: 256,
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// (body, store time, reconsume_times, properties) of queue 0 of `topic`, read at the leader.
async fn pulled(
    c: &Cluster,
    topic: &str,
) -> anyhow::Result<Vec<(String, u64, u32, BTreeMap<String, String>)>> {
    let r = pull_raw(c, topic).await?;
    if code(&r.status) != ErrorCode::Ok {
        anyhow::bail!("pull: {:?}", r.status);
    }
    Ok(r.messages
        .iter()
        .map(|s| {
            let m = s.message.as_ref().unwrap();
            (
                String::from_utf8_lossy(&m.body).into_owned(),
                s.store_timestamp_ms,
                m.reconsume_times,
                m.properties.clone().into_iter().collect(),
            )
        })
        .collect())
}

async fn recall(c: &Cluster, handle: &str) -> RecallMessageResponse {
    let req = RecallMessageRequest {
        recall_handle: handle.to_string(),
    };
    c.on_leader(
        "a recall answered by a leader",
        |r: &RecallMessageResponse| &r.status,
        |mut m| {
            let req = req.clone();
            async move { m.recall_message(req).await }
        },
    )
    .await
}

async fn send_back(c: &Cluster, req: SendBackRequest) -> SendBackResponse {
    c.on_leader(
        "a send-back answered by a leader",
        |r: &SendBackResponse| &r.status,
        |mut m| {
            let req = req.clone();
            async move { m.send_back(req).await }
        },
    )
    .await
}

async fn bodies(c: &Cluster, topic: &str) -> Vec<String> {
    pulled(c, topic)
        .await
        .map(|v| v.into_iter().map(|m| m.0).collect())
        .unwrap_or_default()
}

async fn wait_bodies(c: &Cluster, topic: &str, want: &[&str], within: Duration) {
    wait_for(within, &format!("{topic} holds {want:?}"), || async {
        (bodies(c, topic).await == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_messages_wait_for_their_time_and_recall_works() -> anyhow::Result<()> {
    let c = Cluster::start_with(|b| b.timer.delay_levels = "1s 2s 3s".into()).await?;
    c.create_topic("T", 1, 6).await?;
    let t0 = now_ms();
    let at = |ms: u64| vec![("TIMER_DELIVER_MS", (t0 + ms).to_string())];
    // Sent out of due order; the one at +6 s is recalled. It is due last and far enough out
    // that a slow machine still recalls it before its time (CI once took > 1.5 s to get from
    // the send to the recall); the end of the test waits past its time.
    const RECALLED_DUE_MS: u64 = 6_000;
    let r = c
        .send(vec![
            timed("T", "c", &at(2_500)),
            timed("T", "a", &[("DELAY", "1".into())]),
            timed("T", "recalled", &at(RECALLED_DUE_MS)),
            timed("T", "b", &[("TIMER_DELAY_MS", "2000".into())]),
            timed(
                "T",
                "past",
                &at(0)
                    .into_iter()
                    .map(|(k, _)| (k, "1".into()))
                    .collect::<Vec<_>>(),
            ),
        ])
        .await?;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    let res = &r.results;
    assert!(
        res[..4]
            .iter()
            .all(|s| s.queue_offset == u64::MAX && !s.recall_handle.is_empty())
    );
    assert_eq!(res[0].deliver_at_ms, t0 + 2_500);
    // A time in the past is a plain message: in the queue at once, no handle.
    assert!(res[4].recall_handle.is_empty() && res[4].queue_offset == 0);
    assert_eq!(bodies(&c, "T").await, vec!["past"]);

    let rr = recall(&c, &res[2].recall_handle).await;
    assert!(
        now_ms() < t0 + RECALLED_DUE_MS,
        "this machine took {} ms to recall; the test needs the recall before the message's time",
        now_ms() - t0
    );
    assert_eq!(code(&rr.status), ErrorCode::Ok, "{:?}", rr.status);
    // Recalling again (a retry whose first answer was lost) is recalling once.
    let again = recall(&c, &res[2].recall_handle).await;
    assert_eq!(code(&again.status), ErrorCode::Ok, "{:?}", again.status);
    // A plain message's id and a made-up one are not timers; garbage is not a handle.
    let plain = recall(&c, &res[4].offset_msg_id).await;
    assert_eq!(code(&plain.status), ErrorCode::TimerNotFound);
    let other = recall(&c, &format!("{:016X}other-group", 0)).await;
    assert_eq!(code(&other.status), ErrorCode::TimerNotFound);
    let junk = recall(&c, "zz").await;
    assert_eq!(code(&junk.status), ErrorCode::InvalidArgument);

    wait_bodies(&c, "T", &["past", "a", "b", "c"], Duration::from_secs(15)).await;
    let got = pulled(&c, "T").await?;
    for (body, due) in [("a", t0 + 1_000), ("b", t0 + 2_000), ("c", t0 + 2_500)] {
        let m = got.iter().find(|m| m.0 == body).unwrap();
        // The broker's and this test's clocks are the same clock here.
        assert!(m.1 >= due, "{body} stored at {} before due {due}", m.1);
        assert!(m.3.contains_key("TIMER_DELIVER_MS"));
    }
    // Delivered: recall now says so.
    let late = recall(&c, &res[0].recall_handle).await;
    assert_eq!(code(&late.status), ErrorCode::TimerNotPending);
    // Past the recalled message's time (and the scheduler's next passes): nothing twice, and
    // the recalled message never.
    let past_recalled = (t0 + RECALLED_DUE_MS + 1_000)
        .saturating_sub(now_ms())
        .max(500);
    tokio::time::sleep(Duration::from_millis(past_recalled)).await;
    assert_eq!(
        bodies(&c, "T").await,
        vec!["past", "a", "b", "c"],
        "nothing twice, the recalled one never"
    );

    // Bad delays: nothing stored.
    for props in [
        vec![("DELAY", "4".to_string())],
        vec![("TIMER_DELIVER_MS", (t0 + 4 * 86_400_000).to_string())],
        vec![("TIMER_DELAY_MS", u64::MAX.to_string())],
    ] {
        let r = c.send(vec![timed("T", "bad", &props)]).await?;
        assert_eq!(code(&r.status), ErrorCode::DelayOutOfRange, "{props:?}");
    }
    for props in [
        vec![("DELAY", "x".to_string())],
        vec![
            ("DELAY", "1".to_string()),
            ("TIMER_DELAY_MS", "5".to_string()),
        ],
        vec![("RAFTMQ_TIMER", "1:2".to_string())],
    ] {
        let r = c.send(vec![timed("T", "bad", &props)]).await?;
        assert_eq!(code(&r.status), ErrorCode::InvalidArgument, "{props:?}");
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_continues_on_a_new_leader_without_repeats() -> anyhow::Result<()> {
    let mut c = Cluster::start().await?;
    c.create_topic("T", 1, 6).await?;
    let t0 = now_ms();
    let n = 60u64;
    let msgs: Vec<_> = (0..n)
        .map(|i| {
            timed(
                "T",
                &format!("m{i:03}"),
                &[("TIMER_DELIVER_MS", (t0 + 500 + i * 50).to_string())],
            )
        })
        .collect();
    let r = c.send(msgs).await?;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    // Stop the leader while deliveries are under way.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    c.stop_broker(leader).await;
    let want: Vec<String> = (0..n).map(|i| format!("m{i:03}")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_bodies(&c, "T", &want, Duration::from_secs(30)).await;
    c.start_broker(leader).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        bodies(&c, "T").await,
        want,
        "each delivered once, in due order"
    );
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_back_retries_then_dead_letters() -> anyhow::Result<()> {
    let c = Cluster::start_with(|b| b.timer.retry_backoff = "1s".into()).await?;
    c.create_topic("T", 1, 6).await?;
    let r = c.send(vec![timed("T", "x", &[])]).await?;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    let back = |id: &str, times: u32| SendBackRequest {
        consumer_group: "G".into(),
        offset_msg_id: id.to_string(),
        reconsume_times: times,
        max_reconsume_times: 2,
        delay_level: 0,
        orderly: false,
    };
    // Attempt 1 failed: to the retry topic, due in 1 s, reconsume_times 1.
    let b1 = send_back(&c, back(&r.results[0].offset_msg_id, 0)).await;
    assert_eq!(code(&b1.status), ErrorCode::Ok, "{:?}", b1.status);
    assert_eq!(b1.topic, "%RETRY%G");
    wait_bodies(&c, "%RETRY%G", &["x"], Duration::from_secs(10)).await;
    let retried = &pulled(&c, "%RETRY%G").await?[0];
    assert_eq!(retried.2, 1);
    assert_eq!(retried.3.get("RETRY_TOPIC").map(String::as_str), Some("T"));
    assert_eq!(
        retried.3.get("ORIGIN_MESSAGE_ID").map(String::as_str),
        Some("id-x")
    );
    // The retry copy's own offset msg id, as a consumer of the retry topic would send it back.
    let id1 = pull_raw(&c, "%RETRY%G").await?.messages[0]
        .offset_msg_id
        .clone();
    let b2 = send_back(&c, back(&id1, 1)).await;
    assert_eq!(b2.topic, "%RETRY%G");
    // reconsume_times 2 = the maximum: the next failure goes to the DLQ, at once.
    let b3 = send_back(&c, back(&id1, 2)).await;
    assert_eq!(code(&b3.status), ErrorCode::Ok, "{:?}", b3.status);
    assert_eq!(b3.topic, "%DLQ%G");
    // The DLQ is created neither readable nor writable.
    let dlq = pull_raw(&c, "%DLQ%G").await?;
    assert_eq!(code(&dlq.status), ErrorCode::NoPermission);
    let w = c.send(vec![timed("%DLQ%G", "y", &[])]).await?;
    assert_eq!(code(&w.status), ErrorCode::NoPermission);
    // Opened by an operator, it holds the message with its attempts.
    c.create_topic("%DLQ%G", 1, 6).await?;
    let d = pulled(&c, "%DLQ%G").await?;
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].0.as_str(), d[0].2), ("x", 3));
    // A message this group does not hold.
    let nf = send_back(&c, back(&format!("{:016X}g1", 1u64 << 40), 0)).await;
    assert_eq!(code(&nf.status), ErrorCode::MessageNotFound);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_configs_set_the_maximum_and_the_backoff() -> anyhow::Result<()> {
    let c = Cluster::start_with(|b| b.timer.retry_backoff = "1h".into()).await?;
    c.create_topic("T", 1, 6).await?;
    let cfg = |max: u32, backoff: Vec<u64>| ConsumerGroupConfig {
        name: "G".into(),
        max_reconsume_times: max,
        retry_backoff_ms: backoff,
        consume_first: false,
        fifo: false,
    };
    // An update of a group never created, and configs past the limits, are refused.
    assert_eq!(
        c.put_group(cfg(1, vec![]), true).await?,
        ErrorCode::GroupNotFound
    );
    assert_eq!(
        c.put_group(cfg(1, vec![1; 65]), false).await?,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        c.put_group(cfg(100_000, vec![]), false).await?,
        ErrorCode::InvalidArgument
    );
    assert_eq!(c.put_group(cfg(5, vec![]), false).await?, ErrorCode::Ok);
    // The update: a 300 ms backoff (not the broker's hour), two attempts.
    assert_eq!(c.put_group(cfg(2, vec![300]), true).await?, ErrorCode::Ok);
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let listed = c
        .admin(leader)
        .await?
        .list_groups(ListGroupsRequest {})
        .await?
        .into_inner()
        .groups;
    assert_eq!(listed, vec![cfg(2, vec![300])]);

    let r = c.send(vec![timed("T", "x", &[])]).await?;
    let id = r.results[0].offset_msg_id.clone();
    let back = |times: u32, orderly: bool| SendBackRequest {
        consumer_group: "G".into(),
        offset_msg_id: id.clone(),
        reconsume_times: times,
        max_reconsume_times: 0,
        delay_level: 0,
        orderly,
    };
    // Orderly, before the maximum: retried in place, nothing stored.
    let o = send_back(&c, back(0, true)).await;
    assert_eq!(code(&o.status), ErrorCode::Ok, "{:?}", o.status);
    assert_eq!(o.topic, "");
    // Concurrent: to the retry topic, due after the group's 300 ms.
    let b = send_back(&c, back(0, false)).await;
    assert_eq!(b.topic, "%RETRY%G");
    wait_bodies(&c, "%RETRY%G", &["x"], Duration::from_secs(10)).await;
    // At the group's maximum (2): to the DLQ, orderly or not.
    let d = send_back(&c, back(2, true)).await;
    assert_eq!(d.topic, "%DLQ%G");
    c.shutdown().await;
    Ok(())
}
