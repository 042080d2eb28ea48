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
const HEARTBEAT: [&str; 4] = ["--heartbeat-interval", "200ms", "--heartbeat-timeout", "2s"];

/// `sequence-check` at parallelism 2 with checkpoints and output on S3.
fn sequence_job(dir: &Path, endpoint: &str, events_per_key: u64, rate: u64) -> PathBuf {
    let yaml = format!(
        "job:\n  name: sequence-check\n  args: {{keys: {KEYS}, eventsPerKey: {events_per_key}, eventsPerSecond: {rate}, output: 's3://weir/output'}}\n\
         jobId: seq\nparallelism: 2\n\
         checkpointing: {{interval: 300ms, storage: 's3://weir/checkpoints', retained: 3, timeout: 3s, tolerableFailures: 2}}\n\
         restartStrategy: {{type: fixed-delay, attempts: 1000, delay: 200ms}}\n\
         s3: {{endpoint: '{endpoint}', forcePathStyle: true}}\n"
    );
    write_job(dir, "job.yaml", &yaml)
}

/// One JobManager and numbered TaskManagers, each restartable; all killed on drop.
struct Cluster {
    dir: PathBuf,
    job: PathBuf,
    env: Vec<(String, String)>,
    rpc_port: u16,
    rest_port: u16,
    jobmanager: Option<Child>,
    jobmanager_logs: Vec<PathBuf>,
    taskmanagers: Vec<Option<Child>>,
    spawned: usize,
}

impl Cluster {
    fn new(dir: &Path, job: PathBuf, env: Vec<(String, String)>) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            job,
            env,
            rpc_port: free_port(),
            rest_port: free_port(),
            jobmanager: None,
            jobmanager_logs: Vec::new(),
            taskmanagers: Vec::new(),
            spawned: 0,
        }
    }

    fn start_jobmanager(&mut self, extra: &[&str]) {
        let rpc = format!("127.0.0.1:{}", self.rpc_port);
        let rest = format!("127.0.0.1:{}", self.rest_port);
        let job = self.job.display().to_string();
        let mut args = vec![
            "jobmanager",
            "--job",
            &job,
            "--rpc-addr",
            &rpc,
            "--rest-addr",
            &rest,
            "--progress-secs",
            "1",
        ];
        args.extend(HEARTBEAT);
        args.extend(extra);
        let log = self
            .dir
            .join(format!("jobmanager-{}.log", self.jobmanager_logs.len()));
        self.jobmanager = Some(spawn_worker(&args, &self.env, &log));
        self.jobmanager_logs.push(log);
    }

    fn start_taskmanager(&mut self, index: usize, slots: u32) {
        let jm = format!("127.0.0.1:{}", self.rpc_port);
        let slots = slots.to_string();
        let work = self.dir.join(format!("work-tm{index}"));
        let work = work.display().to_string();
        let mut args = vec![
            "taskmanager",
            "--jobmanager",
            &jm,
            "--slots",
            &slots,
            "--data-addr",
            "127.0.0.1:0",
            "--work-dir",
            &work,
        ];
        args.extend(HEARTBEAT);
        let log = self
            .dir
            .join(format!("taskmanager-{index}-{}.log", self.spawned));
        self.spawned += 1;
        let child = spawn_worker(&args, &self.env, &log);
        if self.taskmanagers.len() <= index {
            self.taskmanagers.resize_with(index + 1, || None);
        }
        self.taskmanagers[index] = Some(child);
    }

    fn kill_taskmanager(&mut self, index: usize) {
        if let Some(mut child) = self.taskmanagers[index].take() {
            sigkill(&mut child);
        }
    }

    fn kill_jobmanager(&mut self) {
        if let Some(mut child) = self.jobmanager.take() {
            sigkill(&mut child);
        }
    }

    fn jobmanager_log(&self) -> String {
        self.jobmanager_logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a JobManager started with `--exit-when-done` to end successfully.
    fn wait_for_success(&mut self, timeout: Duration) {
        let child = self.jobmanager.as_mut().expect("a JobManager");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("poll JobManager") {
                assert!(
                    status.success(),
                    "JobManager exited with {status}; log:\n{}",
                    self.jobmanager_log()
                );
                self.jobmanager = None;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "job did not finish in {timeout:?}; JobManager log in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop-with-savepoint through the REST API; returns the savepoint location.
    fn stop_with_savepoint(&self, target: &str) -> String {
        let body = format!("{{\"targetDirectory\": \"{target}\"}}");
        let (status, reply) = http(self.rest_port, "POST", "/v1/jobs/seq/stop", Some(&body));
        assert_eq!(status, 202, "stop: {reply}");
        let trigger = reply["triggerId"].as_str().expect("triggerId").to_string();
        let mut location = None;
        wait_until(Duration::from_secs(60), "the savepoint", || {
            let (_, status) = http(
                self.rest_port,
                "GET",
                &format!("/v1/jobs/seq/savepoints/{trigger}"),
                None,
            );
            assert_ne!(status["status"], "FAILED", "savepoint failed: {status}");
            location = status["location"].as_str().map(str::to_string);
            location.is_some()
        });
        wait_until(Duration::from_secs(60), "the job to finish", || {
            http(self.rest_port, "GET", "/v1/jobs/seq", None).1["state"] == "FINISHED"
        });
        location.expect("savepoint location")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_jobmanager();
        for index in 0..self.taskmanagers.len() {
            self.kill_taskmanager(index);
        }
    }
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

fn verify_output(s3: &S3Server, events_per_key: u64, what: &str) {
    let output = committed_json(&s3.bucket_path("weir").join("output"));
    verify_sequence_output(&output, KEYS, events_per_key).unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn chaos_sigkill_taskmanagers_then_the_jobmanager_keeps_output_exactly_once() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    // 800k events at 2 x 5,000/s: over 80 s of input before any failure.
    let events_per_key = 40_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 5000);
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
    for _ in 0..2 {
        wait_for_new_checkpoints(&s3, 2);
        cluster.kill_jobmanager();
        cluster.start_jobmanager(&["--exit-when-done"]);
    }
    cluster.wait_for_success(Duration::from_secs(240));

    let log = cluster.jobmanager_log();
    assert!(tm_kills >= 8, "only {tm_kills} TaskManager kills");
    assert!(
        log.matches("TaskManager lost").count() >= tm_kills,
        "every kill was noticed"
    );
    let last = std::fs::read_to_string(cluster.jobmanager_logs.last().expect("log")).expect("log");
    assert!(
        last.contains("restoring") && last.contains("s3://weir/checkpoints/seq/chk-"),
        "the restarted JobManager restored from the latest checkpoint:\n{last}"
    );
    verify_output(&s3, events_per_key, "after the chaos");
    assert!(checkpoint_count(&s3) <= 3, "retention applies");
}

#[test]
fn a_paused_taskmanager_is_fenced_and_adds_no_output() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 10_000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 4000);
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
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 3000);
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_for_new_checkpoints(&s3, 2);
    s3.stop();
    std::thread::sleep(Duration::from_secs(6));
    s3.restart();
    cluster.wait_for_success(Duration::from_secs(120));
    let log = cluster.jobmanager_log();
    assert!(
        log.contains("checkpoint") && (log.contains("failed") || log.contains("restarting")),
        "the outage was noticed"
    );
    verify_output(&s3, events_per_key, "after the S3 outage");
}

#[test]
fn rescale_2_to_3_to_4_to_2_through_stop_with_savepoint() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 8000;
    let job = sequence_job(dir.path(), &s3.endpoint, events_per_key, 2000);
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
