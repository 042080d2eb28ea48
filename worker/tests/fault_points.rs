//! One crash per named fault point (weir_spec::fault_points): the real binary, in local mode,
//! checkpointing to a real S3 server, dies at exactly one step of the checkpoint, commit,
//! savepoint, restore or retention protocol; the next run must restore the right checkpoint
//! and end with every (key, seq) of `sequence-check` committed exactly once, no alert. Each
//! test also checks what its window specifically leaves behind (which parts are pending,
//! which published, which checkpoint exists).
//!
//! The Kafka sink's two points are tested in kafka_sink.rs and kafka_jobs.rs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::s3::S3Server;
use support::*;
use weir::fault_points::{FaultPoint, VARIABLE};

const KEYS: u64 = 20;

/// `sequence-check` at parallelism 2 checkpointing every 200 ms into S3, with its runs.
struct Job {
    s3: S3Server,
    dir: tempfile::TempDir,
    file: PathBuf,
    events_per_key: u64,
    runs: usize,
}

impl Job {
    /// `rate` events per second per subtask: 2 x 2,000 reads 20 x 4,000 events in ~20 s.
    fn new(events_per_key: u64, rate: u64) -> Job {
        Job::on_backend(events_per_key, rate, "rocksdb")
    }

    /// As `new`, with keyed state in `backend` (`state.backend`).
    fn on_backend(events_per_key: u64, rate: u64, backend: &str) -> Job {
        let s3 = S3Server::start();
        s3.create_bucket("weir");
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = format!(
            "job:\n  name: sequence-check\n  args: {{keys: {KEYS}, eventsPerKey: {events_per_key}, eventsPerSecond: {rate}, output: 's3://weir/output'}}\n\
             jobId: seq\nparallelism: 2\nstate: {{backend: {backend}}}\n\
             checkpointing: {{interval: 200ms, storage: 's3://weir/checkpoints', retained: 2, savepointDirectories: ['s3://weir/savepoints']}}\n\
             restartStrategy: {{type: none}}\n\
             s3: {{endpoint: '{}', forcePathStyle: true}}\n",
            s3.endpoint
        );
        let file = write_job(dir.path(), "job.yaml", &yaml);
        Job {
            s3,
            dir,
            file,
            events_per_key,
            runs: 0,
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn bucket(&self) -> PathBuf {
        self.s3.bucket_path("weir")
    }

    fn checkpoints(&self) -> PathBuf {
        self.bucket().join("checkpoints/seq")
    }

    fn latest_checkpoint(&self) -> u64 {
        completed_checkpoints(&self.checkpoints())
            .last()
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "no completed checkpoint in {}",
                    self.checkpoints().display()
                )
            })
    }

    fn env(&self, armed: Option<&str>) -> Vec<(String, String)> {
        let mut env = self.s3.env();
        if let Some(armed) = armed {
            env.push((VARIABLE.to_string(), armed.to_string()));
        }
        env
    }

    /// Starts a run with `armed` fault points; returns it and its log.
    fn spawn(&mut self, armed: Option<&str>, args: &[&str]) -> (std::process::Child, PathBuf) {
        let log = self.dir.path().join(format!("run-{}.log", self.runs));
        self.runs += 1;
        let child = spawn_job(&self.file, args, &self.env(armed), &self.work(), &log);
        (child, log)
    }

    /// Runs with `point` armed at its `hit`-th hit and checks the process died there (SIGABRT,
    /// and its own last words naming the point). Returns the log.
    fn crash_at(&mut self, point: FaultPoint, hit: u32, args: &[&str]) -> String {
        let (child, log) = self.spawn(Some(&format!("{}@{hit}", point.name())), args);
        wait_for_fault_point(child, &log, point, hit)
    }

    /// Runs the job to its end without fault points; checks the output is exactly-once and
    /// nothing is left pending. Returns stdout and stderr.
    fn finish(&mut self, args: &[&str]) -> String {
        self.runs += 1;
        let output = run_job(&self.file, args, &self.env(None), &self.work());
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let records = committed_json(&self.bucket().join("output"));
        verify_sequence_output(&records, KEYS, self.events_per_key)
            .unwrap_or_else(|e| panic!("output after the crash: {e}\n{text}"));
        assert_eq!(
            self.pending_parts(),
            Vec::<String>::new(),
            "pending parts left"
        );
        text
    }

    /// Names of the published output parts.
    fn published_parts(&self) -> Vec<String> {
        part_names(&self.bucket().join("output"))
    }

    /// Names of the parts in `output/_pending/`.
    fn pending_parts(&self) -> Vec<String> {
        part_names(&self.bucket().join("output/_pending"))
    }
}

fn parts_of(parts: &[String], checkpoint: u64) -> BTreeSet<String> {
    parts
        .iter()
        .filter(|p| part_checkpoint(p) == checkpoint)
        .cloned()
        .collect()
}

fn assert_restored_from(text: &str, uri: &str) {
    assert!(
        text.contains(&format!("restored from: {uri}\n")),
        "expected a restore from {uri}:\n{text}"
    );
}

on_each_backend! {
/// Every task acknowledged checkpoint C (its state and pending parts are in S3) but the
/// process dies before `_metadata`: C never existed. The next run restores the checkpoint
/// before it, and C's staged parts are never published (their records come again from the
/// restored offsets).
fn a_crash_before_metadata_restores_the_previous_checkpoint_and_drops_the_staged_parts(backend) {
    let mut job = Job::on_backend(4000, 2000, backend);
    job.crash_at(FaultPoint::CheckpointBeforeMetadata, 3, &[]);
    let completed = job.latest_checkpoint();
    let staged: Vec<String> = job
        .pending_parts()
        .into_iter()
        .filter(|p| part_checkpoint(p) > completed)
        .collect();
    assert!(
        !staged.is_empty(),
        "the acknowledged checkpoint above {completed} staged its parts"
    );
    let text = job.finish(&[]);
    assert_restored_from(&text, &format!("s3://weir/checkpoints/seq/chk-{completed}"));
    let published: BTreeSet<String> = job.published_parts().into_iter().collect();
    for part in &staged {
        assert!(
            !published.contains(part),
            "{part} of a checkpoint that never completed was published"
        );
    }
}
}

/// `_metadata` of checkpoint K is written, nobody was told: K exists, its parts are pending.
/// The next run restores exactly K and publishes exactly those parts.
fn completed_but_not_committed(point: FaultPoint, hit: u32) {
    let mut job = Job::new(4000, 2000);
    job.crash_at(point, hit, &[]);
    let completed = job.latest_checkpoint();
    let pending = parts_of(&job.pending_parts(), completed);
    assert!(
        !pending.is_empty(),
        "checkpoint {completed} completed and its parts wait to be published"
    );
    let text = job.finish(&[]);
    assert_restored_from(&text, &format!("s3://weir/checkpoints/seq/chk-{completed}"));
    let published = parts_of(&job.published_parts(), completed);
    assert!(
        pending.is_subset(&published),
        "checkpoint {completed}'s pending parts {pending:?} were published by the restore: {published:?}"
    );
}

#[test]
fn a_crash_after_metadata_before_any_sink_is_told_publishes_that_checkpoint_on_restore() {
    completed_but_not_committed(FaultPoint::CheckpointAfterMetadata, 3);
}

/// Hit 5: the first of the two sinks told about the third checkpoint.
#[test]
fn a_crash_in_a_sink_told_of_completion_before_it_commits_publishes_on_restore() {
    completed_but_not_committed(FaultPoint::SinkNotifiedBeforeCommit, 5);
}

/// The file sink dies having published some of a completed checkpoint's parts: the restore
/// publishes the rest and leaves the published ones as they are (never twice).
#[test]
fn a_crash_halfway_through_publishing_leaves_every_part_published_once() {
    let mut job = Job::new(4000, 2000);
    // Two parts per checkpoint (one per subtask): hit 3 is a part of the second checkpoint
    // with output.
    job.crash_at(FaultPoint::FileSinkPublishedPart, 3, &[]);
    let published_before: BTreeSet<String> = job.published_parts().into_iter().collect();
    let pending_before = job.pending_parts();
    let completed = job.latest_checkpoint();
    // The part published last before the crash belongs to the newest published checkpoint.
    let crashed_in = published_before
        .iter()
        .map(|p| part_checkpoint(p))
        .max()
        .expect("parts were published before the crash");
    assert!(crashed_in <= completed);
    let text = job.finish(&[]);
    assert_restored_from(&text, &format!("s3://weir/checkpoints/seq/chk-{completed}"));
    let published: BTreeSet<String> = job.published_parts().into_iter().collect();
    assert!(published_before.is_subset(&published));
    for part in pending_before
        .iter()
        .filter(|p| part_checkpoint(p) <= completed)
    {
        assert!(
            published.contains(part),
            "{part} of a completed checkpoint is published"
        );
    }
}

on_each_backend! {
/// Stop-with-savepoint: the savepoint is complete, the process dies before the sources stop
/// and before any sink commits it. Resuming from that savepoint (as the operator does)
/// publishes its parts and finishes the input exactly once.
fn a_crash_between_a_stop_savepoint_and_the_stop_resumes_from_the_savepoint(backend) {
    let mut job = Job::on_backend(4000, 1000, backend);
    let (child, log) = job.spawn(
        Some(FaultPoint::SavepointBeforeStop.name()),
        &["--rest-addr", "127.0.0.1:0"],
    );
    let port = logged_rest_port(&log);
    wait_until(Duration::from_secs(30), "a completed checkpoint", || {
        http(port, "GET", "/v1/jobs/seq/checkpoints", None).1["counts"]["completed"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    let (status, reply) = http(
        port,
        "POST",
        "/v1/jobs/seq/stop",
        Some(r#"{"targetDirectory": "s3://weir/savepoints/final"}"#),
    );
    assert_eq!(status, 202, "stop: {reply}");
    wait_for_fault_point(child, &log, FaultPoint::SavepointBeforeStop, 1);
    let savepoint = find_metadata_dir(&job.bucket().join("savepoints/final"))
        .expect("the savepoint's _metadata was written before the crash");
    let relative = savepoint
        .strip_prefix(job.bucket())
        .expect("inside the bucket")
        .display()
        .to_string();
    let uri = format!("s3://weir/{relative}");
    let text = job.finish(&["--restore", &uri]);
    assert_restored_from(&text, &uri);
}
}

fn find_metadata_dir(dir: &Path) -> Option<PathBuf> {
    if dir.join("_metadata").is_file() {
        return Some(dir.to_path_buf());
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .find_map(|e| find_metadata_dir(&e.path()))
}

on_each_backend! {
/// A restore dies after downloading one subtask's keyed state: nothing it did counts. The
/// next run restores the same checkpoint in full.
fn a_crash_halfway_through_a_restore_restores_the_same_checkpoint_next_time(backend) {
    let mut job = Job::on_backend(4000, 2000, backend);
    job.crash_at(FaultPoint::CheckpointAfterMetadata, 3, &[]);
    let completed = job.latest_checkpoint();
    // Two keyed state handles (one per subtask): the second download is the crash.
    let text = job.crash_at(FaultPoint::RestoreStateDownloaded, 2, &[]);
    assert!(
        text.contains(&format!(
            "checkpoint=s3://weir/checkpoints/seq/chk-{completed} "
        )),
        "the crashed run was restoring checkpoint {completed}:\n{text}"
    );
    assert_eq!(
        job.latest_checkpoint(),
        completed,
        "no checkpoint completed mid-restore"
    );
    let text = job.finish(&[]);
    assert_restored_from(&text, &format!("s3://weir/checkpoints/seq/chk-{completed}"));
}
}

/// Retention dies after deleting one shared state file of an expired incremental checkpoint
/// (its `_metadata` went first). Every shared file a retained checkpoint refers to is still
/// there (the restore opens them all), and the expired checkpoint's files retention did not
/// get to are removed as orphans by the next run. (RocksDB only: the heap backend's
/// checkpoints are full and share no files.)
#[test]
fn a_crash_halfway_through_retention_deletes_no_referenced_shared_file() {
    let mut job = Job::new(3000, 1000);
    job.crash_at(FaultPoint::RetentionDeletedSharedFile, 1, &[]);
    let completed = job.latest_checkpoint();
    let referenced = referenced_shared_files(&job.checkpoints());
    assert!(
        !referenced.is_empty(),
        "retained incremental checkpoints refer to shared files"
    );
    assert_referenced_shared_files_exist(&job.checkpoints(), "after the crash");
    let present = shared_files(&job.checkpoints());
    let left_behind: BTreeSet<String> = present.difference(&referenced).cloned().collect();
    let text = job.finish(&[]);
    assert_restored_from(&text, &format!("s3://weir/checkpoints/seq/chk-{completed}"));
    assert_eq!(
        completed_checkpoints(&job.checkpoints()).len(),
        2,
        "retention keeps 2"
    );
    let after = shared_files(&job.checkpoints());
    let still: Vec<_> = left_behind.intersection(&after).collect();
    assert!(
        still.is_empty(),
        "files of the expired checkpoint outlived the next run: {still:?}"
    );
    assert_referenced_shared_files_exist(&job.checkpoints(), "at the end");
}

/// Every shared file a retained checkpoint refers to is in `shared/`.
fn assert_referenced_shared_files_exist(checkpoints: &Path, when: &str) {
    let present = shared_files(checkpoints);
    let missing: Vec<_> = referenced_shared_files(checkpoints)
        .into_iter()
        .filter(|file| !present.contains(file))
        .collect();
    assert!(
        missing.is_empty(),
        "shared files referenced by retained checkpoints are missing {when}: {missing:?}"
    );
}

/// `shared/...` object names in the retained checkpoints' `_metadata` (JSON after a header).
fn referenced_shared_files(checkpoints: &Path) -> BTreeSet<String> {
    let names = regex::Regex::new(r#""(shared/[^"]+)""#).expect("regex");
    metadata_entries(checkpoints)
        .values()
        .filter(|text| text.starts_with("WEIR-CHECKPOINT "))
        .flat_map(|text| {
            names
                .captures_iter(text)
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every object under `shared/` (it has a folder per operator subtask and attempt).
fn shared_files(checkpoints: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut stack = vec![checkpoints.join("shared")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(checkpoints) {
                files.insert(relative.display().to_string());
            }
        }
    }
    files
}
