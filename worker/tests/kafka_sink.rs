//! The Kafka sink against a real Kafka-protocol broker (noida-db) and the real `weir-worker
//! local` binary: exactly-once through SIGKILLs and crashes on both sides of the Kafka commit,
//! zombie fencing, rescaling, at-least-once and `none`, configuration errors.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use support::kafka::{Isolation, KafkaBroker, ReadRecord};
use support::*;
use weir::api::{RecoverContext, SinkContext, SinkFactory};
use weir::connectors::kafka::{KafkaSink, KafkaSinkSpec};
use weir::fault_points::{self, FaultPoint};

const KEYS: u64 = 10;
const TOPIC: &str = "checked";

/// `sequence-check` writing to the Kafka topic [`TOPIC`], checkpointing under `dir/store`.
struct SequenceToKafka<'a> {
    broker: &'a KafkaBroker,
    dir: &'a Path,
    events_per_key: u64,
    rate: u64,
    parallelism: u32,
    delivery: Option<&'static str>,
    checkpoint_interval: Option<&'static str>,
}

impl<'a> SequenceToKafka<'a> {
    fn new(broker: &'a KafkaBroker, dir: &'a Path) -> Self {
        SequenceToKafka {
            broker,
            dir,
            events_per_key: 2000,
            rate: 2000,
            parallelism: 2,
            delivery: None,
            checkpoint_interval: Some("300ms"),
        }
    }

    fn events_per_key(mut self, n: u64) -> Self {
        self.events_per_key = n;
        self
    }

    fn rate(mut self, per_second: u64) -> Self {
        self.rate = per_second;
        self
    }

    fn parallelism(mut self, p: u32) -> Self {
        self.parallelism = p;
        self
    }

    fn delivery(mut self, delivery: &'static str) -> Self {
        self.delivery = Some(delivery);
        self
    }

    fn without_checkpoints(mut self) -> Self {
        self.checkpoint_interval = None;
        self
    }

    fn storage(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The job's checkpoint folder.
    fn checkpoints(&self) -> PathBuf {
        self.storage().join("checkpoints/seq")
    }

    /// Staged batches not yet committed (or not yet cleaned up).
    fn staged_objects(&self) -> Vec<PathBuf> {
        let dir = self
            .checkpoints()
            .join(format!("kafka-staging/weir-seq-{TOPIC}"));
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn write(&self) -> PathBuf {
        let delivery = self
            .delivery
            .map(|d| format!(", delivery: {d}"))
            .unwrap_or_default();
        let checkpointing = self
            .checkpoint_interval
            .map(|interval| {
                format!(
                    "checkpointing: {{interval: {interval}, storage: 'file://{}/checkpoints', retained: 2}}\n",
                    self.storage().display()
                )
            })
            .unwrap_or_default();
        let yaml = format!(
            "job:\n  name: sequence-check\n  args: {{keys: {KEYS}, eventsPerKey: {}, eventsPerSecond: {}, output: {{kafka: {{topic: {TOPIC}{delivery}}}}}}}\n\
             jobId: seq\nparallelism: {}\n{checkpointing}restartStrategy: {{type: none}}\n{}\n",
            self.events_per_key,
            self.rate,
            self.parallelism,
            self.broker.job_section()
        );
        write_job(self.dir, "job.yaml", &yaml)
    }

    fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    fn latest_checkpoint(&self) -> u64 {
        completed_checkpoints(&self.checkpoints())
            .last()
            .copied()
            .unwrap_or(0)
    }
}

fn broker_with_topic() -> KafkaBroker {
    let broker = KafkaBroker::start();
    broker.create_topic(TOPIC, 3);
    broker
}

/// The JSON values of `records`, checking each record's key is its `key` field.
fn values(records: &[ReadRecord]) -> Vec<serde_json::Value> {
    records
        .iter()
        .map(|r| {
            let value: serde_json::Value = serde_json::from_str(r.value_str())
                .unwrap_or_else(|e| panic!("bad record {:?}: {e}", r.value_str()));
            assert_eq!(
                r.key.as_deref(),
                Some(value["key"].to_string().as_bytes()),
                "record keyed by its key"
            );
            value
        })
        .collect()
}

/// Records a read_uncommitted reader sees that a read_committed one does not: those of
/// aborted (or still open) transactions.
/// `sequence-check` into Kafka at parallelism 1 (1,000 events per key), run with `point`
/// armed until it aborts there. Returns the job and its document.
fn crash_at<'a>(
    broker: &'a KafkaBroker,
    dir: &'a Path,
    point: FaultPoint,
) -> (SequenceToKafka<'a>, PathBuf) {
    let job = SequenceToKafka::new(broker, dir)
        .parallelism(1)
        .events_per_key(1000)
        .rate(2000);
    let file = job.write();
    let crash_log = dir.join("crash.log");
    let env = [(fault_points::VARIABLE.to_string(), point.name().to_string())];
    let child = spawn_job(&file, &[], &env, &job.work_dir(), &crash_log);
    wait_for_fault_point(child, &crash_log, point, 1);
    (job, file)
}

fn uncommitted_only(broker: &KafkaBroker) -> usize {
    let committed = broker.read_all(TOPIC, Isolation::ReadCommitted).len();
    let all = broker.read_all(TOPIC, Isolation::ReadUncommitted).len();
    all - committed
}

fn assert_exactly_once(broker: &KafkaBroker, events_per_key: u64) -> usize {
    let committed = values(&broker.read_all(TOPIC, Isolation::ReadCommitted));
    verify_sequence_output(&committed, KEYS, events_per_key)
        .unwrap_or_else(|e| panic!("read_committed output: {e}"));
    assert_eq!(
        broker.partitions_with_open_transactions(TOPIC),
        Vec::<i32>::new(),
        "no transaction left open"
    );
    committed.len()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn sigkill_at_random_moments_keeps_kafka_output_exactly_once() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    // 2 subtasks x 1,500 events/s, 30,000 events: about 10 s of input.
    let job = SequenceToKafka::new(&broker, dir.path())
        .events_per_key(3000)
        .rate(1500);
    let file = job.write();
    let mut rng = rand::rng();
    for kill in 0..6 {
        let before = job.latest_checkpoint();
        let log = dir.path().join(format!("run-{kill}.log"));
        let mut child = spawn_job(&file, &[], &[], &job.work_dir(), &log);
        wait_until(Duration::from_secs(60), "a new checkpoint", || {
            job.latest_checkpoint() > before
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
        assert!(
            child.try_wait().expect("poll").is_none(),
            "job ended before kill {kill}:\n{}",
            log_of(&log)
        );
        sigkill(&mut child);
    }
    let last = run_job(&file, &[], &[], &job.work_dir());
    let stdout = String::from_utf8_lossy(&last.stdout);
    assert!(stdout.contains("restored from: file://"), "{stdout}");

    let committed = assert_exactly_once(&broker, 3000);
    let aborted = uncommitted_only(&broker);
    let logs: String = (0..6)
        .map(|kill| log_of(&dir.path().join(format!("run-{kill}.log"))))
        .chain([String::from_utf8_lossy(&last.stderr).into_owned()])
        .collect();
    let skipped = logs
        .matches("staged Kafka records were committed before the restart")
        .count();
    let recommitted = logs
        .matches("committed staged Kafka records of a completed checkpoint")
        .count();
    println!(
        "read_committed: {committed} records; only read_uncommitted sees {aborted} more (aborted transactions); \
         recoveries found {skipped} restored batches already committed (marker) and committed {recommitted}"
    );
    // Whether a kill fell between a commit and the next checkpoint is luck here; that window
    // is tested on purpose by `a_crash_after_the_kafka_commit_is_not_committed_again`.
    assert_eq!(
        job.staged_objects(),
        Vec::<PathBuf>::new(),
        "staged batches cleaned up"
    );
}

/// A process that dies between the checkpoint's completion and its Kafka commit leaves the
/// records staged; the restarted job's recovery commits them, once.
#[test]
fn a_crash_after_checkpoint_completion_before_the_kafka_commit_is_committed_by_recovery() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, file) = crash_at(&broker, dir.path(), FaultPoint::KafkaSinkBeforeTransaction);
    let crashed_at = job.latest_checkpoint();
    assert!(crashed_at > 0, "a checkpoint completed before the crash");
    assert!(!job.staged_objects().is_empty(), "its records are staged");
    assert!(
        broker
            .read_all(TOPIC, Isolation::ReadUncommitted)
            .is_empty(),
        "nothing reached Kafka before the commit"
    );

    let output = run_job(&file, &[], &[], &job.work_dir());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("committed staged Kafka records of a completed checkpoint")
            && stderr.contains(&format!("checkpoint_id={crashed_at}")),
        "recovery committed checkpoint {crashed_at}:\n{stderr}"
    );
    assert_exactly_once(&broker, 1000);
    assert_eq!(uncommitted_only(&broker), 0);
    assert_eq!(job.staged_objects(), Vec::<PathBuf>::new());
}

/// A process that dies right after a checkpoint's Kafka transaction committed, before its
/// staged object is deleted (and before any later checkpoint records the batch as done): the
/// restored checkpoint still names the batch, and recovery must find it committed through the
/// marker and not produce it again.
#[test]
fn a_crash_after_the_kafka_commit_is_not_committed_again() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, file) = crash_at(&broker, dir.path(), FaultPoint::KafkaSinkCommitted);
    let crashed_at = job.latest_checkpoint();
    let committed_before = broker.read_all(TOPIC, Isolation::ReadCommitted).len();
    assert!(
        committed_before > 0,
        "the batch was committed before the crash"
    );
    assert!(
        !job.staged_objects().is_empty(),
        "its staged object is still there"
    );

    let output = run_job(&file, &[], &[], &job.work_dir());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("staged Kafka records were committed before the restart")
            && stderr.contains(&format!("checkpoint_id={crashed_at}")),
        "recovery found checkpoint {crashed_at}'s batch committed (marker):\n{stderr}"
    );
    assert_exactly_once(&broker, 1000);
    assert_eq!(job.staged_objects(), Vec::<PathBuf>::new());
}

/// A process that dies inside the Kafka transaction leaves it open with its records on the
/// broker: recovery fences the id (aborting it) and commits the batch again. A read_uncommitted
/// reader sees those records twice; read_committed sees each once.
#[test]
fn a_crash_inside_the_kafka_transaction_is_aborted_by_recovery() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, file) = crash_at(&broker, dir.path(), FaultPoint::KafkaSinkInTransaction);
    let in_open_transaction = broker.read_all(TOPIC, Isolation::ReadUncommitted).len();
    assert!(
        in_open_transaction > 0,
        "the open transaction's records are on the broker"
    );
    assert!(
        !broker.partitions_with_open_transactions(TOPIC).is_empty(),
        "the transaction is open"
    );
    assert!(broker.read_all(TOPIC, Isolation::ReadCommitted).is_empty());

    let output = run_job(&file, &[], &[], &job.work_dir());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fenced the transactional id"), "{stderr}");
    let committed = assert_exactly_once(&broker, 1000);
    let aborted = uncommitted_only(&broker);
    println!(
        "read_committed: {committed} records; read_uncommitted: {aborted} more, of the aborted transaction ({in_open_transaction} were on the broker at the crash)"
    );
    assert_eq!(
        aborted, in_open_transaction,
        "exactly the aborted transaction's records are invisible to read_committed"
    );
}

#[test]
fn restore_at_parallelism_1_from_a_parallelism_2_checkpoint_keeps_kafka_output_exactly_once() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = SequenceToKafka::new(&broker, dir.path())
        .events_per_key(2000)
        .rate(1500);
    let file = job.write();
    let log = dir.path().join("p2.log");
    let mut child = spawn_job(&file, &[], &[], &job.work_dir(), &log);
    wait_until(Duration::from_secs(60), "two checkpoints at p=2", || {
        completed_checkpoints(&job.checkpoints()).len() >= 2
    });
    assert!(
        child.try_wait().expect("poll").is_none(),
        "{}",
        log_of(&log)
    );
    sigkill(&mut child);

    let output = run_job(&file, &["--parallelism", "1"], &[], &job.work_dir());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Both old writers' ids are fenced, though only one writer runs now.
    for id in ["weir-seq-checked-0", "weir-seq-checked-1"] {
        assert!(stderr.contains(id), "recovery fenced {id}:\n{stderr}");
    }
    let started = Instant::now();
    assert_exactly_once(&broker, 2000);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "read_committed returned promptly ({:?})",
        started.elapsed()
    );
}

/// A writer whose id a newer writer initialised (a zombie: an old attempt still running) can
/// no longer commit, and none of its records become visible.
#[test]
fn a_zombie_writer_is_fenced_by_a_new_writer_with_the_same_transactional_id() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = weir::spec::JobDocument::from_yaml(
        &format!(
            "job: {{name: zombie}}\ncheckpointing: {{interval: 1s, storage: 'file://{}'}}\n{}",
            dir.path().join("store").display(),
            broker.job_section()
        ),
        "job.yaml",
    )
    .expect("document");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = KafkaSink::json(
        KafkaSinkSpec {
            topic: TOPIC.into(),
            delivery: None,
            transactional_id_prefix: None,
        },
        "output.kafka",
        |_: &String| None::<String>,
    );
    let ctx = |attempt: &str| SinkContext {
        subtask: 0,
        parallelism: 1,
        rt: rt.handle().clone(),
        doc: Arc::new(doc.clone()),
        local_dir: dir.path().join(attempt),
        attempt_id: format!("0000000001-{attempt}"),
        cached_files: Default::default(),
    };
    let mut zombie = sink.create_writer(&ctx("0000000a")).expect("zombie writer");
    zombie.write("from the zombie".into()).expect("write");
    zombie.pre_commit(1).expect("stage");

    let mut successor = sink.create_writer(&ctx("0000000b")).expect("new writer");
    let fenced = zombie.commit(1).expect_err("the zombie is fenced");
    assert!(fenced.is_recoverable(), "{fenced}");
    println!("zombie's commit: {fenced}");

    successor.write("from the successor".into()).expect("write");
    successor.pre_commit(2).expect("stage");
    successor.commit(2).expect("commit");
    let committed: Vec<String> = broker
        .read_all(TOPIC, Isolation::ReadCommitted)
        .iter()
        .map(|r| r.value_str().to_string())
        .collect();
    assert_eq!(committed, vec!["\"from the successor\"".to_string()]);
    assert_eq!(
        broker.partitions_with_open_transactions(TOPIC),
        Vec::<i32>::new()
    );
}

/// Recovery through the library API: batches the marker covers are skipped, the others are
/// committed, a second recovery changes nothing, a missing batch above the marker is a corrupt
/// checkpoint, and staged objects no entry names are deleted up to the claim only.
#[test]
fn recovery_commits_exactly_the_batches_above_the_marker() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let doc = Arc::new(
        weir::spec::JobDocument::from_yaml(
            &format!(
                "job: {{name: recovery}}\ncheckpointing: {{interval: 1s, storage: 'file://{}'}}\n{}",
                store.display(),
                broker.job_section()
            ),
            "job.yaml",
        )
        .expect("document"),
    );
    let staging = store.join(format!("recovery/kafka-staging/weir-recovery-{TOPIC}"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = KafkaSink::json(
        KafkaSinkSpec {
            topic: TOPIC.into(),
            delivery: None,
            transactional_id_prefix: None,
        },
        "output.kafka",
        |_: &String| None::<String>,
    );
    let ctx = |attempt: &str| SinkContext {
        subtask: 0,
        parallelism: 1,
        rt: rt.handle().clone(),
        doc: doc.clone(),
        local_dir: dir.path().join(attempt),
        attempt_id: format!("0000000001-{attempt}"),
        cached_files: Default::default(),
    };
    let recover = |pending: Vec<serde_json::Value>, claimed: u64| {
        sink.recover(
            pending,
            &RecoverContext {
                rt: rt.handle().clone(),
                doc: doc.clone(),
                claimed: Some(claimed),
            },
        )
    };
    // Sorted: unkeyed records spread over the partitions.
    let committed = || -> Vec<String> {
        let mut values: Vec<String> = broker
            .read_all(TOPIC, Isolation::ReadCommitted)
            .iter()
            .map(|r| r.value_str().to_string())
            .collect();
        values.sort();
        values
    };

    let mut writer = sink.create_writer(&ctx("0000000a")).expect("writer");
    writer.write("a".into()).expect("write");
    let mut pending = writer.pre_commit(1).expect("stage 1");
    writer.commit(1).expect("commit 1");
    writer.write("b".into()).expect("write");
    // The process dies after checkpoint 2 completed, before its commit.
    pending.extend(writer.pre_commit(2).expect("stage 2"));
    drop(writer);
    // A checkpoint that never completed, and one of a newer JobManager's (above the claim).
    std::fs::write(staging.join("0000-0000000001-0000000a-0000000003"), "x").expect("orphan");
    std::fs::write(staging.join("0000-0000000009-0000000b-0000000010"), "x").expect("newer");

    recover(pending.clone(), 4).expect("recover");
    assert_eq!(committed(), vec!["\"a\"", "\"b\""]);
    let left: Vec<String> = std::fs::read_dir(&staging)
        .expect("staging")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["0000-0000000009-0000000b-0000000010".to_string()]
    );

    recover(pending, 4).expect("recover again");
    assert_eq!(
        committed(),
        vec!["\"a\"", "\"b\""],
        "recovery is idempotent"
    );

    let mut writer = sink.create_writer(&ctx("0000000c")).expect("writer");
    writer.write("c".into()).expect("write");
    let pending = writer.pre_commit(5).expect("stage 5");
    drop(writer);
    for object in std::fs::read_dir(&staging).expect("staging").flatten() {
        if object
            .file_name()
            .to_string_lossy()
            .ends_with("-0000000005")
        {
            std::fs::remove_file(object.path()).expect("lose the staged batch");
        }
    }
    let err = recover(pending, 6).expect_err("records would be lost");
    assert!(
        matches!(err, weir::Error::CorruptCheckpoint { ref object, .. } if object.ends_with("-0000000005")),
        "{err}"
    );
    assert_eq!(committed(), vec!["\"a\"", "\"b\""]);
}

#[test]
fn at_least_once_delivers_every_record_through_a_sigkill() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = SequenceToKafka::new(&broker, dir.path())
        .delivery("at-least-once")
        .events_per_key(2000)
        .rate(1500);
    let file = job.write();
    let log = dir.path().join("first.log");
    let mut child = spawn_job(&file, &[], &[], &job.work_dir(), &log);
    wait_until(Duration::from_secs(60), "two checkpoints", || {
        completed_checkpoints(&job.checkpoints()).len() >= 2
    });
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        child.try_wait().expect("poll").is_none(),
        "{}",
        log_of(&log)
    );
    sigkill(&mut child);
    run_job(&file, &[], &[], &job.work_dir());

    let records = values(&broker.read_all(TOPIC, Isolation::ReadCommitted));
    assert!(
        records.iter().all(|r| r.get("alert").is_none()),
        "no alerts"
    );
    let mut seen: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for r in &records {
        *seen
            .entry((
                r["key"].as_u64().expect("key"),
                r["seq"].as_u64().expect("seq"),
            ))
            .or_default() += 1;
    }
    assert_eq!(seen.len() as u64, KEYS * 2000, "every record at least once");
    let duplicates = records.len() - seen.len();
    println!(
        "at-least-once: {} records, {duplicates} duplicates",
        records.len()
    );
    assert!(
        job.staged_objects().is_empty(),
        "at-least-once stages nothing"
    );
}

#[test]
fn delivery_none_writes_every_record_of_an_undisturbed_run() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = SequenceToKafka::new(&broker, dir.path())
        .delivery("none")
        .without_checkpoints()
        .events_per_key(500)
        .rate(5000);
    run_job(&job.write(), &[], &[], &job.work_dir());
    let records = values(&broker.read_all(TOPIC, Isolation::ReadUncommitted));
    verify_sequence_output(&records, KEYS, 500).expect("every record once");
}

#[test]
fn exactly_once_without_checkpointing_commits_one_transaction_per_subtask_at_the_end() {
    let broker = broker_with_topic();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = SequenceToKafka::new(&broker, dir.path())
        .delivery("exactly-once")
        .without_checkpoints()
        .events_per_key(500)
        .rate(5000);
    let output = run_job(&job.write(), &[], &[], &job.work_dir());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("committed the records of the end of input in one Kafka transaction")
            .count(),
        2,
        "{stderr}"
    );
    assert_exactly_once(&broker, 500);
}

#[test]
fn an_unknown_topic_fails_naming_the_setting() {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let job = SequenceToKafka::new(&broker, dir.path()).events_per_key(10);
    let stderr = run_job_expecting_failure(&job.write(), &[], &[], &job.work_dir());
    assert!(
        stderr.contains("job.args.output.kafka.topic") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_bootstrap_server_fails_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let yaml = format!(
        "job:\n  name: sequence-check\n  args: {{keys: 1, eventsPerKey: 10, output: {{kafka: {{topic: {TOPIC}}}}}}}\n\
         restartStrategy: {{type: none}}\nkafka: {{bootstrapServers: '127.0.0.1:{port}'}}\n"
    );
    let file = write_job(dir.path(), "job.yaml", &yaml);
    let started = Instant::now();
    let stderr = run_job_expecting_failure(&file, &[], &[], &dir.path().join("work"));
    assert!(
        stderr.contains("kafka.bootstrapServers") && stderr.contains(&format!("127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
