//! `raftmq proxy` as a real process in front of a real three-replica group: what the official
//! RocketMQ 5 clients need from it before they send (the settings echo on Telemetry, routes
//! naming the gateway), sends of every served kind keeping the client's message ids, and the
//! v2 codes for bad input. Spoken with the generated `apache.rocketmq.v2` client over real
//! sockets; the official Python client is exercised in tests/compat.
#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use common::{Procs, consume_all, create_topic, free_port, spawn, start_group, wait_leader};
use raftmq_proto::limits::BODY_MAX;
use raftmq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use raftmq_proto::rocketmq::v2::*;
use raftmq_testkit::wait_for;
use tonic::transport::Channel;

const CLIENT: &str = "proxy-test-client";

fn req<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("x-mq-client-id", CLIENT.parse().expect("ascii"));
    r
}

fn resource(name: &str) -> Resource {
    Resource {
        resource_namespace: String::new(),
        name: name.into(),
    }
}

fn endpoints(port: u16) -> Endpoints {
    Endpoints {
        scheme: AddressScheme::IPv4 as i32,
        addresses: vec![Address {
            host: "127.0.0.1".into(),
            port: port as i32,
        }],
    }
}

fn message(topic: &str, id: &str, f: impl FnOnce(&mut SystemProperties)) -> Message {
    let mut sp = SystemProperties {
        message_id: id.into(),
        message_type: MessageType::Normal as i32,
        tag: Some("TagA".into()),
        ..Default::default()
    };
    f(&mut sp);
    Message {
        topic: Some(resource(topic)),
        user_properties: [("region".to_string(), "eu".to_string())].into(),
        system_properties: Some(sp),
        body: format!("body of {id}").into_bytes(),
    }
}

fn code(s: &Option<Status>) -> Code {
    s.as_ref()
        .and_then(|s| Code::try_from(s.code).ok())
        .unwrap_or(Code::Unspecified)
}

async fn start(dir: &std::path::Path) -> (Procs, String, u16, MessagingServiceClient<Channel>) {
    start_with(dir, &[]).await
}

async fn start_with(
    dir: &std::path::Path,
    proxy_args: &[&str],
) -> (Procs, String, u16, MessagingServiceClient<Channel>) {
    let (mut procs, ns) = start_group(dir, "");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["proxy", "--listen", &listen, "--namesrv", &ns];
    args.extend_from_slice(proxy_args);
    procs.0.insert(listen.clone(), spawn(&args));
    wait_leader(&ns, None, Duration::from_secs(20)).await;
    create_topic(&ns, "T", 4).await;
    let client = wait_for(Duration::from_secs(20), "the proxy listening", || async {
        MessagingServiceClient::connect(format!("http://{listen}"))
            .await
            .ok()
    })
    .await
    .max_decoding_message_size(16 << 20)
    .max_encoding_message_size(16 << 20);
    (procs, ns, port, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_routes_settings_and_sends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_procs, ns, port, mut c) = start(dir.path()).await;

    // Telemetry: the settings come back merged, with status OK and the body limit set.
    let (tx, rx) = tokio::sync::mpsc::channel::<TelemetryCommand>(4);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut inbound = c.telemetry(req(outbound)).await?.into_inner();
    tx.send(TelemetryCommand {
        status: None,
        command: Some(telemetry_command::Command::Settings(Settings {
            client_type: Some(ClientType::Producer as i32),
            pub_sub: Some(settings::PubSub::Publishing(Publishing {
                topics: vec![resource("T")],
                max_body_size: 0,
                validate_message_type: false,
            })),
            ..Default::default()
        })),
    })
    .await?;
    let echo = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await??
        .expect("a settings echo");
    assert_eq!(code(&echo.status), Code::Ok);
    let Some(telemetry_command::Command::Settings(s)) = echo.command else {
        panic!("settings echoed: {echo:?}")
    };
    let Some(settings::PubSub::Publishing(p)) = s.pub_sub else {
        panic!("publishing kept")
    };
    assert_eq!(p.max_body_size, BODY_MAX as i32);
    assert!(s.backoff_policy.is_some_and(|b| b.max_attempts > 0));

    // Routes: the group's queues, as broker g1 with id 0 at the address the client dialled.
    // (The topic reaches the name server at the leader's next registration.)
    let ep = endpoints(port);
    let r = routed_at(&c, "T", &ep).await;
    assert_eq!(r.message_queues.len(), 4);
    for q in &r.message_queues {
        let b = q.broker.as_ref().expect("a broker");
        assert_eq!((b.name.as_str(), b.id), ("g1", 0));
        assert_eq!(b.endpoints.as_ref(), Some(&ep));
        assert_eq!(q.permission, Permission::ReadWrite as i32);
        assert!(
            q.accept_message_types
                .contains(&(MessageType::Normal as i32))
        );
    }
    let r = c
        .query_route(req(QueryRouteRequest {
            topic: Some(resource("NoSuchTopic")),
            endpoints: Some(ep.clone()),
        }))
        .await?
        .into_inner();
    assert_eq!(code(&r.status), Code::TopicNotFound);
    let r = c
        .query_route(tonic::Request::new(QueryRouteRequest {
            topic: Some(resource("T")),
            endpoints: Some(ep.clone()),
        }))
        .await?
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired);
    let hb = c
        .heartbeat(req(HeartbeatRequest {
            group: None,
            client_type: ClientType::Producer as i32,
        }))
        .await?
        .into_inner();
    assert_eq!(code(&hb.status), Code::Ok);

    // Normal sends keep the client's message ids: each stored once under its id.
    for i in 0..20 {
        let id = format!("01NORMAL{i:04}");
        let r = c
            .send_message(req(SendMessageRequest {
                messages: vec![message("T", &id, |_| {})],
            }))
            .await?
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].message_id, id);
    }
    // FIFO: one message group lands in one queue, in send order.
    let mut offsets = Vec::new();
    for i in 0..10 {
        let r = c
            .send_message(req(SendMessageRequest {
                messages: vec![message("T", &format!("01FIFO{i:04}"), |sp| {
                    sp.message_type = MessageType::Fifo as i32;
                    sp.message_group = Some("order-7".into());
                })],
            }))
            .await?
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        offsets.push(r.entries[0].offset);
    }
    let leader = wait_leader(&ns, None, Duration::from_secs(10)).await;
    let counts = consume_all(&leader, "T", 4).await?;
    for i in 0..20 {
        assert_eq!(counts.get(&format!("01NORMAL{i:04}")), Some(&1));
    }
    for i in 0..10 {
        assert_eq!(counts.get(&format!("01FIFO{i:04}")), Some(&1));
    }
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "one message group, one queue, in order: {offsets:?}"
    );
    // DELAY: stored as a timed message with a recall handle; recalled before it is due.
    let due = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?
        + Duration::from_secs(600);
    let r = c
        .send_message(req(SendMessageRequest {
            messages: vec![message("T", "01DELAY", |sp| {
                sp.message_type = MessageType::Delay as i32;
                sp.delivery_timestamp = Some(prost_types::Timestamp {
                    seconds: due.as_secs() as i64,
                    nanos: 0,
                });
            })],
        }))
        .await?
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let handle = r.entries[0].recall_handle.clone();
    assert!(!handle.is_empty(), "a delay message's recall handle");
    let rc = c
        .recall_message(req(RecallMessageRequest {
            topic: Some(resource("T")),
            recall_handle: handle.clone(),
        }))
        .await?
        .into_inner();
    assert_eq!(code(&rc.status), Code::Ok, "{:?}", rc.status);
    // A recall is idempotent while the due time has not passed (a lost answer is retried).
    let again = c
        .recall_message(req(RecallMessageRequest {
            topic: Some(resource("T")),
            recall_handle: handle,
        }))
        .await?
        .into_inner();
    assert_eq!(code(&again.status), Code::Ok, "{:?}", again.status);
    let bad = c
        .recall_message(req(RecallMessageRequest {
            topic: Some(resource("T")),
            recall_handle: "not a handle".into(),
        }))
        .await?
        .into_inner();
    assert_eq!(code(&bad.status), Code::BadRequest, "{:?}", bad.status);

    // A typed topic (made with the CLI): its route accepts FIFO messages only, a NORMAL send
    // is refused with MESSAGE_PROPERTY_CONFLICT_WITH_TYPE and stores nothing, a FIFO one is
    // taken; `topic list` prints the type and `topic update` keeps it.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args(args)
            .args(["--namesrv", &ns])
            .output()
            .expect("raftmq runs");
        assert!(out.status.success(), "raftmq {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&[
        "topic",
        "create",
        "--topic",
        "TF",
        "--queues",
        "2",
        "--message-type",
        "fifo",
    ]);
    let r = routed_at(&c, "TF", &ep).await;
    assert_eq!(r.message_queues.len(), 2);
    for q in &r.message_queues {
        assert_eq!(q.accept_message_types, [MessageType::Fifo as i32]);
    }
    let r = c
        .send_message(req(SendMessageRequest {
            messages: vec![message("TF", "01TYPED-NORMAL", |_| {})],
        }))
        .await?
        .into_inner();
    assert_eq!(
        code(&r.status),
        Code::MessagePropertyConflictWithType,
        "{:?}",
        r.status
    );
    let r = c
        .send_message(req(SendMessageRequest {
            messages: vec![message("TF", "01TYPED-FIFO", |sp| {
                sp.message_type = MessageType::Fifo as i32;
                sp.message_group = Some("g".into());
            })],
        }))
        .await?
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let leader = wait_leader(&ns, None, Duration::from_secs(10)).await;
    let counts = consume_all(&leader, "TF", 2).await?;
    assert_eq!(counts.get("01TYPED-FIFO"), Some(&1));
    assert_eq!(
        counts.get("01TYPED-NORMAL"),
        None,
        "the refused send stored nothing"
    );
    cli(&["topic", "update", "--topic", "TF", "--perm", "6"]);
    let listed = cli(&["topic", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("\tTF\t") && l.ends_with("\tFIFO")),
        "topic list prints the type, kept by an update: {listed}"
    );

    // Bad input gets the v2 code, not a gRPC error: a body over the limit passes the decoder
    // and is refused by the gateway.
    let mut big = message("T", "01BIG", |_| {});
    big.body = vec![b'x'; BODY_MAX + 1];
    let r = c
        .send_message(req(SendMessageRequest {
            messages: vec![big],
        }))
        .await?
        .into_inner();
    assert_eq!(code(&r.status), Code::MessageBodyTooLarge);
    let r = c
        .send_message(req(SendMessageRequest {
            messages: vec![message("NoSuchTopic", "01LOST", |_| {})],
        }))
        .await?
        .into_inner();
    assert_eq!(code(&r.status), Code::TopicNotFound, "{:?}", r.status);
    let end = c
        .end_transaction(req(EndTransactionRequest {
            topic: Some(resource("T")),
            message_id: "01X".into(),
            transaction_id: "not a transaction".into(),
            resolution: TransactionResolution::Commit as i32,
            source: TransactionSource::SourceClient as i32,
            trace_context: String::new(),
        }))
        .await?
        .into_inner();
    assert_eq!(code(&end.status), Code::InvalidTransactionId);
    let err = c
        .update_offset(req(UpdateOffsetRequest::default()))
        .await
        .expect_err("not served");
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // A settings write naming neither publishing nor subscription ends the stream with
    // INVALID_ARGUMENT.
    tx.send(TelemetryCommand {
        status: None,
        command: Some(telemetry_command::Command::Settings(Settings::default())),
    })
    .await?;
    let end = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await?;
    assert_eq!(
        end.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );
    Ok(())
}

async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    max: i32,
) -> (Code, Vec<Message>) {
    receive_as(c, topic, max, false).await
}

/// A receive: with `auto_renew` as a push consumer does (no invisible time), else invisible
/// for 60 s.
async fn receive_as(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    max: i32,
    auto_renew: bool,
) -> (Code, Vec<Message>) {
    let r = c
        .receive_message(req(ReceiveMessageRequest {
            group: Some(resource("G")),
            message_queue: Some(MessageQueue {
                topic: Some(resource(topic)),
                id: -1,
                permission: Permission::ReadWrite as i32,
                broker: Some(Broker {
                    name: "g1".into(),
                    id: 0,
                    endpoints: None,
                }),
                accept_message_types: vec![],
            }),
            filter_expression: None,
            batch_size: max,
            invisible_duration: (!auto_renew).then_some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            auto_renew,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            attempt_id: None,
        }))
        .await;
    let Ok(r) = r else {
        return (Code::InternalServerError, vec![]);
    };
    let mut stream = r.into_inner();
    let (mut status, mut msgs) = (Code::Unspecified, Vec::new());
    while let Ok(Some(x)) = stream.message().await {
        match x.content {
            Some(receive_message_response::Content::Status(s)) => {
                status = Code::try_from(s.code).unwrap_or(Code::Unspecified)
            }
            Some(receive_message_response::Content::Message(m)) => msgs.push(m),
            _ => {}
        }
    }
    (status, msgs)
}

async fn ack_handle(c: &mut MessagingServiceClient<Channel>, topic: &str, handle: &str) -> Code {
    match c
        .ack_message(req(AckMessageRequest {
            group: Some(resource("G")),
            topic: Some(resource(topic)),
            entries: vec![AckMessageEntry {
                message_id: String::new(),
                receipt_handle: handle.into(),
                lite_topic: None,
            }],
        }))
        .await
    {
        Ok(r) => code(&r.into_inner().status),
        Err(_) => Code::InternalServerError,
    }
}

/// Receipts handed out before the leader is SIGKILLed still ack after the failover (the POP
/// state is in the Raft log), exactly once; nothing acked comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_outlive_a_leader_failover() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut procs, ns, _port, mut c) = start(dir.path()).await;
    create_topic(&ns, "F", 1).await;
    wait_for(Duration::from_secs(10), "topic F routed", || {
        let mut c = c.clone();
        async move {
            let r = c
                .query_route(req(QueryRouteRequest {
                    topic: Some(resource("F")),
                    endpoints: Some(endpoints(1)),
                }))
                .await
                .ok()?
                .into_inner();
            (code(&r.status) == Code::Ok).then_some(())
        }
    })
    .await;
    for i in 0..10 {
        let r = c
            .send_message(req(SendMessageRequest {
                messages: vec![message("F", &format!("01F{i:04}"), |_| {})],
            }))
            .await?
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    }
    let mut handles = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handles.len() < 10 && std::time::Instant::now() < deadline {
        let (_, msgs) = receive(&mut c, "F", 10).await;
        for m in msgs {
            let sp = m.system_properties.expect("system properties");
            assert_eq!(sp.delivery_attempt, Some(1));
            handles.push(sp.receipt_handle.expect("a receipt"));
        }
    }
    assert_eq!(handles.len(), 10, "every message handed out once");

    let leader = wait_leader(&ns, None, Duration::from_secs(10)).await;
    common::sigkill(&mut procs, &leader);
    wait_leader(&ns, Some(&leader), Duration::from_secs(30)).await;
    for h in &handles {
        let acked = wait_for(Duration::from_secs(30), "an ack after the failover", || {
            let mut c = c.clone();
            let h = h.clone();
            async move {
                match ack_handle(&mut c, "F", &h).await {
                    Code::Ok => Some(Code::Ok),
                    Code::InvalidReceiptHandle => Some(Code::InvalidReceiptHandle),
                    _ => None,
                }
            }
        })
        .await;
        assert_eq!(acked, Code::Ok, "a receipt from before the failover acks");
        assert_eq!(
            ack_handle(&mut c, "F", h).await,
            Code::InvalidReceiptHandle,
            "acked once"
        );
    }
    let (status, msgs) = receive(&mut c, "F", 10).await;
    assert!(msgs.is_empty(), "nothing acked comes back: {msgs:?}");
    assert_eq!(status, Code::MessageNotFound);
    Ok(())
}

/// The route of `topic` as a client that dialled `ep` gets it, once the gateway answers OK
/// (a topic reaches the name server at its leader's next registration).
async fn routed_at(
    c: &MessagingServiceClient<Channel>,
    topic: &str,
    ep: &Endpoints,
) -> QueryRouteResponse {
    let what = format!("topic {topic} routed");
    wait_for(Duration::from_secs(10), &what, || {
        let (mut c, ep) = (c.clone(), ep.clone());
        async move {
            let r = c
                .query_route(req(QueryRouteRequest {
                    topic: Some(resource(topic)),
                    endpoints: Some(ep),
                }))
                .await
                .ok()?
                .into_inner();
            (code(&r.status) == Code::Ok).then_some(r)
        }
    })
    .await
}

async fn routed(c: &MessagingServiceClient<Channel>, topic: &str) {
    routed_at(c, topic, &endpoints(1)).await;
}

/// A push consumer's receive (auto-renew, no invisible time) stays invisible past several
/// invisible times while the gateway renews it, and acks with the receipt it was handed;
/// a client that ends its session gives its messages back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_renewed_messages_stay_invisible_until_acked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Invisible 1.5 s per claim or renewal (renewed 0.5 s ahead).
    let (_procs, ns, _port, mut c) =
        start_with(dir.path(), &["--renew-invisible-ms", "1500"]).await;
    create_topic(&ns, "R", 1).await;
    routed(&c, "R").await;
    for i in 0..5 {
        let r = c
            .send_message(req(SendMessageRequest {
                messages: vec![message("R", &format!("01R{i:04}"), |_| {})],
            }))
            .await?
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    }
    let mut handed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handed.len() < 5 && std::time::Instant::now() < deadline {
        handed.extend(receive_as(&mut c, "R", 5, true).await.1);
    }
    assert_eq!(handed.len(), 5);
    // Four invisible times later, still held.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, back) = receive(&mut c, "R", 5).await;
    assert!(back.is_empty(), "renewed messages came back: {back:?}");
    assert_eq!(status, Code::MessageNotFound);
    // Acked with the receipts handed out (each renewal replaced it in the group).
    let (first, rest) = handed.split_first().expect("five");
    for m in rest {
        let h = m
            .system_properties
            .as_ref()
            .and_then(|s| s.receipt_handle.clone());
        assert_eq!(
            ack_handle(&mut c, "R", &h.expect("a receipt")).await,
            Code::Ok
        );
    }
    // The client ends its session: the one left comes back at once, attempt 2.
    let end = c
        .notify_client_termination(req(NotifyClientTerminationRequest { group: None }))
        .await?
        .into_inner();
    assert_eq!(code(&end.status), Code::Ok);
    let mut again = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while again.is_empty() && std::time::Instant::now() < deadline {
        again = receive(&mut c, "R", 5).await.1;
    }
    assert_eq!(again.len(), 1, "only the unacked one");
    let sp = again[0]
        .system_properties
        .clone()
        .expect("system properties");
    assert_eq!(
        sp.message_id,
        first.system_properties.as_ref().expect("sp").message_id
    );
    assert_eq!(sp.delivery_attempt, Some(2));
    Ok(())
}
