//! The running job as the outside world sees and steers it: state, checkpoint history and
//! savepoint triggers, shared between the driver loop and the REST API.
//!
//! The driver owns the truth and publishes it here; requests go the other way as
//! `JobCommand`s, so the REST server never blocks the task runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::checkpoint::coordinator::{CheckpointCounts, CheckpointInfo, OperationStatus, now_ms};
use crate::spec::{CheckpointConfig, JobDocument, SavepointTargetError};
use crossbeam_channel::{Receiver, Sender};

pub use crate::spec::rest::{CheckpointStats, JobOverview, JobState, SavepointStatus};

#[derive(Debug, Clone)]
pub enum JobCommand {
    Savepoint {
        trigger_id: String,
        target: String,
        stop: bool,
        /// When the REST API accepted it: the savepoint timeout counts from here, so a
        /// trigger that waited (for a checkpoint in flight, for a restart) still ends in time.
        accepted: Instant,
    },
    /// Take a checkpoint now (Flink's `POST /jobs/:id/checkpoints`); ignored while one is in
    /// flight or when the job has no checkpointing configured.
    Checkpoint,
    Cancel,
}

#[derive(Debug)]
struct SavepointRecord {
    target: String,
    status: SavepointStatus,
}

#[derive(Debug)]
struct JobView {
    overview: JobOverview,
    checkpoints: CheckpointStats,
    savepoints: HashMap<String, SavepointRecord>,
    /// Set once the driver is done: nothing would ever act on a new trigger.
    savepoints_closed: Option<String>,
}

/// Cheap to clone; one per job.
#[derive(Clone, Debug)]
pub struct JobHandle {
    view: Arc<Mutex<JobView>>,
    commands: Sender<JobCommand>,
    /// The job's checkpointing settings: where savepoints may be written.
    checkpointing: Option<Arc<CheckpointConfig>>,
}

impl JobHandle {
    pub fn new(doc: &JobDocument) -> (JobHandle, Receiver<JobCommand>) {
        let (commands, receiver) = crossbeam_channel::unbounded();
        let view = JobView {
            overview: JobOverview {
                job_id: doc.job_id().to_string(),
                name: doc.job.name.clone(),
                state: JobState::Created,
                parallelism: doc.parallelism,
                start_time: now_ms() as i64,
                restarts: 0,
                last_failure: None,
            },
            checkpoints: CheckpointStats::default(),
            savepoints: HashMap::new(),
            savepoints_closed: None,
        };
        (
            JobHandle {
                view: Arc::new(Mutex::new(view)),
                commands,
                checkpointing: doc.checkpointing.clone().map(Arc::new),
            },
            receiver,
        )
    }

    fn lock(&self) -> MutexGuard<'_, JobView> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn job_id(&self) -> String {
        self.lock().overview.job_id.clone()
    }

    pub fn overview(&self) -> JobOverview {
        self.lock().overview.clone()
    }

    pub fn checkpoints(&self) -> CheckpointStats {
        self.lock().checkpoints.clone()
    }

    pub fn savepoint(&self, trigger_id: &str) -> Option<SavepointStatus> {
        self.lock()
            .savepoints
            .get(trigger_id)
            .map(|r| r.status.clone())
    }

    /// Whether the trigger is still `IN_PROGRESS`: the driver acts only on those (a trigger
    /// that already failed, e.g. while the job restarted, is never taken after all).
    pub fn savepoint_in_progress(&self, trigger_id: &str) -> bool {
        self.lock()
            .savepoints
            .get(trigger_id)
            .is_some_and(|r| r.status.status == OperationStatus::InProgress)
    }

    /// Whether a caller may have a savepoint written into `target`
    /// ([`CheckpointConfig::check_savepoint_target`]); the error names the broken rule.
    /// `None` when the job has no checkpointing configured (it takes no savepoints at all).
    pub fn check_savepoint_target(&self, target: &str) -> Option<Result<(), SavepointTargetError>> {
        self.checkpointing
            .as_ref()
            .map(|config| config.check_savepoint_target(target))
    }

    /// Asks for a savepoint into `target`. A repeated request for the same target that is in
    /// progress or done returns the same trigger id, so a caller that crashed can ask again;
    /// after a `FAILED` one it starts a new trigger.
    pub fn request_savepoint(&self, target: &str, stop: bool) -> Result<String, String> {
        let mut view = self.lock();
        if matches!(
            view.overview.state,
            JobState::Finished | JobState::Failed | JobState::Canceled
        ) {
            return Err(format!("job is {:?}", view.overview.state));
        }
        if let Some(reason) = &view.savepoints_closed {
            return Err(reason.clone());
        }
        if let Some((id, _)) = view
            .savepoints
            .iter()
            .find(|(_, r)| r.target == target && r.status.status != OperationStatus::Failed)
        {
            return Ok(id.clone());
        }
        let trigger_id = format!("{:016x}", rand::random::<u64>());
        view.savepoints.insert(
            trigger_id.clone(),
            SavepointRecord {
                target: target.to_string(),
                status: SavepointStatus {
                    status: OperationStatus::InProgress,
                    location: None,
                    failure: None,
                },
            },
        );
        drop(view);
        self.commands
            .send(JobCommand::Savepoint {
                trigger_id: trigger_id.clone(),
                target: target.to_string(),
                stop,
                accepted: Instant::now(),
            })
            .map_err(|_| "the job is no longer running".to_string())?;
        Ok(trigger_id)
    }

    /// Asks for a checkpoint now; watch [`JobHandle::checkpoints`] for its completion.
    pub fn trigger_checkpoint(&self) -> Result<(), String> {
        self.commands
            .send(JobCommand::Checkpoint)
            .map_err(|_| "the job is no longer running".to_string())
    }

    pub fn cancel(&self) -> Result<(), String> {
        self.commands
            .send(JobCommand::Cancel)
            .map_err(|_| "the job is no longer running".to_string())
    }

    // --- updates from the driver ---

    pub fn set_state(&self, state: JobState) {
        self.lock().overview.state = state;
    }

    pub fn record_failure(&self, restarts: u32, failure: &str) {
        let mut view = self.lock();
        view.overview.restarts = restarts;
        view.overview.last_failure = Some(failure.to_string());
    }

    pub fn publish_checkpoints(&self, counts: CheckpointCounts, history: Vec<CheckpointInfo>) {
        let mut view = self.lock();
        let latest = history
            .iter()
            .find(|c| c.status == OperationStatus::Completed && !c.savepoint)
            .cloned()
            .or_else(|| view.checkpoints.latest.clone());
        view.checkpoints = CheckpointStats {
            counts,
            latest,
            history,
        };
    }

    /// Ends a trigger. The one place a trigger leaves `IN_PROGRESS` (counted in
    /// `weir_savepoints_{completed,failed}_total`, a failure logged as a warning); a trigger
    /// that already ended keeps its outcome.
    pub fn savepoint_finished(&self, trigger_id: &str, result: Result<String, String>) {
        let mut view = self.lock();
        let Some(record) = view
            .savepoints
            .get_mut(trigger_id)
            .filter(|r| r.status.status == OperationStatus::InProgress)
        else {
            return;
        };
        let metrics = crate::metrics::global();
        record.status = match result {
            Ok(location) => {
                metrics.savepoints_completed.inc();
                SavepointStatus {
                    status: OperationStatus::Completed,
                    location: Some(location),
                    failure: None,
                }
            }
            Err(failure) => {
                metrics.savepoints_failed.inc();
                tracing::warn!(trigger_id, target = %record.target, reason = %failure, "savepoint failed; the job keeps running");
                SavepointStatus {
                    status: OperationStatus::Failed,
                    location: None,
                    failure: Some(failure),
                }
            }
        };
    }

    /// The driver is done (the job ended, or this JobManager stops): every trigger still in
    /// progress fails with `reason`, and new ones are refused with it.
    pub fn close_savepoints(&self, reason: &str) {
        let open: Vec<String> = {
            let mut view = self.lock();
            view.savepoints_closed = Some(reason.to_string());
            view.savepoints
                .iter()
                .filter(|(_, r)| r.status.status == OperationStatus::InProgress)
                .map(|(id, _)| id.clone())
                .collect()
        };
        for trigger_id in open {
            self.savepoint_finished(&trigger_id, Err(reason.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> (JobHandle, Receiver<JobCommand>) {
        let doc = JobDocument::from_yaml("job: {name: x}", "test").expect("valid");
        JobHandle::new(&doc)
    }

    #[test]
    fn repeated_savepoint_request_for_a_target_returns_the_same_trigger() {
        let (job, commands) = handle();
        let first = job
            .request_savepoint("file:///sp/1", false)
            .expect("accepted");
        let again = job
            .request_savepoint("file:///sp/1", false)
            .expect("accepted");
        assert_eq!(first, again);
        assert_eq!(
            commands.try_iter().count(),
            1,
            "one savepoint is taken, not two"
        );
        job.savepoint_finished(&first, Err("disk full".into()));
        let retry = job
            .request_savepoint("file:///sp/1", false)
            .expect("accepted");
        assert_ne!(retry, first, "a failed savepoint may be retried");
    }

    #[test]
    fn a_trigger_ends_once_and_a_closed_job_fails_the_open_ones() {
        let (job, _commands) = handle();
        let done = job
            .request_savepoint("file:///sp/1", false)
            .expect("accepted");
        let open = job
            .request_savepoint("file:///sp/2", false)
            .expect("accepted");
        job.savepoint_finished(&done, Ok("file:///sp/1".into()));
        job.savepoint_finished(&done, Err("late".into()));
        assert_eq!(
            job.savepoint(&done).map(|s| s.status),
            Some(OperationStatus::Completed),
            "an ended trigger keeps its outcome"
        );
        job.close_savepoints("the job ended");
        let failed = job.savepoint(&open).expect("known trigger");
        assert_eq!(failed.status, OperationStatus::Failed);
        assert_eq!(failed.failure.as_deref(), Some("the job ended"));
        assert!(!job.savepoint_in_progress(&open));
        assert!(job.request_savepoint("file:///sp/3", false).is_err());
    }

    #[test]
    fn finished_job_refuses_savepoints() {
        let (job, _commands) = handle();
        job.set_state(JobState::Finished);
        assert!(job.request_savepoint("file:///sp/1", true).is_err());
    }
}
