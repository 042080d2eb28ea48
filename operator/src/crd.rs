//! The StreamJob API: what users write (`spec`) and what the operator reports (`status`).
//!
//! Field names are the public contract. Doc comments become the CRD's schema descriptions and
//! the `x-kubernetes-validations` rules reject bad specs at apply time; `crdgen` writes the
//! result to `crds/streamjob.yaml`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use weir_spec::{
    CheckpointConfig, KafkaOptions, MalformedRecordPolicy, RestartStrategy, S3Options, StateConfig,
};

/// A stateful stream-processing job: one JobManager, `ceil(parallelism / slots)` TaskManagers,
/// and the lifecycle (savepoints, upgrades, rescales, restores) around them.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    namespaced,
    shortname = "sj",
    status = "StreamJobStatus",
    doc = "A Weir stream-processing job with Flink-grade fault tolerance.",
    printcolumn = r#"{"name": "Parallelism", "type": "integer", "jsonPath": ".spec.parallelism"}"#,
    printcolumn = r#"{"name": "State", "type": "string", "jsonPath": ".status.lifecycle"}"#,
    printcolumn = r#"{"name": "Job", "type": "string", "jsonPath": ".status.jobState"}"#,
    printcolumn = r#"{"name": "Restarts", "type": "integer", "jsonPath": ".status.jobManagerRestarts"}"#,
    printcolumn = r#"{"name": "Last Checkpoint", "type": "integer", "jsonPath": ".status.lastCheckpoint.id"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name": "Operator Restarts", "type": "integer", "jsonPath": ".status.operatorRestarts", "priority": 1}"#,
    printcolumn = r#"{"name": "Last Failure", "type": "string", "jsonPath": ".status.lastFailure.message", "priority": 1}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kubernetes_formats)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.parallelism <= (has(self.job.maxParallelism) ? self.job.maxParallelism : 128)",
        "message": "parallelism must not exceed job.maxParallelism (default 128)",
        "fieldPath": ".parallelism",
    },
    {
        "rule": "(has(self.upgradeMode) && self.upgradeMode == 'stateless') || has(self.job.checkpointing)",
        "message": "job.checkpointing.storage is required unless upgradeMode is stateless",
        "fieldPath": ".job",
    },
]))]
pub struct StreamJobSpec {
    /// Container image holding `weir-worker`, e.g. `ghcr.io/weir-dev/weir:0.1.0`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pull policy for the image (`Always`, `IfNotPresent` or `Never`); the Kubernetes default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The schema of the policy itself: an `Option` would add `null` to the enum, which the
    // API server does not accept as a value; an absent field already means "not set".
    #[schemars(with = "ImagePullPolicy")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// The job to run: the worker's job document without the parts the operator owns
    /// (`jobId`, `parallelism`, `restore`).
    pub job: JobTemplate,
    /// Number of parallel subtasks. Editing it rescales the job through a savepoint.
    #[schemars(range(min = 1))]
    pub parallelism: u32,
    /// TaskManager pods: slots per pod, resources, pod template overrides.
    #[serde(default)]
    pub task_manager: TaskManagerSpec,
    /// The JobManager pod.
    #[serde(default)]
    pub job_manager: JobManagerSpec,
    /// How state is carried across upgrades and rescales.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// `running` or `suspended`. Suspending takes a savepoint and removes the pods; resuming
    /// restores from that savepoint.
    #[serde(default)]
    pub state: DesiredState,
    /// Change this to any new value to take a savepoint now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    /// Savepoint or checkpoint directory (the one holding `_metadata`) to start from on the
    /// first deployment only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint_path: Option<String>,
    /// Where savepoints go, how often they are taken and how many are kept.
    #[serde(default)]
    pub savepoints: SavepointPolicy,
    /// Secret with the S3 credentials the pods and checkpoint storage use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_credentials_secret: Option<S3CredentialsSecret>,
    /// Service account of the JobManager and TaskManager pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// What happens to running state when the StreamJob is deleted.
    #[serde(default)]
    pub on_delete: DeletionPolicy,
}

/// The worker's job document minus the fields the operator manages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// Name of a job registered in the image, e.g. `url-count`. Immutable: checkpoints of one
    /// job cannot be restored into another.
    #[schemars(length(min = 1))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "job.name is immutable; create a new StreamJob"}
    ]))]
    pub name: String,
    /// The job's own arguments; the job validates them when it starts.
    #[serde(default = "empty_object")]
    #[schemars(schema_with = "free_form_object")]
    pub args: serde_json::Value,
    /// Number of key groups: the upper bound for parallelism. Immutable, because keyed state
    /// is partitioned by it.
    #[serde(default = "default_max_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "job.maxParallelism is immutable (keyed state is partitioned by it)"}
    ]))]
    pub max_parallelism: u32,
    /// Checkpoint interval, mode and storage. Required unless `upgradeMode` is `stateless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointConfig>,
    /// How the JobManager restarts failed tasks before it declares the job FAILED.
    #[serde(default)]
    #[schemars(schema_with = "restart_strategy_schema")]
    pub restart_strategy: RestartStrategy,
    /// `fail` or `skip` records the job cannot parse.
    #[serde(default)]
    pub malformed_records: MalformedRecordPolicy,
    /// Connection settings for `s3://` locations (endpoint, region, path style).
    #[serde(default)]
    pub s3: S3Options,
    /// Connection settings for the job's Kafka sources and sinks. Secret properties name
    /// environment variables (`propertiesFromEnv`), which the pod templates supply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaOptions>,
    /// Local state backend settings.
    #[serde(default)]
    pub state: StateConfig,
    /// The distributed cache: name -> `s3://bucket/key` (or a `file:///path` present in every
    /// worker pod). Each pod downloads every file once per attempt before its tasks start;
    /// functions open them by name. A missing file fails the job, naming the entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cached_files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// How state survives a redeploy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Redeploy with empty state.
    Stateless,
    /// Stop with a savepoint and restore from it. If the savepoint fails the old job keeps running.
    #[default]
    Savepoint,
    /// Cancel and restore from the latest completed checkpoint in storage.
    LastState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DesiredState {
    #[default]
    Running,
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerSpec {
    /// Task slots per TaskManager pod; the operator runs `ceil(parallelism / slots)` pods.
    #[serde(default = "default_slots")]
    #[schemars(range(min = 1, max = 1024))]
    pub slots: u32,
    /// CPU and memory of the TaskManager container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Merged into the generated pod: labels, annotations, node selector, tolerations,
    /// affinity, priority class, image pull secrets, extra volumes and sidecar containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub pod_template: Option<PodTemplateSpec>,
}

impl Default for TaskManagerSpec {
    fn default() -> Self {
        TaskManagerSpec {
            slots: default_slots(),
            resources: None,
            pod_template: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobManagerSpec {
    /// CPU and memory of the JobManager container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Merged into the generated pod, like `taskManager.podTemplate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub pod_template: Option<PodTemplateSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointPolicy {
    /// Base directory for savepoints; defaults to `<checkpointing.storage>/savepoints`. The
    /// JobManager writes savepoints only under checkpoint storage and the directory it was
    /// deployed with, so a new directory outside checkpoint storage applies from the next
    /// deployment: a savepoint into it before then is refused (an upgrade is blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// Take a savepoint this often while running (e.g. `6h`, at least `1s`); off when absent.
    /// Counted from the latest of: the last periodic attempt, the completion of the newest
    /// savepoint the operator took (of any kind), and the rollout of the running pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Savepoints kept; older ones the operator took are deleted from storage.
    #[serde(default = "default_savepoints_retained")]
    #[schemars(range(min = 1))]
    pub retained: u32,
    /// How long a savepoint may take before the operator gives up (e.g. `10m`).
    #[serde(default = "default_savepoint_timeout")]
    pub timeout: String,
}

impl Default for SavepointPolicy {
    fn default() -> Self {
        SavepointPolicy {
            directory: None,
            interval: None,
            retained: default_savepoints_retained(),
            timeout: default_savepoint_timeout(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    /// Name of a Secret in the StreamJob's namespace.
    pub name: String,
    /// Key holding the access key id.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionPolicy {
    /// Take a final stop-with-savepoint before the pods go away. With a finalizer (this or
    /// `storage: delete`) the StreamJob stays until its JobManager and TaskManager pods are
    /// gone, so nothing writes to storage after it.
    #[serde(default)]
    pub savepoint: bool,
    /// `retain` (default) keeps checkpoints and savepoints in storage; `delete` removes the
    /// job's checkpoint directory and the savepoints the operator took, except the final one.
    #[serde(default)]
    pub storage: StorageCleanup,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StorageCleanup {
    #[default]
    Retain,
    Delete,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_max_parallelism() -> u32 {
    weir_spec::DEFAULT_MAX_PARALLELISM
}
fn default_slots() -> u32 {
    1
}
fn default_savepoints_retained() -> u32 {
    5
}
fn default_savepoint_timeout() -> String {
    "10m".into()
}
fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// An object whose fields Kubernetes keeps as written; the job or the builders validate them.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `RestartStrategy` is internally tagged, which a structural schema cannot express as a
/// `oneOf`; this flattens the variants into one object and checks the tag with CEL.
fn restart_strategy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let duration = json!({"type": "string"});
    let with_description = |schema: &serde_json::Value, text: &str| {
        let mut schema = schema.clone();
        schema["description"] = json!(text);
        schema
    };
    schemars::json_schema!({
        "type": "object",
        "description": "`none`, `fixed-delay` {attempts, delay}, `exponential-delay` {initialDelay, maxDelay, multiplier, maxAttempts} or `failure-rate` {maxFailuresPerInterval, interval, delay}.",
        "required": ["type"],
        "properties": {
            "type": {
                "type": "string",
                "enum": ["none", "fixed-delay", "exponential-delay", "failure-rate"],
                "description": "`none` fails the job on the first task failure; the others restart it from the latest completed checkpoint, with the fields below.",
            },
            "attempts": {
                "type": "integer", "format": "int64", "minimum": 0,
                "description": "fixed-delay: restarts before the job is declared FAILED.",
            },
            "delay": with_description(&duration, "fixed-delay and failure-rate: pause before each restart, e.g. `10s`."),
            "initialDelay": with_description(&duration, "exponential-delay: pause before the first restart, e.g. `1s`."),
            "maxDelay": with_description(&duration, "exponential-delay: the pause grows up to this, e.g. `1m`."),
            "multiplier": {
                "type": "number", "minimum": 1,
                "description": "exponential-delay: factor the pause grows by per restart (default 2).",
            },
            "maxAttempts": {
                "type": "integer", "format": "int64", "minimum": 0,
                "description": "exponential-delay: restarts before the job is declared FAILED; unlimited when absent.",
            },
            "maxFailuresPerInterval": {
                "type": "integer", "format": "int64", "minimum": 1,
                "description": "failure-rate: failures tolerated within `interval` before the job is declared FAILED.",
            },
            "interval": with_description(&duration, "failure-rate: the window failures are counted in, e.g. `5m`."),
        },
        "x-kubernetes-validations": [
            {"rule": "self.type != 'fixed-delay' || (has(self.attempts) && has(self.delay))",
             "message": "fixed-delay needs attempts and delay"},
            {"rule": "self.type != 'exponential-delay' || (has(self.initialDelay) && has(self.maxDelay))",
             "message": "exponential-delay needs initialDelay and maxDelay"},
            {"rule": "self.type != 'failure-rate' || (has(self.maxFailuresPerInterval) && has(self.interval) && has(self.delay))",
             "message": "failure-rate needs maxFailuresPerInterval, interval and delay"},
        ],
    })
}

/// Where the job is in its life. One function, [`crate::lifecycle::plan`], moves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Lifecycle {
    /// Pods are (re)starting; waiting for the job to report RUNNING.
    #[default]
    Deploying,
    Running,
    /// A savepoint is being taken while the job keeps running.
    Savepointing,
    /// Stopping the old job or deploying the new one after an image or job change.
    Upgrading,
    /// Stopping the old job or deploying the new one after a parallelism change.
    Rescaling,
    /// No pods; state kept in the last savepoint or checkpoint.
    Suspended,
    /// The job failed and has not been restarted yet (backoff, or no safe restore point).
    Failed,
    /// The job reached FINISHED: its bounded input was fully processed. Not a failure, and
    /// never restarted. As Flink's operator does for a finished application, the JobManager
    /// Deployment and Service stay, so its REST API keeps serving the final state and
    /// checkpoints (its pod reports not ready: readiness means RUNNING; the Service publishes
    /// it anyway); the TaskManager Deployment is removed (nothing runs on it, and without
    /// TaskManagers a replaced JobManager pod cannot run the job a second time). A later spec
    /// change (image, parallelism, ...) redeploys from the newest state in storage, the job's
    /// final checkpoint (empty state in `stateless` mode); `state: suspended` removes the
    /// JobManager too.
    Finished,
}

impl Lifecycle {
    pub const ALL: [Lifecycle; 8] = [
        Lifecycle::Deploying,
        Lifecycle::Running,
        Lifecycle::Savepointing,
        Lifecycle::Upgrading,
        Lifecycle::Rescaling,
        Lifecycle::Suspended,
        Lifecycle::Failed,
        Lifecycle::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Deploying => "Deploying",
            Lifecycle::Running => "Running",
            Lifecycle::Savepointing => "Savepointing",
            Lifecycle::Upgrading => "Upgrading",
            Lifecycle::Rescaling => "Rescaling",
            Lifecycle::Suspended => "Suspended",
            Lifecycle::Failed => "Failed",
            Lifecycle::Finished => "Finished",
        }
    }
}

/// What the operator observes and decides; written before every non-idempotent step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kubernetes_formats)]
pub struct StreamJobStatus {
    /// Where the job is in its life: `Deploying`, `Running`, `Savepointing`, `Upgrading`,
    /// `Rescaling`, `Suspended`, `Failed` or `Finished`.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Job id on the JobManager and in storage: `<namespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Job state reported by the JobManager (CREATED, RUNNING, FAILED, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_state: Option<String>,
    /// Start time of the job the JobManager runs (ms since epoch); a change means it restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_start_time: Option<i64>,
    /// What the pods currently run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedSpec>,
    /// The newest completed checkpoint the JobManager reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRecord>,
    /// The newest savepoint the operator took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointRecord>,
    /// Savepoints the operator took, newest last; trimmed to `savepoints.retained`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoint_history: Vec<SavepointRecord>,
    /// Where the running (or next) deployment takes its state from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<RestorePoint>,
    /// The savepoint nonce last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint_nonce: Option<i64>,
    /// Restarts the JobManager made itself after task failures (the job's `restartStrategy`),
    /// as it reports them for the job it runs now; a new JobManager pod counts from 0 again.
    /// The pods stay up through these restarts, so only this count and `lastFailure` show them.
    #[serde(default)]
    pub job_manager_restarts: u32,
    /// Redeploys of a FAILED (or cancelled) job by the operator: new pods, restored from the
    /// latest checkpoint, after a backoff. Not the JobManager's own restarts
    /// (`jobManagerRestarts`).
    #[serde(default, alias = "restarts")]
    pub operator_restarts: u32,
    /// The latest job failure the operator saw: the JobManager's `lastFailure` when it
    /// restarted the job or declared it FAILED. `Degraded` is `JobRestarting` while it is
    /// recent (5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,
    /// Failures since the last healthy run; drives the restart backoff.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When `lifecycle` last changed (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_since: Option<i64>,
    /// Last periodic savepoint attempt (ms since epoch): the next one is due `savepoints.interval`
    /// after it (or after the newest savepoint's completion, if later), so a failing one is not
    /// retried at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_periodic_attempt: Option<i64>,
    /// When the job was seen FAILED (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<i64>,
    /// The step in progress. Recorded before it starts so a restarted operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// A spec the operator refused to roll out, and why; cleared by the next spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedUpgrade>,
    /// `Ready`, `Progressing`, `Degraded`, `UpgradeBlocked` and, once the operator has read
    /// checkpoint storage, `StorageAccess`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A failure of the job, as the JobManager described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// The JobManager's `lastFailure`, on one line.
    pub message: String,
    /// When the operator first saw it (ms since epoch): the JobManager reports no time, so
    /// this is at most one reconcile interval (30s) late.
    pub time: i64,
}

/// Fingerprints of the spec the pods run, to tell upgrades from rescales.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployedSpec {
    /// Hash of everything but parallelism and slots.
    pub spec_hash: String,
    /// Parallelism of the deployed job.
    pub parallelism: u32,
    /// Task slots per TaskManager pod of the deployment.
    pub slots: u32,
    /// When it was rolled out (ms since epoch).
    pub deployed_at: i64,
    /// Bumped to force new pods with an unchanged spec (restart after FAILED).
    #[serde(default)]
    pub restart_nonce: u32,
    /// The job document still names the restore point explicitly; switched to `latest` once
    /// the new run completed a checkpoint, so a JobManager restart never goes back in time.
    #[serde(default)]
    pub pinned_restore: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRecord {
    /// Checkpoint id (`chk-<id>`).
    pub id: u64,
    /// Directory holding `_metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Completion time, ms since epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRecord {
    /// Directory holding `_metadata`.
    pub path: String,
    /// Completion time, ms since epoch.
    pub time: i64,
    /// Why it was taken: `upgrade`, `rescale`, `suspend`, `manual`, `periodic` or `delete`.
    pub reason: OperationKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreKind {
    Savepoint,
    Checkpoint,
    /// Empty state, chosen on purpose (stateless mode or nothing was ever checkpointed).
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestorePoint {
    /// `savepoint`, `checkpoint` or `empty`.
    pub kind: RestoreKind,
    /// Directory holding `_metadata`; absent for empty state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// True when the operator saw `_metadata` in storage. False when it could not read
    /// storage (the `StorageAccess` condition says why) and trusted the JobManager's report.
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    Upgrade,
    Rescale,
    Suspend,
    Manual,
    Periodic,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OperationStep {
    /// Savepoint or stop-with-savepoint requested (trigger id once the JobManager answered).
    Savepointing,
    /// Job cancelled (last-state); waiting for it to stop.
    Cancelling,
    /// New pods rolled out; waiting for the job to run.
    Redeploying,
    /// The StreamJob is being deleted: its Deployments were removed (the job cancelled if it
    /// still ran); waiting until their pods are gone, so nothing writes to storage any more,
    /// before storage is cleaned up and the finalizer removed.
    RemovingPods,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// What is being done: `upgrade`, `rescale`, `suspend`, `manual`, `periodic` or `delete`.
    pub kind: OperationKind,
    /// How far it got: `savepointing`, `cancelling`, `redeploying` or (deletion only)
    /// `removing-pods`.
    pub step: OperationStep,
    /// True for stop-with-savepoint, false for a savepoint that leaves the job running.
    #[serde(default)]
    pub stop: bool,
    /// The savepoint directory, fixed before the request so it can be found after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_directory: Option<String>,
    /// Trigger id returned by the JobManager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
    /// ms since epoch.
    pub started_at: i64,
    /// Spec hash being rolled out (upgrade and rescale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hash: Option<String>,
    /// Nonce being served (manual savepoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
    /// Why the JobManager refused the savepoint request (400, e.g. a target outside the
    /// directories it may write): the savepoint failed without starting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedUpgrade {
    /// `<spec hash>/<parallelism>/<slots>/<upgradeMode>/<savepoint timeout ms>/<savepoint
    /// directory>` that was refused; a spec that changes any of them is tried again.
    pub target: String,
    /// `SavepointFailed`, `SavepointTimeout` or `NoSavepointDirectory`.
    pub reason: String,
    /// What failed, for a human.
    pub message: String,
}

/// A standard Kubernetes condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing`, `Degraded`, `UpgradeBlocked` or `StorageAccess`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why, in one PascalCase word (e.g. `JobRestarting`).
    pub reason: String,
    /// Details for a human; may be empty.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";
pub const CONDITION_UPGRADE_BLOCKED: &str = "UpgradeBlocked";
/// Whether the operator could read checkpoint storage (list checkpoints, check `_metadata`).
/// `False` explains why `restorePoint.verified` is false.
pub const CONDITION_STORAGE_ACCESS: &str = "StorageAccess";

/// Makes integer schemas use formats the API server knows. schemars writes `uint32` and
/// `uint64` for unsigned fields, which the API server does not recognize (`kubectl apply`
/// warns `unrecognized format "uint32"`); the `minimum: 0` beside them already says
/// "unsigned", and every `u32` fits an `int64` (as do the `u64` values here: checkpoint ids
/// and byte counts), so unsigned formats become `int64`, the small ones `int32`. Applied to
/// the spec and status types; nested types are inlined into them, so they are covered too.
pub(crate) fn kubernetes_formats(schema: &mut schemars::Schema) {
    schemars::transform::transform_subschemas(&mut kubernetes_formats, schema);
    let known = match schema.get("format").and_then(serde_json::Value::as_str) {
        Some("int8" | "int16" | "uint8" | "uint16") => "int32",
        Some("uint32" | "uint64" | "uint" | "int") => "int64",
        _ => return,
    };
    schema.insert("format".into(), json!(known));
}

/// The CRD as YAML, exactly as `crdgen` prints it and `crds/streamjob.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&StreamJob::crd())
}

/// Label set shared by every child object; also the selector.
pub fn selector_labels(name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = job_labels(name);
    labels.insert(
        "app.kubernetes.io/component".to_string(),
        component.to_string(),
    );
    labels
}

/// The labels every pod of StreamJob `name` carries, whatever its component.
pub fn job_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "weir".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Fixtures that read like the scenario: `StreamJob::test().with_parallelism(4)`.
    use super::*;
    use std::time::Duration;

    impl StreamJob {
        pub fn test() -> StreamJob {
            let mut job = StreamJob::new(
                "clicks",
                StreamJobSpec {
                    image: "weir:1".into(),
                    image_pull_policy: None,
                    job: JobTemplate {
                        name: "url-count".into(),
                        args: json!({"input": "s3://in/clicks"}),
                        max_parallelism: 128,
                        checkpointing: Some(CheckpointConfig {
                            interval: Duration::from_secs(10),
                            mode: Default::default(),
                            storage: "s3://bucket/checkpoints".into(),
                            retained: 3,
                            timeout: Duration::from_secs(600),
                            tolerable_failures: 0,
                            savepoint_directories: Vec::new(),
                        }),
                        restart_strategy: RestartStrategy::default(),
                        malformed_records: MalformedRecordPolicy::Fail,
                        s3: S3Options::default(),
                        kafka: None,
                        state: StateConfig::default(),
                        cached_files: BTreeMap::new(),
                    },
                    parallelism: 2,
                    task_manager: TaskManagerSpec::default(),
                    job_manager: JobManagerSpec::default(),
                    upgrade_mode: UpgradeMode::Savepoint,
                    state: DesiredState::Running,
                    savepoint_trigger_nonce: None,
                    initial_savepoint_path: None,
                    savepoints: SavepointPolicy::default(),
                    s3_credentials_secret: None,
                    service_account_name: None,
                    on_delete: DeletionPolicy::default(),
                },
            );
            job.metadata.namespace = Some("streams".into());
            job.metadata.uid = Some("uid-1".into());
            job.metadata.generation = Some(1);
            job
        }

        pub fn with_parallelism(mut self, parallelism: u32) -> Self {
            self.spec.parallelism = parallelism;
            self
        }

        pub fn with_image(mut self, image: &str) -> Self {
            self.spec.image = image.into();
            self
        }

        pub fn with_cached_file(mut self, name: &str, uri: &str) -> Self {
            self.spec.job.cached_files.insert(name.into(), uri.into());
            self
        }

        pub fn with_slots(mut self, slots: u32) -> Self {
            self.spec.task_manager.slots = slots;
            self
        }

        pub fn with_upgrade_mode(mut self, mode: UpgradeMode) -> Self {
            self.spec.upgrade_mode = mode;
            self
        }

        pub fn suspended(mut self) -> Self {
            self.spec.state = DesiredState::Suspended;
            self
        }

        pub fn with_nonce(mut self, nonce: i64) -> Self {
            self.spec.savepoint_trigger_nonce = Some(nonce);
            self
        }

        pub fn without_checkpointing(mut self) -> Self {
            self.spec.job.checkpointing = None;
            self
        }

        pub fn with_savepoint_timeout(mut self, timeout: &str) -> Self {
            self.spec.savepoints.timeout = timeout.into();
            self
        }

        /// Take a final savepoint when the StreamJob is deleted.
        pub fn with_final_savepoint(mut self) -> Self {
            self.spec.on_delete.savepoint = true;
            self
        }

        /// Delete checkpoints and savepoints when the StreamJob is deleted.
        pub fn deleting_storage_on_delete(mut self) -> Self {
            self.spec.on_delete.storage = StorageCleanup::Delete;
            self
        }

        pub fn with_status(mut self, status: StreamJobStatus) -> Self {
            self.status = Some(status);
            self
        }
    }
}

#[cfg(test)]
mod tests {

    /// This crate's directory, read at run time (the compile-time value goes stale when one
    /// target directory serves several clones of the repository).
    fn manifest_dir() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
    }
    use super::*;
    use kube::CustomResourceExt;

    fn checked_in_crd() -> String {
        let path = manifest_dir().join("../crds/streamjob.yaml");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    #[test]
    fn checked_in_crd_matches_the_code() {
        let generated = crd_yaml().expect("CRD serializes");
        assert!(
            checked_in_crd() == generated,
            "crds/streamjob.yaml is stale; regenerate it with `cargo run -p weir-operator --bin crdgen > crds/streamjob.yaml`"
        );
    }

    #[test]
    fn crd_names_and_columns() {
        let crd = StreamJob::crd();
        assert_eq!(crd.spec.group, "weir.dev");
        assert_eq!(crd.spec.names.short_names, Some(vec!["sj".to_string()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Parallelism",
                "State",
                "Job",
                "Restarts",
                "Last Checkpoint",
                "Age",
                "Operator Restarts",
                "Last Failure"
            ]
        );
    }

    /// The CRD's `openAPIV3Schema` as JSON.
    fn openapi_schema() -> serde_json::Value {
        let schema = StreamJob::crd().spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.clone())
            .expect("schema");
        serde_json::to_value(schema).expect("serializes")
    }

    /// Every schema in `schema` with its path, depth first.
    fn each_schema<'a>(
        schema: &'a serde_json::Value,
        path: String,
        visit: &mut dyn FnMut(&str, &'a serde_json::Value),
    ) {
        visit(&path, schema);
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                each_schema(property, format!("{path}.{name}"), visit);
            }
        }
        if schema["items"].is_object() {
            each_schema(&schema["items"], format!("{path}[]"), visit);
        }
        if schema["additionalProperties"].is_object() {
            each_schema(
                &schema["additionalProperties"],
                format!("{path}{{}}"),
                visit,
            );
        }
        for combinator in ["allOf", "anyOf", "oneOf"] {
            for (i, branch) in schema[combinator]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                each_schema(branch, format!("{path}/{combinator}[{i}]"), visit);
            }
        }
    }

    /// Formats the API server validates or accepts without `unrecognized format` warnings.
    const KNOWN_FORMATS: [&str; 30] = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "binary",
        "password",
        "date",
        "date-time",
        "datetime",
        "duration",
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
    ];

    #[test]
    fn schema_has_only_formats_the_api_server_knows_and_no_null_enum_values() {
        let schema = openapi_schema();
        let mut problems = Vec::new();
        each_schema(&schema, String::new(), &mut |path, schema| {
            if let Some(format) = schema["format"].as_str()
                && !KNOWN_FORMATS.contains(&format)
            {
                problems.push(format!("{path}: format {format}"));
            }
            if schema["enum"]
                .as_array()
                .is_some_and(|values| values.contains(&serde_json::Value::Null))
            {
                problems.push(format!("{path}: null in enum"));
            }
        });
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn unsigned_fields_keep_their_minimum() {
        let schema = openapi_schema();
        let parallelism = &schema["properties"]["spec"]["properties"]["parallelism"];
        assert_eq!(parallelism["format"], "int64");
        assert_eq!(parallelism["minimum"], 1.0);
        let retained = &schema["properties"]["spec"]["properties"]["job"]["properties"]["checkpointing"]
            ["properties"]["retained"];
        assert_eq!(retained["format"], "int64");
        assert_eq!(retained["minimum"], 0.0);
    }

    #[test]
    fn every_field_has_a_description() {
        let schema = openapi_schema();
        let mut missing = Vec::new();
        each_schema(&schema, String::new(), &mut |path, schema| {
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                let described = property["description"]
                    .as_str()
                    .is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(format!("{path}.{name}"));
                }
            }
        });
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:#?}"
        );
    }

    fn validate(job: &StreamJob) -> Result<(), String> {
        kube::core::cel::validate_cel(job).map_err(|e| format!("{e:?}"))
    }

    fn validate_update(job: &StreamJob, old: &StreamJob) -> Result<(), String> {
        kube::core::cel::validate_cel_update(job, old).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn valid_spec_passes_cel_rules() {
        validate(&StreamJob::test()).expect("valid");
    }

    #[test]
    fn parallelism_above_max_parallelism_is_rejected_at_apply() {
        let job = StreamJob::test().with_parallelism(129);
        let err = validate(&job).expect_err("rejected");
        assert!(err.contains("must not exceed job.maxParallelism"), "{err}");
    }

    #[test]
    fn checkpoint_storage_is_required_unless_stateless() {
        let job = StreamJob::test().without_checkpointing();
        let err = validate(&job).expect_err("rejected");
        assert!(err.contains("checkpointing.storage is required"), "{err}");
        let stateless = StreamJob::test()
            .without_checkpointing()
            .with_upgrade_mode(UpgradeMode::Stateless);
        validate(&stateless).expect("stateless needs no storage");
    }

    #[test]
    fn job_name_and_max_parallelism_are_immutable() {
        let old = StreamJob::test();
        let mut renamed = old.clone();
        renamed.spec.job.name = "other".into();
        let err = validate_update(&renamed, &old).expect_err("rejected");
        assert!(err.contains("job.name is immutable"), "{err}");

        let mut regrouped = old.clone();
        regrouped.spec.job.max_parallelism = 256;
        let err = validate_update(&regrouped, &old).expect_err("rejected");
        assert!(err.contains("maxParallelism is immutable"), "{err}");

        validate_update(&old.clone().with_parallelism(8), &old).expect("rescale allowed");
    }

    #[test]
    fn restart_strategy_variant_fields_are_checked() {
        let mut value = serde_json::to_value(StreamJob::test()).expect("serializes");
        value["spec"]["job"]["restartStrategy"] = json!({"type": "fixed-delay", "attempts": 3});
        let schema = openapi_schema();
        let err = kube::core::cel::Validator::new()
            .validate(&schema, &value, None)
            .expect_err("rejected");
        assert!(
            format!("{err:?}").contains("fixed-delay needs attempts and delay"),
            "{err:?}"
        );
    }

    #[test]
    fn readme_example_is_a_valid_stream_job() {
        let path = manifest_dir().join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let example = readme
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README has a yaml example");
        let job: StreamJob = serde_yaml_ng::from_str(example).expect("example parses");
        validate(&job).expect("example passes the CEL rules");
        crate::lifecycle::Desired::from_job(&job).expect("example passes the operator's checks");
    }

    #[test]
    fn spec_round_trips_through_json_with_weir_spec_types() {
        let job = StreamJob::test();
        let text = serde_json::to_string(&job).expect("serializes");
        let back: StreamJob = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.spec, job.spec);
        assert!(
            text.contains(r#""restartStrategy":{"type":"exponential-delay""#),
            "{text}"
        );
    }
}
