//! The job driver: the coordinator side of a running job, the same in local mode and on the
//! JobManager. It picks the restore point, deploys each attempt through an `Executor`
//! (threads in this process, or TaskManagers over the network), triggers checkpoints,
//! completes them, tells sinks to commit, detects failures, and restarts every task from the
//! latest completed checkpoint as the restart strategy allows.

mod attempt;
mod progress;
mod restart;
mod restore;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use self::attempt::{Attempt, AttemptEnd};
use self::restart::{RestartTracker, wait_out_restart_delay};
use self::restore::{check_compatible, initial_restore_point, open_state, take_over};
use super::graph::JobGraph;
use super::job::{JobCommand, JobHandle, JobState};
use super::shutdown;
use super::{ControlMessage, TaskEvent, TaskId};
use crate::checkpoint::{CheckpointCoordinator, CompletedCheckpoint, SharedRestore};
use crate::error::{Error, Result};
use crate::spec::JobDocument;
use crate::storage::ObjectStore;

/// What an executor needs to start one attempt.
pub struct AttemptPlan<'a> {
    pub doc: &'a Arc<JobDocument>,
    pub graph: &'a JobGraph,
    pub rt: &'a tokio::runtime::Handle,
    pub job: &'a JobHandle,
    /// Rooted at `<storage>/<jobId>`; `None` when checkpointing is off.
    pub job_store: Option<ObjectStore>,
    pub restore: SharedRestore,
    /// Fencing token: increases with every attempt, also across JobManager restarts.
    pub epoch: u64,
    /// Distinguishes attempts in file names; starts with the claimed checkpoint id.
    pub attempt_id: String,
    /// The checkpoint id this attempt claimed (`None` without checkpointing): every id above
    /// it may be a newer JobManager's, so cleanup leaves anything of those alone.
    pub claimed: Option<u64>,
}

/// The driver's handle on one running task.
pub struct TaskHandle {
    pub id: TaskId,
    /// The vertex's operator uid.
    pub name: String,
    pub is_source: bool,
    pub control: Box<dyn Fn(ControlMessage) + Send>,
}

/// The running tasks of one attempt.
pub struct Deployment {
    pub tasks: Vec<TaskHandle>,
    /// Cancels every task of the attempt and waits until they stopped (or cannot be reached).
    pub stop: Box<dyn FnMut() + Send>,
}

/// Runs an attempt's tasks somewhere: threads of this process (local mode) or TaskManagers.
pub trait Executor {
    /// Starts every task; their events arrive on `events`. `Ok(None)` when the user
    /// cancelled the job before the tasks could start (e.g. while waiting for slots).
    fn deploy(
        &mut self,
        plan: &AttemptPlan<'_>,
        events: Sender<TaskEvent>,
        commands: &Receiver<JobCommand>,
    ) -> Result<Option<Deployment>>;
}

#[derive(Debug, Clone)]
pub struct DriverOptions {
    pub progress_interval: Duration,
    /// JobManager mode: when the job's storage holds a completed checkpoint newer than the
    /// document's restore path, restore from that instead. A JobManager that restarts (its
    /// pod was killed) then continues from where the job was, not from the savepoint it was
    /// first deployed with. Local mode restores exactly what it is told.
    pub prefer_newer_checkpoint: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// All input was read and committed.
    Finished,
    /// Stopped with a savepoint at this location; restore from it to continue.
    StoppedWithSavepoint(String),
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub end: JobEnd,
    pub restarts: u32,
    pub last_checkpoint: Option<CompletedCheckpoint>,
    pub restored_from: Option<String>,
}

/// Runs `graph` to completion (bounded input), until it is stopped or cancelled through
/// `job`, or until it fails for good.
pub fn run_job(
    doc: Arc<JobDocument>,
    graph: &JobGraph,
    rt: &tokio::runtime::Handle,
    options: &DriverOptions,
    executor: &mut dyn Executor,
    job: &JobHandle,
    commands: &Receiver<JobCommand>,
) -> Result<JobOutcome> {
    let result = run_attempts(doc, graph, rt, options, executor, job, commands);
    // Nothing acts on a trigger from here on: every one still in progress ends now.
    job.close_savepoints(&match &result {
        Ok(outcome) => match &outcome.end {
            JobEnd::Finished => "the job finished before the savepoint was taken".to_string(),
            JobEnd::StoppedWithSavepoint(location) => {
                format!("the job stopped with savepoint {location}")
            }
            JobEnd::Cancelled => "the job was cancelled".to_string(),
        },
        Err(e @ (Error::Terminated { .. } | Error::Fenced { .. })) => {
            format!("this JobManager stopped before the savepoint completed: {e}")
        }
        Err(e) => format!("the job failed before the savepoint completed: {e}"),
    });
    // A JobManager that was stopped or replaced leaves the job's state alone: the job goes on
    // under the next JobManager, it did not fail.
    if matches!(result, Err(Error::Terminated { .. } | Error::Fenced { .. })) {
        return result;
    }
    job.set_state(match &result {
        Ok(outcome) if outcome.end == JobEnd::Cancelled => JobState::Canceled,
        Ok(_) => JobState::Finished,
        Err(_) => JobState::Failed,
    });
    if let Err(error) = &result {
        let restarts = job.overview().restarts;
        job.record_failure(restarts, &error.to_string());
    }
    result
}

/// A name for this JobManager in the claims it writes: the host (the pod name on
/// Kubernetes) and when it started.
fn job_manager_name(started_micros: u64) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "weir".into());
    format!("{host}@{started_micros}")
}

fn run_attempts(
    doc: Arc<JobDocument>,
    graph: &JobGraph,
    rt: &tokio::runtime::Handle,
    options: &DriverOptions,
    executor: &mut dyn Executor,
    job: &JobHandle,
    commands: &Receiver<JobCommand>,
) -> Result<JobOutcome> {
    let job_id = doc.job_id().to_string();
    let job_store = match &doc.checkpointing {
        Some(c) => {
            let location = crate::checkpoint::job_location(&c.storage, &job_id)?;
            Some(rt.block_on(ObjectStore::open(&location, &doc.s3))?)
        }
        None => None,
    };
    // A missing cached file fails the job before anything is deployed, naming the entry.
    rt.block_on(super::cache::check_available(&doc))?;
    let mut restore: SharedRestore = None;
    let mut restored_from = None;
    // One coordinator for the whole run: checkpoint ids and history continue across restarts.
    let mut coordinator: Option<CheckpointCoordinator> = None;
    let mut restarts = RestartTracker::new(doc.restart_strategy.clone());
    let mut last_checkpoint = None;
    // Epochs order attempts across JobManager restarts too: wall-clock microseconds at the
    // start of this driver, plus the attempt number.
    let first_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let job_manager = job_manager_name(first_epoch);
    let mut attempt_number = 0u64;
    loop {
        // Everything from here to the end of the attempt fails into the restart strategy:
        // storage being unreachable while restarting is a failure like any other.
        let started = (|| {
            shutdown::check()?;
            if coordinator.is_none()
                && let (Some(config), Some(store)) = (&doc.checkpointing, &job_store)
            {
                coordinator = Some(CheckpointCoordinator::new(
                    store.clone(),
                    config.clone(),
                    &job_id,
                    &job_manager,
                    doc.parallelism,
                    doc.max_parallelism,
                ));
            }
            match coordinator.as_mut() {
                // Without checkpoints every attempt starts where the first one did.
                None if attempt_number == 0 => {
                    restore = initial_restore_point(&doc, None, options, rt)?.map(Arc::new);
                    restored_from = restore.as_ref().map(|r| r.uri());
                }
                None => {}
                Some(coordinator) if coordinator.last_written().is_none() => {
                    restore = take_over(coordinator, &doc, options, rt)?;
                    restored_from = restore.as_ref().map(|r| r.uri());
                }
                Some(coordinator) => {
                    let _effect = shutdown::begin()?;
                    rt.block_on(coordinator.claim_restart()).inspect_err(|e| {
                        if matches!(e, Error::Fenced { .. }) {
                            tracing::warn!(
                                "fenced while restarting: another JobManager took the job over"
                            );
                        }
                    })?;
                    // Only ever the state as of the last id written: restoring anything older
                    // would replay output its successors already committed.
                    restore = match (coordinator.state_uri(), &job_store) {
                        (Some(uri), _) if restore.as_ref().is_some_and(|r| r.uri() == uri) => {
                            restore.clone()
                        }
                        (Some(uri), Some(store)) => {
                            Some(Arc::new(rt.block_on(open_state(store, uri))?))
                        }
                        _ => None,
                    };
                }
            }
            if let Some(coordinator) = coordinator.as_mut()
                && let Some(claimed) = coordinator.last_written()
            {
                // Housekeeping: a failure here costs disk space, never the job.
                match rt.block_on(coordinator.remove_orphaned_shared_files(claimed)) {
                    Ok(0) => {}
                    Ok(files) => tracing::info!(
                        files,
                        "removed shared state files no completed checkpoint refers to"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not remove orphaned shared state files")
                    }
                }
            }
            match &restore {
                Some(point) => {
                    check_compatible(point, &doc)?;
                    tracing::info!(checkpoint = %point.uri(), checkpoint_id = point.metadata.checkpoint_id, "restoring");
                }
                None => tracing::info!("starting with empty state"),
            }
            Ok::<_, Error>(())
        })();
        let claimed = coordinator.as_ref().and_then(|c| c.last_written());
        let plan = AttemptPlan {
            doc: &doc,
            graph,
            rt,
            job,
            job_store: job_store.clone(),
            restore: restore.clone(),
            epoch: first_epoch + attempt_number,
            attempt_id: crate::checkpoint::attempt_id(claimed.unwrap_or(0)),
            claimed,
        };
        attempt_number += 1;
        // Savepoint triggers of an attempt that fails: they end once the restart is decided.
        let mut orphaned_triggers = Vec::new();
        let result = match started
            .and_then(|()| Attempt::start(&plan, executor, &mut coordinator, commands))
        {
            Ok(None) => Ok(AttemptEnd::Cancelled),
            Err(error) => Err(error),
            Ok(Some(mut attempt)) => {
                job.set_state(JobState::Running);
                let result = attempt.drive(options.progress_interval, commands);
                coordinator = attempt.coordinator.take();
                if let Some(c) = coordinator.as_ref().and_then(|c| c.latest_completed()) {
                    last_checkpoint = Some(c.clone());
                }
                match result {
                    Ok(end) => {
                        attempt.shutdown();
                        Ok(end)
                    }
                    Err(error) => {
                        orphaned_triggers = attempt.take_savepoint_triggers();
                        Err(attempt.teardown(error))
                    }
                }
            }
        };
        let error = match result {
            Ok(end) => {
                return Ok(JobOutcome {
                    end: match end {
                        AttemptEnd::Finished => JobEnd::Finished,
                        AttemptEnd::Stopped(location) => JobEnd::StoppedWithSavepoint(location),
                        AttemptEnd::Cancelled => JobEnd::Cancelled,
                    },
                    restarts: restarts.restarts,
                    last_checkpoint,
                    restored_from,
                });
            }
            Err(error) => error,
        };
        if !error.is_recoverable() {
            return Err(error);
        }
        let Some(delay) = restarts.next_delay() else {
            return Err(Error::JobFailed {
                restarts: restarts.restarts,
                cause: error.to_string(),
            });
        };
        crate::metrics::global().restarts.inc();
        job.record_failure(restarts.restarts, &error.to_string());
        job.set_state(JobState::Restarting);
        tracing::warn!(error = %error, restart = restarts.restarts, ?delay, "job failed; restarting from the latest completed checkpoint");
        for trigger_id in orphaned_triggers {
            job.savepoint_finished(
                &trigger_id,
                Err(format!(
                    "the job restarted before the savepoint completed: {error}"
                )),
            );
        }
        if wait_out_restart_delay(delay, job, commands)? {
            return Ok(JobOutcome {
                end: JobEnd::Cancelled,
                restarts: restarts.restarts,
                last_checkpoint,
                restored_from,
            });
        }
    }
}
