use std::sync::Arc;

use super::record::*;
use super::*;
use crate::disk::SimDisk;

const SEG: u64 = 1024;

fn entry(index: u64, payload: &[u8]) -> EntryRef<'_> {
    EntryRef {
        term: 1,
        index: LogIndex(index),
        kind: RecordKind::MESSAGES,
        timestamp_ms: 1000 + index,
        payload,
    }
}

fn open(disk: &SimDisk) -> (CommitLog, Vec<ScannedRecord>) {
    CommitLog::open(Arc::new(disk.clone()), SEG, ChainPoint::default()).expect("open")
}

#[test]
fn record_golden_bytes() {
    let mut out = Vec::new();
    let e = EntryRef {
        term: 2,
        index: LogIndex(7),
        kind: RecordKind(3),
        timestamp_ms: 0x0102,
        payload: b"hi",
    };
    let crc = encode_record(&mut out, &e, 0xAABB_CCDD);
    let expected: Vec<u8> = [
        &b"RMQC"[..],
        &46u32.to_le_bytes(),
        &crc.to_le_bytes(),
        &0xAABB_CCDDu32.to_le_bytes(),
        &[1, 3, 0, 0],
        &2u64.to_le_bytes(),
        &7u64.to_le_bytes(),
        &0x0102u64.to_le_bytes(),
        b"hi",
    ]
    .concat();
    assert_eq!(out, expected);
    assert_eq!(crc, crc32c::crc32c(&expected[12..]));
    // Pin the CRC itself so that an accidental change of the covered range is caught.
    assert_eq!(
        crc, 0x2e95_4c54,
        "crc of the golden record changed: {crc:#x}"
    );
}

#[test]
fn append_read_and_reopen() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let locs = log.append(&[entry(1, b"one"), entry(2, b"two")]).unwrap();
    assert_eq!(locs[0].position, Position(0));
    assert_eq!(locs[1].position, Position(HEADER_LEN as u64 + 3));
    let r = log.reader();
    assert_eq!(r.read(locs[1].position).unwrap().payload, b"two");
    r.sync_to(r.written()).unwrap();
    drop(log);
    let (log, scanned) = open(&disk);
    assert_eq!(scanned.len(), 2);
    assert_eq!(log.tail().last_index, Some(LogIndex(2)));
    assert_eq!(log.reader().read(locs[0].position).unwrap().payload, b"one");
}

#[test]
fn indexes_must_be_consecutive() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    log.append(&[entry(5, b"a")]).unwrap();
    assert!(matches!(
        log.append(&[entry(7, b"b")]),
        Err(StoreError::InvalidArgument(_))
    ));
    log.append(&[entry(6, b"b")]).unwrap();
}

#[test]
fn a_record_that_exactly_fits_stays_one_byte_more_rolls() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    // Exactly fits: leaves exactly HEADER_LEN bytes for the closing blank.
    let fit = (SEG as usize) - 2 * HEADER_LEN;
    let big = vec![7u8; fit];
    let locs = log.append(&[entry(1, &big)]).unwrap();
    assert_eq!(locs[0].position, Position(0));
    assert_eq!(log.tail().position.0, SEG - HEADER_LEN as u64);
    // Anything more does not fit: blank, then the next segment.
    let locs = log.append(&[entry(2, b"x")]).unwrap();
    assert_eq!(locs[0].position, Position(SEG));
    assert_eq!(
        log.reader().segment_starts(),
        vec![Position(0), Position(SEG)]
    );

    // One byte over the exact fit rolls at once.
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let over = vec![7u8; fit + 1];
    log.append(&[entry(1, b"a")]).unwrap();
    let locs = log
        .append(&[entry(2, &over[..fit - HEADER_LEN - 1 + 1])])
        .unwrap();
    assert_eq!(
        locs[0].position,
        Position(SEG),
        "does not fit after the first record"
    );
    // Blank + roll survive a reopen.
    log.reader().sync_to(log.reader().written()).unwrap();
    drop(log);
    let (log, scanned) = open(&disk);
    assert_eq!(
        scanned.iter().map(|s| s.header.index.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        log.tail().position.0,
        SEG + (HEADER_LEN + fit - HEADER_LEN) as u64
    );
}

#[test]
fn too_large_a_record_is_refused() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let big = vec![0u8; SEG as usize];
    assert!(matches!(
        log.append(&[entry(1, &big)]),
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(log.reader().written(), Position(0));
}

#[test]
fn torn_tail_is_cut_and_synced_prefix_kept() {
    for seed in 0..50 {
        let disk = SimDisk::new();
        let (mut log, _) = open(&disk);
        log.append(&[entry(1, b"synced-1"), entry(2, b"synced-2")])
            .unwrap();
        let r = log.reader();
        r.sync_to(r.written()).unwrap();
        log.append(&[entry(3, &[3u8; 100])]).unwrap();
        disk.power_loss(seed);
        let (log, scanned) = open(&disk);
        let got: Vec<u64> = scanned.iter().map(|s| s.header.index.0).collect();
        assert!(
            got == vec![1, 2] || got == vec![1, 2, 3],
            "seed {seed}: {got:?}"
        );
        // Appending continues from the recovered end.
        let mut log = log;
        let next = got.len() as u64 + 1;
        log.append(&[entry(next, b"after")]).unwrap();
    }
}

#[test]
fn corruption_before_the_synced_marker_refuses_to_open() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    log.append(&[entry(1, b"aaaa"), entry(2, b"bbbb")]).unwrap();
    let r = log.reader();
    r.sync_to(r.written()).unwrap();
    drop(log);
    // Flip a payload bit of record 1 (synced).
    disk.flip_bit(&segment_path(0), HEADER_LEN as u64 + 1, 3)
        .unwrap();
    let err = CommitLog::open(Arc::new(disk.clone()), SEG, ChainPoint::default()).unwrap_err();
    match err {
        StoreError::Corrupt { file, position, .. } => {
            assert_eq!(file, segment_path(0));
            assert_eq!(position, 0);
        }
        e => panic!("expected corruption, got {e}"),
    }
}

#[test]
fn damage_below_the_marker_is_found_and_bounds_the_synced_index() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let bodies: Vec<Vec<u8>> = (1..=6).map(|i| vec![i as u8; 10]).collect();
    let entries: Vec<EntryRef<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| entry(i as u64 + 1, b))
        .collect();
    let locs = log.append(&entries).unwrap();
    let r = log.reader();
    r.sync_to(r.written()).unwrap();
    // Entry 7 written but never synced: not damage, whatever happens to it.
    log.append(&[entry(7, b"unsynced")]).unwrap();
    drop(log);
    let find = || CommitLog::find_damage(Arc::new(disk.clone()), SEG, ChainPoint::default());
    assert_eq!(find().unwrap(), None, "an intact log has no damage");
    // Record 3's payload, below the marker.
    disk.flip_bit(
        &segment_path(0),
        locs[2].position.0 + HEADER_LEN as u64 + 2,
        1,
    )
    .unwrap();
    let d = find().unwrap().expect("damage found");
    assert_eq!(d.good_end.position, locs[2].position);
    assert_eq!(d.good_end.last_index, Some(LogIndex(2)));
    // The headers past the flipped payload still chain: every synced entry counted exactly.
    assert_eq!(d.synced_index_bound(), 6);
    // A flipped bit in record 4's length: its length is not vouched for (the header it leads
    // to does not chain), so the bytes from it to the marker count one entry per header
    // length — still every synced entry, and not absurdly more.
    disk.flip_bit(&segment_path(0), locs[3].position.0 + 4, 6)
        .unwrap();
    let d = find().unwrap().expect("damage found");
    assert_eq!(d.last_index, Some(LogIndex(3)));
    let bound = d.synced_index_bound();
    assert!(bound >= 6, "every synced entry is under the bound: {bound}");
    assert!(
        bound <= 3 + (3 * 54_u64).div_ceil(HEADER_LEN as u64),
        "and not absurdly above: {bound}"
    );
    // find_damage changed nothing: open still refuses.
    assert!(matches!(
        CommitLog::open(Arc::new(disk.clone()), SEG, ChainPoint::default()),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn corruption_in_the_unsynced_tail_is_cut() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    log.append(&[entry(1, b"aaaa")]).unwrap();
    let r = log.reader();
    r.sync_to(r.written()).unwrap();
    let locs = log.append(&[entry(2, b"bbbb")]).unwrap();
    drop(log);
    disk.flip_bit(&segment_path(0), locs[0].position.0 + HEADER_LEN as u64, 0)
        .unwrap();
    let (log, scanned) = open(&disk);
    assert_eq!(scanned.len(), 1);
    assert_eq!(log.tail().position, locs[0].position);
}

#[test]
fn truncate_then_append_and_stale_records_never_return() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let locs = log
        .append(&[entry(1, b"keep"), entry(2, b"old2"), entry(3, b"old3")])
        .unwrap();
    let r = log.reader();
    r.sync_to(r.written()).unwrap();
    let point = log
        .truncation_point(locs[1].position, Some(Position(locs[0].len.into())))
        .unwrap();
    log.truncate(point).unwrap();
    assert_eq!(log.tail().last_index, Some(LogIndex(1)));
    assert_eq!(r.written(), locs[1].position);
    // Crash right after the truncation: the old entries must not come back.
    disk.power_loss(1);
    let (mut log, scanned) = open(&disk);
    assert_eq!(scanned.len(), 1);
    // A new entry 2 of the same size lands exactly where old 2 was; old 3 after it is stale
    // but chain-broken, so it must not be resurrected by a later recovery.
    let new_locs = log
        .append(&[EntryRef {
            term: 2,
            ..entry(2, b"new2")
        }])
        .unwrap();
    assert_eq!(new_locs[0].position, locs[1].position);
    log.reader().sync_to(log.reader().written()).unwrap();
    drop(log);
    let (log, scanned) = open(&disk);
    assert_eq!(
        scanned
            .iter()
            .map(|s| (s.header.index.0, s.header.term))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2)]
    );
    assert_eq!(
        log.reader().read(new_locs[0].position).unwrap().payload,
        b"new2"
    );
}

/// A removed record that opened a segment (it did not fit in the previous one) takes the
/// blank that closed the previous segment with it: a smaller record appended next lands
/// where a log that never held the removed one puts it, byte for byte (regression: replicas
/// of a group disagreed on positions after such a truncation, sim seed 90144).
#[test]
fn truncating_a_record_that_opened_a_segment_removes_the_blank_too() {
    let big = vec![7u8; 500];
    let small = vec![8u8; 100];
    let first = vec![1u8; 600];
    // Reference: a log that only ever held entries 1 and the small 2.
    let clean = SimDisk::new();
    let (mut reference, _) = open(&clean);
    reference.append(&[entry(1, &first)]).unwrap();
    let want = reference
        .append(&[EntryRef {
            term: 2,
            ..entry(2, &small)
        }])
        .unwrap();
    assert!(
        want[0].position.0 < SEG,
        "the small entry fits in segment 0"
    );

    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let one = log.append(&[entry(1, &first)]).unwrap();
    let stale = log.append(&[entry(2, &big)]).unwrap();
    assert_eq!(
        stale[0].position,
        Position(SEG),
        "the big entry opens segment 1"
    );
    let kept_end = Position(one[0].position.0 + u64::from(one[0].len));
    let point = log
        .truncation_point(stale[0].position, Some(kept_end))
        .unwrap();
    assert_eq!(point.position, kept_end);
    assert_eq!(point.last_index, Some(LogIndex(1)));
    log.truncate(point).unwrap();
    assert!(!disk.exists(&segment_path(SEG)), "segment 1 is gone");
    let got = log
        .append(&[EntryRef {
            term: 2,
            ..entry(2, &small)
        }])
        .unwrap();
    assert_eq!(got[0].position, want[0].position);
    assert_eq!(log.tail(), reference.tail(), "same chain, same end");
    let (a, b) = (log.reader(), reference.reader());
    assert_eq!(
        a.read_bytes(Position(0), a.written().0 as u32).unwrap(),
        b.read_bytes(Position(0), b.written().0 as u32).unwrap()
    );
    // And it survives a crash: the blank does not come back.
    a.sync_to(a.written()).unwrap();
    drop(log);
    let (log, scanned) = open(&disk);
    assert_eq!(scanned.len(), 2);
    assert_eq!(log.tail(), reference.tail());

    // A kept end that is not followed by the blank reaching `at` is refused.
    let (mut bad, _) = open(&SimDisk::new());
    bad.append(&[entry(1, &first)]).unwrap();
    let stale = bad.append(&[entry(2, &big)]).unwrap();
    assert!(
        bad.truncation_point(stale[0].position, Some(Position(8)))
            .is_err()
    );
}

#[test]
fn purge_deletes_whole_segments_only() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let payload = vec![1u8; 400];
    for i in 1..=6 {
        log.append(&[entry(i, &payload)]).unwrap();
    }
    let starts = log.reader().segment_starts();
    assert!(starts.len() >= 3, "{starts:?}");
    let deleted = log.purge_before(Position(2 * SEG + 5)).unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(log.reader().first(), Position(2 * SEG));
    assert!(matches!(
        log.reader().read(Position(0)),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(!disk.exists(&segment_path(0)));
    assert!(!disk.exists(&segment_path(SEG)));
    // One deleted segment was kept as the spare, stale content and all …
    assert!(disk.exists(SPARE));
    let last_index = log.tail().last_index.unwrap().0;
    let first_kept = log.reader().read_header(Position(2 * SEG)).unwrap();
    // … and is reused by the next roll; its stale records never join the log.
    for i in last_index + 1..=last_index + 6 {
        log.append(&[entry(i, &payload)]).unwrap();
    }
    assert!(!disk.exists(SPARE));
    let r = log.reader();
    r.sync_to(r.written()).unwrap();
    drop(log);
    let from = ChainPoint {
        position: Position(2 * SEG),
        prev_crc: first_kept.prev_crc,
        last_index: Some(LogIndex(first_kept.index.0 - 1)),
    };
    let (log, scanned) = CommitLog::open(Arc::new(disk.clone()), SEG, from).unwrap();
    assert_eq!(log.tail().last_index, Some(LogIndex(last_index + 6)));
    assert_eq!(
        scanned.len() as u64,
        last_index + 6 - first_kept.index.0 + 1
    );
    assert_eq!(log.reader().verify().unwrap(), scanned.len() as u64);
}

#[test]
fn reading_garbage_positions_errors_without_panic() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    log.append(&[entry(1, b"hello")]).unwrap();
    let r = log.reader();
    // Inside the record, not at its start.
    assert!(matches!(
        r.read(Position(3)),
        Err(StoreError::Corrupt { .. }) | Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        r.read(Position(10_000)),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(r.read_bytes(Position(0), u32::MAX).is_err());
}

#[test]
fn an_unknown_record_version_is_rejected_not_skipped() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    log.append(&[entry(1, b"v")]).unwrap();
    let r = log.reader();
    r.sync_to(r.written()).unwrap();
    drop(log);
    // Rewrite the record with version 2 and a valid crc: a newer format, not a torn write.
    let f = disk.open(&segment_path(0)).unwrap();
    let mut b = vec![0u8; HEADER_LEN + 1];
    f.read_at(0, &mut b).unwrap();
    b[16] = 2;
    let crc = crc32c::crc32c(&b[12..]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    f.write_at(0, &b).unwrap();
    f.sync_all().unwrap();
    let err = CommitLog::open(Arc::new(disk.clone()), SEG, ChainPoint::default()).unwrap_err();
    assert!(
        err.to_string().contains("unknown record version 2"),
        "{err}"
    );
}

#[test]
fn a_prepared_spare_becomes_the_next_segment_and_a_leftover_one_is_dropped() {
    let disk = SimDisk::new();
    let (mut log, _) = open(&disk);
    let r = log.reader();
    assert!(!r.wants_spare());
    let half = vec![1u8; SEG as usize / 2];
    log.append(&[entry(1, &half)]).unwrap();
    assert!(r.wants_spare());
    assert!(r.prepare_spare().unwrap());
    assert!(!r.wants_spare(), "a ready spare is not made twice");
    assert!(!r.prepare_spare().unwrap());
    assert!(disk.exists(SPARE));
    log.append(&[entry(2, &half)]).unwrap();
    assert!(!disk.exists(SPARE), "the roll renamed the spare into place");
    assert_eq!(r.segment_starts(), vec![Position(0), Position(SEG)]);
    r.sync_to(r.written()).unwrap();
    // A spare left by a crash is removed at open; the log is intact.
    assert!(
        log.reader().prepare_spare().unwrap(),
        "a new spare is made for the next roll"
    );
    assert!(disk.exists(SPARE));
    drop(log);
    let (log, scanned) = open(&disk);
    assert!(!disk.exists(SPARE));
    assert_eq!(scanned.len(), 2);
    assert_eq!(log.reader().read(Position(SEG)).unwrap().payload, half);
}
