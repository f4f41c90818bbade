//! The `raftmq` binary, run as a real process.

use std::process::Command;

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
