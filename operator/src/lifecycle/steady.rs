//! Steady state: no operation in flight.

use std::time::Duration;

use weir_spec::RestoreSource;

use super::conditions::describe;
use super::{
    Action, Desired, EventAction, JobManagerView, Planner, RESTART_BACKOFF_BASE_MS,
    RESTART_BACKOFF_MAX_MS, one_line,
};
use crate::crd::{
    DeployedSpec, DesiredState, FailureRecord, Lifecycle, Operation, OperationKind, OperationStep,
    RestoreKind, RestorePoint,
};
use crate::jobmanager::JobState;

impl Planner<'_> {
    pub(super) fn steady(&mut self, desired: &Desired) {
        let Some(deployed) = self.status.deployed.clone() else {
            return self.first_deploy(desired);
        };
        if self.status.lifecycle == Lifecycle::Suspended {
            if self.job.spec.state == DesiredState::Running {
                self.resume(desired);
            } else {
                self.requeue = None;
            }
            return;
        }
        let changed = desired.spec_hash != deployed.spec_hash
            || desired.parallelism != deployed.parallelism
            || desired.slots != deployed.slots;
        // A FINISHED job is done, not failed. (FINISHED seen while Failed is the failed run's
        // JobManager: the restart decision stays with `failed`.)
        if self.status.lifecycle == Lifecycle::Finished
            || (self.status.lifecycle != Lifecycle::Failed
                && self.job_state() == Some(JobState::Finished))
        {
            return self.finished(desired, &deployed, changed);
        }
        if self.status.lifecycle == Lifecycle::Failed
            || self.job_state().is_some_and(JobState::is_terminal)
        {
            if self.job.spec.state == DesiredState::Suspended {
                // Nothing runs, so there is nothing to savepoint: keep the restore point.
                return self.suspend_without_job();
            }
            return self.failed(desired, changed);
        }
        if self.job.spec.state == DesiredState::Suspended {
            return self.start_stop(OperationKind::Suspend, desired);
        }
        let mode = self.job.spec.upgrade_mode;
        let target = desired.target(mode);
        let rescale = desired.spec_hash == deployed.spec_hash
            && (desired.parallelism != deployed.parallelism || desired.slots != deployed.slots);
        let upgrade = desired.spec_hash != deployed.spec_hash;
        if rescale || upgrade {
            if self
                .status
                .blocked
                .as_ref()
                .is_some_and(|b| b.target == target)
            {
                // Refused before; the old job keeps running until the spec changes again.
                self.keep_running(desired, &deployed);
                return;
            }
            self.status.blocked = None;
            let kind = if upgrade {
                OperationKind::Upgrade
            } else {
                OperationKind::Rescale
            };
            return self.start_stop(kind, desired);
        }
        self.status.blocked = None;
        self.watch_running(desired, &deployed);
    }

    /// The job FINISHED: its bounded input is fully processed. Never restarted; see
    /// [`Lifecycle::Finished`] for what stays (the JobManager, serving the final state) and
    /// what goes (the TaskManagers).
    pub(super) fn finished(
        &mut self,
        desired: &Desired,
        deployed: &DeployedSpec,
        spec_changed: bool,
    ) {
        if self.job.spec.state == DesiredState::Suspended {
            return self.suspend_without_job();
        }
        if spec_changed {
            // Nothing runs, so there is nothing to savepoint: `start_stop` redeploys from the
            // newest state in storage (the job's final checkpoint), or empty when stateless.
            let kind = if desired.spec_hash == deployed.spec_hash {
                OperationKind::Rescale
            } else {
                OperationKind::Upgrade
            };
            self.status.blocked = None;
            return self.start_stop(kind, desired);
        }
        if self.status.lifecycle != Lifecycle::Finished {
            self.status.lifecycle = Lifecycle::Finished;
            self.status.consecutive_failures = 0;
            self.status.failed_at = None;
            if let Some(overview) = self.overview() {
                self.status.job_start_time = Some(overview.start_time);
            }
            let checkpoint = self
                .status
                .last_checkpoint
                .as_ref()
                .map_or_else(String::new, |c| format!(" (last checkpoint {})", c.id));
            self.event(
                false,
                "JobFinished",
                EventAction::ObserveJob,
                format!(
                    "the job finished{checkpoint}; it is not restarted, the JobManager keeps serving its final state and the TaskManagers are removed"
                ),
            );
        }
        if self.o.taskmanagers_exist {
            self.actions.push(Action::RemoveTaskManagers);
        }
        // Nothing to poll: only a spec change (or deletion) moves a finished job.
        self.requeue = None;
    }

    fn first_deploy(&mut self, desired: &Desired) {
        if self.job.spec.state == DesiredState::Suspended {
            self.status.lifecycle = Lifecycle::Suspended;
            self.requeue = None;
            return;
        }
        let restore = match &self.job.spec.initial_savepoint_path {
            Some(path) => RestorePoint {
                kind: RestoreKind::Savepoint,
                path: Some(path.clone()),
                verified: false,
            },
            None => RestorePoint {
                kind: RestoreKind::Empty,
                path: None,
                verified: false,
            },
        };
        self.event(
            false,
            "Deploying",
            EventAction::Deploy,
            format!(
                "deploying job {} with parallelism {}",
                desired.job_id, desired.parallelism
            ),
        );
        self.deploy(desired, restore, 0);
    }

    /// Rolls out the current spec from `restore` and records it as deployed.
    fn deploy(&mut self, desired: &Desired, restore: RestorePoint, restart_nonce: u32) {
        let source = match (&restore.kind, &restore.path) {
            (RestoreKind::Empty, _) | (_, None) => RestoreSource::None,
            (_, Some(path)) => RestoreSource::Path(path.clone()),
        };
        self.status.deployed = Some(DeployedSpec {
            spec_hash: desired.spec_hash.clone(),
            parallelism: desired.parallelism,
            slots: desired.slots,
            deployed_at: self.o.now,
            restart_nonce,
            pinned_restore: true,
        });
        self.status.restore_point = Some(restore);
        self.status.lifecycle = Lifecycle::Deploying;
        self.status.job_start_time = None;
        // New pods, a new JobManager: it counts its restarts from 0.
        self.status.job_manager_restarts = 0;
        self.actions.push(Action::Deploy {
            desired: Box::new(desired.clone()),
            restore: source,
            restart_nonce,
        });
        self.busy();
    }

    /// The restore source for re-applying what is deployed: pinned to the restore point until
    /// the new run completes a checkpoint, `latest` after.
    fn current_restore_source(&self, deployed: &DeployedSpec) -> RestoreSource {
        if !deployed.pinned_restore {
            return RestoreSource::Latest;
        }
        match &self.status.restore_point {
            Some(RestorePoint {
                kind: RestoreKind::Savepoint | RestoreKind::Checkpoint,
                path: Some(path),
                ..
            }) => RestoreSource::Path(path.clone()),
            _ => RestoreSource::None,
        }
    }

    /// Keep the deployed children in shape (someone may have deleted one); idempotent.
    pub(super) fn keep_running(&mut self, desired: &Desired, deployed: &DeployedSpec) {
        // While an upgrade is blocked the spec no longer describes the pods, so do not apply.
        if self.status.blocked.is_none() {
            self.actions.push(Action::Deploy {
                desired: Box::new(desired.clone()),
                restore: self.current_restore_source(deployed),
                restart_nonce: deployed.restart_nonce,
            });
        }
    }

    fn watch_running(&mut self, desired: &Desired, deployed: &DeployedSpec) {
        match &self.o.jobmanager {
            JobManagerView::Job { overview, .. } => {
                let restarted = self
                    .old
                    .job_start_time
                    .is_some_and(|t| t != overview.start_time);
                self.status.job_start_time = Some(overview.start_time);
                if restarted && self.old.lifecycle == Lifecycle::Running {
                    self.jobmanager_replaced("the JobManager restarted the job");
                }
                match overview.state {
                    JobState::Running
                        if self.o.workloads_ready
                            || self.status.lifecycle == Lifecycle::Running =>
                    {
                        if self.status.lifecycle != Lifecycle::Running {
                            self.status.consecutive_failures = 0;
                        }
                        self.status.lifecycle = Lifecycle::Running;
                    }
                    JobState::Running
                    | JobState::Created
                    | JobState::Restarting
                    | JobState::Failing => {
                        if self.status.lifecycle != Lifecycle::Running {
                            self.status.lifecycle = Lifecycle::Deploying;
                        }
                        self.busy();
                    }
                    // Terminal states are handled by `steady` before we get here.
                    JobState::Failed | JobState::Canceled | JobState::Finished => {}
                }
            }
            JobManagerView::NoJob | JobManagerView::Unreachable(_) => {
                if matches!(
                    self.status.lifecycle,
                    Lifecycle::Running | Lifecycle::Savepointing
                ) {
                    let reason = match &self.o.jobmanager {
                        JobManagerView::Unreachable(e) => format!("JobManager unreachable: {e}"),
                        _ => "JobManager does not know the job".to_string(),
                    };
                    self.jobmanager_replaced(&reason);
                }
                self.status.lifecycle = Lifecycle::Deploying;
                self.busy();
            }
        }
        // Once the new run has its own checkpoint, later JobManager restarts use `latest`.
        let mut deployed = deployed.clone();
        if deployed.pinned_restore
            && self
                .status
                .last_checkpoint
                .as_ref()
                .and_then(|c| c.time)
                .is_some_and(|t| t > deployed.deployed_at)
        {
            deployed.pinned_restore = false;
            self.status.deployed = Some(deployed.clone());
        }
        self.keep_running(desired, &deployed);
        if self.status.lifecycle == Lifecycle::Running {
            self.maybe_savepoint(desired);
        }
    }

    /// The JobManager came back (or will): it restores from the latest completed checkpoint.
    /// Show which one, verified in storage when possible.
    fn jobmanager_replaced(&mut self, why: &str) {
        match &self.o.latest_checkpoint {
            Some(latest) => {
                self.status.restore_point = Some(RestorePoint {
                    kind: RestoreKind::Checkpoint,
                    path: Some(latest.path.clone()),
                    verified: latest.verified,
                });
                self.event(
                    true,
                    "JobManagerLost",
                    EventAction::ObserveJob,
                    format!(
                        "{why}; restoring from checkpoint {} at {}",
                        latest.id, latest.path
                    ),
                );
            }
            None => self.event(
                true,
                "JobManagerLost",
                EventAction::ObserveJob,
                format!("{why}; no completed checkpoint yet"),
            ),
        }
    }

    pub(super) fn suspend_without_job(&mut self) {
        if let Some(latest) = &self.o.latest_checkpoint {
            self.status.restore_point = Some(RestorePoint {
                kind: RestoreKind::Checkpoint,
                path: Some(latest.path.clone()),
                verified: latest.verified,
            });
        }
        self.status.operation = None;
        self.status.lifecycle = Lifecycle::Suspended;
        self.actions.push(Action::RemoveWorkloads);
        self.requeue = None;
    }

    fn resume(&mut self, desired: &Desired) {
        // Resume from the suspend savepoint, or a newer checkpoint if one exists.
        let restore = match (&self.status.restore_point, &self.o.latest_checkpoint) {
            (
                Some(
                    point @ RestorePoint {
                        kind: RestoreKind::Savepoint,
                        ..
                    },
                ),
                _,
            ) => point.clone(),
            (_, Some(latest)) => RestorePoint {
                kind: RestoreKind::Checkpoint,
                path: Some(latest.path.clone()),
                verified: latest.verified,
            },
            (Some(point), None) => point.clone(),
            (None, None) => RestorePoint {
                kind: RestoreKind::Empty,
                path: None,
                verified: false,
            },
        };
        let nonce = self.status.deployed.as_ref().map_or(0, |d| d.restart_nonce);
        self.event(
            false,
            "Resuming",
            EventAction::Resume,
            format!("resuming from {}", describe(&restore)),
        );
        self.deploy(desired, restore, nonce);
    }

    /// A FAILED job, or one CANCELED by someone else: restart from the latest checkpoint with
    /// backoff. (FINISHED is not a failure: see [`Planner::finished`].)
    pub(super) fn failed(&mut self, desired: &Desired, spec_changed: bool) {
        if self.status.lifecycle != Lifecycle::Failed {
            let why = self
                .overview()
                .and_then(|o| o.last_failure.as_deref())
                .map(one_line)
                .unwrap_or_else(|| {
                    format!(
                        "job is {}",
                        self.status.job_state.as_deref().unwrap_or("gone")
                    )
                });
            self.event(true, "JobFailed", EventAction::ObserveJob, why.clone());
            self.status.last_failure = Some(FailureRecord {
                message: why,
                time: self.o.now,
            });
            self.status.lifecycle = Lifecycle::Failed;
            self.status.failed_at = Some(self.o.now);
        }
        let failed_at = *self.status.failed_at.get_or_insert(self.o.now);
        let exponent = self.status.consecutive_failures.min(10);
        let backoff = (RESTART_BACKOFF_BASE_MS << exponent).min(RESTART_BACKOFF_MAX_MS);
        let due = failed_at + backoff;
        // A spec change is the user's fix: do not make them wait for the backoff.
        if self.o.now < due && !spec_changed {
            let cause = self
                .status
                .last_failure
                .as_ref()
                .map_or_else(String::new, |f| format!(": {}", f.message));
            self.degraded = Some((
                "JobFailed",
                format!(
                    "the job failed{cause}; restarting in {}s",
                    (due - self.o.now + 999) / 1000
                ),
            ));
            self.requeue = Some(Duration::from_millis(
                u64::try_from(due - self.o.now).unwrap_or(0),
            ));
            return;
        }
        let Some(restore) = self.restore_from_latest(desired) else {
            return;
        };
        let nonce = self.status.deployed.as_ref().map_or(0, |d| d.restart_nonce) + 1;
        self.status.operator_restarts += 1;
        self.status.consecutive_failures += 1;
        self.status.failed_at = None;
        self.event(
            false,
            "Restarting",
            EventAction::Restart,
            format!(
                "restart {} from {}",
                self.status.operator_restarts,
                describe(&restore)
            ),
        );
        self.deploy(desired, restore, nonce);
    }

    /// The newest safe restore point, or `None` (with Degraded set) when only empty state is
    /// left although the job once had checkpoints.
    fn restore_from_latest(&mut self, desired: &Desired) -> Option<RestorePoint> {
        if let Some(latest) = &self.o.latest_checkpoint {
            return Some(RestorePoint {
                kind: RestoreKind::Checkpoint,
                path: Some(latest.path.clone()),
                verified: latest.verified,
            });
        }
        if let Some(point @ RestorePoint { path: Some(_), .. }) = &self.status.restore_point {
            return Some(point.clone());
        }
        if desired.checkpointing && self.status.last_checkpoint.is_some() {
            let message = format!(
                "the job completed checkpoint {} but none is found under {}; refusing to start from empty state",
                self.status.last_checkpoint.as_ref().map_or(0, |c| c.id),
                desired
                    .checkpoint_storage
                    .as_deref()
                    .unwrap_or("checkpoint storage")
            );
            if self.old_degraded_reason() != Some("NoCheckpointToRestore") {
                self.event(
                    true,
                    "NoCheckpointToRestore",
                    EventAction::Restore,
                    message.clone(),
                );
            }
            self.degraded = Some(("NoCheckpointToRestore", message));
            self.requeue = Some(Duration::from_secs(60));
            return None;
        }
        if desired.checkpointing {
            self.event(
                true,
                "StartingWithoutState",
                EventAction::Restore,
                "the job never completed a checkpoint; starting with empty state",
            );
        }
        Some(RestorePoint {
            kind: RestoreKind::Empty,
            path: None,
            verified: false,
        })
    }

    pub(super) fn redeploy_from_latest(
        &mut self,
        operation: Operation,
        desired: &Desired,
        lifecycle: Lifecycle,
    ) {
        let Some(restore) = self.restore_from_latest(desired) else {
            self.status.operation = None;
            self.status.lifecycle = Lifecycle::Failed;
            return;
        };
        self.event(
            false,
            "Redeploying",
            EventAction::Redeploy,
            format!(
                "{:?}: redeploying from {}",
                operation.kind,
                describe(&restore)
            ),
        );
        self.redeploy(operation, desired, restore, lifecycle);
    }

    pub(super) fn redeploy(
        &mut self,
        mut operation: Operation,
        desired: &Desired,
        restore: RestorePoint,
        lifecycle: Lifecycle,
    ) {
        operation.step = OperationStep::Redeploying;
        let nonce = self.status.deployed.as_ref().map_or(0, |d| d.restart_nonce);
        self.deploy(desired, restore, nonce);
        self.status.operation = Some(operation);
        self.status.lifecycle = lifecycle;
    }
}
