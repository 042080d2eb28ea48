//! The checkpoint coordinator: triggers checkpoints, collects every task's acknowledgement,
//! writes `_metadata` last, and applies retention. The local executor drives it today and the
//! JobManager will drive the same type; it does no task I/O itself, only storage I/O.
//!
//! At most one checkpoint is in flight. A checkpoint that times out or is declined counts as
//! a failure; more than `tolerableFailures` in a row fail the job (it then restarts from the
//! latest completed checkpoint).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::metadata::{CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskState};
use super::{checkpoint_dir_name, list_checkpoints};
use crate::error::{Error, Result};
use crate::runtime::{Barrier, TaskId};
use crate::spec::CheckpointConfig;
use crate::storage::ObjectStore;

#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    pub checkpoint_id: u64,
    pub uri: String,
    pub state_size: u64,
    pub duration: Duration,
    pub timestamp_ms: u64,
}

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
        })
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
        if self.pending.is_some() {
            return None;
        }
        let barrier = Barrier {
            checkpoint_id: self.next_checkpoint_id,
            timestamp_ms: now_ms(),
        };
        self.next_checkpoint_id += 1;
        self.pending = Some(PendingCheckpoint {
            barrier,
            triggered_at: Instant::now(),
            acks: HashMap::new(),
        });
        tracing::debug!(
            checkpoint_id = barrier.checkpoint_id,
            "checkpoint triggered"
        );
        Some(barrier)
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
        let metadata = CheckpointMetadata {
            job_id: self.job_id.clone(),
            checkpoint_id,
            kind: SnapshotKind::Checkpoint,
            timestamp_ms: pending.barrier.timestamp_ms,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            operators,
        };
        let dir = checkpoint_dir_name(checkpoint_id);
        let checkpoint_store = self.job_store.child(&dir);
        checkpoint_store
            .put(super::metadata::METADATA_OBJECT, metadata.encode()?.into())
            .await?;
        let completed = CompletedCheckpoint {
            checkpoint_id,
            uri: checkpoint_store.location().uri(),
            state_size: metadata.state_size(),
            duration: pending.triggered_at.elapsed(),
            timestamp_ms: metadata.timestamp_ms,
        };
        self.pending = None;
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
    /// than the newest completed one.
    pub async fn apply_retention(&self) -> Result<()> {
        let all = list_checkpoints(&self.job_store).await?;
        let completed: Vec<u64> = all.iter().filter(|(_, c)| *c).map(|(id, _)| *id).collect();
        let keep_from = completed
            .len()
            .checked_sub(self.config.retained as usize)
            .map_or(0, |i| completed[i]);
        let newest = completed.last().copied().unwrap_or(0);
        for (id, complete) in all {
            let expired = if complete {
                id < keep_from
            } else {
                id < newest
            };
            if expired {
                tracing::debug!(checkpoint_id = id, "removing expired checkpoint");
                self.job_store
                    .delete_prefix(&format!("{}/", checkpoint_dir_name(id)))
                    .await?;
            }
        }
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
