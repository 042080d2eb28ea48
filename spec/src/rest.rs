//! The JobManager REST API's bodies (`docs/jobmanager-api.yaml`), shared by the server in the
//! worker and the client in the operator so the two cannot drift. Times are ms since epoch.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Created,
    Running,
    Restarting,
    Failing,
    Failed,
    Canceled,
    Finished,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "CREATED",
            JobState::Running => "RUNNING",
            JobState::Restarting => "RESTARTING",
            JobState::Failing => "FAILING",
            JobState::Failed => "FAILED",
            JobState::Canceled => "CANCELED",
            JobState::Finished => "FINISHED",
        }
    }

    /// The job will not run again without a new deployment.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Canceled | JobState::Finished
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobOverview {
    pub job_id: String,
    /// The registered job name from the document.
    pub name: String,
    pub state: JobState,
    pub parallelism: u32,
    pub start_time: i64,
    /// Restarts by the job's restart strategy.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationStatus {
    InProgress,
    Completed,
    Failed,
}

/// One checkpoint or savepoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointInfo {
    pub id: u64,
    pub status: OperationStatus,
    /// A savepoint rather than a periodic checkpoint.
    #[serde(default)]
    pub savepoint: bool,
    pub trigger_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Bytes of keyed state the checkpoint restores from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_size: Option<u64>,
    /// Bytes this checkpoint stored itself: less than `stateSize` for an incremental
    /// checkpoint, which refers to files earlier checkpoints stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointed_size: Option<u64>,
    /// The directory holding `_metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointCounts {
    pub completed: u64,
    pub failed: u64,
    pub in_progress: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStats {
    pub counts: CheckpointCounts,
    /// The latest completed checkpoint (savepoints excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<CheckpointInfo>,
    /// Newest first.
    #[serde(default)]
    pub history: Vec<CheckpointInfo>,
}

/// Body of `POST .../savepoints` and `POST .../stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavepointRequest {
    /// `s3://bucket/prefix` or `file:///path`; `_metadata` goes directly in it.
    pub target_directory: String,
}

/// Answer of a savepoint or stop trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerResponse {
    pub trigger_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    pub status: OperationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}
