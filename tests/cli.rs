//! The `raftmq` binary, run as a real process: `store check` on a directory; the
//! transaction commands (`send --transaction`, `txn list`, `txn end`); and timed messages
//! (`send --delay-ms`, `recall`), consumer group configs (`group create|update|list`) and
//! dead letters (`dlq list|resend`, `topic update --perm`) — against a name server and a
//! broker run as `raftmq` processes.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use raftmq_testkit::{Deadline, wait_for};

fn raftmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftmq"))
}

#[test]
fn store_check_reports_an_empty_directory_and_refuses_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = raftmq()
        .args(["store", "check", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("raft log: empty"), "{stdout}");

    let out = raftmq()
        .args(["store", "check", "--data-dir", "/nonexistent/raftmq"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));
}

#[test]
fn store_check_finds_corruption_in_a_written_store() {
    use std::sync::Arc;

    use raftmq_store::message::encode_batch;
    use raftmq_store::{EntryRef, LogIndex, Message, MmapDisk, RecordKind, Store, StoreConfig};

    let dir = tempfile::tempdir().unwrap();
    let seg = 1u64 << 20;
    {
        let disk = Arc::new(MmapDisk::open(dir.path()).unwrap());
        let mut s = Store::open(
            disk,
            StoreConfig {
                segment_bytes: seg,
                max_record_bytes: 64 * 1024,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let p = encode_batch(&[Message {
            topic: "T".into(),
            body: b"hello".to_vec(),
            ..Message::default()
        }])
        .unwrap();
        for i in 1..=3 {
            s.append(&[EntryRef {
                term: 1,
                index: LogIndex(i),
                kind: RecordKind::MESSAGES,
                timestamp_ms: 1,
                payload: &p,
            }])
            .unwrap();
        }
        s.dispatch_upto(LogIndex(3)).unwrap();
        s.checkpoint().unwrap();
    }
    let args = |d: &std::path::Path| {
        let mut c = raftmq();
        c.args([
            "store",
            "check",
            "--segment-bytes",
            &seg.to_string(),
            "--data-dir",
        ])
        .arg(d);
        c
    };
    let out = args(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("indexes [1, 3]") && stdout.contains("queue T#0: offsets [0, 3)"),
        "{stdout}"
    );

    // Flip one payload byte of the first record on disk: check must fail and name the place.
    let path = dir.path().join("commitlog/00000000000000000000");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[60] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let out = args(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("corruption in commitlog/00000000000000000000 at byte 0"),
        "{stderr}"
    );
}

/// Kills every child on drop, so a failing test leaves no process behind.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

use raftmq_testkit::free_port;

/// Runs `raftmq <line>` to its end (off the runtime's threads); `line` is split at
/// whitespace (no argument here has a space).
async fn run(line: String) -> Output {
    tokio::task::spawn_blocking(move || raftmq().args(line.split_whitespace()).output())
        .await
        .expect("the command's thread")
        .expect("raftmq runs")
}

/// Runs `raftmq <line>` and returns its stdout; fails the test (with stderr) if it failed.
async fn ok(line: String) -> String {
    let out = run(line.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "raftmq {line} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The msg_id a `send --transaction` line names (`sent <msg_id> in a transaction …`).
fn sent_id(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| panic!("no send line in {stdout}"));
    line.split_whitespace()
        .nth(1)
        .expect("a msg_id")
        .to_string()
}

/// The row of `txn list` for `msg_id`, as its cells (the reason, last, joined again).
fn txn_row(list: &str, msg_id: &str) -> Vec<String> {
    let line = list
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(msg_id))
        .unwrap_or_else(|| panic!("no row for {msg_id} in\n{list}"));
    let mut cells: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    let reason = cells.split_off(10).join(" ");
    cells.push(reason);
    cells
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_roll_back_and_are_checked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    // One replica (enough for the commands), and a short wait before the first check.
    let (_procs, ns) = one_replica(
        dir.path(),
        "[transaction]\ntimeout_ms = 1000\ncheck_interval_ms = 2000\nscan_interval_ms = 50\n",
    )
    .await;
    let send = |rest: &str| format!("send --namesrv {ns} --topic T {rest}");

    let out = ok(send("--body committed --transaction commit")).await;
    assert!(out.contains("local commit, committed at offset 0"), "{out}");
    let committed = sent_id(&out);
    let out = ok(send("--body rolled-back --transaction rollback")).await;
    assert!(out.contains("local rollback, rolled back"), "{out}");
    let rolled_back = sent_id(&out);
    let out = ok(send(
        "--body checked --transaction unknown --check commit --wait-check-secs 30",
    ))
    .await;
    let checked = sent_id(&out);
    assert!(
        out.contains("local unknown, left to the broker's check"),
        "{out}"
    );
    assert!(
        out.contains(&format!("checked {checked}: check 1 arrived")),
        "{out}"
    );
    assert!(
        out.contains(&format!("decided {checked}: committed at index")),
        "{out}"
    );

    // Exactly the two committed messages are in the queue, in order; the rolled back one
    // never is.
    let stats = ok(format!("topic stats --namesrv {ns} --topic T")).await;
    assert!(stats.contains("g1 T#0: [0, 2)"), "{stats}");
    let consumed = ok(format!(
        "consume --namesrv {ns} --topic T --group C --count 2 --idle-ms 20000"
    ))
    .await;
    let bodies: Vec<&str> = consumed
        .lines()
        .filter_map(|l| l.split(" body ").nth(1))
        .collect();
    assert_eq!(bodies, ["committed", "checked"], "{consumed}");

    // The table: every decision with its index and reason; nothing pending.
    let all = ok(format!("txn list --namesrv {ns} --all")).await;
    assert!(all.starts_with("GROUP "), "{all}");
    assert!(all.contains("g1: 0 pending, 3 listed"), "{all}");
    let row = txn_row(&all, &committed);
    assert_eq!(&row[3..5], ["raftmq-cli", "T#0"], "{row:?}");
    assert_eq!((&*row[8], &*row[10]), ("committed", "commit"), "{row:?}");
    let row = txn_row(&all, &rolled_back);
    assert_eq!(
        (&*row[8], &*row[10]),
        ("rolled_back", "rollback by producer"),
        "{row:?}"
    );
    let row = txn_row(&all, &checked);
    assert_eq!(
        (&*row[6], &*row[8]),
        ("1", "committed"),
        "one check: {row:?}"
    );
    assert!(row[9].parse::<u64>().is_ok(), "a decided index: {row:?}");

    // A transaction left undecided with no member of its producer group connected: the
    // command gives up (non-zero) at once, well before the check is due (1 s), and the table
    // shows it pending, never checked.
    let out = run(send(
        "--body left --transaction unknown --producer-group gone --wait-check-secs 0",
    ))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still undecided"));
    let left = sent_id(&String::from_utf8_lossy(&out.stdout));
    let pending = ok(format!("txn list --namesrv {ns}")).await;
    assert!(pending.contains("g1: 1 pending, 1 listed"), "{pending}");
    let row = txn_row(&pending, &left);
    assert_eq!(
        (&*row[3], &*row[6], &*row[8], &*row[9]),
        ("gone", "0", "pending", "-"),
        "{row:?}"
    );

    // The operator ends it by hand, by the OFFSET_MSG_ID the table shows (it names the group).
    let left_at = row[2].clone();
    let end = |rest: &str| format!("txn end --namesrv {ns} {rest}");
    let out = ok(end(&format!("--offset-msg-id {left_at} --rollback"))).await;
    assert_eq!(out, format!("ended {left} ({left_at}): rolled back\n"));
    // And commits another one the same way: it reaches the queue after the two others.
    let out = run(send(
        "--body manual --transaction unknown --producer-group gone --wait-check-secs 0",
    ))
    .await;
    assert!(!out.status.success());
    let manual = sent_id(&String::from_utf8_lossy(&out.stdout));
    let pending = ok(format!("txn list --namesrv {ns}")).await;
    let manual_at = txn_row(&pending, &manual)[2].clone();
    let out = ok(end(&format!("--offset-msg-id {manual_at} --commit"))).await;
    assert_eq!(
        out,
        format!("ended {manual} ({manual_at}): committed at queue 0 offset 2\n")
    );
    let stats = ok(format!("topic stats --namesrv {ns} --topic T")).await;
    assert!(stats.contains("g1 T#0: [0, 3)"), "{stats}");
    // Recorded as the producer's decisions; nothing pending holds retention any more.
    let all = ok(format!("txn list --namesrv {ns} --all")).await;
    assert!(all.contains("g1: 0 pending, 5 listed"), "{all}");
    let row = txn_row(&all, &left);
    assert_eq!(
        (&*row[8], &*row[10]),
        ("rolled_back", "rollback by producer"),
        "{row:?}"
    );
    let row = txn_row(&all, &manual);
    assert_eq!((&*row[8], &*row[10]), ("committed", "commit"), "{row:?}");

    // A transaction no longer pending is refused, naming its state; so is one never stored.
    let out = run(end(&format!("--offset-msg-id {left_at} --commit"))).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{left_at}: TXN_ALREADY_DECIDED: transaction {left} was already rolled back"
        )),
        "{stderr}"
    );
    let out = run(end("--offset-msg-id 00000000000FFFFFg1 --rollback")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("TXN_NOT_FOUND"), "{stderr}");
}

/// A name server and a one-replica broker (with `extra` appended to its config) as `raftmq`
/// processes, and topic `T` (one queue) created; the name server's address.
async fn one_replica(dir: &std::path::Path, extra: &str) -> (Procs, String) {
    let ns = format!("127.0.0.1:{}", free_port());
    let broker = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("g1-1.toml");
    std::fs::write(
        &cfg,
        format!(
            "group = \"g1\"\nreplica_id = 1\nlisten = \"{broker}\"\ndata_dir = \"{}\"\nnamesrv_addrs = [\"{ns}\"]\nsegment_mib = 16\nindex_max_entries = 100000\nindex_hash_slots = 25000\n[initial_members]\n1 = \"{broker}\"\n{extra}",
            dir.join("g1-1").display()
        ),
    )
    .unwrap();
    let spawn = |a: &[&str]| {
        raftmq()
            .args(a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn raftmq")
    };
    let procs = Procs(vec![
        spawn(&["namesrv", "--listen", &ns]),
        spawn(&["broker", "--config", cfg.to_str().unwrap()]),
    ]);
    wait_for(
        Deadline::every(Duration::from_secs(60), Duration::from_millis(200)),
        "topic T created",
        || async {
            let out = run(format!("topic create --namesrv {ns} --topic T --queues 1")).await;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
        },
    )
    .await;
    (procs, ns)
}

/// The bodies `consume` printed.
fn bodies(consumed: &str) -> Vec<&str> {
    consumed
        .lines()
        .filter_map(|l| l.split(" body ").nth(1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_group_configs_and_dead_letters_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_procs, ns) = one_replica(dir.path(), "[timer]\nscan_interval_ms = 50\n").await;
    let send = |rest: &str| format!("send --namesrv {ns} --topic T {rest}");

    // A timed message: the send prints its due time and handle; it is not in the queue yet.
    let out = ok(send("--body later --delay-ms 1500")).await;
    assert!(
        out.contains(", due at ") && out.contains("recall handle"),
        "{out}"
    );
    let out = ok(send("--body never --delay-ms 600000")).await;
    let handle = out
        .trim_end()
        .rsplit("recall handle ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    let stats = ok(format!("topic stats --namesrv {ns} --topic T")).await;
    assert!(
        stats.contains("g1 T#0: [0, 0)"),
        "nothing delivered yet: {stats}"
    );
    let recall = |h: &str| format!("recall --namesrv {ns} --topic T --handle {h}");
    let out = ok(recall(&handle)).await;
    assert!(out.contains("will not be delivered"), "{out}");
    // A second recall of the same handle is the same recall; garbage is refused.
    ok(recall(&handle)).await;
    let bad = run(recall("zz")).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a recall handle"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // Past the broker's maximum delay (3 days): refused, nothing stored.
    let far = run(send("--body far --delay-ms 999999999999")).await;
    assert!(!far.status.success());
    assert!(String::from_utf8_lossy(&far.stderr).contains("DelayOutOfRange"));
    let consumed = ok(format!(
        "consume --namesrv {ns} --topic T --group C1 --count 1 --idle-ms 20000"
    ))
    .await;
    assert_eq!(bodies(&consumed), ["later"], "{consumed}");

    // Consumer group configs: create, update (unset values kept), list; an unknown group's
    // update is refused.
    let group = |rest: &str| format!("group {rest} --namesrv {ns}");
    ok(group(
        "create --group G --max-reconsume-times 3 --retry-backoff 100ms",
    ))
    .await;
    ok(group("update --group G --max-reconsume-times 1")).await;
    let list = ok(group("list")).await;
    assert!(
        list.contains("g1\tG\tmax_reconsume_times 1\tretry_backoff 100ms\tconsume_from last"),
        "{list}"
    );
    let nope = run(group("update --group Nope --max-reconsume-times 2")).await;
    assert!(!nope.status.success());
    assert!(String::from_utf8_lossy(&nope.stderr).contains("GroupNotFound"));

    // A consumer of G that always fails: two deliveries (the group's maximum is 1), then
    // the DLQ.
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let f = failures.clone();
    let c = raftmq_client::PushConsumer::builder()
        .namesrv_addrs([ns.as_str()])
        .group("G")
        .subscribe("T", "*")
        .consume_from(raftmq_client::consumer::ConsumeFrom::Last)
        .long_poll(Duration::from_millis(300))
        .concurrent(move |_| {
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            raftmq_client::ConsumeResult::ReconsumeLater
        })
        .build()
        .unwrap();
    c.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    ok(send("--body poison")).await;
    let dlq = wait_for(
        Deadline::every(Duration::from_secs(30), Duration::from_millis(300)),
        "the poison message in the DLQ",
        || async {
            let out = ok(format!("dlq list --namesrv {ns} --group G")).await;
            out.contains("1 message(s) in %DLQ%G").then_some(out)
        },
    )
    .await;
    c.shutdown().await;
    assert_eq!(failures.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(dlq.contains("attempts 2\tfrom T\t"), "{dlq}");
    assert!(dlq.contains("\"poison\""), "{dlq}");

    // Opened by the operator, the DLQ is consumable like any topic.
    let out = ok(format!(
        "topic update --namesrv {ns} --topic %DLQ%G --perm 6"
    ))
    .await;
    assert!(out.contains("updated on g1"), "{out}");
    let consumed = ok(format!(
        "consume --namesrv {ns} --topic %DLQ%G --group D --count 1 --idle-ms 20000"
    ))
    .await;
    assert_eq!(bodies(&consumed), ["poison"], "{consumed}");
    // Resent: back in T, after "later" and the original "poison".
    let out = ok(format!("dlq resend --namesrv {ns} --group G")).await;
    assert!(
        out.contains("1 message(s) resent") && out.contains(" to T as "),
        "{out}"
    );
    let consumed = ok(format!(
        "consume --namesrv {ns} --topic T --group C2 --count 3 --idle-ms 20000"
    ))
    .await;
    assert_eq!(
        bodies(&consumed),
        ["later", "poison", "poison"],
        "{consumed}"
    );
}
