//! Built-in jobs reading and writing Kafka, on the real `weir-worker local` binary and a real
//! Kafka-protocol broker (noida-db): `sequence-check` Kafka → Kafka stays exactly-once through
//! SIGKILLs and crashes on both sides of the Kafka commit; the reference notes' example
//! (`minute-bars`: Kafka → event-time windows → Kafka) gives the same bars as from files;
//! bad connection settings fail naming the setting.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use support::kafka::{Isolation, KafkaBroker, ReadRecord};
use support::*;
use weir::fault_points::{self, FaultPoint};

const KEYS: u64 = 20;
const EVENTS_PER_KEY: u64 = 1500;
const INPUT: &str = "events";
const OUTPUT: &str = "checked";

fn json_values(records: &[ReadRecord]) -> Vec<serde_json::Value> {
    records
        .iter()
        .map(|r| {
            serde_json::from_str(r.value_str())
                .unwrap_or_else(|e| panic!("bad record {:?}: {e}", r.value_str()))
        })
        .collect()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Writes `{key, seq}` for every key, `per_batch` numbers per key at a time, one batch every
/// `every`, each record keyed by its key (so a key's numbers stay in one partition, in order).
fn produce_sequences(broker: &KafkaBroker, per_batch: u64, every: Duration, done: &AtomicBool) {
    let mut seq = 0;
    while seq < EVENTS_PER_KEY {
        let started = Instant::now();
        let end = (seq + per_batch).min(EVENTS_PER_KEY);
        let records: Vec<(String, String)> = (seq..end)
            .flat_map(|s| {
                (0..KEYS).map(move |k| (k.to_string(), json!({"key": k, "seq": s}).to_string()))
            })
            .collect();
        let borrowed: Vec<(Option<&str>, &str)> = records
            .iter()
            .map(|(k, v)| (Some(k.as_str()), v.as_str()))
            .collect();
        broker.produce(INPUT, None, &borrowed);
        seq = end;
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
    done.store(true, Ordering::SeqCst);
}

/// How a run of the job ends.
enum Ending {
    /// SIGKILL a random moment (up to 600 ms) after a new checkpoint completed.
    Sigkill,
    /// The process aborts itself at a fault point of the Kafka sink.
    Fault(FaultPoint),
}

#[test]
fn sequence_check_kafka_to_kafka_is_exactly_once_through_sigkills_and_crashes_around_the_commit() {
    let broker = KafkaBroker::start();
    broker.create_topic(INPUT, 3);
    broker.create_topic(OUTPUT, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoints = dir.path().join("store/seq");
    let yaml = format!(
        "job:\n  name: sequence-check\n  args: {{input: {{kafka: {{topics: [{INPUT}]}}}}, output: {{kafka: {{topic: {OUTPUT}}}}}}}\n\
         jobId: seq\nparallelism: 2\ncheckpointing: {{interval: 300ms, storage: 'file://{}', retained: 2}}\n\
         restartStrategy: {{type: none}}\n{}\n",
        dir.path().join("store").display(),
        broker.job_section()
    );
    let file = write_job(dir.path(), "job.yaml", &yaml);
    let work = dir.path().join("work");
    let latest = || {
        completed_checkpoints(&checkpoints)
            .last()
            .copied()
            .unwrap_or(0)
    };

    let endings = [
        Ending::Sigkill,
        Ending::Sigkill,
        Ending::Fault(FaultPoint::KafkaSinkInTransaction),
        Ending::Sigkill,
        Ending::Fault(FaultPoint::KafkaSinkBeforeTransaction),
        Ending::Sigkill,
        Ending::Sigkill,
    ];
    let produced = AtomicBool::new(false);
    let total = (KEYS * EVENTS_PER_KEY) as usize;
    let final_log = dir.path().join("final.log");
    std::thread::scope(|scope| {
        // 20 keys x 1,500 numbers, 300 records every 100 ms: about 10 s of input, read
        // while the job is killed again and again.
        scope.spawn(|| produce_sequences(&broker, 15, Duration::from_millis(100), &produced));
        let mut rng = rand::rng();
        for (run, ending) in endings.iter().enumerate() {
            let log = dir.path().join(format!("run-{run}.log"));
            let before = latest();
            match ending {
                Ending::Sigkill => {
                    let mut child = spawn_job(&file, &[], &[], &work, &log);
                    wait_until(Duration::from_secs(60), "a new checkpoint", || {
                        latest() > before
                    });
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
                    assert!(
                        child.try_wait().expect("poll").is_none(),
                        "run {run} ended before its kill:\n{}",
                        log_of(&log)
                    );
                    sigkill(&mut child);
                }
                Ending::Fault(point) => {
                    let env = [(fault_points::VARIABLE.to_string(), point.name().to_string())];
                    let mut child = spawn_job(&file, &[], &env, &work, &log);
                    let status = child.wait().expect("wait");
                    assert!(
                        !status.success()
                            && log_of(&log)
                                .contains(&format!("fault point {} reached", point.name())),
                        "run {run} crashes at {}:\n{}",
                        point.name(),
                        log_of(&log)
                    );
                }
            }
        }
        // The last run reads the rest; once read_committed shows everything it is stopped.
        let mut child = spawn_job(&file, &[], &[], &work, &final_log);
        wait_until(Duration::from_secs(120), "all input produced", || {
            produced.load(Ordering::SeqCst)
        });
        wait_until(Duration::from_secs(120), "every record committed", || {
            std::thread::sleep(Duration::from_millis(500));
            broker.read_all(OUTPUT, Isolation::ReadCommitted).len() >= total
        });
        signal(&child, "TERM");
        child.wait().expect("wait");
    });
    let final_run = log_of(&final_log);
    assert!(
        final_run.contains("restoring") && !final_run.contains("starting with empty state"),
        "the last run restores:\n{final_run}"
    );

    let committed = json_values(&broker.read_all(OUTPUT, Isolation::ReadCommitted));
    verify_sequence_output(&committed, KEYS, EVENTS_PER_KEY)
        .unwrap_or_else(|e| panic!("read_committed output: {e}"));
    // The crash inside a transaction left its records on the broker, aborted by recovery:
    // a reader that does not wait for commits sees them twice. Had the sink made records
    // visible before their checkpoint completed, read_committed would look like this.
    let everything = json_values(&broker.read_all(OUTPUT, Isolation::ReadUncommitted));
    let uncommitted_error = verify_sequence_output(&everything, KEYS, EVENTS_PER_KEY)
        .expect_err("read_uncommitted sees the aborted transaction's records");
    assert!(
        uncommitted_error.contains("duplicate"),
        "{uncommitted_error}"
    );
    println!(
        "{} runs ({} SIGKILLs, 2 crashes at sink fault points) + a final run: read_committed \
         {} records, every (key, seq) once, no alert; read_uncommitted {} ({uncommitted_error})",
        endings.len(),
        endings
            .iter()
            .filter(|e| matches!(e, Ending::Sigkill))
            .count(),
        committed.len(),
        everything.len()
    );
}

/// 2020-11-02 01:30:00 UTC, a minute boundary.
const T0: i64 = 1_604_280_600_000;
const SECURITIES: [&str; 5] = ["600000", "600036", "601318", "000001", "300750"];

/// Trades of `SECURITIES` over six minutes, each up to 1.5 s out of order (within the job's
/// 2 s bound: none is late), with growing day totals per security.
fn trades() -> Vec<serde_json::Value> {
    let mut rng = rand::rng();
    let mut trades = Vec::new();
    let mut day = [(0u64, 0u64); SECURITIES.len()];
    for step in 0..720i64 {
        for (i, code) in SECURITIES.iter().enumerate() {
            let vol = rng.random_range(100..1000);
            day[i].0 += vol;
            day[i].1 += vol * 1025;
            let time = T0 + step * 500 + rng.random_range(0..1500);
            trades.push(
                json!({"secCode": code, "secName": format!("S{code}"), "eventTime": time,
                "tradePrice": 10.25, "tradeVolDay": day[i].0, "tradeAmtDay": day[i].1}),
            );
        }
    }
    trades
}

fn minute_bars_job(dir: &Path, name: &str, input: &str, output: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        "job:\n  name: minute-bars\n  args: {{input: {input}, output: {output}, lateOutput: '{}', outOfOrderness: 2s}}\n\
         parallelism: 2\ncheckpointing: {{interval: 500ms, storage: 'file://{}/{name}-checkpoints'}}\nrestore: none\n{extra}\n",
        dir.join(format!("{name}-late")).display(),
        dir.display(),
    );
    write_job(dir, &format!("{name}.yaml"), &yaml)
}

fn sorted(mut bars: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    bars.sort_by_key(|b| (b["secCode"].to_string(), b["windowStart"].as_i64()));
    bars
}

#[test]
fn minute_bars_from_kafka_to_kafka_equal_those_from_files() {
    let broker = KafkaBroker::start();
    broker.create_topic("trades", 3);
    broker.create_topic("bars", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let trades = trades();
    let lines: Vec<String> = trades.iter().map(|t| t.to_string()).collect();
    let input = dir.path().join("trades");
    std::fs::create_dir_all(&input).expect("input dir");
    std::fs::write(input.join("trades.jsonl"), lines.join("\n") + "\n").expect("write trades");
    let keyed: Vec<(Option<&str>, &str)> = trades
        .iter()
        .zip(&lines)
        .map(|(t, line)| (t["secCode"].as_str(), line.as_str()))
        .collect();
    broker.produce("trades", None, &keyed);

    let files = minute_bars_job(
        dir.path(),
        "files",
        &format!("'{}'", input.display()),
        &format!("'{}'", dir.path().join("bars").display()),
        "",
    );
    run_job(&files, &[], &[], &dir.path().join("work"));
    let from_files = sorted(committed_json(&dir.path().join("bars")));

    let kafka = minute_bars_job(
        dir.path(),
        "kafka",
        "{kafka: {topics: [trades], bounded: true}}",
        "{kafka: {topic: bars}}",
        &broker.job_section(),
    );
    run_job(&kafka, &[], &[], &dir.path().join("work"));
    let records = broker.read_all("bars", Isolation::ReadCommitted);
    for r in &records {
        let bar: serde_json::Value = serde_json::from_str(r.value_str()).expect("bar");
        assert_eq!(
            r.key.as_deref(),
            bar["secCode"].as_str().map(str::as_bytes),
            "bars keyed by security code"
        );
    }
    let from_kafka = sorted(json_values(&records));

    // 5 securities x 6 minutes (and a seventh minute begun by the latest trades).
    assert!(
        from_files.len() >= SECURITIES.len() * 6,
        "{}",
        from_files.len()
    );
    assert_eq!(
        from_kafka, from_files,
        "the same bars from Kafka as from files"
    );
    for late in ["files-late", "kafka-late"] {
        assert!(
            committed_lines(&dir.path().join(late)).is_empty(),
            "no trade was late ({late})"
        );
    }
    println!(
        "{} trades over 3 partitions -> {} minute bars, equal to those from files",
        trades.len(),
        from_kafka.len()
    );
}

/// Runs a `sequence-check` from Kafka topic `events` with `kafka` as the connection section,
/// expecting it to fail; returns its log.
fn failing_run(dir: &Path, input: &str, kafka: &str, env: &[(String, String)]) -> String {
    let yaml = format!(
        "job:\n  name: sequence-check\n  args: {{input: {{kafka: {input}}}, output: '{}'}}\n\
         parallelism: 1\nrestartStrategy: {{type: none}}\n{kafka}\n",
        dir.join("out").display()
    );
    let file = write_job(dir, "bad.yaml", &yaml);
    run_job_expecting_failure(&file, &[], env, &dir.join("work"))
}

#[test]
fn bad_connection_settings_fail_naming_the_setting() {
    let broker = KafkaBroker::start();
    broker.create_topic(INPUT, 1);
    let dir = tempfile::tempdir().expect("tempdir");

    let unknown_topic = failing_run(dir.path(), "{topics: [nope]}", &broker.job_section(), &[]);
    assert!(
        unknown_topic.contains("job.args.input.kafka.topics") && unknown_topic.contains("nope"),
        "{unknown_topic}"
    );

    let closed = format!("127.0.0.1:{}", free_port());
    let unreachable = failing_run(
        dir.path(),
        "{topics: [events]}",
        &format!("kafka: {{bootstrapServers: '{closed}'}}"),
        &[],
    );
    assert!(
        unreachable.contains("bootstrapServers") && unreachable.contains(&closed),
        "{unreachable}"
    );

    // noida-db accepts any SASL credentials, so wrong ones cannot be shown failing here; a
    // client that insists on TLS against a plaintext listener fails the same way: the
    // broker is unusable, the error names the connection setting, the secret stays out.
    let sasl = format!(
        "kafka: {{bootstrapServers: '{}', properties: {{security.protocol: SASL_SSL, sasl.mechanism: PLAIN, sasl.username: weir}}, propertiesFromEnv: {{sasl.password: WEIR_TEST_KAFKA_PASSWORD}}}}",
        broker.bootstrap()
    );
    let secret = "s3cr3t-never-logged";
    let tls_refused = failing_run(
        dir.path(),
        "{topics: [events]}",
        &sasl,
        &[("WEIR_TEST_KAFKA_PASSWORD".to_string(), secret.to_string())],
    );
    assert!(tls_refused.contains("bootstrapServers"), "{tls_refused}");
    assert!(!tls_refused.contains(secret), "the secret is never logged");

    let missing_secret = failing_run(dir.path(), "{topics: [events]}", &sasl, &[]);
    assert!(
        missing_secret.contains("WEIR_TEST_KAFKA_PASSWORD"),
        "{missing_secret}"
    );

    let missing_ca = failing_run(
        dir.path(),
        "{topics: [events]}",
        &format!(
            "kafka: {{bootstrapServers: '{}', properties: {{security.protocol: SSL, ssl.ca.location: /nonexistent/ca.pem}}}}",
            broker.bootstrap()
        ),
        &[],
    );
    assert!(missing_ca.contains("ssl.ca.location"), "{missing_ca}");
}
