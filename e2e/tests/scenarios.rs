//! The user flow on a real cluster (issue 12): each scenario drives StreamJobs through one
//! disruption the way a user would (kubectl apply/edit/delete, pods lost, the operator lost)
//! and ends by reading the committed `sequence-check` output from S3: every (key, seq) exactly
//! once, no alert.
//!
//! scripts/e2e.sh prepares the cluster (the control-plane kit or kind), S3, the Secrets and
//! the chart, sets `WEIR_E2E=1` and runs these with `--ignored`: the job scenarios a few at a
//! time, then the `operator_*` ones (they kill, scale or replace the operator, which every
//! job shares) one at a time. Without `WEIR_E2E=1` each prints one line and returns; with it,
//! a cluster that cannot be reached fails the scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};
use weir_e2e::Result;
use weir_e2e::cluster::{
    Cluster, Poll, SequenceJob, assert_exactly_once, last_checkpoint_id, mounts_api_token,
    record_measurement, savepoints_for, wait_for,
};
use weir_e2e::s3::S3Uri;

const LONG: Duration = Duration::from_secs(300);

/// Starts a job and waits for two completed checkpoints, so every disruption has state to
/// restore.
async fn running_job(cluster: &Cluster, job: &SequenceJob) -> Result<Value> {
    cluster.start(job).await?;
    cluster.wait_for_checkpoints(&job.name, 2).await
}

/// The common end of every scenario: wait for the bounded output, check it, clean up.
async fn finish_exactly_once(cluster: &Cluster, job: &SequenceJob) -> Result<()> {
    let report = cluster.wait_until_finished(job).await?;
    assert_exactly_once(job, &report);
    cluster.delete_job(&job.name).await
}

/// Neither the operator redeployed the job nor the JobManager restarted it.
fn assert_no_restarts(status: &Value) {
    assert_eq!(status["operatorRestarts"].as_u64(), Some(0), "{status}");
    assert_eq!(status["jobManagerRestarts"].as_u64(), Some(0), "{status}");
}

/// Records how long a step of a scenario took.
fn measured(scenario: &str, what: &str, since: Instant) {
    record_measurement(&format!(
        "{scenario}: {what}: {:.1}s",
        since.elapsed().as_secs_f64()
    ));
}

/// Waits until the job commits records beyond `records`: processing really resumed.
async fn wait_for_output_beyond(cluster: &Cluster, job: &SequenceJob, records: u64) -> Result<()> {
    wait_for(
        &format!("{} to commit more than {records} records", job.name),
        LONG,
        || async {
            let now = cluster.committed(job).await?.records;
            Ok(if now > records {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{now} records committed"))
            })
        },
    )
    .await
}

fn pod_names(pods: &[k8s_openapi::api::core::v1::Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// The uids of every JobManager and TaskManager pod: equal sets mean no pod was replaced.
async fn job_pod_uids(cluster: &Cluster, job: &SequenceJob) -> Result<BTreeSet<String>> {
    let mut uids = BTreeSet::new();
    for component in ["jobmanager", "taskmanager"] {
        for pod in cluster.pods(&job.name, component).await? {
            uids.extend(pod.metadata.uid);
        }
    }
    Ok(uids)
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn steady_state_checkpoints_show_in_status_and_kubectl() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("steady_state").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("steady", &cluster.config).lasting(40);
    let applied = Instant::now();
    cluster.start(&job).await?;
    cluster
        .wait_for_status(&job.name, "the job RUNNING", LONG, |s| {
            s["jobState"] == "RUNNING"
        })
        .await?;
    measured("steady_state", "apply -> job RUNNING", applied);
    let status = cluster.wait_for_checkpoints(&job.name, 3).await?;
    assert!(
        status["lastCheckpoint"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("s3://weir/e2e/checkpoints/")),
        "status.lastCheckpoint must name the checkpoint in S3: {status}"
    );
    assert_no_restarts(&status);

    // `kubectl get sj`: the printer columns a user reads.
    let table = cluster.kubectl(&[
        "get",
        "sj",
        "-n",
        &cluster.config.namespace,
        &job.name,
        "--no-headers",
        "-o",
        "custom-columns=P:.spec.parallelism,S:.status.lifecycle,J:.status.jobState",
    ])?;
    assert_eq!(
        table.split_whitespace().collect::<Vec<_>>(),
        ["2", "Running", "RUNNING"]
    );
    let wide = cluster.kubectl(&["get", "sj", "-n", &cluster.config.namespace, &job.name])?;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PARALLELISM",
            "STATE",
            "JOB",
            "RESTARTS",
            "LAST",
            "CHECKPOINT",
            "AGE"
        ],
        "{wide}"
    );
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        [job.name.as_str(), "2", "Running", "RUNNING", "0"],
        "{wide}"
    );
    assert!(row[5].parse::<u64>().is_ok_and(|id| id >= 3), "{wide}");

    // The JobManager's REST API wants the job's token (which the operator derived and wrote
    // into the job's Secret): refused without it or with a wrong one, answered with it.
    let token = cluster
        .secret_value(&format!("{}-rest-token", job.name), "token")
        .await?;
    let jobmanager = cluster.pods(&job.name, "jobmanager").await?;
    let ip = jobmanager
        .first()
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("the JobManager pod has an IP");
    let url = format!("http://{ip}:8081/v1/jobs");
    let http = reqwest::Client::new();
    for (presented, expected) in [
        (None, 401),
        (Some("not-the-token"), 401),
        (Some(&*token), 200),
    ] {
        let request = match presented {
            Some(token) => http.get(&url).bearer_auth(token),
            None => http.get(&url),
        };
        let status = request
            .send()
            .await
            .map_err(|e| weir_e2e::Error::Environment(format!("GET {url}: {e}")))?
            .status();
        assert_eq!(
            status.as_u16(),
            expected,
            "GET {url} with token {:?}",
            presented.map(|t| if t == token { "<the job's>" } else { t })
        );
    }

    // The job's own NetworkPolicy fences every pod of the job and admits RPC and data from
    // this job's TaskManagers only (whether the kit's network enforces it is another matter:
    // mutual TLS refuses other jobs either way).
    let policy = cluster
        .network_policy(&format!("{}-peers", job.name))
        .await?
        .expect("the operator created the job's NetworkPolicy");
    let owner = &policy.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!((owner.kind.as_str(), &owner.name), ("StreamJob", &job.name));
    let spec = policy.spec.expect("spec");
    let selects = |selector: Option<&LabelSelector>, pod: &Pod| {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        selector
            .and_then(|s| s.match_labels.as_ref())
            .is_some_and(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let ingress = spec.ingress.expect("ingress rules");
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    let peer = ingress[0].from.as_ref().expect("from")[0]
        .pod_selector
        .as_ref();
    for component in ["jobmanager", "taskmanager"] {
        for pod in cluster.pods(&job.name, component).await? {
            assert!(
                selects(spec.pod_selector.as_ref(), &pod),
                "{component} fenced"
            );
            assert_eq!(
                selects(peer, &pod),
                component == "taskmanager",
                "only TaskManagers are admitted peers"
            );
        }
    }

    // Job pods get no Kubernetes API token: they never talk to the API server.
    for component in ["jobmanager", "taskmanager"] {
        for pod in cluster.pods(&job.name, component).await? {
            assert!(
                !mounts_api_token(&pod),
                "{component} pod {:?} mounts a service-account token",
                pod.metadata.name
            );
        }
    }
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn taskmanager_and_jobmanager_pods_deleted_repeatedly() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("pod_loss").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("pod-loss", &cluster.config).lasting(200);
    running_job(&cluster, &job).await?;
    for (component, times) in [("taskmanager", 5), ("jobmanager", 2)] {
        for round in 1..=times {
            let status = cluster.stream_job(&job.name).await?["status"].clone();
            let before = last_checkpoint_id(&status);
            let committed = cluster.committed(&job).await?.records;
            let pods = cluster.pods(&job.name, component).await?;
            let victim = pods
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .next()
                .unwrap_or_else(|| panic!("a running job has {component} pods"));
            let deleted = Instant::now();
            cluster.delete_pod(&victim).await?;
            // A deleted pod runs on through its grace period, committing output; only once it
            // is gone is the job really without it. Records committed after that point prove
            // the job recovered.
            wait_for(&format!("pod {victim} gone"), LONG, || async {
                let now = pod_names(&cluster.pods(&job.name, component).await?);
                Ok(if now.contains(&victim) {
                    Poll::Pending(format!("pods: {now:?}"))
                } else {
                    Poll::Ready(())
                })
            })
            .await?;
            let committed = committed.max(cluster.committed(&job).await?.records);
            wait_for_output_beyond(&cluster, &job, committed).await?;
            measured(
                "pod_loss",
                &format!("{component} pod deleted (round {round}) -> records committed again"),
                deleted,
            );
            // Checkpoints continue past the ones before the loss: the job restored, not restarted empty.
            let status = cluster
                .wait_for_status(
                    &job.name,
                    &format!("checkpoints after {component} loss {round}"),
                    LONG,
                    |s| s["lifecycle"] == "Running" && last_checkpoint_id(s) > before,
                )
                .await?;
            if component == "jobmanager" {
                assert!(
                    status["restorePoint"]["path"]
                        .as_str()
                        .is_some_and(|p| p.contains("/chk-") || p.contains("savepoint")),
                    "a new JobManager restores from the latest checkpoint, never from empty: {status}"
                );
            }
        }
    }
    finish_exactly_once(&cluster, &job).await
}

/// Rescales through `parallelism` values, checking the savepoint, the pods and the events at
/// each step.
#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn rescale_2_to_3_to_1_through_savepoints() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("rescale").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("rescale", &cluster.config).lasting(150);
    running_job(&cluster, &job).await?;
    for (step, parallelism) in [(1usize, 3u32), (2, 1)] {
        let edited = Instant::now();
        cluster
            .patch_spec(&job.name, json!({"parallelism": parallelism}))
            .await?;
        let status = cluster
            .wait_for_status(
                &job.name,
                &format!("the job running at parallelism {parallelism} from a rescale savepoint"),
                LONG,
                |s| {
                    s["lifecycle"] == "Running"
                        && s["jobState"] == "RUNNING"
                        && s["deployed"]["parallelism"] == parallelism
                        && savepoints_for(s, "rescale") >= step
                },
            )
            .await?;
        measured(
            "rescale",
            &format!("edit to parallelism {parallelism} -> running at it"),
            edited,
        );
        assert_eq!(status["restorePoint"]["kind"], "savepoint", "{status}");
        assert_eq!(
            savepoints_for(&status, "rescale"),
            step,
            "one savepoint per rescale: {status}"
        );
        let taskmanagers = cluster.pods(&job.name, "taskmanager").await?;
        let running = taskmanagers
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        assert_eq!(running, parallelism as usize, "one slot per TaskManager");
        let events = cluster.events(&job.name).await?;
        let savepoint_events = events
            .iter()
            .filter(|(_, _, message, _)| message.contains("savepoint"))
            .count();
        assert!(
            savepoint_events >= step,
            "each rescale shows its savepoint in events: {events:?}"
        );
    }
    finish_exactly_once(&cluster, &job).await
}

/// Waits until the operator acted on the latest spec and the job runs on `image`.
async fn wait_for_image(cluster: &Cluster, job: &SequenceJob, image: &str) -> Result<Value> {
    let generation = cluster.stream_job(&job.name).await?["metadata"]["generation"].clone();
    wait_for(
        &format!("{} running on {image}", job.name),
        LONG,
        || async {
            let status = cluster.stream_job(&job.name).await?["status"].clone();
            let deployed = cluster
                .deployment(&format!("{}-jobmanager", job.name))
                .await?
                .and_then(|d| d.spec.template.spec)
                .and_then(|p| p.containers.first()?.image.clone());
            Ok(
                if status["observedGeneration"] == generation
                    && status["lifecycle"] == "Running"
                    && status["jobState"] == "RUNNING"
                    && status["operation"].is_null()
                    && deployed.as_deref() == Some(image)
                {
                    Poll::Ready(status)
                } else {
                    Poll::Pending(format!("JobManager image {deployed:?}; status {status}"))
                },
            )
        },
    )
    .await
}

/// An image change in one upgrade mode; returns the status once the new image runs.
async fn upgrade(cluster: &Cluster, job: &SequenceJob) -> Result<Value> {
    running_job(cluster, job).await?;
    let next = cluster.config.next_image.clone();
    let edited = Instant::now();
    cluster
        .patch_spec(&job.name, json!({"image": next}))
        .await?;
    let status = wait_for_image(cluster, job, &next).await?;
    measured(
        &format!("upgrade ({})", job.upgrade_mode),
        "image edit -> running on it",
        edited,
    );
    for component in ["jobmanager", "taskmanager"] {
        for pod in cluster.pods(&job.name, component).await? {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone());
            assert_eq!(
                image.as_deref(),
                Some(next.as_str()),
                "{component} pod image"
            );
        }
    }
    Ok(status)
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn upgrade_in_savepoint_mode() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("upgrade_savepoint").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("up-sp", &cluster.config).lasting(90);
    let status = upgrade(&cluster, &job).await?;
    assert_eq!(status["restorePoint"]["kind"], "savepoint", "{status}");
    assert_eq!(savepoints_for(&status, "upgrade"), 1, "{status}");
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn upgrade_in_last_state_mode() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("upgrade_last_state").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("up-ls", &cluster.config)
        .with_upgrade_mode("last-state")
        .lasting(90);
    let status = upgrade(&cluster, &job).await?;
    // last-state takes no savepoint: the new pods restore the latest checkpoint.
    assert_eq!(savepoints_for(&status, "upgrade"), 0, "{status}");
    assert_eq!(status["restorePoint"]["kind"], "checkpoint", "{status}");
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn upgrade_in_stateless_mode_starts_empty() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("upgrade_stateless").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("up-sl", &cluster.config)
        .with_upgrade_mode("stateless")
        .lasting(60);
    let status = upgrade(&cluster, &job).await?;
    // Stateless: no savepoint, no restore point; the job starts from empty state and input
    // offsets, which status says.
    assert_eq!(savepoints_for(&status, "upgrade"), 0, "{status}");
    assert!(
        status["restorePoint"].is_null() || status["restorePoint"]["kind"] == "empty",
        "a stateless upgrade restores nothing: {status}"
    );
    // The generator starts again at 0: the output holds the first run's prefix and then a
    // complete second run. Everything is there, nothing is out of order within the run, and
    // no alert (the checker's state started empty with the source).
    // Wait for the job's end, not for a record count: the first run's prefix already counts.
    cluster
        .wait_for_status(&job.name, "the second run FINISHED", LONG, |s| {
            s["jobState"] == "FINISHED"
        })
        .await?;
    let report = cluster.committed(&job).await?;
    assert!(report.alerts.is_empty(), "{:?}", report.alerts);
    for key in 0..job.keys {
        let summary = report.keys.get(&key).cloned().unwrap_or_default();
        assert_eq!(
            summary.distinct, job.events_per_key,
            "key {key}: {summary:?}"
        );
    }
    cluster.delete_job(&job.name).await
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn failed_savepoint_blocks_the_upgrade_and_keeps_the_job_running() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("upgrade_blocked").await? else {
        return Ok(());
    };
    // Long enough to still run when the fixed spec lets the upgrade through: blocking, the
    // failed savepoint's retries and two more checkpoints take about two minutes.
    let job = SequenceJob::named("blocked", &cluster.config).lasting(300);
    running_job(&cluster, &job).await?;
    let before = job_pod_uids(&cluster, &job).await?;
    // A savepoint directory in a bucket nothing can be written to (scripts/e2e.sh makes one),
    // outside the directories the running JobManager was deployed with: it refuses the
    // savepoint (400) before writing anything, and the operator blocks the upgrade at once.
    let unwritable = format!("s3://{}/savepoints", cluster.config.unwritable_bucket);
    cluster
        .patch_spec(
            &job.name,
            json!({"image": cluster.config.next_image, "savepoints": {"directory": unwritable}}),
        )
        .await?;
    let status = cluster
        .wait_for_status(&job.name, "UpgradeBlocked", LONG, |s| {
            s["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "UpgradeBlocked" && c["status"] == "True")
            })
        })
        .await?;
    let blocked = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "UpgradeBlocked"))
        .map(|c| c["message"].to_string())
        .unwrap_or_default();
    assert!(
        blocked.contains("not under an allowed savepoint directory"),
        "the refusal names the rule: {blocked}"
    );
    let checkpoint = last_checkpoint_id(&status);
    // The old job keeps running untouched: same pods, old image, checkpoints continue.
    cluster
        .wait_for_status(
            &job.name,
            "checkpoints to continue while blocked",
            LONG,
            |s| last_checkpoint_id(s) >= checkpoint + 2,
        )
        .await?;
    let after = job_pod_uids(&cluster, &job).await?;
    assert_eq!(
        before, after,
        "a blocked upgrade must not touch the running pods"
    );
    cluster
        .wait_for_event(&job.name, "UpgradeBlocked", "")
        .await?;
    // Fixing the spec lets the upgrade through.
    cluster
        .patch_spec(
            &job.name,
            json!({"savepoints": {"directory": format!("s3://weir/e2e/{}/savepoints", job.name)}}),
        )
        .await?;
    let status = wait_for_image(&cluster, &job, &cluster.config.next_image).await?;
    assert_eq!(savepoints_for(&status, "upgrade"), 1, "{status}");
    finish_exactly_once(&cluster, &job).await
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn suspend_resume_nonce_and_periodic_savepoints() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("suspend_resume").await? else {
        return Ok(());
    };
    let mut job = SequenceJob::named("suspend", &cluster.config).lasting(180);
    job.periodic_savepoints = Some(("15s".into(), 2));
    running_job(&cluster, &job).await?;

    // Periodic savepoints, trimmed to `retained`.
    let status = cluster
        .wait_for_status(&job.name, "two periodic savepoints", LONG, |s| {
            s["savepointHistory"]
                .as_array()
                .is_some_and(|h| h.iter().filter(|s| s["reason"] == "periodic").count() >= 2)
                && s["lastSavepoint"]["reason"] == "periodic"
        })
        .await?;
    let history = status["savepointHistory"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(history.len() <= 2, "savepoints.retained is 2: {status}");

    // savepointTriggerNonce: one savepoint now.
    cluster
        .patch_spec(&job.name, json!({"savepointTriggerNonce": 7}))
        .await?;
    cluster
        .wait_for_status(&job.name, "the manual savepoint", LONG, |s| {
            s["lastSavepointNonce"] == 7 && s["lastSavepoint"]["reason"] == "manual"
        })
        .await?;

    cluster
        .patch_spec(&job.name, json!({"state": "suspended"}))
        .await?;
    cluster
        .wait_for_status(&job.name, "the job suspended with a savepoint", LONG, |s| {
            s["lifecycle"] == "Suspended" && savepoints_for(s, "suspend") >= 1
        })
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
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(cluster.committed(&job).await?.records, suspended.records);

    cluster
        .patch_spec(&job.name, json!({"state": "running"}))
        .await?;
    let status = cluster
        .wait_for_status(
            &job.name,
            "the job running again from the suspend savepoint",
            LONG,
            |s| s["lifecycle"] == "Running" && s["restorePoint"]["kind"] == "savepoint",
        )
        .await?;
    assert!(status["restorePoint"]["path"].is_string(), "{status}");
    finish_exactly_once(&cluster, &job).await?;

    // Retention also removed the older periodic savepoints from storage.
    let savepoints = S3Uri {
        bucket: "weir".into(),
        prefix: format!("e2e/{}/savepoints", job.name),
    };
    let kept: BTreeSet<String> = cluster
        .store
        .list(&savepoints)
        .await?
        .into_iter()
        .filter(|k| k.ends_with("/_metadata"))
        .collect();
    eprintln!("savepoints kept in storage: {kept:?}");
    Ok(())
}

/// `onDelete` {savepoint true/false} × {storage retain/delete}: what remains in S3.
#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn delete_with_every_on_delete_policy() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("on_delete").await? else {
        return Ok(());
    };
    let mut jobs = Vec::new();
    for (savepoint, storage) in [
        (true, "retain"),
        (true, "delete"),
        (false, "retain"),
        (false, "delete"),
    ] {
        let mut job = SequenceJob::named(
            &format!("del-{}-{storage}", if savepoint { "sp" } else { "nosp" }),
            &cluster.config,
        )
        .lasting(600);
        job.parallelism = 1;
        job.on_delete = Some((savepoint, storage.to_string()));
        cluster.start(&job).await?;
        jobs.push((job, savepoint, storage));
    }
    for (job, _, _) in &jobs {
        cluster.wait_for_checkpoints(&job.name, 2).await?;
    }
    for (job, savepoint, storage) in &jobs {
        let checkpoints = S3Uri {
            bucket: "weir".into(),
            prefix: format!("e2e/checkpoints/{}-{}", cluster.config.namespace, job.name),
        };
        let savepoints = S3Uri {
            bucket: "weir".into(),
            prefix: format!("e2e/{}/savepoints", job.name),
        };
        cluster.delete_job(&job.name).await?;
        let checkpoint_objects = cluster.store.list(&checkpoints).await?;
        let savepoint_metadata: Vec<String> = cluster
            .store
            .list(&savepoints)
            .await?
            .into_iter()
            .filter(|k| k.ends_with("/_metadata"))
            .collect();
        let what = format!("onDelete {{savepoint: {savepoint}, storage: {storage}}}");
        match *storage {
            "delete" => {
                assert!(
                    checkpoint_objects.is_empty(),
                    "{what}: checkpoints left: {checkpoint_objects:?}"
                );
            }
            _ => assert!(
                checkpoint_objects.iter().any(|k| k.ends_with("/_metadata")),
                "{what}: completed checkpoints must stay"
            ),
        }
        if *savepoint {
            // The final savepoint is kept in both modes: it is the way back to this job.
            assert_eq!(
                savepoint_metadata.len(),
                1,
                "{what}: final savepoint: {savepoint_metadata:?}"
            );
        } else {
            assert!(
                savepoint_metadata.is_empty(),
                "{what}: {savepoint_metadata:?}"
            );
        }
        // Output committed before the delete is clean.
        let report = cluster.committed(job).await?;
        assert!(
            report.violations().is_empty(),
            "{what}: {:?}",
            report.violations()
        );
        // The pods go with the StreamJob through their owners (Kubernetes' garbage collector,
        // asynchronous after the StreamJob is gone), so they are gone or terminating soon.
        for component in ["jobmanager", "taskmanager"] {
            wait_for(
                &format!("{what}: {component} pods to go with the StreamJob"),
                Duration::from_secs(60),
                || async {
                    let pods = cluster.pods(&job.name, component).await?;
                    let live: Vec<String> = pods
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    Ok(if live.is_empty() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("not terminating: {live:?}"))
                    })
                },
            )
            .await?;
        }
    }
    Ok(())
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn two_jobs_in_two_namespaces_at_once() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("two_namespaces").await? else {
        return Ok(());
    };
    let other = cluster.in_namespace(&cluster.config.second_namespace.clone());
    let first = SequenceJob::named("ns-a", &cluster.config).lasting(45);
    let second = SequenceJob::named("ns-b", &other.config).lasting(45);
    cluster.start(&first).await?;
    other.start(&second).await?;
    let (a, b) = tokio::join!(
        finish_exactly_once(&cluster, &first),
        finish_exactly_once(&other, &second)
    );
    a?;
    b
}

/// A bounded job (url-count over the example access log, each count labelled from a file in
/// the distributed cache on S3) finishes: status says so, it is never restarted, and its
/// committed output is every URL's running count 1, 2, ..., n exactly once, each carrying the
/// label the cached file gives its URL.
#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn bounded_job_finishes_and_is_not_restarted() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("bounded").await? else {
        return Ok(());
    };
    let name = format!(
        "bounded-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() % 100_000)
    );
    let output = format!("s3://weir/e2e/{name}/output");
    let manifest = json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name, "namespace": cluster.config.namespace},
        "spec": {
            "image": cluster.config.image,
            "parallelism": 2,
            "serviceAccountName": "weir-job",
            "s3CredentialsSecret": {"name": "weir-s3"},
            "job": {
                "name": "url-count",
                "args": {"input": "s3://weir/input/access-log", "output": output, "urlLabels": "url-labels"},
                "cachedFiles": {"url-labels": "s3://weir/cache/url-labels.txt"},
                "checkpointing": {"interval": "2s", "storage": "s3://weir/e2e/checkpoints"},
                "s3": {"endpoint": cluster.config.s3_cluster_endpoint, "region": "us-east-1", "forcePathStyle": true},
            },
            "taskManager": {"slots": 1},
        },
    });
    cluster
        .create_manifest(manifest)
        .await
        .map_err(|e| weir_e2e::Error::Environment(format!("create {name}: {e}")))?;
    let status = cluster
        .wait_for_status(&name, "the bounded job Finished", LONG, |s| {
            s["lifecycle"] == "Finished"
        })
        .await?;
    assert_eq!(status["jobState"], "FINISHED", "{status}");
    // It stays finished: no restart, no failure condition, for longer than a restart backoff.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let status = cluster.stream_job(&name).await?["status"].clone();
    assert_eq!(status["lifecycle"], "Finished", "{status}");
    assert_no_restarts(&status);
    let degraded = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
        .unwrap_or(Value::Null);
    assert_ne!(
        degraded["status"], "True",
        "a finished job is not degraded: {status}"
    );
    let events = cluster.events(&name).await?;
    assert!(
        events
            .iter()
            .all(|(kind, reason, _, _)| kind != "Warning" && reason != "Restarting"),
        "{events:?}"
    );
    let uri = S3Uri::parse(&output).expect("s3 uri");
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let labels = example_url_labels();
    for key in cluster.store.committed_objects(&uri).await? {
        let bytes = cluster.store.read(&uri.bucket, &key).await?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            let record: Value = serde_json::from_str(line).expect("a url-count record");
            let url = record["url"].as_str().expect("url").to_string();
            assert_eq!(
                record["label"].as_str(),
                labels.get(&url).map(String::as_str),
                "every count carries its URL's label from the cached file: {record}"
            );
            counts
                .entry(url)
                .or_default()
                .push(record["count"].as_u64().expect("count"));
        }
    }
    for seen in counts.values_mut() {
        seen.sort_unstable();
    }
    let expected: BTreeMap<String, Vec<u64>> = example_access_log_counts()
        .into_iter()
        .map(|(url, n)| (url, (1..=n).collect()))
        .collect();
    assert_eq!(
        counts, expected,
        "every URL's counts 1..=n, each committed exactly once"
    );
    cluster.delete_job(&name).await
}

fn examples_data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data")
        .join(name)
}

/// How often each URL occurs in the example access log (`examples/data/access-log`).
fn example_access_log_counts() -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let dir = examples_data("access-log");
    for entry in std::fs::read_dir(&dir).expect("examples/data/access-log") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("access log");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let event: Value = serde_json::from_str(line).expect("an access-log line");
            *counts
                .entry(event["url"].as_str().expect("url").to_string())
                .or_default() += 1;
        }
    }
    counts
}

/// The labels of `examples/data/url-labels.txt` (the cached file the scenario's job reads).
fn example_url_labels() -> BTreeMap<String, String> {
    std::fs::read_to_string(examples_data("url-labels.txt"))
        .expect("examples/data/url-labels.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(url, label)| (url.to_string(), label.trim().to_string()))
        .collect()
}

#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn invalid_manifests_are_rejected_by_the_api_server() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("invalid_manifest").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("invalid", &cluster.config);
    let edited = |mut manifest: Value, edit: &dyn Fn(&mut Value)| {
        edit(&mut manifest);
        manifest
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "parallelism 0",
            edited(job.manifest(), &|m| m["spec"]["parallelism"] = json!(0)),
            "parallelism",
        ),
        (
            "parallelism above maxParallelism",
            edited(job.manifest(), &|m| {
                m["spec"]["parallelism"] = json!(9);
                m["spec"]["job"]["maxParallelism"] = json!(8);
            }),
            "must not exceed",
        ),
        (
            "savepoint mode without checkpoint storage",
            edited(job.manifest(), &|m| {
                if let Some(job) = m["spec"]["job"].as_object_mut() {
                    job.remove("checkpointing");
                }
            }),
            "checkpointing",
        ),
        (
            "unknown upgrade mode",
            edited(job.manifest(), &|m| {
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

    // Immutable fields: a valid job cannot change its job name or maxParallelism afterwards.
    cluster.start(&job).await?;
    for (field, patch) in [
        ("job.name", json!({"spec": {"job": {"name": "url-count"}}})),
        (
            "job.maxParallelism",
            json!({"spec": {"job": {"maxParallelism": 64}}}),
        ),
    ] {
        let changed = cluster
            .jobs
            .patch(
                &job.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await;
        match changed {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{field}: {status:?}");
                assert!(
                    status.message.contains("immutable"),
                    "{field}: {}",
                    status.message
                );
            }
            other => panic!("changing {field} must be rejected, got {other:?}"),
        }
    }
    cluster.delete_job(&job.name).await?;
    let report = cluster.committed(&job).await?;
    assert!(report.violations().is_empty(), "{:?}", report.violations());
    Ok(())
}

/// The `_metadata` keys of the job's savepoints in S3.
async fn completed_savepoints(cluster: &Cluster, job: &SequenceJob) -> Result<Vec<String>> {
    let savepoints = S3Uri {
        bucket: "weir".into(),
        prefix: format!("e2e/{}/savepoints", job.name),
    };
    Ok(cluster
        .store
        .list(&savepoints)
        .await?
        .into_iter()
        .filter(|k| k.ends_with("/_metadata"))
        .collect())
}

/// The operator dies at both of its named fault points during a rescale: once when the
/// stop-with-savepoint has completed but is not in status yet, once when status names the
/// savepoint as the restore point but the Deployments are not updated. Each time the kubelet
/// restarts the container in the same pod and it resumes from status: one savepoint, the new
/// parallelism, exactly-once output.
#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn operator_dies_between_savepoint_and_redeploy() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("operator_fault_points").await? else {
        return Ok(());
    };
    const POINTS: [&str; 2] = ["operator-savepoint-observed", "operator-redeploy-recorded"];
    cluster
        .set_operator_fault_points(Some(&POINTS.join(",")))
        .await?;
    let outcome = rescale_through_operator_crashes(&cluster, &POINTS).await;
    // Whatever happened, the scenarios after this one get an operator without fault points.
    cluster.set_operator_fault_points(None).await?;
    outcome
}

async fn rescale_through_operator_crashes(cluster: &Cluster, points: &[&str]) -> Result<()> {
    let job = SequenceJob::named("op-fault", &cluster.config).lasting(120);
    running_job(cluster, &job).await?;
    let restarts = |counts: &[(String, i32)]| counts.iter().map(|(_, n)| n).sum::<i32>();
    let before = cluster.operator_restarts().await?;
    assert_eq!(
        restarts(&before),
        0,
        "no crash before the rescale: {before:?}"
    );
    cluster
        .patch_spec(&job.name, json!({"parallelism": 3}))
        .await?;
    let status = wait_for_rescale(
        cluster,
        &job,
        3,
        "the rescale finished through two operator crashes",
    )
    .await?;
    let after = cluster.operator_restarts().await?;
    assert_eq!(restarts(&after), 2, "one crash per fault point: {after:?}");
    if cluster.config.pod_logs.is_some() {
        let log = cluster.operator_log();
        for point in points {
            let reached = format!("fault point {point} reached");
            assert_eq!(
                log.matches(&reached).count(),
                1,
                "the operator died at {point} exactly once"
            );
        }
    }
    assert_one_rescale_savepoint(cluster, &job, &status).await?;
    finish_exactly_once(cluster, &job).await
}

/// Waits until a rescale to `parallelism` is over: the job runs at it, no operation left.
async fn wait_for_rescale(
    cluster: &Cluster,
    job: &SequenceJob,
    parallelism: u32,
    what: &str,
) -> Result<Value> {
    cluster
        .wait_for_status(&job.name, what, LONG, |s| {
            s["lifecycle"] == "Running"
                && s["jobState"] == "RUNNING"
                && s["deployed"]["parallelism"] == parallelism
                && s["operation"].is_null()
        })
        .await
}

/// Exactly one rescale savepoint was taken: in the status and in storage.
async fn assert_one_rescale_savepoint(
    cluster: &Cluster,
    job: &SequenceJob,
    status: &Value,
) -> Result<()> {
    assert_eq!(
        savepoints_for(status, "rescale"),
        1,
        "exactly one savepoint: {status}"
    );
    let completed = completed_savepoints(cluster, job).await?;
    assert_eq!(
        completed.len(),
        1,
        "one savepoint in storage: {completed:?}"
    );
    Ok(())
}

/// The operator is killed in the middle of a rescale: the new one resumes the recorded
/// operation and exactly one savepoint is taken.
#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn operator_killed_mid_rescale_resumes_with_one_savepoint() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("operator_killed_mid_rescale").await? else {
        return Ok(());
    };
    let job = SequenceJob::named("op-kill", &cluster.config).lasting(120);
    running_job(&cluster, &job).await?;
    cluster
        .patch_spec(&job.name, json!({"parallelism": 3}))
        .await?;
    // Kill the operator as soon as the savepoint is recorded as in flight.
    cluster
        .wait_for_status(&job.name, "the rescale savepoint in flight", LONG, |s| {
            s["operation"].is_object()
        })
        .await?;
    for pod in cluster.operator_pods().await? {
        if let Some(name) = pod.metadata.name {
            cluster.kill_operator_pod(&name).await?;
        }
    }
    let status = wait_for_rescale(
        &cluster,
        &job,
        3,
        "the rescale finished by the new operator",
    )
    .await?;
    assert_one_rescale_savepoint(&cluster, &job, &status).await?;
    finish_exactly_once(&cluster, &job).await
}

/// Two operator replicas behind the Lease: only the holder reconciles; kill it and the other
/// takes over within the lease time, and the job it manages stays exactly-once.
#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn operator_leader_killed_standby_takes_over() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("operator_leader_election").await? else {
        return Ok(());
    };
    cluster.scale_operator(2).await?;
    let leader = wait_for("a Lease holder", LONG, || async {
        Ok(match cluster.lease_holder().await? {
            Some(holder) => Poll::Ready(holder),
            None => Poll::Pending("no holder".into()),
        })
    })
    .await?;
    let job = SequenceJob::named("op-ha", &cluster.config).lasting(90);
    running_job(&cluster, &job).await?;
    let killed = Instant::now();
    cluster.kill_operator_pod(&leader).await?;
    let standby = wait_for(
        "the standby to take the Lease",
        Duration::from_secs(60),
        || async {
            Ok(match cluster.lease_holder().await? {
                Some(holder) if holder != leader => Poll::Ready(holder),
                other => Poll::Pending(format!("holder {other:?}")),
            })
        },
    )
    .await?;
    measured(
        "operator_leader_election",
        "leader killed -> standby holds the Lease",
        killed,
    );
    // The new leader reconciles: a spec change is acted on.
    cluster
        .patch_spec(&job.name, json!({"parallelism": 1}))
        .await?;
    cluster
        .wait_for_status(&job.name, "the rescale by the new leader", LONG, |s| {
            s["lifecycle"] == "Running" && s["deployed"]["parallelism"] == 1
        })
        .await?;
    eprintln!("lease moved from {leader} to {standby}");
    finish_exactly_once(&cluster, &job).await?;
    cluster.scale_operator(1).await
}

/// Runs last (names sort): every operator log line so far, across all scenarios and operator
/// pods, holds no `403`/`Forbidden`: least-privilege RBAC really suffices.
#[tokio::test]
#[ignore = "e2e scenario: needs a prepared cluster (scripts/e2e.sh)"]
async fn operator_zz_log_shows_no_forbidden_request() -> Result<()> {
    let Some(cluster) = Cluster::connect_or_skip("operator_rbac").await? else {
        return Ok(());
    };
    let log = cluster.operator_log();
    if cluster.config.pod_logs.is_none() {
        eprintln!("operator_rbac: container logs are not files on this cluster; checked nothing");
        return Ok(());
    }
    assert!(
        !log.is_empty(),
        "the operator's container log is empty or missing"
    );
    let forbidden: Vec<&str> = log
        .lines()
        // The API server's refusal says `reason: "Forbidden"`, `code: 403` and "... is
        // forbidden"; a bare "403" would also match job names with random suffixes (ns-a-4034).
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden") || l.contains("code: 403"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the operator was refused:\n{}",
        forbidden.join("\n")
    );
    Ok(())
}
