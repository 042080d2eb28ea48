//! Operator (non-keyed) list state and how it is redistributed when parallelism changes.
//!
//! Each subtask snapshots a list of entries. On restore, `EvenSplit` concatenates the lists of
//! all old subtasks and hands each new subtask a contiguous share; `Union` hands every new
//! subtask everything (sources use it: each picks the splits it now owns); `Broadcast` hands
//! every new subtask one old subtask's list (broadcast state: the lists are alike).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redistribution {
    EvenSplit,
    Union,
    Broadcast,
}

/// One subtask's snapshot of one named operator list state. Entries are JSON so
/// `_metadata` stays readable and entries survive changes to a struct's field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorStateSnapshot {
    pub redistribution: Redistribution,
    pub entries: Vec<serde_json::Value>,
}

/// The entries new subtask `index` of `parallelism` gets from the old subtasks' snapshots
/// (in old subtask order).
pub fn redistribute(
    old: &[OperatorStateSnapshot],
    redistribution: Redistribution,
    parallelism: u32,
    index: u32,
) -> Vec<serde_json::Value> {
    if redistribution == Redistribution::Broadcast {
        // Flink's choice: new subtask i takes old subtask i mod the old parallelism, which
        // spreads the reads over the old subtasks' objects.
        return old
            .get(index as usize % old.len().max(1))
            .map(|s| s.entries.clone())
            .unwrap_or_default();
    }
    let all = old.iter().flat_map(|s| s.entries.iter().cloned());
    match redistribution {
        Redistribution::Union | Redistribution::Broadcast => all.collect(),
        Redistribution::EvenSplit => {
            let all: Vec<_> = all.collect();
            let n = all.len();
            let p = parallelism as usize;
            let i = index as usize;
            let (start, end) = (i * n / p, (i + 1) * n / p);
            all[start..end].to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(values: &[i64]) -> OperatorStateSnapshot {
        OperatorStateSnapshot {
            redistribution: Redistribution::EvenSplit,
            entries: values.iter().map(|v| json!(v)).collect(),
        }
    }

    #[test]
    fn even_split_hands_out_every_entry_once() {
        let old = vec![snap(&[1, 2, 3]), snap(&[4, 5]), snap(&[6, 7, 8, 9])];
        for p in 1..=12 {
            let mut got: Vec<_> = (0..p)
                .flat_map(|i| redistribute(&old, Redistribution::EvenSplit, p, i))
                .collect();
            got.sort_by_key(|v| v.as_i64());
            assert_eq!(got, (1..=9).map(|v| json!(v)).collect::<Vec<_>>(), "p={p}");
        }
    }

    #[test]
    fn union_hands_every_subtask_everything() {
        let old = vec![snap(&[1]), snap(&[2, 3])];
        for i in 0..4 {
            assert_eq!(
                redistribute(&old, Redistribution::Union, 4, i),
                vec![json!(1), json!(2), json!(3)]
            );
        }
    }

    #[test]
    fn broadcast_hands_every_subtask_one_whole_copy() {
        let copy = |v: &[i64]| OperatorStateSnapshot {
            redistribution: Redistribution::Broadcast,
            entries: v.iter().map(|v| json!(v)).collect(),
        };
        let old = vec![copy(&[1, 2]), copy(&[1, 2])];
        for p in 1..=5 {
            for i in 0..p {
                assert_eq!(
                    redistribute(&old, Redistribution::Broadcast, p, i),
                    vec![json!(1), json!(2)],
                    "p={p} i={i}"
                );
            }
        }
        assert!(redistribute(&[], Redistribution::Broadcast, 3, 2).is_empty());
    }
}
