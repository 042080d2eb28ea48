//! The running job as the outside world sees and steers it: state, checkpoint history and
//! savepoint triggers, shared between the driver loop and the REST API.
//!
//! The driver owns the truth and publishes it here; requests go the other way as
//! `JobCommand`s, so the REST server never blocks the task runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::checkpoint::coordinator::{CheckpointCounts, CheckpointInfo, OperationStatus, now_ms};
use crate::spec::JobDocument;
use crossbeam_channel::{Receiver, Sender};

pub use crate::spec::rest::{CheckpointStats, JobOverview, JobState, SavepointStatus};

#[derive(Debug, Clone)]
pub enum JobCommand {
    Savepoint {
        trigger_id: String,
        target: String,
        stop: bool,
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
}

/// Cheap to clone; one per job.
#[derive(Clone, Debug)]
pub struct JobHandle {
    view: Arc<Mutex<JobView>>,
    commands: Sender<JobCommand>,
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
        };
        (
            JobHandle {
                view: Arc::new(Mutex::new(view)),
                commands,
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

    /// Asks for a savepoint into `target`. A repeated request for the same target that is in
    /// progress or done returns the same trigger id, so a caller that crashed can ask again.
    pub fn request_savepoint(&self, target: &str, stop: bool) -> Result<String, String> {
        let mut view = self.lock();
        if matches!(
            view.overview.state,
            JobState::Finished | JobState::Failed | JobState::Canceled
        ) {
            return Err(format!("job is {:?}", view.overview.state));
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

    pub fn savepoint_finished(&self, trigger_id: &str, result: Result<String, String>) {
        let mut view = self.lock();
        if let Some(record) = view.savepoints.get_mut(trigger_id) {
            record.status = match result {
                Ok(location) => SavepointStatus {
                    status: OperationStatus::Completed,
                    location: Some(location),
                    failure: None,
                },
                Err(failure) => SavepointStatus {
                    status: OperationStatus::Failed,
                    location: None,
                    failure: Some(failure),
                },
            };
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
    fn finished_job_refuses_savepoints() {
        let (job, _commands) = handle();
        job.set_state(JobState::Finished);
        assert!(job.request_savepoint("file:///sp/1", true).is_err());
    }
}
