//! The distributed runtime on real processes: one JobManager and several TaskManagers on
//! 127.0.0.1, checkpoints and output on a real S3 server (s3s-fs). Processes are killed with
//! SIGKILL, paused with SIGSTOP, the S3 server is stopped, the job is rescaled through
//! stop-with-savepoint; every test ends by reading the committed output and checking it is
//! exactly-once with zero alerts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use rand::Rng;
use support::s3::S3Server;
use support::*;

const KEYS: u64 = 20;

/// `sequence-check` at parallelism 2 with checkpoints and output on S3, keyed state on
/// `backend` (`state.backend`).
fn sequence_job(
    dir: &Path,
    endpoint: &str,
    events_per_key: u64,
    rate: u64,
    backend: &str,
) -> PathBuf {
    let yaml = format!(
        "job:\n  name: sequence-check\n  args: {{keys: {KEYS}, eventsPerKey: {events_per_key}, eventsPerSecond: {rate}, output: 's3://weir/output'}}\n\
         jobId: seq\nparallelism: 2\n\
         checkpointing: {{interval: 300ms, storage: 's3://weir/checkpoints', retained: 3, timeout: 3s, tolerableFailures: 2, savepointDirectories: ['s3://weir/savepoints', 's3://not-a-bucket/savepoints']}}\n\
         restartStrategy: {{type: fixed-delay, attempts: 1000, delay: 200ms}}\n\
         s3: {{endpoint: '{endpoint}', forcePathStyle: true}}\nstate: {{backend: {backend}}}\n"
    );
    write_job(dir, "job.yaml", &yaml)
}

fn checkpoint_count(s3: &S3Server) -> usize {
    completed_checkpoints(&s3.bucket_path("weir").join("checkpoints/seq")).len()
}

fn latest_checkpoint(s3: &S3Server) -> u64 {
    completed_checkpoints(&s3.bucket_path("weir").join("checkpoints/seq"))
        .last()
        .copied()
        .unwrap_or(0)
}

/// Waits until `n` checkpoints newer than the current latest have completed.
fn wait_for_new_checkpoints(s3: &S3Server, n: u64) {
    let before = latest_checkpoint(s3);
    wait_until(
        Duration::from_secs(90),
        &format!("{n} new checkpoints after chk-{before}"),
        || latest_checkpoint(s3) >= before + n,
    );
}

fn job_dir(s3: &S3Server) -> PathBuf {
    s3.bucket_path("weir").join("checkpoints/seq")
}

/// Ids of `chk-<n>/_metadata` (checkpoints and claims) written by the JobManager `name`.
fn written_by(s3: &S3Server, name: &str) -> std::collections::BTreeSet<u64> {
    let needle = format!("\"jobManager\":\"{name}@");
    metadata_entries(&job_dir(s3))
        .into_iter()
        .filter(|(_, text)| text.contains(&needle))
        .map(|(id, _)| id)
        .collect()
}

/// Waits (polling every millisecond) until `log` has more lines containing `needle` than
/// `before`.
fn wait_for_more(log: &Path, needle: &str, before: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let count = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(needle)
            .count();
        if count > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits for `child` to exit; returns its status and how long it took.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "process {} still running after {timeout:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn verify_output(s3: &S3Server, events_per_key: u64, what: &str) {
    let output = committed_json(&s3.bucket_path("weir").join("output"));
    verify_sequence_output(&output, KEYS, events_per_key).unwrap_or_else(|e| panic!("{what}: {e}"));
}

on_each_backend! {
fn chaos_sigkill_taskmanagers_then_the_jobmanager_keeps_output_exactly_once(backend) {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    // 800k events at 2 x 5,000/s: over 80 s of input before any failure.
    let events_per_key = 40_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 5000, backend);
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);

    // Phase 1: a random TaskManager dies every few seconds and comes back (as Kubernetes
    // restarts a pod), for 40 s.
    let mut rng = rand::rng();
    let chaos_until = Instant::now() + Duration::from_secs(40);
    let mut tm_kills = 0;
    while Instant::now() < chaos_until {
        std::thread::sleep(Duration::from_millis(rng.random_range(2500..4500)));
        let victim = rng.random_range(0..2);
        cluster.kill_taskmanager(victim);
        cluster.start_taskmanager(victim, 1);
        tm_kills += 1;
    }
    // Phase 2: the JobManager dies twice, each time after two checkpoints it completed.
    let mut latest_at_restart = 0;
    for _ in 0..2 {
        wait_for_new_checkpoints(&s3, 2);
        cluster.kill_jobmanager();
        // Nothing completes a checkpoint without a JobManager: this is what the next one must
        // restore.
        latest_at_restart = latest_checkpoint(&s3);
        cluster.start_jobmanager(&["--exit-when-done"]);
    }
    cluster.wait_for_success(Duration::from_secs(240));

    let log = cluster.jobmanager_log();
    assert!(
        log.matches("TaskManager lost").count() >= tm_kills,
        "every one of the {tm_kills} kills was noticed"
    );
    let last = std::fs::read_to_string(cluster.jobmanager_logs.last().expect("log")).expect("log");
    let restored = restored_checkpoint(&last);
    assert_eq!(
        restored,
        Some(latest_at_restart),
        "the restarted JobManager restores the latest completed checkpoint:\n{last}"
    );
    verify_output(&s3, events_per_key, "after the chaos");
    assert_eq!(
        checkpoint_count(&s3),
        3,
        "retention keeps exactly `retained: 3`"
    );
}
}

#[test]
fn a_paused_taskmanager_is_fenced_and_adds_no_output() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 10_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 4000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);
    // A spare, registered after the job was deployed on 0 and 1.
    cluster.start_taskmanager(2, 1);

    let paused = cluster.taskmanagers[0].take().expect("taskmanager 0");
    signal(&paused, "STOP");
    wait_until(
        Duration::from_secs(30),
        "the JobManager to declare the paused TaskManager lost",
        || cluster.jobmanager_log().contains("missed heartbeats"),
    );
    // The job moves on without it, on TaskManagers 1 and 2.
    wait_for_new_checkpoints(&s3, 3);
    signal(&paused, "CONT");
    cluster.taskmanagers[0] = Some(paused);
    cluster.wait_for_success(Duration::from_secs(120));

    let resumed = std::fs::read_to_string(dir.path().join("taskmanager-0-0.log")).expect("log");
    assert!(
        resumed.contains("lost the JobManager") || resumed.contains("closed the connection"),
        "the resumed TaskManager noticed it was cut off:\n{resumed}"
    );
    verify_output(&s3, events_per_key, "after SIGSTOP/SIGCONT");
}

#[test]
fn an_s3_outage_fails_checkpoints_then_the_job_recovers_exactly_once() {
    let mut s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 6000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 3000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);
    let failed_checkpoints = || {
        let (status, stats) = http(cluster.rest_port, "GET", "/v1/jobs/seq/checkpoints", None);
        assert_eq!(status, 200, "{stats}");
        stats["counts"]["failed"].as_u64().expect("counts.failed")
    };
    let failed_before_outage = failed_checkpoints();
    // S3 goes away just after a checkpoint is triggered, so the outage hits one in flight.
    // Between checkpoints the first write to fail could be a commit, with no checkpoint to fail.
    let log = cluster.jobmanager_logs[0].clone();
    let triggered = std::fs::read_to_string(&log)
        .expect("JobManager log")
        .matches("checkpoint triggered")
        .count();
    wait_for_more(
        &log,
        "checkpoint triggered",
        triggered,
        Duration::from_secs(10),
    );
    s3.stop();
    // Read with the server down: nothing can complete from here until it is back.
    let latest_before_outage = latest_checkpoint(&s3);
    std::thread::sleep(Duration::from_secs(6));
    s3.restart();
    wait_until(
        Duration::from_secs(60),
        &format!("a checkpoint after chk-{latest_before_outage} to complete once S3 is back"),
        || latest_checkpoint(&s3) > latest_before_outage,
    );
    // The checkpoint in flight when S3 went away failed. The count is read only now: a task
    // fails on its first S3 write, the restarts keep failing while no claim can be written, and
    // only a started attempt publishes the counts.
    let failed_after_outage = failed_checkpoints();
    assert!(
        failed_after_outage > failed_before_outage,
        "failed checkpoints: {failed_before_outage} before the outage, {failed_after_outage} after"
    );
    cluster.wait_for_success(Duration::from_secs(120));
    verify_output(&s3, events_per_key, "after the S3 outage");
}

on_each_backend! {
fn rescale_2_to_3_to_4_to_2_through_stop_with_savepoint(backend) {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 8000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 2000, backend);
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    for index in 0..4 {
        cluster.start_taskmanager(index, 1);
    }
    let mut restore: Option<String> = None;
    for (step, parallelism) in [2, 3, 4].into_iter().enumerate() {
        let p = parallelism.to_string();
        let mut args = vec!["--parallelism", p.as_str()];
        if let Some(from) = &restore {
            args.extend(["--restore", from.as_str()]);
        }
        cluster.start_jobmanager(&args);
        wait_for_new_checkpoints(&s3, 2);
        let (status, overview) = http(cluster.rest_port, "GET", "/v1/jobs/seq", None);
        assert_eq!(status, 200);
        assert_eq!(overview["parallelism"], parallelism);
        assert_eq!(overview["state"], "RUNNING");
        // The JobManager's /metrics sums the TaskManagers' per-operator counters.
        let (_, metrics) = http_text(cluster.rest_port, "GET", "/metrics", None);
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("weir_cluster_records_out{")
                    && l.split_whitespace()
                        .last()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                        > 0.0),
            "{metrics}"
        );
        // ... and its own per-operator counters and progress line carry the job's totals.
        wait_until(
            Duration::from_secs(30),
            "weir_records_out_total and a progress line with records read",
            || {
                let (_, metrics) = http_text(cluster.rest_port, "GET", "/metrics", None);
                let counted = metrics.lines().any(|l| {
                    l.starts_with("weir_records_out_total{")
                        && l.split_whitespace()
                            .last()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(|v| v > 0.0)
                });
                let log = std::fs::read_to_string(cluster.jobmanager_logs.last().expect("log"))
                    .unwrap_or_default();
                let progressed = log.lines().any(|l| {
                    l.contains(" progress ")
                        && l.split_whitespace()
                            .find_map(|f| f.strip_prefix("records_read="))
                            .and_then(|n| n.parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                });
                counted && progressed
            },
        );
        let location = cluster.stop_with_savepoint(&format!("s3://weir/savepoints/step-{step}"));
        assert!(
            location.starts_with("s3://weir/savepoints/step-"),
            "{location}"
        );
        cluster.kill_jobmanager();
        restore = Some(location);
    }
    let from = restore.expect("savepoint");
    cluster.start_jobmanager(&["--parallelism", "2", "--restore", &from, "--exit-when-done"]);
    cluster.wait_for_success(Duration::from_secs(120));
    let log = cluster.jobmanager_log();
    assert!(
        log.contains(&format!("checkpoint={from}")),
        "restored from {from}"
    );
    verify_output(&s3, events_per_key, "after rescaling 2 -> 3 -> 4 -> 2");
}
}

#[test]
fn the_jobmanager_reports_the_slots_it_waits_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write_job(
        dir.path(),
        "job.yaml",
        "job:\n  name: sequence-check\n  args: {keys: 2, eventsPerKey: 10, output: 'file:///dev/null/x'}\njobId: seq\nparallelism: 3\n",
    );
    let mut cluster = Cluster::new(dir.path(), job, Vec::new());
    cluster.start_jobmanager(&[]);
    cluster.start_taskmanager(0, 2);
    wait_until(Duration::from_secs(30), "a registration", || {
        cluster.jobmanager_log().contains("TaskManager registered")
    });
    wait_until(Duration::from_secs(30), "the slots gauges", || {
        let (_, metrics) = http_text(cluster.rest_port, "GET", "/metrics", None);
        metrics.contains("weir_slots_registered 2") && metrics.contains("weir_slots_required 3")
    });
    wait_until(
        Duration::from_secs(30),
        "a log line naming the missing slots",
        || cluster.jobmanager_log().contains("waiting for task slots"),
    );
    let (status, overview) = http(cluster.rest_port, "GET", "/v1/jobs/seq", None);
    assert_eq!(status, 200);
    assert_eq!(overview["state"], "CREATED");
    let (status, _) = http(cluster.rest_port, "POST", "/v1/jobs/seq/cancel", Some("{}"));
    assert!(status < 300, "cancel while waiting: {status}");
    wait_until(Duration::from_secs(30), "the job to be cancelled", || {
        http(cluster.rest_port, "GET", "/v1/jobs/seq", None).1["state"] == "CANCELED"
    });
}

/// Two JobManagers at once (Kubernetes starts the replacement while the old pod terminates; a
/// paused or partitioned JobManager resumes later): the newer one fences the older through
/// checkpoint storage, so the old one completes nothing and commits nothing after the takeover.
#[test]
fn a_paused_jobmanager_is_fenced_by_its_successor_and_completes_nothing() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 8_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 3_000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_named_jobmanager(&["--exit-when-done"], Some("jm-a"));
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);

    // Pause A right after it triggers a checkpoint: its TaskManagers acknowledge into A's
    // socket buffers, so A resumes holding a checkpoint it could complete.
    let a_log = cluster.jobmanager_logs[0].clone();
    let triggered = std::fs::read_to_string(&a_log)
        .unwrap_or_default()
        .matches("checkpoint triggered")
        .count();
    wait_for_more(
        &a_log,
        "checkpoint triggered",
        triggered,
        Duration::from_secs(30),
    );
    let mut a = cluster.jobmanager.take().expect("JobManager A");
    signal(&a, "STOP");

    // B: same job and storage, its own ports and TaskManagers.
    cluster.use_new_ports();
    cluster.start_named_jobmanager(&["--exit-when-done"], Some("jm-b"));
    cluster.start_taskmanager(2, 1);
    cluster.start_taskmanager(3, 1);
    let b_log = cluster.jobmanager_logs[1].clone();
    wait_for_more(&b_log, "took the job over", 0, Duration::from_secs(30));
    let b_claim = *written_by(&s3, "jm-b").first().expect("B's takeover claim");
    let a_before = written_by(&s3, "jm-a");
    assert!(
        a_before.iter().all(|&id| id < b_claim),
        "A wrote only below B's claim {b_claim}: {a_before:?}"
    );
    wait_for_new_checkpoints(&s3, 2);

    signal(&a, "CONT");
    let (status, took) = wait_for_exit(&mut a, Duration::from_secs(60));
    let a_text = std::fs::read_to_string(&a_log).expect("A's log");
    assert!(!status.success(), "a fenced JobManager exits with an error");
    assert!(
        a_text.contains("fenced: another JobManager"),
        "A says it was fenced:\n{a_text}"
    );
    let fenced_lines: Vec<&str> = a_text.lines().filter(|l| l.contains("fenced")).collect();
    eprintln!(
        "A exited {took:?} after SIGCONT:\n{}",
        fenced_lines.join("\n")
    );

    cluster.wait_for_success(Duration::from_secs(120));
    // Nothing of A's after B took over: every id from B's claim on is B's, and A's own ids
    // are a subset of what it had written before (retention may have removed some).
    let a_after = written_by(&s3, "jm-a");
    assert!(
        a_after.is_subset(&a_before),
        "A wrote {:?} after B's takeover",
        a_after.difference(&a_before).collect::<Vec<_>>()
    );
    let entries = metadata_entries(&job_dir(&s3));
    for (id, text) in entries.range(b_claim..) {
        assert!(
            text.contains("\"jobManager\":\"jm-b@"),
            "chk-{id}/_metadata is not B's: {text}"
        );
    }
    verify_output(&s3, events_per_key, "after two JobManagers at once");
}

/// SIGTERM (a pod being deleted): a TaskManager running tasks cancels them and exits at once;
/// the JobManager stops coordinating at once (no checkpoint triggered or completed, no commit
/// after the signal) and exits in well under the 30 s grace period. A new JobManager then
/// finishes the job exactly-once.
#[test]
fn sigterm_stops_a_taskmanager_and_the_jobmanager_at_once_without_completing_anything() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 8_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 3_000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);
    // A spare, so the job goes on without the TaskManager that is stopped.
    cluster.start_taskmanager(2, 1);

    // A TaskManager running tasks.
    let mut tm = cluster.taskmanagers[0].take().expect("TaskManager 0");
    signal(&tm, "TERM");
    let (status, took) = wait_for_exit(&mut tm, Duration::from_secs(10));
    eprintln!("TaskManager exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    let tm_log = std::fs::read_to_string(dir.path().join("taskmanager-0-0.log")).expect("log");
    assert!(
        tm_log.contains("TaskManager stopped after SIGTERM"),
        "{tm_log}"
    );
    wait_for_new_checkpoints(&s3, 2);

    // The JobManager, mid-run.
    let mut jm = cluster.jobmanager.take().expect("JobManager");
    signal(&jm, "TERM");
    let signalled = metadata_entries(&job_dir(&s3));
    let (status, took) = wait_for_exit(&mut jm, Duration::from_secs(10));
    let log = std::fs::read_to_string(&cluster.jobmanager_logs[0]).expect("log");
    eprintln!("JobManager exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "a clean stop: {status}\n{log}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    let (before, after) = log
        .split_once("received SIGTERM: publishing nothing more")
        .unwrap_or_else(|| panic!("no SIGTERM line:\n{log}"));
    assert!(
        after.contains("JobManager stopped after SIGTERM"),
        "{after}"
    );
    for quiet in ["checkpoint triggered", "checkpoint completed"] {
        assert!(!after.contains(quiet), "{quiet:?} after SIGTERM:\n{after}");
    }
    // A `_metadata` that appeared after the signal was sent can only be the one write the
    // JobManager let finish before acting on the signal: completed (and logged) before it.
    std::thread::sleep(Duration::from_secs(1));
    let completed_before: Vec<String> = before
        .lines()
        .filter(|l| l.contains("checkpoint completed"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("checkpoint_id="))
                .map(str::to_string)
        })
        .collect();
    for (id, _) in metadata_entries(&job_dir(&s3)) {
        if !signalled.contains_key(&id) {
            assert!(
                completed_before.contains(&id.to_string()),
                "chk-{id}/_metadata appeared after SIGTERM without being completed before it"
            );
        }
    }

    // The replacement finishes the job from the latest checkpoint, exactly-once.
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.wait_for_success(Duration::from_secs(120));
    verify_output(&s3, events_per_key, "after SIGTERM");
}

/// On TaskManagers, a savepoint a subtask declines (its S3 bucket is a plain file s3s-fs
/// cannot write) fails only itself: the trigger ends FAILED with the reason, the job stays
/// RUNNING with no restart, a failed stop-with-savepoint lets the sources emit again, later
/// checkpoints complete, a retry into the same directory after FAILED is a new trigger that
/// completes once the bucket is writable, and the output is exactly-once.
#[test]
fn a_declined_savepoint_on_taskmanagers_fails_only_itself() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let plain_file = s3.root.path().join("not-a-bucket");
    std::fs::write(&plain_file, "a plain file, not a bucket").expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    // 50 s of input: it is still running when the savepoints are done.
    let events_per_key = 10_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 2000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);

    let target = "s3://not-a-bucket/savepoints/sp";
    let first = cluster.trigger("savepoints", target);
    let failed = cluster.await_trigger(&first);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert!(
        failed["failure"]
            .as_str()
            .is_some_and(|f| f.contains("declined") && f.contains("s3://not-a-bucket/")),
        "{failed}"
    );
    let stop = cluster.trigger("stop", "s3://not-a-bucket/savepoints/stop");
    assert_eq!(cluster.await_trigger(&stop)["status"], "FAILED");
    let overview = cluster.overview();
    assert_eq!(overview["state"], "RUNNING", "{overview}");
    assert_eq!(overview["restarts"], 0, "{overview}");

    // Records keep flowing and checkpoints keep completing.
    let output = s3.bucket_path("weir").join("output");
    let committed = committed_lines(&output).len();
    wait_for_new_checkpoints(&s3, 3);
    wait_until(Duration::from_secs(30), "more committed output", || {
        committed_lines(&output).len() > committed + 1000
    });

    // The bucket becomes writable: the same directory again is a new trigger, and completes.
    std::fs::remove_file(&plain_file).expect("remove");
    s3.create_bucket("not-a-bucket");
    let retry = cluster.trigger("savepoints", target);
    assert_ne!(retry, first, "a retry after FAILED is a new trigger");
    let done = cluster.await_trigger(&retry);
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(
        s3.bucket_path("not-a-bucket")
            .join("savepoints/sp/_metadata")
            .exists()
    );
    let overview = cluster.overview();
    assert_eq!(overview["restarts"], 0, "{overview}");
    let log = cluster.jobmanager_log();
    assert!(!log.contains("job failed; restarting"), "{log}");

    cluster.wait_for_success(Duration::from_secs(120));
    verify_output(&s3, events_per_key, "after declined savepoints");
}

/// A savepoint trigger always ends, also when the job restarts underneath it: one in flight
/// when a TaskManager stops answering (SIGSTOP, then lost), and one accepted while the job
/// waits for slots to restart. A retry into the same directory afterwards is a new trigger
/// that completes, and the output is exactly-once.
#[test]
fn savepoint_triggers_end_when_the_job_restarts_underneath_them() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 10_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 2000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);

    // In flight: TaskManager 1 never acknowledges; it times out or the job restarts first.
    let paused = cluster.taskmanagers[1].take().expect("taskmanager 1");
    signal(&paused, "STOP");
    let target = "s3://weir/savepoints/sp";
    let in_flight = cluster.trigger("savepoints", target);
    let ended = cluster.await_trigger(&in_flight);
    assert_eq!(ended["status"], "FAILED", "{ended}");
    let mut paused = paused;
    sigkill(&mut paused);

    // Accepted while the job restarts (only one slot left, two needed).
    wait_until(Duration::from_secs(30), "the job to restart", || {
        cluster.overview()["state"] != "RUNNING"
    });
    let during_restart = cluster.trigger("savepoints", target);
    assert_ne!(
        during_restart, in_flight,
        "a retry after FAILED is a new trigger"
    );
    let ended = cluster.await_trigger(&during_restart);
    assert_eq!(ended["status"], "FAILED", "{ended}");
    assert!(ended["failure"].as_str().is_some_and(|f| !f.is_empty()));

    // Back to two TaskManagers: the same directory once more is a new trigger, and completes.
    cluster.start_taskmanager(1, 1);
    wait_until(Duration::from_secs(60), "the job to run again", || {
        cluster.overview()["state"] == "RUNNING"
    });
    wait_for_new_checkpoints(&s3, 1);
    let retry = cluster.trigger("savepoints", target);
    assert_ne!(retry, during_restart);
    let done = cluster.await_trigger(&retry);
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(
        cluster.trigger("savepoints", target),
        retry,
        "COMPLETED is idempotent"
    );

    cluster.wait_for_success(Duration::from_secs(120));
    verify_output(&s3, events_per_key, "after savepoints across a restart");
}

/// The checkpoint `_metadata` the JobManager `log` said it restores, from its "restoring" line.
fn restored_checkpoint(log: &str) -> Option<u64> {
    log.lines()
        .filter(|line| line.contains("restoring"))
        .find_map(|line| {
            let (_, rest) = line.split_once("s3://weir/checkpoints/seq/chk-")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
}

/// Published and pending output parts of checkpoint `id`.
fn parts_of_checkpoint(s3: &S3Server, id: u64) -> (Vec<String>, Vec<String>) {
    let output = s3.bucket_path("weir").join("output");
    let of_id = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|n| part_checkpoint(n) == id)
            .collect()
    };
    (
        of_id(part_names(&output)),
        of_id(part_names(&output.join("_pending"))),
    )
}

/// Fault point `checkpoint-after-metadata` in a JobManager: it decided checkpoint K complete
/// (`_metadata` written) and died before telling any TaskManager. No sink committed K; the
/// next JobManager restores exactly K, and recovery publishes K's parts.
#[test]
fn a_jobmanager_dying_between_completion_and_notification_has_its_checkpoint_published() {
    use weir::fault_points::{FaultPoint, VARIABLE};
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 5000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 2000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    let armed = format!("{}@3", FaultPoint::CheckpointAfterMetadata.name());
    cluster.env.push((VARIABLE.into(), armed));
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.env.pop();
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    let jobmanager = cluster.jobmanager.take().expect("JobManager");
    let log = cluster.jobmanager_logs[0].clone();
    wait_for_fault_point(jobmanager, &log, FaultPoint::CheckpointAfterMetadata, 3);
    let completed = latest_checkpoint(&s3);
    let (published, pending) = parts_of_checkpoint(&s3, completed);
    assert!(
        published.is_empty() && !pending.is_empty(),
        "checkpoint {completed} exists and no TaskManager was told: published {published:?}, pending {pending:?}"
    );

    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.wait_for_success(Duration::from_secs(120));
    let last = std::fs::read_to_string(cluster.jobmanager_logs.last().expect("log")).expect("log");
    assert_eq!(restored_checkpoint(&last), Some(completed), "{last}");
    let (published, _) = parts_of_checkpoint(&s3, completed);
    for part in &pending {
        assert!(
            published.contains(part),
            "{part} published by the recovery: {published:?}"
        );
    }
    verify_output(
        &s3,
        events_per_key,
        "after the JobManager died between completion and notice",
    );
}

/// Fault point `sink-notified-before-commit` in a TaskManager: the JobManager completed
/// checkpoint K and told the TaskManagers; one dies before its sink commits. The job fails
/// over to K, whose recovery publishes the dead sink's parts; every record once.
#[test]
fn a_taskmanager_dying_before_its_sink_commits_loses_and_repeats_nothing() {
    use weir::fault_points::{FaultPoint, VARIABLE};
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 5000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 2000, "rocksdb");
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    let armed = format!("{}@3", FaultPoint::SinkNotifiedBeforeCommit.name());
    cluster.env.push((VARIABLE.into(), armed));
    cluster.start_taskmanager(1, 1);
    cluster.env.pop();
    let victim = cluster.taskmanagers[1].take().expect("TaskManager 1");
    let victim_log = dir.path().join("taskmanager-1-1.log");
    wait_for_fault_point(victim, &victim_log, FaultPoint::SinkNotifiedBeforeCommit, 3);
    let completed_at_crash = latest_checkpoint(&s3);
    cluster.start_taskmanager(1, 1);
    cluster.wait_for_success(Duration::from_secs(120));
    let log = cluster.jobmanager_log();
    let restored = restored_checkpoint(log.split("TaskManager lost").nth(1).unwrap_or_default())
        .expect("the job failed over and restored a checkpoint");
    assert!(
        restored >= completed_at_crash,
        "failover restores the newest checkpoint (chk-{restored}, chk-{completed_at_crash} completed at the crash)"
    );
    verify_output(
        &s3,
        events_per_key,
        "after a TaskManager died before its sink committed",
    );
}

/// A CA and a peer certificate it signed (for `weir-peer`, as the operator makes them), as
/// PEM files in `dir`; `env` gives them to a worker.
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    fn generate(dir: &Path, name: &str) -> TlsFiles {
        let pem = support::tls::test_ca(name, weir::cluster::tls::PEER_NAME);
        let files = TlsFiles {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.ca, pem.ca).expect("write CA");
        std::fs::write(&files.cert, pem.cert).expect("write cert");
        std::fs::write(&files.key, pem.key).expect("write key");
        files
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("WEIR_TLS_CA", &self.ca),
            ("WEIR_TLS_CERT", &self.cert),
            ("WEIR_TLS_KEY", &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
    }

    fn load(&self) -> weir::cluster::tls::PeerTls {
        weir::cluster::tls::PeerTls::from_pem_files(&self.ca, &self.cert, &self.key).expect("tls")
    }
}

/// The data port a TaskManager logged at start.
fn logged_data_port(log: &Path) -> u16 {
    let mut port = None;
    wait_until(Duration::from_secs(30), "a TaskManager's data port", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        port = text.split_once("data_port=").and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        port.is_some()
    });
    port.expect("a logged data port")
}

/// A process that is not one of the job's peers dials `port` and speaks first, in plain TCP or
/// with `tls` (another job's certificate): it must get nothing back but a closed connection.
fn rogue_dial(port: u16, tls: Option<&weir::cluster::tls::PeerTls>) {
    use std::io::{Read, Write};
    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // A handshake refused on the server's side may still finish on ours (TLS 1.3 clients
    // finish first); then the first read gets the alert.
    let Ok(mut connection) = weir::cluster::tls::Connection::client(socket, tls) else {
        return;
    };
    // Any frame: 4-byte length and a payload; never decoded by a server that refuses us.
    let _ = connection.write_all(&[0, 0, 0, 3, b'h', b'i', b'!']);
    // Nothing comes back but, to a plain client, the TLS alert the server closes with (a
    // record of content type 21 and 2 bytes); a TLS client reads that alert as an error.
    let mut reply = Vec::new();
    if let Err(e) = connection.read_to_end(&mut reply) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "port {port} kept a rogue peer waiting instead of closing"
        );
    }
    assert!(
        reply.is_empty() || (reply[0] == 21 && reply.len() == 7),
        "port {port} answered a rogue peer: {reply:?}"
    );
}

/// Registers with the JobManager at `port` as a TaskManager whose registration has no protocol
/// version (as before versions existed) and returns the reason the JobManager refuses it with.
fn register_with_protocol_0(port: u16, tls: &weir::cluster::tls::PeerTls) -> String {
    use weir::cluster::wire::{ToTaskManager, decode_control};
    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut connection =
        weir::cluster::tls::Connection::client(socket, Some(tls)).expect("our certificate");
    let register = br#"{"type":"register","tm_id":"old-tm","slots":1,"data_port":1}"#;
    weir::cluster::frame::write_frame(&mut connection, register).expect("send");
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut connection, &mut reply);
    let (payload, _) = weir::cluster::frame::split_frame(&reply)
        .expect("a frame")
        .expect("a whole frame");
    match decode_control::<ToTaskManager>(payload).expect("a control message") {
        ToTaskManager::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

/// Mutual TLS on the RPC and data ports (issue 17): JobManager and two TaskManagers with
/// certificates of the job's CA run the job exactly once, while a TaskManager without a
/// certificate and one with a certificate of another job's CA try to register, and processes
/// of both kinds dial a data port. Every one of them is refused in the handshake and logged,
/// none registers, and the output stays exactly once.
#[test]
fn with_mutual_tls_only_peers_of_the_jobs_ca_get_in() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = TlsFiles::generate(dir.path(), "job");
    let theirs = TlsFiles::generate(dir.path(), "other-job");
    let events_per_key = 10_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 4000, "rocksdb");
    let mut env = s3.env();
    env.extend(ours.env());
    let mut cluster = Cluster::new(dir.path(), job, env.clone());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);

    // Would-be TaskManagers: one plain, one of another job's CA.
    let mut rogue_env = s3.env();
    rogue_env.extend(theirs.env());
    cluster.env = s3.env();
    cluster.start_taskmanager(2, 1);
    cluster.env = rogue_env;
    cluster.start_taskmanager(3, 1);
    cluster.env = env;
    // Dial a data port of the job, plain and with the other CA.
    let data_port = logged_data_port(&dir.path().join("taskmanager-0-0.log"));
    rogue_dial(data_port, None);
    rogue_dial(data_port, Some(&theirs.load()));
    // A TaskManager of the job (its certificate) built before registrations carried a
    // protocol version: refused with a reason that names both versions.
    let reason = register_with_protocol_0(cluster.rpc_port, &ours.load());
    assert!(
        reason.contains("wire protocol 0") && reason.contains("same Weir version"),
        "{reason}"
    );
    wait_until(
        Duration::from_secs(30),
        "the JobManager to refuse both would-be TaskManagers",
        || {
            let log = cluster.jobmanager_log();
            log.lines()
                .filter(|l| l.contains("refused a connection") && l.contains("port=rpc"))
                .count()
                >= 2
        },
    );
    cluster.wait_for_success(Duration::from_secs(120));

    let log = cluster.jobmanager_log();
    assert_eq!(
        log.matches("TaskManager registered").count(),
        2,
        "only the job's two TaskManagers registered:\n{log}"
    );
    assert_eq!(
        log.matches("speaks wire protocol 0").count(),
        1,
        "the version mismatch is logged once:\n{log}"
    );
    let data_log =
        std::fs::read_to_string(dir.path().join("taskmanager-0-0.log")).expect("TaskManager log");
    let refused_data = data_log
        .lines()
        .filter(|l| l.contains("refused a connection") && l.contains("port=data"))
        .count();
    assert!(
        refused_data >= 2,
        "both rogue data connections were refused and logged ({refused_data}):\n{data_log}"
    );
    verify_output(&s3, events_per_key, "with mutual TLS and rogue peers");
}
