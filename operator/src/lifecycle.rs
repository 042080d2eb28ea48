//! The one place that decides what happens to a StreamJob: [`plan`] maps what the operator
//! observed to the next status and a list of actions. It takes no client and reads no clock
//! (`now` is observed), so every transition is a plain unit test.
//!
//! Safety rules it keeps:
//! - a savepoint that fails or times out blocks the upgrade (`UpgradeBlocked`); the old job keeps
//!   running and is never redeployed empty;
//! - every step that cannot be repeated (stop-with-savepoint, cancel, redeploy) is recorded in
//!   `status.operation` before it is taken, with its savepoint directory fixed up front, so a
//!   restarted operator resumes it instead of starting a second one;
//! - a job is restarted from empty state only when it never completed a checkpoint, and then
//!   with a Warning event;
//! - a job that FINISHED (bounded input) is done, not failed: it is never restarted.

use std::time::Duration;

use weir_spec::RestoreSource;

use crate::build::{job_document, job_id, spec_hash};
use crate::crd::{
    BlockedUpgrade, CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY,
    CONDITION_STORAGE_ACCESS, CONDITION_UPGRADE_BLOCKED, CheckpointRecord, Condition, DeployedSpec,
    DesiredState, FailureRecord, Lifecycle, Operation, OperationKind, OperationStep, RestoreKind,
    RestorePoint, SavepointRecord, StorageCleanup, StreamJob, StreamJobStatus, UpgradeMode,
};
use crate::jobmanager::{CheckpointInfo, JobOverview, JobState, OperationStatus, SavepointStatus};

/// Poll interval while something is in flight.
pub const REQUEUE_BUSY: Duration = Duration::from_secs(5);
/// Poll interval while the job runs steadily (checkpoint and state refresh).
pub const REQUEUE_STEADY: Duration = Duration::from_secs(30);
/// The soonest a reconcile asks to come back for something due (a periodic savepoint).
pub const REQUEUE_MIN: Duration = Duration::from_secs(1);
/// How long a deletion waits for the job's pods beyond their termination grace period before
/// it cleans up anyway (a lost node can keep a pod terminating for ever).
pub const POD_REMOVAL_SLACK_MS: i64 = 2 * 60 * 1000;
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_PERIOD_S: i64 = 30;
const RESTART_BACKOFF_BASE_MS: i64 = 10_000;
const RESTART_BACKOFF_MAX_MS: i64 = 300_000;
/// A job failure this recent keeps `Degraded=True` (`JobRestarting`): a job that the JobManager
/// restarts every half minute never looks healthy, and one that has run this long without a
/// failure is healthy again.
pub const RECENT_FAILURE_MS: i64 = 5 * 60 * 1000;

/// What the JobManager said, if anything.
// One value per reconcile: its size does not matter, boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum JobManagerView {
    /// No answer (pod gone, restarting, network).
    Unreachable(String),
    /// The JobManager answers but does not know our job id (yet).
    NoJob,
    Job {
        overview: JobOverview,
        /// Latest completed checkpoint it reported.
        latest_checkpoint: Option<CheckpointInfo>,
    },
}

/// The newest completed checkpoint the operator could find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestCheckpoint {
    pub id: u64,
    pub path: String,
    /// Seen in storage (`_metadata` exists), not only reported by the JobManager.
    pub verified: bool,
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone)]
pub struct Observed {
    pub job: StreamJob,
    /// ms since epoch.
    pub now: i64,
    pub jobmanager: JobManagerView,
    /// JobManager and TaskManager Deployments exist, are rolled out and available.
    pub workloads_ready: bool,
    /// Answer to polling `status.operation.triggerId`, when there is one and the JobManager answered.
    pub savepoint: Option<SavepointStatus>,
    /// Whether `<status.operation.targetDirectory>/_metadata` exists (`None`: unknown).
    pub target_savepoint_complete: Option<bool>,
    pub latest_checkpoint: Option<LatestCheckpoint>,
    /// Whether the operator could read checkpoint storage in this reconcile.
    pub storage: StorageProbe,
    /// The TaskManager Deployment exists (it is removed once the job FINISHED).
    pub taskmanagers_exist: bool,
    /// What is left of the JobManager and TaskManager pods.
    pub job_pods: JobPods,
}

/// What is left of a job's pods, as its JobManager and TaskManager Deployments show it (the
/// operator does not read pods). The operator removes them with foreground propagation, so a
/// Deployment is gone only once its ReplicaSets and every pod of them are gone from the API
/// server, terminating pods included: a terminating JobManager or TaskManager can still write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobPods {
    /// JobManager and TaskManager Deployments that still exist, being deleted or not.
    pub deployments: u32,
    /// Pods they report, running or terminating (`replicas + terminatingReplicas`).
    pub pods: u32,
}

impl JobPods {
    /// No process of the job is left.
    pub fn gone(self) -> bool {
        self.deployments == 0
    }
}

/// The outcome of the operator's own reads of checkpoint storage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StorageProbe {
    /// Nothing to read (no checkpoint storage, or a scheme the operator cannot list).
    #[default]
    NotChecked,
    Readable,
    /// The error, on one line.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    /// PascalCase, e.g. `UpgradeBlocked`.
    pub reason: &'static str,
    /// What the operator did (or was doing) when it noticed.
    pub action: EventAction,
    pub message: String,
}

/// The `action` of an Event: what the operator did about the StreamJob. With the reason and
/// the note it tells events apart (see `controller::events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventAction {
    Validate,
    Deploy,
    Redeploy,
    Restart,
    Restore,
    Resume,
    Upgrade,
    Rescale,
    Suspend,
    TriggerSavepoint,
    StopWithSavepoint,
    Cancel,
    Delete,
    CleanUp,
    /// Read the job's state from the JobManager (failures, restarts, end of the job).
    ObserveJob,
    /// Moved the lifecycle from one state to another.
    Transition,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Validate => "Validate",
            EventAction::Deploy => "Deploy",
            EventAction::Redeploy => "Redeploy",
            EventAction::Restart => "Restart",
            EventAction::Restore => "Restore",
            EventAction::Resume => "Resume",
            EventAction::Upgrade => "Upgrade",
            EventAction::Rescale => "Rescale",
            EventAction::Suspend => "Suspend",
            EventAction::TriggerSavepoint => "TriggerSavepoint",
            EventAction::StopWithSavepoint => "StopWithSavepoint",
            EventAction::Cancel => "Cancel",
            EventAction::Delete => "Delete",
            EventAction::CleanUp => "CleanUp",
            EventAction::ObserveJob => "ObserveJob",
            EventAction::Transition => "Transition",
        }
    }
}

impl From<OperationKind> for EventAction {
    fn from(kind: OperationKind) -> Self {
        match kind {
            OperationKind::Upgrade => EventAction::Upgrade,
            OperationKind::Rescale => EventAction::Rescale,
            OperationKind::Suspend => EventAction::Suspend,
            OperationKind::Manual | OperationKind::Periodic => EventAction::TriggerSavepoint,
            OperationKind::Delete => EventAction::Delete,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddFinalizer,
    RemoveFinalizer,
    /// Server-side apply ConfigMap, Service and both Deployments for the current spec.
    Deploy {
        restore: RestoreSource,
        restart_nonce: u32,
    },
    /// Delete the JobManager and TaskManager Deployments (suspend); ConfigMap and Service stay.
    RemoveWorkloads,
    /// Delete the TaskManager Deployment only (the job FINISHED; the JobManager keeps serving).
    RemoveTaskManagers,
    /// Savepoint that leaves the job running; the trigger id goes to `status.operation`.
    TriggerSavepoint {
        target_directory: String,
    },
    /// Stop-with-savepoint; the trigger id goes to `status.operation`.
    StopWithSavepoint {
        target_directory: String,
    },
    CancelJob,
    DeleteStorage {
        path: String,
    },
    Event(Event),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Written before any action runs.
    pub status: StreamJobStatus,
    pub actions: Vec<Action>,
    /// `None`: wait for a change of the StreamJob or its children.
    pub requeue_after: Option<Duration>,
}

impl Plan {
    /// True when the plan touches running pods or the job (used by tests and metrics).
    pub fn touches_workloads(&self) -> bool {
        self.actions.iter().any(|a| {
            matches!(
                a,
                Action::Deploy { .. }
                    | Action::RemoveWorkloads
                    | Action::RemoveTaskManagers
                    | Action::TriggerSavepoint { .. }
                    | Action::StopWithSavepoint { .. }
                    | Action::CancelJob
            )
        })
    }
}

/// The parts of the spec the lifecycle needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub job_id: String,
    pub spec_hash: String,
    pub parallelism: u32,
    pub slots: u32,
    /// Base directory for savepoints, if the spec gives one.
    pub savepoint_base: Option<String>,
    pub savepoint_timeout_ms: i64,
    pub savepoint_interval_ms: Option<i64>,
    pub checkpointing: bool,
    pub checkpoint_storage: Option<String>,
}

impl Desired {
    /// Checks the spec the way the worker will, so a bad spec stops here with a clear message.
    pub fn from_job(job: &StreamJob) -> Result<Desired, String> {
        let namespace = job
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = job.metadata.name.clone().unwrap_or_default();
        let spec = &job.spec;
        job_document(&namespace, &name, spec, RestoreSource::Latest)
            .validate()
            .map_err(|e| e.to_string())?;
        if spec.image.trim().is_empty() {
            return Err("image: must not be empty".into());
        }
        if spec.task_manager.slots == 0 {
            return Err("taskManager.slots: must be at least 1".into());
        }
        if spec.job.checkpointing.is_none() && spec.upgrade_mode != UpgradeMode::Stateless {
            return Err("job.checkpointing: required unless upgradeMode is stateless".into());
        }
        let parse = |field: &str, text: &str| -> Result<i64, String> {
            let duration = humantime::parse_duration(text).map_err(|e| format!("{field}: {e}"))?;
            i64::try_from(duration.as_millis()).map_err(|_| format!("{field}: too long"))
        };
        let savepoint_timeout_ms = parse("savepoints.timeout", &spec.savepoints.timeout)?;
        let savepoint_interval_ms = match &spec.savepoints.interval {
            Some(text) => match parse("savepoints.interval", text)? {
                ms if ms < 1_000 => return Err("savepoints.interval: must be at least 1s".into()),
                ms => Some(ms),
            },
            None => None,
        };
        if let Some(path) = &spec.initial_savepoint_path {
            weir_spec::check_storage_uri(path).map_err(|e| format!("initialSavepointPath: {e}"))?;
        }
        let checkpoint_storage = spec.job.checkpointing.as_ref().map(|c| c.storage.clone());
        let savepoint_base = spec.savepoints.directory.clone().or_else(|| {
            checkpoint_storage
                .as_ref()
                .map(|s| weir_spec::layout::default_savepoint_base(s))
        });
        if let Some(base) = &savepoint_base {
            weir_spec::check_storage_uri(base).map_err(|e| format!("savepoints.directory: {e}"))?;
        }
        Ok(Desired {
            job_id: job_id(&namespace, &name),
            spec_hash: spec_hash(spec).map_err(|e| e.to_string())?,
            parallelism: spec.parallelism,
            slots: spec.task_manager.slots,
            savepoint_base,
            savepoint_timeout_ms,
            savepoint_interval_ms,
            checkpointing: spec.job.checkpointing.is_some(),
            checkpoint_storage,
        })
    }

    /// Identifies a rollout target, including the mode and the savepoint settings, so
    /// changing upgradeMode or fixing the savepoint directory or timeout retries a blocked
    /// upgrade (neither is part of the spec hash: they do not change the pods).
    fn target(&self, mode: UpgradeMode) -> String {
        format!(
            "{}/{}/{}/{mode:?}/{}/{}",
            self.spec_hash,
            self.parallelism,
            self.slots,
            self.savepoint_timeout_ms,
            self.savepoint_base.as_deref().unwrap_or("")
        )
    }
}

/// Whether the StreamJob needs the finalizer: only for cleanup outside Kubernetes.
pub fn needs_finalizer(job: &StreamJob) -> bool {
    job.spec.on_delete.savepoint || job.spec.on_delete.storage == StorageCleanup::Delete
}

/// How long a deletion waits for the job's pods to be gone: the longest termination grace
/// period of its pods plus [`POD_REMOVAL_SLACK_MS`].
pub fn pod_removal_timeout_ms(job: &StreamJob) -> i64 {
    let grace = |template: &Option<k8s_openapi::api::core::v1::PodTemplateSpec>| {
        template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_PERIOD_S)
    };
    let seconds = grace(&job.spec.job_manager.pod_template)
        .max(grace(&job.spec.task_manager.pod_template))
        .max(0);
    seconds
        .saturating_mul(1000)
        .saturating_add(POD_REMOVAL_SLACK_MS)
}

/// Decides the next status and actions. Pure.
pub fn plan(observed: &Observed) -> Plan {
    let mut planner = Planner::new(observed);
    planner.run();
    planner.finish()
}

struct Planner<'a> {
    o: &'a Observed,
    job: &'a StreamJob,
    old: StreamJobStatus,
    status: StreamJobStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    degraded: Option<(&'static str, String)>,
}

impl<'a> Planner<'a> {
    fn new(o: &'a Observed) -> Self {
        let old = o.job.status.clone().unwrap_or_default();
        Planner {
            o,
            job: &o.job,
            status: old.clone(),
            old,
            actions: Vec::new(),
            requeue: Some(REQUEUE_STEADY),
            degraded: None,
        }
    }

    fn event(
        &mut self,
        warning: bool,
        reason: &'static str,
        action: EventAction,
        message: impl Into<String>,
    ) {
        self.actions.push(Action::Event(Event {
            warning,
            reason,
            action,
            message: message.into(),
        }));
    }

    fn busy(&mut self) {
        self.requeue = Some(REQUEUE_BUSY);
    }

    /// Come back when something is due `in_ms` from now, if that is sooner than planned (and
    /// never sooner than [`REQUEUE_MIN`]).
    fn requeue_within(&mut self, in_ms: i64) {
        let due = Duration::from_millis(u64::try_from(in_ms).unwrap_or(0)).max(REQUEUE_MIN);
        self.requeue = Some(self.requeue.map_or(due, |planned| planned.min(due)));
    }

    fn overview(&self) -> Option<&'a JobOverview> {
        match &self.o.jobmanager {
            JobManagerView::Job { overview, .. } => Some(overview),
            _ => None,
        }
    }

    fn job_state(&self) -> Option<JobState> {
        self.overview().map(|o| o.state)
    }

    fn run(&mut self) {
        self.record_observations();
        if self.job.metadata.deletion_timestamp.is_some() {
            return self.on_delete();
        }
        let has_finalizer = self.has_finalizer();
        if needs_finalizer(self.job) && !has_finalizer {
            self.actions.push(Action::AddFinalizer);
        } else if !needs_finalizer(self.job) && has_finalizer {
            self.actions.push(Action::RemoveFinalizer);
        }
        let desired = match Desired::from_job(self.job) {
            Ok(desired) => desired,
            Err(message) => {
                // Nothing that runs is touched; the condition and event say what to fix.
                if self.old_degraded_reason() != Some("InvalidSpec") {
                    self.event(true, "InvalidSpec", EventAction::Validate, message.clone());
                }
                self.degraded = Some(("InvalidSpec", message));
                self.requeue = None;
                return;
            }
        };
        self.status.job_id = Some(desired.job_id.clone());
        if let Some(operation) = self.status.operation.clone() {
            return self.continue_operation(operation, &desired);
        }
        self.steady(&desired);
    }

    fn has_finalizer(&self) -> bool {
        self.job
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == crate::FINALIZER)
    }

    fn old_degraded_reason(&self) -> Option<&str> {
        self.old
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_DEGRADED && c.status == "True")
            .map(|c| c.reason.as_str())
    }

    /// Copies what the JobManager reports into status.
    fn record_observations(&mut self) {
        self.status.observed_generation = self.job.metadata.generation;
        self.record_storage_access();
        let JobManagerView::Job {
            overview,
            latest_checkpoint,
        } = &self.o.jobmanager
        else {
            return;
        };
        self.status.job_state = Some(overview.state.as_str().to_string());
        self.record_job_manager_restarts(overview);
        if let Some(info) = latest_checkpoint
            && info.status == OperationStatus::Completed
            && self
                .status
                .last_checkpoint
                .as_ref()
                .is_none_or(|c| c.id != info.id)
        {
            self.status.last_checkpoint = Some(CheckpointRecord {
                id: info.id,
                path: info.external_path.clone(),
                time: info.complete_time,
            });
        }
    }

    /// The JobManager restarts a failing job by itself: the pods stay up and the job is soon
    /// RUNNING again, so only its restart count and `lastFailure` tell. A count above the
    /// last one seen for the same run (same start time) means new failures.
    fn record_job_manager_restarts(&mut self, overview: &JobOverview) {
        let same_run = self.old.job_start_time == Some(overview.start_time);
        // Right after a redeploy the old JobManager may still answer for its run; its count
        // belongs to the pods that are going away.
        let previous_run = !same_run
            && self
                .status
                .deployed
                .as_ref()
                .is_some_and(|d| overview.start_time < d.deployed_at);
        if previous_run {
            return;
        }
        let seen = if same_run {
            self.old.job_manager_restarts
        } else {
            0
        };
        self.status.job_manager_restarts = overview.restarts;
        if overview.restarts <= seen {
            return;
        }
        let message = one_line(
            overview
                .last_failure
                .as_deref()
                .unwrap_or("the JobManager gave no reason"),
        );
        self.status.last_failure = Some(FailureRecord {
            message: message.clone(),
            time: self.o.now,
        });
        // No restart count in the note: the same failure again is the same event, counted.
        self.event(
            true,
            "JobRestarting",
            EventAction::ObserveJob,
            format!("the JobManager restarted the job after a failure: {message}"),
        );
    }

    /// `StorageAccess` says whether the operator could read checkpoint storage, and so why
    /// `restorePoint.verified` may be false. Left as it was when storage was not read.
    fn record_storage_access(&mut self) {
        let (readable, reason, message) = match &self.o.storage {
            StorageProbe::NotChecked => return,
            StorageProbe::Readable => (true, "StorageReadable", String::new()),
            StorageProbe::Failed(error) => (
                false,
                "StorageUnreadable",
                format!(
                    "the operator cannot read checkpoint storage, so it trusts the checkpoint the JobManager reports (restorePoint.verified: false): {error}"
                ),
            ),
        };
        set_condition(
            &mut self.status,
            self.o.now,
            self.job.metadata.generation,
            CONDITION_STORAGE_ACCESS,
            readable,
            reason,
            message,
        );
    }

    // ---- steady state: no operation in flight ----

    fn steady(&mut self, desired: &Desired) {
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
                self.keep_running(&deployed);
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
    fn finished(&mut self, desired: &Desired, deployed: &DeployedSpec, spec_changed: bool) {
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
    fn keep_running(&mut self, deployed: &DeployedSpec) {
        // While an upgrade is blocked the spec no longer describes the pods, so do not apply.
        if self.status.blocked.is_none() {
            self.actions.push(Action::Deploy {
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
        self.keep_running(&deployed);
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

    fn maybe_savepoint(&mut self, desired: &Desired) {
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

    fn savepoint_directory(&self, desired: &Desired) -> Option<String> {
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
    fn start_stop(&mut self, kind: OperationKind, desired: &Desired) {
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

    fn suspend_without_job(&mut self) {
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
    fn failed(&mut self, desired: &Desired, spec_changed: bool) {
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

    fn redeploy_from_latest(
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

    fn redeploy(
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

    // ---- an operation is in flight ----

    fn continue_operation(&mut self, operation: Operation, desired: &Desired) {
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

    fn poll_savepoint(&mut self, operation: Operation, desired: &Desired) {
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
        self.keep_running(&deployed);
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

    // ---- deletion ----

    /// Deleting a StreamJob that holds the finalizer, in order, each step in `status.operation`
    /// (kind `delete`) so a restarted operator resumes it:
    /// 1. a final stop-with-savepoint, when `onDelete.savepoint` and the job runs;
    /// 2. the Deployments removed (a job still running cancelled first), then a wait until their
    ///    pods are gone: a terminating JobManager or TaskManager can still complete a
    ///    checkpoint, which would land in storage just deleted. The wait is bounded
    ///    ([`pod_removal_timeout_ms`]), then cleanup goes on with a Warning `PodsNotGone`;
    /// 3. storage deleted (`onDelete.storage: delete`) and the finalizer removed.
    fn on_delete(&mut self) {
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

    // ---- conditions and transition events ----

    /// `Degraded` message while the job fails and is restarted, by the JobManager (it keeps
    /// the pods) or by the operator: a recent failure, or the job RESTARTING right now.
    fn restarting_message(&self) -> Option<String> {
        if matches!(
            self.status.lifecycle,
            Lifecycle::Failed | Lifecycle::Finished | Lifecycle::Suspended
        ) {
            return None;
        }
        let recent = self
            .status
            .last_failure
            .as_ref()
            .filter(|f| self.o.now - f.time < RECENT_FAILURE_MS);
        let restarting_now = matches!(
            self.job_state(),
            Some(JobState::Restarting | JobState::Failing)
        );
        if recent.is_none() && !restarting_now {
            return None;
        }
        let counts = format!(
            "{} JobManager restarts, {} operator restarts",
            self.status.job_manager_restarts, self.status.operator_restarts
        );
        Some(match recent {
            Some(failure) => format!(
                "the job failed at {} ({counts}): {}; clears after {} minutes without a failure",
                rfc3339(failure.time),
                failure.message,
                RECENT_FAILURE_MS / 60_000
            ),
            None => format!("the job is restarting ({counts})"),
        })
    }

    fn finish(mut self) -> Plan {
        let lifecycle = self.status.lifecycle;
        if self.o.job.status.is_none() {
            // A new StreamJob: its first event (`Deploying`) says where it starts.
            self.status.lifecycle_since = Some(self.o.now);
        } else if lifecycle != self.old.lifecycle {
            self.status.lifecycle_since = Some(self.o.now);
            self.event(
                false,
                "LifecycleChanged",
                EventAction::Transition,
                format!("{} -> {}", self.old.lifecycle.as_str(), lifecycle.as_str()),
            );
        }
        let now = self.o.now;
        let generation = self.job.metadata.generation;
        let running =
            lifecycle == Lifecycle::Running && self.status.job_state.as_deref() == Some("RUNNING");
        let finished = lifecycle == Lifecycle::Finished;
        let (ready_reason, ready_message) = if running {
            ("Running", String::new())
        } else if finished {
            (
                "Finished",
                "the job finished; nothing runs until the spec changes".to_string(),
            )
        } else {
            (
                lifecycle.as_str(),
                format!(
                    "job is {}",
                    self.status.job_state.as_deref().unwrap_or("unknown")
                ),
            )
        };
        set_condition(
            &mut self.status,
            now,
            generation,
            CONDITION_READY,
            running,
            ready_reason,
            ready_message,
        );
        let progressing = self.status.operation.is_some()
            || matches!(
                lifecycle,
                Lifecycle::Deploying
                    | Lifecycle::Upgrading
                    | Lifecycle::Rescaling
                    | Lifecycle::Savepointing
            );
        let progress_message = self
            .status
            .operation
            .as_ref()
            .map(|op| format!("{:?}: {:?}", op.kind, op.step))
            .unwrap_or_else(|| {
                if finished {
                    "the job finished".to_string()
                } else {
                    String::new()
                }
            });
        set_condition(
            &mut self.status,
            now,
            generation,
            CONDITION_PROGRESSING,
            progressing,
            lifecycle.as_str(),
            progress_message,
        );
        let restarting = self.restarting_message();
        let (degraded, reason, message) = match (self.degraded.take(), restarting) {
            (Some((reason, message)), _) => (true, reason, message),
            (None, Some(message)) => (true, "JobRestarting", message),
            (None, None) if finished => (
                false,
                "Finished",
                "the job finished; that is not a failure".to_string(),
            ),
            (None, None) => (false, "AsExpected", String::new()),
        };
        set_condition(
            &mut self.status,
            now,
            generation,
            CONDITION_DEGRADED,
            degraded,
            reason,
            message,
        );
        let (blocked, reason, message) = match &self.status.blocked {
            Some(b) => (true, b.reason.clone(), b.message.clone()),
            None => (false, "NotBlocked".to_string(), String::new()),
        };
        set_condition(
            &mut self.status,
            now,
            generation,
            CONDITION_UPGRADE_BLOCKED,
            blocked,
            &reason,
            message,
        );
        Plan {
            status: self.status,
            actions: self.actions,
            requeue_after: self.requeue,
        }
    }
}

fn describe(restore: &RestorePoint) -> String {
    match (&restore.kind, &restore.path) {
        (RestoreKind::Empty, _) | (_, None) => "empty state".to_string(),
        (kind, Some(path)) => {
            let verified = if restore.verified {
                "verified"
            } else {
                "unverified"
            };
            format!("{kind:?} {path} ({verified})").to_lowercase()
        }
    }
}

fn rfc3339(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Longest failure or storage error kept in status and Events (an Event note holds 1 kB).
pub const MAX_MESSAGE_CHARS: usize = 900;

/// `text` on one line (line breaks and runs of whitespace become one space), cut to
/// [`MAX_MESSAGE_CHARS`]: stack traces and multi-line SDK errors stay readable in
/// `kubectl describe` and in one log line.
pub fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(MAX_MESSAGE_CHARS) {
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// Updates one condition; `lastTransitionTime` moves only when the status flips.
fn set_condition(
    status: &mut StreamJobStatus,
    now: i64,
    generation: Option<i64>,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
) {
    let value = if value { "True" } else { "False" };
    let time = rfc3339(now);
    let condition = Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: time,
        observed_generation: generation,
    };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let transition = if existing.status == value {
                existing.last_transition_time.clone()
            } else {
                condition.last_transition_time.clone()
            };
            *existing = Condition {
                last_transition_time: transition,
                ..condition
            };
        }
        None => status.conditions.push(condition),
    }
}

#[cfg(test)]
mod tests;
