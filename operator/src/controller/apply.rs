//! Carries out a plan: the status is written first (intent, savepoint directory), then each
//! action in order. A trigger id returned by the JobManager is written to status at once, so a
//! restarted operator polls it instead of asking for a second savepoint.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Context;
use crate::build::{children, job_id, jobmanager_name, taskmanager_name};
use crate::crd::{StreamJob, StreamJobStatus};
use crate::jobmanager::JobManagerClient;
use crate::lifecycle::{Action, Plan};
use crate::{Error, FIELD_MANAGER, FINALIZER, Result};

pub(super) async fn apply(job: &StreamJob, ctx: &Context, plan: Plan) -> Result<()> {
    let namespace = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut status = plan.status;
    let old = job.status.clone().unwrap_or_default();
    if job.status.as_ref() != Some(&status) {
        write_status(&jobs, &name, &status).await?;
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
    let client = JobManagerClient::new(ctx.http.clone(), ctx.endpoint.base_url(&namespace, &name));
    let id = job_id(&namespace, &name);
    for action in plan.actions {
        match action {
            Action::AddFinalizer | Action::RemoveFinalizer => {
                let mut finalizers: Vec<String> = job.finalizers().to_vec();
                finalizers.retain(|f| f != FINALIZER);
                if action == Action::AddFinalizer {
                    finalizers.push(FINALIZER.to_string());
                }
                let patch = json!({"metadata": {"finalizers": finalizers}});
                jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| {
                        kube_error(
                            "patch finalizers of",
                            "StreamJob",
                            &namespace,
                            &name,
                            source,
                        )
                    })?;
            }
            Action::Deploy {
                restore,
                restart_nonce,
            } => {
                let objects = children(job, restore, restart_nonce)?;
                apply_object(&ctx.client, &namespace, &objects.config_map).await?;
                apply_object(&ctx.client, &namespace, &objects.jobmanager_service).await?;
                apply_object(&ctx.client, &namespace, &objects.jobmanager).await?;
                apply_object(&ctx.client, &namespace, &objects.taskmanagers).await?;
            }
            Action::RemoveWorkloads => {
                let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
                for deployment in [jobmanager_name(&name), taskmanager_name(&name)] {
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
                    client.stop_with_savepoint(&id, &target_directory).await?
                } else {
                    client.trigger_savepoint(&id, &target_directory).await?
                };
                if let Some(operation) = status.operation.as_mut() {
                    operation.trigger_id = Some(trigger);
                }
                write_status(&jobs, &name, &status).await?;
            }
            Action::TriggerSavepoint { .. } | Action::StopWithSavepoint { .. } => {}
            Action::CancelJob => match client.cancel(&id).await {
                Ok(()) => {}
                Err(Error::JobManagerStatus { status: 404, .. }) => {}
                Err(e) => return Err(e),
            },
            Action::DeleteStorage { path } => {
                if let Err(e) = ctx
                    .store
                    .delete_dir(&super::storage_settings(job, &namespace), &path)
                    .await
                {
                    publish(ctx, job, true, "StorageCleanupFailed", e.to_string()).await;
                }
            }
            Action::Event(event) => {
                publish(ctx, job, event.warning, event.reason, event.message).await
            }
        }
    }
    Ok(())
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

async fn write_status(jobs: &Api<StreamJob>, name: &str, status: &StreamJobStatus) -> Result<()> {
    // Server-side apply of the whole status: fields the plan dropped (a finished operation)
    // disappear because this manager no longer sets them.
    let patch = json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "status": status,
    });
    jobs.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "apply status of",
        kind: "StreamJob",
        namespace: jobs.namespace().unwrap_or_default().to_string(),
        name: name.to_string(),
        source: Box::new(source),
    })?;
    Ok(())
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

async fn publish(ctx: &Context, job: &StreamJob, warning: bool, reason: &str, note: String) {
    let event = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are best effort: a failed event must not fail the reconcile after its actions ran.
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}
