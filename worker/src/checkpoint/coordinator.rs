//! The checkpoint coordinator: triggers checkpoints, collects every task's acknowledgement,
//! writes `_metadata` last, and applies retention. The local executor drives it today and the
//! JobManager will drive the same type; it does no task I/O itself, only storage I/O.
//!
//! At most one checkpoint is in flight. A checkpoint that times out or is declined counts as
//! a failure; more than `tolerableFailures` in a row fail the job (it then restarts from the
//! latest completed checkpoint).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::metadata::{CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskState};
use super::{checkpoint_dir_name, list_checkpoints};
use crate::error::{Error, Result};
use crate::runtime::{Barrier, SavepointTarget, TaskId};
use crate::spec::CheckpointConfig;
use crate::storage::ObjectStore;

/// Entries of checkpoint history kept for the REST API.
const HISTORY_LEN: usize = 32;

#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    pub kind: SnapshotKind,
    /// Stop-with-savepoint: the job ends once this completes.
    pub stops_job: bool,
    pub checkpoint_id: u64,
    pub uri: String,
    pub state_size: u64,
    /// Bytes stored by this checkpoint itself (see `CheckpointMetadata::checkpointed_size`).
    pub checkpointed_size: u64,
    pub duration: Duration,
    pub timestamp_ms: u64,
}

pub use crate::spec::rest::{CheckpointCounts, CheckpointInfo, OperationStatus};

struct PendingCheckpoint {
    barrier: Barrier,
    triggered_at: Instant,
    acks: HashMap<TaskId, Vec<(String, SubtaskState)>>,
}

pub struct CheckpointCoordinator {
    job_store: ObjectStore,
    config: CheckpointConfig,
    job_id: String,
    parallelism: u32,
    max_parallelism: u32,
    expected_tasks: usize,
    next_checkpoint_id: u64,
    pending: Option<PendingCheckpoint>,
    consecutive_failures: u32,
    latest: Option<CompletedCheckpoint>,
    history: VecDeque<CheckpointInfo>,
    counts: CheckpointCounts,
}

impl CheckpointCoordinator {
    /// `job_store` is rooted at `<storage>/<jobId>`. Ids continue after every `chk-<n>` already
    /// there, complete or not, so an aborted attempt's leftovers are never overwritten.
    pub async fn new(
        job_store: ObjectStore,
        config: CheckpointConfig,
        job_id: &str,
        parallelism: u32,
        max_parallelism: u32,
        expected_tasks: usize,
    ) -> Result<Self> {
        let next_checkpoint_id = list_checkpoints(&job_store)
            .await?
            .last()
            .map_or(1, |(id, _)| id + 1);
        Ok(CheckpointCoordinator {
            job_store,
            config,
            job_id: job_id.to_string(),
            parallelism,
            max_parallelism,
            expected_tasks,
            next_checkpoint_id,
            pending: None,
            consecutive_failures: 0,
            latest: None,
            history: VecDeque::new(),
            counts: CheckpointCounts::default(),
        })
    }

    /// A new attempt starts with `tasks` tasks: whatever was in flight belonged to the old one.
    pub fn start_attempt(&mut self, tasks: usize) {
        if self.pending.is_some() {
            // Restarts do not count against the checkpoint failure tolerance.
            let _ = self.fail_pending("the job restarted");
            self.consecutive_failures = 0;
        }
        self.expected_tasks = tasks;
    }

    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    pub fn pending_id(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.barrier.checkpoint_id)
    }

    pub fn latest_completed(&self) -> Option<&CompletedCheckpoint> {
        self.latest.as_ref()
    }

    /// Starts a checkpoint; the caller sends the barrier to every source. `None` while one
    /// is already in flight.
    pub fn trigger(&mut self) -> Option<Barrier> {
        self.start(None)
    }

    /// Starts a savepoint into `target` (its own directory). `None` while a checkpoint or
    /// savepoint is in flight: the caller retries when it completes.
    pub fn trigger_savepoint(&mut self, target: SavepointTarget) -> Option<Barrier> {
        self.start(Some(target))
    }

    fn start(&mut self, savepoint: Option<SavepointTarget>) -> Option<Barrier> {
        if self.pending.is_some() {
            return None;
        }
        let barrier = Barrier {
            checkpoint_id: self.next_checkpoint_id,
            timestamp_ms: now_ms(),
            savepoint,
        };
        self.next_checkpoint_id += 1;
        self.pending = Some(PendingCheckpoint {
            barrier: barrier.clone(),
            triggered_at: Instant::now(),
            acks: HashMap::new(),
        });
        self.counts.in_progress = 1;
        self.record(CheckpointInfo {
            id: barrier.checkpoint_id,
            status: OperationStatus::InProgress,
            savepoint: barrier.savepoint.is_some(),
            trigger_time: barrier.timestamp_ms as i64,
            complete_time: None,
            duration_ms: None,
            state_size: None,
            checkpointed_size: None,
            external_path: None,
            failure: None,
        });
        tracing::debug!(
            checkpoint_id = barrier.checkpoint_id,
            savepoint = barrier.savepoint.is_some(),
            "checkpoint triggered"
        );
        Some(barrier)
    }

    /// Adds or replaces the history entry of `info.id`.
    fn record(&mut self, info: CheckpointInfo) {
        if let Some(entry) = self.history.iter_mut().find(|e| e.id == info.id) {
            *entry = info;
            return;
        }
        self.history.push_front(info);
        self.history.truncate(HISTORY_LEN);
    }

    fn update_history(&mut self, id: u64, update: impl FnOnce(&mut CheckpointInfo)) {
        if let Some(entry) = self.history.iter_mut().find(|e| e.id == id) {
            update(entry);
        }
    }

    /// Newest first.
    pub fn history(&self) -> Vec<CheckpointInfo> {
        self.history.iter().cloned().collect()
    }

    pub fn counts(&self) -> CheckpointCounts {
        self.counts.clone()
    }

    /// The barrier of the checkpoint or savepoint in flight.
    pub fn pending_barrier(&self) -> Option<&Barrier> {
        self.pending.as_ref().map(|p| &p.barrier)
    }

    /// Records a task's acknowledgement. Returns true once every task has acknowledged: the
    /// caller then calls [`complete`](Self::complete). Stale acknowledgements are ignored.
    pub fn acknowledge(
        &mut self,
        checkpoint_id: u64,
        task: TaskId,
        states: Vec<(String, SubtaskState)>,
    ) -> bool {
        let Some(pending) = self.pending.as_mut() else {
            return false;
        };
        if pending.barrier.checkpoint_id != checkpoint_id {
            tracing::debug!(
                checkpoint_id,
                "ignoring acknowledgement of an aborted checkpoint"
            );
            return false;
        }
        pending.acks.insert(task, states);
        pending.acks.len() == self.expected_tasks
    }

    /// The pending checkpoint if it has run past its timeout.
    pub fn timed_out(&self) -> Option<u64> {
        self.pending
            .as_ref()
            .filter(|p| p.triggered_at.elapsed() > self.config.timeout)
            .map(|p| p.barrier.checkpoint_id)
    }

    /// Abandons the pending checkpoint. Errors once failures exceed the tolerance.
    pub fn fail_pending(&mut self, reason: &str) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let checkpoint_id = pending.barrier.checkpoint_id;
        self.consecutive_failures += 1;
        tracing::warn!(
            checkpoint_id,
            failures = self.consecutive_failures,
            reason,
            "checkpoint failed"
        );
        crate::metrics::global().checkpoints_failed.inc();
        if self.consecutive_failures > self.config.tolerable_failures {
            return Err(Error::CheckpointFailed {
                checkpoint_id,
                reason: format!(
                    "{reason} ({} failures in a row exceed tolerableFailures={})",
                    self.consecutive_failures, self.config.tolerable_failures
                ),
            });
        }
        Ok(())
    }

    /// Writes `_metadata` for the fully acknowledged checkpoint, making it exist. On error
    /// the checkpoint counts as failed and the caller decides via [`fail_pending`].
    pub async fn complete(&mut self) -> Result<CompletedCheckpoint> {
        let Some(pending) = self.pending.as_ref() else {
            return Err(Error::CheckpointFailed {
                checkpoint_id: 0,
                reason: "no checkpoint pending".into(),
            });
        };
        let checkpoint_id = pending.barrier.checkpoint_id;
        let mut operators: BTreeMap<String, OperatorSnapshot> = BTreeMap::new();
        for (task, states) in &pending.acks {
            for (operator, state) in states {
                let op = operators
                    .entry(operator.clone())
                    .or_insert_with(|| OperatorSnapshot {
                        subtasks: vec![SubtaskState::default(); self.parallelism as usize],
                    });
                let slot = op.subtasks.get_mut(task.subtask as usize).ok_or_else(|| {
                    Error::CheckpointFailed {
                        checkpoint_id,
                        reason: format!("acknowledgement from unknown subtask {task}"),
                    }
                })?;
                *slot = state.clone();
            }
        }
        let kind = if pending.barrier.savepoint.is_some() {
            SnapshotKind::Savepoint
        } else {
            SnapshotKind::Checkpoint
        };
        let metadata = CheckpointMetadata {
            job_id: self.job_id.clone(),
            checkpoint_id,
            kind,
            timestamp_ms: pending.barrier.timestamp_ms,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            operators,
        };
        let checkpoint_store = match &pending.barrier.savepoint {
            Some(savepoint) => savepoint.store.clone(),
            None => self.job_store.child(&checkpoint_dir_name(checkpoint_id)),
        };
        checkpoint_store
            .put(super::metadata::METADATA_OBJECT, metadata.encode()?.into())
            .await?;
        let completed = CompletedCheckpoint {
            kind,
            stops_job: pending.barrier.stops_job(),
            checkpoint_id,
            uri: checkpoint_store.location().uri(),
            state_size: metadata.state_size(),
            checkpointed_size: metadata.checkpointed_size(),
            duration: pending.triggered_at.elapsed(),
            timestamp_ms: metadata.timestamp_ms,
        };
        self.pending = None;
        self.counts.in_progress = 0;
        self.counts.completed += 1;
        self.update_history(checkpoint_id, |e| {
            e.status = OperationStatus::Completed;
            e.complete_time = Some(now_ms() as i64);
            e.duration_ms = Some(completed.duration.as_millis() as u64);
            e.state_size = Some(completed.state_size);
            e.checkpointed_size = Some(completed.checkpointed_size);
            e.external_path = Some(completed.uri.clone());
        });
        if kind == SnapshotKind::Savepoint {
            // Savepoints are not failover targets: they are the user's, and only a
            // stop-with-savepoint commits sinks (the job ends right there).
            return Ok(completed);
        }
        self.consecutive_failures = 0;
        self.latest = Some(completed.clone());
        let metrics = crate::metrics::global();
        metrics.checkpoints_completed.inc();
        metrics
            .last_checkpoint_duration_ms
            .set(completed.duration.as_millis() as i64);
        metrics
            .last_checkpoint_size_bytes
            .set(completed.state_size as i64);
        metrics.last_checkpoint_id.set(checkpoint_id as i64);
        Ok(completed)
    }

    /// Deletes completed checkpoints beyond the newest `retained`, and aborted attempts older
    /// than the newest completed one. A shared file (incremental checkpoints) goes with the
    /// last retained checkpoint that refers to it: it is deleted when a checkpoint that
    /// referred to it expires and no retained one does.
    pub async fn apply_retention(&self) -> Result<()> {
        let all = list_checkpoints(&self.job_store).await?;
        let completed: Vec<u64> = all.iter().filter(|(_, c)| *c).map(|(id, _)| *id).collect();
        let keep_from = completed
            .len()
            .checked_sub(self.config.retained as usize)
            .map_or(0, |i| completed[i]);
        let newest = completed.last().copied().unwrap_or(0);
        let expired: Vec<(u64, bool)> = all
            .into_iter()
            .filter(|&(id, complete)| {
                if complete {
                    id < keep_from
                } else {
                    id < newest
                }
            })
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        // Every retained checkpoint's references, read first: if one cannot be read, nothing
        // is deleted this time (a shared file still in use must never go).
        let mut referenced = std::collections::BTreeSet::new();
        for &id in completed.iter().filter(|&&id| id >= keep_from) {
            let metadata = self.read_metadata(id).await?;
            referenced.extend(metadata.shared_objects().map(str::to_string));
        }
        for (id, complete) in expired {
            tracing::debug!(checkpoint_id = id, "removing expired checkpoint");
            let dir = checkpoint_dir_name(id);
            if complete {
                let unreferenced: Vec<String> = match self.read_metadata(id).await {
                    Ok(metadata) => metadata
                        .shared_objects()
                        .filter(|object| !referenced.contains(*object))
                        .map(str::to_string)
                        .collect(),
                    Err(e) => {
                        tracing::warn!(checkpoint_id = id, error = %e, "cannot read an expired checkpoint's metadata; its shared files stay");
                        Vec::new()
                    }
                };
                // `_metadata` first: from then on the checkpoint no longer exists, so nothing
                // can restore from it while its files go.
                self.job_store
                    .delete(&format!("{dir}/{}", super::metadata::METADATA_OBJECT))
                    .await?;
                for object in unreferenced {
                    self.job_store.delete(&object).await?;
                }
            }
            self.job_store.delete_prefix(&format!("{dir}/")).await?;
        }
        Ok(())
    }

    /// Deletes the files under `shared/` that no completed checkpoint refers to: stored by
    /// checkpoints that then failed, or by attempts that ended before their checkpoint
    /// completed. Only between attempts: a running task's new files are not referred to yet.
    /// Returns how many it deleted.
    pub async fn remove_orphaned_shared_files(&self) -> Result<usize> {
        let shared = self
            .job_store
            .list(&format!("{}/", super::incremental::SHARED_FOLDER))
            .await?;
        if shared.is_empty() {
            return Ok(0);
        }
        let mut referenced = std::collections::BTreeSet::new();
        for (id, complete) in list_checkpoints(&self.job_store).await? {
            if complete {
                let metadata = self.read_metadata(id).await?;
                referenced.extend(metadata.shared_objects().map(str::to_string));
            }
        }
        let mut removed = 0;
        for object in shared {
            if !referenced.contains(&object.key) {
                self.job_store.delete(&object.key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn read_metadata(&self, checkpoint_id: u64) -> Result<CheckpointMetadata> {
        let store = self.job_store.child(&checkpoint_dir_name(checkpoint_id));
        Ok(super::RestorePoint::open(store).await?.metadata)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
