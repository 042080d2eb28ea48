//! The job driver: the coordinator side of a running job, the same in local mode and on the
//! JobManager. It picks the restore point, deploys each attempt through an `Executor`
//! (threads in this process, or TaskManagers over the network), triggers checkpoints,
//! completes them, tells sinks to commit, detects failures, and restarts every task from the
//! latest completed checkpoint as the restart strategy allows.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::graph::{JobGraph, SINK_PENDING_STATE};
use super::job::{JobCommand, JobHandle, JobState};
use super::shutdown;
use super::{ControlMessage, SavepointTarget, TaskEvent, TaskId};
use crate::checkpoint::{
    CheckpointCoordinator, CompletedCheckpoint, RestorePoint, SharedRestore, SnapshotKind,
};
use crate::error::{Error, Result};
use crate::fault_points::{self, FaultPoint};
use crate::spec::{JobDocument, RestartStrategy, RestoreSource};
use crate::state::Redistribution;
use crate::storage::{Location, ObjectStore};

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

/// How the driver loop of one attempt ended.
enum AttemptEnd {
    Finished,
    Stopped(String),
    Cancelled,
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

/// Tries at most this many surveys and takeover claims in a row before the attempt fails
/// (another JobManager kept writing new ids in between).
const TAKEOVER_TRIES: u32 = 20;

/// Takes the job over (see `checkpoint::coordinator`): claims the id after the newest one in
/// storage and returns the state to restore, decided from the state as of that newest id.
fn take_over(
    coordinator: &mut CheckpointCoordinator,
    doc: &JobDocument,
    options: &DriverOptions,
    rt: &tokio::runtime::Handle,
) -> Result<SharedRestore> {
    for _ in 0..TAKEOVER_TRIES {
        let survey = rt.block_on(coordinator.survey())?;
        let restore = initial_restore_point(doc, survey.latest, options, rt)?;
        let state = restore.as_ref().map(RestorePoint::uri);
        let _effect = shutdown::begin()?;
        if rt.block_on(coordinator.claim_takeover(survey.next_id, state))? {
            return Ok(restore.map(Arc::new));
        }
        tracing::info!(
            checkpoint_id = survey.next_id,
            "another JobManager wrote checkpoint id {} first; reading storage again",
            survey.next_id
        );
    }
    Err(Error::CheckpointFailed {
        checkpoint_id: 0,
        reason: format!(
            "could not claim a checkpoint id in {TAKEOVER_TRIES} tries: another JobManager keeps writing new ones"
        ),
    })
}

/// Opens the checkpoint or savepoint at `uri` with the job storage's settings.
async fn open_state(job_store: &ObjectStore, uri: &str) -> Result<RestorePoint> {
    let store = job_store.open_related(&Location::parse(uri)?).await?;
    RestorePoint::open(store).await
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

/// Waits `delay` before the next attempt, answering requests meanwhile: a savepoint trigger
/// fails at once (no tasks run that could take it; trigger again once the job is RUNNING), a
/// cancellation ends the job. True when the job was cancelled.
fn wait_out_restart_delay(
    delay: Duration,
    job: &JobHandle,
    commands: &Receiver<JobCommand>,
) -> Result<bool> {
    let until = Instant::now() + delay;
    loop {
        shutdown::check()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        match commands.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(JobCommand::Cancel) => return Ok(true),
            Ok(JobCommand::Savepoint { trigger_id, .. }) => job.savepoint_finished(
                &trigger_id,
                Err("the job is restarting after a failure; trigger the savepoint again once it is RUNNING".into()),
            ),
            Ok(JobCommand::Checkpoint) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                shutdown::sleep(left)?;
                return Ok(false);
            }
        }
    }
}

/// Where the first attempt restores from: per the document, except that a JobManager
/// prefers a newer state of the same job (see `DriverOptions`). `latest` is the job's state as
/// of the newest id in its checkpoint storage.
fn initial_restore_point(
    doc: &JobDocument,
    latest: Option<RestorePoint>,
    options: &DriverOptions,
    rt: &tokio::runtime::Handle,
) -> Result<Option<RestorePoint>> {
    Ok(match &doc.restore {
        RestoreSource::None => None,
        RestoreSource::Latest => latest,
        RestoreSource::Path(path) => {
            let store = rt.block_on(ObjectStore::open(&Location::parse(path)?, &doc.s3))?;
            // The path may name a claim (the operator picks "the newest `chk-<n>` with
            // `_metadata`"): then the state it names, possibly empty.
            let explicit = rt.block_on(RestorePoint::resolve(store))?;
            let newer = match options.prefer_newer_checkpoint {
                true => latest.filter(|latest| {
                    explicit
                        .as_ref()
                        .is_none_or(|e| latest.metadata.timestamp_ms > e.metadata.timestamp_ms)
                }),
                false => None,
            };
            if let Some(newer) = &newer {
                tracing::info!(configured = %path, newer = %newer.uri(), "a checkpoint newer than the configured restore point exists (the JobManager restarted); restoring from it");
            }
            newer.or(explicit)
        }
    })
}

fn check_compatible(point: &RestorePoint, doc: &JobDocument) -> Result<()> {
    if point.metadata.max_parallelism != doc.max_parallelism {
        return Err(Error::spec(
            "maxParallelism",
            format!(
                "is {} but {} was taken with {}; key groups cannot be re-split",
                doc.max_parallelism,
                point.uri(),
                point.metadata.max_parallelism
            ),
        ));
    }
    Ok(())
}

/// A savepoint trigger an attempt took on: it ends `COMPLETED` or `FAILED` by `deadline` (the
/// savepoint timeout after the REST API accepted it), whatever happens to the attempt.
struct SavepointTrigger {
    trigger_id: String,
    target: SavepointTarget,
    deadline: Instant,
}

struct Attempt {
    job: JobHandle,
    doc: Arc<JobDocument>,
    /// Savepoints asked for but not yet triggered (one checkpoint is in flight at a time).
    queued_savepoints: VecDeque<SavepointTrigger>,
    /// Checkpoint id -> the savepoint in flight with that id.
    savepoint_triggers: std::collections::HashMap<u64, SavepointTrigger>,
    tasks: Vec<TaskHandle>,
    stop_tasks: Option<Box<dyn FnMut() + Send>>,
    events: Receiver<TaskEvent>,
    coordinator: Option<CheckpointCoordinator>,
    rt: tokio::runtime::Handle,
    source_names: Vec<String>,
    sink_names: Vec<String>,
    /// A failed checkpoint's id could not be written: not before this instant again.
    next_settle_at: Option<Instant>,
    /// Why that write failed, for the savepoint that waited for it.
    settle_failure: Option<String>,
}

impl Attempt {
    /// `None` when the user cancelled before the tasks started.
    fn start(
        plan: &AttemptPlan<'_>,
        executor: &mut dyn Executor,
        coordinator: &mut Option<CheckpointCoordinator>,
        commands: &Receiver<JobCommand>,
    ) -> Result<Option<Attempt>> {
        // Sinks settle what the restored checkpoint left pending before anything runs.
        let recover_ctx = crate::functions::RecoverContext {
            rt: plan.rt.clone(),
            doc: plan.doc.clone(),
            claimed: plan.claimed,
        };
        for (uid, sink) in &plan.graph.sinks {
            let pending = plan
                .restore
                .as_ref()
                .map(|r| r.operator_state(uid, SINK_PENDING_STATE, Redistribution::Union, 1, 0))
                .unwrap_or_default();
            sink.recover(pending, &recover_ctx)?;
        }

        let (events_tx, events) = crossbeam_channel::unbounded();
        let Some(deployment) = executor.deploy(plan, events_tx, commands)? else {
            return Ok(None);
        };
        if let Some(coordinator) = coordinator.as_mut() {
            coordinator.start_attempt(deployment.tasks.len());
        }
        // Operator names for progress lines.
        let mut source_names: Vec<String> = deployment
            .tasks
            .iter()
            .filter(|t| t.is_source)
            .map(|t| t.name.clone())
            .collect();
        source_names.dedup();
        Ok(Some(Attempt {
            job: plan.job.clone(),
            doc: plan.doc.clone(),
            queued_savepoints: VecDeque::new(),
            savepoint_triggers: Default::default(),
            tasks: deployment.tasks,
            stop_tasks: Some(deployment.stop),
            events,
            coordinator: coordinator.take(),
            rt: plan.rt.clone(),
            source_names,
            sink_names: plan
                .graph
                .sinks
                .iter()
                .map(|(uid, _)| uid.clone())
                .collect(),
            next_settle_at: None,
            settle_failure: None,
        }))
    }

    fn latest_checkpoint(&self) -> Option<CompletedCheckpoint> {
        self.coordinator
            .as_ref()
            .and_then(|c| c.latest_completed().cloned())
    }

    fn broadcast(&self, message: ControlMessage) {
        for task in &self.tasks {
            (task.control)(message.clone());
        }
    }

    fn to_sources(&self, message: ControlMessage) {
        for task in self.tasks.iter().filter(|t| t.is_source) {
            (task.control)(message.clone());
        }
    }

    fn trigger(&mut self) -> Result<()> {
        if !self.settle(true)? {
            return Ok(());
        }
        shutdown::check()?;
        if let Some(barrier) = self.coordinator.as_mut().and_then(|c| c.trigger()) {
            self.to_sources(ControlMessage::TriggerCheckpoint(barrier));
        }
        Ok(())
    }

    /// Writes the id of the checkpoint or savepoint that failed last (ids are written in
    /// order, see `checkpoint::coordinator`). False while it cannot be written; a failed write
    /// is retried an interval later, and counts as a checkpoint failure when a periodic
    /// checkpoint (`for_checkpoint`) waited for it: a savepoint never counts.
    fn settle(&mut self, for_checkpoint: bool) -> Result<bool> {
        let Some(coordinator) = self.coordinator.as_mut() else {
            return Ok(true);
        };
        let Some(id) = coordinator.unsettled_id() else {
            return Ok(true);
        };
        if self.next_settle_at.is_some_and(|at| Instant::now() < at) {
            return Ok(false);
        }
        let _effect = shutdown::begin()?;
        match self.rt.block_on(coordinator.settle()) {
            Ok(()) => {
                self.next_settle_at = None;
                Ok(true)
            }
            Err(e @ Error::Fenced { .. }) => Err(e),
            Err(e) => {
                self.next_settle_at = Some(Instant::now() + coordinator.interval());
                let reason = format!("writing the failed claim of checkpoint {id} failed: {e}");
                if for_checkpoint {
                    coordinator.count_failure(id, &reason)?;
                }
                self.settle_failure = Some(reason);
                Ok(false)
            }
        }
    }

    /// Starts the next queued savepoint if nothing is in flight.
    fn trigger_queued_savepoint(&mut self) -> Result<()> {
        if self
            .coordinator
            .as_ref()
            .is_none_or(|c| c.is_pending() || self.queued_savepoints.is_empty())
        {
            return Ok(());
        }
        if !self.settle(false)? {
            // Checkpoint storage refuses the failed id's claim: the savepoint cannot get an id.
            if let Some(reason) = self.settle_failure.take()
                && let Some(trigger) = self.queued_savepoints.pop_front()
            {
                self.job.savepoint_finished(
                    &trigger.trigger_id,
                    Err(format!("savepoint could not start: {reason}")),
                );
            }
            return Ok(());
        }
        shutdown::check()?;
        let Some(coordinator) = self.coordinator.as_mut() else {
            return Ok(());
        };
        let Some(trigger) = self.queued_savepoints.pop_front() else {
            return Ok(());
        };
        match coordinator.trigger_savepoint(trigger.target.clone()) {
            Some(barrier) => {
                tracing::info!(
                    checkpoint_id = barrier.checkpoint_id,
                    stop = barrier.stops_job(),
                    trigger_id = %trigger.trigger_id,
                    "savepoint triggered"
                );
                self.savepoint_triggers
                    .insert(barrier.checkpoint_id, trigger);
                self.to_sources(ControlMessage::TriggerCheckpoint(barrier));
            }
            None => self.queued_savepoints.push_front(trigger),
        }
        Ok(())
    }

    /// Fails the savepoints past their deadline: queued ones that never got to start, and the
    /// one in flight (which is abandoned like a timed-out checkpoint).
    fn expire_savepoints(&mut self) -> Result<()> {
        let now = Instant::now();
        let Some(coordinator) = self.coordinator.as_ref() else {
            return Ok(());
        };
        let timeout = coordinator.timeout();
        let in_flight = coordinator.pending_id();
        while let Some(position) = self
            .queued_savepoints
            .iter()
            .position(|t| t.deadline <= now)
        {
            if let Some(trigger) = self.queued_savepoints.remove(position) {
                let waiting_for = match in_flight {
                    Some(id) => format!("checkpoint {id} was in flight"),
                    None => "no checkpoint id could be taken".to_string(),
                };
                self.job.savepoint_finished(
                    &trigger.trigger_id,
                    Err(format!(
                        "savepoint failed: not started within the savepoint timeout ({timeout:?}): {waiting_for}"
                    )),
                );
            }
        }
        if let Some(id) = in_flight
            && self
                .savepoint_triggers
                .get(&id)
                .is_some_and(|t| t.deadline <= now)
        {
            self.fail_checkpoint(&format!(
                "timed out: not completed within {timeout:?} of the request"
            ))?;
        }
        Ok(())
    }

    /// Abandons the checkpoint or savepoint in flight; errors once checkpoint failures exceed
    /// the tolerance (a savepoint fails only itself and never errors).
    fn fail_checkpoint(&mut self, reason: &str) -> Result<()> {
        let Some(coordinator) = self.coordinator.as_mut() else {
            return Ok(());
        };
        let Some(id) = coordinator.pending_id() else {
            return Ok(());
        };
        let result = coordinator.fail_pending(reason);
        // Also lets sources that stopped for a stop-with-savepoint emit again.
        self.broadcast(ControlMessage::AbortCheckpoint(id));
        if let Some(trigger) = self.savepoint_triggers.remove(&id) {
            self.job.savepoint_finished(
                &trigger.trigger_id,
                Err(format!("savepoint (checkpoint {id}) failed: {reason}")),
            );
        }
        self.publish();
        result
    }

    /// Takes every savepoint trigger of this attempt away from it (the attempt failed).
    fn take_savepoint_triggers(&mut self) -> Vec<String> {
        let in_flight = std::mem::take(&mut self.savepoint_triggers).into_values();
        let queued = std::mem::take(&mut self.queued_savepoints);
        in_flight.chain(queued).map(|t| t.trigger_id).collect()
    }

    fn publish(&self) {
        if let Some(coordinator) = &self.coordinator {
            self.job
                .publish_checkpoints(coordinator.counts(), coordinator.history());
        }
    }

    /// Applies one request from the REST API. `Some` ends the attempt.
    fn on_command(&mut self, command: JobCommand) -> Result<Option<AttemptEnd>> {
        match command {
            JobCommand::Cancel => return Ok(Some(AttemptEnd::Cancelled)),
            JobCommand::Checkpoint => {
                if self.coordinator.as_ref().is_some_and(|c| !c.is_pending()) {
                    self.trigger()?;
                }
            }
            JobCommand::Savepoint {
                trigger_id,
                target,
                stop,
                accepted,
            } => {
                if !self.job.savepoint_in_progress(&trigger_id) {
                    // It ended while waiting for this attempt (e.g. the job restarted).
                    return Ok(None);
                }
                let Some(timeout) = self.coordinator.as_ref().map(|c| c.timeout()) else {
                    self.job.savepoint_finished(
                        &trigger_id,
                        Err(
                            "savepoints need checkpointing to be configured in the job document"
                                .into(),
                        ),
                    );
                    return Ok(None);
                };
                let store = Location::parse(&target)
                    .map_err(Error::from)
                    .and_then(|location| {
                        Ok(self
                            .rt
                            .block_on(ObjectStore::open(&location, &self.doc.s3))?)
                    });
                match store {
                    Ok(store) => self.queued_savepoints.push_back(SavepointTrigger {
                        trigger_id,
                        target: SavepointTarget { store, stop },
                        deadline: accepted + timeout,
                    }),
                    Err(e) => self.job.savepoint_finished(&trigger_id, Err(e.to_string())),
                }
            }
        }
        Ok(None)
    }

    /// Writes `_metadata` once every task acknowledged, then tells tasks (so sinks commit).
    /// Returns the savepoint location when a stop-with-savepoint completed.
    ///
    /// The `_metadata` write and the completion notice form one step that SIGTERM waits for
    /// (`shutdown::effect`): after the signal neither happens. Losing the create-only write to
    /// another JobManager (`Error::Fenced`) ends the attempt without any notice.
    fn complete_checkpoint(&mut self, checkpoint_id: u64) -> Result<Option<String>> {
        let Some(coordinator) = self.coordinator.as_mut() else {
            return Ok(None);
        };
        let effect = shutdown::begin()?;
        fault_points::hit(FaultPoint::CheckpointBeforeMetadata);
        let completed = match self.rt.block_on(coordinator.complete()) {
            Ok(completed) => completed,
            Err(e @ Error::Fenced { .. }) => {
                tracing::warn!(
                    checkpoint_id,
                    "fenced while completing checkpoint {checkpoint_id}: not sending its completion; no sink commits it"
                );
                return Err(e);
            }
            Err(e) => {
                drop(effect);
                self.fail_checkpoint(&format!("writing _metadata failed: {e}"))?;
                return Ok(None);
            }
        };
        fault_points::hit(FaultPoint::CheckpointAfterMetadata);
        self.publish();
        if completed.kind == SnapshotKind::Savepoint {
            tracing::info!(checkpoint_id, path = %completed.uri, duration_ms = completed.duration.as_millis() as u64, "savepoint completed");
            if let Some(trigger) = self.savepoint_triggers.remove(&checkpoint_id) {
                self.job
                    .savepoint_finished(&trigger.trigger_id, Ok(completed.uri.clone()));
            }
            if completed.stops_job {
                fault_points::hit(FaultPoint::SavepointBeforeStop);
                self.broadcast(ControlMessage::CheckpointComplete(checkpoint_id));
                self.to_sources(ControlMessage::Stop);
                return Ok(Some(completed.uri));
            }
            drop(effect);
            return Ok(None);
        }
        tracing::info!(
            checkpoint_id,
            duration_ms = completed.duration.as_millis() as u64,
            state_bytes = completed.state_size,
            stored_bytes = completed.checkpointed_size,
            path = %completed.uri,
            "checkpoint completed"
        );
        self.broadcast(ControlMessage::CheckpointComplete(checkpoint_id));
        drop(effect);
        if let Some(coordinator) = self.coordinator.as_mut()
            && shutdown::requested().is_none()
            && let Err(e) = self.rt.block_on(coordinator.apply_retention())
        {
            tracing::warn!(error = %e, "checkpoint retention failed; will retry after the next checkpoint");
        }
        Ok(None)
    }

    /// Runs until every task finished, the job was stopped or cancelled (Ok), or something
    /// failed (Err).
    fn drive(
        &mut self,
        progress_interval: Duration,
        commands: &Receiver<JobCommand>,
    ) -> Result<AttemptEnd> {
        let total = self.tasks.len();
        let sources = self.tasks.iter().filter(|t| t.is_source).count();
        let interval = self.coordinator.as_ref().map(|c| c.interval());
        let mut next_trigger = interval.map(|i| Instant::now() + i);
        let mut sources_finished = 0;
        let mut tasks_finished = 0;
        let mut final_checkpoint: Option<u64> = None;
        let mut stopped_with: Option<String> = None;
        let mut progress = Progress::new(progress_interval);
        loop {
            // SIGTERM: nothing more is triggered, completed or committed; the caller cancels
            // the tasks.
            shutdown::check()?;
            while let Ok(command) = commands.try_recv() {
                if let Some(end) = self.on_command(command)? {
                    return Ok(end);
                }
            }
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(TaskEvent::Acknowledge {
                    checkpoint_id,
                    task,
                    states,
                }) => {
                    let complete = self
                        .coordinator
                        .as_mut()
                        .is_some_and(|c| c.acknowledge(checkpoint_id, task, states));
                    if complete {
                        if let Some(location) = self.complete_checkpoint(checkpoint_id)? {
                            stopped_with = Some(location);
                        }
                        if final_checkpoint == Some(checkpoint_id) {
                            self.to_sources(ControlMessage::Stop);
                        }
                    }
                }
                Ok(TaskEvent::Decline {
                    checkpoint_id,
                    task,
                    reason,
                }) => {
                    if self.coordinator.as_ref().and_then(|c| c.pending_id()) == Some(checkpoint_id)
                    {
                        self.fail_checkpoint(&format!("{task} declined: {reason}"))?;
                    }
                }
                Ok(TaskEvent::SourceFinished { .. }) => {
                    sources_finished += 1;
                    if sources_finished == sources && self.coordinator.is_none() {
                        self.to_sources(ControlMessage::Stop);
                    }
                }
                Ok(TaskEvent::Finished { .. }) => {
                    tasks_finished += 1;
                    if tasks_finished == total {
                        progress.report(
                            &self.source_names,
                            &self.sink_names,
                            self.latest_checkpoint().as_ref(),
                        );
                        return Ok(match stopped_with {
                            Some(location) => AttemptEnd::Stopped(location),
                            None => AttemptEnd::Finished,
                        });
                    }
                }
                Ok(TaskEvent::Failed { task, error }) => {
                    tracing::error!(%task, error = %error, "task failed");
                    return Err(error);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            }
            if stopped_with.is_some() {
                // Stopping: nothing more is triggered, tasks drain and finish.
                continue;
            }

            // With all input read, one last checkpoint commits the sinks' final output.
            if sources_finished == sources
                && final_checkpoint.is_none()
                && let Some(coordinator) = self.coordinator.as_ref()
                && !coordinator.is_pending()
            {
                self.trigger()?;
                final_checkpoint = self.coordinator.as_ref().and_then(|c| c.pending_id());
            }
            if final_checkpoint.is_none() {
                self.trigger_queued_savepoint()?;
            }
            if let (Some(at), Some(interval)) = (next_trigger, interval)
                && Instant::now() >= at
            {
                next_trigger = Some(Instant::now() + interval);
                if final_checkpoint.is_none() {
                    self.trigger()?;
                }
            }
            if let Some(id) = self.coordinator.as_ref().and_then(|c| c.timed_out()) {
                self.fail_checkpoint(&format!("checkpoint {id} timed out"))?;
            }
            self.expire_savepoints()?;
            // A final checkpoint that failed is retried.
            if let Some(id) = final_checkpoint
                && self.coordinator.as_ref().is_some_and(|c| !c.is_pending())
                && self
                    .latest_checkpoint()
                    .is_none_or(|c| c.checkpoint_id != id)
            {
                final_checkpoint = None;
            }
            self.publish();
            progress.tick(
                &self.source_names,
                &self.sink_names,
                self.latest_checkpoint().as_ref(),
            );
        }
    }

    /// Normal end (or cancellation requested by the user): stop every task.
    fn shutdown(&mut self) {
        self.stop_tasks();
    }

    /// Cancels every task and returns the most telling error: the first that is not a mere
    /// consequence of the cancellation.
    fn teardown(&mut self, first: Error) -> Error {
        self.stop_tasks();
        if !matches!(first, Error::Cancelled) {
            return first;
        }
        while let Ok(event) = self.events.try_recv() {
            if let TaskEvent::Failed { error, .. } = event
                && !matches!(error, Error::Cancelled)
            {
                return error;
            }
        }
        first
    }

    fn stop_tasks(&mut self) {
        if let Some(mut stop) = self.stop_tasks.take() {
            stop();
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

/// Logs throughput and checkpoint progress at a fixed interval.
struct Progress {
    interval: Duration,
    last: Instant,
    last_in: u64,
}

impl Progress {
    fn new(interval: Duration) -> Self {
        Progress {
            interval,
            last: Instant::now(),
            last_in: 0,
        }
    }

    fn tick(
        &mut self,
        sources: &[String],
        sinks: &[String],
        checkpoint: Option<&CompletedCheckpoint>,
    ) {
        if self.last.elapsed() >= self.interval {
            self.report(sources, sinks, checkpoint);
        }
    }

    fn report(
        &mut self,
        sources: &[String],
        sinks: &[String],
        checkpoint: Option<&CompletedCheckpoint>,
    ) {
        let metrics = crate::metrics::global();
        let sum = |family: &prometheus_client::metrics::family::Family<
            _,
            prometheus_client::metrics::counter::Counter,
        >,
                   names: &[String]| {
            names
                .iter()
                .map(|n| family.get_or_create(&metrics.operator(n)).get())
                .sum::<u64>()
        };
        let read = sum(&metrics.records_out, sources);
        let written = sum(&metrics.records_in, sinks);
        let elapsed = self.last.elapsed().as_secs_f64().max(1e-3);
        let rate = (read - self.last_in.min(read)) as f64 / elapsed;
        tracing::info!(
            records_read = read,
            records_per_sec = rate as u64,
            records_to_sink = written,
            last_checkpoint = checkpoint.map(|c| c.checkpoint_id),
            "progress"
        );
        self.last = Instant::now();
        self.last_in = read;
    }
}

/// Applies the restart strategy: how long to wait before the next attempt, or `None` to give up.
struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    recent_failures: VecDeque<Instant>,
}

impl RestartTracker {
    fn new(strategy: RestartStrategy) -> Self {
        RestartTracker {
            strategy,
            restarts: 0,
            recent_failures: VecDeque::new(),
        }
    }

    fn next_delay(&mut self) -> Option<Duration> {
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (self.restarts < *attempts).then_some(*delay)
            }
            RestartStrategy::ExponentialDelay {
                initial_delay,
                max_delay,
                multiplier,
                max_attempts,
            } => {
                if max_attempts.is_some_and(|max| self.restarts >= max) {
                    None
                } else {
                    let factor = multiplier.powi(self.restarts.min(64) as i32);
                    Some(initial_delay.mul_f64(factor).min(*max_delay))
                }
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
            } => {
                let now = Instant::now();
                self.recent_failures.push_back(now);
                while self
                    .recent_failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > *interval)
                {
                    self.recent_failures.pop_front();
                }
                (self.recent_failures.len() <= *max_failures_per_interval as usize)
                    .then_some(*delay)
            }
        };
        if delay.is_some() {
            self.restarts += 1;
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_delay_gives_up_after_attempts() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 2,
            delay: Duration::from_millis(5),
        });
        assert_eq!(t.next_delay(), Some(Duration::from_millis(5)));
        assert_eq!(t.next_delay(), Some(Duration::from_millis(5)));
        assert_eq!(t.next_delay(), None);
    }

    #[test]
    fn exponential_delay_grows_to_the_cap() {
        let mut t = RestartTracker::new(RestartStrategy::ExponentialDelay {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            multiplier: 2.0,
            max_attempts: Some(4),
        });
        let delays: Vec<_> = std::iter::from_fn(|| t.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 350, 350].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn failure_rate_gives_up_when_failures_bunch_up() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures_per_interval: 2,
            interval: Duration::from_secs(60),
            delay: Duration::ZERO,
        });
        assert!(t.next_delay().is_some());
        assert!(t.next_delay().is_some());
        assert!(t.next_delay().is_none());
    }

    #[test]
    fn corrupt_checkpoints_are_never_retried() {
        assert!(
            !Error::CorruptCheckpoint {
                object: "x".into(),
                reason: "y".into()
            }
            .is_recoverable()
        );
        assert!(Error::Cancelled.is_recoverable());
    }
}
