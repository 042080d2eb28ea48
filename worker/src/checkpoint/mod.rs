//! Checkpoints in storage: layout, discovery, restore views, and the coordinator.
//!
//! Layout under the checkpoint storage (named in `weir_spec::layout`, which the operator reads
//! too): `<jobId>/chk-<n>/_metadata` plus, per keyed subtask,
//! either one snapshot object (`<operator>-<subtask>.state`: savepoints, and checkpoints when
//! incremental checkpoints are off) or RocksDB's files (`<operator>-<subtask>/MANIFEST-…`
//! etc., with SST files in `<jobId>/shared/`, see `incremental.rs`). `_metadata` is written
//! last: a `chk-<n>` directory without it is an aborted attempt and is never restored from.
//! `_metadata` may also be a claim (`metadata::IdClaim`): the id was used for something that
//! is not a checkpoint, and the claim names the state the job had at that id. Every id is
//! written create-only, once, in order; see `coordinator.rs` for how that fences a
//! JobManager another one replaced.

mod barrier;
pub mod coordinator;
pub mod incremental;
pub mod metadata;

use std::sync::Arc;

pub use barrier::{Barrier, SavepointTarget};
pub use coordinator::{CheckpointCoordinator, CompletedCheckpoint};
pub use metadata::{
    CheckpointMetadata, ClaimReason, IdClaim, IncrementalKeyedStateHandle, KeyedStateHandle,
    MetadataEntry, SnapshotKind, SubtaskState,
};

use crate::error::{Error, Result};
use crate::spec::layout;
use crate::state::{KeyGroupRange, Redistribution, operator::redistribute};
use crate::storage::{Location, ObjectStore, StorageError};

/// A job's directory under checkpoint storage (`weir_spec::layout::job_dir`), joined as a path
/// for local storage.
pub fn job_location(storage: &str, job_id: &str) -> Result<Location> {
    Ok(Location::parse(storage)?.join(job_id))
}

/// Attempt ids start with the checkpoint id the attempt claimed: `<claim>-<random>`. Files an
/// attempt writes outside a checkpoint directory (shared SST files, sink parts) carry it, so
/// cleanup can tell files of attempts that are over from those of a newer JobManager.
pub fn attempt_id(claimed: u64) -> String {
    format!("{claimed:010}-{:08x}", rand::random::<u32>())
}

/// The claimed checkpoint id at the end of a name built as `<anything>-<attempt id>` (see
/// [`attempt_id`]); `None` for names from before attempt ids carried it.
pub fn claim_in_name(name: &str) -> Option<u64> {
    let mut parts = name.rsplitn(3, '-');
    let random = parts.next()?;
    let claim = parts.next()?;
    (random.len() == 8
        && random.bytes().all(|b| b.is_ascii_hexdigit())
        && claim.len() == 10
        && claim.bytes().all(|b| b.is_ascii_digit()))
    .then(|| claim.parse().ok())
    .flatten()
}

/// Reads `chk-<id>/_metadata` of a job: a checkpoint, a claim, or `None` when it is missing.
pub async fn read_entry(
    job_store: &ObjectStore,
    checkpoint_id: u64,
) -> Result<Option<MetadataEntry>> {
    let store = job_store.child(&layout::checkpoint_dir(checkpoint_id));
    match store.get(layout::METADATA_OBJECT).await {
        Ok(data) => Ok(Some(MetadataEntry::decode(
            &data,
            &store.uri(layout::METADATA_OBJECT),
        )?)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Ids of every `chk-<n>` directory under a job's storage, with whether it has `_metadata`
/// (a completed checkpoint or a claim). The operator reads the folder with the same function.
pub use weir_storage::checkpoints::list as list_checkpoints;

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
        let object = checkpoint_store.uri(layout::METADATA_OBJECT);
        let data = match checkpoint_store.get(layout::METADATA_OBJECT).await {
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

    /// Opens a checkpoint or savepoint directory, following a claim to the state it names
    /// (`None`: the job had no state yet at that id). For restore paths a user or the
    /// operator gives: "the latest `chk-<n>` with `_metadata`" may be a claim.
    pub async fn resolve(checkpoint_store: ObjectStore) -> Result<Option<RestorePoint>> {
        let object = checkpoint_store.uri(layout::METADATA_OBJECT);
        let data = match checkpoint_store.get(layout::METADATA_OBJECT).await {
            Ok(data) => data,
            Err(StorageError::NotFound { .. }) => {
                return Err(Error::CorruptCheckpoint {
                    object,
                    reason: "missing: this is not a completed checkpoint or savepoint".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        match MetadataEntry::decode(&data, &object)? {
            MetadataEntry::Checkpoint(metadata) => Ok(Some(RestorePoint {
                metadata: *metadata,
                store: checkpoint_store,
            })),
            MetadataEntry::Claim(claim) => Self::of_claim(&claim, &checkpoint_store).await,
        }
    }

    /// The state a claim names: its `restoreFrom` (a checkpoint or savepoint, never a claim).
    async fn of_claim(claim: &IdClaim, claim_store: &ObjectStore) -> Result<Option<RestorePoint>> {
        let Some(uri) = &claim.restore_from else {
            return Ok(None);
        };
        let store = claim_store
            .open_related(&crate::storage::Location::parse(uri)?)
            .await?;
        Ok(Some(RestorePoint::open(store).await?))
    }

    /// The job's state as of its newest `chk-<n>/_metadata`: that checkpoint, or the state the
    /// claim there names. `None` when the job has no checkpoint yet (or started empty).
    pub async fn latest(job_store: &ObjectStore) -> Result<Option<RestorePoint>> {
        match weir_storage::checkpoints::latest_completed(job_store).await? {
            Some(id) => RestorePoint::resolve(job_store.child(&layout::checkpoint_dir(id))).await,
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

    /// The keyed states of `operator` that a subtask holding any of `range` stored with a TTL.
    pub fn ttl_states(
        &self,
        operator: &str,
        range: KeyGroupRange,
    ) -> std::collections::BTreeSet<String> {
        let Some(op) = self.metadata.operators.get(operator) else {
            return Default::default();
        };
        op.subtasks
            .iter()
            .filter(|s| {
                let groups = s
                    .keyed
                    .as_ref()
                    .map(|h| h.key_groups)
                    .or(s.keyed_incremental.as_ref().map(|h| h.key_groups));
                groups.is_none_or(|g| g.intersects(&range))
            })
            .flat_map(|s| s.ttl_states.iter().cloned())
            .collect()
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
