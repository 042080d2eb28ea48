//! The reconcile loop: observe (read the cluster, the JobManager and storage) -> plan (pure,
//! [`crate::lifecycle::plan`]) -> apply (status first, then actions) -> requeue.

mod apply;
pub mod events;
mod observe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{Instrument, info_span, warn};
use weir_spec::S3Options;

use self::events::EventPublisher;
use crate::crd::StreamJob;
use crate::jobmanager::{JobManagerClient, JobManagerEndpoint};
use crate::metrics::Metrics;
use crate::rest_token::TokenKey;
use crate::storage::CheckpointStore;
use crate::{Error, Result, lifecycle};

/// Wall clock in ms since epoch; injectable so tests control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub events: EventPublisher,
    pub http: reqwest::Client,
    pub endpoint: JobManagerEndpoint,
    pub store: Arc<dyn CheckpointStore>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Derives each job's REST token; `None`: JobManagers are deployed without one.
    pub rest_token_key: Option<TokenKey>,
    /// Deploy every job with mutual TLS between its pods (`crate::peer_tls`).
    pub peer_tls: bool,
    /// Give every job its own NetworkPolicy (`crate::build::network_policy`).
    pub network_policies: bool,
    /// StreamJobs (by uid) whose peer TLS Secret this process has created or found: each
    /// needs one POST per operator start, not one (and a new CA key) per deploy.
    peer_tls_secrets: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        endpoint: JobManagerEndpoint,
        store: Arc<dyn CheckpointStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Context> {
        Ok(Context {
            events: EventPublisher::new(
                client.clone(),
                crate::FIELD_MANAGER,
                std::env::var("POD_NAME").ok(),
            ),
            client,
            http: crate::jobmanager::JobManagerClient::http_client()?,
            endpoint,
            store,
            metrics,
            clock: system_clock(),
            rest_token_key: None,
            peer_tls: false,
            network_policies: false,
            peer_tls_secrets: Default::default(),
        })
    }

    /// Deploys every JobManager with a REST token derived from `key`.
    pub fn with_rest_token_key(mut self, key: Option<TokenKey>) -> Context {
        self.rest_token_key = key;
        self
    }

    /// Deploys every job with mutual TLS between its pods (or not).
    pub fn with_peer_tls(mut self, on: bool) -> Context {
        self.peer_tls = on;
        self
    }

    /// Gives every job its own NetworkPolicy (or not).
    pub fn with_network_policies(mut self, on: bool) -> Context {
        self.network_policies = on;
        self
    }

    /// The REST token of `job`'s JobManager, when tokens are on.
    pub fn rest_token(&self, job: &StreamJob) -> Option<String> {
        self.rest_token_key.as_ref()?.token_for(job)
    }

    /// A client for `job`'s JobManager that sends the job's REST token (when tokens are on).
    fn jobmanager_client(&self, job: &StreamJob) -> JobManagerClient {
        let namespace = job.namespace().unwrap_or_else(|| "default".into());
        JobManagerClient::new(
            self.http.clone(),
            self.endpoint.base_url(&namespace, &job.name_any()),
        )
        .with_token(self.rest_token(job))
    }
}

/// The S3 settings for the operator's own storage calls on behalf of `job`: the job's
/// `spec.job.s3`, with a bare Service name as endpoint host (`http://minio:9000`, which the
/// job's pods resolve in their namespace) qualified with the job's namespace, because the
/// operator runs in another one.
pub fn storage_settings(job: &StreamJob, namespace: &str) -> S3Options {
    let mut s3 = job.spec.job.s3.clone();
    if let Some(endpoint) = &s3.endpoint {
        s3.endpoint = Some(qualify_endpoint(endpoint, namespace));
    }
    s3
}

fn qualify_endpoint(endpoint: &str, namespace: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (authority, None),
    };
    if host.contains('.') || host.contains('[') || host == "localhost" || host.is_empty() {
        return endpoint.to_string();
    }
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let scheme = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{scheme}{host}.{namespace}.svc{port}{path}")
}

/// One reconcile of one StreamJob.
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Requeue> {
    let span = info_span!("reconcile", namespace = %job.namespace().unwrap_or_default(), name = %job.name_any());
    async move {
        let started = Instant::now();
        // One client (and one token derivation) for the whole reconcile.
        let jobmanager = ctx.jobmanager_client(&job);
        let observed = observe::observe(&job, &ctx, &jobmanager).await?;
        let plan = lifecycle::plan(&observed);
        let requeue = plan.requeue_after;
        apply::apply(&job, &ctx, &jobmanager, plan).await?;
        ctx.metrics.observe_reconcile(started.elapsed());
        Ok(requeue.map_or_else(Requeue::await_change, Requeue::requeue))
    }
    .instrument(span)
    .await
}

/// Transient errors (API server, network, a restarting JobManager) retry soon; the rest wait
/// for a change of the StreamJob (with a slow safety requeue).
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.observe_error(error);
    warn!(name = %job.name_any(), error = %error, transient = error.is_transient(), "reconcile failed");
    if error.is_transient() {
        Requeue::requeue(Duration::from_secs(10))
    } else {
        Requeue::requeue(Duration::from_secs(300))
    }
}

/// Which namespaces to watch.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

/// A shutdown request (SIGTERM/SIGINT) that every controller can wait for.
#[derive(Clone)]
pub struct Shutdown(Shared<oneshot::Receiver<()>>);

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown").finish_non_exhaustive()
    }
}

impl Shutdown {
    /// Sending on the sender requests shutdown; dropping it does not.
    pub fn new() -> (oneshot::Sender<()>, Shutdown) {
        let (sender, receiver) = oneshot::channel();
        (sender, Shutdown(receiver.shared()))
    }

    /// Resolves once shutdown was requested.
    pub async fn requested(self) {
        if self.0.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the controller until `shutdown`: then it starts no new reconcile, lets the running
/// ones finish, and returns.
pub async fn run(ctx: Arc<Context>, scope: Scope, shutdown: Shutdown) {
    let apis: Vec<(Api<StreamJob>, Api<Deployment>, Api<ConfigMap>)> = match scope {
        Scope::All => vec![(
            Api::all(ctx.client.clone()),
            Api::all(ctx.client.clone()),
            Api::all(ctx.client.clone()),
        )],
        Scope::Namespaces(namespaces) => namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                )
            })
            .collect(),
    };
    let controllers = apis.into_iter().map(|(jobs, deployments, config_maps)| {
        let ctx = ctx.clone();
        Controller::new(jobs, watcher::Config::default().any_semantic())
            .owns(
                deployments,
                watcher::Config::default().labels("app.kubernetes.io/name=weir"),
            )
            .owns(
                config_maps,
                watcher::Config::default().labels("app.kubernetes.io/name=weir"),
            )
            .graceful_shutdown_on(shutdown.clone().requested())
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "controller event");
                }
            })
    });
    futures::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod storage_settings_tests {
    use super::qualify_endpoint;

    #[test]
    fn bare_service_hosts_resolve_in_the_job_namespace() {
        assert_eq!(
            qualify_endpoint("http://minio:9000", "jobs"),
            "http://minio.jobs.svc:9000"
        );
        assert_eq!(
            qualify_endpoint("https://minio", "jobs"),
            "https://minio.jobs.svc"
        );
    }

    #[test]
    fn qualified_hosts_and_addresses_stay_as_written() {
        for endpoint in [
            "http://minio.storage.svc:9000",
            "https://s3.eu-west-1.amazonaws.com",
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            assert_eq!(qualify_endpoint(endpoint, "jobs"), endpoint);
        }
    }
}
