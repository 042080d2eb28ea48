//! Checkpoints in storage: layout, discovery, restore views, and the coordinator.
//!
//! Layout under the checkpoint storage: `<jobId>/chk-<n>/_metadata` plus, per keyed subtask,
//! either one snapshot object (`<operator>-<subtask>.state`: savepoints, and checkpoints when
//! incremental checkpoints are off) or RocksDB's files (`<operator>-<subtask>/MANIFEST-…`
//! etc., with SST files in `<jobId>/shared/`, see `incremental.rs`). `_metadata` is written
//! last: a `chk-<n>` directory without it is an aborted attempt and is never restored from.

pub mod coordinator;
pub mod incremental;
pub mod metadata;

use std::sync::Arc;

pub use coordinator::{CheckpointCoordinator, CompletedCheckpoint};
pub use metadata::{
    CheckpointMetadata, IncrementalKeyedStateHandle, KeyedStateHandle, SnapshotKind, SubtaskState,
};

use crate::error::{Error, Result};
use crate::state::{KeyGroupRange, Redistribution, operator::redistribute};
use crate::storage::{ObjectStore, StorageError};

pub fn checkpoint_dir_name(checkpoint_id: u64) -> String {
    format!("chk-{checkpoint_id}")
}

/// Ids of every `chk-<n>` directory under a job's storage, with whether it completed.
pub async fn list_checkpoints(job_store: &ObjectStore) -> Result<Vec<(u64, bool)>> {
    let mut found: std::collections::BTreeMap<u64, bool> = Default::default();
    for object in job_store.list("chk-").await? {
        let Some((dir, rest)) = object.key.split_once('/') else {
            continue;
        };
        let Some(id) = dir.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let complete = found.entry(id).or_insert(false);
        *complete |= rest == metadata::METADATA_OBJECT;
    }
    Ok(found.into_iter().collect())
}

/// A checkpoint or savepoint opened for restore: its metadata and the store of its directory.
#[derive(Debug, Clone)]
pub struct RestorePoint {
    pub metadata: CheckpointMetadata,
    pub store: ObjectStore,
}

impl RestorePoint {
    /// Reads and verifies `_metadata` in `checkpoint_store`. A missing or damaged `_metadata`
    /// is an error naming it.
    pub async fn open(checkpoint_store: ObjectStore) -> Result<RestorePoint> {
        let object = checkpoint_store.uri(metadata::METADATA_OBJECT);
        let data = match checkpoint_store.get(metadata::METADATA_OBJECT).await {
            Ok(data) => data,
            Err(StorageError::NotFound { .. }) => {
                return Err(Error::CorruptCheckpoint {
                    object,
                    reason: "missing: this is not a completed checkpoint or savepoint".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let metadata = CheckpointMetadata::decode(&data, &object)?;
        Ok(RestorePoint {
            metadata,
            store: checkpoint_store,
        })
    }

    /// The newest completed checkpoint under a job's storage, if any.
    pub async fn latest(job_store: &ObjectStore) -> Result<Option<RestorePoint>> {
        let latest = list_checkpoints(job_store)
            .await?
            .into_iter()
            .rev()
            .find(|(_, complete)| *complete);
        match latest {
            Some((id, _)) => Ok(Some(
                RestorePoint::open(job_store.child(&checkpoint_dir_name(id))).await?,
            )),
            None => Ok(None),
        }
    }

    pub fn uri(&self) -> String {
        self.store.location().uri()
    }

    /// Keyed-state handles of `operator` that hold any of `range`.
    pub fn keyed_handles(&self, operator: &str, range: KeyGroupRange) -> Vec<KeyedStateHandle> {
        self.overlapping(operator, range, |s| {
            s.keyed.as_ref().map(|h| (h, h.key_groups))
        })
    }

    /// Incremental keyed-state handles of `operator` that hold any of `range`.
    pub fn incremental_handles(
        &self,
        operator: &str,
        range: KeyGroupRange,
    ) -> Vec<IncrementalKeyedStateHandle> {
        self.overlapping(operator, range, |s| {
            s.keyed_incremental.as_ref().map(|h| (h, h.key_groups))
        })
    }

    /// The handles `pick` finds in `operator`'s subtasks whose key groups overlap `range`.
    fn overlapping<H: Clone>(
        &self,
        operator: &str,
        range: KeyGroupRange,
        pick: impl Fn(&SubtaskState) -> Option<(&H, KeyGroupRange)>,
    ) -> Vec<H> {
        let Some(op) = self.metadata.operators.get(operator) else {
            return Vec::new();
        };
        op.subtasks
            .iter()
            .filter_map(pick)
            .filter(|(_, groups)| groups.intersects(&range))
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Operator list state `name` of `operator` for new subtask `index` of `parallelism`.
    pub fn operator_state(
        &self,
        operator: &str,
        name: &str,
        redistribution: Redistribution,
        parallelism: u32,
        index: u32,
    ) -> Vec<serde_json::Value> {
        let old: Vec<_> = self
            .metadata
            .operators
            .get(operator)
            .map(|op| {
                op.subtasks
                    .iter()
                    .filter_map(|s| s.operator_state.get(name).cloned())
                    .collect()
            })
            .unwrap_or_default();
        redistribute(&old, redistribution, parallelism, index)
    }

    /// Downloads one keyed-state object and verifies it against the metadata.
    pub async fn fetch_keyed(&self, handle: &KeyedStateHandle) -> Result<bytes::Bytes> {
        let object = self.store.uri(&handle.object);
        let data = match self.store.get(&handle.object).await {
            Ok(data) => data,
            Err(StorageError::NotFound { .. }) => {
                return Err(Error::CorruptCheckpoint {
                    object,
                    reason: "state object is missing".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        crate::state::snapshot::verify_checksum(&data, handle.crc32, handle.size, &object)?;
        Ok(data)
    }
}

/// Restored state shared by all tasks of one attempt.
pub type SharedRestore = Option<Arc<RestorePoint>>;
