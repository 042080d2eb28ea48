//! The JobManager REST API in local mode: every endpoint, bad requests, savepoints, and a
//! rescale 2 -> 3 through stop-with-savepoint that keeps the output exactly-once.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const KEYS: u64 = 10;
const EVENTS_PER_KEY: u64 = 3000;

fn poll_savepoint(port: u16, trigger: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "savepoint to finish", || {
        let (status, body) = http(
            port,
            "GET",
            &format!("/v1/jobs/seq/savepoints/{trigger}"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        last = body;
        last["status"] != "IN_PROGRESS"
    });
    last
}

#[test]
fn rest_api_serves_state_and_rescales_through_stop_with_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let yaml = format!(
        "job: {{name: sequence-check, args: {{keys: {KEYS}, eventsPerKey: {EVENTS_PER_KEY}, eventsPerSecond: 2000, output: '{out}'}}}}\n\
         jobId: seq\nparallelism: 2\n\
         checkpointing: {{interval: 200ms, storage: 'file://{chk}', savepointDirectories: ['file://{sp}']}}\nrestartStrategy: {{type: none}}\n",
        out = store.join("output").display(),
        chk = store.join("checkpoints").display(),
        sp = store.join("savepoints").display(),
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    let mut child = spawn_job(
        &job,
        // Keep answering after the job ends, as a JobManager must for the operator to read
        // the final savepoint.
        &["--rest-addr", "127.0.0.1:0", "--linger", "3s"],
        &[],
        &dir.path().join("work"),
        &dir.path().join("run.log"),
    );
    let port = logged_rest_port(&dir.path().join("run.log"));
    wait_until(Duration::from_secs(30), "the job to be ready", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/v1/health/ready", None).0 == 200
    });

    // Health, overview, listing.
    assert_eq!(
        http(port, "GET", "/v1/health/live", None),
        (200, json!({"status": "ok"}))
    );
    let (status, jobs) = http(port, "GET", "/v1/jobs", None);
    assert_eq!(status, 200);
    assert_eq!(jobs[0]["jobId"], "seq");
    let (status, overview) = http(port, "GET", "/v1/jobs/seq", None);
    assert_eq!(status, 200);
    assert_eq!(overview["state"], "RUNNING");
    assert_eq!(overview["name"], "sequence-check");
    assert_eq!(overview["parallelism"], 2);
    assert_eq!(overview["restarts"], 0);

    // Checkpoints show up with their paths.
    wait_until(
        Duration::from_secs(30),
        "a completed checkpoint in the API",
        || {
            http(port, "GET", "/v1/jobs/seq/checkpoints", None).1["counts"]["completed"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    );
    let (_, checkpoints) = http(port, "GET", "/v1/jobs/seq/checkpoints", None);
    let latest = &checkpoints["latest"];
    assert_eq!(latest["status"], "COMPLETED");
    let path = latest["externalPath"].as_str().expect("externalPath");
    assert!(path.contains("/checkpoints/seq/chk-"), "{path}");

    // Bad requests are 4xx with a JSON error.
    for (method, path, body, expected) in [
        ("GET", "/v1/jobs/nope", None, 404),
        ("GET", "/v1/jobs/nope/checkpoints", None, 404),
        (
            "POST",
            "/v1/jobs/nope/savepoints",
            Some(r#"{"targetDirectory": "/tmp/x"}"#),
            404,
        ),
        ("GET", "/v1/jobs/seq/savepoints/unknown", None, 404),
        ("GET", "/v1/no-such-endpoint", None, 404),
        ("POST", "/v1/jobs/seq/savepoints", Some("{not json"), 400),
        (
            "POST",
            "/v1/jobs/seq/savepoints",
            Some(r#"{"target": "/tmp/x"}"#),
            400,
        ),
        (
            "POST",
            "/v1/jobs/seq/savepoints",
            Some(r#"{"targetDirectory": "ftp://x/y"}"#),
            400,
        ),
    ] {
        let (status, body) = http(port, method, path, body);
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    let huge = format!(r#"{{"targetDirectory": "{}"}}"#, "x".repeat(70_000));
    let (status, body) = http(port, "POST", "/v1/jobs/seq/savepoints", Some(&huge));
    assert_eq!(status, 413, "oversized body: {body}");

    // Savepoint targets outside the allowed directories, or not plainly inside one, are
    // refused with the rule they break, and nothing is written for them.
    let outside = dir.path().join("outside");
    let allowed = format!("file://{}", store.join("savepoints").display());
    for (method, target, rule) in [
        ("savepoints", String::new(), "absolute"),
        ("savepoints", outside.display().to_string(), "absolute"),
        ("savepoints", "relative-dir".into(), "absolute"),
        (
            "savepoints",
            format!("file://{}", outside.display()),
            "not under an allowed savepoint directory",
        ),
        ("stop", format!("{allowed}/../../outside"), "`..`"),
        (
            "savepoints",
            format!("{allowed}/a\u{1}b"),
            "control characters",
        ),
        (
            "savepoints",
            format!("{allowed}/{}", "a".repeat(600)),
            "longer than",
        ),
        ("stop", format!("{allowed}-evil"), "not under"),
        (
            "savepoints",
            "s3://someone-elses-bucket/sp".into(),
            allowed.as_str(),
        ),
    ] {
        let body = json!({"targetDirectory": target}).to_string();
        let (status, reply) = http(port, "POST", &format!("/v1/jobs/seq/{method}"), Some(&body));
        // Well-formed but elsewhere: 403 (the caller may not write there); malformed: 400.
        let expected = if rule.contains("not under") || rule.contains("file://") {
            403
        } else {
            400
        };
        assert_eq!(status, expected, "{target:?}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("targetDirectory: ") && error.contains(rule),
            "{target:?}: {reply}"
        );
    }
    let (_, overview) = http(port, "GET", "/v1/jobs/seq", None);
    assert_eq!(overview["state"], "RUNNING", "{overview}");
    assert!(!outside.exists() && !dir.path().join("work/relative-dir").exists());

    // A savepoint while running; asking again for the same directory is the same trigger.
    let sp1 = format!("file://{}", store.join("savepoints/sp-1").display());
    let request = json!({"targetDirectory": sp1}).to_string();
    let (status, first) = http(port, "POST", "/v1/jobs/seq/savepoints", Some(&request));
    assert_eq!(status, 202, "{first}");
    let (_, again) = http(port, "POST", "/v1/jobs/seq/savepoints", Some(&request));
    assert_eq!(first["triggerId"], again["triggerId"]);
    let done = poll_savepoint(port, first["triggerId"].as_str().expect("trigger"));
    assert_eq!(done, json!({"status": "COMPLETED", "location": sp1}));
    assert!(store.join("savepoints/sp-1/_metadata").exists());
    assert!(
        child.try_wait().expect("poll").is_none(),
        "a plain savepoint keeps the job running"
    );

    // Stop with savepoint at parallelism 2 ...
    let sp2 = format!("file://{}", store.join("savepoints/sp-2").display());
    let (status, stop) = http(
        port,
        "POST",
        "/v1/jobs/seq/stop",
        Some(&json!({"targetDirectory": sp2}).to_string()),
    );
    assert_eq!(status, 202, "{stop}");
    let done = poll_savepoint(port, stop["triggerId"].as_str().expect("trigger"));
    assert_eq!(done, json!({"status": "COMPLETED", "location": sp2}));
    wait_until(Duration::from_secs(10), "the job to finish", || {
        http(port, "GET", "/v1/jobs/seq", None).1["state"] == "FINISHED"
    });
    let exit = child.wait().expect("job exits after stop-with-savepoint");
    assert!(
        exit.success(),
        "see {}",
        dir.path().join("run.log").display()
    );
    let log = std::fs::read_to_string(dir.path().join("run.log")).expect("log");
    assert!(log.contains(&format!("savepoint: {sp2}")), "{log}");
    let committed_at_stop = committed_json(&store.join("output")).len() as u64;
    assert!(
        committed_at_stop < KEYS * EVENTS_PER_KEY,
        "stopped mid-stream"
    );

    // ... and continue at parallelism 3 from it: nothing lost, nothing twice.
    let output = run_job(
        &job,
        &["--parallelism", "3", "--restore", &sp2],
        &[],
        &dir.path().join("work"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("restored from: {sp2}")),
        "{stdout}"
    );
    verify_sequence_output(&committed_json(&store.join("output")), KEYS, EVENTS_PER_KEY)
        .expect("exactly-once across stop-with-savepoint and rescale 2 -> 3");
}

#[test]
fn cancel_ends_the_job_as_canceled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "job: {{name: sequence-check, args: {{keys: 2, eventsPerSecond: 100, output: '{}'}}}}\njobId: seq\n",
        dir.path().join("out").display()
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    let mut child = spawn_job(
        &job,
        &["--rest-addr", "127.0.0.1:0"],
        &[],
        &dir.path().join("work"),
        &dir.path().join("run.log"),
    );
    let port = logged_rest_port(&dir.path().join("run.log"));
    wait_until(Duration::from_secs(30), "the job to be ready", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/v1/health/ready", None).0 == 200
    });
    // Without checkpointing configured a savepoint cannot be taken: refused, the job runs on.
    let (status, body) = http(
        port,
        "POST",
        "/v1/jobs/seq/savepoints",
        Some(r#"{"targetDirectory": "file:///tmp/weir-never"}"#),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|f| f.contains("no checkpointing configured")),
        "{body}"
    );
    assert!(child.try_wait().expect("poll").is_none());
    let (status, _) = http(port, "POST", "/v1/jobs/seq/cancel", None);
    assert_eq!(status, 202);
    let exit = child.wait().expect("exits");
    assert!(exit.success());
    let log = std::fs::read_to_string(dir.path().join("run.log")).expect("log");
    assert!(log.contains("cancelled"), "{log}");
}

/// Triggers a savepoint (or stop-with-savepoint) into `target`; returns the trigger id.
fn trigger(port: u16, endpoint: &str, target: &str) -> String {
    let (status, body) = http(
        port,
        "POST",
        &format!("/v1/jobs/seq/{endpoint}"),
        Some(&json!({"targetDirectory": target}).to_string()),
    );
    assert_eq!(status, 202, "{endpoint} into {target}: {body}");
    body["triggerId"].as_str().expect("triggerId").to_string()
}

fn completed_checkpoints_in_api(port: u16) -> u64 {
    http(port, "GET", "/v1/jobs/seq/checkpoints", None).1["counts"]["completed"]
        .as_u64()
        .unwrap_or(0)
}

/// Savepoints that cannot be written (a path under a plain file or in /proc, a "bucket" that
/// is a plain file, which s3s-fs cannot write; it creates missing buckets on the fly) fail
/// only themselves, as in Flink: the
/// trigger ends FAILED with the reason, the job keeps RUNNING with no restart, a failed
/// stop-with-savepoint lets the sources emit again, checkpoints go on, a retry into the same
/// directory after FAILED is a new trigger that completes once the target is writable, and
/// the output stays exactly-once across all of it.
#[test]
fn failed_savepoints_fail_only_themselves_and_a_retry_after_failed_is_a_new_trigger() {
    let s3 = support::s3::S3Server::start();
    std::fs::write(
        s3.root.path().join("not-a-bucket"),
        "a plain file, not a bucket",
    )
    .expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let job = SavepointJob::start(
        dir.path(),
        &s3,
        "10s",
        "'file:///proc/self', 'file://{store}', 's3://not-a-bucket/savepoints'",
    );
    let (store, port) = (job.store.clone(), job.port);

    // A plain file where the savepoint's directory would have to be.
    let blocker = store.join("blocker");
    std::fs::write(&blocker, "in the way").expect("write");
    let fixable = format!("file://{}/sp", blocker.display());
    let mut first_fixable_trigger = None;
    for target in [
        "file:///proc/self/y".to_string(),
        fixable.clone(),
        "s3://not-a-bucket/savepoints/sp".to_string(),
    ] {
        let id = trigger(port, "savepoints", &target);
        if target == fixable {
            first_fixable_trigger = Some(id.clone());
        }
        let failed = poll_savepoint(port, &id);
        assert_eq!(failed["status"], "FAILED", "{target}: {failed}");
        assert!(
            failed["failure"]
                .as_str()
                .is_some_and(|f| f.starts_with("savepoint (checkpoint ")),
            "{target}: {failed}"
        );
        let (_, overview) = http(port, "GET", "/v1/jobs/seq", None);
        assert_eq!(overview["state"], "RUNNING", "after {target}: {overview}");
        assert_eq!(overview["restarts"], 0, "after {target}: {overview}");
    }

    // A failed stop-with-savepoint leaves the job running, its sources emitting.
    let id = trigger(port, "stop", &format!("file://{}/stop", blocker.display()));
    let failed = poll_savepoint(port, &id);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let committed = committed_lines(&store.join("output")).len();
    let checkpoints = completed_checkpoints_in_api(port);
    wait_until(
        Duration::from_secs(30),
        "more committed output and checkpoints after the failed stop",
        || {
            committed_lines(&store.join("output")).len() > committed + 1000
                && completed_checkpoints_in_api(port) >= checkpoints + 3
        },
    );
    let (_, overview) = http(port, "GET", "/v1/jobs/seq", None);
    assert_eq!(overview["state"], "RUNNING", "{overview}");
    assert_eq!(overview["restarts"], 0, "{overview}");
    assert!(overview.get("lastFailure").is_none(), "{overview}");
    let (_, metrics) = http_text(port, "GET", "/metrics", None);
    assert!(
        metrics.contains("weir_savepoints_failed_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_checkpoints_failed_total 0"),
        "{metrics}"
    );

    // Fixed target: the retry into the same directory is a new trigger, and it completes; asked
    // again, the completed one is the answer.
    std::fs::remove_file(&blocker).expect("remove the blocker");
    let retry = trigger(port, "savepoints", &fixable);
    assert_ne!(Some(&retry), first_fixable_trigger.as_ref());
    let done = poll_savepoint(port, &retry);
    assert_eq!(done, json!({"status": "COMPLETED", "location": fixable}));
    assert!(store.join("blocker/sp/_metadata").exists());
    assert_eq!(trigger(port, "savepoints", &fixable), retry);

    // Stop for real, then finish the input at full speed from the savepoint.
    job.finish_exactly_once("across failed savepoints");
}

/// `sequence-check` at parallelism 2 (10 keys x 20,000 events) under `dir/store`, checkpointing
/// every 200 ms to local storage with `tolerableFailures: 0`, allowed to write savepoints into
/// `savepoint_directories`, started at 2 x 2,000 events/s (50 s: stopped, not done) with the
/// REST API on a free port; finished from a final stop-with-savepoint at full speed.
struct SavepointJob<'a> {
    dir: &'a std::path::Path,
    store: std::path::PathBuf,
    s3: &'a support::s3::S3Server,
    checkpoint_timeout: &'a str,
    savepoint_directories: String,
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl<'a> SavepointJob<'a> {
    /// Starts the job and waits for its first completed checkpoint. `savepoint_directories` is
    /// the YAML list's inside, e.g. `'s3://b/sp', 'file://{store}/sp'` (`{store}` is replaced).
    fn start(
        dir: &'a std::path::Path,
        s3: &'a support::s3::S3Server,
        checkpoint_timeout: &'a str,
        savepoint_directories: &str,
    ) -> Self {
        let store = dir.join("store");
        let savepoint_directories =
            savepoint_directories.replace("{store}", &store.display().to_string());
        let document = document(
            &store,
            s3,
            checkpoint_timeout,
            &savepoint_directories,
            "eventsPerSecond: 2000, ",
        );
        let path = write_job(dir, "job.yaml", &document);
        let log = dir.join("run.log");
        let child = spawn_job(
            &path,
            // Answers the final stop's status after the job ended.
            &["--rest-addr", "127.0.0.1:0", "--linger", "5s"],
            &s3.env(),
            &dir.join("work"),
            &log,
        );
        let port = logged_rest_port(&log);
        wait_until(Duration::from_secs(30), "a completed checkpoint", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && completed_checkpoints_in_api(port) >= 1
        });
        SavepointJob {
            dir,
            store,
            s3,
            checkpoint_timeout,
            savepoint_directories,
            child,
            port,
            log,
        }
    }

    /// Stops with a savepoint under `store/savepoints/final`, runs the rest of the input from
    /// it, and checks every (key, seq) was committed exactly once.
    fn finish_exactly_once(mut self, what: &str) {
        let final_savepoint = format!("file://{}", self.store.join("savepoints/final").display());
        let stop = trigger(self.port, "stop", &final_savepoint);
        assert_eq!(poll_savepoint(self.port, &stop)["status"], "COMPLETED");
        let exit = self
            .child
            .wait()
            .expect("job exits after stop-with-savepoint");
        assert!(exit.success(), "see {}", self.log.display());
        let document = document(
            &self.store,
            self.s3,
            self.checkpoint_timeout,
            &self.savepoint_directories,
            "",
        );
        let rest = write_job(self.dir, "rest.yaml", &document);
        run_job(
            &rest,
            &["--restore", &final_savepoint],
            &self.s3.env(),
            &self.dir.join("work"),
        );
        verify_sequence_output(&committed_json(&self.store.join("output")), KEYS, 20_000)
            .unwrap_or_else(|e| panic!("exactly-once {what}: {e}"));
    }
}

/// The job document of a [`SavepointJob`]; `rate` is `eventsPerSecond: <n>, ` or empty.
fn document(
    store: &std::path::Path,
    s3: &support::s3::S3Server,
    checkpoint_timeout: &str,
    savepoint_directories: &str,
    rate: &str,
) -> String {
    format!(
        "job: {{name: sequence-check, args: {{keys: {KEYS}, eventsPerKey: 20000, {rate}output: '{out}'}}}}\n\
         jobId: seq\nparallelism: 2\n\
         checkpointing: {{interval: 200ms, storage: 'file://{chk}', timeout: {checkpoint_timeout}, tolerableFailures: 0, \
         savepointDirectories: [{savepoint_directories}]}}\n\
         restartStrategy: {{type: fixed-delay, attempts: 5, delay: 200ms}}\n\
         s3: {{endpoint: '{endpoint}', forcePathStyle: true}}\n",
        out = store.join("output").display(),
        chk = store.join("checkpoints").display(),
        endpoint = s3.endpoint,
    )
}

/// schemathesis (`scripts/install-schemathesis.sh`): $WEIR_SCHEMATHESIS, the tools dir, PATH.
fn schemathesis() -> std::path::PathBuf {
    let candidates = std::env::var_os("WEIR_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME")
                .map(|home| std::path::PathBuf::from(home).join(".cache/weir-tools/bin/st")),
        )
        .chain(
            std::env::var_os("PATH")
                .map(|path| {
                    std::env::split_paths(&path)
                        .map(|d| d.join("st"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "schemathesis is not installed (looked at $WEIR_SCHEMATHESIS, ~/.cache/weir-tools/bin/st \
         and PATH); run scripts/install-schemathesis.sh"
    );
}

/// The contract is what the server does: schemathesis fuzzes every endpoint of a running
/// JobManager from `docs/jobmanager-api.yaml` with all its checks (status codes and bodies
/// as documented, schema-valid requests accepted, invalid ones refused, no server errors) and
/// its stateful phase (a savepoint trigger followed by its status, through the documented
/// link) and authentication (a token is configured: requests without it must get 401). Cancel
/// and stop are left out: they end the job (covered above). The job survives it all (RUNNING,
/// no restart), and nothing is written outside the allowed directories.
#[test]
fn the_api_matches_its_contract_under_schemathesis() {
    let st = schemathesis();
    let s3 = support::s3::S3Server::start();
    // The contract's example target is s3://bucket/savepoints/sp-1.
    s3.create_bucket("bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "job: {{name: sequence-check, args: {{keys: 4, eventsPerKey: 100000000, eventsPerSecond: 200, output: 's3://bucket/output'}}}}\n\
         jobId: seq\n\
         checkpointing: {{interval: 1s, storage: 's3://bucket/checkpoints', savepointDirectories: ['s3://bucket/savepoints']}}\n\
         restartStrategy: {{type: none}}\n\
         s3: {{endpoint: '{}', forcePathStyle: true}}\n",
        s3.endpoint
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    let work = dir.path().join("work");
    const TOKEN: &str = "contract-test-token";
    let mut env = s3.env();
    env.push(("WEIR_REST_TOKEN".into(), TOKEN.into()));
    let log = dir.path().join("run.log");
    let mut child = spawn_job(&job, &["--rest-addr", "127.0.0.1:0"], &env, &work, &log);
    let port = logged_rest_port(&log);
    wait_until(Duration::from_secs(30), "the job to be ready", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/v1/health/ready", None).0 == 200
    });
    let contract =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/jobmanager-api.yaml");
    let output = std::process::Command::new(&st)
        .arg("run")
        .arg(&contract)
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "20261205",
        ])
        .args(["--exclude-path-regex", "/(cancel|stop)$"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--no-color"])
        .current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
    assert!(report.contains("Stateful"), "{report}");

    // The fuzzer's savepoints into the documented example target really ran.
    let example = s3.bucket_path("bucket").join("savepoints/sp-1/_metadata");
    wait_until(Duration::from_secs(30), "the fuzzer's savepoint", || {
        example.exists()
    });
    let bearer = format!("Bearer {TOKEN}");
    let (status, response) = http_authorized(port, "GET", "/v1/jobs/seq", Some(&bearer));
    assert_eq!(status, 200, "{response}");
    assert!(response.contains(r#""state":"RUNNING""#), "{response}");
    assert!(response.contains(r#""restarts":0"#), "{response}");
    // Buckets s3s-fs holds, and what the fuzzer left in the working directories.
    let buckets: Vec<String> = std::fs::read_dir(s3.root.path())
        .expect("s3 root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert_eq!(buckets, ["bucket"], "nothing written outside s3://bucket");
    let in_bucket: Vec<String> = std::fs::read_dir(s3.bucket_path("bucket"))
        .expect("bucket")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for name in &in_bucket {
        assert!(
            ["checkpoints", "savepoints", "output"].contains(&name.as_str()),
            "unexpected {name:?} in the bucket: {in_bucket:?}"
        );
    }
    let (status, _) = http_authorized(port, "POST", "/v1/jobs/seq/cancel", Some(&bearer));
    assert_eq!(status, 202);
    assert!(child.wait().expect("exits").success());
}

/// A request with an optional `Authorization` header: (status, headers and body as text).
fn http_authorized(
    port: u16,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, response)
}

/// With a token configured (here from WEIR_REST_TOKEN), every endpoint but the health probes
/// and `/metrics` answers 401 without it or with a wrong one, unknown paths included; the right
/// one gets in; refusals are counted; the token never reaches the log. An empty token file is
/// refused at start naming the file.
#[test]
fn a_bearer_token_guards_every_endpoint_but_health_and_metrics() {
    const TOKEN: &str = "s3cr3t-t0ken-never-logged";
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "job: {{name: sequence-check, args: {{keys: 2, eventsPerSecond: 100, output: '{}'}}}}\njobId: seq\n",
        dir.path().join("out").display()
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    let log = dir.path().join("run.log");
    let mut child = spawn_job(
        &job,
        &["--rest-addr", "127.0.0.1:0"],
        &[("WEIR_REST_TOKEN".to_string(), TOKEN.to_string())],
        &dir.path().join("work"),
        &log,
    );
    let port = logged_rest_port(&log);
    wait_until(Duration::from_secs(30), "the job to be ready", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/v1/health/ready", None).0 == 200
    });
    let right = format!("Bearer {TOKEN}");
    let mut refused = 0;
    for path in [
        "/v1/jobs",
        "/v1/jobs/seq",
        "/v1/jobs/seq/checkpoints",
        "/v1/no-such-endpoint",
    ] {
        for wrong in [
            None,
            Some("Bearer nope"),
            Some("Basic czNjcjN0"),
            Some(&format!("Bearer {TOKEN}x")[..]),
        ] {
            let (status, response) = http_authorized(port, "GET", path, wrong);
            assert_eq!(status, 401, "{path} with {wrong:?}: {response}");
            assert!(response.contains("www-authenticate: Bearer"), "{response}");
            refused += 1;
        }
    }
    let (status, response) =
        http_authorized(port, "POST", "/v1/jobs/seq/cancel", Some("Bearer nope"));
    assert_eq!(status, 401, "{response}");
    refused += 1;
    assert_eq!(
        http_authorized(port, "GET", "/v1/jobs/seq", Some(&right)).0,
        200
    );
    assert_eq!(
        http_authorized(port, "GET", "/v1/no-such-endpoint", Some(&right)).0,
        404
    );
    assert_eq!(http(port, "GET", "/v1/health/live", None).0, 200);
    let (status, metrics) = http_text(port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("weir_rest_unauthorized_total {refused}")),
        "{metrics}"
    );
    // The job was never touched by the refused cancel.
    let (status, _) = http_authorized(port, "POST", "/v1/jobs/seq/cancel", Some(&right));
    assert_eq!(status, 202);
    assert!(child.wait().expect("exits").success());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("the REST API wants a bearer token"), "{text}");
    assert!(!text.contains(TOKEN), "the token leaked into the log");

    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").expect("write");
    let stderr = run_job_expecting_failure(
        &job,
        &[
            "--rest-addr",
            "127.0.0.1:0",
            "--rest-token-file",
            empty.to_str().expect("utf-8"),
        ],
        &[],
        &dir.path().join("work"),
    );
    assert!(
        stderr.contains("--rest-token-file")
            && stderr.contains("empty-token")
            && stderr.contains("empty"),
        "{stderr}"
    );
}

/// A savepoint whose storage hangs (the S3 server frozen) times out and fails only itself:
/// FAILED naming the timeout, the job RUNNING with no restart, periodic checkpoints (on local
/// storage) going on; after the storage thaws, a retry into the same directory completes and
/// the output is exactly-once.
#[test]
fn a_savepoint_that_times_out_fails_only_itself() {
    let s3 = support::s3::S3Server::start();
    s3.create_bucket("slow");
    let dir = tempfile::tempdir().expect("tempdir");
    let job = SavepointJob::start(
        dir.path(),
        &s3,
        "3s",
        "'s3://slow/savepoints', 'file://{store}/savepoints'",
    );
    let port = job.port;

    s3.pause();
    let target = "s3://slow/savepoints/sp";
    let id = trigger(port, "savepoints", target);
    let failed = poll_savepoint(port, &id);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert!(
        failed["failure"]
            .as_str()
            .is_some_and(|f| f.contains("timed out")),
        "{failed}"
    );
    let (_, overview) = http(port, "GET", "/v1/jobs/seq", None);
    assert_eq!(overview["state"], "RUNNING", "{overview}");
    assert_eq!(overview["restarts"], 0, "{overview}");

    s3.resume();
    let checkpoints = completed_checkpoints_in_api(port);
    wait_until(
        Duration::from_secs(30),
        "checkpoints after the thaw",
        || completed_checkpoints_in_api(port) >= checkpoints + 3,
    );
    let retry = trigger(port, "savepoints", target);
    assert_ne!(retry, id, "a retry after FAILED is a new trigger");
    assert_eq!(
        poll_savepoint(port, &retry),
        json!({"status": "COMPLETED", "location": target})
    );
    let (_, overview) = http(port, "GET", "/v1/jobs/seq", None);
    assert_eq!(overview["restarts"], 0, "{overview}");

    job.finish_exactly_once("across a timed-out savepoint");
}
