//! Key groups: the unit in which keyed state is split, snapshotted and moved on rescale.
//!
//! A key's group is `xxh3(key bytes) % max_parallelism`; subtask `i` of `p` owns the
//! contiguous range Flink uses (`KeyGroupRangeAssignment`), so a rescale moves whole ranges.
//! The hash is part of the checkpoint format: changing it would scatter restored state.

use serde::{Deserialize, Serialize};

/// Half-open range `[start, end)` of key groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    pub start: u16,
    pub end: u16,
}

impl KeyGroupRange {
    pub fn contains(&self, key_group: u16) -> bool {
        key_group >= self.start && key_group < self.end
    }

    pub fn intersects(&self, other: &KeyGroupRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn len(&self) -> usize {
        usize::from(self.end.saturating_sub(self.start))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn key_group_for_key_bytes(key: &[u8], max_parallelism: u32) -> u16 {
    // max_parallelism <= 32768 (validated), so the result fits in u16.
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(max_parallelism)) as u16
}

/// The subtask that owns `key_group` at `parallelism`.
pub fn subtask_for_key_group(key_group: u16, max_parallelism: u32, parallelism: u32) -> u32 {
    u32::from(key_group) * parallelism / max_parallelism
}

/// The key groups subtask `index` owns at `parallelism`.
pub fn key_group_range_for_subtask(
    max_parallelism: u32,
    parallelism: u32,
    index: u32,
) -> KeyGroupRange {
    let start = (index * max_parallelism).div_ceil(parallelism);
    let end = ((index + 1) * max_parallelism).div_ceil(parallelism);
    KeyGroupRange {
        start: start as u16,
        end: end as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_key_groups_for_every_parallelism() {
        for max in [1u32, 7, 128, 1000] {
            for p in 1..=max.min(40) {
                let mut next = 0u16;
                for i in 0..p {
                    let r = key_group_range_for_subtask(max, p, i);
                    assert_eq!(r.start, next, "max {max} p {p} i {i}");
                    for kg in r.start..r.end {
                        assert_eq!(
                            subtask_for_key_group(kg, max, p),
                            i,
                            "max {max} p {p} kg {kg}"
                        );
                    }
                    next = r.end;
                }
                assert_eq!(u32::from(next), max);
            }
        }
    }

    #[test]
    fn key_group_is_stable_across_releases() {
        // Pinned values: a change here scatters the state of every existing checkpoint.
        assert_eq!(key_group_for_key_bytes(b"/api/a", 128), 39);
        assert_eq!(key_group_for_key_bytes(b"/api/b", 128), 14);
        assert_eq!(key_group_for_key_bytes(&7u64.to_be_bytes(), 128), 124);
    }

    #[test]
    fn keys_spread_over_key_groups() {
        let spread: std::collections::HashSet<u16> = (0..1000u32)
            .map(|i| key_group_for_key_bytes(&i.to_be_bytes(), 128))
            .collect();
        assert!(
            spread.len() > 120,
            "keys spread over key groups: {}",
            spread.len()
        );
    }
}
