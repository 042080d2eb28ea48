//! Shared helpers for the integration tests: run the real `weir-worker` binary, read what a
//! job committed, inspect checkpoints on disk.
#![allow(dead_code)]

pub mod cluster;
pub mod kafka;
// One S3 test server for every crate: it lives with the storage crate's own tests.
#[path = "../../../storage/tests/support/s3.rs"]
pub mod s3;
pub mod tls;

pub use cluster::Cluster;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Defines a scenario's test once per keyed-state backend, `$name::rocksdb` and `$name::heap`:
/// the body runs with `$backend` bound to the value of `state.backend` to put in the job
/// document. Every keyed-state scenario must hold on both.
#[macro_export]
macro_rules! on_each_backend {
    ($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($backend: &str) $body

            $(#[$meta])*
            #[test]
            fn rocksdb() {
                run("rocksdb")
            }

            $(#[$meta])*
            #[test]
            fn heap() {
                run("heap")
            }
        }
    };
}

pub fn weir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir-worker"))
}

/// Writes a job document into `dir` and returns its path.
pub fn write_job(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write job document");
    path
}

fn command(job: &Path, args: &[&str], env: &[(String, String)], work_dir: &Path) -> Command {
    let mut cmd = Command::new(weir_bin());
    cmd.arg("local")
        .arg("--job")
        .arg(job)
        .arg("--work-dir")
        .arg(work_dir)
        .arg("--progress-secs")
        .arg("1")
        .args(args)
        .env("WEIR_LOG", "info,weir=debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a job to its end and returns its output; panics with the logs if it failed.
pub fn run_job(job: &Path, args: &[&str], env: &[(String, String)], work_dir: &Path) -> Output {
    let output = command(job, args, env, work_dir)
        .output()
        .expect("spawn weir-worker");
    assert!(
        output.status.success(),
        "weir-worker failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a job expected to fail; returns its stderr.
pub fn run_job_expecting_failure(
    job: &Path,
    args: &[&str],
    env: &[(String, String)],
    work_dir: &Path,
) -> String {
    let output = command(job, args, env, work_dir)
        .output()
        .expect("spawn weir-worker");
    assert!(
        !output.status.success(),
        "expected failure, but the job succeeded"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Starts a job in the background; its logs go to `log`.
pub fn spawn_job(
    job: &Path,
    args: &[&str],
    env: &[(String, String)],
    work_dir: &Path,
    log: &Path,
) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    let err = file.try_clone().expect("log file");
    command(job, args, env, work_dir)
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn weir-worker")
}

pub fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

/// Lines of every committed file under `dir` (paths with a `_` or `.` component are not
/// committed output: pending parts and temp files).
pub fn committed_lines(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    // Part names sort by subtask, then checkpoint: each key's records come out in order.
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("read output");
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
        .collect()
}

pub fn committed_json(dir: &Path) -> Vec<serde_json::Value> {
    committed_lines(dir)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad output line {l:?}: {e}")))
        .collect()
}

/// Ids of completed checkpoints (a checkpoint's `_metadata`, not a claim) in a job's
/// checkpoint folder.
pub fn completed_checkpoints(job_dir: &Path) -> Vec<u64> {
    metadata_entries(job_dir)
        .into_iter()
        .filter(|(_, text)| text.starts_with("WEIR-CHECKPOINT "))
        .map(|(id, _)| id)
        .collect()
}

/// Every `chk-<n>/_metadata` of a job's checkpoint folder, by id: its text (a checkpoint or a
/// claim, `WEIR-CLAIM ...` with JSON naming the JobManager and the reason).
pub fn metadata_entries(job_dir: &Path) -> BTreeMap<u64, String> {
    std::fs::read_dir(job_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name.strip_prefix("chk-")?.parse().ok()?;
                    let text = std::fs::read(e.path().join("_metadata")).ok()?;
                    Some((id, String::from_utf8_lossy(&text).into_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks `sequence-check` output: no alerts, and every (key, seq) for `keys` x
/// `events_per_key` exactly once. Returns a description of the first problem.
pub fn verify_sequence_output(
    records: &[serde_json::Value],
    keys: u64,
    events_per_key: u64,
) -> Result<(), String> {
    let alerts: Vec<_> = records
        .iter()
        .filter(|r| r.get("alert").is_some())
        .collect();
    if !alerts.is_empty() {
        return Err(format!("{} alerts, first: {}", alerts.len(), alerts[0]));
    }
    let mut seen: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for r in records {
        let key = r["key"].as_u64().ok_or("record without key")?;
        let seq = r["seq"].as_u64().ok_or("record without seq")?;
        *seen.entry((key, seq)).or_default() += 1;
    }
    if let Some(((k, s), n)) = seen.iter().find(|(_, n)| **n > 1) {
        return Err(format!("duplicate: key {k} seq {s} committed {n} times"));
    }
    for key in 0..keys {
        for seq in 0..events_per_key {
            if !seen.contains_key(&(key, seq)) {
                return Err(format!("lost: key {key} seq {seq} never committed"));
            }
        }
    }
    if seen.len() as u64 != keys * events_per_key {
        return Err(format!(
            "{} records, expected {}",
            seen.len(),
            keys * events_per_key
        ));
    }
    Ok(())
}

/// A free loopback port (bound, then released): another process may take it before the child
/// the test gives it to binds it. Prefer `--rest-addr 127.0.0.1:0` / `--rpc-addr 127.0.0.1:0`
/// and `logged_rest_port` / `logged_rpc_port`; this is for ports that must be known before
/// the process starts (TaskManagers started first) or kept across its restarts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The port a `weir-worker` started with `--rest-addr 127.0.0.1:0` bound, from its log.
pub fn logged_rest_port(log: &Path) -> u16 {
    logged_port(log, "serving the REST API at http://")
}

/// The port a JobManager started with `--rpc-addr 127.0.0.1:0` bound, from its log.
pub fn logged_rpc_port(log: &Path) -> u16 {
    logged_port(log, "waiting for TaskManagers local_addr=")
}

/// Waits for the first log line with `marker` followed by `<host>:<port>` and returns the port.
fn logged_port(log: &Path, marker: &str) -> u16 {
    let mut port = None;
    wait_until(
        Duration::from_secs(30),
        &format!("{marker:?} in {}", log.display()),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            port = text.split_once(marker).and_then(|(_, rest)| {
                let (_host, after_host) = rest.split_once(':')?;
                let digits = after_host.split(|c: char| !c.is_ascii_digit()).next()?;
                digits.parse().ok()
            });
            port.is_some()
        },
    );
    port.expect("a logged port")
}

/// Minimal HTTP/1.1 client for the REST tests: one request per connection.
/// Returns (status, body as JSON or `Null` when the body is not JSON).
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, payload) = http_text(port, method, path, body);
    (
        status,
        serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
    )
}

/// Like `http`, returning the body as text.
pub fn http_text(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to REST API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text}"));
    let payload = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, payload.to_string())
}

/// Starts `weir-worker <args>` in the background; its logs go to `log`.
pub fn spawn_worker(args: &[&str], env: &[(String, String)], log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    let err = file.try_clone().expect("log file");
    let mut cmd = Command::new(weir_bin());
    cmd.args(args)
        .env("WEIR_LOG", "info,weir=debug")
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn weir-worker")
}

/// Sends a signal by name (`STOP`, `CONT`) with the system's `kill`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Names of the output parts (`part-*`) directly in `dir`, sorted.
pub fn part_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("part-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The checkpoint id in a part's name `part-<subtask>-<attempt>-<checkpoint>-<n>.jsonl`.
pub fn part_checkpoint(name: &str) -> u64 {
    let mut fields = name.rsplit('-');
    fields.next();
    fields
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("part name without a checkpoint id: {name}"))
}

/// Waits (up to 90 s) for a process started with `point` armed (`WEIR_FAULT_POINTS`) to die
/// there: SIGABRT, and its last words naming the point and the hit. Returns its log.
pub fn wait_for_fault_point(
    mut child: Child,
    log: &Path,
    point: weir::fault_points::FaultPoint,
    hit: u32,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        if Instant::now() > deadline {
            sigkill(&mut child);
            panic!("never reached fault point {}:\n{}", point.name(), read());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = read();
    assert_eq!(
        status.signal(),
        Some(6),
        "the run must abort at {} (SIGABRT), ended {status}:\n{text}",
        point.name()
    );
    let words = format!("fault point {} reached (hit {hit})", point.name());
    assert!(text.contains(&words), "expected {words:?}:\n{text}");
    text
}

/// Runs `job` on a JobManager and two TaskManagers (1 slot each) with its restart strategy
/// replaced by one that retries, SIGKILLs a TaskManager once `checkpoints` (the job's
/// checkpoint folder) holds two completed checkpoints, starts another in its place, and waits
/// for the job to finish. Asserts it finished after losing the TaskManager; logs are in `dir`.
pub fn run_on_a_cluster_killing_a_taskmanager(dir: &Path, job: &Path, checkpoints: &Path) {
    // The failure must be retried: the documents of these scenarios say `none`.
    let yaml = std::fs::read_to_string(job).expect("job").replace(
        "restartStrategy: {type: none}",
        "restartStrategy: {type: fixed-delay, attempts: 10, delay: 200ms}",
    );
    std::fs::write(job, yaml).expect("job");
    let mut cluster = Cluster::new(dir, job.to_path_buf(), Vec::new());
    cluster.start_jobmanager(&["--exit-when-done"]);
    cluster.start_taskmanager(0, 1);
    cluster.start_taskmanager(1, 1);
    wait_until(Duration::from_secs(60), "two checkpoints", || {
        completed_checkpoints(checkpoints).len() >= 2
    });
    cluster.kill_taskmanager(0);
    cluster.start_taskmanager(0, 1);
    cluster.wait_for_success(Duration::from_secs(120));
    let log = cluster.jobmanager_log();
    assert!(log.contains("TaskManager lost"), "{log}");
}

/// Runs `job` in local mode (its REST API on a free port) until `checkpoints` (its checkpoint
/// folder) holds `count` completed checkpoints, then stops job `job_id` with a savepoint into
/// `savepoint` through the REST API and waits for the run to exit successfully.
pub fn run_then_stop_with_savepoint(
    job: &Path,
    job_id: &str,
    checkpoints: &Path,
    count: usize,
    savepoint: &str,
    work_dir: &Path,
    log: &Path,
) {
    let mut child = spawn_job(job, &["--rest-addr", "127.0.0.1:0"], &[], work_dir, log);
    let port = logged_rest_port(log);
    wait_until(
        Duration::from_secs(60),
        &format!("{count} completed checkpoints"),
        || completed_checkpoints(checkpoints).len() >= count,
    );
    let (status, stop) = http(
        port,
        "POST",
        &format!("/v1/jobs/{job_id}/stop"),
        Some(&serde_json::json!({"targetDirectory": savepoint}).to_string()),
    );
    assert_eq!(status, 202, "{stop}");
    let exit = child
        .wait()
        .expect("the run exits after stop-with-savepoint");
    assert!(exit.success(), "see {}", log.display());
}
