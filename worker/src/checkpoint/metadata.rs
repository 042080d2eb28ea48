//! `_metadata`: the object whose presence makes a checkpoint exist.
//!
//! Format: one header line `WEIR-CHECKPOINT 1 crc32=<hex>` followed by JSON. The checksum
//! covers the JSON, so a damaged `_metadata` is refused rather than half-read. State handles
//! inside are relative to the checkpoint's own directory, which makes a checkpoint (and a
//! savepoint) relocatable: copy the directory and it restores from anywhere.
//!
//! In a job's checkpoint folder `chk-<n>/_metadata` may instead hold a [`IdClaim`] (header
//! `WEIR-CLAIM 1 crc32=<hex>`): id `n` was taken by a JobManager for something that is not a
//! checkpoint to restore (an attempt start, a failed checkpoint, a savepoint stored
//! elsewhere). Every id gets exactly one of the two, written create-only; that is what fences
//! a JobManager that another one replaced (see `coordinator.rs`). Decoding a claim as a
//! checkpoint is an error, so nothing ever restores empty state from one by mistake.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{KeyGroupRange, OperatorStateSnapshot};

const HEADER_PREFIX: &str = "WEIR-CHECKPOINT 1 crc32=";
const CLAIM_HEADER_PREFIX: &str = "WEIR-CLAIM 1 crc32=";

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
    /// The JobManager that completed it, as in claims (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_manager: Option<String>,
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
    /// Keyed state as one snapshot object (savepoints, and checkpoints when incremental
    /// checkpoints are off): relocatable, readable at any parallelism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyedStateHandle>,
    /// Keyed state as RocksDB's own files, sharing unchanged files with earlier checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed_incremental: Option<IncrementalKeyedStateHandle>,
    /// By state name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operator_state: BTreeMap<String, OperatorStateSnapshot>,
    /// The keyed states stored with a TTL timestamp (`state/ttl.rs`); a restore refuses to
    /// read them as plain, or plain ones as TTL'd. Absent when there are none, so the
    /// metadata of jobs without TTL is unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ttl_states: Vec<String>,
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

/// The files of one RocksDB checkpoint of a keyed subtask (Flink's incremental, native format).
///
/// SST files never change once written, so each is stored once under the job's checkpoint
/// folder (`shared/<backendId>/<file>`) and referenced by every checkpoint that still contains
/// it; the job's retention deletes a shared file only when no retained checkpoint refers to
/// it. The few files RocksDB rewrites (MANIFEST, CURRENT, OPTIONS) are this checkpoint's own.
/// Such a checkpoint is not relocatable on its own (savepoints are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncrementalKeyedStateHandle {
    pub key_groups: KeyGroupRange,
    /// The RocksDB instance that wrote the files (one per subtask and attempt).
    pub backend_id: String,
    /// SST files; objects relative to the job's checkpoint folder (the parent of `chk-<n>`).
    pub shared: Vec<StateFile>,
    /// Objects relative to the checkpoint directory.
    pub private: Vec<StateFile>,
    /// Bytes this checkpoint stored (new SST files and the private files); the rest were
    /// stored by earlier checkpoints.
    pub uploaded_bytes: u64,
}

/// One file of a RocksDB checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    /// File name inside the RocksDB directory.
    pub name: String,
    pub object: String,
    pub size: u64,
    /// Of the whole file, checked on restore before RocksDB opens it.
    pub crc32: u32,
}

impl IncrementalKeyedStateHandle {
    pub fn full_size(&self) -> u64 {
        self.shared
            .iter()
            .chain(&self.private)
            .map(|f| f.size)
            .sum()
    }
}

/// Checkpoint id `checkpoint_id` was taken by a JobManager for something other than a
/// checkpoint to restore from. Written create-only to `chk-<n>/_metadata` like a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdClaim {
    pub job_id: String,
    pub checkpoint_id: u64,
    /// Which JobManager wrote it (host name and start time), for logs and post-mortems.
    pub job_manager: String,
    pub reason: ClaimReason,
    pub timestamp_ms: u64,
    /// The job's state as of this id: the checkpoint or savepoint directory the writer would
    /// restore from at this point (`None`: empty state). Restoring from the claim's directory
    /// restores from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClaimReason {
    /// The first id a JobManager wrote: it took the job over from whoever wrote the id before.
    /// Retention keeps these for good (see `CheckpointCoordinator::apply_retention`).
    Takeover,
    /// A later attempt of the same JobManager (a restart after a failure).
    Restart,
    /// A checkpoint with this id was triggered and then failed.
    Failed { reason: String },
    /// A savepoint with this id; its state and `_metadata` are in `location`.
    Savepoint { location: String },
}

impl std::fmt::Display for ClaimReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimReason::Takeover => f.write_str("takeover"),
            ClaimReason::Restart => f.write_str("restart"),
            ClaimReason::Failed { .. } => f.write_str("failed checkpoint"),
            ClaimReason::Savepoint { .. } => f.write_str("savepoint"),
        }
    }
}

/// What a `chk-<n>/_metadata` object holds.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataEntry {
    Checkpoint(Box<CheckpointMetadata>),
    Claim(IdClaim),
}

impl MetadataEntry {
    /// `object` names the `_metadata` object in errors.
    pub fn decode(data: &[u8], object: &str) -> Result<MetadataEntry> {
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
        let (is_claim, expected) = [(false, HEADER_PREFIX), (true, CLAIM_HEADER_PREFIX)]
            .into_iter()
            .find_map(|(is_claim, prefix)| {
                let hex = header.strip_prefix(prefix)?;
                Some((is_claim, u32::from_str_radix(hex, 16).ok()?))
            })
            .ok_or_else(|| corrupt(format!("unrecognised header {header:?}")))?;
        let json = &data[newline + 1..];
        let actual = crc32fast::hash(json);
        if actual != expected {
            return Err(corrupt(format!(
                "checksum mismatch: crc32 {actual:08x}, header says {expected:08x}"
            )));
        }
        let invalid = |e: serde_json::Error| corrupt(format!("invalid JSON: {e}"));
        Ok(if is_claim {
            MetadataEntry::Claim(serde_json::from_slice(json).map_err(invalid)?)
        } else {
            MetadataEntry::Checkpoint(Box::new(serde_json::from_slice(json).map_err(invalid)?))
        })
    }
}

fn encode_with_header(prefix: &str, json: Vec<u8>) -> Vec<u8> {
    let mut out = format!("{prefix}{:08x}\n", crc32fast::hash(&json)).into_bytes();
    out.extend_from_slice(&json);
    out
}

impl IdClaim {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(|e| Error::codec("checkpoint id claim", e))?;
        Ok(encode_with_header(CLAIM_HEADER_PREFIX, json))
    }
}

impl CheckpointMetadata {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self).map_err(|e| Error::codec("checkpoint metadata", e))?;
        Ok(encode_with_header(HEADER_PREFIX, json))
    }

    /// `object` names the `_metadata` object in errors. A claim is refused: it holds no state.
    pub fn decode(data: &[u8], object: &str) -> Result<CheckpointMetadata> {
        match MetadataEntry::decode(data, object)? {
            MetadataEntry::Checkpoint(metadata) => Ok(*metadata),
            MetadataEntry::Claim(claim) => Err(Error::CorruptCheckpoint {
                object: object.to_string(),
                reason: format!(
                    "not a checkpoint: checkpoint id {} was claimed ({}) by JobManager {}",
                    claim.checkpoint_id, claim.reason, claim.job_manager
                ),
            }),
        }
    }

    /// Total bytes of the state objects this checkpoint restores from (metadata excluded),
    /// including shared files stored by earlier checkpoints.
    pub fn state_size(&self) -> u64 {
        self.subtasks()
            .map(|s| {
                s.keyed.as_ref().map_or(0, |k| k.size)
                    + s.keyed_incremental
                        .as_ref()
                        .map_or(0, IncrementalKeyedStateHandle::full_size)
            })
            .sum()
    }

    /// Bytes this checkpoint stored itself (Flink's "checkpointed data size"): the state size
    /// minus the shared files earlier checkpoints had already stored.
    pub fn checkpointed_size(&self) -> u64 {
        self.subtasks()
            .map(|s| {
                s.keyed.as_ref().map_or(0, |k| k.size)
                    + s.keyed_incremental.as_ref().map_or(0, |k| k.uploaded_bytes)
            })
            .sum()
    }

    /// Shared objects (relative to the job's checkpoint folder) this checkpoint refers to.
    pub fn shared_objects(&self) -> impl Iterator<Item = &str> {
        self.subtasks()
            .filter_map(|s| s.keyed_incremental.as_ref())
            .flat_map(|k| k.shared.iter().map(|f| f.object.as_str()))
    }

    fn subtasks(&self) -> impl Iterator<Item = &SubtaskState> {
        self.operators.values().flat_map(|op| op.subtasks.iter())
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
                subtasks: vec![
                    SubtaskState {
                        keyed: Some(KeyedStateHandle {
                            object: "counter-0.state".into(),
                            key_groups: KeyGroupRange { start: 0, end: 64 },
                            size: 10,
                            crc32: 7,
                            entries: 1,
                        }),
                        keyed_incremental: None,
                        operator_state: BTreeMap::new(),
                        ttl_states: vec!["count".into()],
                    },
                    SubtaskState {
                        keyed_incremental: Some(IncrementalKeyedStateHandle {
                            key_groups: KeyGroupRange {
                                start: 64,
                                end: 128,
                            },
                            backend_id: "counter-1-00ff".into(),
                            shared: vec![StateFile {
                                name: "000009.sst".into(),
                                object: "shared/counter-1-00ff/000009.sst".into(),
                                size: 2048,
                                crc32: 5,
                            }],
                            private: vec![StateFile {
                                name: "CURRENT".into(),
                                object: "counter-1/CURRENT".into(),
                                size: 16,
                                crc32: 9,
                            }],
                            uploaded_bytes: 16,
                        }),
                        ..Default::default()
                    },
                ],
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
            job_manager: Some("jm-a".into()),
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
    fn claims_round_trip_and_are_never_read_as_checkpoints() {
        let claim = IdClaim {
            job_id: "job".into(),
            checkpoint_id: 7,
            job_manager: "jm-a".into(),
            reason: ClaimReason::Failed {
                reason: "timed out".into(),
            },
            timestamp_ms: 1,
            restore_from: Some("s3://b/chk/job/chk-5".into()),
        };
        let bytes = claim.encode().expect("encode");
        assert_eq!(
            MetadataEntry::decode(&bytes, "chk-7/_metadata").expect("decode"),
            MetadataEntry::Claim(claim)
        );
        let err = CheckpointMetadata::decode(&bytes, "chk-7/_metadata").expect_err("a claim");
        assert!(err.to_string().contains("not a checkpoint"), "{err}");
        let checkpoint = sample().encode().expect("encode");
        assert!(matches!(
            MetadataEntry::decode(&checkpoint, "chk-3/_metadata"),
            Ok(MetadataEntry::Checkpoint(_))
        ));
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
