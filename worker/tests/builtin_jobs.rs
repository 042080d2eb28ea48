//! Each built-in job on a small known input gives the known output.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use support::*;

/// A job document reading `input` and writing `<dir>/output`, checkpointing to `<dir>/checkpoints`.
fn file_job(
    dir: &Path,
    job: &str,
    input: &Path,
    parallelism: u32,
    extra: &str,
) -> std::path::PathBuf {
    let yaml = format!(
        "job:\n  name: {job}\n  args:\n    input: {input}\n    output: {output}\nparallelism: {parallelism}\n\
         checkpointing:\n  interval: 200ms\n  storage: file://{checkpoints}\nrestore: none\n{extra}",
        input = input.display(),
        output = dir.join("output").display(),
        checkpoints = dir.join("checkpoints").display(),
    );
    write_job(dir, "job.yaml", &yaml)
}

/// The job document line that puts keyed state on `backend`.
fn backend_line(backend: &str) -> String {
    format!("state: {{backend: {backend}}}\n")
}

fn input_dir(dir: &Path, name: &str, lines: &[serde_json::Value]) -> std::path::PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(input.join(name), text).expect("write input");
    input
}

/// Groups records by a key field, keeping each key's records in output order.
fn by_key(
    records: Vec<serde_json::Value>,
    field: &str,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut map: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for r in records {
        map.entry(r[field].as_str().expect("key field").to_string())
            .or_default()
            .push(r);
    }
    map
}

on_each_backend! {
fn url_count_counts_per_url(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = input_dir(
        dir.path(),
        "access.jsonl",
        &[
            json!({"@timestamp": "18/Apr/2019:00:00:00", "remote_addr": "127.0.0.1", "request": "GET", "url": "/api/a"}),
            json!({"@timestamp": "18/Apr/2019:00:00:01", "remote_addr": "127.0.0.1", "request": "POST", "url": "/api/b"}),
            json!({"@timestamp": "18/Apr/2019:00:00:00", "remote_addr": "127.0.0.1", "request": "GET", "url": "/api/a"}),
        ],
    );
    let job = file_job(dir.path(), "url-count", &input, 2, &backend_line(backend));
    run_job(&job, &[], &[], &dir.path().join("work"));
    let out = by_key(committed_json(&dir.path().join("output")), "url");
    assert_eq!(
        out["/api/a"],
        vec![
            json!({"url": "/api/a", "count": 1}),
            json!({"url": "/api/a", "count": 2})
        ]
    );
    assert_eq!(out["/api/b"], vec![json!({"url": "/api/b", "count": 1})]);
    assert_eq!(out.len(), 2);
}
}

/// Counts per URL in output order, over every committed part so far.
fn url_counts(output: &Path) -> BTreeMap<String, Vec<u64>> {
    by_key(committed_json(output), "url")
        .into_iter()
        .map(|(url, records)| {
            let counts = records
                .iter()
                .map(|r| r["count"].as_u64().expect("count"))
                .collect();
            (url, counts)
        })
        .collect()
}

on_each_backend! {
/// Three runs over a growing input folder, each restoring the last one's final checkpoint:
/// counts under a long TTL survive the restore; after an idle pause longer than a short TTL
/// every URL counts from 1 again; switching the TTL off is refused naming the state.
fn url_count_state_ttl_survives_restore_and_expires_idle_urls(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    let output = dir.path().join("output");
    std::fs::create_dir_all(&input).expect("mkdir");
    let add_file = |name: &str, urls: &[&str]| {
        let text: String = urls
            .iter()
            .map(|url| {
                format!(
                    "{}\n",
                    json!({"@timestamp": "t", "remote_addr": "r", "request": "GET", "url": url})
                )
            })
            .collect();
        std::fs::write(input.join(name), text).expect("write input");
    };
    let job = |ttl: &str| {
        let ttl = if ttl.is_empty() {
            String::new()
        } else {
            format!(", stateTtl: {ttl}")
        };
        let yaml = format!(
            "job: {{name: url-count, args: {{input: '{}', output: '{}'{ttl}}}}}\nparallelism: 1\nstate: {{backend: {backend}}}\n\
             checkpointing: {{interval: 200ms, storage: 'file://{}'}}\nrestartStrategy: {{type: none}}\n",
            input.display(),
            output.display(),
            dir.path().join("checkpoints").display(),
        );
        write_job(dir.path(), "job.yaml", &yaml)
    };
    let work = dir.path().join("work");
    let restore = ["--restore", "latest"];

    add_file("1.jsonl", &["/a", "/a", "/b"]);
    run_job(&job("1h"), &["--restore", "none"], &[], &work);
    add_file("2.jsonl", &["/a", "/c"]);
    run_job(&job("1h"), &restore, &[], &work);
    let expected = |a: &[u64], b: &[u64], c: &[u64]| {
        BTreeMap::from([
            ("/a".to_string(), a.to_vec()),
            ("/b".to_string(), b.to_vec()),
            ("/c".to_string(), c.to_vec()),
        ])
    };
    assert_eq!(
        url_counts(&output),
        expected(&[1, 2, 3], &[1], &[1]),
        "unexpired counts continue after the restore"
    );

    // Every URL's last request was in the runs above; after this pause a 1 s TTL has passed
    // for all of them, however slow the machine is.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    add_file("3.jsonl", &["/a", "/b", "/c", "/c"]);
    run_job(&job("1s"), &restore, &[], &work);
    assert_eq!(
        url_counts(&output),
        expected(&[1, 2, 3, 1], &[1, 1], &[1, 1, 2]),
        "URLs idle longer than the TTL count from 1 again"
    );

    let stderr = run_job_expecting_failure(&job(""), &restore, &[], &work);
    assert!(
        stderr.contains("cannot restore state \"count\" of operator url-counter")
            && stderr.contains("stored with a TTL"),
        "{stderr}"
    );
}
}

#[test]
fn url_count_reads_from_and_commits_to_s3() {
    let s3 = support::s3::S3Server::start();
    s3.create_bucket("logs");
    let input = s3.bucket_path("logs").join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let line = |url: &str| {
        format!(r#"{{"@timestamp": "t", "remote_addr": "r", "request": "GET", "url": "{url}"}}"#)
    };
    // Enough lines per file that the reader crosses its 4 MiB read chunks.
    let lines: Vec<String> = (0..60_000)
        .map(|i| line(&format!("/p/{}", i % 3)))
        .collect();
    std::fs::write(input.join("a.jsonl"), lines.join("\n") + "\n").expect("write");
    std::fs::write(input.join("b.jsonl"), line("/p/0")).expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "job: {{name: url-count, args: {{input: s3://logs/in, output: s3://logs/out}}}}\nparallelism: 2\n\
         checkpointing: {{interval: 100ms, storage: s3://logs/checkpoints}}\n\
         s3: {{endpoint: '{}', forcePathStyle: true}}\n",
        s3.endpoint
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    run_job(&job, &[], &s3.env(), &dir.path().join("work"));
    let out = by_key(committed_json(&s3.bucket_path("logs").join("out")), "url");
    let counts: BTreeMap<&str, Vec<u64>> = out
        .iter()
        .map(|(url, records)| {
            (
                url.as_str(),
                records
                    .iter()
                    .map(|r| r["count"].as_u64().expect("count"))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(counts["/p/0"], (1..=20_001).collect::<Vec<_>>());
    assert_eq!(counts["/p/1"], (1..=20_000).collect::<Vec<_>>());
    assert_eq!(counts["/p/2"], (1..=20_000).collect::<Vec<_>>());
}

#[test]
fn consumer_lag_subtracts_each_consumer_from_the_producer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = input_dir(
        dir.path(),
        "offsets.jsonl",
        &[
            json!({"timestamp": 1555516800, "offset": {"producer": 15, "consumer0": 10, "consumer1": 7, "consumer2": 12}}),
        ],
    );
    let job = file_job(dir.path(), "consumer-lag", &input, 1, "");
    run_job(&job, &[], &[], &dir.path().join("work"));
    assert_eq!(
        committed_json(&dir.path().join("output")),
        vec![
            json!({"timestamp": 1555516800, "lag": {"consumer0": 5, "consumer1": 8, "consumer2": 3}})
        ]
    );
}

on_each_backend! {
fn state_machine_alerts_on_invalid_transitions_only(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = |addr: &str, t: &str| json!({"sourceAddress": addr, "type": t});
    let input = input_dir(
        dir.path(),
        "events.jsonl",
        &[
            // 1.1.1.1 runs a full valid path to Terminal, then starts over validly.
            ev("1.1.1.1", "a"),
            ev("2.2.2.2", "c"),
            ev("1.1.1.1", "b"),
            ev("2.2.2.2", "d"),
            ev("1.1.1.1", "e"),
            ev("2.2.2.2", "e"), // invalid: Z --e-->
            ev("1.1.1.1", "g"),
            ev("2.2.2.2", "g"),
            ev("1.1.1.1", "c"), // state was cleared at Terminal: Initial --c--> X is valid
            ev("3.3.3.3", "b"), // invalid from Initial
        ],
    );
    let job = file_job(dir.path(), "state-machine", &input, 2, &backend_line(backend));
    run_job(&job, &[], &[], &dir.path().join("work"));
    let mut alerts = committed_json(&dir.path().join("output"));
    alerts.sort_by_key(|a| a["sourceAddress"].as_str().map(str::to_string));
    assert_eq!(
        alerts,
        vec![
            json!({"sourceAddress": "2.2.2.2", "state": "Z", "event": "e"}),
            json!({"sourceAddress": "3.3.3.3", "state": "Initial", "event": "b"}),
        ]
    );
}
}

on_each_backend! {
fn word_count_counts_words_case_insensitively(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.txt"), "To be, or not to be\n").expect("write");
    std::fs::write(input.join("b.txt"), "that is the question: TO be").expect("write");
    let job = file_job(dir.path(), "word-count", &input, 2, &backend_line(backend));
    run_job(&job, &[], &[], &dir.path().join("work"));
    let finals: BTreeMap<String, u64> = by_key(committed_json(&dir.path().join("output")), "word")
        .into_iter()
        .map(|(word, counts)| {
            let seq: Vec<u64> = counts
                .iter()
                .map(|c| c["count"].as_u64().expect("count"))
                .collect();
            assert_eq!(
                seq,
                (1..=seq.len() as u64).collect::<Vec<_>>(),
                "running counts of {word}"
            );
            (word, *seq.last().expect("one count"))
        })
        .collect();
    let expected: BTreeMap<String, u64> = [
        ("to", 3),
        ("be", 3),
        ("or", 1),
        ("not", 1),
        ("that", 1),
        ("is", 1),
        ("the", 1),
        ("question", 1),
    ]
    .into_iter()
    .map(|(w, c)| (w.to_string(), c))
    .collect();
    assert_eq!(finals, expected);
}
}

on_each_backend! {
fn sequence_check_passes_every_record_once_without_alerts(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "job: {{name: sequence-check, args: {{keys: 7, eventsPerKey: 500, output: {}}}}}\nparallelism: 3\n\
         checkpointing: {{interval: 50ms, storage: 'file://{}'}}\n{}",
        dir.path().join("output").display(),
        dir.path().join("checkpoints").display(),
        backend_line(backend),
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    run_job(&job, &[], &[], &dir.path().join("work"));
    verify_sequence_output(&committed_json(&dir.path().join("output")), 7, 500)
        .expect("exactly once");
}
}

on_each_backend! {
/// A job whose keyed task writes nothing else to its local directory (no file sink) still
/// checkpoints: the snapshot is written there first on either backend.
fn nexmark_count_checkpoints_its_keyed_state(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "job: {{name: nexmark, args: {{query: count, events: 200000, keys: 1000}}}}\nparallelism: 2\n\
         checkpointing: {{interval: 20ms, storage: 'file://{}'}}\nrestartStrategy: {{type: none}}\n{}",
        dir.path().join("checkpoints").display(),
        backend_line(backend),
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    let output = run_job(&job, &[], &[], &dir.path().join("work"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("last checkpoint: file://"), "{stdout}");
}
}

#[test]
fn malformed_record_fails_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    let good = r#"{"@timestamp": "t", "remote_addr": "r", "request": "GET", "url": "/a"}"#;
    std::fs::write(
        input.join("log.jsonl"),
        format!("{good}\nnot json\n{good}\n"),
    )
    .expect("write");
    let job = file_job(dir.path(), "url-count", &input, 1, "");
    let stderr = run_job_expecting_failure(&job, &[], &[], &dir.path().join("work"));
    let expected_location = format!("{}:{}", input.join("log.jsonl").display(), good.len() + 1);
    assert!(stderr.contains("malformed record at"), "{stderr}");
    assert!(
        stderr.contains(&expected_location),
        "expected {expected_location} in:\n{stderr}"
    );
}

#[test]
fn malformed_record_is_skipped_under_skip_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    let good = r#"{"@timestamp": "t", "remote_addr": "r", "request": "GET", "url": "/a"}"#;
    std::fs::write(
        input.join("log.jsonl"),
        format!("{good}\nnot json\n{good}\n"),
    )
    .expect("write");
    let job = file_job(
        dir.path(),
        "url-count",
        &input,
        1,
        "malformedRecords: skip\n",
    );
    let output = run_job(&job, &[], &[], &dir.path().join("work"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("skipping malformed record"), "{stderr}");
    assert_eq!(
        committed_json(&dir.path().join("output")),
        vec![
            json!({"url": "/a", "count": 1}),
            json!({"url": "/a", "count": 2})
        ]
    );
}

#[test]
fn invalid_document_is_rejected_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write_job(
        dir.path(),
        "job.yaml",
        "job: {name: url-count, args: {input: x, output: y}}\nparallelism: 0\n",
    );
    let stderr = run_job_expecting_failure(&job, &[], &[], dir.path());
    assert!(
        stderr.contains("parallelism: must be between 1"),
        "{stderr}"
    );
    let job = write_job(
        dir.path(),
        "job2.yaml",
        "job: {name: url-count, args: {input: x}}\n",
    );
    let stderr = run_job_expecting_failure(&job, &[], &[], dir.path());
    assert!(
        stderr.contains("job.args") && stderr.contains("output"),
        "{stderr}"
    );
}

/// Every job document in examples/jobs (the README and docs point users at them) is valid.
#[test]
fn every_example_job_document_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/jobs") {
        let path = entry.expect("entry").path();
        let output = std::process::Command::new(weir_bin())
            .args(["validate", "--job"])
            .arg(&path)
            .output()
            .expect("run weir-worker validate");
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 10, "{checked} examples");
}

/// With no credential source configured, a job on S3 stops at start-up with a message naming
/// every way to give credentials, and never asks the EC2 instance metadata service (it is not
/// in the chain unless `s3.instanceMetadata` allows it).
#[test]
fn a_job_with_no_s3_credentials_fails_at_start_naming_how_to_give_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        "job: {name: sequence-check, args: {keys: 2, eventsPerKey: 10, output: 's3://b/out'}}\n\
         checkpointing: {interval: 1s, storage: 's3://b/chk'}\n\
         s3: {endpoint: 'http://127.0.0.1:9', forcePathStyle: true}\n",
    )
    .expect("write job");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir-worker"));
    cmd.args(["local", "--job"])
        .arg(&job)
        .arg("--work-dir")
        .arg(dir.path().join("work"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
    // No ~/.aws profile either.
    let output = cmd
        .env("HOME", dir.path())
        .output()
        .expect("spawn weir-worker");
    assert!(!output.status.success(), "started without credentials");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no S3 credentials configured")
            && stderr.contains("AWS_ACCESS_KEY_ID")
            && stderr.contains("s3CredentialsSecret")
            && stderr.contains("AWS_WEB_IDENTITY_TOKEN_FILE")
            && stderr.contains("instanceMetadata"),
        "{stderr}"
    );
    for imds in ["IMDS", "Ec2InstanceMetadata", "169.254.169.254"] {
        assert!(!stderr.contains(imds), "{stderr}");
    }
}
