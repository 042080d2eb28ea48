//! The kind scenarios' view of the cluster: whether it can run here, the StreamJob API (as
//! dynamic objects, so the tests exercise the CRD's schema exactly as users' YAML does), the
//! pods behind a job, and the wait loops that turn "eventually" into a bounded, explained
//! failure.

use std::future::Future;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::s3::{ObjectStore, S3Uri};
use crate::sequence::{Expected, Report};
use crate::{Error, Result};

/// What a kind scenario needs, in the one line a skipped test prints.
pub const NEEDS: &str = "needs Docker, kind and WEIR_E2E=1: run scripts/e2e-kind.sh";

/// Settings of the e2e environment, from `WEIR_E2E_*` variables with the defaults
/// scripts/e2e-kind.sh and e2e/manifests/minio.yaml use.
#[derive(Debug, Clone)]
pub struct E2eConfig {
    pub cluster: String,
    /// Where the StreamJobs, MinIO and the credentials Secret live.
    pub namespace: String,
    /// Worker image loaded into kind.
    pub image: String,
    /// The same worker under a second tag, for the upgrade scenario.
    pub next_image: String,
    /// MinIO as the test process reaches it (NodePort mapped to the host).
    pub s3_endpoint: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

impl E2eConfig {
    pub fn from_env() -> E2eConfig {
        E2eConfig {
            cluster: env_or("WEIR_E2E_CLUSTER", "weir-e2e"),
            namespace: env_or("WEIR_E2E_NAMESPACE", "weir-e2e"),
            image: env_or("WEIR_E2E_IMAGE", "weir-worker:e2e"),
            next_image: env_or("WEIR_E2E_NEXT_IMAGE", "weir-worker:e2e-next"),
            s3_endpoint: env_or("WEIR_E2E_S3_ENDPOINT", "http://127.0.0.1:30900"),
            s3_access_key: env_or("WEIR_E2E_S3_ACCESS_KEY", "weir-e2e-access"),
            s3_secret_key: env_or("WEIR_E2E_S3_SECRET_KEY", "weir-e2e-secret-key"),
        }
    }
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What is missing for the kind scenarios on this machine; empty when they can run.
pub fn missing_requirements(config: &E2eConfig) -> Vec<String> {
    let mut missing = Vec::new();
    if std::env::var("WEIR_E2E").as_deref() != Ok("1") {
        missing.push("WEIR_E2E=1".to_string());
    }
    if !succeeds("docker", &["info"]) {
        missing.push("a running Docker engine".to_string());
    }
    let clusters = Command::new("kind")
        .arg("get")
        .arg("clusters")
        .stderr(Stdio::null())
        .output();
    match clusters {
        Err(_) => missing.push("kind on PATH".to_string()),
        Ok(out) => {
            let listed = String::from_utf8_lossy(&out.stdout);
            if !listed.lines().any(|l| l.trim() == config.cluster) {
                missing.push(format!("the kind cluster `{}`", config.cluster));
            }
        }
    }
    missing
}

pub fn stream_job_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("weir.dev", "v1alpha1", "StreamJob"),
        "streamjobs",
    )
}

/// A `sequence-check` StreamJob against the in-cluster MinIO; bounded and rate-limited, so it
/// runs long enough for a disruption and then finishes with a known output.
#[derive(Debug, Clone)]
pub struct SequenceJob {
    pub name: String,
    pub image: String,
    pub parallelism: u32,
    pub keys: u64,
    pub events_per_key: u64,
    /// Per source subtask.
    pub events_per_second: u64,
}

impl SequenceJob {
    /// A job named `<scenario>-<suffix>`: unique per run, so output and checkpoints of an
    /// earlier run (kept for debugging) never mix in.
    pub fn named(scenario: &str, config: &E2eConfig) -> SequenceJob {
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() % 100_000);
        SequenceJob {
            name: format!("{scenario}-{suffix}"),
            image: config.image.clone(),
            parallelism: 2,
            keys: 8,
            events_per_key: 4_000,
            events_per_second: 100,
        }
    }

    pub fn with_parallelism(mut self, parallelism: u32) -> SequenceJob {
        self.parallelism = parallelism;
        self
    }

    pub fn output(&self) -> S3Uri {
        S3Uri {
            bucket: "weir".into(),
            prefix: format!("e2e/{}/output", self.name),
        }
    }

    pub fn expected(&self) -> Expected {
        Expected {
            keys: self.keys,
            events_per_key: self.events_per_key,
        }
    }

    pub fn manifest(&self) -> Value {
        json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "StreamJob",
            "metadata": {"name": self.name, "labels": {"weir.dev/e2e": "true"}},
            "spec": {
                "image": self.image,
                "imagePullPolicy": "IfNotPresent",
                "parallelism": self.parallelism,
                "serviceAccountName": "weir-job",
                "s3CredentialsSecret": {"name": "weir-s3"},
                "upgradeMode": "savepoint",
                "job": {
                    "name": "sequence-check",
                    "args": {
                        "keys": self.keys,
                        "eventsPerKey": self.events_per_key,
                        "eventsPerSecond": self.events_per_second,
                        "output": format!("s3://weir/e2e/{}/output", self.name),
                    },
                    "checkpointing": {"interval": "2s", "storage": "s3://weir/e2e/checkpoints"},
                    "restartStrategy": {"type": "fixed-delay", "attempts": 100, "delay": "2s"},
                    "s3": {"endpoint": "http://minio:9000", "region": "us-east-1", "forcePathStyle": true},
                },
                "savepoints": {"directory": format!("s3://weir/e2e/{}/savepoints", self.name)},
                "taskManager": {"slots": 1},
            },
        })
    }
}

/// A connected e2e environment.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub config: E2eConfig,
    pub jobs: Api<DynamicObject>,
    pub store: ObjectStore,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn kube_error(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kube::Error) -> Error {
    let object = object.into();
    move |source| Error::Kube {
        action,
        object,
        source: Box::new(source),
    }
}

impl Cluster {
    /// Connects, or prints one line saying what the scenario needs and returns `None`.
    pub async fn connect_or_skip(scenario: &str) -> Result<Option<Cluster>> {
        let config = E2eConfig::from_env();
        let missing = missing_requirements(&config);
        if !missing.is_empty() {
            eprintln!(
                "skipped {scenario}: {NEEDS} (missing: {})",
                missing.join(", ")
            );
            return Ok(None);
        }
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = Client::try_default().await.map_err(kube_error(
            "connect to",
            format!("kind cluster {}", config.cluster),
        ))?;
        let jobs = Api::namespaced_with(client.clone(), &config.namespace, &stream_job_resource());
        let store = ObjectStore::new(
            &config.s3_endpoint,
            &config.s3_access_key,
            &config.s3_secret_key,
        );
        Ok(Some(Cluster {
            client,
            config,
            jobs,
            store,
        }))
    }

    /// Creates any StreamJob manifest; the API server's answer is returned as is, so a test
    /// can inspect a rejection.
    pub async fn create_manifest(
        &self,
        manifest: Value,
    ) -> std::result::Result<DynamicObject, kube::Error> {
        let object: DynamicObject =
            serde_json::from_value(manifest).map_err(kube::Error::SerdeError)?;
        self.jobs.create(&PostParams::default(), &object).await
    }

    pub async fn start(&self, job: &SequenceJob) -> Result<()> {
        eprintln!("creating StreamJob {}/{}", self.config.namespace, job.name);
        self.create_manifest(job.manifest())
            .await
            .map_err(kube_error("create", format!("StreamJob {}", job.name)))?;
        Ok(())
    }

    /// The StreamJob as the API server has it (spec, status, metadata) as JSON.
    pub async fn stream_job(&self, name: &str) -> Result<Value> {
        let object = self
            .jobs
            .get(name)
            .await
            .map_err(kube_error("get", format!("StreamJob {name}")))?;
        serde_json::to_value(&object).map_err(|source| Error::Decode {
            what: format!("StreamJob {name}"),
            kind: "StreamJob",
            source,
        })
    }

    /// Merge-patches the StreamJob's spec, as `kubectl edit` would.
    pub async fn patch_spec(&self, name: &str, spec: Value) -> Result<()> {
        self.jobs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .map_err(kube_error("patch", format!("StreamJob {name}")))?;
        Ok(())
    }

    /// Polls the StreamJob every 2 s until `done(status)` holds; returns that status. A job
    /// that turns Failed ends the wait at once.
    pub async fn wait_for_status(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_for(what, timeout, || async {
            let job = self.stream_job(name).await?;
            let status = job["status"].clone();
            // No scenario waits for a failure: a Failed job ends the wait with its status.
            if status["lifecycle"] == "Failed" {
                return Err(Error::Environment(format!(
                    "StreamJob {name} failed while waiting for {what}: {status}"
                )));
            }
            Ok(if done(&status) {
                Poll::Ready(status)
            } else {
                Poll::Pending(status.to_string())
            })
        })
        .await
    }

    /// Running with at least `count` completed checkpoints (`status.lastCheckpoint.id`).
    pub async fn wait_for_checkpoints(&self, name: &str, count: u64) -> Result<Value> {
        self.wait_for_status(
            name,
            &format!("{name} running with checkpoint {count} completed"),
            Duration::from_secs(300),
            |s| s["lifecycle"] == "Running" && last_checkpoint_id(s) >= count,
        )
        .await
    }

    pub async fn pods(&self, job: &str, component: &str) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let selector =
            format!("app.kubernetes.io/instance={job},app.kubernetes.io/component={component}");
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_error("list", format!("pods {selector}")))?;
        Ok(list.items)
    }

    pub async fn delete_pod(&self, name: &str) -> Result<()> {
        eprintln!("deleting pod {}/{name}", self.config.namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.namespace);
        pods.delete(name, &DeleteParams::default())
            .await
            .map_err(kube_error("delete", format!("pod {name}")))?;
        Ok(())
    }

    pub async fn deployment(&self, name: &str) -> Result<Option<Deployment>> {
        let deployments: Api<Deployment> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        deployments
            .get_opt(name)
            .await
            .map_err(kube_error("get", format!("Deployment {name}")))
    }

    /// What the job has committed so far.
    pub async fn committed(&self, job: &SequenceJob) -> Result<Report> {
        self.store.sequence_report(&job.output()).await
    }

    /// Waits until the job has committed its whole bounded output (or reports FINISHED), then
    /// returns the report of what is committed.
    pub async fn wait_until_finished(&self, job: &SequenceJob) -> Result<Report> {
        let expected = job.expected().records();
        wait_for(
            &format!("{} to commit {expected} records", job.name),
            Duration::from_secs(900),
            || async {
                let status = self.stream_job(&job.name).await?["status"].clone();
                let report = self.committed(job).await?;
                let finished = status["jobState"] == "FINISHED";
                Ok(if report.records >= expected || finished {
                    Poll::Ready(report)
                } else {
                    Poll::Pending(format!(
                        "{} records committed; lifecycle {}, job {}",
                        report.records, status["lifecycle"], status["jobState"]
                    ))
                })
            },
        )
        .await
    }

    /// Deletes a StreamJob and waits until it (and so its finalizer work) is gone.
    pub async fn delete_job(&self, name: &str) -> Result<()> {
        match self.jobs.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(e) => return Err(kube_error("delete", format!("StreamJob {name}"))(e)),
        }
        wait_for(
            &format!("StreamJob {name} to be deleted"),
            Duration::from_secs(180),
            || async {
                Ok(match self.jobs.get_opt(name).await {
                    Ok(None) => Poll::Ready(()),
                    Ok(Some(_)) => Poll::Pending("still present".into()),
                    Err(e) => Poll::Pending(e.to_string()),
                })
            },
        )
        .await
    }
}

/// `status.lastCheckpoint.id`, 0 when none.
pub fn last_checkpoint_id(status: &Value) -> u64 {
    status["lastCheckpoint"]["id"].as_u64().unwrap_or(0)
}

/// Savepoints the operator recorded for `reason` (`rescale`, `upgrade`, `suspend`, ...).
pub fn savepoints_for(status: &Value, reason: &str) -> usize {
    status["savepointHistory"].as_array().map_or(0, |history| {
        history.iter().filter(|s| s["reason"] == reason).count()
    })
}

/// One observation of a wait loop: done with a value, or not yet with what was seen.
#[derive(Debug)]
pub enum Poll<T> {
    Ready(T),
    Pending(String),
}

/// Calls `check` every 2 s until it is ready or `timeout` passes; errors end the wait at once.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await? {
            Poll::Ready(value) => return Ok(value),
            Poll::Pending(last) => last,
        };
        if started.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                seconds: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Fails with every violation when the committed output is not exactly-once and complete.
pub fn assert_exactly_once(job: &SequenceJob, report: &Report) {
    let problems = report.violations_of_complete_run(job.expected());
    assert!(
        problems.is_empty(),
        "committed output of {} (s3://{}/{}) is not exactly-once:\n  {}",
        job.name,
        job.output().bucket,
        job.output().prefix,
        problems.join("\n  ")
    );
    eprintln!(
        "{}: {} records committed, every (key, seq) exactly once, no alert",
        job.name, report.records
    );
}
