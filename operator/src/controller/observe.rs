//! Reads the world for one StreamJob: its Deployments (and through them what is left of its
//! pods), the JobManager's view of the job, the trigger in flight, and the latest completed
//! checkpoint in storage. Read-only.

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, ResourceExt};

use super::Context;
use crate::build::{job_id, jobmanager_name, taskmanager_name};
use crate::crd::{Lifecycle, StreamJob};
use crate::jobmanager::JobManagerClient;
use crate::lifecycle::{JobManagerView, JobPods, LatestCheckpoint, Observed, StorageProbe};
use crate::{Error, Result};

pub(super) async fn observe(
    job: &StreamJob,
    ctx: &Context,
    client: &JobManagerClient,
) -> Result<Observed> {
    let namespace = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let id = job_id(&namespace, &name);
    let status = job.status.clone().unwrap_or_default();

    let jobmanager = if status.lifecycle == Lifecycle::Suspended || status.deployed.is_none() {
        JobManagerView::Unreachable("no JobManager deployed".into())
    } else {
        match client.job(&id).await {
            Ok(Some(overview)) => {
                let latest_checkpoint = client
                    .checkpoints(&id)
                    .await
                    .ok()
                    .and_then(|stats| stats.latest);
                JobManagerView::Job {
                    overview,
                    latest_checkpoint,
                }
            }
            Ok(None) => JobManagerView::NoJob,
            Err(e) => JobManagerView::Unreachable(e.to_string()),
        }
    };

    let operation = status.operation.as_ref();
    let savepoint = match operation.and_then(|op| op.trigger_id.as_deref()) {
        Some(trigger) => client.savepoint_status(&id, trigger).await.ok(),
        None => None,
    };
    let s3 = super::storage_settings(job, &namespace);
    let mut storage_probe = StorageProbe::NotChecked;
    let target_savepoint_complete = match operation.and_then(|op| op.target_directory.as_deref()) {
        Some(dir) => match ctx.store.has_metadata(&s3, dir).await {
            Ok(found) => found,
            Err(e) => {
                storage_probe = StorageProbe::Failed(crate::error_chain(&e));
                None
            }
        },
        None => None,
    };

    let storage = job
        .spec
        .job
        .checkpointing
        .as_ref()
        .map(|c| c.storage.as_str());
    let listed = match storage {
        Some(storage) if ctx.store.can_list(storage) => {
            match ctx
                .store
                .latest_completed_checkpoint(&s3, storage, &id)
                .await
            {
                Ok(found) => {
                    if storage_probe == StorageProbe::NotChecked {
                        storage_probe = StorageProbe::Readable;
                    }
                    Some(found)
                }
                Err(e) => {
                    // Storage trouble must not stall savepoints and upgrades in flight; the
                    // restore point then shows `verified: false`, the `StorageAccess`
                    // condition says why, and the log says it once (see `apply`).
                    storage_probe = StorageProbe::Failed(crate::error_chain(&e));
                    None
                }
            }
        }
        _ => None,
    };
    let latest_checkpoint = match (listed, storage) {
        (Some(found), _) => found.map(|c| LatestCheckpoint {
            id: c.id,
            path: c.path,
            verified: true,
        }),
        (None, Some(_)) => {
            // Storage not listable: what the JobManager reported, or what status remembers.
            let reported = match &jobmanager {
                JobManagerView::Job {
                    latest_checkpoint: Some(info),
                    ..
                } => info.external_path.clone().map(|path| (info.id, path)),
                _ => None,
            };
            reported
                .or_else(|| {
                    let last = status.last_checkpoint.as_ref()?;
                    Some((last.id, last.path.clone()?))
                })
                .map(|(id, path)| LatestCheckpoint {
                    id,
                    path,
                    verified: false,
                })
        }
        (None, None) => None,
    };

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut workloads_ready = true;
    let mut taskmanagers_exist = false;
    let mut job_pods = JobPods::default();
    for deployment_name in [jobmanager_name(&name), taskmanager_name(&name)] {
        let deployment = deployments
            .get_opt(&deployment_name)
            .await
            .map_err(|source| Error::Kube {
                action: "get",
                kind: "Deployment",
                namespace: namespace.clone(),
                name: deployment_name.clone(),
                source: Box::new(source),
            })?;
        workloads_ready &= deployment.as_ref().is_some_and(rolled_out);
        if let Some(deployment) = &deployment {
            job_pods.deployments += 1;
            job_pods.pods += pods_of(deployment);
        }
        if deployment_name == taskmanager_name(&name) {
            taskmanagers_exist = deployment.is_some();
        }
    }

    Ok(Observed {
        job: job.clone(),
        now: (ctx.clock)(),
        jobmanager,
        workloads_ready,
        savepoint,
        target_savepoint_complete,
        latest_checkpoint,
        storage: storage_probe,
        taskmanagers_exist,
        job_pods,
    })
}

/// Pods a Deployment reports, running or terminating.
fn pods_of(deployment: &Deployment) -> u32 {
    let Some(status) = &deployment.status else {
        return 0;
    };
    let count = |n: Option<i32>| u32::try_from(n.unwrap_or(0)).unwrap_or(0);
    count(status.replicas) + count(status.terminating_replicas)
}

/// The Deployment controller saw the latest spec and every replica is updated and available.
fn rolled_out(deployment: &Deployment) -> bool {
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let Some(status) = &deployment.status else {
        return false;
    };
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) == wanted
        && status.available_replicas.unwrap_or(0) == wanted
}
