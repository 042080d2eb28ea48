//! The keyed-state snapshot object: a flat, sorted list of RocksDB entries.
//!
//! Layout: `WEIRKS01` magic, then `[key len u32][key][value len u32][value]` repeated, then
//! `WEIREND1` and the entry count (u64). All integers big-endian. The CRC32 of the whole
//! object travels in the checkpoint's `_metadata`, so a flipped byte anywhere is caught before
//! any entry is used; the trailer catches truncation even if the checksum is absent.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"WEIRKS01";
const TRAILER: &[u8; 8] = b"WEIREND1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotFileInfo {
    pub size: u64,
    pub crc32: u32,
    pub entries: u64,
}

pub struct SnapshotWriter {
    out: std::io::BufWriter<std::fs::File>,
    path: String,
    hasher: crc32fast::Hasher,
    size: u64,
    entries: u64,
    /// One entry, framed, so it costs one checksum update and one buffered write.
    entry: Vec<u8>,
}

impl SnapshotWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path.display(), e))?;
        let mut writer = SnapshotWriter {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            path: path.display().to_string(),
            hasher: crc32fast::Hasher::new(),
            size: 0,
            entries: 0,
            entry: Vec::with_capacity(256),
        };
        writer.write(MAGIC)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn append(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut entry = std::mem::take(&mut self.entry);
        entry.clear();
        entry.extend_from_slice(&(key.len() as u32).to_be_bytes());
        entry.extend_from_slice(key);
        entry.extend_from_slice(&(value.len() as u32).to_be_bytes());
        entry.extend_from_slice(value);
        let written = self.write(&entry);
        self.entry = entry;
        written?;
        self.entries += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<SnapshotFileInfo> {
        self.write(TRAILER)?;
        let entries = self.entries;
        self.write(&entries.to_be_bytes())?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(SnapshotFileInfo {
            size: self.size,
            crc32: self.hasher.finalize(),
            entries,
        })
    }
}

/// Iterates the entries of a snapshot object held in memory; every structural problem is an
/// error naming `object`.
pub struct SnapshotReader<'a> {
    data: &'a [u8],
    pos: usize,
    object: &'a str,
    seen: u64,
    done: bool,
}

impl<'a> SnapshotReader<'a> {
    pub fn new(data: &'a [u8], object: &'a str) -> Result<Self> {
        if data.len() < MAGIC.len() + TRAILER.len() + 8 || &data[..8] != MAGIC {
            return Err(corrupt(
                object,
                "not a Weir keyed-state snapshot (bad magic or too short)",
            ));
        }
        Ok(SnapshotReader {
            data,
            pos: MAGIC.len(),
            object,
            seen: 0,
            done: false,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len());
        let Some(end) = end else {
            return Err(corrupt(
                self.object,
                format!("truncated at byte {}", self.pos),
            ));
        };
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn take_u32(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn next_entry(&mut self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        if self.data[self.pos..].starts_with(TRAILER)
            && self.data.len() - self.pos == TRAILER.len() + 8
        {
            self.pos += TRAILER.len();
            let b = self.take(8)?;
            let count = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            if count != self.seen {
                return Err(corrupt(
                    self.object,
                    format!("trailer says {count} entries, found {}", self.seen),
                ));
            }
            return Ok(None);
        }
        let key_len = self.take_u32()?;
        let key = self.take(key_len)?;
        if key.len() < 2 {
            return Err(corrupt(
                self.object,
                format!("entry {} has a key without key group", self.seen),
            ));
        }
        let value_len = self.take_u32()?;
        let value = self.take(value_len)?;
        self.seen += 1;
        Ok(Some((key, value)))
    }
}

impl<'a> Iterator for SnapshotReader<'a> {
    type Item = Result<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn corrupt(object: &str, reason: impl Into<String>) -> Error {
    Error::CorruptCheckpoint {
        object: object.to_string(),
        reason: reason.into(),
    }
}

/// Verifies `data` against the checksum recorded in the checkpoint metadata.
pub fn verify_checksum(
    data: &[u8],
    expected_crc32: u32,
    expected_size: u64,
    object: &str,
) -> Result<()> {
    if data.len() as u64 != expected_size {
        return Err(corrupt(
            object,
            format!(
                "size is {} bytes, metadata says {expected_size}",
                data.len()
            ),
        ));
    }
    let actual = crc32fast::hash(data);
    if actual != expected_crc32 {
        return Err(corrupt(
            object,
            format!("checksum mismatch: crc32 {actual:08x}, metadata says {expected_crc32:08x}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> (Vec<u8>, SnapshotFileInfo) {
        let path = dir.join("s");
        let mut w = SnapshotWriter::create(&path).expect("create");
        w.append(b"\x00\x01key-a", b"1").expect("append");
        w.append(b"\x00\x02key-b", b"").expect("append");
        let info = w.finish().expect("finish");
        (std::fs::read(&path).expect("read"), info)
    }

    #[test]
    fn round_trips_entries_and_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, info) = sample(dir.path());
        verify_checksum(&data, info.crc32, info.size, "obj").expect("valid");
        let entries: Vec<_> = SnapshotReader::new(&data, "obj")
            .expect("header")
            .collect::<Result<_>>()
            .expect("entries");
        assert_eq!(
            entries,
            vec![
                (&b"\x00\x01key-a"[..], &b"1"[..]),
                (&b"\x00\x02key-b"[..], &b""[..])
            ]
        );
    }

    #[test]
    fn flipped_byte_fails_checksum_naming_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut data, info) = sample(dir.path());
        data[12] ^= 0x40;
        let err =
            verify_checksum(&data, info.crc32, info.size, "chk-3/op-1.state").expect_err("corrupt");
        assert!(err.to_string().contains("chk-3/op-1.state"), "{err}");
    }

    #[test]
    fn truncation_is_detected_without_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, _) = sample(dir.path());
        let cut = &data[..data.len() - 20];
        let result: Result<Vec<_>> = SnapshotReader::new(cut, "obj").expect("header").collect();
        assert!(result.is_err());
    }
}
