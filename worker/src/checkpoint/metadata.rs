//! `_metadata`: the object whose presence makes a checkpoint exist.
//!
//! Format: one header line `WEIR-CHECKPOINT 1 crc32=<hex>` followed by JSON. The checksum
//! covers the JSON, so a damaged `_metadata` is refused rather than half-read. State handles
//! inside are relative to the checkpoint's own directory, which makes a checkpoint (and a
//! savepoint) relocatable: copy the directory and it restores from anywhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{KeyGroupRange, OperatorStateSnapshot};

pub const METADATA_OBJECT: &str = "_metadata";
const HEADER_PREFIX: &str = "WEIR-CHECKPOINT 1 crc32=";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointMetadata {
    pub job_id: String,
    pub checkpoint_id: u64,
    pub kind: SnapshotKind,
    pub timestamp_ms: u64,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// By operator uid.
    pub operators: BTreeMap<String, OperatorSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorSnapshot {
    /// Indexed by subtask.
    pub subtasks: Vec<SubtaskState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyedStateHandle>,
    /// By state name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operator_state: BTreeMap<String, OperatorStateSnapshot>,
}

/// One keyed-state snapshot object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyedStateHandle {
    /// Relative to the checkpoint directory.
    pub object: String,
    pub key_groups: KeyGroupRange,
    pub size: u64,
    pub crc32: u32,
    pub entries: u64,
}

impl CheckpointMetadata {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(|e| Error::codec("checkpoint metadata", e))?;
        let mut out = format!("{HEADER_PREFIX}{:08x}\n", crc32fast::hash(&json)).into_bytes();
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// `object` names the `_metadata` object in errors.
    pub fn decode(data: &[u8], object: &str) -> Result<CheckpointMetadata> {
        let corrupt = |reason: String| Error::CorruptCheckpoint {
            object: object.to_string(),
            reason,
        };
        let newline = data
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no header line".into()))?;
        let header = std::str::from_utf8(&data[..newline])
            .map_err(|_| corrupt("header is not UTF-8".into()))?;
        let expected = header
            .strip_prefix(HEADER_PREFIX)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| corrupt(format!("unrecognised header {header:?}")))?;
        let json = &data[newline + 1..];
        let actual = crc32fast::hash(json);
        if actual != expected {
            return Err(corrupt(format!(
                "checksum mismatch: crc32 {actual:08x}, header says {expected:08x}"
            )));
        }
        serde_json::from_slice(json).map_err(|e| corrupt(format!("invalid JSON: {e}")))
    }

    /// Total bytes of state objects (metadata excluded).
    pub fn state_size(&self) -> u64 {
        self.operators
            .values()
            .flat_map(|op| op.subtasks.iter())
            .filter_map(|s| s.keyed.as_ref().map(|k| k.size))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointMetadata {
        let mut operators = BTreeMap::new();
        operators.insert(
            "counter".to_string(),
            OperatorSnapshot {
                subtasks: vec![SubtaskState {
                    keyed: Some(KeyedStateHandle {
                        object: "counter-0.state".into(),
                        key_groups: KeyGroupRange { start: 0, end: 64 },
                        size: 10,
                        crc32: 7,
                        entries: 1,
                    }),
                    operator_state: BTreeMap::new(),
                }],
            },
        );
        CheckpointMetadata {
            job_id: "job".into(),
            checkpoint_id: 3,
            kind: SnapshotKind::Checkpoint,
            timestamp_ms: 1,
            parallelism: 1,
            max_parallelism: 128,
            operators,
        }
    }

    #[test]
    fn round_trips() {
        let meta = sample();
        let bytes = meta.encode().expect("encode");
        assert_eq!(
            CheckpointMetadata::decode(&bytes, "chk-3/_metadata").expect("decode"),
            meta
        );
    }

    #[test]
    fn floats_in_operator_state_round_trip_exactly() {
        // Found by fuzz/checkpoint_metadata: serde_json without `float_roundtrip` reads the
        // shortest representation of some f64 back 1 ulp off, so operator state changed
        // between snapshot and restore.
        let mut meta = sample();
        let entries = [
            1.6042820772036851e22,
            0.1 + 0.2,
            5e-324,
            f64::MAX,
            -2.2250738585072014e-308,
        ]
        .map(|x| serde_json::json!({ "value": x }))
        .to_vec();
        meta.operators.get_mut("counter").expect("counter").subtasks[0]
            .operator_state
            .insert(
                "floats".into(),
                OperatorStateSnapshot {
                    redistribution: crate::state::Redistribution::Union,
                    entries,
                },
            );
        let bytes = meta.encode().expect("encode");
        assert_eq!(
            CheckpointMetadata::decode(&bytes, "chk-3/_metadata").expect("decode"),
            meta
        );
    }

    #[test]
    fn any_flipped_byte_is_refused_naming_the_object() {
        let bytes = sample().encode().expect("encode");
        for i in (0..bytes.len()).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            let err = CheckpointMetadata::decode(&damaged, "chk-3/_metadata").expect_err("damaged");
            assert!(err.to_string().contains("chk-3/_metadata"), "{err}");
        }
    }
}
