//! Operations: starting a savepoint, upgrade, rescale or suspend (or refusing it), and
//! following one in flight (`status.operation`) to its end.

use super::{Action, Desired, EventAction, JobManagerView, Planner};
use crate::crd::{
    BlockedUpgrade, Lifecycle, Operation, OperationKind, OperationStep, RestoreKind, RestorePoint,
    SavepointRecord, UpgradeMode,
};
use crate::jobmanager::{JobState, OperationStatus};

impl Planner<'_> {
    pub(super) fn maybe_savepoint(&mut self, desired: &Desired) {
        let nonce = self.job.spec.savepoint_trigger_nonce;
        if nonce.is_some() && nonce != self.status.last_savepoint_nonce {
            return self.start_savepoint(OperationKind::Manual, desired, nonce);
        }
        if let Some(due) = self.next_periodic_savepoint(desired) {
            if self.o.now >= due {
                self.status.last_periodic_attempt = Some(self.o.now);
                self.start_savepoint(OperationKind::Periodic, desired, None);
            } else {
                // The steady requeue alone would take an interval shorter than it only when a
                // reconcile happens to come late enough.
                self.requeue_within(due - self.o.now);
            }
        }
    }

    /// When the next periodic savepoint is due (ms since epoch): `savepoints.interval` after
    /// the latest of the last periodic attempt (a failed one is not retried at once), the
    /// completion of the newest savepoint, and the rollout of the running pods.
    fn next_periodic_savepoint(&self, desired: &Desired) -> Option<i64> {
        let interval = desired.savepoint_interval_ms?;
        let since = [
            self.status.last_savepoint.as_ref().map(|s| s.time),
            self.status.last_periodic_attempt,
            self.status.deployed.as_ref().map(|d| d.deployed_at),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.o.now);
        Some(since.saturating_add(interval))
    }

    pub(super) fn savepoint_directory(&self, desired: &Desired) -> Option<String> {
        let base = desired.savepoint_base.as_ref()?;
        Some(format!(
            "{}/{}/savepoint-{}",
            base.trim_end_matches('/'),
            desired.job_id,
            self.o.now
        ))
    }

    fn start_savepoint(&mut self, kind: OperationKind, desired: &Desired, nonce: Option<i64>) {
        let Some(target) = self.savepoint_directory(desired) else {
            self.status.last_savepoint_nonce = nonce;
            self.event(
                true,
                "SavepointImpossible",
                EventAction::TriggerSavepoint,
                "no savepoints.directory and no checkpoint storage to derive it from",
            );
            return;
        };
        self.status.operation = Some(Operation {
            kind,
            step: OperationStep::Savepointing,
            stop: false,
            target_directory: Some(target.clone()),
            trigger_id: None,
            started_at: self.o.now,
            target_hash: None,
            nonce,
            refused: None,
        });
        self.status.lifecycle = Lifecycle::Savepointing;
        self.event(
            false,
            "SavepointStarted",
            EventAction::TriggerSavepoint,
            format!("{kind:?} savepoint to {target}"),
        );
        self.actions.push(Action::TriggerSavepoint {
            target_directory: target,
        });
        self.busy();
    }

    /// Begins an upgrade, rescale or suspend of a job that may be running.
    pub(super) fn start_stop(&mut self, kind: OperationKind, desired: &Desired) {
        let mode = self.job.spec.upgrade_mode;
        let running = self.job_state() == Some(JobState::Running);
        let lifecycle = match kind {
            OperationKind::Rescale => Lifecycle::Rescaling,
            OperationKind::Suspend => Lifecycle::Savepointing,
            _ => Lifecycle::Upgrading,
        };
        let mut operation = Operation {
            kind,
            step: OperationStep::Savepointing,
            stop: true,
            target_directory: None,
            trigger_id: None,
            started_at: self.o.now,
            target_hash: Some(desired.target(mode)),
            nonce: None,
            refused: None,
        };
        match mode {
            UpgradeMode::Savepoint if running => {
                let Some(target) = self.savepoint_directory(desired) else {
                    return self.block(
                        kind,
                        desired,
                        "NoSavepointDirectory",
                        "no savepoint directory configured",
                    );
                };
                operation.target_directory = Some(target.clone());
                self.event(
                    false,
                    "StopWithSavepoint",
                    EventAction::StopWithSavepoint,
                    format!("{kind:?}: stopping with savepoint to {target}"),
                );
                self.actions.push(Action::StopWithSavepoint {
                    target_directory: target,
                });
            }
            UpgradeMode::LastState if running => {
                operation.step = OperationStep::Cancelling;
                self.event(
                    false,
                    "Cancelling",
                    EventAction::Cancel,
                    format!("{kind:?}: cancelling to restore from the latest checkpoint"),
                );
                self.actions.push(Action::CancelJob);
            }
            UpgradeMode::Stateless => {
                if kind == OperationKind::Suspend {
                    return self.suspend_without_job();
                }
                self.status.lifecycle = lifecycle;
                self.event(
                    false,
                    "Redeploying",
                    EventAction::Redeploy,
                    format!("{kind:?}: stateless redeploy with empty state"),
                );
                let empty = RestorePoint {
                    kind: RestoreKind::Empty,
                    path: None,
                    verified: false,
                };
                self.redeploy(operation, desired, empty, lifecycle);
                return;
            }
            // The job is not running (still deploying, restarting, JobManager gone): there is
            // nothing to savepoint, so the new spec starts from the newest state in storage.
            UpgradeMode::Savepoint | UpgradeMode::LastState => {
                if kind == OperationKind::Suspend {
                    return self.suspend_without_job();
                }
                self.status.lifecycle = lifecycle;
                return self.redeploy_from_latest(operation, desired, lifecycle);
            }
        }
        self.status.operation = Some(operation);
        self.status.lifecycle = lifecycle;
        self.busy();
    }

    fn block(
        &mut self,
        kind: OperationKind,
        desired: &Desired,
        reason: &'static str,
        message: &str,
    ) {
        let target = match kind {
            OperationKind::Suspend => "suspend".to_string(),
            _ => desired.target(self.job.spec.upgrade_mode),
        };
        self.block_target(kind, target, reason, message);
    }

    fn block_target(
        &mut self,
        kind: OperationKind,
        target: String,
        reason: &'static str,
        message: &str,
    ) {
        let message = format!("{kind:?} blocked, the old job keeps running: {message}");
        self.event(true, "UpgradeBlocked", kind.into(), message.clone());
        self.status.blocked = Some(BlockedUpgrade {
            target,
            reason: reason.to_string(),
            message,
        });
        self.status.operation = None;
        self.status.lifecycle = Lifecycle::Running;
    }

    pub(super) fn continue_operation(&mut self, operation: Operation, desired: &Desired) {
        self.busy();
        match operation.step {
            OperationStep::Savepointing => self.poll_savepoint(operation, desired),
            OperationStep::Cancelling => self.poll_cancel(operation, desired),
            OperationStep::Redeploying => self.poll_redeploy(operation, desired),
            // Only a deletion removes pods, and `on_delete` handles it; a StreamJob whose
            // deletion was cancelled (the finalizer taken off by hand) has nothing to resume.
            OperationStep::RemovingPods => {
                self.status.operation = None;
                self.steady(desired);
            }
        }
    }

    pub(super) fn poll_savepoint(&mut self, operation: Operation, desired: &Desired) {
        if let Some(reason) = operation.refused.clone() {
            let message = format!("the JobManager refused the savepoint: {reason}");
            return self.savepoint_failed(operation, "SavepointFailed", &message);
        }
        let target = operation.target_directory.clone().unwrap_or_default();
        let timed_out = self.o.now - operation.started_at >= desired.savepoint_timeout_ms;
        if let Some(answer) = &self.o.savepoint {
            match answer.status {
                OperationStatus::Completed => {
                    let location = answer.location.clone().unwrap_or(target);
                    return self.savepoint_completed(operation, desired, location);
                }
                OperationStatus::Failed => {
                    let failure = answer
                        .failure
                        .clone()
                        .unwrap_or_else(|| "no reason given".into());
                    return self.savepoint_failed(operation, "SavepointFailed", &failure);
                }
                OperationStatus::InProgress if !timed_out => return,
                OperationStatus::InProgress => {}
            }
        }
        // No answer, or it took too long. A `_metadata` in the target means it did complete
        // (the operator may have crashed before it recorded the trigger id).
        if self.o.target_savepoint_complete == Some(true) {
            return self.savepoint_completed(operation, desired, target);
        }
        if timed_out {
            let message = format!(
                "savepoint to {target} did not complete within {}s",
                desired.savepoint_timeout_ms / 1000
            );
            return self.savepoint_failed(operation, "SavepointTimeout", &message);
        }
        if operation.trigger_id.is_none() && self.job_state() == Some(JobState::Running) {
            // Recorded but never acknowledged: ask again. The JobManager treats a repeated
            // request for the same target directory as the same savepoint.
            let action = if operation.stop {
                Action::StopWithSavepoint {
                    target_directory: target,
                }
            } else {
                Action::TriggerSavepoint {
                    target_directory: target,
                }
            };
            self.actions.push(action);
        }
    }

    fn savepoint_completed(&mut self, operation: Operation, desired: &Desired, location: String) {
        let record = SavepointRecord {
            path: location.clone(),
            time: self.o.now,
            reason: operation.kind,
        };
        self.status.last_savepoint = Some(record.clone());
        self.status.savepoint_history.push(record);
        if operation.kind == OperationKind::Manual {
            self.status.last_savepoint_nonce = operation.nonce;
        }
        let action = if operation.stop {
            EventAction::StopWithSavepoint
        } else {
            EventAction::TriggerSavepoint
        };
        self.event(
            false,
            "SavepointCompleted",
            action,
            format!("{:?} savepoint at {location}", operation.kind),
        );
        let verified = self.o.target_savepoint_complete == Some(true);
        let restore = RestorePoint {
            kind: RestoreKind::Savepoint,
            path: Some(location),
            verified,
        };
        if !operation.stop {
            self.status.operation = None;
            self.status.lifecycle = Lifecycle::Running;
            self.apply_retention();
            return;
        }
        match operation.kind {
            OperationKind::Suspend => {
                self.status.restore_point = Some(restore);
                self.status.operation = None;
                self.status.lifecycle = Lifecycle::Suspended;
                self.actions.push(Action::RemoveWorkloads);
                self.requeue = None;
            }
            OperationKind::Delete => {
                self.status.restore_point = Some(restore);
                self.status.operation = None;
            }
            _ => {
                let lifecycle = self.status.lifecycle;
                self.redeploy(operation, desired, restore, lifecycle);
            }
        }
        self.apply_retention();
    }

    fn savepoint_failed(&mut self, operation: Operation, reason: &'static str, message: &str) {
        match operation.kind {
            OperationKind::Upgrade | OperationKind::Rescale | OperationKind::Suspend => {
                let target = match operation.kind {
                    OperationKind::Suspend => "suspend".to_string(),
                    _ => operation.target_hash.clone().unwrap_or_default(),
                };
                self.block_target(operation.kind, target, reason, message);
            }
            OperationKind::Delete => {
                self.status.operation = None;
                self.event(
                    true,
                    reason,
                    EventAction::Delete,
                    format!("final savepoint failed, deleting anyway: {message}"),
                );
            }
            OperationKind::Manual | OperationKind::Periodic => {
                if operation.kind == OperationKind::Manual {
                    self.status.last_savepoint_nonce = operation.nonce;
                }
                self.status.operation = None;
                self.status.lifecycle = Lifecycle::Running;
                self.event(
                    true,
                    reason,
                    EventAction::TriggerSavepoint,
                    format!("{:?} savepoint: {message}", operation.kind),
                );
            }
        }
    }

    /// Deletes savepoints beyond `savepoints.retained`, never the current restore point.
    fn apply_retention(&mut self) {
        let retained = self.job.spec.savepoints.retained.max(1) as usize;
        let keep = self
            .status
            .restore_point
            .as_ref()
            .and_then(|r| r.path.clone());
        while self.status.savepoint_history.len() > retained {
            let oldest = self.status.savepoint_history.remove(0);
            if Some(&oldest.path) != keep.as_ref() {
                self.actions
                    .push(Action::DeleteStorage { path: oldest.path });
            }
        }
    }

    fn poll_cancel(&mut self, operation: Operation, desired: &Desired) {
        let stopped = match &self.o.jobmanager {
            JobManagerView::Job { overview, .. } => overview.state.is_terminal(),
            JobManagerView::NoJob | JobManagerView::Unreachable(_) => true,
        };
        if !stopped {
            return;
        }
        if operation.kind == OperationKind::Suspend {
            return self.suspend_without_job();
        }
        let lifecycle = self.status.lifecycle;
        self.redeploy_from_latest(operation, desired, lifecycle);
    }

    fn poll_redeploy(&mut self, operation: Operation, desired: &Desired) {
        let Some(deployed) = self.status.deployed.clone() else {
            self.status.operation = None;
            return;
        };
        // A bounded job may run to its end before it is ever seen RUNNING (and a finished
        // JobManager never turns ready, so `workloads_ready` cannot be waited for). FINISHED
        // from a JobManager that started before the redeploy is the old run, stopped with its
        // savepoint: that one means keep waiting for the new pods. (Start time and deploy
        // time come from different clocks; pod start-up takes longer than their usual skew.)
        let new_run_finished = self.overview().is_some_and(|overview| {
            overview.state == JobState::Finished && overview.start_time >= deployed.deployed_at
        });
        if new_run_finished {
            self.status.operation = None;
            self.status.blocked = None;
            return self.finished(desired, &deployed, false);
        }
        self.keep_running(desired, &deployed);
        match self.overview() {
            Some(overview)
                if overview.state == JobState::Running
                    && self.o.workloads_ready
                    && overview.parallelism == desired.parallelism =>
            {
                self.status.job_start_time = Some(overview.start_time);
                self.status.operation = None;
                self.status.blocked = None;
                self.status.lifecycle = Lifecycle::Running;
                let reason = if operation.kind == OperationKind::Rescale {
                    "RescaleCompleted"
                } else {
                    "UpgradeCompleted"
                };
                self.event(
                    false,
                    reason,
                    operation.kind.into(),
                    format!("job runs with parallelism {}", overview.parallelism),
                );
            }
            Some(overview) if overview.state == JobState::Failed => {
                self.status.operation = None;
                self.failed(desired, false);
            }
            _ => {}
        }
    }
}
