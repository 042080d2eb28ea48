//! The distributed cache (`cachedFiles`) on the real binary: a file on a real S3 server read by
//! every subtask on a JobManager and two TaskManagers, downloaded once per TaskManager; a
//! `file://` file in local mode; a missing file failing the job before it runs, naming the
//! entry.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::s3::S3Server;
use support::*;

/// Distinct URLs in the input: enough that every one of 4 keyed subtasks owns some.
const URLS: usize = 40;
const CACHE_ENTRY: &str = "url-labels";
const DOWNLOADED: &str = "downloaded cached file";

fn url(i: usize) -> String {
    format!("/u/{i}")
}

fn label(i: usize) -> String {
    format!("page {i}")
}

/// The labels file: `<url> <label>` per line, with a comment.
fn labels_file() -> String {
    let mut text = String::from("# url label\n");
    for i in 0..URLS {
        text.push_str(&format!("{} {}\n", url(i), label(i)));
    }
    text
}

/// Access-log lines in two files: URL `i` appears `i % 3 + 1` times.
fn write_input(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).expect("mkdir input");
    let mut expected = BTreeMap::new();
    let mut files = [String::new(), String::new()];
    for i in 0..URLS {
        let times = (i % 3 + 1) as u64;
        for n in 0..times {
            files[(i + n as usize) % 2].push_str(&format!(
                "{{\"@timestamp\": \"t{n}\", \"remote_addr\": \"r\", \"request\": \"GET\", \"url\": \"{}\"}}\n",
                url(i)
            ));
        }
        expected.insert(url(i), times);
    }
    for (n, text) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("access-{n}.jsonl")), text).expect("write input");
    }
    expected
}

/// Every URL's counts 1..=n in order, each with the label from the cached file.
fn assert_labelled_counts(records: &[serde_json::Value], expected: &BTreeMap<String, u64>) {
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in records {
        let url = record["url"].as_str().expect("url").to_string();
        let i: usize = url
            .strip_prefix("/u/")
            .and_then(|i| i.parse().ok())
            .expect("a known URL");
        assert_eq!(
            record["label"],
            serde_json::json!(label(i)),
            "every record carries its URL's label from the cached file: {record}"
        );
        counts
            .entry(url)
            .or_default()
            .push(record["count"].as_u64().expect("count"));
    }
    let wanted: BTreeMap<String, Vec<u64>> = expected
        .iter()
        .map(|(url, n)| (url.clone(), (1..=*n).collect()))
        .collect();
    assert_eq!(counts, wanted);
}

/// The subtasks that committed output parts (`part-<subtask>-...`) under `dir`.
fn subtasks_with_output(dir: &Path) -> BTreeSet<u32> {
    part_names(dir)
        .iter()
        .filter_map(|name| name.strip_prefix("part-")?.split('-').next()?.parse().ok())
        .collect()
}

fn count_of(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn every_subtask_reads_a_cached_file_from_s3_downloaded_once_per_taskmanager() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let bucket = s3.bucket_path("weir");
    std::fs::create_dir_all(bucket.join("cache")).expect("mkdir");
    std::fs::write(bucket.join("cache/labels.txt"), labels_file()).expect("write labels");
    let expected = write_input(&bucket.join("input"));
    let dir = tempfile::tempdir().expect("tempdir");
    // Parallelism 4 on 2 TaskManagers of 2 slots: two subtasks of every vertex per process,
    // sharing one download. No restarts, so one attempt: one download per TaskManager.
    let job = write_job(
        dir.path(),
        "job.yaml",
        &format!(
            "job: {{name: url-count, args: {{input: s3://weir/input, output: s3://weir/output, urlLabels: {CACHE_ENTRY}}}}}\n\
             parallelism: 4\n\
             checkpointing: {{interval: 200ms, storage: s3://weir/checkpoints}}\n\
             restartStrategy: {{type: none}}\n\
             cachedFiles: {{{CACHE_ENTRY}: s3://weir/cache/labels.txt}}\n\
             s3: {{endpoint: '{}', forcePathStyle: true}}\n",
            s3.endpoint
        ),
    );
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    let mut taskmanagers: Vec<(PathBuf, u16)> = Vec::new();
    for index in 0..2 {
        let metrics_port = free_port();
        let metrics = format!("127.0.0.1:{metrics_port}");
        let log = cluster.start_taskmanager_with(index, 2, &["--metrics-addr", &metrics]);
        taskmanagers.push((log, metrics_port));
    }
    cluster.wait_for_success(Duration::from_secs(120));
    let jm_log = cluster.jobmanager_log();

    let output = bucket.join("output");
    assert_labelled_counts(&committed_json(&output), &expected);
    assert_eq!(
        subtasks_with_output(&output),
        BTreeSet::from([0, 1, 2, 3]),
        "every counting subtask read the labels and committed output"
    );
    assert_eq!(
        count_of(&jm_log, DOWNLOADED),
        0,
        "the JobManager runs no tasks and downloads nothing"
    );
    for (log, metrics_port) in &taskmanagers {
        let text = read(log);
        assert_eq!(
            count_of(&text, DOWNLOADED),
            1,
            "one download per TaskManager, shared by its two subtasks:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "crc32={:08x}",
                crc32fast::hash(labels_file().as_bytes())
            )),
            "the download logs the file's checksum:\n{text}"
        );
        let (status, metrics) = http_text(*metrics_port, "GET", "/metrics", None);
        assert_eq!(status, 200, "{metrics}");
        assert!(
            metrics.contains(&format!(
                "weir_cached_file_downloads_total{{name=\"{CACHE_ENTRY}\"}} 1\n"
            )),
            "the TaskManager counts one download:\n{metrics}"
        );
    }
}

#[test]
fn local_mode_reads_a_file_uri_from_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, labels_file()).expect("write labels");
    let expected = write_input(&dir.path().join("input"));
    let job = write_job(
        dir.path(),
        "job.yaml",
        &format!(
            "job: {{name: url-count, args: {{input: {input}, output: {output}, urlLabels: {CACHE_ENTRY}}}}}\n\
             parallelism: 2\n\
             checkpointing: {{interval: 200ms, storage: 'file://{checkpoints}'}}\n\
             cachedFiles: {{{CACHE_ENTRY}: 'file://{labels}'}}\n",
            input = dir.path().join("input").display(),
            output = dir.path().join("output").display(),
            checkpoints = dir.path().join("checkpoints").display(),
            labels = labels.display(),
        ),
    );
    let work = dir.path().join("work");
    let run = run_job(&job, &[], &[], &work);
    let logs = String::from_utf8_lossy(&run.stderr);
    assert_labelled_counts(&committed_json(&dir.path().join("output")), &expected);
    assert_eq!(
        subtasks_with_output(&dir.path().join("output")),
        BTreeSet::from([0, 1])
    );
    assert_eq!(
        count_of(&logs, DOWNLOADED),
        1,
        "one download for both subtasks:\n{logs}"
    );
}

#[test]
fn a_missing_cached_file_fails_the_job_naming_the_entry() {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    write_input(&dir.path().join("input"));
    let uri = "s3://weir/cache/absent.txt";
    let yaml = format!(
        "job: {{name: url-count, args: {{input: {input}, output: {output}, urlLabels: {CACHE_ENTRY}}}}}\n\
         cachedFiles: {{{CACHE_ENTRY}: '{uri}'}}\n\
         s3: {{endpoint: '{endpoint}', forcePathStyle: true}}\n",
        input = dir.path().join("input").display(),
        output = dir.path().join("output").display(),
        endpoint = s3.endpoint,
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    let named = |text: &str| {
        assert!(
            text.contains(&format!("cachedFiles.{CACHE_ENTRY}")) && text.contains(uri),
            "the error names the entry and its URI:\n{text}"
        );
        assert!(text.contains("not found"), "and says why:\n{text}");
    };

    // Local mode: fails before a task starts (the default restart strategy never retries it).
    let started = Instant::now();
    let stderr = run_job_expecting_failure(&job, &[], &s3.env(), &dir.path().join("work"));
    named(&stderr);
    assert!(!stderr.contains("restarting"), "no restart:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // A JobManager fails the deployment before any TaskManager is there.
    let mut cluster = Cluster::new(dir.path(), job, s3.env());
    cluster.start_jobmanager(&["--exit-when-done"]);
    let status = cluster.wait_for_jobmanager_exit(Duration::from_secs(30));
    let log = cluster.jobmanager_log();
    assert!(!status.success(), "the job must fail:\n{log}");
    named(&log);
}
