//! The replica's `RaftService` from the wire, as a misbehaving or stale peer would call it:
//! the pipelined `StreamAppend` answers each request in order, ends after an answer that is
//! not a success, and ends with a clear status on a request it cannot use — never a panic.
#![cfg(not(madsim))]

mod common;

use futures_util::StreamExt;
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::raft::v1::raft_service_client::RaftServiceClient;
use tokio::sync::mpsc;

use common::{config, start};

fn group() -> pb::GroupId {
    let c = config(1);
    pb::GroupId {
        name: c.group,
        segment_bytes: c.store.segment_bytes,
    }
}

/// An entry-less append from leader `node` of `term`.
fn heartbeat(term: u64, node: u64) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        group: Some(group()),
        vote: Some(pb::Vote {
            term,
            node_id: node,
            committed: true,
        }),
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    }
}

type Answers = tonic::Streaming<pb::AppendEntriesResponse>;

async fn open(
    addr: std::net::SocketAddr,
) -> anyhow::Result<(mpsc::Sender<pb::AppendEntriesRequest>, Answers)> {
    let mut client = RaftServiceClient::connect(format!("http://{addr}")).await?;
    let (tx, rx) = mpsc::channel(8);
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let answers = client.stream_append(requests).await?.into_inner();
    Ok((tx, answers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_append_answers_in_order_and_refuses_what_it_cannot_use() -> anyhow::Result<()> {
    use pb::append_entries_response::Kind;
    let tmp = tempfile::tempdir()?;
    let node = start(1, tmp.path().to_path_buf(), None).await?;

    // Two heartbeats of a leader with a higher vote, sent before any answer: both succeed,
    // in order, matching nothing (the log is empty). Then an entry of an unknown kind: the
    // stream ends with INVALID_ARGUMENT, after the answers before it.
    let (tx, mut answers) = open(node.addr).await?;
    tx.send(heartbeat(5, 9)).await?;
    tx.send(heartbeat(5, 9)).await?;
    let mut bad = heartbeat(5, 9);
    bad.entries.push(pb::Entry {
        term: 5,
        index: 0,
        kind: 300,
        timestamp_ms: 0,
        payload: Vec::new(),
    });
    tx.send(bad).await?;
    for _ in 0..2 {
        let a = answers.next().await.expect("an answer")?;
        assert_eq!(a.kind, Kind::Success as i32, "{a:?}");
        assert_eq!(a.matched, None);
    }
    let end = answers.next().await.expect("the error");
    let status = end.expect_err("an entry of kind 300 is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(answers.next().await.is_none(), "the stream ended");

    // A stale leader (term 3 < 5) is told the higher vote, and the stream ends.
    let (tx, mut answers) = open(node.addr).await?;
    tx.send(heartbeat(3, 8)).await?;
    let a = answers.next().await.expect("an answer")?;
    assert_eq!(a.kind, Kind::HigherVote as i32, "{a:?}");
    assert_eq!(a.vote.map(|v| v.term), Some(5));
    assert!(
        answers.next().await.is_none(),
        "the stream ends after HIGHER_VOTE"
    );

    // A request for another group (or segment size), or without a vote, is refused before
    // anything is appended.
    let mut other = heartbeat(6, 9);
    other.group = Some(pb::GroupId {
        name: "other".into(),
        segment_bytes: group().segment_bytes,
    });
    let mut missing = heartbeat(6, 9);
    missing.vote = None;
    for (req, code) in [
        (other, tonic::Code::FailedPrecondition),
        (missing, tonic::Code::InvalidArgument),
    ] {
        let (tx, mut answers) = open(node.addr).await?;
        tx.send(req).await?;
        let status = answers
            .next()
            .await
            .expect("the error")
            .expect_err("the request is refused");
        assert_eq!(status.code(), code, "{status:?}");
    }

    // The replica is unharmed: still at the higher vote, its log empty, and it stops cleanly
    // (an open stream does not hold its server's shutdown).
    let (_keep_open, _answers) = open(node.addr).await?;
    let m = common::metrics(&node.replica);
    assert_eq!(m.vote.leader_id.term, 5);
    assert_eq!(m.last_log_index, None);
    tokio::time::timeout(std::time::Duration::from_secs(10), node.stop())
        .await
        .map_err(|_| anyhow::anyhow!("stop waited for an open append stream"))?;
    Ok(())
}
