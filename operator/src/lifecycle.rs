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

mod conditions;
mod delete;
mod operation;
mod steady;

use std::time::Duration;

use weir_spec::RestoreSource;

use crate::build::{Owner, Workload, job_document, spec_hash};
use crate::crd::{
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, CONDITION_STORAGE_ACCESS,
    CONDITION_UPGRADE_BLOCKED, CheckpointRecord, FailureRecord, Lifecycle, OperationKind,
    StorageCleanup, StreamJob, StreamJobStatus, UpgradeMode,
};
use crate::jobmanager::{CheckpointInfo, JobOverview, JobState, OperationStatus, SavepointStatus};

use self::conditions::set_condition;
pub use self::conditions::{MAX_MESSAGE_CHARS, one_line};

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

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    AddFinalizer,
    RemoveFinalizer,
    /// Server-side apply ConfigMap, Service and both Deployments for the current spec.
    Deploy {
        /// The validated spec the children are rendered from.
        desired: Box<Desired>,
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

/// The validated model of a StreamJob: the parts of the spec the lifecycle decides on, and
/// the ones its pods are rendered from ([`crate::build::children`]). Only [`Desired::from_job`]
/// makes one, so nothing is deployed from a spec that did not pass its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The StreamJob object: names, namespace, uid for owner references.
    pub owner: Owner,
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
    pub workload: Workload,
    /// Private, so no other module can make a `Desired` but through [`Desired::from_job`].
    _validated: Validated,
}

/// The mark of a [`Desired`] that [`Desired::from_job`] made.
#[derive(Debug, Clone, PartialEq)]
struct Validated;

impl Desired {
    /// Checks the spec the way the worker will, so a bad spec stops here with a clear message.
    pub fn from_job(job: &StreamJob) -> Result<Desired, String> {
        let owner = Owner::of(job);
        let spec = &job.spec;
        let document = job_document(&owner.namespace, &owner.name, spec, RestoreSource::Latest);
        document.validate().map_err(|e| e.to_string())?;
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
            job_id: owner.job_id(),
            spec_hash: spec_hash(spec).map_err(|e| e.to_string())?,
            parallelism: spec.parallelism,
            slots: spec.task_manager.slots,
            savepoint_base,
            savepoint_timeout_ms,
            savepoint_interval_ms,
            checkpointing: spec.job.checkpointing.is_some(),
            checkpoint_storage,
            workload: Workload::new(spec, document),
            owner,
            _validated: Validated,
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

    // ---- conditions and transition events ----

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

#[cfg(test)]
mod tests;
