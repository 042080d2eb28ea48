//! One test per lifecycle behaviour; each builds the observed world and checks the plan.

use super::*;
use crate::crd::{
    Condition, DeletionPolicy, DeployedSpec, Operation, OperationStep, RestoreKind, RestorePoint,
    SavepointRecord, StreamJob,
};

const NOW: i64 = 10_000_000;

fn overview(state: JobState, parallelism: u32) -> JobOverview {
    JobOverview {
        job_id: "streams-clicks".into(),
        name: "url-count".into(),
        state,
        parallelism,
        start_time: 1_000,
        restarts: 0,
        last_failure: None,
    }
}

/// Status of a job whose current spec was deployed and runs.
fn deployed_status(job: &StreamJob, lifecycle: Lifecycle) -> StreamJobStatus {
    let desired = Desired::from_job(job).expect("valid spec");
    StreamJobStatus {
        lifecycle,
        job_id: Some(desired.job_id),
        job_state: Some("RUNNING".into()),
        job_start_time: Some(1_000),
        deployed: Some(DeployedSpec {
            spec_hash: desired.spec_hash,
            parallelism: desired.parallelism,
            slots: desired.slots,
            deployed_at: 1_000,
            restart_nonce: 0,
            pinned_restore: false,
        }),
        ..StreamJobStatus::default()
    }
}

/// `job` was running as `before`; the user has since applied `job`'s spec.
fn world(before: &StreamJob, job: StreamJob) -> Observed {
    let status = deployed_status(before, Lifecycle::Running);
    Observed {
        jobmanager: JobManagerView::Job {
            overview: overview(JobState::Running, before.spec.parallelism),
            latest_checkpoint: None,
        },
        job: job.with_status(status),
        now: NOW,
        workloads_ready: true,
        savepoint: None,
        target_savepoint_complete: None,
        latest_checkpoint: None,
        storage: StorageProbe::NotChecked,
        taskmanagers_exist: true,
        job_pods: JobPods {
            deployments: 2,
            pods: 1 + before
                .spec
                .parallelism
                .div_ceil(before.spec.task_manager.slots),
        },
    }
}

fn running(job: StreamJob) -> Observed {
    world(&job.clone(), job)
}

fn with_status(mut observed: Observed, edit: impl FnOnce(&mut StreamJobStatus)) -> Observed {
    if let Some(status) = observed.job.status.as_mut() {
        edit(status);
    }
    observed
}

fn latest(id: u64) -> LatestCheckpoint {
    LatestCheckpoint {
        id,
        path: format!("s3://bucket/checkpoints/streams-clicks/chk-{id}"),
        verified: true,
    }
}

fn deploys(plan: &Plan) -> Vec<RestoreSource> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Deploy { restore, .. } => Some(restore.clone()),
            _ => None,
        })
        .collect()
}

fn has_event(plan: &Plan, reason: &str) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::Event(e) if e.reason == reason))
}

fn condition<'a>(plan: &'a Plan, type_: &str) -> &'a Condition {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

fn stop_target(plan: &Plan) -> Option<String> {
    plan.actions.iter().find_map(|a| match a {
        Action::StopWithSavepoint { target_directory } => Some(target_directory.clone()),
        _ => None,
    })
}

fn savepoint_answer(
    status: OperationStatus,
    location: Option<&str>,
    failure: Option<&str>,
) -> SavepointStatus {
    SavepointStatus {
        status,
        location: location.map(str::to_string),
        failure: failure.map(str::to_string),
    }
}

/// Runs the first step of a stop-with-savepoint and returns the world after it, with the
/// trigger id recorded as the controller would.
fn after_stop_requested(before: &StreamJob, job: StreamJob) -> (Observed, Plan) {
    let plan = plan(&world(before, job.clone()));
    let mut status = plan.status.clone();
    if let Some(op) = status.operation.as_mut() {
        op.trigger_id = Some("trigger-1".into());
    }
    let mut next = world(before, job);
    next.job.status = Some(status);
    next.now = NOW + 1_000;
    (next, plan)
}

// ---- creation ----

#[test]
fn new_job_deploys_with_empty_state_and_records_the_restore_point() {
    let observed = Observed {
        jobmanager: JobManagerView::Unreachable("not deployed".into()),
        ..running(StreamJob::test())
    };
    let mut observed = observed;
    observed.job.status = None;
    let plan = plan(&observed);
    assert_eq!(deploys(&plan), [RestoreSource::None]);
    assert_eq!(plan.status.lifecycle, Lifecycle::Deploying);
    assert_eq!(
        plan.status.restore_point.as_ref().map(|r| r.kind),
        Some(RestoreKind::Empty)
    );
    assert_eq!(plan.status.job_id.as_deref(), Some("streams-clicks"));
    assert!(has_event(&plan, "Deploying"));
    assert_eq!(condition(&plan, CONDITION_PROGRESSING).status, "True");
}

#[test]
fn new_job_starts_from_initial_savepoint_path() {
    let mut job = StreamJob::test();
    job.spec.initial_savepoint_path = Some("s3://bucket/sp/old".into());
    let mut observed = running(job);
    observed.job.status = None;
    let plan = plan(&observed);
    assert_eq!(
        deploys(&plan),
        [RestoreSource::Path("s3://bucket/sp/old".into())]
    );
}

#[test]
fn deploying_job_becomes_running_when_job_runs_and_pods_are_ready() {
    let observed = with_status(running(StreamJob::test()), |s| {
        s.lifecycle = Lifecycle::Deploying
    });
    let plan = plan(&observed);
    assert_eq!(plan.status.lifecycle, Lifecycle::Running);
    assert_eq!(condition(&plan, CONDITION_READY).status, "True");
    assert!(has_event(&plan, "LifecycleChanged"));
}

#[test]
fn deploying_job_waits_for_rollout() {
    let mut observed = with_status(running(StreamJob::test()), |s| {
        s.lifecycle = Lifecycle::Deploying
    });
    observed.workloads_ready = false;
    let plan = plan(&observed);
    assert_eq!(plan.status.lifecycle, Lifecycle::Deploying);
    assert_eq!(plan.requeue_after, Some(REQUEUE_BUSY));
}

#[test]
fn steady_running_job_reapplies_children_and_records_checkpoints() {
    let mut observed = running(StreamJob::test());
    observed.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Running, 2),
        latest_checkpoint: Some(CheckpointInfo {
            savepoint: false,
            id: 4,
            status: OperationStatus::Completed,
            trigger_time: 5_000,
            complete_time: Some(6_000),
            duration_ms: Some(100),
            state_size: Some(1),
            checkpointed_size: None,
            external_path: Some("s3://bucket/checkpoints/streams-clicks/chk-4".into()),
            failure: None,
        }),
    };
    let plan = plan(&observed);
    assert_eq!(deploys(&plan), [RestoreSource::Latest]);
    assert_eq!(plan.status.last_checkpoint.as_ref().map(|c| c.id), Some(4));
    assert_eq!(plan.requeue_after, Some(REQUEUE_STEADY));
    assert!(!has_event(&plan, "LifecycleChanged"));
}

#[test]
fn pinned_restore_switches_to_latest_after_the_first_new_checkpoint() {
    let observed = with_status(running(StreamJob::test()), |s| {
        s.restore_point = Some(RestorePoint {
            kind: RestoreKind::Savepoint,
            path: Some("s3://bucket/sp/1".into()),
            verified: true,
        });
        if let Some(d) = s.deployed.as_mut() {
            d.pinned_restore = true;
        }
    });
    assert_eq!(
        deploys(&plan(&observed)),
        [RestoreSource::Path("s3://bucket/sp/1".into())]
    );
    let checkpointed = with_status(observed, |s| {
        s.last_checkpoint = Some(CheckpointRecord {
            id: 1,
            path: Some("s3://bucket/checkpoints/streams-clicks/chk-1".into()),
            time: Some(2_000),
        });
    });
    let plan = plan(&checkpointed);
    assert_eq!(deploys(&plan), [RestoreSource::Latest]);
    assert_eq!(plan.status.deployed.map(|d| d.pinned_restore), Some(false));
}

// ---- rescale and upgrade ----

#[test]
fn rescale_takes_savepoint_before_redeploy() {
    let before = StreamJob::test();
    let (next, first) = after_stop_requested(&before, before.clone().with_parallelism(4));
    assert_eq!(first.status.lifecycle, Lifecycle::Rescaling);
    let target = stop_target(&first).expect("stop with savepoint");
    assert!(
        target.starts_with("s3://bucket/checkpoints/savepoints/streams-clicks/savepoint-"),
        "{target}"
    );
    assert!(
        deploys(&first).is_empty(),
        "no redeploy before the savepoint completes"
    );
    let op = first
        .status
        .operation
        .as_ref()
        .expect("operation recorded before acting");
    assert_eq!(
        (op.kind, op.step),
        (OperationKind::Rescale, OperationStep::Savepointing)
    );
    assert_eq!(op.target_directory.as_deref(), Some(target.as_str()));

    let mut done = next;
    done.savepoint = Some(savepoint_answer(
        OperationStatus::Completed,
        Some(&target),
        None,
    ));
    let second = plan(&done);
    assert_eq!(deploys(&second), [RestoreSource::Path(target.clone())]);
    assert_eq!(
        second.status.deployed.as_ref().map(|d| d.parallelism),
        Some(4)
    );
    assert_eq!(
        second
            .status
            .last_savepoint
            .as_ref()
            .map(|s| s.path.as_str()),
        Some(target.as_str())
    );
    assert_eq!(
        second.status.operation.as_ref().map(|o| o.step),
        Some(OperationStep::Redeploying)
    );

    let mut running_again = done.clone();
    running_again.job.status = Some(second.status);
    running_again.savepoint = None;
    running_again.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Running, 4),
        latest_checkpoint: None,
    };
    let third = plan(&running_again);
    assert_eq!(third.status.lifecycle, Lifecycle::Running);
    assert!(third.status.operation.is_none());
    assert!(has_event(&third, "RescaleCompleted"));
}

#[test]
fn redeploy_waits_until_the_job_runs_at_the_new_parallelism() {
    let before = StreamJob::test();
    let (mut next, _) = after_stop_requested(&before, before.clone().with_parallelism(4));
    next.savepoint = Some(savepoint_answer(
        OperationStatus::Completed,
        Some("s3://b/sp"),
        None,
    ));
    let redeploying = plan(&next);
    let mut old_job_still_reporting = next.clone();
    old_job_still_reporting.job.status = Some(redeploying.status);
    old_job_still_reporting.savepoint = None;
    let plan = plan(&old_job_still_reporting);
    assert_eq!(plan.status.lifecycle, Lifecycle::Rescaling);
    assert!(plan.status.operation.is_some());
}

#[test]
fn image_change_in_savepoint_mode_is_an_upgrade_through_stop_with_savepoint() {
    let before = StreamJob::test();
    let plan = plan(&world(&before, before.clone().with_image("weir:2")));
    assert_eq!(plan.status.lifecycle, Lifecycle::Upgrading);
    assert!(stop_target(&plan).is_some());
    assert_eq!(
        plan.status.operation.as_ref().map(|o| o.kind),
        Some(OperationKind::Upgrade)
    );
}

#[test]
fn upgrade_in_last_state_mode_cancels_then_restores_latest_checkpoint() {
    let before = StreamJob::test().with_upgrade_mode(UpgradeMode::LastState);
    let job = before.clone().with_image("weir:2");
    let first = plan(&world(&before, job.clone()));
    assert!(first.actions.contains(&Action::CancelJob));
    assert!(deploys(&first).is_empty());
    assert_eq!(
        first.status.operation.as_ref().map(|o| o.step),
        Some(OperationStep::Cancelling)
    );

    let mut cancelled = world(&before, job);
    cancelled.job.status = Some(first.status);
    cancelled.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Canceled, 2),
        latest_checkpoint: None,
    };
    cancelled.latest_checkpoint = Some(latest(17));
    let second = plan(&cancelled);
    assert_eq!(
        deploys(&second),
        [RestoreSource::Path(
            "s3://bucket/checkpoints/streams-clicks/chk-17".into()
        )]
    );
    let restore = second.status.restore_point.expect("restore point");
    assert_eq!(
        (restore.kind, restore.verified),
        (RestoreKind::Checkpoint, true)
    );
}

#[test]
fn upgrade_in_stateless_mode_redeploys_empty_without_savepoint() {
    let before = StreamJob::test().with_upgrade_mode(UpgradeMode::Stateless);
    let plan = plan(&world(&before, before.clone().with_image("weir:2")));
    assert_eq!(deploys(&plan), [RestoreSource::None]);
    assert!(stop_target(&plan).is_none());
    assert!(!plan.actions.contains(&Action::CancelJob));
    assert_eq!(
        plan.status.restore_point.map(|r| r.kind),
        Some(RestoreKind::Empty)
    );
}

#[test]
fn savepoint_failure_blocks_upgrade_and_leaves_old_job_untouched() {
    let before = StreamJob::test();
    let job = before.clone().with_image("weir:2");
    let (mut next, _) = after_stop_requested(&before, job.clone());
    next.savepoint = Some(savepoint_answer(
        OperationStatus::Failed,
        None,
        Some("S3 access denied"),
    ));
    let plan = plan(&next);
    assert!(!plan.touches_workloads(), "{:?}", plan.actions);
    assert_eq!(plan.status.lifecycle, Lifecycle::Running);
    assert!(plan.status.operation.is_none());
    let blocked = condition(&plan, CONDITION_UPGRADE_BLOCKED);
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("True", "SavepointFailed")
    );
    assert!(blocked.message.contains("S3 access denied"));
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Event(e) if e.warning && e.reason == "UpgradeBlocked"))
    );

    // The next reconcile does not retry the same spec, and does not redeploy it empty.
    let mut later = world(&before, job);
    later.job.status = Some(plan.status);
    let again = super::plan(&later);
    assert!(!again.touches_workloads(), "{:?}", again.actions);
    assert_eq!(condition(&again, CONDITION_UPGRADE_BLOCKED).status, "True");
}

#[test]
fn savepoint_the_jobmanager_refuses_blocks_upgrade_at_once_with_its_reason() {
    let before = StreamJob::test();
    let job = before.clone().with_image("weir:2");
    let (mut next, _) = after_stop_requested(&before, job);
    if let Some(status) = next.job.status.as_mut()
        && let Some(operation) = status.operation.as_mut()
    {
        operation.trigger_id = None;
        operation.refused =
            Some("targetDirectory: not under an allowed savepoint directory".into());
    }
    let plan = plan(&next);
    assert!(!plan.touches_workloads(), "{:?}", plan.actions);
    assert!(plan.status.operation.is_none());
    let blocked = condition(&plan, CONDITION_UPGRADE_BLOCKED);
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("True", "SavepointFailed")
    );
    assert!(
        blocked.message.contains("refused") && blocked.message.contains("allowed savepoint"),
        "{}",
        blocked.message
    );
}

#[test]
fn savepoint_timeout_blocks_upgrade() {
    let before = StreamJob::test();
    let (mut next, _) = after_stop_requested(&before, before.clone().with_image("weir:2"));
    next.savepoint = Some(savepoint_answer(OperationStatus::InProgress, None, None));
    next.now = NOW + 11 * 60 * 1000;
    let plan = plan(&next);
    assert!(!plan.touches_workloads());
    assert_eq!(
        condition(&plan, CONDITION_UPGRADE_BLOCKED).reason,
        "SavepointTimeout"
    );
}

#[test]
fn savepoint_in_progress_keeps_waiting() {
    let before = StreamJob::test();
    let (mut next, _) = after_stop_requested(&before, before.clone().with_image("weir:2"));
    next.savepoint = Some(savepoint_answer(OperationStatus::InProgress, None, None));
    let plan = plan(&next);
    assert!(
        plan.actions.iter().all(|a| matches!(a, Action::Event(_))),
        "{:?}",
        plan.actions
    );
    assert_eq!(plan.status.lifecycle, Lifecycle::Upgrading);
    assert_eq!(plan.requeue_after, Some(REQUEUE_BUSY));
}

#[test]
fn blocked_upgrade_retries_when_the_spec_changes_again() {
    let before = StreamJob::test();
    let (mut next, _) = after_stop_requested(&before, before.clone().with_image("weir:2"));
    next.savepoint = Some(savepoint_answer(
        OperationStatus::Failed,
        None,
        Some("boom"),
    ));
    let blocked = plan(&next);
    let mut switched = world(
        &before,
        before
            .clone()
            .with_image("weir:2")
            .with_upgrade_mode(UpgradeMode::LastState),
    );
    switched.job.status = Some(blocked.status);
    let plan = plan(&switched);
    assert!(plan.actions.contains(&Action::CancelJob));
}

#[test]
fn blocked_upgrade_stays_blocked_until_the_savepoint_directory_is_fixed() {
    let before = StreamJob::test();
    let upgraded = before.clone().with_image("weir:2");
    let (mut next, _) = after_stop_requested(&before, upgraded.clone());
    next.savepoint = Some(savepoint_answer(
        OperationStatus::Failed,
        None,
        Some("bucket not writable"),
    ));
    let blocked = plan(&next);
    // The same spec again: refused before, so the old job is left alone.
    let mut unchanged = world(&before, upgraded.clone());
    unchanged.job.status = Some(blocked.status.clone());
    let plan_unchanged = plan(&unchanged);
    assert!(
        stop_target(&plan_unchanged).is_none(),
        "{:?}",
        plan_unchanged.actions
    );
    assert!(!plan_unchanged.touches_workloads());
    // A new savepoint directory (not part of the pods' spec hash) tries the upgrade again,
    // with a savepoint into the new directory.
    let mut fixed_spec = upgraded;
    fixed_spec.spec.savepoints.directory = Some("s3://fixed/savepoints".into());
    let mut fixed = world(&before, fixed_spec);
    fixed.job.status = Some(blocked.status);
    let plan_fixed = plan(&fixed);
    let target = stop_target(&plan_fixed).expect("a new stop-with-savepoint");
    assert!(target.starts_with("s3://fixed/savepoints/"), "{target}");
}

#[test]
fn operator_restart_mid_upgrade_resumes_without_second_savepoint() {
    let before = StreamJob::test();
    let (mut restarted, _) = after_stop_requested(&before, before.clone().with_image("weir:2"));
    // A fresh operator sees the trigger id in status and only polls it.
    restarted.savepoint = Some(savepoint_answer(OperationStatus::InProgress, None, None));
    let plan = plan(&restarted);
    assert!(stop_target(&plan).is_none(), "{:?}", plan.actions);
    assert!(!plan.touches_workloads());
}

#[test]
fn operator_crash_before_trigger_id_finds_the_savepoint_by_its_directory() {
    let before = StreamJob::test();
    let first = plan(&world(&before, before.clone().with_image("weir:2")));
    let target = stop_target(&first).expect("stop");
    let mut restarted = world(&before, before.clone().with_image("weir:2"));
    restarted.job.status = Some(first.status);
    restarted.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Finished, 2),
        latest_checkpoint: None,
    };
    restarted.target_savepoint_complete = Some(true);
    let plan = plan(&restarted);
    assert!(stop_target(&plan).is_none());
    assert_eq!(deploys(&plan), [RestoreSource::Path(target)]);
}

#[test]
fn unacknowledged_trigger_is_repeated_for_the_same_directory() {
    let before = StreamJob::test();
    let first = plan(&world(&before, before.clone().with_image("weir:2")));
    let target = stop_target(&first).expect("stop");
    let mut restarted = world(&before, before.clone().with_image("weir:2"));
    restarted.job.status = Some(first.status);
    restarted.target_savepoint_complete = Some(false);
    restarted.now = NOW + 1;
    let plan = plan(&restarted);
    assert_eq!(stop_target(&plan), Some(target));
}

// ---- failures ----

#[test]
fn jobmanager_loss_sets_restore_point_from_latest_checkpoint() {
    let mut observed = running(StreamJob::test());
    observed.jobmanager = JobManagerView::Unreachable("connection refused".into());
    observed.latest_checkpoint = Some(latest(42));
    let plan = plan(&observed);
    assert_eq!(plan.status.lifecycle, Lifecycle::Deploying);
    let restore = plan.status.restore_point.clone().expect("restore point");
    assert_eq!(
        restore.path.as_deref(),
        Some("s3://bucket/checkpoints/streams-clicks/chk-42")
    );
    assert!(restore.verified);
    assert!(has_event(&plan, "JobManagerLost"));
    // Children are re-applied (a deleted Deployment comes back) with `latest`, never empty.
    assert_eq!(deploys(&plan), [RestoreSource::Latest]);
}

#[test]
fn job_restart_by_a_new_jobmanager_is_noticed() {
    let mut observed = running(StreamJob::test());
    observed.jobmanager = JobManagerView::Job {
        overview: JobOverview {
            start_time: 99_000,
            ..overview(JobState::Running, 2)
        },
        latest_checkpoint: None,
    };
    observed.latest_checkpoint = Some(latest(8));
    let plan = plan(&observed);
    assert!(has_event(&plan, "JobManagerLost"));
    assert_eq!(plan.status.job_start_time, Some(99_000));
}

fn failed_world() -> Observed {
    let mut observed = running(StreamJob::test());
    observed.jobmanager = JobManagerView::Job {
        overview: JobOverview {
            last_failure: Some("task 3 failed: OOM".into()),
            ..overview(JobState::Failed, 2)
        },
        latest_checkpoint: None,
    };
    observed.latest_checkpoint = Some(latest(9));
    observed
}

#[test]
fn failed_job_waits_for_backoff_then_restarts_from_latest_checkpoint() {
    let first = plan(&failed_world());
    assert_eq!(first.status.lifecycle, Lifecycle::Failed);
    assert!(deploys(&first).is_empty());
    assert!(plan_has_warning(&first, "JobFailed"));
    assert_eq!(first.requeue_after, Some(Duration::from_millis(10_000)));

    let mut later = failed_world();
    later.job.status = Some(first.status);
    later.now = NOW + 10_000;
    let second = plan(&later);
    assert_eq!(
        deploys(&second),
        [RestoreSource::Path(
            "s3://bucket/checkpoints/streams-clicks/chk-9".into()
        )]
    );
    assert_eq!(second.status.operator_restarts, 1);
    assert_eq!(
        second.status.deployed.as_ref().map(|d| d.restart_nonce),
        Some(1)
    );
    assert_eq!(second.status.lifecycle, Lifecycle::Deploying);
}

fn plan_has_warning(plan: &Plan, reason: &str) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::Event(e) if e.warning && e.reason == reason))
}

#[test]
fn restart_backoff_grows_with_consecutive_failures() {
    let mut observed = failed_world();
    observed = with_status(observed, |s| {
        s.lifecycle = Lifecycle::Failed;
        s.failed_at = Some(NOW);
        s.consecutive_failures = 3;
    });
    observed.now = NOW + 40_000;
    assert!(
        deploys(&plan(&observed)).is_empty(),
        "80s backoff not over after 40s"
    );
    observed.now = NOW + 80_000;
    assert_eq!(deploys(&plan(&observed)).len(), 1);
}

#[test]
fn failed_job_is_never_restarted_empty_after_it_had_checkpoints() {
    let mut observed = failed_world();
    observed.latest_checkpoint = None;
    observed = with_status(observed, |s| {
        s.lifecycle = Lifecycle::Failed;
        s.failed_at = Some(0);
        s.last_checkpoint = Some(CheckpointRecord {
            id: 9,
            path: None,
            time: Some(5),
        });
    });
    let plan = plan(&observed);
    assert!(deploys(&plan).is_empty());
    let degraded = condition(&plan, CONDITION_DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "NoCheckpointToRestore")
    );
}

#[test]
fn failed_job_that_never_checkpointed_restarts_empty_with_a_warning() {
    let mut observed = failed_world();
    observed.latest_checkpoint = None;
    observed = with_status(observed, |s| {
        s.lifecycle = Lifecycle::Failed;
        s.failed_at = Some(0);
    });
    let plan = plan(&observed);
    assert_eq!(deploys(&plan), [RestoreSource::None]);
    assert!(plan_has_warning(&plan, "StartingWithoutState"));
}

// ---- savepoints on demand ----

#[test]
fn nonce_change_triggers_a_savepoint_that_keeps_the_job_running() {
    let observed = running(StreamJob::test().with_nonce(7));
    let first = plan(&observed);
    assert_eq!(first.status.lifecycle, Lifecycle::Savepointing);
    let target = first.actions.iter().find_map(|a| match a {
        Action::TriggerSavepoint { target_directory } => Some(target_directory.clone()),
        _ => None,
    });
    let target = target.expect("savepoint triggered");
    assert!(stop_target(&first).is_none());

    let mut done = observed.clone();
    done.job.status = Some(first.status);
    if let Some(op) = done.job.status.as_mut().and_then(|s| s.operation.as_mut()) {
        op.trigger_id = Some("t".into());
    }
    done.savepoint = Some(savepoint_answer(
        OperationStatus::Completed,
        Some(&target),
        None,
    ));
    let second = plan(&done);
    assert_eq!(second.status.last_savepoint_nonce, Some(7));
    assert_eq!(second.status.lifecycle, Lifecycle::Running);
    assert!(deploys(&second).is_empty());

    let mut settled = observed;
    settled.job.status = Some(second.status);
    settled.savepoint = None;
    assert!(
        !plan(&settled)
            .actions
            .iter()
            .any(|a| matches!(a, Action::TriggerSavepoint { .. }))
    );
}

#[test]
fn periodic_savepoint_fires_after_the_interval() {
    let mut job = StreamJob::test();
    job.spec.savepoints.interval = Some("1h".into());
    let mut observed = running(job);
    observed.now = 1_000 + 3_600_000;
    let plan = plan(&observed);
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::TriggerSavepoint { .. }))
    );
    assert_eq!(
        plan.status.operation.map(|o| o.kind),
        Some(OperationKind::Periodic)
    );
}

fn periodic(interval: &str, retained: u32) -> StreamJob {
    let mut job = StreamJob::test();
    job.spec.savepoints.interval = Some(interval.into());
    job.spec.savepoints.retained = retained;
    job
}

fn triggered(plan: &Plan) -> Option<String> {
    plan.actions.iter().find_map(|a| match a {
        Action::TriggerSavepoint { target_directory } => Some(target_directory.clone()),
        _ => None,
    })
}

#[test]
fn periodic_savepoint_interval_shorter_than_the_steady_requeue_is_kept() {
    // Deployed at 1_000: the first periodic savepoint is due at 16_000.
    let mut observed = running(periodic("15s", 2));
    observed.now = 11_000;
    let early = plan(&observed);
    assert!(triggered(&early).is_none());
    assert_eq!(early.requeue_after, Some(Duration::from_secs(5)));

    observed.now = 16_000;
    let due = plan(&observed);
    assert!(triggered(&due).is_some(), "15s is not raised to a minute");
    assert_eq!(due.status.last_periodic_attempt, Some(16_000));
}

#[test]
fn periodic_savepoint_requeue_is_never_in_the_past_nor_below_the_floor() {
    let mut observed = running(periodic("15s", 2));
    observed.now = 15_800;
    assert_eq!(plan(&observed).requeue_after, Some(REQUEUE_MIN));

    // A long interval leaves the steady requeue alone.
    let mut hourly = running(periodic("1h", 2));
    hourly.now = 11_000;
    assert_eq!(plan(&hourly).requeue_after, Some(REQUEUE_STEADY));
}

#[test]
fn periodic_interval_counts_from_the_last_savepoint_completion_or_attempt() {
    let completed_at = 100_000;
    let observed = with_status(running(periodic("15s", 2)), |s| {
        s.last_periodic_attempt = Some(completed_at - 5_000);
        s.last_savepoint = Some(SavepointRecord {
            path: "s3://b/sp/1".into(),
            time: completed_at,
            reason: OperationKind::Periodic,
        });
    });
    let mut before = observed.clone();
    before.now = completed_at + 14_000;
    let waiting = plan(&before);
    assert!(triggered(&waiting).is_none());
    assert_eq!(waiting.requeue_after, Some(Duration::from_secs(1)));
    let mut after = observed;
    after.now = completed_at + 15_000;
    assert!(triggered(&plan(&after)).is_some());

    // A failed attempt (no completion) is not retried before another interval.
    let failed = with_status(running(periodic("15s", 2)), |s| {
        s.last_periodic_attempt = Some(200_000);
    });
    let mut retry = failed.clone();
    retry.now = 210_000;
    let waiting = plan(&retry);
    assert!(triggered(&waiting).is_none());
    assert_eq!(waiting.requeue_after, Some(Duration::from_secs(5)));
    retry.now = 215_000;
    assert!(triggered(&plan(&retry)).is_some());
}

#[test]
fn periodic_savepoints_every_few_seconds_keep_only_the_retained_ones() {
    let mut observed = running(periodic("15s", 2));
    let mut taken = Vec::new();
    let mut deleted = Vec::new();
    let mut now = 1_000;
    for _ in 0..4 {
        // Idle until the next one is due, as the requeue says.
        observed.now = now;
        let idle = plan(&observed);
        let wait = idle.requeue_after.expect("requeue");
        assert!(wait <= Duration::from_secs(15), "{wait:?}");
        observed.job.status = Some(idle.status);
        now += i64::try_from(wait.as_millis()).expect("short");
        observed.now = now;
        let start = plan(&observed);
        let target = triggered(&start).expect("periodic savepoint due");
        observed.job.status = Some(start.status);
        if let Some(op) = observed
            .job
            .status
            .as_mut()
            .and_then(|s| s.operation.as_mut())
        {
            op.trigger_id = Some("t".into());
        }
        now += 2_000;
        observed.now = now;
        observed.savepoint = Some(savepoint_answer(
            OperationStatus::Completed,
            Some(&target),
            None,
        ));
        let done = plan(&observed);
        assert_eq!(done.status.lifecycle, Lifecycle::Running);
        deleted.extend(done.actions.iter().filter_map(|a| match a {
            Action::DeleteStorage { path } => Some(path.clone()),
            _ => None,
        }));
        observed.job.status = Some(done.status);
        observed.savepoint = None;
        taken.push(target);
    }
    let history: Vec<String> = observed
        .job
        .status
        .as_ref()
        .map(|s| s.savepoint_history.iter().map(|r| r.path.clone()).collect())
        .unwrap_or_default();
    assert_eq!(history, taken[2..], "trimmed to savepoints.retained");
    assert_eq!(
        deleted,
        taken[..2],
        "the older ones are deleted from storage"
    );
}

#[test]
fn sub_second_savepoint_interval_is_an_invalid_spec() {
    let plan = plan(&world(&StreamJob::test(), periodic("500ms", 2)));
    let degraded = condition(&plan, CONDITION_DEGRADED);
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded.message.contains("savepoints.interval"),
        "{}",
        degraded.message
    );
}

#[test]
fn retention_deletes_the_oldest_savepoints() {
    let mut job = StreamJob::test().with_nonce(1);
    job.spec.savepoints.retained = 2;
    let observed = with_status(running(job), |s| {
        s.savepoint_history = ["s3://b/sp/1", "s3://b/sp/2"]
            .iter()
            .map(|p| SavepointRecord {
                path: p.to_string(),
                time: 1,
                reason: OperationKind::Manual,
            })
            .collect();
        s.operation = Some(Operation {
            kind: OperationKind::Manual,
            step: OperationStep::Savepointing,
            stop: false,
            target_directory: Some("s3://b/sp/3".into()),
            trigger_id: Some("t".into()),
            started_at: NOW,
            target_hash: None,
            nonce: Some(1),
            refused: None,
        });
    });
    let mut observed = observed;
    observed.savepoint = Some(savepoint_answer(
        OperationStatus::Completed,
        Some("s3://b/sp/3"),
        None,
    ));
    let plan = plan(&observed);
    assert!(plan.actions.contains(&Action::DeleteStorage {
        path: "s3://b/sp/1".into()
    }));
    assert_eq!(plan.status.savepoint_history.len(), 2);
}

// ---- suspend and resume ----

#[test]
fn suspend_takes_savepoint_then_removes_pods_and_resume_restores_it() {
    let before = StreamJob::test();
    let (mut next, first) = after_stop_requested(&before, before.clone().suspended());
    let target = stop_target(&first).expect("stop with savepoint");
    next.savepoint = Some(savepoint_answer(
        OperationStatus::Completed,
        Some(&target),
        None,
    ));
    let second = plan(&next);
    assert!(second.actions.contains(&Action::RemoveWorkloads));
    assert_eq!(second.status.lifecycle, Lifecycle::Suspended);
    assert_eq!(second.requeue_after, None);

    let mut resumed = world(&before, before.clone());
    resumed.job.status = Some(second.status);
    resumed.jobmanager = JobManagerView::Unreachable("suspended".into());
    let third = plan(&resumed);
    assert_eq!(deploys(&third), [RestoreSource::Path(target)]);
    assert_eq!(third.status.lifecycle, Lifecycle::Deploying);
}

#[test]
fn suspend_savepoint_failure_keeps_the_job_running() {
    let before = StreamJob::test();
    let (mut next, _) = after_stop_requested(&before, before.clone().suspended());
    next.savepoint = Some(savepoint_answer(
        OperationStatus::Failed,
        None,
        Some("disk full"),
    ));
    let plan = plan(&next);
    assert!(!plan.actions.contains(&Action::RemoveWorkloads));
    assert_eq!(plan.status.lifecycle, Lifecycle::Running);
    assert_eq!(condition(&plan, CONDITION_UPGRADE_BLOCKED).status, "True");
}

#[test]
fn suspended_job_stays_suspended() {
    let observed = with_status(running(StreamJob::test().suspended()), |s| {
        s.lifecycle = Lifecycle::Suspended
    });
    let plan = plan(&observed);
    assert!(!plan.touches_workloads());
    assert_eq!(plan.requeue_after, None);
}

// ---- invalid specs ----

#[test]
fn invalid_spec_sets_condition_and_event_and_touches_nothing() {
    let mut job = StreamJob::test().with_parallelism(500);
    job.spec.job.max_parallelism = 128;
    let observed = world(&StreamJob::test(), job);
    let plan = plan(&observed);
    assert!(!plan.touches_workloads());
    let degraded = condition(&plan, CONDITION_DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded.message.contains("parallelism"),
        "{}",
        degraded.message
    );
    assert!(plan_has_warning(&plan, "InvalidSpec"));

    // The same invalid spec does not repeat the event.
    let mut again = observed;
    again.job.status = Some(plan.status);
    assert!(!plan_has_warning(&super::plan(&again), "InvalidSpec"));
}

#[test]
fn bad_savepoint_timeout_is_an_invalid_spec() {
    let mut job = StreamJob::test();
    job.spec.savepoints.timeout = "soon".into();
    let plan = plan(&world(&StreamJob::test(), job));
    assert_eq!(condition(&plan, CONDITION_DEGRADED).reason, "InvalidSpec");
}

// ---- deletion ----

fn deleting(mut observed: Observed, policy: DeletionPolicy) -> Observed {
    observed.job.spec.on_delete = policy;
    observed.job.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    observed.job.metadata.finalizers = Some(vec![crate::FINALIZER.to_string()]);
    observed
}

#[test]
fn finalizer_is_added_only_when_cleanup_is_needed() {
    let mut job = StreamJob::test();
    assert!(
        !plan(&running(job.clone()))
            .actions
            .contains(&Action::AddFinalizer)
    );
    job.spec.on_delete.savepoint = true;
    assert!(plan(&running(job)).actions.contains(&Action::AddFinalizer));
}

fn checkpoints_deleted(plan: &Plan) -> bool {
    plan.actions.contains(&Action::DeleteStorage {
        path: "s3://bucket/checkpoints/streams-clicks".into(),
    })
}

fn touches_storage(plan: &Plan) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::DeleteStorage { .. }))
}

/// The world after `plan`, at `now`: its status written, as the controller would.
fn next(observed: &Observed, plan: &Plan, now: i64) -> Observed {
    let mut next = observed.clone();
    next.job.status = Some(plan.status.clone());
    next.now = now;
    next
}

/// The Deployments are gone, and with them every pod (foreground deletion).
fn pods_gone(mut observed: Observed) -> Observed {
    observed.job_pods = JobPods::default();
    observed.jobmanager = JobManagerView::Unreachable("connection refused".into());
    observed
}

fn removing_pods(plan: &Plan) -> bool {
    plan.status.operation.as_ref().is_some_and(|op| {
        op.kind == OperationKind::Delete && op.step == OperationStep::RemovingPods
    })
}

#[test]
fn deletion_with_storage_cleanup_stops_the_job_before_deleting_storage() {
    let policy = DeletionPolicy {
        savepoint: false,
        storage: StorageCleanup::Delete,
    };
    let observed = deleting(running(StreamJob::test()), policy);
    let first = plan(&observed);
    assert!(first.actions.contains(&Action::CancelJob));
    assert!(first.actions.contains(&Action::RemoveWorkloads));
    assert!(!touches_storage(&first), "the job may still checkpoint");
    assert!(!first.actions.contains(&Action::RemoveFinalizer));
    assert!(removing_pods(&first), "recorded for a restarted operator");
    assert!(has_event(&first, "RemovingPods"));
    assert_eq!(first.requeue_after, Some(REQUEUE_BUSY));

    // Deployments being deleted, pods terminating: a terminating pod can still write.
    let mut terminating = next(&observed, &first, NOW + 5_000);
    terminating.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Canceled, 2),
        latest_checkpoint: None,
    };
    terminating.job_pods.pods = 1;
    let second = plan(&terminating);
    assert!(!touches_storage(&second));
    assert!(!second.actions.contains(&Action::RemoveFinalizer));
    assert!(
        second.actions.contains(&Action::RemoveWorkloads),
        "asked again"
    );
    assert!(
        !second.actions.contains(&Action::CancelJob),
        "already stopped"
    );
    assert!(removing_pods(&second));
    assert_eq!(
        second.status.operation.as_ref().map(|op| op.started_at),
        Some(NOW),
        "the wait counts from the first request"
    );

    let gone = pods_gone(next(&terminating, &second, NOW + 10_000));
    let third = plan(&gone);
    assert!(checkpoints_deleted(&third));
    assert!(third.actions.contains(&Action::RemoveFinalizer));
    assert!(has_event(&third, "Deleted"));
    assert_eq!(third.status.operation, None);
    assert!(!third.actions.contains(&Action::RemoveWorkloads));
}

#[test]
fn deletion_waits_for_pods_at_most_their_grace_period_plus_slack() {
    let policy = DeletionPolicy {
        savepoint: false,
        storage: StorageCleanup::Delete,
    };
    let observed = deleting(running(StreamJob::test()), policy);
    let first = plan(&observed);
    let timeout = pod_removal_timeout_ms(&observed.job);
    assert_eq!(timeout, 30_000 + POD_REMOVAL_SLACK_MS);

    // A node is gone: its pods stay terminating for ever.
    let mut stuck = next(&observed, &first, NOW + timeout - 1);
    stuck.jobmanager = JobManagerView::Unreachable("no route to host".into());
    let waiting = plan(&stuck);
    assert!(!touches_storage(&waiting));
    assert!(!plan_has_warning(&waiting, "PodsNotGone"));

    let late = next(&stuck, &waiting, NOW + timeout);
    let done = plan(&late);
    assert!(plan_has_warning(&done, "PodsNotGone"));
    assert!(checkpoints_deleted(&done));
    assert!(done.actions.contains(&Action::RemoveFinalizer));
    assert_eq!(done.status.operation, None);
}

#[test]
fn pod_removal_timeout_follows_a_longer_grace_period() {
    let mut job = StreamJob::test();
    job.spec.task_manager.pod_template = Some(k8s_openapi::api::core::v1::PodTemplateSpec {
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            termination_grace_period_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(pod_removal_timeout_ms(&job), 600_000 + POD_REMOVAL_SLACK_MS);
}

#[test]
fn deletion_of_a_job_whose_jobmanager_is_unreachable_still_removes_pods_then_cleans_up() {
    // Pods crash-looping: nothing answers, nothing to savepoint or cancel.
    let policy = DeletionPolicy {
        savepoint: true,
        storage: StorageCleanup::Delete,
    };
    let mut observed = deleting(running(StreamJob::test()), policy);
    observed.jobmanager = JobManagerView::Unreachable("connection refused".into());
    let first = plan(&observed);
    assert!(stop_target(&first).is_none());
    assert!(!first.actions.contains(&Action::CancelJob));
    assert!(first.actions.contains(&Action::RemoveWorkloads));
    assert!(!touches_storage(&first));
    assert!(removing_pods(&first));

    let second = plan(&pods_gone(next(&observed, &first, NOW + 3_000)));
    assert!(checkpoints_deleted(&second));
    assert!(second.actions.contains(&Action::RemoveFinalizer));
}

#[test]
fn deletion_of_a_job_without_pods_cleans_up_at_once() {
    let policy = DeletionPolicy {
        savepoint: true,
        storage: StorageCleanup::Delete,
    };
    let observed = pods_gone(deleting(
        with_status(running(StreamJob::test().suspended()), |s| {
            s.lifecycle = Lifecycle::Suspended
        }),
        policy,
    ));
    let plan = plan(&observed);
    assert!(checkpoints_deleted(&plan));
    assert!(plan.actions.contains(&Action::RemoveFinalizer));
    assert!(!plan.actions.contains(&Action::RemoveWorkloads));
    assert!(!has_event(&plan, "RemovingPods"));
}

/// A deletion with a final savepoint: the stop-with-savepoint requested, then answered.
fn after_final_savepoint(policy: DeletionPolicy, answer: SavepointStatus) -> (Observed, Plan) {
    let observed = deleting(running(StreamJob::test()), policy);
    let first = plan(&observed);
    assert!(stop_target(&first).is_some());
    assert!(!first.actions.contains(&Action::RemoveWorkloads));
    assert!(!touches_storage(&first));
    assert!(!first.actions.contains(&Action::RemoveFinalizer));
    let mut done = next(&observed, &first, NOW + 2_000);
    if let Some(op) = done.job.status.as_mut().and_then(|s| s.operation.as_mut()) {
        op.trigger_id = Some("t".into());
    }
    done.savepoint = Some(answer);
    let second = plan(&done);
    (done, second)
}

#[test]
fn deletion_takes_final_savepoint_then_removes_pods_then_cleans_up_and_releases_finalizer() {
    let policy = DeletionPolicy {
        savepoint: true,
        storage: StorageCleanup::Delete,
    };
    let answer = savepoint_answer(OperationStatus::Completed, Some("s3://b/final"), None);
    let (done, second) = after_final_savepoint(policy, answer);
    // The JobManager may still say RUNNING in the reconcile that sees the savepoint complete.
    assert!(
        !second.actions.contains(&Action::CancelJob),
        "stopped by the savepoint"
    );
    assert!(second.actions.contains(&Action::RemoveWorkloads));
    assert!(!touches_storage(&second), "the pods are still there");
    assert!(!second.actions.contains(&Action::RemoveFinalizer));
    assert!(removing_pods(&second));
    assert_eq!(
        second.status.last_savepoint.as_ref().map(|s| s.reason),
        Some(OperationKind::Delete)
    );

    let third = plan(&pods_gone(next(&done, &second, NOW + 8_000)));
    assert!(checkpoints_deleted(&third));
    assert!(third.actions.contains(&Action::RemoveFinalizer));
    assert!(
        !third.actions.contains(&Action::DeleteStorage {
            path: "s3://b/final".into()
        }),
        "the final savepoint outlives the cleanup"
    );
}

#[test]
fn deletion_with_final_savepoint_and_retained_storage_removes_pods_before_the_finalizer() {
    let policy = DeletionPolicy {
        savepoint: true,
        storage: StorageCleanup::Retain,
    };
    let answer = savepoint_answer(OperationStatus::Completed, Some("s3://b/final"), None);
    let (done, second) = after_final_savepoint(policy, answer);
    assert!(second.actions.contains(&Action::RemoveWorkloads));
    assert!(!second.actions.contains(&Action::RemoveFinalizer));

    let third = plan(&pods_gone(next(&done, &second, NOW + 8_000)));
    assert!(third.actions.contains(&Action::RemoveFinalizer));
    assert!(!touches_storage(&third), "storage is retained");
}

#[test]
fn failed_final_savepoint_cancels_the_still_running_job_before_cleaning_up() {
    let policy = DeletionPolicy {
        savepoint: true,
        storage: StorageCleanup::Delete,
    };
    let answer = savepoint_answer(OperationStatus::Failed, None, Some("disk full"));
    let (done, second) = after_final_savepoint(policy, answer);
    assert!(plan_has_warning(&second, "SavepointFailed"));
    // A failed stop-with-savepoint leaves the job running.
    assert!(second.actions.contains(&Action::CancelJob));
    assert!(second.actions.contains(&Action::RemoveWorkloads));
    assert!(!touches_storage(&second));
    assert!(removing_pods(&second));

    let third = plan(&pods_gone(next(&done, &second, NOW + 8_000)));
    assert!(checkpoints_deleted(&third));
    assert!(third.actions.contains(&Action::RemoveFinalizer));
}

#[test]
fn deletion_without_savepoint_and_retained_storage_touches_no_storage() {
    // Left with the finalizer (the policy changed after it was added).
    let policy = DeletionPolicy {
        savepoint: false,
        storage: StorageCleanup::Retain,
    };
    let observed = deleting(running(StreamJob::test()), policy);
    let first = plan(&observed);
    assert!(first.actions.contains(&Action::RemoveWorkloads));
    assert!(!first.actions.contains(&Action::RemoveFinalizer));
    let second = plan(&pods_gone(next(&observed, &first, NOW + 5_000)));
    assert!(second.actions.contains(&Action::RemoveFinalizer));
    assert!(!touches_storage(&first) && !touches_storage(&second));
}

#[test]
fn restarted_operator_resumes_waiting_for_pods_without_a_second_savepoint() {
    let policy = DeletionPolicy {
        savepoint: true,
        storage: StorageCleanup::Delete,
    };
    let answer = savepoint_answer(OperationStatus::Completed, Some("s3://b/final"), None);
    let (done, second) = after_final_savepoint(policy, answer);
    // A new operator process: only the status tells where the deletion was.
    let mut resumed = next(&done, &second, NOW + 60_000);
    resumed.savepoint = None;
    resumed.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Finished, 2),
        latest_checkpoint: None,
    };
    let third = plan(&resumed);
    assert!(stop_target(&third).is_none());
    assert!(third.actions.contains(&Action::RemoveWorkloads));
    assert!(!touches_storage(&third));
    assert!(!has_event(&third, "RemovingPods"), "announced once");
}

// ---- a bounded job that finishes ----

fn finished_world(job: StreamJob) -> Observed {
    let mut observed = running(job);
    observed.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Finished, 2),
        latest_checkpoint: None,
    };
    observed.latest_checkpoint = Some(latest(12));
    observed
}

fn events(plan: &Plan) -> Vec<&Event> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn finished_job_is_finished_not_failed_and_keeps_its_jobmanager() {
    let plan = plan(&finished_world(StreamJob::test()));

    assert_eq!(plan.status.lifecycle, Lifecycle::Finished);
    assert!(deploys(&plan).is_empty(), "{:?}", plan.actions);
    assert!(plan.actions.contains(&Action::RemoveTaskManagers));
    assert!(!plan.actions.contains(&Action::RemoveWorkloads));
    assert!(
        events(&plan).iter().all(|e| !e.warning),
        "{:?}",
        plan.actions
    );
    let finished = events(&plan)
        .into_iter()
        .find(|e| e.reason == "JobFinished")
        .expect("JobFinished event");
    assert_eq!(finished.action, EventAction::ObserveJob);
    assert_eq!(plan.status.operator_restarts, 0);
    assert_eq!(plan.status.failed_at, None);
    assert_eq!(plan.requeue_after, None);
    for (type_, status) in [
        (CONDITION_READY, "False"),
        (CONDITION_PROGRESSING, "False"),
        (CONDITION_DEGRADED, "False"),
    ] {
        let condition = condition(&plan, type_);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            (status, "Finished"),
            "{condition:?}"
        );
    }
}

#[test]
fn finished_job_is_never_restarted() {
    let first = plan(&finished_world(StreamJob::test()));
    let mut later = finished_world(StreamJob::test());
    later.job.status = Some(first.status);
    later.taskmanagers_exist = false;
    for minutes in [1, 10, 60] {
        later.now = NOW + minutes * 60_000;
        let plan = plan(&later);
        assert_eq!(plan.status.lifecycle, Lifecycle::Finished);
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.status.operator_restarts, 0);
        assert_eq!(condition(&plan, CONDITION_DEGRADED).status, "False");
    }
}

#[test]
fn finished_job_is_still_finished_when_its_jobmanager_is_gone() {
    let first = plan(&finished_world(StreamJob::test()));
    let mut later = finished_world(StreamJob::test());
    later.job.status = Some(first.status);
    later.jobmanager = JobManagerView::Unreachable("connection refused".into());
    later.taskmanagers_exist = false;
    let plan = plan(&later);
    assert_eq!(plan.status.lifecycle, Lifecycle::Finished);
    assert!(!plan.touches_workloads(), "{:?}", plan.actions);
}

fn finished_then_edited(edit: impl FnOnce(StreamJob) -> StreamJob) -> Observed {
    let first = plan(&finished_world(StreamJob::test()));
    let mut observed = finished_world(edit(StreamJob::test()));
    observed.job.status = Some(first.status);
    observed
}

#[test]
fn rescaling_a_finished_job_redeploys_from_its_final_checkpoint() {
    let plan = plan(&finished_then_edited(|job| job.with_parallelism(4)));
    assert_eq!(
        deploys(&plan),
        [RestoreSource::Path(
            "s3://bucket/checkpoints/streams-clicks/chk-12".into()
        )]
    );
    assert!(stop_target(&plan).is_none(), "nothing runs to savepoint");
    assert_eq!(plan.status.lifecycle, Lifecycle::Rescaling);
    assert_eq!(plan.status.deployed.map(|d| d.parallelism), Some(4));
    assert_eq!(plan.status.operator_restarts, 0);
}

#[test]
fn upgrading_a_finished_job_redeploys_from_its_final_checkpoint() {
    let plan = plan(&finished_then_edited(|job| job.with_image("weir:2")));
    assert_eq!(plan.status.lifecycle, Lifecycle::Upgrading);
    assert_eq!(
        plan.status.restore_point.and_then(|r| r.path).as_deref(),
        Some("s3://bucket/checkpoints/streams-clicks/chk-12")
    );
}

#[test]
fn a_finished_stateless_job_runs_again_from_empty_state_after_a_spec_change() {
    let stateless = |job: StreamJob| job.with_upgrade_mode(UpgradeMode::Stateless);
    let first = plan(&finished_world(stateless(StreamJob::test())));
    let mut observed = finished_world(stateless(StreamJob::test()).with_image("weir:2"));
    observed.job.status = Some(first.status);
    let plan = plan(&observed);
    assert_eq!(deploys(&plan), [RestoreSource::None]);
}

#[test]
fn suspending_a_finished_job_removes_the_jobmanager_too() {
    let plan = plan(&finished_then_edited(StreamJob::suspended));
    assert!(plan.actions.contains(&Action::RemoveWorkloads));
    assert_eq!(plan.status.lifecycle, Lifecycle::Suspended);
}

#[test]
fn bounded_job_finishing_during_a_redeploy_is_finished() {
    let before = StreamJob::test();
    let (mut next, _) = after_stop_requested(&before, before.clone().with_parallelism(4));
    next.savepoint = Some(savepoint_answer(
        OperationStatus::Completed,
        Some("s3://b/sp"),
        None,
    ));
    let redeploying = plan(&next);
    let deployed_at = redeploying
        .status
        .deployed
        .as_ref()
        .map(|d| d.deployed_at)
        .expect("deployed");

    // The old JobManager, stopped with the savepoint, still answers FINISHED: keep waiting.
    let mut old_run = next.clone();
    old_run.job.status = Some(redeploying.status.clone());
    old_run.savepoint = None;
    old_run.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Finished, 2),
        latest_checkpoint: None,
    };
    let waiting = plan(&old_run);
    assert_eq!(waiting.status.lifecycle, Lifecycle::Rescaling);
    assert!(waiting.status.operation.is_some());

    // The new run ran to its end before the operator saw it RUNNING; a JobManager whose job
    // is not RUNNING is never ready.
    let mut new_run = old_run;
    new_run.workloads_ready = false;
    new_run.jobmanager = JobManagerView::Job {
        overview: JobOverview {
            start_time: deployed_at + 2_000,
            ..overview(JobState::Finished, 4)
        },
        latest_checkpoint: None,
    };
    let done = plan(&new_run);
    assert_eq!(done.status.lifecycle, Lifecycle::Finished);
    assert!(done.status.operation.is_none());
    assert!(deploys(&done).is_empty(), "{:?}", done.actions);
    assert!(has_event(&done, "JobFinished"));
}

#[test]
fn job_canceled_by_someone_else_is_a_failure_and_restarts() {
    let mut observed = running(StreamJob::test());
    observed.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Canceled, 2),
        latest_checkpoint: None,
    };
    observed.latest_checkpoint = Some(latest(9));
    let first = plan(&observed);
    assert_eq!(first.status.lifecycle, Lifecycle::Failed);
    assert!(plan_has_warning(&first, "JobFailed"));
    let mut later = observed;
    later.job.status = Some(first.status);
    later.now = NOW + 10_000;
    let second = plan(&later);
    assert_eq!(deploys(&second).len(), 1);
    assert_eq!(second.status.operator_restarts, 1);
}

// ---- events ----

#[test]
fn lifecycle_changed_is_emitted_only_when_the_lifecycle_changes() {
    // A new StreamJob starts Deploying: its `Deploying` event says so, no `X -> X`.
    let mut new = running(StreamJob::test());
    new.job.status = None;
    new.jobmanager = JobManagerView::Unreachable("not deployed".into());
    let created = plan(&new);
    assert!(
        !has_event(&created, "LifecycleChanged"),
        "{:?}",
        created.actions
    );
    assert!(created.status.lifecycle_since.is_some());

    // Still deploying (pods not ready): nothing changed, nothing said.
    let mut deploying = with_status(running(StreamJob::test()), |s| {
        s.lifecycle = Lifecycle::Deploying
    });
    deploying.workloads_ready = false;
    assert!(!has_event(&plan(&deploying), "LifecycleChanged"));

    deploying.workloads_ready = true;
    let ran = plan(&deploying);
    let changed: Vec<_> = events(&ran)
        .into_iter()
        .filter(|e| e.reason == "LifecycleChanged")
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].message, "Deploying -> Running");
    assert_eq!(changed[0].action, EventAction::Transition);
}

#[test]
fn every_event_names_what_the_operator_did() {
    let before = StreamJob::test();
    let rescale = plan(&world(&before, before.clone().with_parallelism(4)));
    let stop = events(&rescale)
        .into_iter()
        .find(|e| e.reason == "StopWithSavepoint")
        .expect("event");
    assert_eq!(stop.action, EventAction::StopWithSavepoint);
    assert!(stop.message.starts_with("Rescale: "), "{}", stop.message);

    let failed = plan(&failed_world());
    let warning = events(&failed)
        .into_iter()
        .find(|e| e.reason == "JobFailed")
        .expect("event");
    assert_eq!(warning.action, EventAction::ObserveJob);
    assert!(warning.message.contains("OOM"), "{}", warning.message);
}

// ---- restarts inside the JobManager ----

/// The running job as the JobManager reports it after `restarts` restarts of its own.
fn restarted_by_the_jobmanager(restarts: u32, failure: &str) -> Observed {
    let mut observed = running(StreamJob::test());
    observed.jobmanager = JobManagerView::Job {
        overview: JobOverview {
            restarts,
            last_failure: Some(failure.into()),
            ..overview(JobState::Running, 2)
        },
        latest_checkpoint: None,
    };
    observed
}

#[test]
fn jobmanager_restarts_show_in_status_and_degrade_the_job() {
    let plan = plan(&restarted_by_the_jobmanager(
        3,
        "task map-2 failed:\n  division by zero",
    ));

    assert_eq!(plan.status.lifecycle, Lifecycle::Running);
    assert_eq!(plan.status.job_manager_restarts, 3);
    assert_eq!(plan.status.operator_restarts, 0);
    assert_eq!(
        plan.status.last_failure,
        Some(FailureRecord {
            message: "task map-2 failed: division by zero".into(),
            time: NOW,
        })
    );
    let degraded = condition(&plan, CONDITION_DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "JobRestarting")
    );
    assert!(
        degraded.message.contains("division by zero")
            && degraded.message.contains("3 JobManager restarts"),
        "{}",
        degraded.message
    );
    let warning = events(&plan)
        .into_iter()
        .find(|e| e.reason == "JobRestarting")
        .expect("JobRestarting event");
    assert!(warning.warning);
    assert!(
        !warning.message.contains('3'),
        "repeats must read the same: {}",
        warning.message
    );
}

#[test]
fn jobmanager_restart_degradation_clears_after_five_quiet_minutes() {
    let first = plan(&restarted_by_the_jobmanager(3, "boom"));
    let mut later = restarted_by_the_jobmanager(3, "boom");
    later.job.status = Some(first.status);

    later.now = NOW + RECENT_FAILURE_MS - 1_000;
    let still = plan(&later);
    assert_eq!(
        condition(&still, CONDITION_DEGRADED).reason,
        "JobRestarting"
    );
    assert!(
        !has_event(&still, "JobRestarting"),
        "no new failure, no new event"
    );

    later.now = NOW + RECENT_FAILURE_MS;
    let healthy = plan(&later);
    let degraded = condition(&healthy, CONDITION_DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("False", "AsExpected")
    );
    assert_eq!(
        healthy
            .status
            .last_failure
            .as_ref()
            .map(|f| f.message.as_str()),
        Some("boom"),
        "the last failure stays on record"
    );
    assert_eq!(condition(&healthy, CONDITION_READY).status, "True");
}

#[test]
fn another_restart_renews_the_failure() {
    let first = plan(&restarted_by_the_jobmanager(3, "boom"));
    let mut again = restarted_by_the_jobmanager(4, "bang");
    again.job.status = Some(first.status);
    again.now = NOW + 4 * 60_000;
    let plan = plan(&again);
    assert_eq!(plan.status.job_manager_restarts, 4);
    assert_eq!(
        plan.status.last_failure,
        Some(FailureRecord {
            message: "bang".into(),
            time: NOW + 4 * 60_000
        })
    );
    assert!(plan_has_warning(&plan, "JobRestarting"));
}

#[test]
fn a_restarting_job_is_degraded_before_any_failure_is_recorded() {
    let mut observed = running(StreamJob::test());
    observed.jobmanager = JobManagerView::Job {
        overview: overview(JobState::Restarting, 2),
        latest_checkpoint: None,
    };
    let plan = plan(&observed);
    assert_eq!(condition(&plan, CONDITION_DEGRADED).reason, "JobRestarting");
    assert_eq!(condition(&plan, CONDITION_READY).status, "False");
}

#[test]
fn restarts_of_the_run_being_replaced_are_not_new_failures() {
    // Redeployed at 5_000; the old JobManager (started at 1_000) still answers.
    let mut observed = restarted_by_the_jobmanager(4, "old trouble");
    observed = with_status(observed, |s| {
        s.job_start_time = None;
        s.lifecycle = Lifecycle::Deploying;
        if let Some(d) = s.deployed.as_mut() {
            d.deployed_at = 5_000;
        }
    });
    let plan = plan(&observed);
    assert_eq!(plan.status.last_failure, None);
    assert_eq!(plan.status.job_manager_restarts, 0);
    assert!(!has_event(&plan, "JobRestarting"));
}

#[test]
fn a_new_jobmanager_counts_restarts_from_zero() {
    let mut observed = restarted_by_the_jobmanager(1, "after the move");
    if let JobManagerView::Job { overview, .. } = &mut observed.jobmanager {
        overview.start_time = 99_000;
    }
    observed = with_status(observed, |s| s.job_manager_restarts = 5);
    let plan = plan(&observed);
    assert_eq!(plan.status.job_manager_restarts, 1);
    assert_eq!(
        plan.status.last_failure.map(|f| f.message).as_deref(),
        Some("after the move")
    );
}

#[test]
fn a_failed_job_records_its_failure_and_says_it_in_degraded() {
    let plan = plan(&failed_world());
    assert_eq!(
        plan.status
            .last_failure
            .as_ref()
            .map(|f| f.message.as_str()),
        Some("task 3 failed: OOM")
    );
    let degraded = condition(&plan, CONDITION_DEGRADED);
    assert_eq!(degraded.reason, "JobFailed");
    assert!(degraded.message.contains("OOM"), "{}", degraded.message);
}

// ---- checkpoint storage access ----

#[test]
fn storage_access_condition_says_why_restore_points_are_unverified() {
    let mut observed = running(StreamJob::test());
    observed.storage =
        StorageProbe::Failed("ListObjectsV2: dispatch failure: no credentials".into());
    let failing = plan(&observed);
    let access = condition(&failing, CONDITION_STORAGE_ACCESS);
    assert_eq!(
        (access.status.as_str(), access.reason.as_str()),
        ("False", "StorageUnreadable")
    );
    assert!(
        access.message.contains("no credentials") && access.message.contains("verified"),
        "{}",
        access.message
    );
    assert!(
        events(&failing).iter().all(|e| !e.warning),
        "a condition, not a Warning every reconcile"
    );
    assert_eq!(condition(&failing, CONDITION_DEGRADED).status, "False");

    let mut unchanged = observed.clone();
    unchanged.job.status = Some(failing.status.clone());
    unchanged.storage = StorageProbe::NotChecked;
    let same = plan(&unchanged);
    assert_eq!(condition(&same, CONDITION_STORAGE_ACCESS), access);

    unchanged.storage = StorageProbe::Readable;
    let fixed = plan(&unchanged);
    let access = condition(&fixed, CONDITION_STORAGE_ACCESS);
    assert_eq!(
        (access.status.as_str(), access.reason.as_str()),
        ("True", "StorageReadable")
    );
}

#[test]
fn one_line_joins_lines_and_bounds_the_length() {
    assert_eq!(one_line("a\n  b\r\n\tc "), "a b c");
    let long = "x".repeat(MAX_MESSAGE_CHARS + 10);
    let cut = one_line(&long);
    assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
    assert!(cut.ends_with('…'));
}
