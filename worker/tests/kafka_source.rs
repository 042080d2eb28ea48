//! The Kafka source against a real Kafka-protocol broker (noida-db): partition assignment,
//! snapshot and restore across rescales, partition discovery, start positions, transactions
//! under read_committed, bounded reading, and clear errors for bad settings. Readers are
//! driven through the public `SourceFactory` / `SourceReader` API, as a source task does.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use support::kafka::KafkaBroker;
use weir::api::{SourceContext, SourceFactory, SourceReader, SourceStatus};
use weir::connectors::kafka::{Isolation, KafkaRecord, KafkaSource, KafkaSourceSpec, StartFrom};
use weir::spec::JobDocument;

const TIMEOUT: Duration = Duration::from_secs(30);

type Reader = Box<dyn SourceReader<KafkaRecord>>;

/// A broker, a runtime for the readers' context, and the job document that points at both.
struct Fixture {
    broker: KafkaBroker,
    rt: tokio::runtime::Runtime,
    doc: Arc<JobDocument>,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_document("")
    }

    fn with_document(extra: &str) -> Fixture {
        let broker = KafkaBroker::start();
        let doc = document(&broker.job_section(), extra);
        Fixture {
            broker,
            rt: tokio::runtime::Runtime::new().expect("tokio runtime"),
            doc,
        }
    }

    fn context(&self, subtask: u32, parallelism: u32) -> SourceContext {
        SourceContext {
            subtask,
            parallelism,
            rt: self.rt.handle().clone(),
            doc: self.doc.clone(),
            cached_files: Default::default(),
        }
    }

    fn reader(
        &self,
        spec: &KafkaSourceSpec,
        subtask: u32,
        parallelism: u32,
        restored: Option<Vec<serde_json::Value>>,
    ) -> Reader {
        KafkaSource::records(spec.clone())
            .expect("valid spec")
            .create_reader(&self.context(subtask, parallelism), restored)
            .unwrap_or_else(|e| panic!("reader {subtask}/{parallelism}: {e}"))
    }

    /// One reader per subtask of `parallelism`.
    fn readers(
        &self,
        spec: &KafkaSourceSpec,
        parallelism: u32,
        restored: Option<&[serde_json::Value]>,
    ) -> Vec<Reader> {
        (0..parallelism)
            .map(|s| self.reader(spec, s, parallelism, restored.map(<[_]>::to_vec)))
            .collect()
    }

    /// `count` records `"<tag>-<p>-<i>"` into each of `partitions`.
    fn produce(&self, topic: &str, partitions: std::ops::Range<i32>, tag: &str, count: usize) {
        for p in partitions {
            let values: Vec<String> = (0..count).map(|i| format!("{tag}-{p}-{i}")).collect();
            let records: Vec<(Option<&str>, &str)> =
                values.iter().map(|v| (None, v.as_str())).collect();
            self.broker.produce(topic, Some(p), &records);
        }
    }

    fn producer(&self, extra: &[(&str, &str)]) -> ThreadedProducer<DefaultProducerContext> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.broker.bootstrap());
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config.create().expect("Kafka producer")
    }

    /// The offsets `group` committed for `topic`'s partitions (`None` where none).
    fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("group.id", group)
            .create()
            .expect("Kafka consumer");
        let mut request = TopicPartitionList::new();
        for p in 0..partitions {
            request.add_partition(topic, p);
        }
        let answer = consumer
            .committed_offsets(request, TIMEOUT)
            .expect("committed offsets");
        (0..partitions)
            .map(
                |p| match answer.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect()
    }
}

fn document(kafka_section: &str, extra: &str) -> Arc<JobDocument> {
    let yaml =
        format!("job: {{name: kafka-source-test}}\njobId: source-test\n{kafka_section}\n{extra}");
    Arc::new(JobDocument::from_yaml(&yaml, "test.yaml").expect("valid job document"))
}

fn spec(topic: &str) -> KafkaSourceSpec {
    KafkaSourceSpec::topics([topic])
}

/// Polls `reader` as a source task does until `n` records came (panics on a timeout or an
/// early end).
fn read(reader: &mut Reader, n: usize) -> Vec<KafkaRecord> {
    let deadline = Instant::now() + TIMEOUT;
    let mut records = Vec::new();
    while records.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records within {TIMEOUT:?}: {:?}",
            records.len(),
            values(&records)
        );
        let mut batch = Vec::new();
        match reader.poll(&mut batch, n - records.len()).expect("poll") {
            SourceStatus::Idle(wait) => std::thread::sleep(wait),
            SourceStatus::More => {}
            SourceStatus::Finished => panic!(
                "finished after {} of {n} records: {:?}",
                records.len() + batch.len(),
                values(&records)
            ),
        }
        records.append(&mut batch);
    }
    records
}

/// Everything `reader` hands out within `period` (a bounded reader: until it finishes).
/// Returns the records and whether it finished.
fn read_for(reader: &mut Reader, period: Duration) -> (Vec<KafkaRecord>, bool) {
    let deadline = Instant::now() + period;
    let mut records = Vec::new();
    while Instant::now() < deadline {
        let mut batch = Vec::new();
        let status = reader.poll(&mut batch, 100).expect("poll");
        records.append(&mut batch);
        match status {
            SourceStatus::Idle(wait) => std::thread::sleep(wait),
            SourceStatus::More => {}
            SourceStatus::Finished => return (records, true),
        }
    }
    (records, false)
}

fn values(records: &[KafkaRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.value_str().expect("UTF-8 value").to_string())
        .collect()
}

fn sorted_values(records: &[KafkaRecord]) -> Vec<String> {
    let mut v = values(records);
    v.sort();
    v
}

fn expected(partitions: std::ops::Range<i32>, tag: &str, count: usize) -> Vec<String> {
    let mut v: Vec<String> = partitions
        .flat_map(|p| (0..count).map(move |i| format!("{tag}-{p}-{i}")))
        .collect();
    v.sort();
    v
}

/// Flink's KafkaTopicPartitionAssigner, written independently of the source's copy.
fn flink_owner(topic: &str, partition: i32, parallelism: u32) -> u32 {
    let mut hash: i32 = 0;
    for unit in topic.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(unit as i32);
    }
    let start = ((hash.wrapping_mul(31)) & 0x7FFF_FFFF) % parallelism as i32;
    ((start + partition) % parallelism as i32) as u32
}

fn snapshot_all(readers: &mut [Reader], checkpoint_id: u64) -> Vec<serde_json::Value> {
    readers
        .iter_mut()
        .flat_map(|r| r.snapshot(checkpoint_id).expect("snapshot"))
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

#[test]
fn three_partitions_at_parallelism_2_are_read_once_each_by_the_owner_flinks_formula_names() {
    let f = Fixture::new();
    f.broker.create_topic("orders", 3);
    f.produce("orders", 0..3, "a", 40);
    let mut readers = f.readers(&spec("orders"), 2, None);
    let owners: Vec<u32> = (0..3).map(|p| flink_owner("orders", p, 2)).collect();
    let mut all = Vec::new();
    for (subtask, reader) in readers.iter_mut().enumerate() {
        let owned = owners.iter().filter(|o| **o == subtask as u32).count();
        let records = read(reader, owned * 40);
        for r in &records {
            assert_eq!(
                owners[r.partition as usize], subtask as u32,
                "partition {} read by subtask {subtask}",
                r.partition
            );
            assert_eq!(&*r.topic, "orders");
            assert!(r.timestamp.is_some(), "records carry their timestamp");
        }
        let (more, finished) = read_for(reader, Duration::from_millis(500));
        assert!(
            more.is_empty() && !finished,
            "nothing more: {:?}",
            values(&more)
        );
        all.extend(records);
    }
    assert_eq!(sorted_values(&all), expected(0..3, "a", 40));
    // Offsets are consecutive per partition: nothing skipped, nothing twice.
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &all {
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    for offsets in by_partition.values() {
        assert_eq!(*offsets, (0..40).collect::<Vec<i64>>());
    }
}

#[test]
fn restores_across_rescales_2_3_1_read_every_record_exactly_once() {
    let f = Fixture::new();
    f.broker.create_topic("events", 3);
    let s = spec("events");
    let mut delivered = Vec::new();

    // Parallelism 2 reads part of the first batch, then checkpoint 1.
    f.produce("events", 0..3, "one", 30);
    let mut readers = f.readers(&s, 2, None);
    for reader in &mut readers {
        delivered.extend(read(reader, 17));
    }
    let checkpoint_1 = snapshot_all(&mut readers, 1);
    // Read after the checkpoint, then the job fails: replayed after the restore.
    for reader in &mut readers {
        read_for(reader, Duration::from_millis(300));
    }
    drop(readers);

    // Parallelism 3 from checkpoint 1, with a second batch written meanwhile.
    f.produce("events", 0..3, "two", 30);
    let mut readers = f.readers(&s, 3, Some(&checkpoint_1));
    for reader in &mut readers {
        delivered.extend(read(reader, 25));
    }
    let checkpoint_2 = snapshot_all(&mut readers, 2);
    assert_eq!(
        checkpoint_2.len(),
        3,
        "one entry per partition: {checkpoint_2:?}"
    );
    drop(readers);

    // Parallelism 1 from checkpoint 2 reads the rest.
    f.produce("events", 0..3, "three", 30);
    let mut readers = f.readers(&s, 1, Some(&checkpoint_2));
    let rest = 3 * 90 - delivered.len();
    delivered.extend(read(&mut readers[0], rest));
    let (more, _) = read_for(&mut readers[0], Duration::from_millis(500));
    assert!(more.is_empty(), "records twice: {:?}", values(&more));

    let mut all = expected(0..3, "one", 30);
    all.extend(expected(0..3, "two", 30));
    all.extend(expected(0..3, "three", 30));
    all.sort();
    assert_eq!(sorted_values(&delivered), all, "every record exactly once");
}

#[test]
fn partitions_and_matching_topics_created_while_running_are_read_within_the_discovery_interval() {
    let f = Fixture::new();
    f.broker.create_topic("growing", 2);
    let mut s = spec("growing");
    s.topic_pattern = Some("late-.*".into());
    s.partition_discovery_interval = Duration::from_secs(1);
    f.produce("growing", 0..2, "old", 5);
    let mut readers = f.readers(&s, 2, None);
    let mut seen = Vec::new();
    for reader in &mut readers {
        seen.extend(read_for(reader, Duration::from_millis(1_500)).0);
    }
    assert_eq!(sorted_values(&seen), expected(0..2, "old", 5));

    f.broker.add_partitions("growing", 5);
    f.broker.create_topic("late-topic", 2);
    f.broker.create_topic("unrelated", 1);
    f.produce("growing", 2..5, "new", 5);
    f.produce("late-topic", 0..2, "late", 5);
    f.produce("unrelated", 0..1, "no", 5);
    let started = Instant::now();
    let mut found = Vec::new();
    while found.len() < 25 && started.elapsed() < Duration::from_secs(15) {
        for (subtask, reader) in readers.iter_mut().enumerate() {
            let (records, _) = read_for(reader, Duration::from_millis(100));
            for r in &records {
                assert_eq!(
                    flink_owner(&r.topic, r.partition, 2),
                    subtask as u32,
                    "{}[{}] read by its owner",
                    r.topic,
                    r.partition
                );
            }
            found.extend(records);
        }
    }
    let elapsed = started.elapsed();
    let mut want = expected(2..5, "new", 5);
    want.extend(expected(0..2, "late", 5));
    want.sort();
    assert_eq!(
        sorted_values(&found),
        want,
        "new partitions from offset 0, unrelated topic not read"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "found after {elapsed:?} with a 1 s discovery interval"
    );
}

#[test]
fn start_from_latest_timestamp_and_committed_offsets() {
    let f = Fixture::new();
    f.broker.create_topic("starts", 1);

    // Latest: only what is written after the reader started.
    f.produce("starts", 0..1, "before", 5);
    let mut s = spec("starts");
    s.start_from = StartFrom::Latest;
    let mut latest = f.reader(&s, 0, 1, None);
    assert!(
        read_for(&mut latest, Duration::from_millis(500))
            .0
            .is_empty()
    );
    f.produce("starts", 0..1, "after", 5);
    let records = read(&mut latest, 5);
    assert_eq!(sorted_values(&records), expected(0..1, "after", 5));
    let snapshot = latest.snapshot(1).expect("snapshot");
    assert_eq!(snapshot[0]["offset"], 10, "{snapshot:?}");

    // Timestamp: the first record at or after it.
    let t0 = now_ms();
    let producer = f.producer(&[]);
    for (i, ts) in [t0 - 60_000, t0 - 1, t0, t0 + 5_000].iter().enumerate() {
        let value = format!("ts-{i}");
        producer
            .send(
                BaseRecord::<str, str>::to("starts")
                    .payload(&value)
                    .partition(0)
                    .timestamp(*ts),
            )
            .expect("send");
    }
    producer.flush(TIMEOUT).expect("flush");
    s.start_from = StartFrom::Timestamp(t0);
    let mut at_time = f.reader(&s, 0, 1, None);
    let records = read(&mut at_time, 2);
    assert_eq!(values(&records), ["ts-2", "ts-3"]);
    assert_eq!(records[0].timestamp, Some(t0));
    // After every record: starts at the end.
    s.start_from = StartFrom::Timestamp(t0 + 3_600_000);
    let mut future = f.reader(&s, 0, 1, None);
    assert!(
        read_for(&mut future, Duration::from_millis(500))
            .0
            .is_empty()
    );

    // Committed: a completed checkpoint's offsets reach the group, and a fresh start with
    // `startFrom: committed` continues from them.
    s.start_from = StartFrom::Earliest;
    s.group_id = Some("monitoring".into());
    let mut first = f.reader(&s, 0, 1, None);
    let records = read(&mut first, 7);
    assert_eq!(records.last().map(|r| r.offset), Some(6));
    first.snapshot(3).expect("snapshot");
    assert_eq!(
        f.committed("monitoring", "starts", 1),
        [None],
        "not before it completes"
    );
    first.notify_checkpoint_complete(3).expect("notify");
    support::wait_until(TIMEOUT, "offsets committed to the group", || {
        f.committed("monitoring", "starts", 1) == [Some(7)]
    });
    s.start_from = StartFrom::Committed;
    let mut second = f.reader(&s, 0, 1, None);
    let records = read(&mut second, 7);
    assert_eq!(records.first().map(|r| r.offset), Some(7));
    // A group without commits starts from earliest.
    s.group_id = Some("never-committed".into());
    let mut fallback = f.reader(&s, 0, 1, None);
    assert_eq!(read(&mut fallback, 1)[0].offset, 0);
}

#[test]
fn the_default_group_is_weir_job_id() {
    let f = Fixture::new();
    f.broker.create_topic("grouped", 2);
    f.produce("grouped", 0..2, "g", 3);
    let mut reader = f.reader(&spec("grouped"), 0, 1, None);
    read(&mut reader, 6);
    reader.snapshot(1).expect("snapshot");
    reader.notify_checkpoint_complete(1).expect("notify");
    support::wait_until(TIMEOUT, "offsets committed to weir-source-test", || {
        f.committed("weir-source-test", "grouped", 2) == [Some(3), Some(3)]
    });
}

#[test]
fn read_committed_never_returns_records_of_aborted_transactions() {
    let f = Fixture::new();
    f.broker.create_topic("tx", 1);
    let producer = f.producer(&[("transactional.id", "weir-test-tx")]);
    producer
        .init_transactions(TIMEOUT)
        .expect("init transactions");
    let send = |values: &[&str]| {
        for v in values {
            producer
                .send(BaseRecord::<str, str>::to("tx").payload(*v).partition(0))
                .expect("send");
        }
        producer.flush(TIMEOUT).expect("flush");
    };
    producer.begin_transaction().expect("begin");
    send(&["committed-0", "committed-1", "committed-2"]);
    producer.commit_transaction(TIMEOUT).expect("commit");
    producer.begin_transaction().expect("begin");
    send(&["aborted-0", "aborted-1", "aborted-2"]);
    producer.abort_transaction(TIMEOUT).expect("abort");
    producer.begin_transaction().expect("begin");
    send(&["after-0", "after-1"]);
    producer.commit_transaction(TIMEOUT).expect("commit");

    let mut s = spec("tx");
    let mut committed = f.reader(&s, 0, 1, None);
    let (records, _) = read_for(&mut committed, Duration::from_secs(2));
    assert_eq!(
        values(&records),
        [
            "committed-0",
            "committed-1",
            "committed-2",
            "after-0",
            "after-1"
        ]
    );

    // Bounded over transactions: the end is past the last commit marker, which is never
    // handed out, yet the reader finishes.
    s.bounded = true;
    let mut bounded = f.reader(&s, 0, 1, None);
    let (records, finished) = read_for(&mut bounded, TIMEOUT);
    assert!(finished, "bounded reader over transactions finishes");
    assert_eq!(records.len(), 5, "{:?}", values(&records));

    s.bounded = false;
    s.isolation = Isolation::ReadUncommitted;
    let mut uncommitted = f.reader(&s, 0, 1, None);
    let (records, _) = read_for(&mut uncommitted, Duration::from_secs(2));
    assert_eq!(
        records.len(),
        8,
        "read_uncommitted sees the aborted ones too: {:?}",
        values(&records)
    );
}

#[test]
fn a_bounded_reader_finishes_at_the_first_starts_end_and_a_restored_one_stops_there_too() {
    let f = Fixture::new();
    f.broker.create_topic("bounded", 2);
    f.produce("bounded", 0..2, "in", 10);
    let mut s = spec("bounded");
    s.bounded = true;
    let mut reader = f.reader(&s, 0, 1, None);
    let first = read(&mut reader, 7);
    let checkpoint = reader.snapshot(1).expect("snapshot");
    assert!(
        checkpoint.iter().all(|e| e["end"] == 10),
        "end offsets are checkpointed: {checkpoint:?}"
    );
    f.produce("bounded", 0..2, "later", 10);

    let (rest, finished) = read_for(&mut reader, TIMEOUT);
    assert!(finished);
    let mut all = first.clone();
    all.extend(rest);
    assert_eq!(sorted_values(&all), expected(0..2, "in", 10));

    let mut restored = f.reader(&s, 0, 1, Some(checkpoint.clone()));
    let (rest, finished) = read_for(&mut restored, TIMEOUT);
    assert!(finished);
    let mut all = first;
    all.extend(rest);
    assert_eq!(
        sorted_values(&all),
        expected(0..2, "in", 10),
        "the restored reader stops at the same end"
    );

    // Rescaled to 2, each subtask finishes its own partition; a partition created since the
    // first start is not part of the bounded input.
    f.broker.add_partitions("bounded", 3);
    f.produce("bounded", 2..3, "new", 3);
    let mut readers = f.readers(&s, 2, Some(&checkpoint));
    let mut all = Vec::new();
    for reader in &mut readers {
        let (records, finished) = read_for(reader, TIMEOUT);
        assert!(finished);
        all.extend(records);
    }
    assert_eq!(all.len(), 13, "{:?}", values(&all));
}

#[test]
fn an_empty_bounded_subtask_finishes_at_once() {
    let f = Fixture::new();
    f.broker.create_topic("single", 1);
    let mut s = spec("single");
    s.bounded = true;
    let idle_owner = 1 - flink_owner("single", 0, 2);
    let mut reader = f.reader(&s, idle_owner, 2, None);
    let mut batch = Vec::new();
    assert!(matches!(
        reader.poll(&mut batch, 10).expect("poll"),
        SourceStatus::Finished
    ));
}

#[test]
fn an_unknown_topic_and_an_unreachable_bootstrap_name_the_setting() {
    let f = Fixture::new();
    f.broker.create_topic("exists", 1);
    let source =
        KafkaSource::records(KafkaSourceSpec::topics(["exists", "missing"])).expect("spec");
    let err = source
        .create_reader(&f.context(0, 1), None)
        .err()
        .expect("unknown topic");
    let message = err.to_string();
    assert!(message.contains("job.args.input.kafka.topics"), "{message}");
    assert!(
        message.contains(&format!(
            "topic \"missing\" does not exist on {}",
            f.broker.bootstrap()
        )),
        "{message}"
    );
    assert!(
        !err.is_recoverable(),
        "a wrong topic name is not fixed by restarting"
    );

    let address = format!("127.0.0.1:{}", support::free_port());
    let doc = document(&format!("kafka: {{bootstrapServers: '{address}'}}"), "");
    let ctx = SourceContext {
        subtask: 0,
        parallelism: 1,
        rt: f.rt.handle().clone(),
        doc,
        cached_files: Default::default(),
    };
    let started = Instant::now();
    let err = KafkaSource::records(spec("exists"))
        .expect("spec")
        .create_reader(&ctx, None)
        .err()
        .expect("unreachable bootstrap");
    let message = err.to_string();
    assert!(message.contains("kafka.bootstrapServers"), "{message}");
    assert!(message.contains(&address), "{message}");
    assert!(err.is_recoverable(), "the broker may come back: {message}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn malformed_records_fail_naming_the_position_or_are_skipped() {
    let decode = |r: &KafkaRecord| -> Result<u64, String> {
        r.value_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("not a number: {:?}", r.value_str()))
    };
    let f = Fixture::new();
    f.broker.create_topic("numbers", 1);
    f.broker.produce(
        "numbers",
        Some(0),
        &[(None, "1"), (None, "two"), (None, "3")],
    );
    let source = KafkaSource::decoded(spec("numbers"), decode).expect("spec");
    let mut reader = source
        .create_reader(&f.context(0, 1), None)
        .expect("reader");
    let deadline = Instant::now() + TIMEOUT;
    let err = loop {
        assert!(Instant::now() < deadline, "no error within {TIMEOUT:?}");
        let mut batch = Vec::new();
        if let Err(e) = reader.poll(&mut batch, 10) {
            break e;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let message = err.to_string();
    assert!(
        message.contains("topic numbers partition 0 offset 1"),
        "{message}"
    );

    let skip = Fixture::with_document("malformedRecords: skip");
    skip.broker.create_topic("numbers", 1);
    skip.broker.produce(
        "numbers",
        Some(0),
        &[(None, "1"), (None, "two"), (None, "3")],
    );
    let source = KafkaSource::decoded(spec("numbers"), decode).expect("spec");
    let mut reader = source
        .create_reader(&skip.context(0, 1), None)
        .expect("reader");
    let mut numbers = BTreeSet::new();
    let deadline = Instant::now() + TIMEOUT;
    while numbers.len() < 2 {
        assert!(Instant::now() < deadline, "got {numbers:?}");
        let mut batch = Vec::new();
        reader.poll(&mut batch, 10).expect("skipping");
        numbers.extend(batch);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(numbers, BTreeSet::from([1, 3]));
    let snapshot = reader.snapshot(1).expect("snapshot");
    assert_eq!(
        snapshot[0]["offset"], 3,
        "the skipped record is behind the position"
    );
}
