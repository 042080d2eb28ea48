//! Deletion of a StreamJob that holds the finalizer.

use super::{Action, Desired, EventAction, Planner, pod_removal_timeout_ms};
use crate::crd::{Operation, OperationKind, OperationStep, StorageCleanup};
use crate::jobmanager::JobState;

impl Planner<'_> {
    /// Deleting a StreamJob that holds the finalizer, in order, each step in `status.operation`
    /// (kind `delete`) so a restarted operator resumes it:
    /// 1. a final stop-with-savepoint, when `onDelete.savepoint` and the job runs;
    /// 2. the Deployments removed (a job still running cancelled first), then a wait until their
    ///    pods are gone: a terminating JobManager or TaskManager can still complete a
    ///    checkpoint, which would land in storage just deleted. The wait is bounded
    ///    ([`pod_removal_timeout_ms`]), then cleanup goes on with a Warning `PodsNotGone`;
    /// 3. storage deleted (`onDelete.storage: delete`) and the finalizer removed.
    pub(super) fn on_delete(&mut self) {
        self.requeue = None;
        if !self.has_finalizer() {
            return;
        }
        let desired = Desired::from_job(self.job).ok();
        let operation = self
            .status
            .operation
            .clone()
            .filter(|op| op.kind == OperationKind::Delete);
        match (operation, &desired) {
            (Some(op), _) if op.step == OperationStep::RemovingPods => {
                return self.poll_pod_removal(&op, desired.as_ref());
            }
            (Some(op), Some(desired)) if op.step == OperationStep::Savepointing => {
                self.busy();
                self.poll_savepoint(op, desired);
                if self.status.operation.is_some() {
                    return;
                }
            }
            (None, Some(desired))
                if self.job.spec.on_delete.savepoint
                    && self.job_state() == Some(JobState::Running) =>
            {
                if let Some(target) = self.savepoint_directory(desired) {
                    self.status.operation = Some(Operation {
                        kind: OperationKind::Delete,
                        step: OperationStep::Savepointing,
                        stop: true,
                        target_directory: Some(target.clone()),
                        trigger_id: None,
                        started_at: self.o.now,
                        target_hash: None,
                        nonce: None,
                        refused: None,
                    });
                    self.event(
                        false,
                        "FinalSavepoint",
                        EventAction::Delete,
                        format!("stopping with a final savepoint to {target}"),
                    );
                    self.actions.push(Action::StopWithSavepoint {
                        target_directory: target,
                    });
                    self.busy();
                    return;
                }
            }
            _ => {}
        }
        self.remove_pods(desired.as_ref());
    }

    /// What happens once the pods are gone, for Events.
    fn after_pods(&self) -> &'static str {
        if self.job.spec.on_delete.storage == StorageCleanup::Delete {
            "storage is deleted and the finalizer removed"
        } else {
            "the finalizer is removed (storage is retained)"
        }
    }

    /// Step 2 of a deletion: nothing of the job may run when storage is cleaned up.
    fn remove_pods(&mut self, desired: Option<&Desired>) {
        if self.o.job_pods.gone() {
            return self.finish_delete(desired);
        }
        self.status.operation = Some(Operation {
            kind: OperationKind::Delete,
            step: OperationStep::RemovingPods,
            stop: false,
            target_directory: None,
            trigger_id: None,
            started_at: self.o.now,
            target_hash: None,
            nonce: None,
            refused: None,
        });
        let cancel = if self.job_is_active() {
            "cancelling the job and "
        } else {
            ""
        };
        self.event(
            false,
            "RemovingPods",
            EventAction::Delete,
            format!(
                "{cancel}removing the JobManager and TaskManagers ({} pods); once they are gone {}",
                self.o.job_pods.pods,
                self.after_pods()
            ),
        );
        self.stop_pods();
        self.busy();
    }

    /// The JobManager reports the job and it is not over yet. (A completed final
    /// stop-with-savepoint ended it, even if the JobManager said RUNNING a moment before.)
    fn job_is_active(&self) -> bool {
        let stopped_with_savepoint = self
            .status
            .last_savepoint
            .as_ref()
            .is_some_and(|s| s.reason == OperationKind::Delete);
        !stopped_with_savepoint && self.job_state().is_some_and(|s| !s.is_terminal())
    }

    /// Idempotent, so repeated while the pods linger (an earlier request may have failed).
    fn stop_pods(&mut self) {
        self.actions.push(Action::RemoveWorkloads);
        if self.job_is_active() {
            // Stops checkpointing now; the pods may take their grace period to go.
            self.actions.push(Action::CancelJob);
        }
    }

    fn poll_pod_removal(&mut self, operation: &Operation, desired: Option<&Desired>) {
        if self.o.job_pods.gone() {
            return self.finish_delete(desired);
        }
        let waited = self.o.now - operation.started_at;
        if waited >= pod_removal_timeout_ms(self.job) {
            self.event(
                true,
                "PodsNotGone",
                EventAction::Delete,
                format!(
                    "the job's pods are not gone after {}s ({} Deployments, {} pods left); {} anyway, and what still runs may write to storage",
                    waited / 1000,
                    self.o.job_pods.deployments,
                    self.o.job_pods.pods,
                    self.after_pods()
                ),
            );
            return self.finish_delete(desired);
        }
        self.stop_pods();
        self.busy();
    }

    /// Step 3 of a deletion: nothing of the job runs any more.
    fn finish_delete(&mut self, desired: Option<&Desired>) {
        self.status.operation = None;
        self.requeue = None;
        if self.job.spec.on_delete.storage == StorageCleanup::Delete
            && let Some(desired) = desired
        {
            if let Some(storage) = &desired.checkpoint_storage {
                self.actions.push(Action::DeleteStorage {
                    path: weir_spec::layout::job_dir(storage, &desired.job_id),
                });
            }
            // The final savepoint was asked for so the job can be recreated from it: keep it.
            let savepoints: Vec<_> = self
                .status
                .savepoint_history
                .iter()
                .filter(|s| s.reason != OperationKind::Delete)
                .map(|s| s.path.clone())
                .collect();
            for path in savepoints {
                self.actions.push(Action::DeleteStorage { path });
            }
        }
        // The finalizer goes first: once it is gone the object is, and a reconcile of a stale
        // copy stops at the NotFound instead of announcing the cleanup twice.
        self.actions.push(Action::RemoveFinalizer);
        self.event(
            false,
            "Deleted",
            EventAction::Delete,
            "cleanup done; finalizer removed",
        );
    }
}
