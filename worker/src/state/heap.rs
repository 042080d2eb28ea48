//! Keyed state on the heap (`state.backend: heap`): one sorted persistent map per key group.
//!
//! Keys are the backend's full keys (`[key group:2][key len:4][key][state id:4][suffix]`,
//! `state/backend.rs`), compared as bytes: exactly RocksDB's default order, so prefix scans
//! (map and list state, timers) and snapshot objects come out as they do from RocksDB.
//!
//! The maps are `imbl::OrdMap`s, B-trees with shared nodes: a clone is constant time, and a
//! write after it copies only the nodes on its path. A snapshot clones the maps on the task
//! thread (the synchronous part) and writes the clone off it, in the full snapshot format both
//! backends restore from, while the task keeps writing into its own copy.

use std::ops::Bound;
use std::path::Path;

use imbl::OrdMap;

use super::backend::{Retain, StateId, key_group_of, state_of_entry};
use super::keygroups::KeyGroupRange;
use super::snapshot::{SnapshotFileInfo, SnapshotWriter};
use crate::error::Result;

type GroupMap = OrdMap<Box<[u8]>, Box<[u8]>>;

/// A key and its new value, `None` for a delete.
type Edit = (Box<[u8]>, Option<Box<[u8]>>);

pub(crate) struct HeapStore {
    key_groups: KeyGroupRange,
    /// Indexed by key group minus `key_groups.start`.
    groups: Vec<GroupMap>,
}

impl HeapStore {
    pub(crate) fn new(key_groups: KeyGroupRange) -> Self {
        let count = usize::from(key_groups.end.saturating_sub(key_groups.start));
        HeapStore {
            key_groups,
            groups: vec![GroupMap::new(); count],
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
        self.groups[self.group_index(key)].get(key).map(|v| &**v)
    }

    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) {
        let index = self.group_index(key);
        let map = &mut self.groups[index];
        // Most puts overwrite a value of the same size (a running count): reuse its bytes
        // instead of allocating a new key and value.
        match map.get_mut(key) {
            Some(old) if old.len() == value.len() => old.copy_from_slice(value),
            Some(old) => *old = value.into(),
            None => {
                map.insert(key.into(), value.into());
            }
        }
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        let index = self.group_index(key);
        self.groups[index].remove(key);
    }

    /// All `(suffix, value)` entries whose key starts with `prefix`, in key order.
    pub(crate) fn entries(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map = &self.groups[self.group_index(prefix)];
        map.range::<_, [u8]>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key[prefix.len()..].to_vec(), value.to_vec()))
            .collect()
    }

    /// See `KeyedStateBackend::retain_entries`.
    pub(crate) fn retain_entries(
        &mut self,
        states: &[StateId],
        mut decide: impl FnMut(StateId, &[u8]) -> Retain,
    ) {
        for map in &mut self.groups {
            let mut edits: Vec<Edit> = Vec::new();
            for (key, value) in map.iter() {
                let Some(id) = state_of_entry(key).filter(|id| states.contains(id)) else {
                    continue;
                };
                match decide(id, value) {
                    Retain::Keep => {}
                    Retain::Delete => edits.push((key.clone(), None)),
                    Retain::Replace(bytes) => edits.push((key.clone(), Some(bytes.into()))),
                }
            }
            for (key, value) in edits {
                match value {
                    Some(value) => map.insert(key, value),
                    None => map.remove(&key),
                };
            }
        }
    }

    /// The synchronous part of a snapshot: a clone of every map, constant time each.
    pub(crate) fn snapshot(&self) -> HeapSnapshot {
        HeapSnapshot {
            groups: self.groups.clone(),
        }
    }
}

/// A point-in-time copy of heap state, sharing its nodes with the live maps until they change.
pub struct HeapSnapshot {
    groups: Vec<GroupMap>,
}

impl HeapSnapshot {
    /// Writes the full snapshot object (`state/snapshot.rs`) to `out`. Key groups in order,
    /// each in key order: the byte order of the whole key, as RocksDB's iteration gives.
    pub fn write(self, out: &Path) -> Result<SnapshotFileInfo> {
        let mut writer = SnapshotWriter::create(out)?;
        for map in &self.groups {
            for (key, value) in map.iter() {
                writer.append(key, value)?;
            }
        }
        writer.finish()
    }

    pub fn entries(&self) -> usize {
        self.groups.iter().map(OrdMap::len).sum()
    }
}
