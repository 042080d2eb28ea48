//! Client for the JobManager REST API (`docs/jobmanager-api.yaml`): job state, checkpoint
//! statistics, savepoints, stop-with-savepoint and cancel. Every call has a timeout, so a hung
//! JobManager cannot stall a reconcile.

use std::time::Duration;

use weir_spec::layout::ports;
use weir_spec::rest::paths;

use crate::{Error, Result};

pub use weir_spec::rest::{
    CheckpointCounts, CheckpointInfo, CheckpointStats, JobOverview, JobState, OperationStatus,
    SavepointRequest, SavepointStatus, TriggerResponse,
};

/// Where the operator finds a StreamJob's JobManager.
#[derive(Debug, Clone)]
pub enum JobManagerEndpoint {
    /// `http://<name>-jobmanager.<namespace>.svc:8081`, the Service the operator creates.
    ClusterDns,
    /// One fixed base URL for every job (tests, port-forwarding).
    Fixed(String),
}

impl JobManagerEndpoint {
    pub fn base_url(&self, namespace: &str, name: &str) -> String {
        match self {
            JobManagerEndpoint::ClusterDns => {
                format!(
                    "http://{}.{namespace}.svc:{}",
                    crate::build::jobmanager_name(name),
                    ports::REST
                )
            }
            JobManagerEndpoint::Fixed(url) => url.trim_end_matches('/').to_string(),
        }
    }
}

#[derive(Clone)]
pub struct JobManagerClient {
    http: reqwest::Client,
    base: String,
    /// The job's REST token (`crate::rest_token`), sent as `Authorization: Bearer`.
    token: Option<String>,
}

impl std::fmt::Debug for JobManagerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: Debug output ends up in logs.
        f.debug_struct("JobManagerClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl JobManagerClient {
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> Self {
        JobManagerClient {
            http,
            base: base.into(),
            token: None,
        }
    }

    /// Sends `token` as a bearer token with every request (none when `None`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The bearer token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The shared HTTP client: short timeouts, because reconciles must not hang on a dead pod.
    pub fn http_client() -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| Error::HttpClient { source })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The job, or `None` when the JobManager does not know the id (404).
    pub async fn job(&self, job_id: &str) -> Result<Option<JobOverview>> {
        let url = self.url(&paths::for_job(paths::JOB, job_id));
        let response = self.send(self.http.get(&url), &url).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::json(response, &url).await.map(Some)
    }

    pub async fn checkpoints(&self, job_id: &str) -> Result<CheckpointStats> {
        self.get_json(&paths::for_job(paths::CHECKPOINTS, job_id))
            .await
    }

    /// Savepoint that leaves the job running. Idempotent per target directory.
    pub async fn trigger_savepoint(&self, job_id: &str, target_directory: &str) -> Result<String> {
        self.trigger(&paths::for_job(paths::SAVEPOINTS, job_id), target_directory)
            .await
    }

    /// Drain, take a final savepoint, commit sinks, stop. The job keeps running if it fails.
    pub async fn stop_with_savepoint(
        &self,
        job_id: &str,
        target_directory: &str,
    ) -> Result<String> {
        self.trigger(&paths::for_job(paths::STOP, job_id), target_directory)
            .await
    }

    pub async fn savepoint_status(
        &self,
        job_id: &str,
        trigger_id: &str,
    ) -> Result<SavepointStatus> {
        self.get_json(&paths::savepoint(job_id, trigger_id)).await
    }

    pub async fn cancel(&self, job_id: &str) -> Result<()> {
        let url = self.url(&paths::for_job(paths::CANCEL, job_id));
        let response = self.send(self.http.post(&url), &url).await?;
        Self::expect_success(response, &url).await.map(|_| ())
    }

    /// True when `/v1/health/ready` answers 200 (the job is RUNNING).
    pub async fn ready(&self) -> Result<bool> {
        let url = self.url(paths::READY);
        let response = self.send(self.http.get(&url), &url).await?;
        Ok(response.status().is_success())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let response = self.send(self.http.get(&url), &url).await?;
        Self::json(response, &url).await
    }

    /// Asks for a savepoint (POST `path`) and returns its trigger id.
    async fn trigger(&self, path: &str, target_directory: &str) -> Result<String> {
        let url = self.url(path);
        let request = self.http.post(&url).json(&SavepointRequest {
            target_directory: target_directory.to_string(),
        });
        let response = self.send(request, &url).await?;
        let response: TriggerResponse = Self::json(response, &url).await?;
        Ok(response.trigger_id)
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        request
            .send()
            .await
            .map_err(|source| Error::JobManagerUnreachable {
                url: url.to_string(),
                source,
            })
    }

    async fn expect_success(response: reqwest::Response, url: &str) -> Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // The body carries `{"error": "..."}`; keep it whole, it is the only explanation we get.
        let body = response.text().await.unwrap_or_default();
        Err(Error::JobManagerStatus {
            url: url.to_string(),
            status: status.as_u16(),
            body,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
        url: &str,
    ) -> Result<T> {
        let response = Self::expect_success(response, url).await?;
        response
            .json()
            .await
            .map_err(|source| Error::JobManagerUnreachable {
                url: url.to_string(),
                source,
            })
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A real HTTP JobManager on 127.0.0.1 that follows the REST contract, scripted by tests.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{Value, json};

    use super::*;
    use crate::fake_kube::{Call, Timeline};
    use crate::storage::MemoryStore;

    #[derive(Debug, Clone)]
    pub struct FakeJob {
        pub overview: JobOverview,
        pub checkpoints: CheckpointStats,
    }

    #[derive(Debug, Default)]
    pub struct FakeState {
        pub jobs: BTreeMap<String, FakeJob>,
        pub savepoints: BTreeMap<String, SavepointStatus>,
        /// Requests in arrival order, e.g. `POST /v1/jobs/x/stop s3://...`.
        pub requests: Vec<String>,
        /// What the next savepoint trigger resolves to.
        pub savepoint_outcome: Option<SavepointStatus>,
        /// Mutating calls also go here, shared with the fake Kubernetes API.
        pub timeline: Option<Timeline>,
        /// Completed savepoints write their `_metadata` here, as a real JobManager would.
        pub storage: Option<MemoryStore>,
    }

    impl FakeState {
        /// A mutating call, in `requests` and on the shared timeline.
        fn record(&mut self, entry: String) {
            if let Some(timeline) = &self.timeline {
                crate::fake_kube::lock(timeline).push(Call::JobManager(entry.clone()));
            }
            self.requests.push(entry);
        }
    }

    #[derive(Debug, Clone)]
    pub struct FakeJobManager {
        pub url: String,
        pub state: Arc<Mutex<FakeState>>,
    }

    type Shared = Arc<Mutex<FakeState>>;

    fn lock(state: &Shared) -> std::sync::MutexGuard<'_, FakeState> {
        state.lock().expect("fake state lock")
    }

    impl FakeJobManager {
        pub async fn start() -> FakeJobManager {
            let state: Shared = Arc::default();
            let app = Router::new()
                .route(
                    "/v1/health/live",
                    get(|| async { Json(json!({"status": "ok"})) }),
                )
                .route("/v1/health/ready", get(ready))
                .route("/v1/jobs/{job_id}", get(job))
                .route("/v1/jobs/{job_id}/checkpoints", get(checkpoints))
                .route("/v1/jobs/{job_id}/savepoints", post(savepoint))
                .route("/v1/jobs/{job_id}/stop", post(stop))
                .route(
                    "/v1/jobs/{job_id}/savepoints/{trigger_id}",
                    get(savepoint_status),
                )
                .route("/v1/jobs/{job_id}/cancel", post(cancel))
                .with_state(state.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            FakeJobManager {
                url: format!("http://{addr}"),
                state,
            }
        }

        /// A fake that logs its mutating calls to `timeline` and writes savepoints to `storage`.
        pub async fn start_with(timeline: Timeline, storage: MemoryStore) -> FakeJobManager {
            let fake = FakeJobManager::start().await;
            {
                let mut state = lock(&fake.state);
                state.timeline = Some(timeline);
                state.storage = Some(storage);
            }
            fake
        }

        /// The JobManager pod was replaced: the new one does not know any job yet.
        pub fn forget_jobs(&self) {
            lock(&self.state).jobs.clear();
        }

        pub fn job_state(&self, job_id: &str) -> Option<JobState> {
            lock(&self.state).jobs.get(job_id).map(|j| j.overview.state)
        }

        /// Every savepoint still in progress completes (a stop-with-savepoint stops its job).
        pub fn finish_savepoints(&self) {
            let mut state = lock(&self.state);
            let mut finished = Vec::new();
            for status in state.savepoints.values_mut() {
                if status.status == OperationStatus::InProgress {
                    status.status = OperationStatus::Completed;
                    finished.extend(status.location.clone());
                }
            }
            for location in finished {
                if let Some(storage) = &state.storage {
                    storage.put_metadata(&location);
                }
            }
            let stops: Vec<String> = state
                .requests
                .iter()
                .filter_map(|r| r.strip_prefix("POST /v1/jobs/"))
                .filter_map(|r| r.split_once("/stop "))
                .map(|(job, _)| job.to_string())
                .collect();
            for job in stops {
                if let Some(job) = state.jobs.get_mut(&job) {
                    job.overview.state = JobState::Finished;
                }
            }
        }

        pub fn run_job(&self, job_id: &str, parallelism: u32) {
            lock(&self.state).jobs.insert(
                job_id.to_string(),
                FakeJob {
                    overview: JobOverview {
                        job_id: job_id.into(),
                        name: "url-count".into(),
                        state: JobState::Running,
                        parallelism,
                        start_time: 1_000,
                        restarts: 0,
                        last_failure: None,
                    },
                    checkpoints: CheckpointStats::default(),
                },
            );
        }

        /// The job's restart strategy restarted it after `failure`, as the JobManager does by
        /// itself: the restart count grows, the job runs again.
        pub fn restart_after_failure(&self, job_id: &str, failure: &str) {
            if let Some(job) = lock(&self.state).jobs.get_mut(job_id) {
                job.overview.restarts += 1;
                job.overview.last_failure = Some(failure.into());
                job.overview.state = JobState::Running;
            }
        }

        /// The job's bounded input is done: FINISHED.
        pub fn finish_job(&self, job_id: &str) {
            if let Some(job) = lock(&self.state).jobs.get_mut(job_id) {
                job.overview.state = JobState::Finished;
            }
        }

        pub fn complete_checkpoint(&self, job_id: &str, id: u64, path: &str) {
            if let Some(job) = lock(&self.state).jobs.get_mut(job_id) {
                let info = CheckpointInfo {
                    savepoint: false,
                    id,
                    status: OperationStatus::Completed,
                    trigger_time: 5_000,
                    complete_time: Some(6_000),
                    duration_ms: Some(1_000),
                    state_size: Some(42),
                    checkpointed_size: None,
                    external_path: Some(path.into()),
                    failure: None,
                };
                job.checkpoints.counts.completed += 1;
                job.checkpoints.latest = Some(info.clone());
                job.checkpoints.history.push(info);
            }
        }

        pub fn next_savepoint(&self, outcome: SavepointStatus) {
            lock(&self.state).savepoint_outcome = Some(outcome);
        }

        pub fn requests(&self) -> Vec<String> {
            lock(&self.state).requests.clone()
        }
    }

    fn not_found(job_id: &str) -> (StatusCode, Json<Value>) {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no job {job_id}")})),
        )
    }

    async fn ready(State(state): State<Shared>) -> StatusCode {
        let running = lock(&state)
            .jobs
            .values()
            .any(|j| j.overview.state == JobState::Running);
        if running {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }

    async fn job(
        State(state): State<Shared>,
        Path(job_id): Path<String>,
    ) -> (StatusCode, Json<Value>) {
        let mut state = lock(&state);
        state.requests.push(format!("GET /v1/jobs/{job_id}"));
        match state.jobs.get(&job_id) {
            Some(job) => (StatusCode::OK, Json(json!(job.overview))),
            None => not_found(&job_id),
        }
    }

    async fn checkpoints(
        State(state): State<Shared>,
        Path(job_id): Path<String>,
    ) -> (StatusCode, Json<Value>) {
        match lock(&state).jobs.get(&job_id) {
            Some(job) => (StatusCode::OK, Json(json!(job.checkpoints))),
            None => not_found(&job_id),
        }
    }

    fn trigger(
        state: &Shared,
        job_id: &str,
        body: &Value,
        verb: &str,
    ) -> (StatusCode, Json<Value>) {
        let mut state = lock(state);
        let Some(target) = body.get("targetDirectory").and_then(Value::as_str) else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "targetDirectory is required"})),
            );
        };
        state.record(format!("POST /v1/jobs/{job_id}/{verb} {target}"));
        if !state.jobs.contains_key(job_id) {
            return not_found(job_id);
        }
        let trigger_id = format!("trigger-{}", state.savepoints.len() + 1);
        let mut outcome = state.savepoint_outcome.clone().unwrap_or(SavepointStatus {
            status: OperationStatus::Completed,
            location: None,
            failure: None,
        });
        if outcome.status != OperationStatus::Failed && outcome.location.is_none() {
            outcome.location = Some(target.to_string());
        }
        let stopped = verb == "stop" && outcome.status == OperationStatus::Completed;
        if outcome.status == OperationStatus::Completed
            && let (Some(storage), Some(location)) = (&state.storage, &outcome.location)
        {
            storage.put_metadata(location);
        }
        state.savepoints.insert(trigger_id.clone(), outcome);
        if stopped && let Some(job) = state.jobs.get_mut(job_id) {
            job.overview.state = JobState::Finished;
        }
        (StatusCode::ACCEPTED, Json(json!({"triggerId": trigger_id})))
    }

    async fn savepoint(
        State(state): State<Shared>,
        Path(job_id): Path<String>,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        trigger(&state, &job_id, &body, "savepoints")
    }

    async fn stop(
        State(state): State<Shared>,
        Path(job_id): Path<String>,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        trigger(&state, &job_id, &body, "stop")
    }

    async fn savepoint_status(
        State(state): State<Shared>,
        Path((job_id, trigger_id)): Path<(String, String)>,
    ) -> (StatusCode, Json<Value>) {
        let state = lock(&state);
        match state.savepoints.get(&trigger_id) {
            Some(status) => (StatusCode::OK, Json(json!(status))),
            None => not_found(&format!("{job_id}/{trigger_id}")),
        }
    }

    async fn cancel(
        State(state): State<Shared>,
        Path(job_id): Path<String>,
    ) -> (StatusCode, Json<Value>) {
        let mut state = lock(&state);
        state.record(format!("POST /v1/jobs/{job_id}/cancel"));
        match state.jobs.get_mut(&job_id) {
            Some(job) => {
                job.overview.state = JobState::Canceled;
                (StatusCode::ACCEPTED, Json(json!({})))
            }
            None => not_found(&job_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeJobManager;
    use super::*;

    async fn client(fake: &FakeJobManager) -> JobManagerClient {
        JobManagerClient::new(
            JobManagerClient::http_client().expect("client"),
            fake.url.clone(),
        )
    }

    #[tokio::test]
    async fn reads_job_overview_and_checkpoints() {
        let fake = FakeJobManager::start().await;
        fake.run_job("streams-clicks", 4);
        fake.complete_checkpoint("streams-clicks", 7, "s3://b/c/streams-clicks/chk-7");
        let client = client(&fake).await;

        let job = client
            .job("streams-clicks")
            .await
            .expect("request")
            .expect("job exists");
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.parallelism, 4);
        let stats = client.checkpoints("streams-clicks").await.expect("request");
        let latest = stats.latest.expect("latest");
        assert_eq!(
            (latest.id, latest.external_path.as_deref()),
            (7, Some("s3://b/c/streams-clicks/chk-7"))
        );
        assert!(client.ready().await.expect("request"));
    }

    #[tokio::test]
    async fn unknown_job_is_none_not_an_error() {
        let fake = FakeJobManager::start().await;
        let client = client(&fake).await;
        assert_eq!(client.job("nope").await.expect("request"), None);
        assert!(!client.ready().await.expect("request"));
    }

    #[tokio::test]
    async fn stop_with_savepoint_returns_trigger_and_reports_location() {
        let fake = FakeJobManager::start().await;
        fake.run_job("j", 1);
        let client = client(&fake).await;
        let trigger = client
            .stop_with_savepoint("j", "s3://b/sp/j/sp-1")
            .await
            .expect("trigger");
        let status = client
            .savepoint_status("j", &trigger)
            .await
            .expect("status");
        assert_eq!(status.status, OperationStatus::Completed);
        assert_eq!(status.location.as_deref(), Some("s3://b/sp/j/sp-1"));
        assert_eq!(
            client.job("j").await.expect("request").map(|j| j.state),
            Some(JobState::Finished)
        );
        assert_eq!(
            fake.requests().last().map(String::as_str),
            Some("GET /v1/jobs/j")
        );
    }

    #[tokio::test]
    async fn failed_savepoint_reports_the_failure() {
        let fake = FakeJobManager::start().await;
        fake.run_job("j", 1);
        fake.next_savepoint(SavepointStatus {
            status: OperationStatus::Failed,
            location: None,
            failure: Some("S3 PutObject denied".into()),
        });
        let client = client(&fake).await;
        let trigger = client
            .trigger_savepoint("j", "s3://b/sp/j/sp-2")
            .await
            .expect("trigger");
        let status = client
            .savepoint_status("j", &trigger)
            .await
            .expect("status");
        assert_eq!(status.failure.as_deref(), Some("S3 PutObject denied"));
    }

    #[tokio::test]
    async fn errors_name_the_url_and_carry_the_body() {
        let fake = FakeJobManager::start().await;
        let client = client(&fake).await;
        let err = client.cancel("ghost").await.expect_err("404");
        let message = err.to_string();
        assert!(
            message.contains("/v1/jobs/ghost/cancel") && message.contains("404"),
            "{message}"
        );
        assert!(message.contains("no job ghost"), "{message}");
    }

    #[tokio::test]
    async fn unreachable_jobmanager_is_a_transient_error() {
        let client = JobManagerClient::new(
            JobManagerClient::http_client().expect("client"),
            "http://127.0.0.1:9",
        );
        let err = client.job("j").await.expect_err("refused");
        assert!(err.is_transient(), "{err}");
    }
}
