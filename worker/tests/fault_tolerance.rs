//! Crash, rescale and corruption: the guarantees users rely on, on real processes, real
//! RocksDB (and heap state) and a real S3 server.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use support::s3::S3Server;
use support::*;
use weir::fault_points::FaultPoint;

const KEYS: u64 = 20;

/// `sequence-check` with checkpoints, savepoints and output under `storage` (an s3:// or
/// file:// root). `state` is the inside of the document's `state:` mapping.
fn sequence_job(
    dir: &Path,
    storage: &str,
    s3_endpoint: Option<&str>,
    events_per_key: u64,
    rate: u64,
    state: &str,
) -> PathBuf {
    let s3 = s3_endpoint
        .map(|e| format!("s3: {{endpoint: '{e}', forcePathStyle: true}}\n"))
        .unwrap_or_default();
    let yaml = format!(
        "job:\n  name: sequence-check\n  args: {{keys: {KEYS}, eventsPerKey: {events_per_key}, eventsPerSecond: {rate}, output: '{storage}/output'}}\n\
         jobId: seq\nparallelism: 2\n\
         checkpointing: {{interval: 200ms, storage: '{storage}/checkpoints', retained: 2, savepointDirectories: ['{storage}/savepoints']}}\n\
         restartStrategy: {{type: none}}\nstate: {{{state}}}\n{s3}"
    );
    write_job(dir, "job.yaml", &yaml)
}

on_each_backend! {
fn sigkill_at_random_moments_keeps_output_exactly_once_on_s3(backend) {
    let s3 = S3Server::start();
    s3.create_bucket("weir");
    let dir = tempfile::tempdir().expect("tempdir");
    let events_per_key = 6000;
    // 2 subtasks x 5,000 events/s: about 12 s of input, so every kill lands mid-stream.
    let job = sequence_job(
        dir.path(),
        "s3://weir",
        Some(&s3.endpoint),
        events_per_key,
        5000,
        &format!("backend: {backend}"),
    );
    let env = s3.env();
    let checkpoints = s3.bucket_path("weir").join("checkpoints").join("seq");
    let mut rng = rand::rng();
    let mut kills = 0;
    while kills < 5 {
        let before = completed_checkpoints(&checkpoints)
            .last()
            .copied()
            .unwrap_or(0);
        let log = dir.path().join(format!("run-{kills}.log"));
        let mut child = spawn_job(&job, &[], &env, &dir.path().join("work"), &log);
        // Let at least one new checkpoint complete, then kill at a random moment after it.
        wait_until(Duration::from_secs(60), "a new checkpoint", || {
            completed_checkpoints(&checkpoints)
                .last()
                .copied()
                .unwrap_or(0)
                > before
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(0..700)));
        assert!(
            child.try_wait().expect("poll").is_none(),
            "job ended before it could be killed; see {}",
            log.display()
        );
        sigkill(&mut child);
        kills += 1;
    }
    let last_run = run_job(&job, &[], &env, &dir.path().join("work"));
    let stdout = String::from_utf8_lossy(&last_run.stdout);
    assert!(
        stdout.contains("restored from: s3://weir/checkpoints/seq/chk-"),
        "{stdout}"
    );
    let output_dir = s3.bucket_path("weir").join("output");
    let output = committed_json(&output_dir);
    verify_sequence_output(&output, KEYS, events_per_key)
        .expect("exactly-once output after 5 SIGKILLs");
    // Output was committed by several attempts: the kills really interrupted the stream.
    let attempts: std::collections::HashSet<String> = std::fs::read_dir(&output_dir)
        .expect("output dir")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .split('-')
                .nth(2)
                .map(str::to_string)
        })
        .collect();
    assert!(
        attempts.len() >= 3,
        "parts from {} attempts only",
        attempts.len()
    );
    assert!(
        std::fs::read_dir(output_dir.join("_pending")).map_or(true, |d| d.count() == 0),
        "no pending parts left behind"
    );
    // Retention keeps exactly the last two completed checkpoints.
    assert_eq!(completed_checkpoints(&checkpoints).len(), 2);
}
}

/// Runs at parallelism 2 until a checkpoint completes, kills it, then finishes at
/// `new_parallelism`, restoring from the latest checkpoint (`--restore latest`, the default)
/// or from that checkpoint's path given explicitly. `backend`: `state.backend`.
fn rescale_after_kill(new_parallelism: u32, explicit_path: bool, backend: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("file://{}", dir.path().join("store").display());
    let events_per_key = 3000;
    let job = sequence_job(
        dir.path(),
        &storage,
        None,
        events_per_key,
        4000,
        &format!("backend: {backend}"),
    );
    let checkpoints = dir.path().join("store/checkpoints/seq");
    let mut child = spawn_job(
        &job,
        &[],
        &[],
        &dir.path().join("work"),
        &dir.path().join("p2.log"),
    );
    wait_until(
        Duration::from_secs(60),
        "two checkpoints at parallelism 2",
        || completed_checkpoints(&checkpoints).len() >= 2,
    );
    assert!(
        child.try_wait().expect("poll").is_none(),
        "job ended too early"
    );
    sigkill(&mut child);
    let restored_from = completed_checkpoints(&checkpoints);
    let latest = restored_from.last().expect("a checkpoint");
    let path = format!("{storage}/checkpoints/seq/chk-{latest}");
    let parallelism = new_parallelism.to_string();
    let mut args = vec!["--parallelism", parallelism.as_str()];
    if explicit_path {
        args.extend(["--restore", path.as_str()]);
    }
    let output = run_job(&job, &args, &[], &dir.path().join("work"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("restored from: {path}")),
        "{stdout}"
    );
    let records = committed_json(&dir.path().join("store/output"));
    verify_sequence_output(&records, KEYS, events_per_key)
        .unwrap_or_else(|e| panic!("rescale 2 -> {new_parallelism} on {backend}: {e}"));
}

on_each_backend! {
fn restore_at_parallelism_4_redistributes_key_groups(backend) {
    rescale_after_kill(4, false, backend);
}
}

on_each_backend! {
fn restore_at_parallelism_1_from_an_explicit_checkpoint_path_merges_key_groups(backend) {
    rescale_after_kill(1, true, backend);
}
}

/// Leaves a crashed run's checkpoints behind and returns (job file, latest checkpoint dir).
/// The run dies right after writing the second checkpoint's `_metadata`, before any sink
/// committed it, so that checkpoint's output is still pending: the restore must publish it.
/// `incremental: false` makes every checkpoint one full snapshot object per keyed subtask.
fn checkpointed_run(dir: &Path, incremental: bool) -> (PathBuf, PathBuf) {
    let storage = format!("file://{}", dir.join("store").display());
    let state = format!("incrementalCheckpoints: {incremental}");
    let job = sequence_job(dir, &storage, None, 2000, 4000, &state);
    let checkpoints = dir.join("store/checkpoints/seq");
    let log = dir.join("first.log");
    let point = FaultPoint::CheckpointAfterMetadata;
    let armed = [(
        weir::fault_points::VARIABLE.to_string(),
        format!("{}@2", point.name()),
    )];
    let child = spawn_job(&job, &[], &armed, &dir.join("work"), &log);
    wait_for_fault_point(child, &log, point, 2);
    let latest = *completed_checkpoints(&checkpoints)
        .last()
        .expect("checkpoint");
    let checkpoint = checkpoints.join(format!("chk-{latest}"));
    assert!(
        !sink_pending_parts(&checkpoint).is_empty(),
        "the crashed run left the checkpoint's output pending"
    );
    (job, checkpoint)
}

fn state_objects(checkpoint: &Path) -> Vec<PathBuf> {
    let mut objects: Vec<PathBuf> = std::fs::read_dir(checkpoint)
        .expect("checkpoint dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "state"))
        .collect();
    objects.sort();
    assert!(!objects.is_empty(), "checkpoint has keyed state objects");
    objects
}

#[test]
fn flipped_byte_in_state_object_fails_restore_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, checkpoint) = checkpointed_run(dir.path(), false);
    let victim = state_objects(&checkpoint).remove(0);
    let mut bytes = std::fs::read(&victim).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&victim, bytes).expect("write");
    let stderr = failed_restore(&job, dir.path(), Some(&checkpoint));
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(
        stderr.contains(&name),
        "error should name {name}:\n{stderr}"
    );
}

#[test]
fn deleted_state_object_fails_restore_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, checkpoint) = checkpointed_run(dir.path(), false);
    let victim = state_objects(&checkpoint).pop().expect("object");
    std::fs::remove_file(&victim).expect("delete");
    let stderr = failed_restore(&job, dir.path(), Some(&checkpoint));
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(stderr.contains("state object is missing"), "{stderr}");
    assert!(
        stderr.contains(&name),
        "error should name {name}:\n{stderr}"
    );
}

/// Runs `job`, which must fail to restore `checkpoint`, and checks it published nothing of
/// its own. `checkpoint: None` when the restore cannot even read the checkpoint's
/// `_metadata`: then the output directory (published and pending parts) must be exactly as
/// before. Otherwise the sinks first settle that completed checkpoint, as every restore of it
/// does before any task starts (a Kafka producer of the new attempt would fence the
/// checkpoint's transactions): its pending parts are published and pending parts of
/// checkpoints that never completed are dropped. So the published parts must be exactly
/// those from before plus the checkpoint's pending ones, and no pending part may appear.
/// Returns the run's stderr.
fn failed_restore(job: &Path, dir: &Path, checkpoint: Option<&Path>) -> String {
    let before = output_files(dir);
    let stderr = run_job_expecting_failure(job, &[], &[], &dir.join("work"));
    let after = output_files(dir);
    let Some(checkpoint) = checkpoint else {
        assert_eq!(after, before, "a failed restore publishes nothing");
        return stderr;
    };
    let output = dir.join("store/output");
    let pending = output.join("_pending");
    let is_pending = |p: &&PathBuf| p.starts_with(&pending);
    let mut expected_published: Vec<PathBuf> = before
        .iter()
        .filter(|p| !is_pending(p))
        .cloned()
        .chain(
            sink_pending_parts(checkpoint)
                .into_iter()
                .map(|name| output.join(name)),
        )
        .collect();
    expected_published.sort();
    expected_published.dedup();
    let published: Vec<PathBuf> = after.iter().filter(|p| !is_pending(p)).cloned().collect();
    assert_eq!(
        published, expected_published,
        "a failed restore publishes only the output of the checkpoint it restores"
    );
    for part in after.iter().filter(is_pending) {
        assert!(
            before.contains(part),
            "a failed restore writes no new output: {}",
            part.display()
        );
    }
    stderr
}

/// The part names the sinks' pending state in `checkpoint`'s `_metadata` lists.
fn sink_pending_parts(checkpoint: &Path) -> Vec<String> {
    let json = metadata_json(checkpoint);
    json["operators"]
        .as_object()
        .expect("operators")
        .values()
        .flat_map(|op| op["subtasks"].as_array().expect("subtasks").clone())
        .filter_map(|s| s["operatorState"].get("pending").cloned())
        .flat_map(|p| p["entries"].as_array().expect("entries").clone())
        .map(|e| e["name"].as_str().expect("part name").to_owned())
        .collect()
}

fn metadata_json(checkpoint: &Path) -> serde_json::Value {
    let metadata = std::fs::read_to_string(checkpoint.join("_metadata")).expect("_metadata");
    serde_json::from_str(metadata.split_once('\n').expect("header").1).expect("json")
}

/// Every file under `store/output` (published parts and pending ones), sorted.
fn output_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(path: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&dir.join("store/output"), &mut found);
    found.sort();
    found
}

/// The shared SST files the `_metadata` of `checkpoint` refers to, as local paths.
fn shared_files(checkpoint: &Path) -> Vec<PathBuf> {
    let json = metadata_json(checkpoint);
    let job_folder = checkpoint.parent().expect("job folder");
    let mut files: Vec<PathBuf> = json["operators"]
        .as_object()
        .expect("operators")
        .values()
        .flat_map(|op| op["subtasks"].as_array().expect("subtasks").clone())
        .filter_map(|s| s.get("keyedIncremental").cloned())
        .flat_map(|h| h["shared"].as_array().expect("shared").clone())
        .map(|f| job_folder.join(f["object"].as_str().expect("object")))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "an incremental checkpoint refers to SST files"
    );
    files
}

#[test]
fn flipped_byte_in_shared_sst_file_fails_restore_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, checkpoint) = checkpointed_run(dir.path(), true);
    let victim = shared_files(&checkpoint).remove(0);
    let mut bytes = std::fs::read(&victim).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    // A new file: the old one may be a hard link into the killed run's RocksDB.
    std::fs::remove_file(&victim).expect("unlink");
    std::fs::write(&victim, bytes).expect("write");
    let stderr = failed_restore(&job, dir.path(), Some(&checkpoint));
    let name = victim.to_string_lossy().into_owned();
    assert!(stderr.contains("crc32"), "{stderr}");
    assert!(
        stderr.contains(&name),
        "error should name {name}:\n{stderr}"
    );
}

#[test]
fn deleted_shared_sst_file_fails_restore_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, checkpoint) = checkpointed_run(dir.path(), true);
    let victim = shared_files(&checkpoint).pop().expect("file");
    std::fs::remove_file(&victim).expect("delete");
    let stderr = failed_restore(&job, dir.path(), Some(&checkpoint));
    let name = victim.to_string_lossy().into_owned();
    assert!(stderr.contains("missing"), "{stderr}");
    assert!(
        stderr.contains(&name),
        "error should name {name}:\n{stderr}"
    );
}

#[test]
fn damaged_metadata_fails_restore_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, checkpoint) = checkpointed_run(dir.path(), true);
    let metadata = checkpoint.join("_metadata");
    let mut bytes = std::fs::read(&metadata).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&metadata, bytes).expect("write");
    let stderr = failed_restore(&job, dir.path(), None);
    assert!(stderr.contains("_metadata"), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
}

#[test]
fn explicit_restore_path_that_does_not_exist_fails_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("file://{}", dir.path().join("store").display());
    let job = sequence_job(dir.path(), &storage, None, 10, 1000, "");
    let missing = format!("{storage}/checkpoints/seq/chk-42");
    let stderr = run_job_expecting_failure(
        &job,
        &["--restore", &missing],
        &[],
        &dir.path().join("work"),
    );
    assert!(stderr.contains("chk-42/_metadata"), "{stderr}");
    assert!(stderr.contains("not a completed checkpoint"), "{stderr}");
}

/// A job moves between backends through a savepoint and a checkpoint with its state intact:
/// heap, stop with a savepoint; RocksDB restored from it, killed after an incremental
/// checkpoint; heap again, restored from that checkpoint's RocksDB files, to the end. Every
/// key's sequence is then complete and counted exactly once.
#[test]
fn state_moves_heap_to_rocksdb_through_a_savepoint_and_back_through_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("file://{}", dir.path().join("store").display());
    let events_per_key = 3000;
    let job_on = |backend: &str| {
        let job = sequence_job(
            dir.path(),
            &storage,
            None,
            events_per_key,
            2000,
            &format!("backend: {backend}, incrementalCheckpoints: true"),
        );
        let moved = dir.path().join(format!("{backend}.yaml"));
        std::fs::rename(job, &moved).expect("rename job");
        moved
    };
    let checkpoints = dir.path().join("store/checkpoints/seq");
    let work = dir.path().join("work");

    let savepoint = format!("{storage}/savepoints/from-heap");
    run_then_stop_with_savepoint(
        &job_on("heap"),
        "seq",
        &checkpoints,
        1,
        &savepoint,
        &work,
        &dir.path().join("heap.log"),
    );
    let after_heap = committed_json(&dir.path().join("store/output")).len();
    assert!(after_heap > 0, "the heap run committed output");

    let rocksdb_log = dir.path().join("rocksdb.log");
    let before = completed_checkpoints(&checkpoints)
        .last()
        .copied()
        .unwrap_or(0);
    let mut rocksdb = spawn_job(
        &job_on("rocksdb"),
        &["--restore", &savepoint],
        &[],
        &work,
        &rocksdb_log,
    );
    wait_until(
        Duration::from_secs(60),
        "two checkpoints on RocksDB",
        || {
            completed_checkpoints(&checkpoints)
                .last()
                .is_some_and(|&latest| latest > before + 1)
        },
    );
    assert!(
        rocksdb.try_wait().expect("poll").is_none(),
        "the RocksDB run ended before it could be killed; see {}",
        rocksdb_log.display()
    );
    sigkill(&mut rocksdb);
    let rocksdb_text = std::fs::read_to_string(&rocksdb_log).expect("log");
    assert!(
        rocksdb_text.contains("keyed state restored") && rocksdb_text.contains(&savepoint),
        "the RocksDB run restored the heap savepoint: {rocksdb_text}"
    );
    let latest = *completed_checkpoints(&checkpoints)
        .last()
        .expect("checkpoint");
    let checkpoint = format!("{storage}/checkpoints/seq/chk-{latest}");
    // Asserts the RocksDB run's checkpoint is incremental (refers to shared SST files).
    shared_files(
        &dir.path()
            .join(format!("store/checkpoints/seq/chk-{latest}")),
    );

    let output = run_job(&job_on("heap"), &["--restore", &checkpoint], &[], &work);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("restored from: {checkpoint}")),
        "{stdout}"
    );
    let records = committed_json(&dir.path().join("store/output"));
    assert!(
        records.len() > after_heap,
        "the later runs committed output"
    );
    verify_sequence_output(&records, KEYS, events_per_key)
        .expect("exactly-once output across heap -> RocksDB -> heap");
}
