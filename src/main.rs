//! `raftmq`: one command for everything.
//!
//! - `raftmq namesrv`: a name server; `raftmq broker --config FILE`: one broker replica;
//! - `raftmq dev`: a name server and a three-replica group in one process, data under
//!   `./data` — the quick start;
//! - `raftmq topic create|update|list|route|stats`, `raftmq group status` (broker groups),
//!   `raftmq group create|update|list` (consumer group configs), `raftmq dlq list|resend`,
//!   `raftmq txn list|end`: admin;
//! - `raftmq send`, `raftmq consume`: a producer and a push consumer over the SDK
//!   (`send --transaction commit|rollback|unknown`: a transaction producer, see `txn`;
//!   `send --delay-level|--delay-ms|--deliver-at-ms`: timed messages), `raftmq recall`;
//! - `raftmq bench produce|consume|txn-check|timers`: load over the SDK with latency percentiles
//!   (`produce --transactional`: committed transactions per second; `txn-check`: the delay
//!   from a transaction's timeout to its check; `timers`: due timers per second and memory
//!   with timers pending);
//! - `raftmq store check`: verify a replica's data directory offline.

mod bench;
mod bench_failover;
mod bench_proxy;
mod bench_timers;
mod bench_txn;
mod dlq;
mod ops;
mod txn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftmq_broker::{Broker, BrokerConfig};
use raftmq_proto::v1::{Role, TopicConfig, TransactionDecision};
use raftmq_store::{MmapDisk, Store, StoreConfig};

#[derive(Parser)]
#[command(
    name = "raftmq",
    version,
    about = "A RocketMQ-model message queue replicated with Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a name server.
    Namesrv {
        #[arg(long, default_value = "127.0.0.1:9876")]
        listen: SocketAddr,
    },
    /// Runs one broker replica from a TOML configuration (see the broker crate's `config`
    /// docs, or `raftmq dev`'s generated files under ./data).
    Broker {
        #[arg(long)]
        config: PathBuf,
        /// For the chaos harness only: keep every write in memory until it is synced, so a
        /// SIGKILL of this process loses what a power cut of its machine would (the page
        /// cache survives a kill and would hide it). Never for real use.
        #[arg(long, hide = true)]
        lazy_disk: bool,
    },
    /// Runs the RocketMQ 5 gateway: the `apache.rocketmq.v2` API of the official RocketMQ 5
    /// clients, forwarding to the broker groups' leaders (docs/rocketmq5.md).
    Proxy {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Name servers, comma-separated.
        #[arg(long, default_value = "127.0.0.1:9876", value_delimiter = ',')]
        namesrv: Vec<String>,
        /// For tests: the invisible time of auto-renewed receives (renewed a third of it
        /// ahead); default 60 s, renewed 10 s ahead.
        #[arg(long, hide = true)]
        renew_invisible_ms: Option<u64>,
    },
    /// Runs a name server, a three-replica broker group and the RocketMQ 5 gateway in one
    /// process, on localhost.
    Dev {
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 9876)]
        namesrv_port: u16,
        /// Ports of the three replicas: this one and the next two.
        #[arg(long, default_value_t = 10911)]
        broker_port: u16,
        /// The RocketMQ 5 gateway's port (0: none).
        #[arg(long, default_value_t = 8081)]
        proxy_port: u16,
    },
    /// Topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Broker groups' Raft state, and consumer group configurations.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Dead-letter queues (`%DLQ%<consumer group>`).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Recalls a timed message before it is due (the handle its send printed).
    Recall {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        /// The topic it was sent to.
        #[arg(long)]
        topic: String,
        #[arg(long)]
        handle: String,
    },
    /// Transactions (docs/transactions.md).
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Sends messages (with --transaction: each in a transaction of its own).
    Send {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long)]
        topic: String,
        /// The body (with --count > 1, suffixed with the message number).
        #[arg(long, default_value = "hello")]
        body: String,
        #[arg(long, default_value = "")]
        tag: String,
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Send each message in a transaction whose local transaction answers this; with
        /// `unknown`, wait for the broker's check and answer it with --check.
        #[arg(long, value_enum)]
        transaction: Option<txn::LocalAnswer>,
        /// The producer group (a transaction's checks go to a connected member of it).
        #[arg(long, default_value = "raftmq-cli")]
        producer_group: String,
        /// With --transaction unknown: what the check answers.
        #[arg(long, value_enum, default_value = "commit")]
        check: txn::CheckAnswer,
        /// With --transaction unknown: how long to wait for the checks to decide (seconds).
        #[arg(long, default_value_t = 30)]
        wait_check_secs: u64,
        /// A timed message: delivered after this delay level (1-based; the broker's levels).
        #[arg(long, conflicts_with_all = ["delay_ms", "deliver_at_ms", "transaction"])]
        delay_level: Option<u32>,
        /// A timed message: delivered this many ms after the broker receives it.
        #[arg(long, conflicts_with_all = ["deliver_at_ms", "transaction"])]
        delay_ms: Option<u64>,
        /// A timed message: delivered at this time (ms since the epoch).
        #[arg(long, conflicts_with = "transaction")]
        deliver_at_ms: Option<u64>,
    },
    /// Consumes messages (clustering offsets committed to the brokers).
    Consume {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "raftmq-cli")]
        group: String,
        /// Stop after this many messages (0: run until interrupted or idle).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Where a group that never committed starts: first or last.
        #[arg(long, default_value = "first")]
        from: String,
        /// Stop after this long without a message (0: never).
        #[arg(long, default_value_t = 0)]
        idle_ms: u64,
    },
    /// Load generators over the SDK.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Storage tools that work on a replica's data directory.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Every message in a consumer group's DLQ (read whatever the DLQ's perm).
    List {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        /// The consumer group.
        #[arg(long)]
        group: String,
    },
    /// Sends dead letters back to their original topics as new messages (the DLQ keeps its
    /// copies).
    Resend {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// Only these (offset msg ids from `dlq list`); default: every message in the DLQ.
        #[arg(long = "id")]
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Changes an existing topic's perm (e.g. `--perm 6` opens a DLQ) or queue counts on
    /// every group holding it.
    Update {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        perm: Option<u32>,
        #[arg(long)]
        queues: Option<u32>,
        /// MIXED, NORMAL, FIFO, DELAY or TRANSACTION.
        #[arg(long, value_parser = parse_message_type)]
        message_type: Option<i32>,
    },
    /// Creates or updates a topic on the named groups (default: every group).
    Create {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 4)]
        queues: u32,
        #[arg(long, default_value_t = 6)]
        perm: u32,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The kind of messages it takes (RocketMQ 5 clients are refused others): MIXED
        /// (any), NORMAL, FIFO, DELAY or TRANSACTION.
        #[arg(long, default_value = "MIXED", value_parser = parse_message_type)]
        message_type: i32,
    },
    /// Lists the topics of every group.
    List {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
    },
    /// Prints a topic's route from the name server.
    Route {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long)]
        topic: String,
    },
    /// Prints min/max offsets of every queue of a topic.
    Stats {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long)]
        topic: String,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Every replica's Raft state (role, term, leader, indexes).
    Status {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(long)]
        group: Option<String>,
    },
    /// Creates (or replaces) a consumer group's configuration on every broker group (or
    /// those named with --broker-group). Unset values are the brokers' defaults.
    Create(GroupConfigArgs),
    /// Changes a configured consumer group; unset values keep theirs.
    Update(GroupConfigArgs),
    /// The consumer group configurations of every broker group.
    List {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
    },
}

#[derive(clap::Args)]
struct GroupConfigArgs {
    #[arg(long, default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// The consumer group.
    #[arg(long)]
    group: String,
    /// Failed deliveries before the DLQ (0: the broker's default, 16).
    #[arg(long)]
    max_reconsume_times: Option<u32>,
    /// The delay before each retry, e.g. "10s 30s 1m" (the last repeats); "" for the
    /// broker's default.
    #[arg(long)]
    retry_backoff: Option<String>,
    /// Where a member with no committed offset starts: first or last.
    #[arg(long)]
    consume_from: Option<String>,
    /// RocketMQ 5 FIFO consumption through `raftmq proxy`: true or false (docs/rocketmq5.md).
    #[arg(long)]
    fifo: Option<bool>,
    #[arg(long = "broker-group")]
    broker_groups: Vec<String>,
}

#[derive(Subcommand)]
enum TxnCommand {
    /// The transaction table of every group's leader (undecided ones; --all: decided too).
    List {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// Also the decided transactions still on record.
        #[arg(long)]
        all: bool,
        /// At most this many per group, undecided first (0: the broker's default, 1000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Decides a pending transaction by hand, e.g. one whose producer group will never come
    /// back (its half message holds retention until decided). Recorded as the producer's
    /// decision.
    #[command(group(clap::ArgGroup::new("decision").required(true).args(["commit", "rollback"])))]
    End {
        #[arg(long, default_value = "127.0.0.1:9876")]
        namesrv: String,
        /// The half message's offsetMsgId (txn list's OFFSET_MSG_ID; it names the group).
        #[arg(long)]
        offset_msg_id: String,
        /// Commit: publish the message to its queue.
        #[arg(long)]
        commit: bool,
        /// Roll back: discard the message.
        #[arg(long)]
        rollback: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Opens a data directory as a broker would (recovering a torn tail), verifies every
    /// retained CommitLog record, and prints a summary. Exits non-zero on corruption.
    Check {
        /// The replica's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// CommitLog segment size the directory was written with.
        #[arg(long, default_value_t = StoreConfig::default().segment_bytes)]
        segment_bytes: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Store(StoreCommand::Check {
        data_dir,
        segment_bytes,
    }) = cli.command
    {
        return check(data_dir, segment_bytes);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Namesrv { listen } => {
            let svc = raftmq_namesrv::NamesrvHandle::new().into_service();
            println!("namesrv listening on {listen}");
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_shutdown(listen, ctrl_c())
                .await
                .with_context(|| format!("serving on {listen}"))?;
            Ok(())
        }
        Command::Broker { config, lazy_disk } => {
            let c = BrokerConfig::load(&config)?;
            if lazy_disk {
                eprintln!(
                    "--lazy-disk: unsynced writes are kept in memory only (chaos testing; never for real use)"
                );
            }
            let b = start_broker(c, lazy_disk).await?;
            println!("broker {} replica {} listening on {}", b.1, b.2, b.0.addr());
            ctrl_c().await;
            b.0.shutdown().await;
            Ok(())
        }
        Command::Proxy {
            listen,
            namesrv,
            renew_invisible_ms,
        } => {
            let mut renew = raftmq_proxy::renew::RenewPolicy::default();
            if let Some(ms) = renew_invisible_ms {
                renew.invisible = Duration::from_millis(ms);
                renew.before = renew.invisible / 3;
            }
            let gateway = raftmq_proxy::Gateway::start(raftmq_proxy::ProxyConfig {
                namesrv_addrs: namesrv,
                renew,
            })
            .await?;
            println!("proxy listening on {listen} (apache.rocketmq.v2)");
            tonic::transport::Server::builder()
                .add_service(gateway.service())
                .serve_with_shutdown(listen, ctrl_c())
                .await
                .with_context(|| format!("serving on {listen}"))?;
            gateway.shutdown().await;
            Ok(())
        }
        Command::Dev {
            data_dir,
            namesrv_port,
            broker_port,
            proxy_port,
        } => dev(data_dir, namesrv_port, broker_port, proxy_port).await,
        Command::Topic(t) => topic(t).await,
        Command::Group(GroupCommand::Create(a)) => group_put(a, false).await,
        Command::Group(GroupCommand::Update(a)) => group_put(a, true).await,
        Command::Group(GroupCommand::List { namesrv }) => {
            for (g, groups) in dlq::group_list(&ops::Cluster::new(&namesrv)).await? {
                for c in groups {
                    println!("{}", dlq::describe(&g, &c));
                }
            }
            Ok(())
        }
        Command::Dlq(DlqCommand::List { namesrv, group }) => {
            let letters = dlq::dlq_list(&ops::Cluster::new(&namesrv), &group).await?;
            for d in &letters {
                let s = &d.stored;
                let m = s.message.clone().unwrap_or_default();
                println!(
                    "{}	{}	attempts {}	from {}	msgId {}	{:?}",
                    d.broker_group,
                    s.offset_msg_id,
                    m.reconsume_times,
                    m.properties.get("RETRY_TOPIC").map_or("?", String::as_str),
                    m.msg_id,
                    String::from_utf8_lossy(&m.body)
                );
            }
            println!("{} message(s) in %DLQ%{group}", letters.len());
            Ok(())
        }
        Command::Dlq(DlqCommand::Resend {
            namesrv,
            group,
            ids,
        }) => {
            let cluster = ops::Cluster::new(&namesrv);
            let sent = dlq::dlq_resend(&cluster, &namesrv, &group, &ids).await?;
            for (id, new_id, topic) in &sent {
                println!("resent {id} to {topic} as {new_id}");
            }
            println!("{} message(s) resent", sent.len());
            Ok(())
        }
        Command::Recall {
            namesrv,
            topic,
            handle,
        } => recall(&namesrv, &topic, &handle).await,
        Command::Group(GroupCommand::Status { namesrv, group }) => {
            let cluster = ops::Cluster::new(&namesrv);
            for r in ops::group_status(&cluster, group.as_deref()).await? {
                match r {
                    Ok(s) => println!(
                        "{} replica {}: {:?} term {} leader {:?} last {:?} committed {:?} applied {:?} purged {:?} members {:?}",
                        s.group,
                        s.replica_id,
                        Role::try_from(s.role).unwrap_or(Role::Unknown),
                        s.term,
                        s.leader_id,
                        s.last_log_index,
                        s.committed_index,
                        s.applied_index,
                        s.purged_index,
                        s.replicas
                            .iter()
                            .map(|r| format!(
                                "{}{}@{}",
                                r.replica_id,
                                if r.voter { "" } else { "(learner)" },
                                r.addr
                            ))
                            .collect::<Vec<_>>()
                    ),
                    Err(e) => println!("unreachable: {e}"),
                }
            }
            Ok(())
        }
        Command::Txn(TxnCommand::List {
            namesrv,
            group,
            all,
            limit,
        }) => txn::list(&namesrv, group.as_deref(), all, limit).await,
        Command::Txn(TxnCommand::End {
            namesrv,
            offset_msg_id,
            commit,
            rollback: _,
        }) => {
            // The argument group makes exactly one of --commit and --rollback present.
            let decision = if commit {
                TransactionDecision::Commit
            } else {
                TransactionDecision::Rollback
            };
            txn::end(&namesrv, &offset_msg_id, decision).await
        }
        Command::Send {
            namesrv,
            topic,
            body,
            tag,
            key,
            count,
            transaction: Some(local),
            producer_group,
            check,
            wait_check_secs,
            ..
        } => {
            txn::send(txn::TxnSend {
                namesrv,
                topic,
                body,
                tag,
                key,
                count,
                producer_group,
                local,
                check,
                wait_check: Duration::from_secs(wait_check_secs),
            })
            .await
        }
        Command::Send {
            namesrv,
            topic,
            body,
            tag,
            key,
            count,
            transaction: None,
            producer_group,
            delay_level,
            delay_ms,
            deliver_at_ms,
            ..
        } => {
            let p = raftmq_client::Producer::builder()
                .namesrv_addrs(namesrv.split(','))
                .group(producer_group.as_str())
                .build()?;
            p.start().await?;
            for i in 0..count {
                let body = if count > 1 {
                    format!("{body}-{i}")
                } else {
                    body.clone()
                };
                let mut m = raftmq_client::Message::new(topic.as_str(), body)
                    .with_tags(tag.as_str())
                    .with_keys(key.iter().cloned());
                if let Some(l) = delay_level {
                    m = m.with_delay_level(l);
                } else if let Some(d) = delay_ms {
                    m = m.with_delay(Duration::from_millis(d));
                } else if let Some(at) = deliver_at_ms {
                    m = m.with_deliver_at_ms(at);
                }
                let r = p.send(m).await?;
                match (&r.recall_handle, r.deliver_at_ms) {
                    (Some(h), Some(at)) => println!(
                        "sent {} to {}, due at {at} (recall handle {h})",
                        r.msg_id, r.queue.group
                    ),
                    _ => println!(
                        "sent {} to {} queue {} offset {} (offsetMsgId {})",
                        r.msg_id, r.queue.group, r.queue.queue_id, r.queue_offset, r.offset_msg_id
                    ),
                }
            }
            p.shutdown().await;
            Ok(())
        }
        Command::Consume {
            namesrv,
            topic,
            group,
            count,
            from,
            idle_ms,
        } => consume(&namesrv, &topic, &group, count, &from, idle_ms).await,
        Command::Bench(b) => bench::run(b).await,
        Command::Store(_) => unreachable!("handled before the runtime starts"),
    }
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn start_broker(c: BrokerConfig, lazy_disk: bool) -> anyhow::Result<(Broker, String, u64)> {
    let (group, id) = (c.group.clone(), c.replica_id);
    let err = match Broker::start(c.clone(), open_disk(&c, lazy_disk)?).await {
        Ok(b) => return Ok((b, group, id)),
        Err(e) => anyhow::Error::from(e),
    };
    // A CommitLog damaged below its synced marker: refill it from the group (see
    // raftmq_raft::repair); any other failure stands.
    let store = c.replica_config().store;
    let mmap: Arc<dyn raftmq_store::Disk> = Arc::new(MmapDisk::open(&c.data_dir)?);
    let Some(plan) = raftmq_raft::repair::plan(mmap, &store).unwrap_or(None) else {
        return Err(err);
    };
    let aside = damaged_dir(&c.data_dir);
    eprintln!(
        "broker {group} replica {id}: the CommitLog is damaged ({}); moving the data to {} and refilling the log from the group (no votes until entry {})",
        plan.damage,
        aside.display(),
        plan.repair_until
    );
    std::fs::rename(&c.data_dir, &aside)
        .with_context(|| format!("moving the damaged data to {}", aside.display()))?;
    std::fs::create_dir_all(&c.data_dir)?;
    let fresh: Arc<dyn raftmq_store::Disk> = Arc::new(MmapDisk::open(&c.data_dir)?);
    raftmq_raft::repair::prepare(fresh, &store, &plan).context("preparing the repaired store")?;
    let b = Broker::start(c.clone(), open_disk(&c, lazy_disk)?).await?;
    Ok((b, group, id))
}

/// The broker's disk: its data directory, through the lazy disk if asked.
fn open_disk(c: &BrokerConfig, lazy_disk: bool) -> anyhow::Result<Arc<dyn raftmq_store::Disk>> {
    std::fs::create_dir_all(&c.data_dir)
        .with_context(|| format!("creating {}", c.data_dir.display()))?;
    let mmap: Arc<dyn raftmq_store::Disk> = Arc::new(
        MmapDisk::open(&c.data_dir).with_context(|| format!("opening {}", c.data_dir.display()))?,
    );
    Ok(if lazy_disk {
        Arc::new(raftmq_store::LazyDisk::new(mmap))
    } else {
        mmap
    })
}

/// Where a damaged data directory is moved: beside it, named by the time (never reused).
fn damaged_dir(data_dir: &std::path::Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let mut n = now_ms();
    loop {
        let p = data_dir.with_file_name(format!("{name}.damaged-{n}"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// The configuration file of replica `id` of the dev group.
fn dev_config(data_dir: &std::path::Path, namesrv: SocketAddr, ports: &[u16], id: usize) -> String {
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} = \"127.0.0.1:{p}\"\n", i + 1))
        .collect();
    format!(
        "# Generated by `raftmq dev`: replica {n} of group g1.\ngroup = \"g1\"\nreplica_id = {n}\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{dir}\"\nnamesrv_addrs = [\"{namesrv}\"]\nauto_create_topics = true\n# Small files: a dev cluster should not zero-fill 1 GiB per replica.\nsegment_mib = 64\nindex_max_entries = 1000000\nindex_hash_slots = 250000\n\n[initial_members]\n{members}",
        n = id + 1,
        port = ports[id],
        dir = data_dir.join(format!("g1-{}", id + 1)).display(),
    )
}

async fn dev(
    data_dir: PathBuf,
    namesrv_port: u16,
    broker_port: u16,
    proxy_port: u16,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let ns_addr: SocketAddr = ([127, 0, 0, 1], namesrv_port).into();
    let svc = raftmq_namesrv::NamesrvHandle::new().into_service();
    let (stop_ns, ns_stopped) = tokio::sync::oneshot::channel::<()>();
    let ns_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_shutdown(ns_addr, async {
                let _ = ns_stopped.await;
            })
            .await
    });
    let ports: Vec<u16> = (0..3).map(|i| broker_port + i).collect();
    let mut brokers = Vec::new();
    for i in 0..3 {
        let text = dev_config(&data_dir, ns_addr, &ports, i);
        let path = data_dir.join(format!("g1-{}.toml", i + 1));
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        let c = BrokerConfig::parse(&text)?;
        brokers.push(start_broker(c, false).await?.0);
    }
    // Wait until the group has a leader the name server knows.
    let cluster = ops::Cluster::new(&ns_addr.to_string());
    let start = Instant::now();
    let leader = cluster.leader("g1").await?;
    println!("raftmq dev is up ({:?}):", start.elapsed());
    println!("  namesrv   {ns_addr}");
    for (i, p) in ports.iter().enumerate() {
        println!(
            "  broker    g1 replica {} at 127.0.0.1:{p}{}",
            i + 1,
            if leader.ends_with(&format!(":{p}")) {
                " (leader)"
            } else {
                ""
            }
        );
    }
    let proxy = if proxy_port == 0 {
        None
    } else {
        let addr: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
        let gateway = raftmq_proxy::Gateway::start(raftmq_proxy::ProxyConfig {
            namesrv_addrs: vec![ns_addr.to_string()],
            ..Default::default()
        })
        .await?;
        let svc = gateway.service();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_shutdown(addr, async {
                    let _ = stopped.await;
                })
                .await
        });
        println!("  proxy     {addr} (RocketMQ 5 clients: apache.rocketmq.v2)");
        Some((gateway, stop, task))
    };
    println!("  data      {} (configs: g1-*.toml)", data_dir.display());
    println!(
        "try: raftmq send --topic Demo --count 3 && raftmq consume --topic Demo --idle-ms 2000"
    );
    println!("Ctrl-C stops everything.");
    ctrl_c().await;
    if let Some((gateway, stop, task)) = proxy {
        let _ = stop.send(());
        let _ = task.await;
        gateway.shutdown().await;
    }
    for b in brokers {
        b.shutdown().await;
    }
    let _ = stop_ns.send(());
    let _ = ns_task.await;
    Ok(())
}

async fn group_put(a: GroupConfigArgs, update: bool) -> anyhow::Result<()> {
    let consume_first = match a.consume_from.as_deref() {
        None => None,
        Some("first") => Some(true),
        Some("last") => Some(false),
        Some(x) => anyhow::bail!("--consume-from {x:?}: first or last"),
    };
    let retry_backoff_ms = match a.retry_backoff.as_deref() {
        None => None,
        Some("") => Some(Vec::new()),
        Some(s) => Some(dlq::parse_backoff(s)?),
    };
    let edit = dlq::GroupEdit {
        name: a.group.clone(),
        max_reconsume_times: a.max_reconsume_times,
        retry_backoff_ms,
        consume_first,
        fifo: a.fifo,
    };
    let cluster = ops::Cluster::new(&a.namesrv);
    let done = dlq::group_put(&cluster, &edit, update, &a.broker_groups).await?;
    println!(
        "consumer group {} {} on {}",
        a.group,
        if update { "updated" } else { "configured" },
        done.join(", ")
    );
    Ok(())
}

async fn recall(namesrv: &str, topic: &str, handle: &str) -> anyhow::Result<()> {
    let p = raftmq_client::Producer::builder()
        .namesrv_addrs(namesrv.split(','))
        .group("raftmq-cli")
        .build()?;
    p.start().await?;
    let r = p.recall_handle(topic, handle).await;
    p.shutdown().await;
    r?;
    println!("recalled {handle}: it will not be delivered");
    Ok(())
}

async fn topic(t: TopicCommand) -> anyhow::Result<()> {
    match t {
        TopicCommand::Update {
            namesrv,
            topic,
            perm,
            queues,
            message_type,
        } => {
            anyhow::ensure!(
                perm.is_some() || queues.is_some() || message_type.is_some(),
                "nothing to update: give --perm, --queues or --message-type"
            );
            let change = dlq::TopicChange {
                perm,
                queues,
                message_type,
            };
            let done = dlq::topic_update(&ops::Cluster::new(&namesrv), &topic, change).await?;
            println!("topic {topic} updated on {}", done.join(", "));
        }
        TopicCommand::Create {
            namesrv,
            topic,
            queues,
            perm,
            groups,
            message_type,
        } => {
            let cluster = ops::Cluster::new(&namesrv);
            let cfg = TopicConfig {
                name: topic.clone(),
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm,
                message_type,
            };
            let done = ops::topic_create(&cluster, &cfg, &groups).await?;
            println!(
                "topic {topic}: {queues} queues, perm {perm}, {} messages on {}",
                message_type_name(message_type),
                done.join(", ")
            );
        }
        TopicCommand::List { namesrv } => {
            for (g, topics) in ops::topic_list(&ops::Cluster::new(&namesrv)).await? {
                for t in topics {
                    println!(
                        "{g}\t{}\tread {}\twrite {}\tperm {}\t{}",
                        t.name,
                        t.read_queue_nums,
                        t.write_queue_nums,
                        t.perm,
                        message_type_name(t.message_type)
                    );
                }
            }
        }
        TopicCommand::Route { namesrv, topic } => {
            let r = ops::Cluster::new(&namesrv).route(&topic).await?;
            for q in &r.queues {
                println!(
                    "{}: read {} write {} perm {}",
                    q.group, q.read_queue_nums, q.write_queue_nums, q.perm
                );
            }
            for g in &r.groups {
                println!(
                    "{} leader {}",
                    g.group,
                    if g.leader_addr.is_empty() {
                        "(none)"
                    } else {
                        &g.leader_addr
                    }
                );
                for rep in &g.replicas {
                    println!(
                        "  replica {} {} {:?} term {} seen {} ms ago",
                        rep.replica_id,
                        rep.addr,
                        Role::try_from(rep.role).unwrap_or(Role::Unknown),
                        rep.term,
                        rep.last_seen_ms_ago
                    );
                }
            }
        }
        TopicCommand::Stats { namesrv, topic } => {
            for s in ops::topic_stats(&ops::Cluster::new(&namesrv), &topic).await? {
                for q in s.queues {
                    println!(
                        "{} {topic}#{}: [{}, {})",
                        s.group, q.queue_id, q.min_offset, q.max_offset
                    );
                }
            }
        }
    }
    Ok(())
}

async fn consume(
    namesrv: &str,
    topic: &str,
    group: &str,
    count: u64,
    from: &str,
    idle_ms: u64,
) -> anyhow::Result<()> {
    use raftmq_client::consumer::ConsumeFrom;
    use std::sync::atomic::{AtomicU64, Ordering};
    let from = match from {
        "first" => ConsumeFrom::First,
        "last" => ConsumeFrom::Last,
        other => anyhow::bail!("--from must be first or last, got {other:?}"),
    };
    let seen = Arc::new(AtomicU64::new(0));
    let last_ms = Arc::new(AtomicU64::new(now_ms()));
    let (s2, l2) = (seen.clone(), last_ms.clone());
    let c = raftmq_client::PushConsumer::builder()
        .namesrv_addrs(namesrv.split(','))
        .group(group)
        .subscribe(topic, "*")
        .consume_from(from)
        .long_poll(Duration::from_millis(500))
        .concurrent(move |msgs| {
            for m in msgs {
                println!(
                    "{} queue {} offset {} tags {:?} keys {:?} msgId {} body {}",
                    m.queue.group,
                    m.queue.queue_id,
                    m.queue_offset,
                    m.tags,
                    m.keys,
                    m.msg_id,
                    String::from_utf8_lossy(&m.body)
                );
                s2.fetch_add(1, Ordering::Relaxed);
            }
            l2.store(now_ms(), Ordering::Relaxed);
            raftmq_client::ConsumeResult::Success
        })
        .build()?;
    c.start().await?;
    loop {
        tokio::select! {
            biased;
            _ = ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let n = seen.load(Ordering::Relaxed);
        let idle = now_ms().saturating_sub(last_ms.load(Ordering::Relaxed));
        if (count > 0 && n >= count) || (idle_ms > 0 && idle >= idle_ms) {
            break;
        }
    }
    c.shutdown().await;
    eprintln!("consumed {} message(s)", seen.load(Ordering::Relaxed));
    Ok(())
}

fn check(data_dir: PathBuf, segment_bytes: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.is_dir(),
        "{} is not a directory",
        data_dir.display()
    );
    let disk =
        MmapDisk::open(&data_dir).with_context(|| format!("opening {}", data_dir.display()))?;
    // max_record_bytes only limits new appends; a smaller segment must still pass validation.
    let defaults = StoreConfig::default();
    let max_record_bytes = defaults
        .max_record_bytes
        .min(segment_bytes.saturating_sub(64));
    let config = StoreConfig {
        segment_bytes,
        max_record_bytes,
        ..defaults
    };
    let store = Store::open(Arc::new(disk), config).context("recovering the store")?;
    let entries = store.verify().context("verifying the CommitLog")?;
    let (first, last) = store.log_bounds()?;
    let r = store.reader();
    println!(
        "commitlog: positions [{}, {}), synced to {}, {} segment(s)",
        r.first(),
        r.written(),
        r.synced(),
        r.segment_starts().len()
    );
    match last {
        Some((last, term)) => println!(
            "raft log: indexes [{first}, {last}] (last term {term}), {entries} entries verified"
        ),
        None => println!("raft log: empty (next index {first})"),
    }
    println!("dispatched up to: {:?}", store.dispatched().map(|i| i.0));
    for (q, min, max) in store.queues() {
        println!("queue {}#{}: offsets [{min}, {max})", q.topic, q.queue_id);
    }
    for t in store.meta().topics()? {
        println!(
            "topic {}: read {} write {} perm {}",
            t.name, t.read_queue_nums, t.write_queue_nums, t.perm
        );
    }
    Ok(())
}

/// A topic message type's name (any case) as its `raftmq.v1.TopicMessageType` number.
fn parse_message_type(s: &str) -> Result<i32, String> {
    raftmq_proto::v1::TopicMessageType::from_str_name(&s.to_ascii_uppercase())
        .map(|t| t as i32)
        .ok_or_else(|| format!("{s:?}: one of MIXED, NORMAL, FIFO, DELAY, TRANSACTION"))
}

/// The name of a topic message type number.
fn message_type_name(code: i32) -> &'static str {
    raftmq_proto::v1::TopicMessageType::try_from(code).map_or("UNKNOWN", |t| t.as_str_name())
}
