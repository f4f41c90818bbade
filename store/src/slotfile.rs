//! A tiny durable register: a file of two slots written alternately, each with a sequence
//! number and a CRC, so that a torn write of one slot leaves the other (the previous value)
//! readable. Used for the CommitLog's synced-position marker.
//!
//! # Layout (version 1, little-endian); slot A at byte 0, slot B at byte 4096
//!
//! | offset | size | field                                  |
//! |--------|------|----------------------------------------|
//! | 0      | 4    | `magic` = `"RMQS"`                      |
//! | 4      | 1    | `version` = 1                           |
//! | 5      | 3    | reserved, zero                          |
//! | 8      | 8    | `seq`: write count; the higher valid slot wins |
//! | 16     | 8    | `value`                                 |
//! | 24     | 4    | `crc`: CRC32C of bytes `[0, 24)`        |
//!
//! The slots sit in different 4 KiB pages so one torn page cannot damage both.

use std::sync::Arc;

use crate::codec::{PutLe, le_u32, le_u64};
use crate::disk::{Disk, DiskFile};
use crate::error::{Result, StoreError};

const SLOT_MAGIC: u32 = u32::from_le_bytes(*b"RMQS");
const SLOT_VERSION: u8 = 1;
pub(crate) const SLOT_LEN: usize = 28;
const SLOT_STRIDE: u64 = 4096;
const FILE_LEN: u64 = 2 * SLOT_STRIDE;

/// A durable u64 register on the disk seam.
#[derive(Debug)]
pub(crate) struct SlotFile {
    file: Arc<dyn DiskFile>,
    seq: u64,
    value: u64,
}

pub(crate) fn encode(seq: u64, value: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(SLOT_LEN);
    b.put_u32(SLOT_MAGIC);
    b.put_u8(SLOT_VERSION);
    b.extend_from_slice(&[0; 3]);
    b.put_u64(seq);
    b.put_u64(value);
    let crc = crc32c::crc32c(&b);
    b.put_u32(crc);
    b
}

/// Decodes a slot: `Ok(None)` for an empty or torn slot, an error for an unknown version.
pub(crate) fn decode(b: &[u8], path: &str, at: u64) -> Result<Option<(u64, u64)>> {
    if le_u32(b, 0) != SLOT_MAGIC || le_u32(b, 24) != crc32c::crc32c(&b[..24]) {
        return Ok(None);
    }
    if b[4] != SLOT_VERSION {
        return Err(StoreError::corrupt(
            path,
            at,
            format!("unknown slot version {}", b[4]),
        ));
    }
    Ok(Some((le_u64(b, 8), le_u64(b, 16))))
}

impl SlotFile {
    /// Opens the register at `path`, creating it (value `initial`) if missing.
    pub(crate) fn open(disk: &dyn Disk, path: &str, initial: u64) -> Result<Self> {
        if !disk.exists(path) {
            let file = disk.create(path, FILE_LEN)?;
            let mut s = Self {
                file,
                seq: 0,
                value: initial,
            };
            s.store(initial)?;
            return Ok(s);
        }
        let file = disk.open(path)?;
        if file.len() != FILE_LEN {
            return Err(StoreError::corrupt(
                path,
                0,
                format!("length {} != {FILE_LEN}", file.len()),
            ));
        }
        let mut best: Option<(u64, u64)> = None;
        for i in 0..2 {
            let mut b = [0u8; SLOT_LEN];
            file.read_at(i * SLOT_STRIDE, &mut b)?;
            if let Some((seq, value)) = decode(&b, path, i * SLOT_STRIDE)?
                && best.is_none_or(|(s, _)| seq > s)
            {
                best = Some((seq, value));
            }
        }
        let (seq, value) =
            best.ok_or_else(|| StoreError::corrupt(path, 0, "neither slot is valid"))?;
        Ok(Self { file, seq, value })
    }

    /// The last value stored.
    pub(crate) fn value(&self) -> u64 {
        self.value
    }

    /// Stores `value` durably (write the older slot, then sync it).
    pub(crate) fn store(&mut self, value: u64) -> Result<()> {
        let seq = self.seq + 1;
        let at = (seq % 2) * SLOT_STRIDE;
        self.file.write_at(at, &encode(seq, value))?;
        self.file.sync_range(at, SLOT_LEN as u64)?;
        self.seq = seq;
        self.value = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SimDisk;

    #[test]
    fn golden_bytes() {
        let b = encode(3, 0x0102_0304);
        let mut expected = b"RMQS".to_vec();
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&0x0102_0304u64.to_le_bytes());
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(b, expected);
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let disk = SimDisk::new();
        let mut s = SlotFile::open(&disk, "m", 0).unwrap();
        s.store(10).unwrap();
        s.store(20).unwrap();
        assert_eq!(SlotFile::open(&disk, "m", 0).unwrap().value(), 20);
        // Damage the newest slot (seq 3 → slot 1): the previous value is read.
        disk.flip_bit("m", SLOT_STRIDE + 17, 2).unwrap();
        assert_eq!(SlotFile::open(&disk, "m", 0).unwrap().value(), 10);
        // Both damaged: corruption, not a guess.
        disk.flip_bit("m", 17, 2).unwrap();
        assert!(matches!(
            SlotFile::open(&disk, "m", 0),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_unsynced_store_may_be_lost_but_never_half_applied() {
        for seed in 0..32 {
            let disk = SimDisk::new();
            let mut s = SlotFile::open(&disk, "m", 0).unwrap();
            s.store(5).unwrap();
            // Write the next value without its sync, then lose power.
            let seq = s.seq + 1;
            s.file
                .write_at((seq % 2) * SLOT_STRIDE, &encode(seq, 6))
                .unwrap();
            disk.power_loss(seed);
            let v = SlotFile::open(&disk, "m", 0).unwrap().value();
            assert!(v == 5 || v == 6, "seed {seed}: {v}");
        }
    }
}
