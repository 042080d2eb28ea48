//! Carries out a plan: the status is written first (intent, savepoint directory), then each
//! action in order. A trigger id returned by the JobManager is written to status at once, so a
//! restarted operator polls it instead of asking for a second savepoint. A StreamJob that is
//! gone (NotFound: its finalizer was just removed, the controller's cache is behind) ends the
//! apply successfully: there is nothing left to do for it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use weir_spec::fault_points::{self, FaultPoint};

use super::Context;
use crate::build::{
    Owner, children, job_id, jobmanager_name, network_policy, peer_tls_secret,
    peer_tls_secret_name, require_peer_tls, require_rest_token, rest_token_secret,
    taskmanager_name,
};
use crate::crd::{CONDITION_STORAGE_ACCESS, OperationStep, StreamJob, StreamJobStatus};
use crate::jobmanager::JobManagerClient;
use crate::lifecycle::{Action, Event, EventAction, Plan};
use crate::{Error, FIELD_MANAGER, FINALIZER, Result};

pub(super) async fn apply(
    job: &StreamJob,
    ctx: &Context,
    client: &JobManagerClient,
    plan: Plan,
) -> Result<()> {
    let namespace = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut status = plan.status;
    let old = job.status.clone().unwrap_or_default();
    let redeploys_from_savepoint = redeploys_from_savepoint(&old, &status);
    if job.status.as_ref() != Some(&status) {
        if redeploys_from_savepoint {
            fault_points::hit(FaultPoint::OperatorSavepointObserved);
        }
        if write_status(&jobs, &name, &status).await? == Written::Gone {
            return Ok(());
        }
        if redeploys_from_savepoint {
            fault_points::hit(FaultPoint::OperatorRedeployRecorded);
        }
        log_storage_access(&old, &status);
        if old.lifecycle != status.lifecycle {
            let spent = match (old.lifecycle_since, status.lifecycle_since) {
                (Some(from), Some(to)) if to >= from => {
                    Some(std::time::Duration::from_millis((to - from) as u64))
                }
                _ => None,
            };
            ctx.metrics
                .observe_transition(old.lifecycle, status.lifecycle, spent);
        }
    }
    let id = job_id(&namespace, &name);
    for action in plan.actions {
        match action {
            Action::AddFinalizer | Action::RemoveFinalizer => {
                let add = action == Action::AddFinalizer;
                let Some(operations) = finalizer_patch(job.finalizers(), add) else {
                    continue;
                };
                let patch =
                    serde_json::from_value(operations).map_err(|source| Error::Serialize {
                        what: "finalizer patch",
                        source,
                    })?;
                match jobs
                    .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                    .await
                {
                    Ok(_) => {}
                    // Already gone: the finalizer was removed before (this reconcile ran on a
                    // stale copy), which is what removing it was for.
                    Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                    Err(source) => {
                        return Err(kube_error(
                            "patch finalizers of",
                            "StreamJob",
                            &namespace,
                            &name,
                            source,
                        ));
                    }
                }
            }
            Action::Deploy {
                desired,
                restore,
                restart_nonce,
            } => {
                let owner = &desired.owner;
                let mut objects = children(&desired, restore, restart_nonce)?;
                if ctx.peer_tls {
                    create_peer_tls_secret(ctx, owner).await?;
                    require_peer_tls(&mut objects, owner);
                }
                // The token the client sends is the one the JobManager gets.
                if let Some(token) = client.token() {
                    // Before the JobManager that mounts it.
                    apply_object(&ctx.client, &namespace, &rest_token_secret(owner, token)?)
                        .await?;
                    require_rest_token(&mut objects, owner, token);
                }
                if ctx.network_policies {
                    // Before the pods it fences, so none ever runs unfenced.
                    apply_object(&ctx.client, &namespace, &network_policy(owner)?).await?;
                }
                apply_object(&ctx.client, &namespace, &objects.config_map).await?;
                apply_object(&ctx.client, &namespace, &objects.jobmanager_service).await?;
                apply_object(&ctx.client, &namespace, &objects.jobmanager).await?;
                apply_object(&ctx.client, &namespace, &objects.taskmanagers).await?;
            }
            Action::RemoveWorkloads | Action::RemoveTaskManagers => {
                let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
                let names = if action == Action::RemoveWorkloads {
                    vec![jobmanager_name(&name), taskmanager_name(&name)]
                } else {
                    vec![taskmanager_name(&name)]
                };
                for deployment in names {
                    match deployments
                        .delete(&deployment, &DeleteParams::foreground())
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(status)) if status.code == 404 => {}
                        Err(source) => {
                            return Err(kube_error(
                                "delete",
                                "Deployment",
                                &namespace,
                                &deployment,
                                source,
                            ));
                        }
                    }
                }
            }
            Action::TriggerSavepoint { target_directory }
            | Action::StopWithSavepoint { target_directory }
                if status.operation.is_some() =>
            {
                let stop = status.operation.as_ref().is_some_and(|op| op.stop);
                let trigger = if stop {
                    client.stop_with_savepoint(&id, &target_directory).await
                } else {
                    client.trigger_savepoint(&id, &target_directory).await
                };
                let trigger = match trigger {
                    Ok(trigger) => Ok(trigger),
                    // Refused as asked (400/403: the target breaks a rule): asking again cannot help;
                    // the lifecycle fails the savepoint with the JobManager's reason.
                    Err(Error::JobManagerStatus {
                        status: 400 | 403,
                        body,
                        ..
                    }) => Err(serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or(body)),
                    Err(e) => return Err(e),
                };
                if let Some(operation) = status.operation.as_mut() {
                    match trigger {
                        Ok(trigger) => operation.trigger_id = Some(trigger),
                        Err(reason) => operation.refused = Some(reason),
                    }
                }
                if write_status(&jobs, &name, &status).await? == Written::Gone {
                    return Ok(());
                }
            }
            Action::TriggerSavepoint { .. } | Action::StopWithSavepoint { .. } => {}
            Action::CancelJob => match client.cancel(&id).await {
                Ok(()) => {}
                // Unknown job, or one no longer running (409): nothing left to cancel.
                Err(Error::JobManagerStatus {
                    status: 404 | 409, ..
                }) => {}
                Err(e) => return Err(e),
            },
            Action::DeleteStorage { path } => {
                if let Err(e) = ctx
                    .store
                    .delete_dir(&super::storage_settings(job, &namespace), &path)
                    .await
                {
                    let event = Event {
                        warning: true,
                        reason: "StorageCleanupFailed",
                        action: EventAction::CleanUp,
                        message: e.to_string(),
                    };
                    publish(ctx, job, &event).await;
                }
            }
            Action::Event(event) => publish(ctx, job, &event).await,
        }
    }
    Ok(())
}

/// The JSON Patch (RFC 6902) that adds `FINALIZER` (`add`) or removes it, as operations on the
/// finalizers this reconcile saw; `None` when there is nothing to change.
///
/// Why a JSON Patch with `test` operations: other controllers put their own finalizers on the
/// same object. A merge patch can only replace the whole list, with the one this reconcile
/// read, so it would drop a finalizer added since (or bring back one removed since). Here an
/// add first tests that the list is still the one seen, and a removal that our entry is still
/// at its index; when someone changed the list in between, the API server refuses the whole
/// patch (422), the reconcile fails as a transient error and the next one works on a fresh
/// copy. (kube's `runtime::finalizer` patches the same way, but it wraps the whole reconcile
/// and keeps the finalizer on every object, while the plan adds it only when a deletion needs
/// cleanup outside Kubernetes, takes it off when the spec no longer does, and releases it at
/// the end of a deletion that spans several reconciles.)
pub(super) fn finalizer_patch(seen: &[String], add: bool) -> Option<serde_json::Value> {
    let held = seen.iter().any(|f| f == FINALIZER);
    if add {
        if held {
            return None;
        }
        return Some(if seen.is_empty() {
            // The API server stores no empty list: the field is absent, which `null` tests.
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        } else {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": seen},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ])
        });
    }
    if !held {
        return None;
    }
    // Every entry of ours (there should be one), last first so the indexes still to come
    // stay valid.
    let operations = seen
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, f)| f.as_str() == FINALIZER)
        .flat_map(|(index, _)| {
            let path = format!("/metadata/finalizers/{index}");
            [
                json!({"op": "test", "path": path, "value": FINALIZER}),
                json!({"op": "remove", "path": path}),
            ]
        })
        .collect();
    Some(serde_json::Value::Array(operations))
}

/// Creates the job's peer TLS Secret the first time; an existing one is left as it is (a new
/// CA would split the job's running pods into two groups that refuse each other). Asked once
/// per StreamJob and operator process.
async fn create_peer_tls_secret(ctx: &Context, owner: &Owner) -> Result<()> {
    let uid = owner.uid().unwrap_or_default().to_string();
    fn known(ctx: &Context) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        ctx.peer_tls_secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    if known(ctx).contains(&uid) {
        return Ok(());
    }
    let namespace = owner.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = peer_tls_secret_name(owner);
    let certificates = crate::peer_tls::generate(namespace, &owner.name)?;
    let secret = peer_tls_secret(owner, &certificates)?;
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => tracing::info!(secret = %name, "created the job's CA and peer certificate"),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(source) => return Err(kube_error("create", "Secret", namespace, &name, source)),
    }
    known(ctx).insert(uid);
    Ok(())
}

/// Whether this apply is the one after a stop-with-savepoint completed: the status moves from
/// savepointing to redeploying from it. The crash windows of the rescale and upgrade protocol
/// are right before and right after that status is written.
fn redeploys_from_savepoint(old: &StreamJobStatus, new: &StreamJobStatus) -> bool {
    let step = |status: &StreamJobStatus| status.operation.as_ref().map(|o| o.step);
    step(old) == Some(OperationStep::Savepointing) && step(new) == Some(OperationStep::Redeploying)
}

fn kube_error(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
    source: kube::Error,
) -> Error {
    Error::Kube {
        action,
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Written {
    Yes,
    /// The StreamJob no longer exists.
    Gone,
}

async fn write_status(
    jobs: &Api<StreamJob>,
    name: &str,
    status: &StreamJobStatus,
) -> Result<Written> {
    // Server-side apply of the whole status: fields the plan dropped (a finished operation)
    // disappear because this manager no longer sets them.
    let patch = json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "status": status,
    });
    match jobs
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(Written::Yes),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Written::Gone),
        Err(source) => Err(Error::Kube {
            action: "apply status of",
            kind: "StreamJob",
            namespace: jobs.namespace().unwrap_or_default().to_string(),
            name: name.to_string(),
            source: Box::new(source),
        }),
    }
}

/// What to log about checkpoint storage after a status change.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StorageLog {
    /// Unreadable, for the first time or with a different error: this message.
    Unreadable(String),
    /// Readable again after it was not.
    Readable,
}

/// Checkpoint storage trouble is logged once per StreamJob and distinct error, as one line:
/// when the `StorageAccess` condition turns False or its message changes, and once when it is
/// readable again. (Every reconcile of a job whose storage the operator cannot read would
/// otherwise log the same multi-line SDK error.)
pub(super) fn storage_log(old: &StreamJobStatus, new: &StreamJobStatus) -> Option<StorageLog> {
    let condition = |status: &StreamJobStatus| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_STORAGE_ACCESS)
            .map(|c| (c.status == "True", c.message.clone()))
    };
    match (condition(old), condition(new)) {
        (before, Some((false, message))) if before != Some((false, message.clone())) => {
            Some(StorageLog::Unreadable(message))
        }
        (Some((false, _)), Some((true, _))) => Some(StorageLog::Readable),
        _ => None,
    }
}

fn log_storage_access(old: &StreamJobStatus, new: &StreamJobStatus) {
    match storage_log(old, new) {
        Some(StorageLog::Unreadable(message)) => {
            tracing::warn!(condition = CONDITION_STORAGE_ACCESS, "{message}");
        }
        Some(StorageLog::Readable) => {
            tracing::info!(
                condition = CONDITION_STORAGE_ACCESS,
                "checkpoint storage is readable again"
            );
        }
        None => {}
    }
}

trait Kind {
    const KIND: &'static str;
}
impl Kind for ConfigMap {
    const KIND: &'static str = "ConfigMap";
}
impl Kind for Service {
    const KIND: &'static str = "Service";
}
impl Kind for Deployment {
    const KIND: &'static str = "Deployment";
}
impl Kind for Secret {
    const KIND: &'static str = "Secret";
}
impl Kind for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
}

async fn apply_object<K>(client: &kube::Client, namespace: &str, object: &K) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Kind
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    // Typed objects serialize without apiVersion/kind; SSA needs them.
    let mut body = serde_json::to_value(object).map_err(|source| Error::Serialize {
        what: K::KIND,
        source,
    })?;
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| kube_error("apply", K::KIND, namespace, &name, source))?;
    Ok(())
}

async fn publish(ctx: &Context, job: &StreamJob, event: &Event) {
    // Events are best effort: a failed event must not fail the reconcile after its actions ran.
    if let Err(e) = ctx.events.publish(event, &job.object_ref(&())).await {
        tracing::warn!(error = %e, reason = event.reason, "cannot publish event");
    }
}
