//! Reconcile end to end against a fake Kubernetes API (tower-test) and a real HTTP JobManager:
//! one test per behaviour the issue asks for, asserting on the requests the operator makes.

mod harness;

use std::time::Duration;

use weir_spec::RestoreSource;

use self::harness::*;
use crate::crd::{
    CONDITION_DEGRADED, CONDITION_READY, CONDITION_STORAGE_ACCESS, CONDITION_UPGRADE_BLOCKED,
    Condition, DesiredState, Lifecycle, OperationKind, OperationStep, RestoreKind, StreamJob,
    StreamJobStatus, UpgradeMode,
};
use crate::jobmanager::{JobState, OperationStatus, SavepointStatus};
use crate::{FIELD_MANAGER, FINALIZER};

const STOP: &str = "POST /v1/jobs/streams-clicks/stop";
const CANCEL: &str = "POST /v1/jobs/streams-clicks/cancel";

fn condition<'a>(status: &'a StreamJobStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

fn image_of(harness: &Harness, path: &str) -> String {
    harness
        .deployment(path)
        .and_then(|d| d.spec.template.spec?.containers.first()?.image.clone())
        .unwrap_or_else(|| panic!("no image in {path}"))
}

fn replicas_of(harness: &Harness, path: &str) -> Option<i32> {
    harness.deployment(path).and_then(|d| d.spec.replicas)
}

// ---- create ----

#[tokio::test]
async fn create_writes_status_then_server_side_applies_every_child() {
    let harness = Harness::new(StreamJob::test().with_parallelism(3)).await;

    harness.reconcile().await;

    let requests = harness.kube_requests_since(0);
    let first_status = requests.iter().position(|r| r.is_status());
    let first_child = requests.iter().position(|r| r.is_apply() && !r.is_status());
    assert!(
        first_status < first_child,
        "status must be written before children are applied: {requests:#?}"
    );
    assert_eq!(
        harness.applied_children_since(0),
        [
            "configmaps/clicks-job",
            "services/clicks-jobmanager",
            "deployments/clicks-jobmanager",
            "deployments/clicks-taskmanager",
        ]
    );
    for apply in requests.iter().filter(|r| r.is_apply()) {
        assert_eq!(apply.field_manager(), Some(FIELD_MANAGER), "{apply:?}");
        assert!(apply.query.contains("force=true"), "{apply:?}");
    }
    let config_map = harness.api.get(CONFIG_MAP_PATH).expect("applied");
    assert_eq!(config_map["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(harness.deployed_document().restore, RestoreSource::None);
    assert_eq!(replicas_of(&harness, TASKMANAGERS_PATH), Some(3));

    let status = harness.status();
    assert_eq!(status.lifecycle, Lifecycle::Deploying);
    assert_eq!(status.job_id.as_deref(), Some(JOB_ID));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.restore_point.map(|r| r.kind),
        Some(RestoreKind::Empty)
    );
    assert!(
        harness
            .event_reasons_since(0)
            .contains(&"Deploying".to_string())
    );
}

#[tokio::test]
async fn create_reports_running_and_ready_once_pods_and_job_are_up() {
    let harness = Harness::new(StreamJob::test()).await;
    harness.reconcile().await;

    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;

    let status = harness.status();
    assert_eq!(status.lifecycle, Lifecycle::Running);
    assert_eq!(status.job_state.as_deref(), Some("RUNNING"));
    assert_eq!(condition(&status, CONDITION_READY).status, "True");
    assert!(harness.jobmanager_calls_since(0).is_empty());
}

// ---- rescale ----

#[tokio::test]
async fn rescale_records_intent_then_stops_with_savepoint_then_redeploys_from_it() {
    let harness = Harness::running(StreamJob::test().with_parallelism(2)).await;
    let savepoint = savepoint_dir(harness.now());
    let mark = harness.mark();

    harness.edit(|spec| spec.parallelism = 4);
    harness.reconcile().await;

    assert_eq!(
        harness.jobmanager_calls_since(mark),
        [format!("{STOP} {savepoint}")]
    );
    let intent = harness.status_written_before(STOP);
    assert_eq!(intent.lifecycle, Lifecycle::Rescaling);
    let operation = intent
        .operation
        .expect("operation recorded before the call");
    assert_eq!(operation.kind, OperationKind::Rescale);
    assert_eq!(operation.target_directory.as_deref(), Some(&*savepoint));
    assert_eq!(operation.trigger_id, None);
    assert_eq!(
        harness.status().operation.and_then(|op| op.trigger_id),
        Some("trigger-1".to_string()),
        "the trigger id is recorded right after the call"
    );
    assert!(
        harness.applied_children_since(mark).is_empty(),
        "nothing is redeployed before the savepoint completes"
    );

    harness.reconcile().await;

    let document = harness.deployed_document();
    assert_eq!(document.parallelism, 4);
    assert_eq!(document.restore, RestoreSource::Path(savepoint.clone()));
    assert_eq!(replicas_of(&harness, TASKMANAGERS_PATH), Some(4));
    let status = harness.status();
    assert_eq!(status.lifecycle, Lifecycle::Rescaling);
    assert_eq!(
        status.last_savepoint.map(|s| (s.path, s.reason)),
        Some((savepoint, OperationKind::Rescale))
    );

    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;

    assert_eq!(harness.status().lifecycle, Lifecycle::Running);
    assert_eq!(harness.status().operation, None);
    let reasons = harness.event_reasons_since(mark);
    for reason in [
        "StopWithSavepoint",
        "SavepointCompleted",
        "RescaleCompleted",
    ] {
        assert!(reasons.contains(&reason.to_string()), "{reasons:?}");
    }
}

// ---- upgrade, one test per mode ----

#[tokio::test]
async fn upgrade_in_savepoint_mode_runs_the_new_image_from_a_fresh_savepoint() {
    let harness = Harness::running(StreamJob::test()).await;
    let savepoint = savepoint_dir(harness.now());
    let mark = harness.mark();

    harness.edit(|spec| spec.image = "weir:2".into());
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Upgrading);
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:1");
    harness.reconcile().await;

    assert_eq!(
        harness.jobmanager_calls_since(mark),
        [format!("{STOP} {savepoint}")]
    );
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:2");
    assert_eq!(image_of(&harness, TASKMANAGERS_PATH), "weir:2");
    assert_eq!(
        harness.deployed_document().restore,
        RestoreSource::Path(savepoint.clone())
    );
    let restore = harness.status().restore_point.expect("restore point");
    assert_eq!(
        (restore.kind, restore.path, restore.verified),
        (RestoreKind::Savepoint, Some(savepoint), true)
    );

    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Running);
    assert!(
        harness
            .event_reasons_since(mark)
            .contains(&"UpgradeCompleted".to_string())
    );
}

#[tokio::test]
async fn upgrade_in_last_state_mode_cancels_and_restores_the_latest_checkpoint_in_storage() {
    let harness =
        Harness::running(StreamJob::test().with_upgrade_mode(UpgradeMode::LastState)).await;
    harness.checkpoint_in_storage(6);
    let chk7 = harness.checkpoint_in_storage(7);
    let mark = harness.mark();

    harness.edit(|spec| spec.image = "weir:2".into());
    harness.reconcile().await;

    assert_eq!(harness.jobmanager_calls_since(mark), [CANCEL]);
    let intent = harness.status_written_before(CANCEL);
    assert_eq!(
        intent.operation.map(|op| (op.kind, op.step)),
        Some((OperationKind::Upgrade, OperationStep::Cancelling))
    );
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:1");

    harness.reconcile().await;

    assert_eq!(
        harness.deployed_document().restore,
        RestoreSource::Path(chk7.clone())
    );
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:2");
    let restore = harness.status().restore_point.expect("restore point");
    assert_eq!(
        (restore.kind, restore.path, restore.verified),
        (RestoreKind::Checkpoint, Some(chk7), true)
    );
    assert!(
        !harness
            .jobmanager_calls_since(mark)
            .iter()
            .any(|c| c.contains("savepoint") || c.starts_with(STOP)),
        "last-state takes no savepoint"
    );
}

#[tokio::test]
async fn upgrade_in_stateless_mode_redeploys_with_empty_state_without_touching_the_job() {
    let harness =
        Harness::running(StreamJob::test().with_upgrade_mode(UpgradeMode::Stateless)).await;
    harness.checkpoint_in_storage(7);
    let mark = harness.mark();

    harness.edit(|spec| spec.image = "weir:2".into());
    harness.reconcile().await;

    assert!(harness.jobmanager_calls_since(mark).is_empty());
    assert_eq!(harness.deployed_document().restore, RestoreSource::None);
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:2");
    assert_eq!(harness.status().lifecycle, Lifecycle::Upgrading);

    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Running);
}

// ---- savepoint failure ----

#[tokio::test]
async fn failed_savepoint_blocks_the_upgrade_and_leaves_the_old_job_running() {
    let harness = Harness::running(StreamJob::test()).await;
    harness.jobmanager.next_savepoint(SavepointStatus {
        status: OperationStatus::Failed,
        location: None,
        failure: Some("S3 PutObject denied".into()),
    });
    harness.edit(|spec| spec.image = "weir:2".into());
    let mark = harness.mark();

    harness.reconcile().await;
    harness.reconcile().await;
    harness.advance(MINUTE);
    harness.reconcile().await;

    let status = harness.status();
    let blocked = condition(&status, CONDITION_UPGRADE_BLOCKED);
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("True", "SavepointFailed")
    );
    assert!(
        blocked.message.contains("S3 PutObject denied"),
        "{blocked:?}"
    );
    assert_eq!(status.lifecycle, Lifecycle::Running);
    assert_eq!(status.operation, None);
    let warning = harness
        .events_since(mark)
        .into_iter()
        .find(|e| e.reason == "UpgradeBlocked")
        .expect("UpgradeBlocked event");
    assert!(warning.warning && warning.note.contains("S3 PutObject denied"));

    assert_eq!(
        harness.jobmanager_calls_since(mark).len(),
        1,
        "one savepoint attempt, no retry loop, no cancel"
    );
    assert_eq!(harness.job_state(), Some(JobState::Running));
    assert_eq!(
        harness.applied_children_since(mark),
        Vec::<String>::new(),
        "the new spec is never applied, and never from empty state"
    );
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:1");
}

#[tokio::test]
async fn savepoint_timeout_blocks_the_rescale_and_leaves_the_old_job_running() {
    let harness = Harness::running(StreamJob::test().with_savepoint_timeout("2m")).await;
    harness.jobmanager.next_savepoint(SavepointStatus {
        status: OperationStatus::InProgress,
        location: None,
        failure: None,
    });
    harness.edit(|spec| spec.parallelism = 4);
    let mark = harness.mark();

    harness.reconcile().await;
    harness.advance(MINUTE);
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Rescaling);
    harness.advance(2 * MINUTE);
    harness.reconcile().await;

    let status = harness.status();
    assert_eq!(
        condition(&status, CONDITION_UPGRADE_BLOCKED).reason,
        "SavepointTimeout"
    );
    assert_eq!(status.lifecycle, Lifecycle::Running);
    assert!(harness.applied_children_since(mark).is_empty());
    assert_eq!(replicas_of(&harness, TASKMANAGERS_PATH), Some(2));
}

// ---- JobManager loss ----

#[tokio::test]
async fn jobmanager_loss_shows_the_verified_checkpoint_it_restores_from() {
    let harness = Harness::running(StreamJob::test()).await;
    let chk7 = harness.checkpoint_in_storage(7);
    harness.jobmanager.complete_checkpoint(JOB_ID, 7, &chk7);
    harness.reconcile().await;
    assert_eq!(harness.status().last_checkpoint.map(|c| c.id), Some(7));
    let mark = harness.mark();

    harness.jobmanager.forget_jobs();
    harness.reconcile().await;

    let status = harness.status();
    let restore = status.restore_point.expect("restore point");
    assert_eq!(
        (restore.kind, restore.path.as_deref(), restore.verified),
        (RestoreKind::Checkpoint, Some(&*chk7), true)
    );
    assert_eq!(status.lifecycle, Lifecycle::Deploying);
    let lost = harness
        .events_since(mark)
        .into_iter()
        .find(|e| e.reason == "JobManagerLost")
        .expect("JobManagerLost event");
    assert!(lost.warning && lost.note.contains(&chk7), "{lost:?}");
    assert_eq!(
        harness.deployed_document().restore,
        RestoreSource::Path(chk7),
        "the replacement JobManager is pointed at the checkpoint, never at empty state"
    );
    assert!(harness.jobmanager_calls_since(mark).is_empty());

    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Running);
}

#[tokio::test]
async fn storage_outage_falls_back_to_the_reported_checkpoint_marked_unverified() {
    let harness = Harness::running(StreamJob::test()).await;
    let chk7 = format!("{CHECKPOINTS}/chk-7");
    harness.jobmanager.complete_checkpoint(JOB_ID, 7, &chk7);
    harness.reconcile().await;
    harness.storage.set_unavailable(true);

    harness.jobmanager.forget_jobs();
    harness.reconcile().await;

    let restore = harness.status().restore_point.expect("restore point");
    assert_eq!(
        (restore.kind, restore.path.as_deref(), restore.verified),
        (RestoreKind::Checkpoint, Some(&*chk7), false)
    );
}

// ---- periodic savepoints ----

#[tokio::test]
async fn periodic_savepoints_come_on_time_below_the_steady_requeue_and_are_trimmed_in_storage() {
    use kube::runtime::controller::Action as Requeue;

    let mut job = StreamJob::test();
    job.spec.savepoints.interval = Some("15s".into());
    job.spec.savepoints.retained = 2;
    let harness = Harness::running(job).await;
    let mut taken = Vec::new();
    for _ in 0..3 {
        let idle = harness.reconcile().await;
        assert_eq!(
            idle,
            Requeue::requeue(Duration::from_secs(15)),
            "back when the next savepoint is due, not after 30s"
        );
        harness.advance(Duration::from_secs(15));
        let mark = harness.mark();
        harness.reconcile().await;
        let target = savepoint_dir(harness.now());
        assert_eq!(
            harness.jobmanager_calls_since(mark),
            [format!("POST /v1/jobs/{JOB_ID}/savepoints {target}")]
        );
        harness.advance(Duration::from_secs(5));
        harness.reconcile().await;
        assert_eq!(harness.status().lifecycle, Lifecycle::Running);
        taken.push(target);
    }

    let status = harness.status();
    let history: Vec<String> = status
        .savepoint_history
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(history, taken[1..], "savepoints.retained is 2");
    assert!(
        !harness.storage.contains_dir(&taken[0]),
        "the oldest is deleted from storage"
    );
    for kept in &taken[1..] {
        assert!(harness.storage.contains_dir(kept), "{kept} kept");
    }
}

// ---- suspend and resume ----

#[tokio::test]
async fn suspend_stops_with_savepoint_then_removes_the_pods_and_keeps_the_config() {
    let harness = Harness::running(StreamJob::test()).await;
    let savepoint = savepoint_dir(harness.now());
    let mark = harness.mark();

    harness.edit(|spec| spec.state = DesiredState::Suspended);
    harness.reconcile().await;
    assert_eq!(
        harness.jobmanager_calls_since(mark),
        [format!("{STOP} {savepoint}")]
    );
    assert!(harness.status_written_before(STOP).operation.is_some());
    harness.reconcile().await;

    let deletes: Vec<String> = harness
        .kube_requests_since(mark)
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.target())
        .collect();
    assert_eq!(
        deletes,
        [
            "deployments/clicks-jobmanager",
            "deployments/clicks-taskmanager"
        ]
    );
    assert!(harness.deployment(JOBMANAGER_PATH).is_none());
    assert!(harness.api.get(CONFIG_MAP_PATH).is_some());
    let status = harness.status();
    assert_eq!(status.lifecycle, Lifecycle::Suspended);
    assert_eq!(
        status.restore_point.and_then(|r| r.path),
        Some(savepoint.clone())
    );

    let quiet = harness.mark();
    harness.reconcile().await;
    assert!(harness.applied_children_since(quiet).is_empty());
    assert!(harness.jobmanager_calls_since(quiet).is_empty());
}

#[tokio::test]
async fn resume_redeploys_from_the_suspend_savepoint() {
    let harness = Harness::running(StreamJob::test()).await;
    let savepoint = savepoint_dir(harness.now());
    harness.edit(|spec| spec.state = DesiredState::Suspended);
    harness.reconcile().await;
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Suspended);
    let mark = harness.mark();

    harness.edit(|spec| spec.state = DesiredState::Running);
    harness.reconcile().await;

    assert_eq!(
        harness.deployed_document().restore,
        RestoreSource::Path(savepoint)
    );
    assert!(harness.deployment(JOBMANAGER_PATH).is_some());
    assert!(
        harness
            .event_reasons_since(mark)
            .contains(&"Resuming".to_string())
    );
    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Running);
}

// ---- deletion ----

#[tokio::test]
async fn finalizer_is_added_only_when_deletion_needs_cleanup() {
    let plain = Harness::running(StreamJob::test()).await;
    assert_eq!(plain.job().metadata.finalizers, None);

    let guarded = Harness::running(StreamJob::test().with_final_savepoint()).await;
    assert_eq!(
        guarded.job().metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );
}

const OTHER_FINALIZER: &str = "other.example/hold";

/// Another controller edits the stored StreamJob's finalizers.
fn set_finalizers(harness: &Harness, finalizers: &[&str]) {
    harness.api.edit(JOB_PATH, |object| {
        object["metadata"]["finalizers"] = serde_json::json!(finalizers);
    });
}

fn is_conflict(error: &crate::Error) -> bool {
    matches!(error, crate::Error::Kube { source, .. }
        if matches!(source.as_ref(), kube::Error::Api(status) if status.code == 422))
}

#[test]
fn finalizer_patches_test_each_entry_they_change() {
    use super::apply::finalizer_patch;
    let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(finalizer_patch(&list(&[FINALIZER]), true), None);
    assert_eq!(finalizer_patch(&list(&[OTHER_FINALIZER]), false), None);
    assert_eq!(
        finalizer_patch(&list(&[OTHER_FINALIZER]), true),
        Some(serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": [OTHER_FINALIZER]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]))
    );
    assert_eq!(
        finalizer_patch(&list(&[FINALIZER, OTHER_FINALIZER, FINALIZER]), false),
        Some(serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers/2", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/2"},
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ]))
    );
}

#[tokio::test]
async fn adding_the_finalizer_keeps_one_another_controller_added_meanwhile() {
    let harness = Harness::new(StreamJob::test().with_final_savepoint()).await;
    let cached = harness.job();
    set_finalizers(&harness, &[OTHER_FINALIZER]);

    let error = harness
        .reconcile_cached(cached)
        .await
        .expect_err("the finalizers changed since this copy was read");
    assert!(is_conflict(&error), "{error:?}");
    assert_eq!(
        harness.job().metadata.finalizers,
        Some(vec![OTHER_FINALIZER.to_string()])
    );

    harness.reconcile().await;
    assert_eq!(
        harness.job().metadata.finalizers,
        Some(vec![OTHER_FINALIZER.to_string(), FINALIZER.to_string()])
    );
}

#[tokio::test]
async fn removing_the_finalizer_takes_only_ours_from_a_list_changed_meanwhile() {
    let harness = Harness::running(StreamJob::test().with_final_savepoint()).await;
    harness.edit(|spec| spec.on_delete.savepoint = false);
    let cached = harness.job();
    // Another controller appends its own: ours stays where this copy saw it, and goes.
    set_finalizers(&harness, &[FINALIZER, OTHER_FINALIZER]);
    harness.reconcile_cached(cached).await.expect("reconciles");
    assert_eq!(
        harness.job().metadata.finalizers,
        Some(vec![OTHER_FINALIZER.to_string()])
    );
}

#[tokio::test]
async fn removing_the_finalizer_from_a_moved_position_waits_for_a_fresh_copy() {
    let harness = Harness::running(StreamJob::test().deleting_storage_on_delete()).await;
    harness.edit(|spec| spec.on_delete = Default::default());
    let cached = harness.job();
    set_finalizers(&harness, &[OTHER_FINALIZER, FINALIZER]);

    let error = harness
        .reconcile_cached(cached)
        .await
        .expect_err("ours is no longer where this copy saw it");
    assert!(is_conflict(&error), "{error:?}");
    assert_eq!(
        harness.job().metadata.finalizers,
        Some(vec![OTHER_FINALIZER.to_string(), FINALIZER.to_string()])
    );

    harness.reconcile().await;
    assert_eq!(
        harness.job().metadata.finalizers,
        Some(vec![OTHER_FINALIZER.to_string()])
    );
}

#[tokio::test]
async fn deletion_releases_only_our_finalizer_and_the_other_keeps_the_object() {
    let harness = Harness::running(StreamJob::test().deleting_storage_on_delete()).await;
    set_finalizers(&harness, &[FINALIZER, OTHER_FINALIZER]);
    harness.checkpoint_in_storage(3);
    harness.delete();
    harness.reconcile().await; // the pods go
    harness.reconcile().await; // they are gone: storage, then the finalizer

    assert!(harness.job_exists(), "the other finalizer still holds it");
    assert_eq!(
        harness.job().metadata.finalizers,
        Some(vec![OTHER_FINALIZER.to_string()])
    );
    assert!(!harness.storage.contains_dir(CHECKPOINTS));
}

#[tokio::test]
async fn deletion_takes_a_final_savepoint_before_releasing_the_finalizer() {
    let harness = Harness::running(StreamJob::test().with_final_savepoint()).await;
    let savepoint = savepoint_dir(harness.now());
    let mark = harness.mark();

    harness.delete();
    harness.reconcile().await;
    assert!(harness.job_exists(), "the finalizer holds the object");
    assert_eq!(
        harness.jobmanager_calls_since(mark),
        [format!("{STOP} {savepoint}")]
    );
    assert_eq!(
        harness
            .status_written_before(STOP)
            .operation
            .map(|op| op.kind),
        Some(OperationKind::Delete)
    );

    harness.reconcile().await; // the savepoint completed: the pods go
    assert!(harness.deployment(JOBMANAGER_PATH).is_none());
    harness.reconcile().await; // they are gone

    assert!(!harness.job_exists(), "finalizer removed, object gone");
    assert!(harness.storage.contains_dir(&savepoint), "savepoint kept");
    let reasons = harness.event_reasons_since(mark);
    for reason in ["FinalSavepoint", "RemovingPods", "Deleted"] {
        assert!(reasons.contains(&reason.to_string()), "{reasons:?}");
    }
}

/// The DELETE requests for the JobManager and TaskManager Deployments since `mark`.
fn workload_deletes_since(harness: &Harness, mark: usize) -> Vec<String> {
    harness
        .kube_requests_since(mark)
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.target())
        .collect()
}

#[tokio::test]
async fn deletion_with_storage_cleanup_deletes_storage_only_after_the_pods_are_gone() {
    let mut harness = Harness::running(StreamJob::test().deleting_storage_on_delete()).await;
    harness.pods_take_time_to_terminate();
    harness.checkpoint_in_storage(3);
    let mark = harness.mark();

    harness.delete();
    harness.reconcile().await;
    assert_eq!(harness.jobmanager_calls_since(mark), [CANCEL]);
    assert_eq!(
        workload_deletes_since(&harness, mark),
        [
            "deployments/clicks-jobmanager",
            "deployments/clicks-taskmanager"
        ]
    );
    let recorded = harness.status_written_before(CANCEL).operation;
    assert_eq!(
        recorded.map(|op| (op.kind, op.step)),
        Some((OperationKind::Delete, OperationStep::RemovingPods))
    );
    assert!(harness.job_exists());
    assert!(
        harness
            .deployment(JOBMANAGER_PATH)
            .and_then(|d| d.metadata.deletion_timestamp)
            .is_some(),
        "the JobManager Deployment waits for its pods"
    );

    // A terminating JobManager completes one more checkpoint: storage must still be there
    // for it, and the delete must come after it. A restarted operator keeps waiting.
    harness.checkpoint_in_storage(4);
    harness.restart_operator();
    harness.advance(Duration::from_secs(5));
    harness.reconcile().await;
    assert!(
        harness
            .storage
            .contains_dir(&format!("{CHECKPOINTS}/chk-3"))
    );
    assert!(harness.job_exists());
    assert_eq!(
        harness.status().operation.map(|op| op.step),
        Some(OperationStep::RemovingPods)
    );

    harness.pods_gone();
    let gone = harness.mark();
    harness.reconcile().await;

    assert!(!harness.storage.contains_dir(CHECKPOINTS), "chk-4 too");
    assert!(!harness.job_exists());
    assert!(harness.jobmanager_calls_since(gone).is_empty());
    let reasons = harness.event_reasons_since(mark);
    assert!(reasons.contains(&"RemovingPods".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"Deleted".to_string()), "{reasons:?}");
    assert!(!reasons.contains(&"PodsNotGone".to_string()), "{reasons:?}");
}

#[tokio::test]
async fn deletion_cleans_up_anyway_when_pods_never_go_and_says_so() {
    let harness = Harness::running(StreamJob::test().deleting_storage_on_delete()).await;
    harness.pods_take_time_to_terminate();
    harness.checkpoint_in_storage(3);
    harness.delete();
    harness.reconcile().await;
    // The JobManager is crash-looping and its node is gone: nothing answers, nothing ends.
    harness.jobmanager.forget_jobs();
    harness.advance(MINUTE);
    harness.reconcile().await;
    assert!(harness.job_exists());
    let mark = harness.mark();

    harness.advance(2 * MINUTE);
    harness.reconcile().await;

    assert!(!harness.job_exists());
    assert!(!harness.storage.contains_dir(CHECKPOINTS));
    let warning = harness
        .events_since(mark)
        .into_iter()
        .find(|e| e.reason == "PodsNotGone")
        .expect("a PodsNotGone event");
    assert!(warning.warning);
    assert_eq!(warning.action, "Delete");
}

#[tokio::test]
async fn deletion_with_final_savepoint_and_storage_cleanup_keeps_only_the_final_savepoint() {
    let harness = Harness::running(
        StreamJob::test()
            .with_final_savepoint()
            .deleting_storage_on_delete(),
    )
    .await;
    harness.pods_take_time_to_terminate();
    harness.checkpoint_in_storage(3);
    let savepoint = savepoint_dir(harness.now());
    let mark = harness.mark();

    harness.delete();
    harness.reconcile().await;
    harness.reconcile().await;
    assert!(
        harness.storage.contains_dir(CHECKPOINTS),
        "pods still there"
    );
    assert!(harness.job_exists());
    assert!(
        !harness
            .jobmanager_calls_since(mark)
            .contains(&CANCEL.to_string()),
        "the final savepoint stopped the job"
    );

    harness.pods_gone();
    harness.reconcile().await;

    assert!(!harness.job_exists());
    assert!(!harness.storage.contains_dir(CHECKPOINTS));
    assert!(harness.storage.contains_dir(&savepoint));
}

// ---- operator restart ----

#[tokio::test]
async fn restart_during_a_savepoint_polls_the_recorded_trigger_instead_of_taking_another() {
    let mut harness = Harness::running(StreamJob::test()).await;
    harness.jobmanager.next_savepoint(SavepointStatus {
        status: OperationStatus::InProgress,
        location: None,
        failure: None,
    });
    let savepoint = savepoint_dir(harness.now());
    let mark = harness.mark();
    harness.edit(|spec| spec.image = "weir:2".into());
    harness.reconcile().await;

    harness.restart_operator();
    harness.advance(Duration::from_secs(5));
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Upgrading);
    harness.jobmanager.finish_savepoints();
    harness.reconcile().await;

    assert_eq!(
        harness.jobmanager_calls_since(mark),
        [format!("{STOP} {savepoint}")],
        "exactly one stop-with-savepoint"
    );
    assert_eq!(
        harness.deployed_document().restore,
        RestoreSource::Path(savepoint)
    );
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:2");
}

#[tokio::test]
async fn restart_after_losing_the_trigger_id_finds_the_savepoint_in_storage() {
    let mut harness = Harness::running(StreamJob::test()).await;
    let savepoint = savepoint_dir(harness.now());
    let mark = harness.mark();
    harness.edit(|spec| spec.image = "weir:2".into());
    // The intent is written, the JobManager takes the savepoint, then the operator dies
    // before it can record the trigger id.
    harness.api.fail_status_write_after(1);
    harness
        .try_reconcile()
        .await
        .expect_err("the trigger id write fails");
    let recorded = harness.status().operation.expect("intent survived");
    assert_eq!(recorded.trigger_id, None);
    assert_eq!(recorded.target_directory.as_deref(), Some(&*savepoint));

    harness.restart_operator();
    harness.reconcile().await;

    assert_eq!(
        harness.jobmanager_calls_since(mark),
        [format!("{STOP} {savepoint}")],
        "no second savepoint"
    );
    assert_eq!(
        harness.deployed_document().restore,
        RestoreSource::Path(savepoint)
    );
    assert_eq!(harness.status().lifecycle, Lifecycle::Upgrading);
}

// ---- invalid specs ----

#[tokio::test]
async fn invalid_new_spec_sets_degraded_and_warns_without_deploying_anything() {
    let harness = Harness::new(StreamJob::test().with_savepoint_timeout("soon")).await;

    harness.reconcile().await;
    harness.reconcile().await;

    let status = harness.status();
    let degraded = condition(&status, CONDITION_DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded.message.contains("savepoints.timeout"),
        "{degraded:?}"
    );
    let warnings: Vec<_> = harness
        .events_since(0)
        .into_iter()
        .filter(|e| e.reason == "InvalidSpec")
        .collect();
    assert_eq!(warnings.len(), 1, "one event, not one per reconcile");
    assert!(warnings[0].warning && warnings[0].note.contains("savepoints.timeout"));
    assert!(harness.applied_children_since(0).is_empty());
    assert!(harness.jobmanager_calls_since(0).is_empty());
    assert_eq!(status.deployed, None);
}

#[tokio::test]
async fn invalid_edit_of_a_running_job_touches_nothing_that_runs() {
    let harness = Harness::running(StreamJob::test()).await;
    let mark = harness.mark();

    harness.edit(|spec| {
        spec.image = "weir:2".into();
        spec.savepoints.timeout = "soon".into();
    });
    harness.reconcile().await;

    let status = harness.status();
    assert_eq!(condition(&status, CONDITION_DEGRADED).reason, "InvalidSpec");
    assert!(harness.applied_children_since(mark).is_empty());
    assert!(harness.jobmanager_calls_since(mark).is_empty());
    assert!(
        !harness
            .kube_requests_since(mark)
            .iter()
            .any(|r| r.method == "DELETE")
    );
    assert_eq!(harness.job_state(), Some(JobState::Running));
    assert_eq!(image_of(&harness, JOBMANAGER_PATH), "weir:1");

    harness.edit(|spec| spec.savepoints.timeout = "10m".into());
    harness.reconcile().await;
    assert_eq!(
        condition(&harness.status(), CONDITION_DEGRADED).status,
        "False"
    );
    assert_eq!(harness.status().lifecycle, Lifecycle::Upgrading);
}

// ---- a bounded job finishes ----

#[tokio::test]
async fn bounded_job_that_finishes_is_finished_and_never_restarted() {
    let harness = Harness::running(StreamJob::test()).await;
    let mark = harness.mark();

    harness.jobmanager.finish_job(JOB_ID);
    harness.reconcile().await;

    let status = harness.status();
    assert_eq!(status.lifecycle, Lifecycle::Finished);
    assert_eq!(status.job_state.as_deref(), Some("FINISHED"));
    assert!(
        harness.deployment(JOBMANAGER_PATH).is_some(),
        "the JobManager keeps serving the final state"
    );
    assert!(harness.deployment(TASKMANAGERS_PATH).is_none());
    let events = harness.events_since(mark);
    assert!(events.iter().all(|e| !e.warning), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e.reason == "JobFinished" && e.action == "ObserveJob"),
        "{events:?}"
    );

    let quiet = harness.mark();
    for _ in 0..3 {
        harness.advance(10 * MINUTE);
        harness.reconcile().await;
    }
    let status = harness.status();
    assert_eq!(status.lifecycle, Lifecycle::Finished);
    assert_eq!(status.operator_restarts, 0);
    assert_eq!(condition(&status, CONDITION_DEGRADED).status, "False");
    assert_eq!(condition(&status, CONDITION_READY).reason, "Finished");
    assert!(harness.applied_children_since(quiet).is_empty());
    assert!(harness.jobmanager_calls_since(quiet).is_empty());
    assert!(harness.events_since(quiet).is_empty());
    assert!(
        !harness
            .kube_requests_since(quiet)
            .iter()
            .any(|r| r.method == "DELETE")
    );
}

#[tokio::test]
async fn finished_job_redeploys_from_its_final_checkpoint_when_the_spec_changes() {
    let harness = Harness::running(StreamJob::test()).await;
    let chk5 = format!("{CHECKPOINTS}/chk-5");
    harness.storage.put_metadata(&chk5);
    harness.jobmanager.finish_job(JOB_ID);
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Finished);
    let mark = harness.mark();

    harness.edit(|spec| spec.parallelism = 4);
    harness.reconcile().await;

    assert!(
        harness.jobmanager_calls_since(mark).is_empty(),
        "no savepoint of a finished job"
    );
    assert_eq!(
        harness.deployed_document().restore,
        RestoreSource::Path(chk5)
    );
    assert_eq!(replicas_of(&harness, TASKMANAGERS_PATH), Some(4));
    assert_eq!(harness.status().lifecycle, Lifecycle::Rescaling);
    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Running);
}

// ---- events ----

#[tokio::test]
async fn events_with_different_messages_are_separate_events() {
    let harness = Harness::running(StreamJob::test()).await;
    let mark = harness.mark();

    harness.edit(|spec| spec.parallelism = 4);
    harness.reconcile().await;
    harness.reconcile().await;
    harness.cluster_runs_what_was_deployed();
    harness.reconcile().await;
    assert_eq!(harness.status().lifecycle, Lifecycle::Running);
    harness.advance(MINUTE);
    harness.edit(|spec| spec.image = "weir:2".into());
    harness.reconcile().await;

    let stops: Vec<_> = harness
        .events_since(mark)
        .into_iter()
        .filter(|e| e.reason == "StopWithSavepoint")
        .collect();
    assert_eq!(stops.len(), 2, "{stops:?}");
    assert!(stops[0].note.starts_with("Rescale: "), "{stops:?}");
    assert!(stops[1].note.starts_with("Upgrade: "), "{stops:?}");
    assert!(stops.iter().all(|e| e.action == "StopWithSavepoint"));
    let stored: Vec<_> = harness
        .stored_events("StopWithSavepoint")
        .into_iter()
        .map(|e| e["note"].clone())
        .collect();
    assert_eq!(stored.len(), 2, "each message is its own Event: {stored:?}");

    let transitions: Vec<String> = harness
        .events_since(0)
        .into_iter()
        .filter(|e| e.reason == "LifecycleChanged")
        .map(|e| e.note)
        .collect();
    assert!(transitions.len() >= 4, "{transitions:?}");
    for transition in &transitions {
        let (from, to) = transition.split_once(" -> ").expect("from -> to");
        assert_ne!(from, to, "{transitions:?}");
    }
    assert!(harness.event_repeats_since(0).is_empty());
}

#[tokio::test]
async fn the_same_event_again_is_counted_on_the_first_one() {
    let harness = Harness::running(StreamJob::test()).await;
    let mark = harness.mark();

    harness
        .jobmanager
        .restart_after_failure(JOB_ID, "task 1 failed: boom");
    harness.reconcile().await;
    harness
        .jobmanager
        .restart_after_failure(JOB_ID, "task 1 failed: boom");
    harness.advance(Duration::from_secs(30));
    harness.reconcile().await;
    harness
        .jobmanager
        .restart_after_failure(JOB_ID, "task 2 failed: bang");
    harness.advance(Duration::from_secs(30));
    harness.reconcile().await;

    let restarts: Vec<_> = harness
        .events_since(mark)
        .into_iter()
        .filter(|e| e.reason == "JobRestarting")
        .collect();
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    assert!(restarts[0].warning && restarts[0].note.contains("boom"));
    assert!(restarts[1].note.contains("bang"));
    let repeats = harness.event_repeats_since(mark);
    assert_eq!(repeats.len(), 1, "{repeats:?}");
    assert_eq!(repeats[0].1, 2);
    let boom = harness.stored_events("JobRestarting");
    assert_eq!(boom[0]["series"]["count"], 2, "{boom:?}");
}

// ---- restarts inside the JobManager ----

#[tokio::test]
async fn jobmanager_restarts_show_in_status_and_degraded() {
    let harness = Harness::running(StreamJob::test()).await;

    harness
        .jobmanager
        .restart_after_failure(JOB_ID, "task 1 failed: boom");
    harness.reconcile().await;

    let status = harness.status();
    assert_eq!(status.lifecycle, Lifecycle::Running);
    assert_eq!(status.job_manager_restarts, 1);
    assert_eq!(status.operator_restarts, 0);
    let failure = status.last_failure.clone().expect("last failure");
    assert_eq!(
        (failure.message.as_str(), failure.time),
        ("task 1 failed: boom", harness.now())
    );
    let degraded = condition(&status, CONDITION_DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "JobRestarting")
    );

    harness.advance(6 * MINUTE);
    harness.reconcile().await;
    let status = harness.status();
    assert_eq!(condition(&status, CONDITION_DEGRADED).status, "False");
    assert_eq!(status.job_manager_restarts, 1);
}

// ---- a StreamJob that is already gone ----

#[tokio::test]
async fn reconciling_a_stale_copy_after_the_finalizer_was_removed_succeeds() {
    let harness = Harness::running(StreamJob::test().deleting_storage_on_delete()).await;
    harness.delete();
    harness.reconcile().await; // the pods go
    let cached = harness.job();
    harness.reconcile().await;
    assert!(!harness.job_exists());
    let mark = harness.mark();

    harness
        .reconcile_cached(cached)
        .await
        .expect("a StreamJob that is gone needs nothing more: success, not NotFound");

    assert!(
        !harness
            .event_reasons_since(mark)
            .contains(&"Deleted".to_string()),
        "the cleanup is announced once"
    );
}

// ---- checkpoint storage the operator cannot read ----

#[tokio::test]
async fn unreadable_storage_shows_in_a_condition_written_once() {
    let harness = Harness::running(StreamJob::test()).await;
    harness.storage.set_unavailable(true);

    harness.reconcile().await;
    let status = harness.status();
    let access = condition(&status, CONDITION_STORAGE_ACCESS);
    assert_eq!(
        (access.status.as_str(), access.reason.as_str()),
        ("False", "StorageUnreadable")
    );
    assert!(access.message.contains("storage unavailable"), "{access:?}");
    assert!(!access.message.contains('\n'));

    let mark = harness.mark();
    harness.reconcile().await;
    harness.reconcile().await;
    assert!(
        !harness
            .kube_requests_since(mark)
            .iter()
            .any(|r| r.is_status()),
        "the same error changes nothing"
    );
    assert!(harness.events_since(mark).is_empty());

    harness.storage.set_unavailable(false);
    harness.reconcile().await;
    assert_eq!(
        condition(&harness.status(), CONDITION_STORAGE_ACCESS).status,
        "True"
    );
}

fn with_storage_access(readable: Option<(bool, &str)>) -> StreamJobStatus {
    let conditions = readable
        .map(|(readable, message)| Condition {
            type_: CONDITION_STORAGE_ACCESS.into(),
            status: if readable { "True" } else { "False" }.into(),
            reason: "r".into(),
            message: message.into(),
            last_transition_time: String::new(),
            observed_generation: None,
        })
        .into_iter()
        .collect();
    StreamJobStatus {
        conditions,
        ..StreamJobStatus::default()
    }
}

#[test]
fn storage_trouble_is_logged_once_per_distinct_error_and_on_recovery() {
    use super::apply::{StorageLog, storage_log};
    let unknown = with_storage_access(None);
    let readable = with_storage_access(Some((true, "")));
    let denied = with_storage_access(Some((false, "AccessDenied")));
    let timeout = with_storage_access(Some((false, "connect timeout")));

    assert_eq!(
        storage_log(&unknown, &denied),
        Some(StorageLog::Unreadable("AccessDenied".into()))
    );
    assert_eq!(
        storage_log(&readable, &denied),
        Some(StorageLog::Unreadable("AccessDenied".into()))
    );
    assert_eq!(
        storage_log(&denied, &denied),
        None,
        "same error: already logged"
    );
    assert_eq!(
        storage_log(&denied, &timeout),
        Some(StorageLog::Unreadable("connect timeout".into()))
    );
    assert_eq!(storage_log(&timeout, &readable), Some(StorageLog::Readable));
    assert_eq!(storage_log(&readable, &readable), None);
    assert_eq!(storage_log(&unknown, &readable), None);
}
