//! A JobManager and numbered TaskManagers of the real `weir-worker` binary on 127.0.0.1, each
//! restartable, all SIGKILLed on drop, so a failing assertion leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use super::{free_port, http, sigkill, spawn_worker, wait_until};

/// Fast failure detection: a lost TaskManager is noticed in seconds, not the default minute.
const HEARTBEAT: [&str; 4] = ["--heartbeat-interval", "200ms", "--heartbeat-timeout", "2s"];

/// The job every cluster scenario runs: the REST calls below address it.
const JOB_ID: &str = "seq";

pub struct Cluster {
    /// Logs and TaskManager work directories go here.
    pub dir: PathBuf,
    job: PathBuf,
    /// The environment of every process started from now on.
    pub env: Vec<(String, String)>,
    pub rpc_port: u16,
    pub rest_port: u16,
    pub jobmanager: Option<Child>,
    /// One per JobManager started, in order.
    pub jobmanager_logs: Vec<PathBuf>,
    pub taskmanagers: Vec<Option<Child>>,
    spawned: usize,
}

impl Cluster {
    /// Nothing runs yet; every process gets `env`.
    pub fn new(dir: &Path, job: PathBuf, env: Vec<(String, String)>) -> Cluster {
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

    pub fn start_jobmanager(&mut self, extra: &[&str]) {
        self.start_named_jobmanager(extra, None);
    }

    /// Like `start_jobmanager`, with `HOSTNAME` set so its claims and checkpoints name it
    /// (`<name>@<start time>` in `_metadata`).
    pub fn start_named_jobmanager(&mut self, extra: &[&str], name: Option<&str>) {
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
        let mut env = self.env.clone();
        if let Some(name) = name {
            env.push(("HOSTNAME".into(), name.into()));
        }
        self.jobmanager = Some(spawn_worker(&args, &env, &log));
        self.jobmanager_logs.push(log);
    }

    /// JobManagers and TaskManagers started from now on use new ports: a second JobManager
    /// beside a paused one, with TaskManagers of its own.
    pub fn use_new_ports(&mut self) {
        self.rpc_port = free_port();
        self.rest_port = free_port();
    }

    /// Starts TaskManager `index` (in place of one killed) with `slots`; its log's path.
    pub fn start_taskmanager(&mut self, index: usize, slots: u32) -> PathBuf {
        self.start_taskmanager_with(index, slots, &[])
    }

    /// Like `start_taskmanager`, with `extra` arguments (e.g. `--metrics-addr`).
    pub fn start_taskmanager_with(&mut self, index: usize, slots: u32, extra: &[&str]) -> PathBuf {
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
        args.extend(extra);
        let log = self
            .dir
            .join(format!("taskmanager-{index}-{}.log", self.spawned));
        self.spawned += 1;
        let child = spawn_worker(&args, &self.env, &log);
        if self.taskmanagers.len() <= index {
            self.taskmanagers.resize_with(index + 1, || None);
        }
        self.taskmanagers[index] = Some(child);
        log
    }

    pub fn kill_taskmanager(&mut self, index: usize) {
        if let Some(mut child) = self.taskmanagers[index].take() {
            sigkill(&mut child);
        }
    }

    pub fn kill_jobmanager(&mut self) {
        if let Some(mut child) = self.jobmanager.take() {
            sigkill(&mut child);
        }
    }

    /// Every JobManager's log so far, oldest first.
    pub fn jobmanager_log(&self) -> String {
        self.jobmanager_logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every TaskManager's log so far.
    pub fn taskmanager_log(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir).expect("test dir").flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("taskmanager-")
            {
                text += &std::fs::read_to_string(entry.path()).unwrap_or_default();
            }
        }
        text
    }

    /// Waits for a JobManager started with `--exit-when-done` to end successfully.
    pub fn wait_for_success(&mut self, timeout: Duration) {
        let status = self.wait_for_jobmanager_exit(timeout);
        assert!(
            status.success(),
            "JobManager exited with {status}; log:\n{}",
            self.jobmanager_log()
        );
    }

    /// Waits for the JobManager (started with `--exit-when-done`) to exit; its exit status.
    pub fn wait_for_jobmanager_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.jobmanager.as_mut().expect("a JobManager");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("poll JobManager") {
                self.jobmanager = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the JobManager did not exit in {timeout:?}; log:\n{}",
                self.jobmanager_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop-with-savepoint into `target` through the REST API; waits until the job is
    /// FINISHED and returns the savepoint location.
    pub fn stop_with_savepoint(&self, target: &str) -> String {
        let trigger = self.trigger("stop", target);
        let mut location = None;
        wait_until(Duration::from_secs(60), "the savepoint", || {
            let (_, status) = http(
                self.rest_port,
                "GET",
                &format!("/v1/jobs/{JOB_ID}/savepoints/{trigger}"),
                None,
            );
            assert_ne!(status["status"], "FAILED", "savepoint failed: {status}");
            location = status["location"].as_str().map(str::to_string);
            location.is_some()
        });
        wait_until(Duration::from_secs(60), "the job to finish", || {
            self.overview()["state"] == "FINISHED"
        });
        location.expect("savepoint location")
    }

    /// Triggers a savepoint (`savepoints`) or stop-with-savepoint (`stop`) into `target`;
    /// returns the trigger id.
    pub fn trigger(&self, endpoint: &str, target: &str) -> String {
        let body = serde_json::json!({"targetDirectory": target}).to_string();
        let (status, reply) = http(
            self.rest_port,
            "POST",
            &format!("/v1/jobs/{JOB_ID}/{endpoint}"),
            Some(&body),
        );
        assert_eq!(status, 202, "{endpoint} into {target}: {reply}");
        reply["triggerId"].as_str().expect("triggerId").to_string()
    }

    /// Polls a trigger until it is COMPLETED or FAILED; returns its status.
    pub fn await_trigger(&self, trigger: &str) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_until(Duration::from_secs(60), "the trigger to end", || {
            let (status, body) = http(
                self.rest_port,
                "GET",
                &format!("/v1/jobs/{JOB_ID}/savepoints/{trigger}"),
                None,
            );
            assert_eq!(status, 200, "{body}");
            last = body;
            last["status"] != "IN_PROGRESS"
        });
        last
    }

    pub fn overview(&self) -> serde_json::Value {
        http(self.rest_port, "GET", &format!("/v1/jobs/{JOB_ID}"), None).1
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
