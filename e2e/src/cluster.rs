//! The scenarios' view of the cluster: whether it can run here, the StreamJob API (as
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

/// What a scenario needs, in the one line a skipped test prints.
pub const NEEDS: &str =
    "needs a prepared cluster and WEIR_E2E=1: run scripts/e2e.sh (a real control plane or kind)";

/// Settings of the e2e environment, from `WEIR_E2E_*` variables with the defaults
/// scripts/e2e-kind.sh and e2e/manifests/minio.yaml use (scripts/e2e.sh sets every one).
#[derive(Debug, Clone)]
pub struct E2eConfig {
    /// Where the StreamJobs, S3 and the credentials Secret live.
    pub namespace: String,
    /// A second watched namespace, prepared the same way.
    pub second_namespace: String,
    /// The operator's namespace and Helm release.
    pub system_namespace: String,
    pub release: String,
    /// Worker image.
    pub image: String,
    /// The same worker under a second tag, for the upgrade scenarios.
    pub next_image: String,
    /// S3 as the test process reaches it.
    pub s3_endpoint: String,
    /// S3 as the job pods reach it (`spec.job.s3.endpoint`).
    pub s3_cluster_endpoint: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    /// A bucket name S3 refuses writes to, for a savepoint that cannot complete.
    pub unwritable_bucket: String,
    /// Where container logs are on this machine (`<ns>_<pod>_<uid8>/<container>.log`), when
    /// the cluster keeps them in files (the process kit); `None` on kind.
    pub pod_logs: Option<std::path::PathBuf>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

impl E2eConfig {
    pub fn from_env() -> E2eConfig {
        E2eConfig {
            namespace: env_or("WEIR_E2E_NAMESPACE", "weir-e2e"),
            second_namespace: env_or("WEIR_E2E_SECOND_NAMESPACE", "weir-e2e-b"),
            system_namespace: env_or("WEIR_E2E_SYSTEM_NAMESPACE", "weir-system"),
            release: env_or("WEIR_E2E_RELEASE", "weir"),
            image: env_or("WEIR_E2E_IMAGE", "weir-worker:e2e"),
            next_image: env_or("WEIR_E2E_NEXT_IMAGE", "weir-worker:e2e-next"),
            s3_endpoint: env_or("WEIR_E2E_S3_ENDPOINT", "http://127.0.0.1:30900"),
            s3_cluster_endpoint: env_or("WEIR_E2E_S3_CLUSTER_ENDPOINT", "http://minio:9000"),
            s3_access_key: env_or("WEIR_E2E_S3_ACCESS_KEY", "weir-e2e-access"),
            s3_secret_key: env_or("WEIR_E2E_S3_SECRET_KEY", "weir-e2e-secret-key"),
            unwritable_bucket: env_or("WEIR_E2E_UNWRITABLE_BUCKET", "unwritable"),
            pod_logs: std::env::var_os("WEIR_E2E_POD_LOGS").map(std::path::PathBuf::from),
        }
    }
}

/// Whether the scenarios are asked for: scripts/e2e.sh prepares a cluster and sets
/// `WEIR_E2E=1`. Once asked, a cluster that cannot be reached fails the scenario.
pub fn requested() -> bool {
    std::env::var("WEIR_E2E").as_deref() == Ok("1")
}

/// Whether this is a CI run (`.ci/run` exports `CI=true`): there a scenario that cannot run
/// is a failure, not a skip.
fn running_in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The control-plane kit scripts/e2e.sh uses without kind: `WEIR_K8S_KIT`, by default
/// `../shared/k8s` beside the repository.
fn k8s_kit() -> std::path::PathBuf {
    std::env::var_os("WEIR_K8S_KIT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("../shared/k8s"))
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
    pub namespace: String,
    pub image: String,
    /// S3 as the job's pods reach it.
    pub s3_endpoint: String,
    pub upgrade_mode: String,
    /// `savepoints.interval` and `savepoints.retained`.
    pub periodic_savepoints: Option<(String, u32)>,
    /// `onDelete.savepoint` and `onDelete.storage`.
    pub on_delete: Option<(bool, String)>,
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
            namespace: config.namespace.clone(),
            image: config.image.clone(),
            s3_endpoint: config.s3_cluster_endpoint.clone(),
            parallelism: 2,
            keys: 8,
            events_per_key: 2_000,
            events_per_second: 100,
            upgrade_mode: "savepoint".into(),
            periodic_savepoints: None,
            on_delete: None,
        }
    }

    /// The input runs for about `seconds` at the job's rate (per source subtask).
    pub fn lasting(mut self, seconds: u64) -> SequenceJob {
        let per_key_per_second =
            (self.events_per_second * u64::from(self.parallelism)) as f64 / self.keys as f64;
        self.events_per_key = (per_key_per_second * seconds as f64).ceil() as u64;
        self
    }

    pub fn in_namespace(mut self, namespace: &str) -> SequenceJob {
        self.namespace = namespace.to_string();
        self
    }

    pub fn with_upgrade_mode(mut self, mode: &str) -> SequenceJob {
        self.upgrade_mode = mode.to_string();
        self
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
        let mut manifest = self.base_manifest();
        if let Some((interval, retained)) = &self.periodic_savepoints {
            manifest["spec"]["savepoints"]["interval"] = json!(interval);
            manifest["spec"]["savepoints"]["retained"] = json!(retained);
        }
        if let Some((savepoint, storage)) = &self.on_delete {
            manifest["spec"]["onDelete"] = json!({"savepoint": savepoint, "storage": storage});
        }
        manifest
    }

    fn base_manifest(&self) -> Value {
        json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "StreamJob",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": {"weir.dev/e2e": "true"}},
            "spec": {
                "image": self.image,
                "imagePullPolicy": "IfNotPresent",
                "parallelism": self.parallelism,
                "serviceAccountName": "weir-job",
                "s3CredentialsSecret": {"name": "weir-s3"},
                "upgradeMode": self.upgrade_mode,
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
                    "s3": {"endpoint": self.s3_endpoint, "region": "us-east-1", "forcePathStyle": true},
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
    /// Shared by every clone (`in_namespace`): the scenario's duration is recorded once, when
    /// the last one is dropped at the scenario's end.
    _clock: std::sync::Arc<ScenarioClock>,
}

/// Records how long a scenario ran, from connecting to its end (pass or fail; libtest's
/// result says which).
struct ScenarioClock {
    scenario: String,
    started: std::time::Instant,
}

impl Drop for ScenarioClock {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        record_measurement(&format!("scenario {}: {secs:.0}s", self.scenario));
    }
}

/// Prints a measured figure and appends it to `$WEIR_E2E_MEASUREMENTS` (scripts/e2e.sh prints
/// that file at the end: libtest hides the output of passing tests).
pub fn record_measurement(line: &str) {
    eprintln!("[measure] {line}");
    if let Some(path) = std::env::var_os("WEIR_E2E_MEASUREMENTS") {
        use std::io::Write as _;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            eprintln!("cannot append to {}: {e}", path.to_string_lossy());
        }
    }
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
    /// Connects, or prints one `SKIPPED` line saying what the scenario needs and returns
    /// `None` when the scenarios were not asked for. Asked for (`WEIR_E2E=1`) and unreachable
    /// is an error, and so is not asked for under CI (`CI` set), where the scenarios are
    /// expected to run on the kit: a scenario never passes there without a cluster.
    pub async fn connect_or_skip(scenario: &str) -> Result<Option<Cluster>> {
        let config = E2eConfig::from_env();
        if !requested() {
            if running_in_ci() {
                let kit = k8s_kit();
                let kit_state = if kit.join("up.sh").is_file() {
                    "present"
                } else {
                    "missing"
                };
                return Err(Error::Environment(format!(
                    "{scenario}: CI is set but WEIR_E2E is not 1, so no cluster was prepared \
                     (Kubernetes kit {kit_state} at {}); {NEEDS}",
                    kit.display()
                )));
            }
            // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
            // and this line must reach scripts/test.sh's summary.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED {scenario}: {NEEDS}");
            return Ok(None);
        }
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = Client::try_default()
            .await
            .map_err(kube_error("connect to", "the cluster of KUBECONFIG"))?;
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
            _clock: std::sync::Arc::new(ScenarioClock {
                scenario: scenario.to_string(),
                started: std::time::Instant::now(),
            }),
        }))
    }

    /// The same cluster, acting on StreamJobs and pods of another namespace.
    pub fn in_namespace(&self, namespace: &str) -> Cluster {
        let mut other = self.clone();
        other.config.namespace = namespace.to_string();
        other.jobs = Api::namespaced_with(self.client.clone(), namespace, &stream_job_resource());
        other
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

    /// The text under `key` in the Secret `name` of the jobs' namespace.
    pub async fn secret_value(&self, name: &str, key: &str) -> Result<String> {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        let secret = secrets
            .get(name)
            .await
            .map_err(kube_error("get", format!("Secret {name}")))?;
        let bytes = secret
            .data
            .and_then(|mut data| data.remove(key))
            .ok_or_else(|| Error::Environment(format!("Secret {name} has no key {key}")))?;
        String::from_utf8(bytes.0)
            .map_err(|_| Error::Environment(format!("Secret {name}/{key} is not text")))
    }

    pub async fn network_policy(
        &self,
        name: &str,
    ) -> Result<Option<k8s_openapi::api::networking::v1::NetworkPolicy>> {
        let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        policies
            .get_opt(name)
            .await
            .map_err(kube_error("get", format!("NetworkPolicy {name}")))
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

impl Cluster {
    /// Events about one StreamJob, oldest first, as `(type, reason, message, count)`.
    pub async fn events(&self, name: &str) -> Result<Vec<(String, String, String, i32)>> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        let selector = format!("involvedObject.name={name},involvedObject.kind=StreamJob");
        let mut list = events
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(kube_error("list", format!("events of {name}")))?
            .items;
        list.sort_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        });
        Ok(list
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                    e.count.unwrap_or(1),
                )
            })
            .collect())
    }

    /// Waits until an event with `reason` whose message contains `text` is recorded.
    pub async fn wait_for_event(&self, name: &str, reason: &str, text: &str) -> Result<()> {
        wait_for(
            &format!("a {reason} event about {name} mentioning `{text}`"),
            Duration::from_secs(120),
            || async {
                let events = self.events(name).await?;
                Ok(
                    if events
                        .iter()
                        .any(|(_, r, m, _)| r == reason && m.contains(text))
                    {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("{events:?}"))
                    },
                )
            },
        )
        .await
    }

    /// Runs kubectl against the same cluster (KUBECONFIG) and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("kubectl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn {
                program: "kubectl".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Environment(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The operator's pods (of the Helm release), running or not.
    pub async fn operator_pods(&self) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.system_namespace);
        let selector = format!(
            "app.kubernetes.io/name=weir-operator,app.kubernetes.io/instance={}",
            self.config.release
        );
        Ok(pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(kube_error("list", format!("operator pods {selector}")))?
            .items)
    }

    /// Deletes a pod of the operator's namespace at once (no grace period: a crash).
    pub async fn kill_operator_pod(&self, name: &str) -> Result<()> {
        eprintln!("killing operator pod {name}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.system_namespace);
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .map_err(kube_error("delete", format!("pod {name}")))?;
        Ok(())
    }

    /// Holder of the operator's leader Lease, if any.
    pub async fn lease_holder(&self) -> Result<Option<String>> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.config.system_namespace);
        let lease = leases
            .get_opt("weir-operator-leader")
            .await
            .map_err(kube_error("get", "Lease weir-operator-leader"))?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// Sets the operator Deployment's replicas and waits until that many pods are ready.
    pub async fn scale_operator(&self, replicas: i32) -> Result<()> {
        let deployments: Api<Deployment> =
            Api::namespaced(self.client.clone(), &self.config.system_namespace);
        let name = format!("{}-operator", self.config.release);
        deployments
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map_err(kube_error("scale", format!("Deployment {name}")))?;
        wait_for(
            &format!("{replicas} ready operator pods"),
            Duration::from_secs(120),
            || async {
                let pods = self.operator_pods().await?;
                let ready = pods.iter().filter(|p| pod_ready(p)).count();
                Ok(
                    if ready == replicas as usize && pods.len() == replicas as usize {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("{} pods, {ready} ready", pods.len()))
                    },
                )
            },
        )
        .await
    }

    /// Arms fault points in the operator (`Some("name,name@n")`) or disarms them (`None`):
    /// `WEIR_FAULT_POINTS` on its Deployment, plus an `emptyDir` where each fired point leaves
    /// a file, so the container the kubelet restarts in the same pod does not die at the same
    /// point again. Waits until the one replica of the new template is ready.
    pub async fn set_operator_fault_points(&self, points: Option<&str>) -> Result<()> {
        const DIR: &str = "/fault-points";
        let deployments: Api<Deployment> =
            Api::namespaced(self.client.clone(), &self.config.system_namespace);
        let name = format!("{}-operator", self.config.release);
        let patch = match points {
            Some(points) => json!({"spec": {"template": {"spec": {
                // The kit's emptyDir is root's; the group makes it the operator's to write.
                "securityContext": {"fsGroup": 65532},
                "containers": [{
                    "name": "operator",
                    "env": [
                        {"name": "WEIR_FAULT_POINTS", "value": points},
                        {"name": "WEIR_FAULT_POINTS_FIRED_DIR", "value": DIR},
                    ],
                    "volumeMounts": [{"name": "fault-points", "mountPath": DIR}],
                }],
                "volumes": [{"name": "fault-points", "emptyDir": {}}],
            }}}}),
            None => json!({"spec": {"template": {"spec": {
                "securityContext": {"fsGroup": null},
                "containers": [{
                    "name": "operator",
                    "env": [
                        {"name": "WEIR_FAULT_POINTS", "$patch": "delete"},
                        {"name": "WEIR_FAULT_POINTS_FIRED_DIR", "$patch": "delete"},
                    ],
                    "volumeMounts": [{"mountPath": DIR, "$patch": "delete"}],
                }],
                "volumes": [{"name": "fault-points", "$patch": "delete"}],
            }}}}),
        };
        deployments
            .patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(kube_error(
                "patch the fault points of",
                format!("Deployment {name}"),
            ))?;
        let armed = points.is_some();
        wait_for(
            &format!("the operator rolled out with fault points armed={armed}"),
            Duration::from_secs(180),
            || async {
                let pods = self.operator_pods().await?;
                let rolled_out = pods.len() == 1
                    && pods.iter().all(|pod| {
                        pod_ready(pod) && pod_env(pod, "WEIR_FAULT_POINTS").is_some() == armed
                    });
                Ok(if rolled_out {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("{} operator pods", pods.len()))
                })
            },
        )
        .await
    }

    /// Restarts of the operator container per operator pod.
    pub async fn operator_restarts(&self) -> Result<Vec<(String, i32)>> {
        Ok(self
            .operator_pods()
            .await?
            .into_iter()
            .map(|pod| {
                let restarts = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|c| c.restart_count)
                    .sum();
                (pod.metadata.name.unwrap_or_default(), restarts)
            })
            .collect())
    }

    /// Every line the operator's containers wrote so far (process kit only; empty on kind).
    pub fn operator_log(&self) -> String {
        let Some(root) = &self.config.pod_logs else {
            return String::new();
        };
        let prefix = format!("{}_", self.config.system_namespace);
        let mut text = String::new();
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let log = entry.path().join("operator.log");
                text.push_str(&std::fs::read_to_string(log).unwrap_or_default());
            }
        }
        text
    }
}

/// Ready condition of a pod.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The value of `name` in the environment of the pod's first container.
pub fn pod_env(pod: &Pod, name: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .map(|e| e.value.clone().unwrap_or_default())
}

/// Whether a pod gets a Kubernetes API token (the admission plugin adds `kube-api-access-*`
/// unless automounting is off for the pod or its ServiceAccount).
pub fn mounts_api_token(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.volumes.iter().flatten().any(|v| {
            v.name.starts_with("kube-api-access")
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.service_account_token.is_some())
                })
        })
    })
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
