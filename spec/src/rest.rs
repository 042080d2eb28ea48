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

/// The API's paths, once for both sides: route templates for the server (axum's `{name}`
/// captures) and [`paths::for_job`] / [`paths::savepoint`] to fill them in for a client.
pub mod paths {
    pub const LIVE: &str = "/v1/health/live";
    pub const READY: &str = "/v1/health/ready";
    pub const METRICS: &str = "/metrics";
    pub const JOBS: &str = "/v1/jobs";
    pub const JOB: &str = "/v1/jobs/{job_id}";
    pub const CHECKPOINTS: &str = "/v1/jobs/{job_id}/checkpoints";
    pub const SAVEPOINTS: &str = "/v1/jobs/{job_id}/savepoints";
    pub const SAVEPOINT: &str = "/v1/jobs/{job_id}/savepoints/{trigger_id}";
    pub const STOP: &str = "/v1/jobs/{job_id}/stop";
    pub const CANCEL: &str = "/v1/jobs/{job_id}/cancel";

    /// `template` (one of the job paths above) for job `job_id`.
    pub fn for_job(template: &str, job_id: &str) -> String {
        template.replace("{job_id}", job_id)
    }

    /// The status path of savepoint trigger `trigger_id`.
    pub fn savepoint(job_id: &str, trigger_id: &str) -> String {
        for_job(SAVEPOINT, job_id).replace("{trigger_id}", trigger_id)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn templates_fill_in_every_capture() {
            assert_eq!(
                for_job(CHECKPOINTS, "ns-job"),
                "/v1/jobs/ns-job/checkpoints"
            );
            assert_eq!(savepoint("ns-job", "t1"), "/v1/jobs/ns-job/savepoints/t1");
            for template in [JOB, CHECKPOINTS, SAVEPOINTS, STOP, CANCEL] {
                assert!(!for_job(template, "j").contains('{'), "{template}");
            }
        }
    }
}
