//! The kind scenarios of issue 5. Each drives a `sequence-check` StreamJob through one
//! disruption and ends by reading the committed output from S3: every (key, seq) exactly once,
//! no alert. They need a kind cluster prepared by scripts/e2e-kind.sh (images loaded, MinIO,
//! the chart installed) and the JobManager/TaskManager roles of the worker.
//!
//! They are `#[ignore]`d so that `cargo test` here lists each with what it needs; the script
//! runs them with `--ignored`. Without WEIR_E2E=1, Docker or the cluster, each prints one line
//! saying what is missing and returns.

use std::time::Duration;

use serde_json::json;
use weir_e2e::Result;
use weir_e2e::cluster::{
    Cluster, SequenceJob, assert_exactly_once, last_checkpoint_id, savepoints_for,
};

/// Starts a job and waits for two completed checkpoints, so every disruption has state to
/// restore.
async fn running_job(cluster: &Cluster, job: &SequenceJob) -> Result<serde_json::Value> {
    cluster.start(job).await?;
    cluster.wait_for_checkpoints(&job.name, 2).await
}

/// The common end of every scenario: wait for the bounded output, check it, clean up.
async fn finish_exactly_once(cluster: &Cluster, job: &SequenceJob) -> Result<()> {
    let report = cluster.wait_until_finished(job).await?;
    assert_exactly_once(job, &report);
    cluster.delete_job(&job.name).await
}

#[tokio::test]
#[ignore = "kind scenario: needs Docker, kind and WEIR_E2E=1 (scripts/e2e-kind.sh)"]
async fn steady_state_checkpoints_complete_and_appear_in_status() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("steady_state").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("steady", &cluster.config);
    cluster.start(&job).await?;
    let status = cluster.wait_for_checkpoints(&job.name, 3).await?;
    assert!(
        status["lastCheckpoint"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("s3://weir/e2e/checkpoints/")),
        "status.lastCheckpoint must name the checkpoint in S3: {status}"
    );
    assert_eq!(status["restarts"].as_u64().unwrap_or(0), 0, "{status}");
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "kind scenario: needs Docker, kind and WEIR_E2E=1 (scripts/e2e-kind.sh)"]
async fn deleted_taskmanager_pod_restores_from_latest_checkpoint() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("taskmanager_loss").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("tm-loss", &cluster.config);
    let before = last_checkpoint_id(&running_job(&cluster, &job).await?);
    let victims = cluster.pods(&job.name, "taskmanager").await?;
    let victim = victims
        .first()
        .and_then(|p| p.metadata.name.clone())
        .expect("a running job has TaskManager pods");
    cluster.delete_pod(&victim).await?;
    // Processing resumed: a replacement pod and checkpoints beyond the one before the loss.
    cluster
        .wait_for_status(
            &job.name,
            "checkpoints to continue after the TaskManager loss",
            Duration::from_secs(300),
            |s| s["lifecycle"] == "Running" && last_checkpoint_id(s) >= before + 2,
        )
        .await?;
    let replaced = cluster.pods(&job.name, "taskmanager").await?;
    assert!(
        replaced
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some(&victim)),
        "the deleted TaskManager pod {victim} is still listed"
    );
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "kind scenario: needs Docker, kind and WEIR_E2E=1 (scripts/e2e-kind.sh)"]
async fn deleted_jobmanager_pod_restores_from_latest_checkpoint() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("jobmanager_loss").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("jm-loss", &cluster.config);
    let before = last_checkpoint_id(&running_job(&cluster, &job).await?);
    let jobmanager = cluster.pods(&job.name, "jobmanager").await?;
    let victim = jobmanager
        .first()
        .and_then(|p| p.metadata.name.clone())
        .expect("a running job has a JobManager pod");
    cluster.delete_pod(&victim).await?;
    let status = cluster
        .wait_for_status(
            &job.name,
            "a restore point from a checkpoint after the JobManager loss",
            Duration::from_secs(300),
            |s| {
                s["lifecycle"] == "Running"
                    && s["restorePoint"]["kind"] == "checkpoint"
                    && last_checkpoint_id(s) > before
            },
        )
        .await?;
    assert!(
        status["restorePoint"]["path"]
            .as_str()
            .is_some_and(|p| p.contains("/chk-")),
        "the new JobManager must restore from a checkpoint, never from empty: {status}"
    );
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "kind scenario: needs Docker, kind and WEIR_E2E=1 (scripts/e2e-kind.sh)"]
async fn rescale_from_2_to_3_takes_a_savepoint_and_restores_at_3() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("rescale").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("rescale", &cluster.config).with_parallelism(2);
    running_job(&cluster, &job).await?;
    cluster
        .patch_spec(&job.name, json!({"parallelism": 3}))
        .await?;
    let status = cluster
        .wait_for_status(
            &job.name,
            "the job running at parallelism 3 from a rescale savepoint",
            Duration::from_secs(300),
            |s| {
                s["lifecycle"] == "Running"
                    && s["deployed"]["parallelism"] == 3
                    && savepoints_for(s, "rescale") >= 1
            },
        )
        .await?;
    assert_eq!(status["restorePoint"]["kind"], "savepoint", "{status}");
    let taskmanagers = cluster
        .deployment(&format!("{}-taskmanager", job.name))
        .await?
        .and_then(|d| d.spec.replicas);
    assert_eq!(taskmanagers, Some(3), "one slot per TaskManager: 3 pods");
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "kind scenario: needs Docker, kind and WEIR_E2E=1 (scripts/e2e-kind.sh)"]
async fn image_change_upgrades_through_a_savepoint() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("upgrade").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("upgrade", &cluster.config);
    running_job(&cluster, &job).await?;
    let next = cluster.config.next_image.clone();
    cluster
        .patch_spec(&job.name, json!({"image": next}))
        .await?;
    let status = cluster
        .wait_for_status(
            &job.name,
            "the job running on the new image from an upgrade savepoint",
            Duration::from_secs(300),
            |s| s["lifecycle"] == "Running" && savepoints_for(s, "upgrade") >= 1,
        )
        .await?;
    assert_eq!(status["restorePoint"]["kind"], "savepoint", "{status}");
    let image = cluster
        .deployment(&format!("{}-jobmanager", job.name))
        .await?
        .and_then(|d| d.spec.template.spec)
        .and_then(|p| p.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(image.as_deref(), Some(next.as_str()));
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "kind scenario: needs Docker, kind and WEIR_E2E=1 (scripts/e2e-kind.sh)"]
async fn suspend_then_resume_continues_from_the_savepoint() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("suspend_resume").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("suspend", &cluster.config);
    running_job(&cluster, &job).await?;
    cluster
        .patch_spec(&job.name, json!({"state": "suspended"}))
        .await?;
    cluster
        .wait_for_status(
            &job.name,
            "the job suspended with a savepoint",
            Duration::from_secs(300),
            |s| s["lifecycle"] == "Suspended" && savepoints_for(s, "suspend") >= 1,
        )
        .await?;
    for workload in ["jobmanager", "taskmanager"] {
        let name = format!("{}-{workload}", job.name);
        assert!(
            cluster.deployment(&name).await?.is_none(),
            "a suspended job keeps no {workload} Deployment"
        );
    }
    // While suspended the committed output is a clean prefix and does not move.
    let suspended = cluster.committed(&job).await?;
    assert!(
        suspended.violations().is_empty(),
        "{:?}",
        suspended.violations()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(cluster.committed(&job).await?.records, suspended.records);

    cluster
        .patch_spec(&job.name, json!({"state": "running"}))
        .await?;
    let status = cluster
        .wait_for_status(
            &job.name,
            "the job running again from the suspend savepoint",
            Duration::from_secs(300),
            |s| s["lifecycle"] == "Running" && s["restorePoint"]["kind"] == "savepoint",
        )
        .await?;
    assert!(status["restorePoint"]["path"].is_string(), "{status}");
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "kind scenario: needs Docker, kind and WEIR_E2E=1 (scripts/e2e-kind.sh)"]
async fn invalid_manifests_are_rejected_by_the_api_server() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("invalid_manifest").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("invalid", &cluster.config);
    let rejected = |mut manifest: serde_json::Value, edit: &dyn Fn(&mut serde_json::Value)| {
        edit(&mut manifest);
        manifest
    };
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "parallelism 0",
            rejected(job.manifest(), &|m| m["spec"]["parallelism"] = json!(0)),
            "parallelism",
        ),
        (
            "parallelism above maxParallelism",
            rejected(job.manifest(), &|m| {
                m["spec"]["parallelism"] = json!(9);
                m["spec"]["job"]["maxParallelism"] = json!(8);
            }),
            "must not exceed",
        ),
        (
            "savepoint mode without checkpoint storage",
            rejected(job.manifest(), &|m| {
                if let Some(job) = m["spec"]["job"].as_object_mut() {
                    job.remove("checkpointing");
                }
            }),
            "checkpointing",
        ),
        (
            "unknown upgrade mode",
            rejected(job.manifest(), &|m| {
                m["spec"]["upgradeMode"] = json!("yolo")
            }),
            "upgradeMode",
        ),
    ];
    for (case, manifest, mentions) in cases {
        match cluster.create_manifest(manifest).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{case}: {status:?}");
                assert!(
                    status.message.contains(mentions),
                    "{case}: the rejection should mention `{mentions}`: {}",
                    status.message
                );
            }
            Ok(_) => {
                let _ = cluster.delete_job(&job.name).await;
                panic!("{case}: the API server accepted an invalid StreamJob");
            }
            Err(other) => panic!("{case}: unexpected error {other}"),
        }
    }

    // Immutable fields: a valid job cannot change its job name afterwards.
    cluster.start(&job).await?;
    let renamed = cluster
        .jobs
        .patch(
            &job.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"job": {"name": "url-count"}}})),
        )
        .await;
    match renamed {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("immutable"), "{}", status.message);
        }
        other => panic!("changing job.name must be rejected, got {other:?}"),
    }
    cluster.delete_job(&job.name).await?;

    // Nothing rejected ever ran: whatever got committed is clean (the valid job ran briefly).
    let report = cluster.committed(&job).await?;
    assert!(report.violations().is_empty(), "{:?}", report.violations());
    Ok(())
}
