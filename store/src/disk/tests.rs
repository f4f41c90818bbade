use super::*;

use std::sync::Arc;

fn exercise(disk: &dyn Disk) {
    let f = disk.create("a/b/file", 4096).unwrap();
    assert_eq!(f.len(), 4096);
    assert!(matches!(
        disk.create("a/b/file", 10),
        Err(DiskError::Exists { .. })
    ));
    f.write_at(100, b"hello").unwrap();
    let mut buf = [0u8; 5];
    f.read_at(100, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    f.write_vectored_at(200, &[b"ab", b"", b"cde", &[b'f'; 3000]])
        .unwrap();
    let mut v = [0u8; 8];
    f.read_at(200, &mut v).unwrap();
    assert_eq!(&v, b"abcdefff");
    assert!(matches!(
        f.write_vectored_at(4000, &[b"x", &[0; 96]]),
        Err(DiskError::OutOfBounds { .. })
    ));
    f.store_at(300, b"mapped").unwrap();
    f.read_at(300, &mut buf).unwrap();
    assert_eq!(&buf, b"mappe");
    assert!(matches!(
        f.store_at(4093, b"abcd"),
        Err(DiskError::OutOfBounds { .. })
    ));
    f.sync_range(0, 4096).unwrap();
    assert!(matches!(
        f.write_at(4094, b"abc"),
        Err(DiskError::OutOfBounds { .. })
    ));
    assert!(matches!(
        f.read_at(u64::MAX, &mut buf),
        Err(DiskError::OutOfBounds { .. })
    ));
    assert!(matches!(
        f.sync_range(4000, 200),
        Err(DiskError::OutOfBounds { .. })
    ));
    f.set_len(8192).unwrap();
    f.write_at(8000, b"x").unwrap();
    f.sync_all().unwrap();
    f.set_len(50).unwrap();
    assert_eq!(f.len(), 50);
    assert!(f.read_at(100, &mut buf).is_err());
    let empty = disk.create("a/empty", 0).unwrap();
    assert!(empty.is_empty());
    empty.set_len(10).unwrap();
    empty.write_at(0, b"0123456789").unwrap();
    assert_eq!(disk.list("a").unwrap(), vec!["empty".to_string()]);
    assert_eq!(disk.list_dirs("a").unwrap(), vec!["b".to_string()]);
    assert_eq!(disk.list_dirs("").unwrap(), vec!["a".to_string()]);
    assert_eq!(disk.list("a/b").unwrap(), vec!["file".to_string()]);
    assert!(disk.list("nope").unwrap().is_empty());
    disk.rename("a/empty", "c/moved").unwrap();
    assert!(!disk.exists("a/empty"));
    let moved = disk.open("c/moved").unwrap();
    let mut ten = [0u8; 10];
    moved.read_at(0, &mut ten).unwrap();
    assert_eq!(&ten, b"0123456789");
    assert!(matches!(
        disk.rename("c/moved", "a/b/file"),
        Err(DiskError::Exists { .. })
    ));
    assert!(disk.rename("nope", "x").is_err());
    let again = disk.open("a/b/file").unwrap();
    let mut two = [0u8; 2];
    again.read_at(0, &mut two).unwrap();
    disk.remove("a/b/file").unwrap();
    assert!(!disk.exists("a/b/file"));
    assert!(disk.open("a/b/file").is_err());
    for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
        assert!(
            matches!(disk.create(bad, 1), Err(DiskError::InvalidPath { .. })),
            "{bad}"
        );
    }
}

#[test]
fn mmap_disk_contract() {
    let dir = tempfile::tempdir().unwrap();
    let disk = MmapDisk::open(dir.path().join("root")).unwrap();
    exercise(&disk);
}

#[test]
fn lazy_disk_contract() {
    let dir = tempfile::tempdir().unwrap();
    let disk = LazyDisk::new(Arc::new(MmapDisk::open(dir.path().join("root")).unwrap()));
    exercise(&disk);
}

#[test]
fn a_lazy_disk_keeps_only_what_was_synced_when_its_process_dies() {
    let dir = tempfile::tempdir().unwrap();
    {
        let disk = LazyDisk::new(Arc::new(MmapDisk::open(dir.path()).unwrap()));
        let f = disk.create("seg", 8192).unwrap();
        f.write_at(0, b"synced").unwrap();
        f.write_at(100, b"unsynced, outside the synced range")
            .unwrap();
        f.store_at(4096, b"stored, synced").unwrap();
        f.sync_range(0, 6).unwrap();
        f.sync_range(4096, 14).unwrap();
        f.write_at(2, b"later").unwrap();
        // A second handle of the same path sees the first one's unsynced bytes.
        let again = disk.open("seg").unwrap();
        let mut b = [0u8; 7];
        again.read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"sylater");
        f.set_len(10_000).unwrap();
        f.write_at(9_000, b"past the synced length").unwrap();
        // The process dies: nothing is flushed.
    }
    let disk = MmapDisk::open(dir.path()).unwrap();
    let f = disk.open("seg").unwrap();
    assert_eq!(f.len(), 8192, "the unsynced extension is gone");
    let mut b = [0u8; 6];
    f.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"synced", "the later unsynced write is gone");
    let mut u = [0u8; 8];
    f.read_at(100, &mut u).unwrap();
    assert_eq!(u, [0; 8], "never synced");
    let mut s = [0u8; 14];
    f.read_at(4096, &mut s).unwrap();
    assert_eq!(&s, b"stored, synced");
}

#[test]
fn sim_disk_contract() {
    exercise(&SimDisk::new());
}

#[test]
fn mmap_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let disk = MmapDisk::open(dir.path()).unwrap();
        let f = disk.create("seg", 8192).unwrap();
        f.write_at(4096, b"durable").unwrap();
        f.store_at(5000, b"stored").unwrap();
        f.sync_range(4096, 7).unwrap();
        f.sync_range(5000, 6).unwrap();
    }
    let disk = MmapDisk::open(dir.path()).unwrap();
    let f = disk.open("seg").unwrap();
    let mut b = [0u8; 7];
    f.read_at(4096, &mut b).unwrap();
    assert_eq!(&b, b"durable");
    let mut s = [0u8; 6];
    f.read_at(5000, &mut s).unwrap();
    assert_eq!(&s, b"stored");
}

#[test]
fn power_loss_keeps_synced_drops_unsynced() {
    let disk = SimDisk::new();
    let f = disk.create("f", 100).unwrap();
    f.write_at(0, b"AAAA").unwrap();
    f.sync_range(0, 4).unwrap();
    f.write_at(4, b"BBBB").unwrap(); // unsynced, not the last write
    f.write_at(8, b"CCCC").unwrap(); // unsynced, the last write: may be torn
    let report = disk.power_loss(7);
    let mut b = [0u8; 12];
    f.read_at(0, &mut b).unwrap();
    assert_eq!(&b[..4], b"AAAA");
    assert_eq!(
        &b[4..8],
        &[0; 4],
        "an unsynced write that is not the last is lost"
    );
    let (_, _, kept, of) = report.torn.clone().unwrap();
    assert_eq!(of, 4);
    assert_eq!(&b[8..8 + kept as usize], &b"CCCC"[..kept as usize]);
    assert!(b[8 + kept as usize..].iter().all(|&x| x == 0));
    // Different seeds tear at different lengths (the choice is seeded, not fixed).
    let lens: std::collections::BTreeSet<u64> = (0..64)
        .map(|s| {
            let d = SimDisk::new();
            let f = d.create("f", 100).unwrap();
            f.write_at(0, &[1; 50]).unwrap();
            d.power_loss(s).torn.unwrap().2
        })
        .collect();
    assert!(lens.len() > 5, "{lens:?}");
}

#[test]
fn power_loss_reverts_unsynced_length_changes_and_removed_handles_fail() {
    let disk = SimDisk::new();
    let f = disk.create("f", 10).unwrap();
    f.set_len(20).unwrap();
    disk.power_loss(0);
    assert_eq!(f.len(), 10);
    f.set_len(30).unwrap();
    f.sync_all().unwrap();
    disk.power_loss(0);
    assert_eq!(f.len(), 30);
    disk.remove("f").unwrap();
    let _new = disk.create("f", 5).unwrap();
    assert!(
        f.write_at(0, b"x").is_err(),
        "a handle to a removed file must not write the new one"
    );
}

#[test]
fn flip_bit_changes_one_bit() {
    let disk = SimDisk::new();
    let f = disk.create("f", 4).unwrap();
    disk.flip_bit("f", 2, 1).unwrap();
    let mut b = [0u8; 4];
    f.read_at(0, &mut b).unwrap();
    assert_eq!(b, [0, 0, 2, 0]);
    assert!(disk.flip_bit("f", 4, 0).is_err());
}

#[test]
fn a_fenced_incarnation_can_no_longer_touch_the_disk() {
    let disk = SimDisk::new();
    let old = disk.incarnation();
    let f = old.create("f", 8).unwrap();
    f.write_at(0, b"old").unwrap();
    disk.fence();
    assert!(f.write_at(0, b"zombie").is_err());
    assert!(f.sync_all().is_err());
    assert!(old.create("g", 1).is_err());
    assert!(old.remove("f").is_err());
    let new = disk.incarnation();
    let g = new.open("f").unwrap();
    let mut b = [0u8; 3];
    g.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"old");
}

#[test]
fn mmap_new_files_read_as_zeros_whatever_their_length() {
    let dir = tempfile::tempdir().unwrap();
    let disk = MmapDisk::open(dir.path()).unwrap();
    // `create_sequential` zero-fills with direct I/O when the length is whole pages, else
    // through the page cache; `create` always through the page cache.
    let lens = [1u64, 4096, 3 * 4096 + 100, (9 << 20) + 7, 3 << 20];
    for (i, (len, sequential)) in lens
        .into_iter()
        .flat_map(|l| [(l, false), (l, true)])
        .enumerate()
    {
        let name = format!("z{i}");
        let f = if sequential {
            disk.create_sequential(&name, len).unwrap()
        } else {
            disk.create(&name, len).unwrap()
        };
        assert_eq!(f.len(), len);
        let mut all = vec![1u8; len as usize];
        f.read_at(0, &mut all).unwrap();
        assert!(
            all.iter().all(|b| *b == 0),
            "file of {len} bytes is not all zeros"
        );
        f.write_at(len - 1, b"x").unwrap();
        let mut last = [0u8; 1];
        f.read_at(len - 1, &mut last).unwrap();
        assert_eq!(&last, b"x");
        // A write into the middle of a page not in the page cache keeps the page's zeros.
        if len > 8192 {
            f.write_at(4096 + 10, b"mid").unwrap();
            let mut page = vec![1u8; 4096];
            f.read_at(4096, &mut page).unwrap();
            assert_eq!(&page[10..13], b"mid");
            assert!(page[..10].iter().chain(&page[13..]).all(|b| *b == 0));
        }
    }
}
