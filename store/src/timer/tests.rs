use super::*;
use crate::SimDisk;

fn key(due_ms: u64, pos: u64) -> TimerKey {
    TimerKey {
        due_ms,
        position: Position(pos),
    }
}

#[test]
fn record_and_cursor_golden_bytes() {
    let t = Timer {
        key: key(1_700_000_000_123, 4096),
        size: 300,
    };
    let b = t.encode();
    assert_eq!(b.len(), RECORD_LEN);
    assert_eq!(b[0], 1);
    assert_eq!(&b[1..5], &300u32.to_le_bytes());
    let mut crc_in = Vec::new();
    crc_in.extend_from_slice(&1_700_000_000_123u64.to_le_bytes());
    crc_in.extend_from_slice(&4096u64.to_le_bytes());
    crc_in.extend_from_slice(&300u32.to_le_bytes());
    assert_eq!(&b[5..9], &crc32c::crc32c(&crc_in).to_le_bytes());
    assert_eq!(Timer::decode(t.key, &b).unwrap(), t);

    let c = encode_cursor(key(7, 9));
    let mut want = vec![1u8];
    want.extend_from_slice(&7u64.to_le_bytes());
    want.extend_from_slice(&9u64.to_le_bytes());
    assert_eq!(c, want);
    assert_eq!(decode_cursor(&c).unwrap(), key(7, 9));
}

#[test]
fn bad_records_are_errors() {
    let t = Timer {
        key: key(10, 20),
        size: 30,
    };
    let good = t.encode();
    // Another key than the one it was stored under: the CRC says so.
    assert!(Timer::decode(key(10, 21), &good).is_err());
    let mut v2 = good.clone();
    v2[0] = 2;
    assert!(Timer::decode(t.key, &v2).is_err());
    let mut flipped = good.clone();
    flipped[2] ^= 1;
    assert!(Timer::decode(t.key, &flipped).is_err());
    assert!(Timer::decode(t.key, &good[..5]).is_err());
    let mut long = good.clone();
    long.push(0);
    assert!(Timer::decode(t.key, &long).is_err());
    assert!(decode_cursor(&[1, 2, 3]).is_err());
    for bad in ["", "1", "1:", ":2", "a:2", "1:2:3", "-1:2"] {
        assert!(bad.parse::<TimerKey>().is_err(), "{bad}");
    }
    assert_eq!("5:6".parse::<TimerKey>().unwrap(), key(5, 6));
    assert_eq!(key(5, 6).to_string(), "5:6");
}

#[test]
fn index_orders_by_due_and_tracks_positions() {
    let disk = SimDisk::new();
    let meta = MetaStore::open(&disk).unwrap();
    let mut txn = meta.begin(false).unwrap();
    for (due, pos) in [(300, 10), (100, 30), (100, 20), (200, 40)] {
        txn.put_timer(Timer {
            key: key(due, pos),
            size: 1,
        })
        .unwrap();
    }
    txn.commit().unwrap();
    let keys = |v: Vec<Timer>| v.into_iter().map(|t| t.key).collect::<Vec<_>>();
    assert_eq!(
        keys(meta.timers_due(None, 200, 10).unwrap()),
        vec![key(100, 20), key(100, 30), key(200, 40)]
    );
    assert_eq!(
        keys(meta.timers_due(Some(key(100, 20)), 200, 1).unwrap()),
        vec![key(100, 30)]
    );
    assert_eq!(meta.timers(None, 0).unwrap().1, 4);
    assert_eq!(meta.oldest_pending_timer().unwrap(), Some(Position(10)));
    assert_eq!(
        meta.timer_at(Position(40)).unwrap().unwrap().key,
        key(200, 40)
    );
    assert_eq!(meta.timer_at(Position(41)).unwrap(), None);

    let mut txn = meta.begin(false).unwrap();
    assert_eq!(txn.take_timer(key(300, 10)).unwrap().unwrap().size, 1);
    assert_eq!(txn.take_timer(key(300, 10)).unwrap(), None);
    let taken = txn.take_timers_upto(key(100, 30)).unwrap();
    assert_eq!(keys(taken), vec![key(100, 20), key(100, 30)]);
    txn.set_timer_cursor(key(100, 30)).unwrap();
    txn.recall_timer(key(100, 25)).unwrap();
    txn.recall_timer(key(250, 50)).unwrap();
    txn.forget_recalled_upto(key(100, 30)).unwrap();
    txn.refuse_timer_copy(Position(900)).unwrap();
    txn.commit().unwrap();
    assert_eq!(meta.timers_recalled().unwrap(), vec![key(250, 50)]);
    assert_eq!(meta.oldest_pending_timer().unwrap(), Some(Position(40)));
    assert_eq!(meta.timer_cursor().unwrap(), Some(key(100, 30)));
    assert!(meta.timer_copy_refused(Position(900)).unwrap());

    let mut txn = meta.begin(false).unwrap();
    txn.forget_refused_copies_below(Position(901)).unwrap();
    txn.clear_timers().unwrap();
    txn.commit().unwrap();
    assert!(!meta.timer_copy_refused(Position(900)).unwrap());
    assert_eq!(meta.timers(None, 10).unwrap(), (vec![], 0));
    assert_eq!(meta.timer_cursor().unwrap(), None);
    assert!(meta.timers_recalled().unwrap().is_empty());
}
