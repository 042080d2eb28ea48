//! Keyed state of one subtask: a RocksDB instance behind a write-back cache, or a copy-on-write
//! hash index on the heap (`state/heap.rs`), chosen by `state.backend`.
//!
//! Key layout (big-endian): `[key group:2][key len:4][key][state id:4][map key...]`. The key
//! group comes first so one key-group range is one contiguous RocksDB range, and everything
//! of one key is contiguous (cheap `clear` of a key, map iteration by prefix).
//!
//! The cache absorbs the get+put of every record; RocksDB sees one write batch per flush.
//! A flush happens before every snapshot (so snapshots are exact), before prefix iteration,
//! and when the cache outgrows its budget (so memory stays bounded). RocksDB's WAL is off:
//! durability comes from checkpoints, and a failed subtask always restores from one.

use std::path::{Path, PathBuf};

pub use super::heap::HeapSnapshot;
use super::heap::HeapStore;
use super::keygroups::KeyGroupRange;
use crate::error::{Error, Result};
use crate::spec::StateBackendKind;

/// Bytes charged per cache entry on top of key and value (hash map slot, Vec headers).
const CACHE_ENTRY_OVERHEAD: usize = 64;
const RESTORE_BATCH_BYTES: usize = 8 << 20;
/// Flushes of at least this many dirty entries go to RocksDB as an ingested SST file.
const INGEST_FLUSH_ENTRIES: usize = 64 * 1024;
/// Key plus value up to this many bytes live inside the cache slot itself (a running count:
/// an 18-byte key and a varint).
const INLINE_BYTES: usize = 22;

pub type StateId = u32;

/// What [`KeyedStateBackend::retain_entries`] does with one entry.
pub(crate) enum Retain {
    Keep,
    Delete,
    Replace(Vec<u8>),
}

/// `[key][value]` of a slot too long to be inline.
struct HeapBytes {
    key_len: usize,
    bytes: Vec<u8>,
}

const HAS_VALUE: u8 = 1 << 5;
const DIRTY: u8 = 1 << 6;
/// RocksDB may hold an entry for this key. When it cannot, a delete drops the slot instead
/// of writing a tombstone: state created and cleared between two flushes (window contents,
/// fired timers) never reaches RocksDB at all.
const IN_DB: u8 = 1 << 7;
const INLINE_LEN: u8 = 0x1f;

/// Half a cache line per slot, key and value inline when short: a lookup touches one line,
/// and the table of 100k keys stays small enough for caches and TLB.
#[repr(align(32))]
struct CacheSlot {
    /// `[key][value]` when longer than [`INLINE_BYTES`]; `inline` is unused then.
    heap: Option<Box<HeapBytes>>,
    inline: [u8; INLINE_BYTES],
    inline_key_len: u8,
    /// Bits 0-4: length of key plus value when inline; then the flags: no [`HAS_VALUE`]
    /// records a delete (or a known-absent key) so misses are not re-read from RocksDB.
    meta: u8,
}

const _: () = assert!(std::mem::size_of::<CacheSlot>() == 32);
const _: () = assert!(INLINE_BYTES <= INLINE_LEN as usize);

impl CacheSlot {
    fn new(key: &[u8], value: Option<&[u8]>, dirty: bool, in_db: bool) -> Self {
        let mut slot = CacheSlot {
            heap: None,
            inline: [0u8; INLINE_BYTES],
            inline_key_len: 0,
            meta: 0,
        };
        if key.len() <= INLINE_BYTES {
            slot.inline[..key.len()].copy_from_slice(key);
            slot.inline_key_len = key.len() as u8;
            slot.meta = key.len() as u8;
        } else {
            slot.heap = Some(Box::new(HeapBytes {
                key_len: key.len(),
                bytes: key.to_vec(),
            }));
        }
        slot.set_value(value);
        slot.set_flag(DIRTY, dirty);
        slot.set_flag(IN_DB, in_db);
        slot
    }

    fn flag(&self, flag: u8) -> bool {
        self.meta & flag != 0
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.meta |= flag;
        } else {
            self.meta &= !flag;
        }
    }

    fn key_len(&self) -> usize {
        match &self.heap {
            Some(heap) => heap.key_len,
            None => usize::from(self.inline_key_len),
        }
    }

    fn all(&self) -> &[u8] {
        match &self.heap {
            Some(heap) => &heap.bytes,
            None => &self.inline[..usize::from(self.meta & INLINE_LEN)],
        }
    }

    #[inline]
    fn key(&self) -> &[u8] {
        match &self.heap {
            Some(heap) => &heap.bytes[..heap.key_len],
            None => &self.inline[..usize::from(self.inline_key_len)],
        }
    }

    fn value(&self) -> Option<&[u8]> {
        self.flag(HAS_VALUE).then(|| &self.all()[self.key_len()..])
    }

    fn value_len(&self) -> usize {
        self.all().len() - self.key_len()
    }

    fn set_value(&mut self, value: Option<&[u8]>) {
        let key_len = self.key_len();
        let value_bytes = value.unwrap_or_default();
        let total = key_len + value_bytes.len();
        self.set_flag(HAS_VALUE, value.is_some());
        match &mut self.heap {
            Some(heap) => {
                heap.bytes.truncate(key_len);
                heap.bytes.extend_from_slice(value_bytes);
            }
            None if total <= INLINE_BYTES => {
                self.inline[key_len..total].copy_from_slice(value_bytes);
                self.meta = (self.meta & !INLINE_LEN) | total as u8;
            }
            None => {
                let mut bytes = Vec::with_capacity(total);
                bytes.extend_from_slice(&self.inline[..key_len]);
                bytes.extend_from_slice(value_bytes);
                self.heap = Some(Box::new(HeapBytes { key_len, bytes }));
            }
        }
    }
}

/// `a == b` without a `memcmp` call for keys of 8 to 32 bytes (typical state keys are 18):
/// two overlapping word compares.
#[inline]
fn key_eq(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(s: &[u8]) -> [u8; N] {
        let mut w = [0u8; N];
        w.copy_from_slice(&s[..N]);
        w
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => word::<8>(a) == word::<8>(b) && word::<8>(&a[n - 8..]) == word::<8>(&b[n - 8..]),
        17..=32 => {
            word::<16>(a) == word::<16>(b) && word::<16>(&a[n - 16..]) == word::<16>(&b[n - 16..])
        }
        _ => a == b,
    }
}

fn hash_key(key: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(key);
    hasher.finish()
}

fn slot_hash(slot: &CacheSlot) -> u64 {
    hash_key(slot.key())
}

/// Sorts by the first 16 key bytes held in the vector itself, and compares whole keys only on
/// a tie: `(prefix, slot)` pairs sort in byte order of the keys without touching each slot
/// on every comparison.
pub(super) fn key_prefix(key: &[u8]) -> u128 {
    let mut prefix = [0u8; 16];
    let n = key.len().min(16);
    prefix[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(prefix)
}

const NO_SLOT: usize = usize::MAX;

/// Keyed state of one subtask; which backend holds it is the job's `state.backend`. Key
/// layout, the current key and the timer index are the same for both, so handles, timers,
/// TTL and the snapshot format do not know which one they talk to.
pub struct KeyedStateBackend {
    store: Store,
    key_groups: KeyGroupRange,
    /// `[key group][key len][key]` of the record being processed.
    current_prefix: Vec<u8>,
    /// Reused buffer for composing full state keys.
    scratch: Vec<u8>,
    /// Index of this subtask's timers; the timers themselves are entries of this backend.
    pub(crate) timers: super::timers::TimerService,
}

enum Store {
    RocksDb(RocksDbStore),
    Heap(HeapStore),
}

/// A RocksDB instance behind the write-back cache.
struct RocksDbStore {
    db: rocksdb::DB,
    path: PathBuf,
    cache: hashbrown::HashTable<CacheSlot>,
    /// Bucket of the slot last looked up or inserted ([`NO_SLOT`] when unknown): the put that
    /// follows a get of the same key finds its slot without a second hash probe. Reset
    /// whenever slots may move (insert, remove, clear).
    last_slot: usize,
    cache_bytes: usize,
    cache_capacity: usize,
    dirty_entries: usize,
    write_opts: rocksdb::WriteOptions,
    stats: BackendStats,
    /// SST files ingested so far (by big flushes and restores; names them).
    ingested: u32,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct BackendStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub flushes: u64,
    pub evictions: u64,
}

/// The synchronous part of a snapshot, taken by [`KeyedStateBackend::checkpoint_to`]; the
/// rest ([`PendingSnapshot::write_full`], or an incremental upload of the RocksDB files)
/// runs off the task thread while processing goes on.
pub enum PendingSnapshot {
    /// A hard-linked copy of RocksDB's files in this directory.
    RocksDbFiles(PathBuf),
    /// A copy-on-write clone of the heap index.
    Heap(HeapSnapshot),
}

impl PendingSnapshot {
    /// Writes the full snapshot object (the savepoint format) to `out` and drops the copy.
    pub fn write_full(self, out: &Path) -> Result<super::snapshot::SnapshotFileInfo> {
        match self {
            PendingSnapshot::RocksDbFiles(dir) => write_snapshot(&dir, out),
            PendingSnapshot::Heap(snapshot) => snapshot.write(out),
        }
    }

    /// Where the RocksDB files are, for an incremental checkpoint; `None` for heap state.
    pub fn rocksdb_files(&self) -> Option<&Path> {
        match self {
            PendingSnapshot::RocksDbFiles(dir) => Some(dir),
            PendingSnapshot::Heap(_) => None,
        }
    }
}

impl KeyedStateBackend {
    /// Opens a fresh, empty RocksDB instance at `path` (anything there is removed first: local
    /// state is never trusted across attempts, only checkpoints are).
    pub fn open(path: &Path, key_groups: KeyGroupRange, cache_capacity: u64) -> Result<Self> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path.display(), e))?;
        }
        std::fs::create_dir_all(path).map_err(|e| Error::io(path.display(), e))?;
        let store = RocksDbStore::open_at(path, cache_capacity)?;
        Ok(Self::with_store(Store::RocksDb(store), key_groups))
    }

    /// Opens empty keyed state held in memory (`state.backend: heap`). Nothing touches disk
    /// until a snapshot is written.
    pub fn open_heap(key_groups: KeyGroupRange) -> Self {
        Self::with_store(Store::Heap(HeapStore::new(key_groups)), key_groups)
    }

    /// Opens empty keyed state of the given kind; `path` and `cache_capacity` matter to
    /// RocksDB only.
    pub fn open_kind(
        kind: StateBackendKind,
        path: &Path,
        key_groups: KeyGroupRange,
        cache_capacity: u64,
    ) -> Result<Self> {
        match kind {
            StateBackendKind::Rocksdb => Self::open(path, key_groups, cache_capacity),
            StateBackendKind::Heap => Ok(Self::open_heap(key_groups)),
        }
    }

    /// Opens the RocksDB instance whose files a restore placed at `path` (the files of one
    /// RocksDB checkpoint of exactly `key_groups`, see `state/incremental.rs`) and rebuilds
    /// the timer index from it. `object` names the checkpoint in errors.
    pub fn open_restored(
        path: &Path,
        key_groups: KeyGroupRange,
        cache_capacity: u64,
        object: &str,
    ) -> Result<Self> {
        let store =
            RocksDbStore::open_at(path, cache_capacity).map_err(|e| Error::CorruptCheckpoint {
                object: object.to_string(),
                reason: format!("its RocksDB files do not open: {e}"),
            })?;
        let mut timers = super::timers::TimerService::default();
        store.rebuild_timer_index(key_groups, &mut timers, object)?;
        let mut backend = Self::with_store(Store::RocksDb(store), key_groups);
        backend.timers = timers;
        Ok(backend)
    }

    fn with_store(store: Store, key_groups: KeyGroupRange) -> Self {
        KeyedStateBackend {
            store,
            key_groups,
            current_prefix: Vec::with_capacity(64),
            scratch: Vec::with_capacity(128),
            timers: Default::default(),
        }
    }

    pub fn kind(&self) -> StateBackendKind {
        match self.store {
            Store::RocksDb(_) => StateBackendKind::Rocksdb,
            Store::Heap(_) => StateBackendKind::Heap,
        }
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.key_groups
    }

    /// Cache statistics of RocksDB's write-back cache; all zero on the heap (no cache).
    pub fn stats(&self) -> BackendStats {
        match &self.store {
            Store::RocksDb(store) => store.stats,
            Store::Heap(_) => BackendStats::default(),
        }
    }

    pub fn set_current_key(&mut self, key_group: u16, key: &[u8]) {
        // Always checked (two comparisons beside the state work per record): a record routed
        // to the wrong subtask would be stored in a key group this subtask does not own, and
        // a rescale would then lose it. Release builds, which CI tests, must catch that.
        assert!(
            self.key_groups.contains(key_group),
            "key group {key_group} routed to the wrong subtask (this one owns {:?})",
            self.key_groups
        );
        self.current_prefix.clear();
        self.current_prefix
            .extend_from_slice(&key_group.to_be_bytes());
        // Keys longer than 4 GiB are not a thing state can hold anyway.
        self.current_prefix
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.current_prefix.extend_from_slice(key);
    }

    fn compose(&mut self, state: StateId, suffix: &[u8]) {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.current_prefix);
        self.scratch.extend_from_slice(&state.to_be_bytes());
        self.scratch.extend_from_slice(suffix);
    }

    /// The value of `state` (plus map-key `suffix`) for the current key.
    pub fn get(&mut self, state: StateId, suffix: &[u8]) -> Result<Option<&[u8]>> {
        self.compose(state, suffix);
        match &mut self.store {
            Store::RocksDb(store) => store.get(&self.scratch),
            Store::Heap(heap) => Ok(heap.get(&self.scratch)),
        }
    }

    pub fn put(&mut self, state: StateId, suffix: &[u8], value: &[u8]) -> Result<()> {
        self.compose(state, suffix);
        self.write_scratch(Some(value), false)
    }

    pub fn delete(&mut self, state: StateId, suffix: &[u8]) -> Result<()> {
        self.compose(state, suffix);
        self.write_scratch(None, false)
    }

    /// Writes the key in `scratch`. `known_absent`: the caller knows the store has no entry
    /// for the key (saves RocksDB a tombstone).
    fn write_scratch(&mut self, value: Option<&[u8]>, known_absent: bool) -> Result<()> {
        match &mut self.store {
            Store::RocksDb(store) => store.write_slot(&self.scratch, value, known_absent),
            Store::Heap(heap) => {
                match value {
                    Some(value) => heap.put(&self.scratch, value),
                    None => heap.delete(&self.scratch),
                }
                Ok(())
            }
        }
    }

    /// Makes RocksDB hold every cached write (nothing to do on the heap).
    pub fn flush_dirty(&mut self) -> Result<()> {
        match &mut self.store {
            Store::RocksDb(store) => store.flush_dirty(),
            Store::Heap(_) => Ok(()),
        }
    }

    /// Compacts everything into the bottom level (tests: to replace every SST file).
    #[cfg(test)]
    pub(crate) fn compact_all(&mut self) -> Result<()> {
        match &mut self.store {
            Store::RocksDb(store) => store.compact_all(),
            Store::Heap(_) => Ok(()),
        }
    }

    /// All `(suffix, value)` entries of `state` for the current key in key order, e.g. a
    /// MapState's entries.
    pub fn entries(&mut self, state: StateId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.compose(state, &[]);
        match &mut self.store {
            Store::RocksDb(store) => store.entries(&self.scratch),
            Store::Heap(heap) => Ok(heap.entries(&self.scratch)),
        }
    }

    /// Deletes every entry of `state` for the current key.
    pub fn clear_all(&mut self, state: StateId) -> Result<()> {
        for (suffix, _) in self.entries(state)? {
            self.delete(state, &suffix)?;
        }
        Ok(())
    }

    /// Visits every stored entry of `states` in this backend's key groups, all keys, and
    /// applies what `decide(state, value)` returns. Edits reach the next snapshot like any
    /// write. Byte-level on purpose: what to keep is the caller's (TTL, `state/ttl.rs`).
    pub(crate) fn retain_entries(
        &mut self,
        states: &[StateId],
        decide: impl FnMut(StateId, &[u8]) -> Retain,
    ) -> Result<()> {
        match &mut self.store {
            Store::RocksDb(store) => store.retain_entries(self.key_groups, states, decide),
            Store::Heap(heap) => {
                heap.retain_entries(states, decide);
                Ok(())
            }
        }
    }

    /// The synchronous part of a snapshot. RocksDB: make it exact, then hard-link its files
    /// into `dir`. Heap: clone the index (a pointer per chunk; later writes copy the chunks
    /// they touch), `dir` is not used. Processing continues while the returned copy is written.
    pub fn checkpoint_to(&mut self, dir: &Path) -> Result<PendingSnapshot> {
        match &mut self.store {
            Store::RocksDb(store) => {
                store.checkpoint_to(dir)?;
                Ok(PendingSnapshot::RocksDbFiles(dir.to_path_buf()))
            }
            Store::Heap(heap) => Ok(PendingSnapshot::Heap(heap.snapshot())),
        }
    }

    /// Loads the entries of a full snapshot object (written by either backend) that fall into
    /// this backend's key groups. `object` names the object in errors.
    pub fn restore_snapshot(&mut self, data: &[u8], object: &str) -> Result<u64> {
        match &mut self.store {
            Store::RocksDb(store) => {
                store.restore_snapshot(data, object, self.key_groups, &mut self.timers)
            }
            Store::Heap(heap) => {
                let mut restored = 0u64;
                for entry in super::snapshot::SnapshotReader::new(data, object)? {
                    let (key, value) = entry?;
                    if !self.key_groups.contains(key_group_of(key)) {
                        continue;
                    }
                    self.timers.restore_entry(key, value, object)?;
                    heap.put(key, value);
                    restored += 1;
                }
                Ok(restored)
            }
        }
    }

    /// Copies the entries of this backend's key groups out of the RocksDB checkpoint files at
    /// `dir` (an incremental checkpoint: of another key-group range, i.e. a rescale, or
    /// restored onto the heap). `object` names the checkpoint in errors.
    pub fn restore_from_files(&mut self, dir: &Path, object: &str) -> Result<u64> {
        let key_groups = self.key_groups;
        let timers = &mut self.timers;
        match &mut self.store {
            Store::RocksDb(store) => store.restore_from_files(dir, object, key_groups, timers),
            Store::Heap(heap) => read_rocksdb_files(dir, key_groups, object, |key, value| {
                timers.restore_entry(key, value, object)?;
                heap.put(key, value);
                Ok(())
            }),
        }
    }
}

/// Raw access for state that is not of one state id, such as timers, whose entries sort by
/// time within a key group (`state/timers.rs`).
impl KeyedStateBackend {
    /// The key group and key bytes of the current key.
    pub(crate) fn current_key(&self) -> (u16, &[u8]) {
        let group = u16::from_be_bytes([self.current_prefix[0], self.current_prefix[1]]);
        (group, &self.current_prefix[6..])
    }

    /// A put of a key the caller knows the store does not hold (e.g. a timer new to the
    /// index).
    pub(crate) fn put_raw_new(&mut self, key: &[u8], value: Vec<u8>) -> Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(key);
        self.write_scratch(Some(&value), true)
    }

    pub(crate) fn delete_raw(&mut self, key: &[u8]) -> Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(key);
        self.write_scratch(None, false)
    }
}

/// The key group a stored key belongs to: its first two bytes. Callers have checked the key
/// is at least that long (snapshot readers refuse shorter keys).
pub(crate) fn key_group_of(key: &[u8]) -> u16 {
    u16::from_be_bytes([key[0], key[1]])
}

/// The length of the `[group:2][key len:4][key][state:4]` head of an entry, its namespace:
/// one key's one state, everything before the map key. `None` for timers (key len
/// 0xFFFFFFFF) and anything shorter, which do not parse.
pub(crate) fn namespace_len(key: &[u8]) -> Option<usize> {
    let key_len = u32::from_be_bytes(key.get(2..6)?.try_into().ok()?) as usize;
    let end = 6usize.checked_add(key_len)?.checked_add(4)?;
    (end <= key.len()).then_some(end)
}

/// The state id of a `[group:2][key len:4][key][state:4][suffix]` entry; `None` for timers
/// (key len 0xFFFFFFFF) and anything shorter, which do not parse.
pub(crate) fn state_of_entry(key: &[u8]) -> Option<StateId> {
    let end = namespace_len(key)?;
    Some(StateId::from_be_bytes(key[end - 4..end].try_into().ok()?))
}

/// Visits, in key order, the entries of `key_groups` in the RocksDB files at `dir` (a
/// downloaded incremental checkpoint) and returns how many it visited. `object` names the
/// checkpoint in errors.
fn read_rocksdb_files(
    dir: &Path,
    key_groups: KeyGroupRange,
    object: &str,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<u64> {
    let corrupt = |e: rocksdb::Error| Error::CorruptCheckpoint {
        object: object.to_string(),
        reason: format!("its RocksDB files do not read: {e}"),
    };
    let source = rocksdb::DB::open_for_read_only(&rocksdb::Options::default(), dir, false)
        .map_err(corrupt)?;
    let mut read = rocksdb::ReadOptions::default();
    read.set_readahead_size(4 << 20);
    read.fill_cache(false);
    let mut iter = source.raw_iterator_opt(read);
    iter.seek(key_groups.start.to_be_bytes());
    let mut visited = 0u64;
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        if key.len() < 2 || key_group_of(key) >= key_groups.end {
            break;
        }
        visit(key, value)?;
        visited += 1;
        iter.next();
    }
    iter.status().map_err(corrupt)?;
    Ok(visited)
}

impl RocksDbStore {
    fn open_at(path: &Path, cache_capacity: u64) -> Result<Self> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        // L0 files are short-lived (compacted soon) and written on the snapshot's critical
        // path: no compression there, LZ4 below (RocksDB's tuning guide does the same).
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_compression_per_level(&[
            rocksdb::DBCompressionType::None,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
        ]);
        opts.set_write_buffer_size(64 << 20);
        opts.set_max_background_jobs(2);
        let db = rocksdb::DB::open(&opts, path)
            .map_err(|e| Error::rocks(format!("open {}", path.display()), e))?;
        let mut write_opts = rocksdb::WriteOptions::default();
        write_opts.disable_wal(true);
        Ok(RocksDbStore {
            db,
            path: path.to_path_buf(),
            cache: hashbrown::HashTable::new(),
            last_slot: NO_SLOT,
            cache_bytes: 0,
            cache_capacity: usize::try_from(cache_capacity).unwrap_or(usize::MAX),
            dirty_entries: 0,
            write_opts,
            stats: BackendStats::default(),
            ingested: 0,
        })
    }

    /// Timers are entries like any other state; the in-memory index of them is not. Each key
    /// group keeps its timers in one contiguous range, so this is one seek per key group.
    fn rebuild_timer_index(
        &self,
        key_groups: KeyGroupRange,
        timers: &mut super::timers::TimerService,
        object: &str,
    ) -> Result<()> {
        let mut iter = self.db.raw_iterator();
        for group in key_groups.start..key_groups.end {
            let mut prefix = group.to_be_bytes().to_vec();
            prefix.extend_from_slice(&[0xFF; 4]);
            iter.seek(&prefix);
            while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                if !key.starts_with(&prefix) {
                    break;
                }
                timers.restore_entry(key, value, object)?;
                iter.next();
            }
            iter.status()
                .map_err(|e| Error::rocks(format!("read timers of {object}"), e))?;
        }
        Ok(())
    }

    /// The bucket of the cached slot of `key`, with the key's hash when it had to be
    /// computed.
    fn find(&self, key: &[u8]) -> (Option<usize>, Option<u64>) {
        if let Some(slot) = self.cache.get_bucket(self.last_slot)
            && key_eq(slot.key(), key)
        {
            return (Some(self.last_slot), None);
        }
        let hash = hash_key(key);
        let found = self
            .cache
            .find_bucket_index(hash, |slot| key_eq(slot.key(), key));
        (found, Some(hash))
    }

    /// Caches a slot for `key` (which has none) and returns its bucket.
    fn insert(&mut self, key: &[u8], hash: Option<u64>, slot: CacheSlot) -> usize {
        let hash = hash.unwrap_or_else(|| hash_key(key));
        let bucket = self
            .cache
            .insert_unique(hash, slot, slot_hash)
            .bucket_index();
        self.last_slot = bucket;
        bucket
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        let (found, hash) = self.find(key);
        let bucket = match found {
            Some(bucket) => {
                self.stats.cache_hits += 1;
                self.last_slot = bucket;
                bucket
            }
            None => {
                self.stats.cache_misses += 1;
                let value = self
                    .db
                    .get(key)
                    .map_err(|e| Error::rocks(format!("get in {}", self.path.display()), e))?;
                self.make_room()?;
                self.cache_bytes +=
                    key.len() + value.as_ref().map_or(0, Vec::len) + CACHE_ENTRY_OVERHEAD;
                let slot = CacheSlot::new(key, value.as_deref(), false, value.is_some());
                self.insert(key, hash, slot)
            }
        };
        Ok(self.cache.get_bucket(bucket).and_then(CacheSlot::value))
    }

    /// Writes the slot of `key`. `known_absent`: the caller knows RocksDB has no entry for
    /// the key (only matters when the cache has no slot for it).
    fn write_slot(&mut self, key: &[u8], value: Option<&[u8]>, known_absent: bool) -> Result<()> {
        let new_len = value.map_or(0, <[u8]>::len);
        let (found, hash) = self.find(key);
        if let Some(bucket) = found {
            let Ok(mut entry) = self.cache.get_bucket_entry(bucket) else {
                unreachable!("bucket {bucket} was just found occupied");
            };
            let slot = entry.get_mut();
            let old_len = slot.value_len();
            if value.is_none() && !slot.flag(IN_DB) {
                // Nothing to delete in RocksDB: forget the key.
                if slot.flag(DIRTY) {
                    self.dirty_entries -= 1;
                }
                entry.remove();
                self.last_slot = NO_SLOT;
                self.cache_bytes = self
                    .cache_bytes
                    .saturating_sub(key.len() + old_len + CACHE_ENTRY_OVERHEAD);
                return Ok(());
            }
            self.cache_bytes = self.cache_bytes + new_len - old_len;
            if !slot.flag(DIRTY) {
                self.dirty_entries += 1;
            }
            slot.set_value(value);
            slot.set_flag(DIRTY, true);
            self.last_slot = bucket;
            return Ok(());
        }
        if value.is_none() && known_absent {
            return Ok(());
        }
        self.make_room()?;
        self.cache_bytes += key.len() + new_len + CACHE_ENTRY_OVERHEAD;
        self.dirty_entries += 1;
        let slot = CacheSlot::new(key, value, true, !known_absent);
        self.insert(key, hash, slot);
        Ok(())
    }

    /// Evicts everything once over budget: flushing dirty entries first keeps it correct, and
    /// a whole-cache eviction is cheaper than tracking recency on every access.
    fn make_room(&mut self) -> Result<()> {
        if self.cache_bytes < self.cache_capacity {
            return Ok(());
        }
        self.flush_dirty()?;
        self.cache.clear();
        self.last_slot = NO_SLOT;
        self.cache_bytes = 0;
        self.stats.evictions += 1;
        Ok(())
    }

    /// Writes every dirty cache entry to RocksDB in key order; entries stay cached, clean.
    fn flush_dirty(&mut self) -> Result<()> {
        if self.dirty_entries == 0 {
            return Ok(());
        }
        let mut dirty: Vec<(u128, &mut CacheSlot)> = Vec::with_capacity(self.dirty_entries);
        dirty.extend(
            self.cache
                .iter_mut()
                .filter(|s| s.flag(DIRTY))
                .map(|s| (key_prefix(s.key()), s)),
        );
        // In key order RocksDB's memtable inserts each entry next to the previous one instead
        // of searching its skip list from the top: several times cheaper for big flushes.
        dirty.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key().cmp(b.1.key())));
        self.dirty_entries = 0;
        self.stats.flushes += 1;
        if dirty.len() < INGEST_FLUSH_ENTRIES {
            let mut batch = rocksdb::WriteBatch::default();
            for (_, slot) in dirty {
                match slot.value() {
                    Some(v) => batch.put(slot.key(), v),
                    None => batch.delete(slot.key()),
                }
                slot.set_flag(DIRTY, false);
                slot.set_flag(IN_DB, slot.flag(HAS_VALUE));
            }
            return self
                .db
                .write_opt(batch, &self.write_opts)
                .map_err(|e| Error::rocks(format!("write batch in {}", self.path.display()), e));
        }
        // A big flush (cache eviction, a snapshot after many updates) becomes one sorted SST
        // file that RocksDB ingests as is: no memtable inserts now and no memtable flush to
        // wait for at the next snapshot.
        let context = format!("flush in {}", self.path.display());
        ingest_sst(
            &self.db,
            &self.path,
            &mut self.ingested,
            &context,
            |writer| {
                let written = dirty.len() as u64;
                for (_, slot) in dirty {
                    match slot.value() {
                        Some(v) => writer.put(slot.key(), v),
                        None => writer.delete(slot.key()),
                    }
                    .map_err(|e| Error::rocks(format!("{context}: write SST"), e))?;
                    slot.set_flag(DIRTY, false);
                    slot.set_flag(IN_DB, slot.flag(HAS_VALUE));
                }
                Ok(written)
            },
        )
        .map(drop)
    }

    /// Compacts everything into the bottom level (tests: to replace every SST file).
    #[cfg(test)]
    fn compact_all(&mut self) -> Result<()> {
        self.db
            .flush()
            .map_err(|e| Error::rocks(format!("flush {}", self.path.display()), e))?;
        self.db.compact_range(None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// All `(suffix, value)` entries whose key starts with `prefix`.
    fn entries(&mut self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.flush_dirty()?;
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(prefix) {
            let (key, value) =
                item.map_err(|e| Error::rocks(format!("iterate {}", self.path.display()), e))?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key[prefix.len()..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// See [`KeyedStateBackend::retain_entries`]. When at least a fifth of the visited entries
    /// went away, the key-group range is compacted: an incremental checkpoint holds RocksDB's
    /// files, and deleted values leave them only when compaction rewrites the files.
    fn retain_entries(
        &mut self,
        key_groups: KeyGroupRange,
        states: &[StateId],
        mut decide: impl FnMut(StateId, &[u8]) -> Retain,
    ) -> Result<()> {
        self.flush_dirty()?;
        let mut edits: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut visited = 0usize;
        let mut deleted = 0usize;
        let start = key_groups.start.to_be_bytes();
        let end = key_groups.end;
        let mut read = rocksdb::ReadOptions::default();
        read.fill_cache(false);
        let mut iter = self.db.raw_iterator_opt(read);
        iter.seek(start);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if key.len() < 6 || key_group_of(key) >= end {
                break;
            }
            if let Some(id) = state_of_entry(key)
                && states.contains(&id)
            {
                visited += 1;
                match decide(id, value) {
                    Retain::Keep => {}
                    Retain::Delete => {
                        deleted += 1;
                        edits.push((key.to_vec(), None));
                    }
                    Retain::Replace(bytes) => edits.push((key.to_vec(), Some(bytes))),
                }
            }
            iter.next();
        }
        iter.status()
            .map_err(|e| Error::rocks(format!("scan {}", self.path.display()), e))?;
        drop(iter);
        for (key, value) in edits {
            self.write_slot(&key, value.as_deref(), false)?;
        }
        if deleted > 0 && deleted * 5 >= visited {
            self.flush_dirty()?;
            let from = key_groups.start.to_be_bytes();
            let to = key_groups.end.to_be_bytes();
            self.db.compact_range(Some(&from[..]), Some(&to[..]));
        }
        Ok(())
    }

    /// Makes RocksDB exact, then hard-links its files into `dir`.
    fn checkpoint_to(&mut self, dir: &Path) -> Result<()> {
        let started = std::time::Instant::now();
        self.flush_dirty()?;
        let cache_flushed = started.elapsed();
        self.db
            .flush()
            .map_err(|e| Error::rocks(format!("flush {}", self.path.display()), e))?;
        tracing::debug!(?cache_flushed, memtables_flushed = ?started.elapsed(), "keyed state flushed for a snapshot");
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        }
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(|e| Error::rocks(format!("checkpoint of {}", self.path.display()), e))?;
        checkpoint
            .create_checkpoint(dir)
            .map_err(|e| Error::rocks(format!("checkpoint into {}", dir.display()), e))
    }

    /// Snapshot entries are in RocksDB order (written by iterating RocksDB, or sorted by the
    /// heap's snapshot writer), so they go into an SST file that RocksDB ingests as is: no memtable,
    /// flush or compaction on the way. An object out of order (never written by Weir) falls
    /// back to write batches.
    fn restore_snapshot(
        &mut self,
        data: &[u8],
        object: &str,
        key_groups: KeyGroupRange,
        timers: &mut super::timers::TimerService,
    ) -> Result<u64> {
        match self.restore_by_ingest(data, object, key_groups, timers)? {
            Some(restored) => Ok(restored),
            None => self.restore_by_batches(data, object, key_groups, timers),
        }
    }

    /// `None` when the entries are not strictly increasing.
    fn restore_by_ingest(
        &mut self,
        data: &[u8],
        object: &str,
        key_groups: KeyGroupRange,
        timers: &mut super::timers::TimerService,
    ) -> Result<Option<u64>> {
        // Check the order first, so a fallback leaves nothing half-restored.
        let mut last: Option<&[u8]> = None;
        for entry in super::snapshot::SnapshotReader::new(data, object)? {
            let (key, _) = entry?;
            if last.is_some_and(|last| last >= key) {
                return Ok(None);
            }
            last = Some(key);
        }
        let context = format!("restore {object}");
        let restored = ingest_sst(
            &self.db,
            &self.path,
            &mut self.ingested,
            &context,
            |writer| {
                let mut restored = 0u64;
                for entry in super::snapshot::SnapshotReader::new(data, object)? {
                    let (key, value) = entry?;
                    if !key_groups.contains(key_group_of(key)) {
                        continue;
                    }
                    timers.restore_entry(key, value, object)?;
                    writer
                        .put(key, value)
                        .map_err(|e| Error::rocks(format!("{context}: write SST"), e))?;
                    restored += 1;
                }
                Ok(restored)
            },
        )?;
        Ok(Some(restored))
    }

    /// Copies the entries of `key_groups` out of the RocksDB checkpoint files at `dir` into
    /// one SST file that RocksDB ingests.
    fn restore_from_files(
        &mut self,
        dir: &Path,
        object: &str,
        key_groups: KeyGroupRange,
        timers: &mut super::timers::TimerService,
    ) -> Result<u64> {
        let context = format!("restore {object}");
        ingest_sst(
            &self.db,
            &self.path,
            &mut self.ingested,
            &context,
            |writer| {
                read_rocksdb_files(dir, key_groups, object, |key, value| {
                    timers.restore_entry(key, value, object)?;
                    writer
                        .put(key, value)
                        .map_err(|e| Error::rocks(format!("{context}: write SST"), e))
                })
            },
        )
    }

    fn restore_by_batches(
        &mut self,
        data: &[u8],
        object: &str,
        key_groups: KeyGroupRange,
        timers: &mut super::timers::TimerService,
    ) -> Result<u64> {
        let mut batch = rocksdb::WriteBatch::default();
        let mut restored = 0u64;
        for entry in super::snapshot::SnapshotReader::new(data, object)? {
            let (key, value) = entry?;
            if !key_groups.contains(key_group_of(key)) {
                continue;
            }
            timers.restore_entry(key, value, object)?;
            batch.put(key, value);
            restored += 1;
            if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                let full = std::mem::take(&mut batch);
                self.db
                    .write_opt(full, &self.write_opts)
                    .map_err(|e| Error::rocks(format!("restore {object}"), e))?;
            }
        }
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| Error::rocks(format!("restore {object}"), e))?;
        Ok(restored)
    }
}

impl Drop for RocksDbStore {
    fn drop(&mut self) {
        // The instance is scratch space; checkpoints hold the state. Best effort only.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Writes one SST file `<prefix>-<n>.sst` in `dir` through `fill` (entries in key order;
/// returns how many it wrote) and moves it into `db`. Uncompressed: it lands in L0 like a
/// memtable flush, and compaction compresses it later, off the critical path. Nothing is
/// ingested when `fill` wrote nothing. `context` starts every error message.
fn ingest_sst(
    db: &rocksdb::DB,
    dir: &Path,
    counter: &mut u32,
    context: &str,
    fill: impl FnOnce(&mut rocksdb::SstFileWriter<'_>) -> Result<u64>,
) -> Result<u64> {
    let rocks = |what: &str, e| Error::rocks(format!("{context}: {what}"), e);
    *counter += 1;
    let sst = dir.join(format!("ingest-{counter}.sst"));
    let mut opts = rocksdb::Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let mut writer = rocksdb::SstFileWriter::create(&opts);
    writer.open(&sst).map_err(|e| rocks("open SST", e))?;
    let written = fill(&mut writer)?;
    if written == 0 {
        drop(writer);
        let _ = std::fs::remove_file(&sst);
        return Ok(0);
    }
    writer.finish().map_err(|e| rocks("finish SST", e))?;
    let mut ingest = rocksdb::IngestExternalFileOptions::default();
    ingest.set_move_files(true);
    db.ingest_external_file_opts(&ingest, vec![&sst])
        .map_err(|e| rocks("ingest SST", e))?;
    Ok(written)
}

/// Reads the RocksDB copy made by [`KeyedStateBackend::checkpoint_to`] and writes the
/// snapshot object to `out`. Runs off the task thread.
pub fn write_snapshot(
    checkpoint_dir: &Path,
    out: &Path,
) -> Result<super::snapshot::SnapshotFileInfo> {
    let opts = rocksdb::Options::default();
    let db = rocksdb::DB::open_for_read_only(&opts, checkpoint_dir, false).map_err(|e| {
        Error::rocks(
            format!("open snapshot copy {}", checkpoint_dir.display()),
            e,
        )
    })?;
    let mut writer = super::snapshot::SnapshotWriter::create(out)?;
    // One sequential pass over every file: read ahead, and keep it out of the block cache.
    let mut read = rocksdb::ReadOptions::default();
    read.set_readahead_size(4 << 20);
    read.fill_cache(false);
    for item in db.iterator_opt(rocksdb::IteratorMode::Start, read) {
        let (key, value) =
            item.map_err(|e| Error::rocks(format!("iterate {}", checkpoint_dir.display()), e))?;
        writer.append(&key, &value)?;
    }
    drop(db);
    let info = writer.finish()?;
    std::fs::remove_dir_all(checkpoint_dir).map_err(|e| Error::io(checkpoint_dir.display(), e))?;
    Ok(info)
}

/// Helpers for the state tests, which run once per backend.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn open_backend(
        kind: StateBackendKind,
        path: &Path,
        key_groups: KeyGroupRange,
        cache_capacity: u64,
    ) -> KeyedStateBackend {
        KeyedStateBackend::open_kind(kind, path, key_groups, cache_capacity).expect("open")
    }

    /// The full snapshot object of `backend` now (the savepoint format), read back.
    pub(crate) fn snapshot_bytes(
        backend: &mut KeyedStateBackend,
        dir: &Path,
        name: &str,
    ) -> Vec<u8> {
        let file = dir.join(name);
        backend
            .checkpoint_to(&dir.join(format!("{name}-copy")))
            .expect("checkpoint")
            .write_full(&file)
            .expect("write");
        std::fs::read(file).expect("read")
    }

    /// Empties RocksDB's write-back cache (after a flush), so reads go to RocksDB itself.
    /// Nothing to do on the heap.
    pub(crate) fn drop_cache(backend: &mut KeyedStateBackend) {
        if let Store::RocksDb(store) = &mut backend.store {
            store.flush_dirty().expect("flush");
            store.cache.clear();
            store.last_slot = NO_SLOT;
            store.cache_bytes = 0;
        }
    }
}

/// Defines a test once per backend, `$name::rocksdb` and `$name::heap`, each running the
/// body with `$kind` set to its backend.
#[cfg(test)]
macro_rules! test_on_both_backends {
    ($(#[$meta:meta])* fn $name:ident($kind:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($kind: $crate::spec::StateBackendKind) $body

            $(#[$meta])*
            #[test]
            fn rocksdb() {
                run($crate::spec::StateBackendKind::Rocksdb)
            }

            $(#[$meta])*
            #[test]
            fn heap() {
                run($crate::spec::StateBackendKind::Heap)
            }
        }
    };
}
#[cfg(test)]
pub(crate) use test_on_both_backends;

#[cfg(test)]
mod tests {
    use super::test_support::{drop_cache, open_backend, snapshot_bytes};
    use super::*;
    use crate::state::StateRegistry;
    use crate::state::handles::KeyedContext;
    use crate::state::keygroups::{key_group_for_key_bytes, key_group_range_for_subtask};

    const MAX: u32 = 128;

    fn all_groups() -> KeyGroupRange {
        KeyGroupRange {
            start: 0,
            end: MAX as u16,
        }
    }

    fn select(backend: &mut KeyedStateBackend, key: u64) {
        let bytes = key.to_be_bytes();
        backend.set_current_key(key_group_for_key_bytes(&bytes, MAX), &bytes);
    }

    fn rocks(backend: &mut KeyedStateBackend) -> &mut RocksDbStore {
        match &mut backend.store {
            Store::RocksDb(store) => store,
            Store::Heap(_) => panic!("a RocksDB test opened a heap backend"),
        }
    }

    test_on_both_backends! {
    /// Checked in release builds too (CI tests those): a misrouted record must stop the task,
    /// not land in a key group a rescale would hand to another subtask.
    #[should_panic(expected = "routed to the wrong subtask")]
    fn a_key_of_another_subtasks_key_group_is_refused(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let owned = KeyGroupRange { start: 0, end: 64 };
        let mut backend =
            open_backend(kind, &dir.path().join("db"), owned, 64 << 20);
        backend.set_current_key(64, b"key");
    }    }

    #[test]
    fn state_created_and_cleared_between_flushes_never_reaches_rocksdb() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend =
            KeyedStateBackend::open(&dir.path().join("db"), all_groups(), 64 << 20).expect("open");
        let mut registry = StateRegistry::new("op");
        let count = registry.value_state::<u64>("count").expect("state");
        // Key 1 reaches RocksDB before it is cleared; key 2 is created and cleared in the cache.
        select(&mut backend, 1);
        count
            .set(
                &mut KeyedContext {
                    backend: &mut backend,
                },
                &1,
            )
            .expect("set");
        backend.flush_dirty().expect("flush");
        for key in [1, 2] {
            select(&mut backend, key);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            assert_eq!(count.get(&mut ctx).expect("get"), (key == 1).then_some(1));
            count.set(&mut ctx, &7).expect("set");
            count.clear(&mut ctx).expect("clear");
        }
        assert_eq!(
            rocks(&mut backend).dirty_entries,
            1,
            "only key 1 needs a tombstone"
        );
        backend.flush_dirty().expect("flush");
        for key in [1, 2] {
            select(&mut backend, key);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            assert_eq!(count.get(&mut ctx).expect("get"), None, "key {key}");
        }
    }

    #[test]
    fn big_flushes_go_through_an_ingested_sst_with_updates_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend =
            KeyedStateBackend::open(&dir.path().join("db"), all_groups(), 256 << 20).expect("open");
        let mut registry = StateRegistry::new("op");
        let count = registry.value_state::<u64>("count").expect("state");
        let keys = 2 * INGEST_FLUSH_ENTRIES as u64;
        for key in 0..keys {
            select(&mut backend, key);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            count.set(&mut ctx, &key).expect("set");
        }
        backend.flush_dirty().expect("flush");
        for key in 0..keys {
            select(&mut backend, key);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            if key % 2 == 0 {
                count.clear(&mut ctx).expect("clear");
            } else {
                count.set(&mut ctx, &(key * 10)).expect("set");
            }
        }
        backend.flush_dirty().expect("flush");
        assert!(
            std::fs::read_dir(dir.path().join("db"))
                .expect("db dir")
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("ingest-")),
            "ingested files are moved into RocksDB"
        );
        drop_cache(&mut backend);
        for key in 0..keys {
            select(&mut backend, key);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            let expected = (key % 2 == 1).then_some(key * 10);
            assert_eq!(count.get(&mut ctx).expect("get"), expected, "key {key}");
        }
    }

    #[test]
    fn values_survive_cache_eviction_under_a_tiny_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend =
            KeyedStateBackend::open(&dir.path().join("db"), all_groups(), 1 << 20).expect("open");
        let mut registry = StateRegistry::new("op");
        let count = registry.value_state::<u64>("count").expect("state");
        for round in 1..=3u64 {
            for key in 0..20_000u64 {
                select(&mut backend, key);
                let mut ctx = KeyedContext {
                    backend: &mut backend,
                };
                let current = count.get(&mut ctx).expect("get").unwrap_or(0);
                assert_eq!(current, round - 1, "key {key} round {round}");
                count.set(&mut ctx, &(current + 1)).expect("set");
            }
        }
        assert!(backend.stats().evictions > 0, "the budget forced evictions");
    }

    test_on_both_backends! {
    fn map_state_sees_cached_and_flushed_entries_and_clear_removes_all(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend =
            open_backend(kind, &dir.path().join("db"), all_groups(), 64 << 20);
        let mut registry = StateRegistry::new("op");
        let map = registry.map_state::<String, u32>("m").expect("state");
        let other = registry.value_state::<u32>("v").expect("state");
        select(&mut backend, 7);
        let mut ctx = KeyedContext {
            backend: &mut backend,
        };
        map.put(&mut ctx, &"a".into(), &1).expect("put");
        map.put(&mut ctx, &"b".into(), &2).expect("put");
        other.set(&mut ctx, &9).expect("set");
        ctx.backend.flush_dirty().expect("flush");
        map.put(&mut ctx, &"c".into(), &3).expect("put");
        map.remove(&mut ctx, &"a".into()).expect("remove");
        let mut entries = map.entries(&mut ctx).expect("entries");
        entries.sort();
        assert_eq!(entries, vec![("b".to_string(), 2), ("c".to_string(), 3)]);
        map.clear(&mut ctx).expect("clear");
        assert!(map.entries(&mut ctx).expect("entries").is_empty());
        assert_eq!(
            other.get(&mut ctx).expect("get"),
            Some(9),
            "other state of the key untouched"
        );
        select(&mut backend, 8);
        let mut ctx = KeyedContext {
            backend: &mut backend,
        };
        assert_eq!(
            map.get(&mut ctx, &"b".into()).expect("get"),
            None,
            "maps are per key"
        );
    }    }

    #[test]
    fn key_eq_is_slice_equality() {
        for len in 0..40usize {
            let a: Vec<u8> = (0..len as u8).collect();
            assert!(key_eq(&a, &a.clone()));
            for i in 0..len {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!key_eq(&a, &b), "len {len} byte {i}");
            }
            assert!(!key_eq(&a, &a[..len.saturating_sub(1)]) || len == 0);
        }
    }

    #[test]
    fn prefix_then_key_order_is_byte_order() {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for len in [0usize, 1, 15, 16, 17, 30] {
            for fill in [0u8, 1, 255] {
                let mut key = vec![7u8; len];
                if let Some(last) = key.last_mut() {
                    *last = fill;
                }
                keys.push(key.clone());
                key.push(0);
                keys.push(key);
            }
        }
        let mut by_prefix = keys.clone();
        by_prefix.sort_by(|a, b| key_prefix(a).cmp(&key_prefix(b)).then_with(|| a.cmp(b)));
        keys.sort();
        assert_eq!(by_prefix, keys);
    }

    test_on_both_backends! {
    fn long_keys_and_growing_values_move_between_inline_and_heap(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend =
            open_backend(kind, &dir.path().join("db"), all_groups(), 64 << 20);
        let mut registry = StateRegistry::new("op");
        let map = registry.map_state::<String, String>("m").expect("state");
        let list = registry.list_state::<u64>("l").expect("state");
        let long = "k".repeat(100);
        for round in 0..2 {
            for key in 0..50u64 {
                select(&mut backend, key);
                let mut ctx = KeyedContext {
                    backend: &mut backend,
                };
                // Short key, value growing past the inline size and back.
                for v in 0..20 {
                    list.add(&mut ctx, v * 1_000_000).expect("add");
                }
                assert_eq!(list.get(&mut ctx).expect("get").len(), 20 + round);
                list.update(&mut ctx, &[key]).expect("update");
                // Keys longer than the inline size.
                map.put(&mut ctx, &long, &"x".repeat(key as usize))
                    .expect("put");
                map.put(&mut ctx, &"s".into(), &"y".into()).expect("put");
            }
            if round == 0 {
                backend.flush_dirty().expect("flush");
            }
        }
        backend.flush_dirty().expect("flush");
        drop_cache(&mut backend);
        for key in 0..50u64 {
            select(&mut backend, key);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            assert_eq!(list.get(&mut ctx).expect("get"), vec![key]);
            assert_eq!(
                map.get(&mut ctx, &long).expect("get"),
                Some("x".repeat(key as usize))
            );
            let mut entries = map.entries(&mut ctx).expect("entries");
            entries.sort();
            assert_eq!(entries.len(), 2);
            map.remove(&mut ctx, &long).expect("remove");
            assert_eq!(map.get(&mut ctx, &long).expect("get"), None);
        }
    }    }

    struct Average;

    impl crate::state::AggregateFunction for Average {
        type In = u32;
        type Acc = (u64, u64);
        type Out = f64;
        fn create_accumulator(&self) -> (u64, u64) {
            (0, 0)
        }
        fn add(&self, value: u32, (sum, n): (u64, u64)) -> (u64, u64) {
            (sum + u64::from(value), n + 1)
        }
        fn result(&self, &(sum, n): &(u64, u64)) -> f64 {
            sum as f64 / n as f64
        }
    }

    test_on_both_backends! {
    fn list_reducing_and_aggregating_state_per_key(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend =
            open_backend(kind, &dir.path().join("db"), all_groups(), 64 << 20);
        let mut registry = StateRegistry::new("op");
        let list = registry.list_state::<String>("list").expect("state");
        let max = registry
            .reducing_state("max", |a: u32, b: u32| a.max(b))
            .expect("state");
        let avg = registry.aggregating_state("avg", Average).expect("state");
        for key in [1u64, 2] {
            select(&mut backend, key);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            for v in [3u32, 9, 6] {
                let v = v * key as u32;
                list.add(&mut ctx, v.to_string()).expect("add");
                max.add(&mut ctx, v).expect("add");
                avg.add(&mut ctx, v).expect("add");
            }
        }
        select(&mut backend, 2);
        let mut ctx = KeyedContext {
            backend: &mut backend,
        };
        assert_eq!(list.get(&mut ctx).expect("get"), vec!["6", "18", "12"]);
        assert_eq!(max.get(&mut ctx).expect("get"), Some(18));
        assert_eq!(avg.get(&mut ctx).expect("get"), Some(12.0));
        list.update(&mut ctx, &["x".to_string()]).expect("update");
        assert_eq!(list.get(&mut ctx).expect("get"), vec!["x"]);
        list.clear(&mut ctx).expect("clear");
        assert!(list.get(&mut ctx).expect("get").is_empty());
        select(&mut backend, 1);
        let mut ctx = KeyedContext {
            backend: &mut backend,
        };
        assert_eq!(max.get(&mut ctx).expect("get"), Some(9), "key 1 untouched");
        assert_eq!(avg.get(&mut ctx).expect("get"), Some(6.0));
    }    }

    #[test]
    fn registering_a_state_name_twice_is_an_error() {
        let mut registry = StateRegistry::new("op");
        registry.value_state::<u64>("count").expect("first");
        let err = registry
            .value_state::<u64>("count")
            .err()
            .expect("second is refused");
        assert!(err.to_string().contains("registered twice"), "{err}");
    }

    test_on_both_backends! {
    fn snapshot_restores_only_the_key_groups_of_the_new_range_on_either_backend(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut source = open_backend(kind, &dir.path().join("src"), all_groups(), 64 << 20);
        let mut registry = StateRegistry::new("op");
        let value = registry.value_state::<u64>("v").expect("state");
        for key in 0..1000u64 {
            select(&mut source, key);
            value
                .set(
                    &mut KeyedContext {
                        backend: &mut source,
                    },
                    &(key * 10),
                )
                .expect("set");
        }
        let pending = source
            .checkpoint_to(&dir.path().join("copy"))
            .expect("checkpoint");
        // Writes after the snapshot must not leak into it.
        select(&mut source, 1);
        value
            .set(
                &mut KeyedContext {
                    backend: &mut source,
                },
                &777,
            )
            .expect("set");
        let info = pending.write_full(&dir.path().join("snap")).expect("write");
        assert_eq!(info.entries, 1000);
        let data = std::fs::read(dir.path().join("snap")).expect("read");

        for target_kind in [StateBackendKind::Rocksdb, StateBackendKind::Heap] {
            let mut restored_total = 0;
            for subtask in 0..3 {
                let range = key_group_range_for_subtask(MAX, 3, subtask);
                let path = dir.path().join(format!("dst-{target_kind:?}-{subtask}"));
                let mut target = open_backend(target_kind, &path, range, 64 << 20);
                restored_total += target.restore_snapshot(&data, "snap").expect("restore");
                for key in 0..1000u64 {
                    let bytes = key.to_be_bytes();
                    let group = key_group_for_key_bytes(&bytes, MAX);
                    if !range.contains(group) {
                        continue;
                    }
                    target.set_current_key(group, &bytes);
                    let got = value
                        .get(&mut KeyedContext {
                            backend: &mut target,
                        })
                        .expect("get");
                    assert_eq!(got, Some(key * 10), "key {key} on {target_kind:?}");
                }
            }
            assert_eq!(
                restored_total, 1000,
                "every entry lands in exactly one subtask of {target_kind:?}"
            );
        }
    }
    }

    /// An incremental checkpoint is RocksDB's files: a heap backend reads its key groups out of
    /// them, so a job moves from RocksDB to the heap through a checkpoint too (and rescales).
    #[test]
    fn rocksdb_checkpoint_files_restore_into_heap_backends_by_key_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut source = open_backend(
            StateBackendKind::Rocksdb,
            &dir.path().join("src"),
            all_groups(),
            64 << 20,
        );
        let mut registry = StateRegistry::new("op");
        let value = registry.value_state::<u64>("v").expect("state");
        let map = registry.map_state::<u32, u32>("m").expect("state");
        for key in 0..500u64 {
            select(&mut source, key);
            let mut ctx = KeyedContext {
                backend: &mut source,
            };
            value.set(&mut ctx, &(key + 1)).expect("set");
            map.put(&mut ctx, &(key as u32), &7).expect("put");
        }
        let files = dir.path().join("files");
        let pending = source.checkpoint_to(&files).expect("checkpoint");
        assert_eq!(pending.rocksdb_files(), Some(files.as_path()));
        let mut restored_total = 0;
        for subtask in 0..2 {
            let range = key_group_range_for_subtask(MAX, 2, subtask);
            let mut heap = KeyedStateBackend::open_heap(range);
            restored_total += heap.restore_from_files(&files, "chk-1").expect("restore");
            for key in (0..500u64)
                .filter(|k| range.contains(key_group_for_key_bytes(&k.to_be_bytes(), MAX)))
            {
                select(&mut heap, key);
                let mut ctx = KeyedContext { backend: &mut heap };
                assert_eq!(
                    value.get(&mut ctx).expect("get"),
                    Some(key + 1),
                    "key {key}"
                );
                assert_eq!(
                    map.entries(&mut ctx).expect("entries"),
                    vec![(key as u32, 7)]
                );
            }
        }
        assert_eq!(
            restored_total, 1000,
            "two entries per key, each in one subtask"
        );
    }

    /// Both backends write the same bytes for the same state: one format, key order included.
    #[test]
    fn heap_and_rocksdb_write_identical_snapshot_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut registry = StateRegistry::new("op");
        let map = registry.map_state::<u64, String>("m").expect("state");
        let mut objects = Vec::new();
        for kind in [StateBackendKind::Rocksdb, StateBackendKind::Heap] {
            let path = dir.path().join(format!("b-{}", objects.len()));
            let mut backend = open_backend(kind, &path, all_groups(), 64 << 20);
            for key in 0..300u64 {
                select(&mut backend, key);
                let mut ctx = KeyedContext {
                    backend: &mut backend,
                };
                for entry in [key % 7, 1000 - key % 5, 1 << 40] {
                    map.put(&mut ctx, &entry, &format!("{key}-{entry}"))
                        .expect("put");
                }
            }
            let name = format!("snap-{}", objects.len());
            objects.push(snapshot_bytes(&mut backend, dir.path(), &name));
        }
        assert!(objects[0] == objects[1], "RocksDB and heap objects differ");
    }
}
