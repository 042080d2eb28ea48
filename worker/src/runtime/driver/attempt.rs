//! One attempt of a job: its deployed tasks and the loop that triggers, completes and fails
//! checkpoints and savepoints until the tasks finish, the job is stopped or cancelled, or
//! something fails.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::progress::Progress;
use super::{AttemptPlan, Executor, TaskHandle};
use crate::checkpoint::{CheckpointCoordinator, CompletedCheckpoint, SnapshotKind};
use crate::error::{Error, Result};
use crate::fault_points::{self, FaultPoint};
use crate::runtime::graph::SINK_PENDING_STATE;
use crate::runtime::job::{JobCommand, JobHandle};
use crate::runtime::shutdown;
use crate::runtime::{ControlMessage, SavepointTarget, TaskEvent};
use crate::spec::JobDocument;
use crate::state::Redistribution;
use crate::storage::{Location, ObjectStore};

/// How the driver loop of one attempt ended.
pub(super) enum AttemptEnd {
    Finished,
    Stopped(String),
    Cancelled,
}

/// A savepoint trigger an attempt took on: it ends `COMPLETED` or `FAILED` by `deadline` (the
/// savepoint timeout after the REST API accepted it), whatever happens to the attempt.
struct SavepointTrigger {
    trigger_id: String,
    target: SavepointTarget,
    deadline: Instant,
}

pub(super) struct Attempt {
    job: JobHandle,
    doc: Arc<JobDocument>,
    /// Savepoints asked for but not yet triggered (one checkpoint is in flight at a time).
    queued_savepoints: VecDeque<SavepointTrigger>,
    /// Checkpoint id -> the savepoint in flight with that id.
    savepoint_triggers: std::collections::HashMap<u64, SavepointTrigger>,
    tasks: Vec<TaskHandle>,
    stop_tasks: Option<Box<dyn FnMut() + Send>>,
    events: Receiver<TaskEvent>,
    pub(super) coordinator: Option<CheckpointCoordinator>,
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
    pub(super) fn start(
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
    pub(super) fn take_savepoint_triggers(&mut self) -> Vec<String> {
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
    pub(super) fn drive(
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
    pub(super) fn shutdown(&mut self) {
        self.stop_tasks();
    }

    /// Cancels every task and returns the most telling error: the first that is not a mere
    /// consequence of the cancellation.
    pub(super) fn teardown(&mut self, first: Error) -> Error {
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
