//! One StreamJob in a fake cluster: the in-memory Kubernetes API, a real HTTP JobManager and an
//! in-memory checkpoint store, driven one reconcile at a time like the controller would.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action as Requeue;
use serde_json::{Value, json};
use weir_spec::JobDocument;

use crate::controller::{Context, reconcile};
use crate::crd::{Lifecycle, StreamJob, StreamJobSpec, StreamJobStatus};
use crate::fake_kube::{ApiRequest, Call, FakeApiServer, Timeline, lock};
use crate::jobmanager::fake::FakeJobManager;
use crate::jobmanager::{JobManagerEndpoint, JobState};
use crate::metrics::Metrics;
use crate::storage::MemoryStore;

pub const JOB_ID: &str = "streams-clicks";
pub const JOB_PATH: &str = "/apis/weir.dev/v1alpha1/namespaces/streams/streamjobs/clicks";
pub const CONFIG_MAP_PATH: &str = "/api/v1/namespaces/streams/configmaps/clicks-job";
pub const JOBMANAGER_PATH: &str = "/apis/apps/v1/namespaces/streams/deployments/clicks-jobmanager";
pub const TASKMANAGERS_PATH: &str =
    "/apis/apps/v1/namespaces/streams/deployments/clicks-taskmanager";
/// Where the test job keeps checkpoints (`StreamJob::test()`).
pub const CHECKPOINTS: &str = "s3://bucket/checkpoints/streams-clicks";
/// The clock at the start of every test, ms since epoch.
pub const START: i64 = 1_700_000_000_000;

/// The savepoint directory the operator picks at time `now`.
pub fn savepoint_dir(now: i64) -> String {
    format!("s3://bucket/checkpoints/savepoints/{JOB_ID}/savepoint-{now}")
}

/// A Kubernetes Event the operator published.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent {
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub note: String,
}

pub struct Harness {
    pub api: FakeApiServer,
    pub jobmanager: FakeJobManager,
    pub storage: MemoryStore,
    timeline: Timeline,
    client: kube::Client,
    clock: Arc<AtomicI64>,
    ctx: Arc<Context>,
}

impl Harness {
    /// The user has just applied `job`; the operator has not seen it yet.
    pub async fn new(job: StreamJob) -> Harness {
        let timeline = Timeline::default();
        let storage = MemoryStore::default();
        let (api, client) = FakeApiServer::start(timeline.clone());
        let jobmanager = FakeJobManager::start_with(timeline.clone(), storage.clone()).await;
        let clock = Arc::new(AtomicI64::new(START));
        let mut object = serde_json::to_value(&job).expect("StreamJob serializes");
        object["status"] = Value::Null;
        api.put(JOB_PATH, object);
        let ctx = context(&client, &jobmanager, &storage, &clock);
        Harness {
            api,
            jobmanager,
            storage,
            timeline,
            client,
            clock,
            ctx,
        }
    }

    /// `job` deployed, its pods up and the job RUNNING, as the operator reports it.
    pub async fn running(job: StreamJob) -> Harness {
        let harness = Harness::new(job).await;
        harness.reconcile().await;
        harness.cluster_runs_what_was_deployed();
        harness.reconcile().await;
        assert_eq!(harness.status().lifecycle, Lifecycle::Running);
        harness
    }

    /// The operator process restarts: a new context, nothing remembered but the cluster.
    pub fn restart_operator(&mut self) {
        self.ctx = context(&self.client, &self.jobmanager, &self.storage, &self.clock);
    }

    /// One reconcile of the StreamJob as stored, as the controller would run it.
    pub async fn try_reconcile(&self) -> crate::Result<Requeue> {
        reconcile(Arc::new(self.job()), self.ctx.clone()).await
    }

    pub async fn reconcile(&self) -> Requeue {
        self.try_reconcile().await.expect("reconcile succeeds")
    }

    /// A reconcile of `job` as the controller's cache holds it, which may be behind the API
    /// server (the object may even be gone).
    pub async fn reconcile_cached(&self, job: StreamJob) -> crate::Result<Requeue> {
        reconcile(Arc::new(job), self.ctx.clone()).await
    }

    pub fn job(&self) -> StreamJob {
        let object = self.api.get(JOB_PATH).expect("StreamJob exists");
        serde_json::from_value(object).expect("stored StreamJob parses")
    }

    pub fn job_exists(&self) -> bool {
        self.api.get(JOB_PATH).is_some()
    }

    pub fn status(&self) -> StreamJobStatus {
        self.job().status.unwrap_or_default()
    }

    /// The user edits the spec (`kubectl edit`): the generation moves.
    pub fn edit(&self, change: impl FnOnce(&mut StreamJobSpec)) {
        let mut job = self.job();
        change(&mut job.spec);
        let spec = serde_json::to_value(&job.spec).expect("spec serializes");
        self.api.edit(JOB_PATH, |object| {
            object["spec"] = spec;
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(generation + 1);
        });
    }

    /// `kubectl delete`: with finalizers the API server only marks the object.
    pub fn delete(&self) {
        let finalized = self
            .job()
            .metadata
            .finalizers
            .unwrap_or_default()
            .is_empty();
        if finalized {
            self.api.remove(JOB_PATH);
        } else {
            self.api.edit(JOB_PATH, |object| {
                object["metadata"]["deletionTimestamp"] = json!("2023-11-14T22:13:20Z");
            });
        }
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).expect("short duration");
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Pods come up for what the operator applied: Deployments roll out and the new JobManager
    /// runs the job with the parallelism of the job document.
    pub fn cluster_runs_what_was_deployed(&self) {
        self.api.roll_out_deployments();
        let document = self.deployed_document();
        self.jobmanager.run_job(JOB_ID, document.parallelism);
    }

    /// Deleted Deployments stay, marked, while their pods terminate (foreground deletion on a
    /// real API server), until [`Self::pods_gone`].
    pub fn pods_take_time_to_terminate(&self) {
        self.api.hold_foreground_deletions();
    }

    /// The last pods terminated: the garbage collector removes the Deployments deleted in the
    /// foreground.
    pub fn pods_gone(&self) {
        self.api.finish_foreground_deletions();
    }

    /// The job completed checkpoint `id`: its `chk-<id>/_metadata` is in storage. Returns the
    /// checkpoint's directory.
    pub fn checkpoint_in_storage(&self, id: u64) -> String {
        let dir = format!("{CHECKPOINTS}/chk-{id}");
        self.storage.put_metadata(&dir);
        dir
    }

    /// The job document the operator put into the ConfigMap.
    pub fn deployed_document(&self) -> JobDocument {
        let config_map = self.api.get(CONFIG_MAP_PATH).expect("ConfigMap applied");
        let yaml = config_map["data"]["job.yaml"]
            .as_str()
            .expect("job.yaml key");
        serde_yaml_ng::from_str(yaml).expect("job document parses")
    }

    pub fn deployment(&self, path: &str) -> Option<Deployment> {
        self.api
            .get(path)
            .map(|d| serde_json::from_value(d).expect("Deployment parses"))
    }

    pub fn job_state(&self) -> Option<JobState> {
        self.jobmanager.job_state(JOB_ID)
    }

    /// A position in the timeline of calls; `*_since(mark)` look only after it.
    pub fn mark(&self) -> usize {
        lock(&self.timeline).len()
    }

    pub fn calls_since(&self, mark: usize) -> Vec<Call> {
        lock(&self.timeline)[mark..].to_vec()
    }

    pub fn kube_requests_since(&self, mark: usize) -> Vec<ApiRequest> {
        self.calls_since(mark)
            .into_iter()
            .filter_map(|call| match call {
                Call::Kube(request) => Some(request),
                Call::JobManager(_) => None,
            })
            .collect()
    }

    /// Mutating JobManager calls (`POST .../stop <dir>`, `POST .../cancel`).
    pub fn jobmanager_calls_since(&self, mark: usize) -> Vec<String> {
        self.calls_since(mark)
            .into_iter()
            .filter_map(|call| match call {
                Call::JobManager(entry) => Some(entry),
                Call::Kube(_) => None,
            })
            .collect()
    }

    /// Server-side applies of child objects (not the status), as `deployments/<name>`.
    pub fn applied_children_since(&self, mark: usize) -> Vec<String> {
        self.kube_requests_since(mark)
            .iter()
            .filter(|r| r.is_apply() && !r.is_status())
            .map(ApiRequest::target)
            .collect()
    }

    /// The last status the operator wrote before the JobManager call starting with `call`.
    pub fn status_written_before(&self, call: &str) -> StreamJobStatus {
        let timeline = lock(&self.timeline);
        let position = timeline
            .iter()
            .position(|c| matches!(c, Call::JobManager(entry) if entry.starts_with(call)))
            .unwrap_or_else(|| panic!("no JobManager call {call:?}"));
        timeline[..position]
            .iter()
            .rev()
            .find_map(|c| match c {
                Call::Kube(request) if request.is_status() => Some(request.body["status"].clone()),
                _ => None,
            })
            .map(|status| serde_json::from_value(status).expect("status parses"))
            .unwrap_or_else(|| panic!("no status written before {call:?}"))
    }

    /// Events created (one object each; a repeat only counts on the first, see
    /// [`Self::event_repeats_since`]).
    pub fn events_since(&self, mark: usize) -> Vec<PublishedEvent> {
        self.kube_requests_since(mark)
            .iter()
            .filter(|r| r.path.contains("/apis/events.k8s.io/v1/") && r.method == "POST")
            .map(|r| PublishedEvent {
                warning: r.body["type"] == "Warning",
                reason: r.body["reason"].as_str().unwrap_or_default().to_string(),
                action: r.body["action"].as_str().unwrap_or_default().to_string(),
                note: r.body["note"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// Repeats of an earlier Event: `(event object, series count)`.
    pub fn event_repeats_since(&self, mark: usize) -> Vec<(String, i64)> {
        self.kube_requests_since(mark)
            .iter()
            .filter(|r| r.path.contains("/apis/events.k8s.io/v1/") && r.method == "PATCH")
            .map(|r| {
                (
                    r.target(),
                    r.body["series"]["count"].as_i64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The stored Event objects with this reason.
    pub fn stored_events(&self, reason: &str) -> Vec<Value> {
        self.kube_requests_since(0)
            .iter()
            .filter(|r| r.path.contains("/apis/events.k8s.io/v1/") && r.method == "POST")
            .filter_map(|r| {
                let name = r.body["metadata"]["name"].as_str()?;
                self.api.get(&format!("{}/{name}", r.path))
            })
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    pub fn event_reasons_since(&self, mark: usize) -> Vec<String> {
        self.events_since(mark)
            .into_iter()
            .map(|e| e.reason)
            .collect()
    }
}

fn context(
    client: &kube::Client,
    jobmanager: &FakeJobManager,
    storage: &MemoryStore,
    clock: &Arc<AtomicI64>,
) -> Arc<Context> {
    let mut ctx = Context::new(
        client.clone(),
        JobManagerEndpoint::Fixed(jobmanager.url.clone()),
        Arc::new(storage.clone()),
        Arc::new(Metrics::default()),
    )
    .expect("context");
    let clock = clock.clone();
    ctx.clock = Arc::new(move || clock.load(Ordering::SeqCst));
    Arc::new(ctx)
}

/// Shorthand for waits in scenarios.
pub const MINUTE: Duration = Duration::from_secs(60);
