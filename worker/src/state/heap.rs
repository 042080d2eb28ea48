//! Keyed state on the heap (`state.backend: heap`): per key group, a copy-on-write hash index
//! from namespace to that namespace's entries.
//!
//! Backend keys are `[key group:2][key len:4][key][state id:4][suffix]` (`state/backend.rs`).
//! The head up to the state id, the namespace, is one key's one state; the suffix is empty for
//! value, reducing and aggregating state and is the map key (or window) otherwise. Every record
//! reads and writes one full key, so namespaces are found by hash and suffixes in each
//! namespace's own sorted map (`imbl::OrdMap`, empty for value state): a point access is one
//! hash table probe instead of a B-tree walk comparing separately allocated keys, and map and
//! list state still iterate in order. Keys without a namespace (timers: key length
//! 0xFFFFFFFF) are namespaces of their own, with the empty suffix.
//!
//! The index is extendible hashing over chunks of at most [`CHUNK_ENTRIES`] namespaces, each a
//! `hashbrown` table behind an `Arc`, and the chunk list and directory are behind `Arc`s too.
//! A snapshot clones those on the task thread (the synchronous part: a pointer copy per key
//! group); the first write to a key group after it copies the group's chunk list (a pointer
//! per chunk), and the first write to a chunk copies that chunk alone. The clone is written
//! off the task thread in the full snapshot format both backends restore from, in full-key
//! byte order (RocksDB's), while the task keeps writing into its own copy.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use hashbrown::HashTable;
use imbl::OrdMap;

use super::backend::{Retain, StateId, key_group_of, key_prefix, namespace_len, state_of_entry};
use super::keygroups::KeyGroupRange;
use super::snapshot::{SnapshotFileInfo, SnapshotWriter};
use crate::error::Result;

/// Namespaces per chunk before it splits. A write to a chunk a snapshot still shares copies
/// the chunk (512 buckets of 72 bytes), while the chunk list the snapshot clones stays one pointer
/// per few hundred namespaces. 448 is 7/8 of 512, hashbrown's load limit: a chunk splits
/// before its table would grow to 1024 buckets.
const CHUNK_ENTRIES: usize = 448;
/// The directory takes hash bits from here up. hashbrown picks buckets by the low bits and
/// tags by the top 7: those must still vary among the namespaces of one chunk.
const DIRECTORY_SHIFT: u32 = 32;
/// Beyond 2^24 chunks per key group (billions of keys) chunks grow instead of splitting,
/// leaving the bits of hashbrown's tags alone.
const MAX_DEPTH: u32 = 24;

/// Bytes up to this length live inside [`Bytes`] itself: the namespace of an 8-byte key (18
/// bytes), a running count, a short map key or window.
const INLINE_BYTES: usize = 22;

/// A key or value. Inline when short, else shared: cloning never allocates, which matters
/// because a write after a snapshot clones every entry of the chunk it copies.
#[derive(Clone)]
enum Bytes {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Shared(Arc<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Bytes>() == 24);

impl Bytes {
    fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_BYTES {
            let mut inline = [0u8; INLINE_BYTES];
            inline[..bytes.len()].copy_from_slice(bytes);
            Bytes::Inline {
                // Fits: at most INLINE_BYTES.
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Bytes::Shared(bytes.into())
        }
    }

    /// Replaces the bytes, in place when the new ones fit where the old ones are (a running
    /// count keeps its size) and no snapshot shares them: no allocation on the hot path.
    fn overwrite(&mut self, value: &[u8]) {
        if let Bytes::Inline { len, bytes } = self
            && value.len() <= INLINE_BYTES
        {
            bytes[..value.len()].copy_from_slice(value);
            *len = value.len() as u8;
            return;
        }
        if let Bytes::Shared(shared) = self
            && shared.len() == value.len()
            && let Some(bytes) = Arc::get_mut(shared)
        {
            bytes.copy_from_slice(value);
            return;
        }
        *self = Bytes::new(value);
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Bytes::Shared(shared) => shared,
        }
    }
}

// Hash, equality and order are the slice's, so maps look up by `&[u8]` (`Borrow` requires
// exactly that) and sort in byte order.
impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Self) -> Ordering {
        (**self).cmp(&**other)
    }
}

/// The entries of one namespace: the one with the empty suffix apart, since value state has
/// only that one and should not pay for a sorted map.
#[derive(Clone, Default)]
struct Namespace {
    value: Option<Bytes>,
    /// Entries with a non-empty suffix (map keys, list state in windows), in suffix order.
    suffixed: OrdMap<Bytes, Bytes>,
}

impl Namespace {
    fn get(&self, suffix: &[u8]) -> Option<&[u8]> {
        if suffix.is_empty() {
            self.value.as_deref()
        } else {
            self.suffixed.get(suffix).map(|v| &**v)
        }
    }

    /// Returns whether the entry is new.
    fn put(&mut self, suffix: &[u8], value: &[u8]) -> bool {
        let old = if suffix.is_empty() {
            self.value.as_mut()
        } else {
            self.suffixed.get_mut(suffix)
        };
        if let Some(old) = old {
            old.overwrite(value);
            return false;
        }
        if suffix.is_empty() {
            self.value = Some(Bytes::new(value));
        } else {
            self.suffixed.insert(Bytes::new(suffix), Bytes::new(value));
        }
        true
    }

    /// Returns whether there was an entry to delete.
    fn delete(&mut self, suffix: &[u8]) -> bool {
        if suffix.is_empty() {
            self.value.take().is_some()
        } else {
            self.suffixed.remove(suffix).is_some()
        }
    }

    fn is_empty(&self) -> bool {
        self.value.is_none() && self.suffixed.is_empty()
    }

    /// `(suffix, value)` in suffix order: the empty suffix sorts first.
    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let value = self.value.iter().map(|v| (&[][..], &**v));
        value.chain(self.suffixed.iter().map(|(s, v)| (&**s, &**v)))
    }
}

/// `key` split into its namespace and suffix; a key without a namespace is one as a whole.
fn split(key: &[u8]) -> (&[u8], &[u8]) {
    key.split_at(namespace_len(key).unwrap_or(key.len()))
}

/// Fx for speed (namespaces are short), then a folded multiply so that every bit range the
/// index uses (low: bucket, 32 up: directory, top: tag) depends on every key byte.
fn hash_namespace(namespace: &[u8]) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(namespace);
    let product = u128::from(hasher.finish()) * 0x9E37_79B9_7F4A_7C15;
    (product as u64) ^ ((product >> 64) as u64)
}

#[derive(Clone)]
struct Slot {
    hash: u64,
    namespace: Bytes,
    entries: Namespace,
}

#[derive(Clone, Default)]
struct Chunk {
    /// How many hash bits (from [`DIRECTORY_SHIFT`]) all namespaces of this chunk share.
    depth: u32,
    slots: HashTable<Slot>,
}

impl Chunk {
    /// A chunk that splits before its table ever grows (a rehash of every slot).
    fn split_half(depth: u32) -> Self {
        Chunk {
            depth,
            slots: HashTable::with_capacity(CHUNK_ENTRIES),
        }
    }
}

/// The namespaces of one key group (extendible hashing): `directory[hash bits]` names the
/// chunk, and `2^(depth - chunk depth)` directory entries name each chunk. Chunks are named by
/// index rather than shared through the directory, so an `Arc` count above one always means
/// a snapshot holds the chunk (or the list holding it).
#[derive(Clone)]
struct NamespaceIndex {
    depth: u32,
    directory: Arc<Vec<u32>>,
    chunks: Arc<Vec<Arc<Chunk>>>,
}

impl Default for NamespaceIndex {
    fn default() -> Self {
        NamespaceIndex {
            depth: 0,
            directory: Arc::new(vec![0]),
            chunks: Arc::new(vec![Arc::default()]),
        }
    }
}

impl NamespaceIndex {
    fn chunk_of(&self, hash: u64) -> usize {
        let bits = (hash >> DIRECTORY_SHIFT) as usize & ((1 << self.depth) - 1);
        self.directory[bits] as usize
    }

    fn get(&self, hash: u64, namespace: &[u8]) -> Option<&Namespace> {
        let chunk = &self.chunks[self.chunk_of(hash)];
        let slot = chunk.slots.find(hash, |s| *s.namespace == *namespace)?;
        Some(&slot.entries)
    }

    /// The namespace's entries to change, copying its chunk first when a snapshot shares it
    /// (and only when the namespace is there: a miss copies no chunk).
    fn get_mut(&mut self, hash: u64, namespace: &[u8]) -> Option<&mut Namespace> {
        let index = self.chunk_of(hash);
        let chunk = &mut Arc::make_mut(&mut self.chunks)[index];
        let eq = |s: &Slot| *s.namespace == *namespace;
        if Arc::get_mut(chunk).is_none() && chunk.slots.find(hash, eq).is_none() {
            return None;
        }
        let slot = Arc::make_mut(chunk).slots.find_mut(hash, eq)?;
        Some(&mut slot.entries)
    }

    /// Adds a namespace the index does not hold.
    fn insert(&mut self, hash: u64, namespace: &[u8], entries: Namespace) {
        let mut index = self.chunk_of(hash);
        if self.chunks[index].slots.len() >= CHUNK_ENTRIES && self.chunks[index].depth < MAX_DEPTH {
            self.split(index);
            index = self.chunk_of(hash);
        }
        let slot = Slot {
            hash,
            namespace: Bytes::new(namespace),
            entries,
        };
        Arc::make_mut(&mut Arc::make_mut(&mut self.chunks)[index])
            .slots
            .insert_unique(hash, slot, |s| s.hash);
    }

    fn remove(&mut self, hash: u64, namespace: &[u8]) {
        let index = self.chunk_of(hash);
        let chunk = Arc::make_mut(&mut Arc::make_mut(&mut self.chunks)[index]);
        if let Ok(slot) = chunk.slots.find_entry(hash, |s| *s.namespace == *namespace) {
            slot.remove();
        }
    }

    /// Splits a full chunk in two by its next hash bit, doubling the directory first when the
    /// chunk already uses all of its bits. The old chunk is left to any snapshot holding it.
    fn split(&mut self, index: usize) {
        let chunks = Arc::make_mut(&mut self.chunks);
        let directory = Arc::make_mut(&mut self.directory);
        let depth = chunks[index].depth;
        if depth == self.depth {
            directory.extend_from_within(..);
            self.depth += 1;
        }
        let bit = 1u64 << (DIRECTORY_SHIFT + depth);
        let mut halves = [Chunk::split_half(depth + 1), Chunk::split_half(depth + 1)];
        let mut place = |slot: Slot| {
            let half = &mut halves[usize::from(slot.hash & bit != 0)];
            half.slots.insert_unique(slot.hash, slot, |s| s.hash);
        };
        // Moved when no snapshot holds the chunk (as during a bulk load or a restore).
        match Arc::try_unwrap(std::mem::take(&mut chunks[index])) {
            Ok(chunk) => chunk.slots.into_iter().for_each(&mut place),
            Err(shared) => shared.slots.iter().cloned().for_each(&mut place),
        }
        let [low, high] = halves.map(Arc::new);
        // Chunk counts stay far below u32::MAX: at most 2^MAX_DEPTH per key group.
        let high_index = chunks.len() as u32;
        chunks[index] = low;
        chunks.push(high);
        for (bits, chunk) in directory.iter_mut().enumerate() {
            if *chunk as usize == index && bits & (1 << depth) != 0 {
                *chunk = high_index;
            }
        }
    }

    /// Every namespace, in no particular order.
    fn iter(&self) -> impl Iterator<Item = (&Bytes, &Namespace)> {
        let slots = self.chunks.iter().flat_map(|chunk| chunk.slots.iter());
        slots.map(|slot| (&slot.namespace, &slot.entries))
    }
}

pub(crate) struct HeapStore {
    key_groups: KeyGroupRange,
    /// Indexed by key group minus `key_groups.start`.
    groups: Vec<NamespaceIndex>,
    /// Entries (full keys) held, over all groups.
    entries: usize,
}

impl HeapStore {
    pub(crate) fn new(key_groups: KeyGroupRange) -> Self {
        let count = usize::from(key_groups.end.saturating_sub(key_groups.start));
        HeapStore {
            key_groups,
            groups: vec![NamespaceIndex::default(); count],
            entries: 0,
        }
    }

    fn group_index(&self, key: &[u8]) -> usize {
        let group = key_group_of(key);
        // The backend checks every current key (`set_current_key`) and restores filter by
        // key group, so a key of another group is a bug, not an input.
        assert!(
            self.key_groups.contains(group),
            "key group {group} outside {:?}",
            self.key_groups
        );
        usize::from(group - self.key_groups.start)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let (namespace, suffix) = split(key);
        self.groups[self.group_index(key)]
            .get(hash_namespace(namespace), namespace)?
            .get(suffix)
    }

    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) {
        let index = self.group_index(key);
        let (namespace, suffix) = split(key);
        let hash = hash_namespace(namespace);
        let map = &mut self.groups[index];
        let added = match map.get_mut(hash, namespace) {
            Some(entries) => entries.put(suffix, value),
            None => {
                let mut entries = Namespace::default();
                entries.put(suffix, value);
                map.insert(hash, namespace, entries);
                true
            }
        };
        self.entries += usize::from(added);
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        let index = self.group_index(key);
        let (namespace, suffix) = split(key);
        let hash = hash_namespace(namespace);
        let map = &mut self.groups[index];
        let Some(entries) = map.get_mut(hash, namespace) else {
            return;
        };
        if entries.delete(suffix) {
            self.entries -= 1;
            if entries.is_empty() {
                map.remove(hash, namespace);
            }
        }
    }

    /// All `(suffix, value)` entries of `namespace` (`[group][key len][key][state id]`: all
    /// callers ask for one key's one state), in key order.
    pub(crate) fn entries(&self, namespace: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        // Any other prefix would silently miss entries of other namespaces.
        assert_eq!(
            namespace_len(namespace),
            Some(namespace.len()),
            "entries of {namespace:?}, which is not a namespace"
        );
        let map = &self.groups[self.group_index(namespace)];
        let Some(entries) = map.get(hash_namespace(namespace), namespace) else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|(suffix, value)| (suffix.to_vec(), value.to_vec()))
            .collect()
    }

    /// See `KeyedStateBackend::retain_entries`.
    pub(crate) fn retain_entries(
        &mut self,
        states: &[StateId],
        mut decide: impl FnMut(StateId, &[u8]) -> Retain,
    ) {
        // Edits are applied after the visit: writing while iterating would copy every chunk a
        // snapshot still shares, changed or not.
        let mut edits: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for map in &self.groups {
            for (namespace, entries) in map.iter() {
                let Some(id) = state_of_entry(namespace).filter(|id| states.contains(id)) else {
                    continue;
                };
                for (suffix, value) in entries.iter() {
                    let edit = match decide(id, value) {
                        Retain::Keep => continue,
                        Retain::Delete => None,
                        Retain::Replace(bytes) => Some(bytes),
                    };
                    edits.push(([&**namespace, suffix].concat(), edit));
                }
            }
        }
        for (key, value) in edits {
            match value {
                Some(value) => self.put(&key, &value),
                None => self.delete(&key),
            }
        }
    }

    /// The synchronous part of a snapshot: a clone of every index, a pointer copy per group.
    pub(crate) fn snapshot(&self) -> HeapSnapshot {
        HeapSnapshot {
            groups: self.groups.clone(),
            entries: self.entries,
        }
    }
}

/// A point-in-time copy of heap state, sharing its chunks with the live index until they change.
pub struct HeapSnapshot {
    groups: Vec<NamespaceIndex>,
    entries: usize,
}

impl HeapSnapshot {
    /// Writes the full snapshot object (`state/snapshot.rs`) to `out`. Key groups in order,
    /// each in full-key byte order, as RocksDB's iteration gives.
    ///
    /// Namespaces sorted by bytes, then each one's suffixes in order, is that order: two
    /// namespaces of state entries either differ in their key length field or have the same
    /// length, so neither is a prefix of the other and their first difference decides; a
    /// namespace that is a prefix of another can only be a key without one, which has only
    /// the empty suffix, and sorts before everything it prefixes.
    pub fn write(self, out: &Path) -> Result<SnapshotFileInfo> {
        let mut writer = SnapshotWriter::create(out)?;
        let mut key = Vec::new();
        for map in &self.groups {
            // Sorting by the first 16 bytes held in the vector (group, key length and most of
            // a short key) touches a namespace's own bytes only on a tie.
            let mut namespaces: Vec<(u128, &Bytes, &Namespace)> = map
                .iter()
                .map(|(namespace, entries)| (key_prefix(namespace), namespace, entries))
                .collect();
            namespaces.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            for (_, namespace, entries) in namespaces {
                for (suffix, value) in entries.iter() {
                    key.clear();
                    key.extend_from_slice(namespace);
                    key.extend_from_slice(suffix);
                    writer.append(&key, value)?;
                }
            }
        }
        writer.finish()
    }

    pub fn entries(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::snapshot::SnapshotReader;

    fn all_groups() -> KeyGroupRange {
        KeyGroupRange { start: 0, end: 4 }
    }

    /// `[group][key len][key][state][suffix]`.
    fn entry_key(group: u16, key: &[u8], state: StateId, suffix: &[u8]) -> Vec<u8> {
        let mut out = group.to_be_bytes().to_vec();
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&state.to_be_bytes());
        out.extend_from_slice(suffix);
        out
    }

    /// What `state/timers.rs` stores: the key length field is 0xFFFFFFFF.
    fn timer_key(group: u16, time: u64, key: &[u8]) -> Vec<u8> {
        let mut out = group.to_be_bytes().to_vec();
        out.extend_from_slice(&[0xFF; 4]);
        out.push(0);
        out.extend_from_slice(&time.to_be_bytes());
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out
    }

    fn written(snapshot: HeapSnapshot, dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let path = dir.join("snap");
        let info = snapshot.write(&path).expect("write");
        let data = std::fs::read(&path).expect("read");
        let entries: Vec<_> = SnapshotReader::new(&data, "snap")
            .expect("reader")
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("entry"))
            .collect();
        assert_eq!(info.entries, entries.len() as u64);
        entries
    }

    #[test]
    fn keys_split_after_the_state_id_and_keys_without_one_stay_whole() {
        let value = entry_key(1, b"abc", 7, b"");
        assert_eq!(split(&value), (&value[..], &[][..]));
        let map = entry_key(1, b"abc", 7, b"map key");
        assert_eq!(split(&map), (&map[..13], &b"map key"[..]));
        let timer = timer_key(1, 5, b"abc");
        assert_eq!(split(&timer), (&timer[..], &[][..]));
        let short = entry_key(1, b"abc", 7, b"")[..10].to_vec();
        assert_eq!(split(&short), (&short[..], &[][..]));
    }

    #[test]
    fn bytes_overwrite_in_place_and_move_between_inline_and_shared() {
        let mut bytes = Bytes::new(b"short");
        for value in [
            &b"also short"[..],
            &[7u8; 40][..],
            &[8u8; 40][..],
            &[9u8; 41][..],
            b"",
            &[1u8; INLINE_BYTES][..],
            &[2u8; INLINE_BYTES + 1][..],
        ] {
            bytes.overwrite(value);
            assert_eq!(&*bytes, value);
        }
        // A shared copy (what a snapshot holds) keeps its bytes.
        let before = bytes.clone();
        bytes.overwrite(&[3u8; INLINE_BYTES + 1]);
        assert_eq!(&*before, &[2u8; INLINE_BYTES + 1][..]);
        assert_eq!(&*bytes, &[3u8; INLINE_BYTES + 1][..]);
    }

    /// Value and map state over keys of several lengths, and timers, in every group: the
    /// snapshot lists exactly the stored entries in full-key byte order.
    #[test]
    fn snapshot_is_in_full_key_byte_order_for_mixed_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = HeapStore::new(all_groups());
        let mut model = BTreeMap::new();
        let mut put = |store: &mut HeapStore, key: Vec<u8>, value: Vec<u8>| {
            store.put(&key, &value);
            model.insert(key, value);
        };
        let keys: [&[u8]; 6] = [b"", b"a", b"ab", b"b", &[0xFF; 3], &[0x61; 40]];
        for group in (0..4u16).rev() {
            for key in keys {
                put(&mut store, entry_key(group, key, 2, b""), b"v".to_vec());
                for suffix in [&b"z"[..], b"a", b"\x00", b"aa", &[0xFF; 30]] {
                    put(
                        &mut store,
                        entry_key(group, key, 1, suffix),
                        suffix.to_vec(),
                    );
                }
                // Value and map entries in one namespace.
                put(&mut store, entry_key(group, key, 1, b""), vec![1; 30]);
                put(&mut store, timer_key(group, 9, key), key.to_vec());
                put(&mut store, timer_key(group, 3, key), key.to_vec());
            }
        }
        let expected: Vec<_> = model.into_iter().collect();
        assert_eq!(store.snapshot().entries(), expected.len());
        assert_eq!(written(store.snapshot(), dir.path()), expected);
    }

    #[test]
    fn writes_after_a_snapshot_do_not_show_in_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = HeapStore::new(all_groups());
        let count = |k: u64| entry_key((k % 4) as u16, &k.to_be_bytes(), 1, b"");
        let long = |k: u64| entry_key((k % 4) as u16, &k.to_be_bytes(), 2, &[7; 30]);
        for k in 0..2000u64 {
            store.put(&count(k), &k.to_le_bytes());
            store.put(&long(k), &[k as u8; 50]);
        }
        let snapshot = store.snapshot();
        let mut expected: Vec<_> = (0..2000u64)
            .flat_map(|k| {
                [
                    (count(k), k.to_le_bytes().to_vec()),
                    (long(k), vec![k as u8; 50]),
                ]
            })
            .collect();
        expected.sort();
        // Same-size overwrites (in place when unshared), growth, deletes, new entries.
        for k in 0..2000u64 {
            store.put(&count(k), &(k + 1).to_le_bytes());
            match k % 3 {
                0 => store.put(&long(k), &[0; 50]),
                1 => store.put(&long(k), &[0; 60]),
                _ => store.delete(&long(k)),
            }
            store.put(&entry_key((k % 4) as u16, &k.to_be_bytes(), 3, b""), b"new");
        }
        assert_eq!(snapshot.entries(), 4000);
        assert_eq!(written(snapshot, dir.path()), expected);
        assert_eq!(store.get(&count(5)), Some(&6u64.to_le_bytes()[..]));
        assert_eq!(store.get(&long(2)), None);
    }

    /// Every chunk holds exactly the namespaces whose hash bits the directory sends to it.
    fn assert_index_consistent(index: &NamespaceIndex) {
        assert_eq!(index.directory.len(), 1 << index.depth);
        for (bits, &chunk) in index.directory.iter().enumerate() {
            let chunk = &index.chunks[chunk as usize];
            assert!(chunk.depth <= index.depth);
            let mask = (1usize << chunk.depth) - 1;
            for slot in chunk.slots.iter() {
                let slot_bits = (slot.hash >> DIRECTORY_SHIFT) as usize;
                assert_eq!(
                    slot_bits & mask,
                    bits & mask,
                    "namespace in the wrong chunk"
                );
                assert_eq!(slot.hash, hash_namespace(&slot.namespace));
            }
        }
    }

    #[test]
    fn chunks_split_as_they_fill_and_a_snapshot_keeps_the_chunks_it_shares() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = HeapStore::new(KeyGroupRange { start: 3, end: 4 });
        let key = |k: u32| entry_key(3, &k.to_be_bytes(), 1, b"");
        for k in 0..5_000u32 {
            store.put(&key(k), &k.to_be_bytes());
        }
        assert!(store.groups[0].chunks.len() >= 5_000 / CHUNK_ENTRIES);
        assert_index_consistent(&store.groups[0]);
        let snapshot = store.snapshot();
        let chunks_before = snapshot.groups[0].chunks.len();
        // Overwrites, deletes and enough new namespaces to split shared chunks again.
        for k in 0..20_000u32 {
            match k {
                0..1_000 => store.delete(&key(k)),
                1_000..5_000 => store.put(&key(k), &(k + 1).to_be_bytes()),
                _ => store.put(&key(k), b"new"),
            }
        }
        assert_index_consistent(&store.groups[0]);
        assert_index_consistent(&snapshot.groups[0]);
        assert_eq!(snapshot.groups[0].chunks.len(), chunks_before);
        let mut expected: Vec<_> = (0..5_000u32)
            .map(|k| (key(k), k.to_be_bytes().to_vec()))
            .collect();
        expected.sort();
        assert_eq!(written(snapshot, dir.path()), expected);
        for k in 0..20_000u32 {
            let want = match k {
                0..1_000 => None,
                1_000..5_000 => Some((k + 1).to_be_bytes().to_vec()),
                _ => Some(b"new".to_vec()),
            };
            assert_eq!(store.get(&key(k)).map(<[u8]>::to_vec), want, "key {k}");
        }
        assert_eq!(store.snapshot().entries(), 19_000);
    }

    /// Random point writes, deletes and namespace scans agree with a sorted map of full keys.
    #[test]
    fn agrees_with_a_sorted_map_of_full_keys() {
        let mut store = HeapStore::new(all_groups());
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..20_000 {
            let key = next(30).to_string().repeat(next(3) as usize + 1);
            let state = next(3) as StateId;
            let suffix = vec![b'x'; next(3) as usize];
            let full = entry_key(next(4) as u16, key.as_bytes(), state, &suffix);
            match next(4) {
                0 => {
                    store.delete(&full);
                    model.remove(&full);
                }
                _ => {
                    let value = vec![step as u8; next(40) as usize];
                    store.put(&full, &value);
                    model.insert(full.clone(), value);
                }
            }
            assert_eq!(store.get(&full), model.get(&full).map(Vec::as_slice));
            let namespace = &full[..full.len() - suffix.len()];
            let expected: Vec<_> = model
                .range(namespace.to_vec()..)
                .take_while(|(k, _)| k.starts_with(namespace))
                .map(|(k, v)| (k[namespace.len()..].to_vec(), v.clone()))
                .collect();
            assert_eq!(store.entries(namespace), expected);
        }
        assert_eq!(store.entries, model.len());
    }
}
