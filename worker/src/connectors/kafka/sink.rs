//! Kafka sink: exactly-once through Kafka transactions that start only after their checkpoint
//! completed; or at-least-once (idempotent producer, flushed at every barrier); or `none`.
//!
//! # Exactly-once: staging, then one transaction per checkpoint
//!
//! Flink keeps a Kafka transaction open from one barrier to the next and, after a crash,
//! resumes it from another process (it sets the producer id and epoch by reflection). librdkafka
//! cannot resume another process's transaction: `init_transactions` aborts it. So records never
//! reach Kafka before their checkpoint completes:
//!
//! - `write` appends the encoded record (key, value) to a local in-progress file (bounded disk,
//!   never unbounded memory);
//! - `pre_commit(n)` (at the barrier) uploads that file to the checkpoint storage,
//!   `<checkpointing.storage>/<jobId>/kafka-staging/<prefix>/<subtask>-<attempt>-<n>`, and
//!   returns every staged batch not yet committed (checkpointed as the sink's pending state),
//!   plus always one entry naming the writer subtask and parallelism, so recovery knows every
//!   transactional id of the old parallelism even when nothing was staged;
//! - `commit(n)` (checkpoint `n` completed) produces each staged batch up to `n`, oldest first,
//!   in one transaction per batch with the transactional id `<prefix>-<subtask>`, and commits
//!   inside the same transaction a *marker*: offset `n` for partition 0 of the output topic in
//!   the consumer group `<prefix>-<subtask>`. The staged object is deleted afterwards.
//!
//! The marker makes "was batch `n` of writer `s` committed?" a question Kafka answers
//! atomically with the records themselves: a writer commits its batches in checkpoint order,
//! so the group's committed offset `m` means exactly the batches up to `m` are in the topic.
//!
//! # Recovery (once, before any task starts)
//!
//! With the restored checkpoint's pending entries of every old subtask, for each old writer
//! subtask `s` in `0..old parallelism`:
//! 1. `init_transactions` with id `<prefix>-<s>` FIRST: it aborts a transaction a crashed
//!    writer left open and fences any zombie of that id, so no one can commit for `s` any more;
//! 2. THEN read the marker (read before fencing, a zombie could still commit after the read);
//! 3. produce and commit every staged batch of `s` above the marker, oldest first, exactly as
//!    `commit` does. A batch at or below the marker is already in Kafka (idempotence).
//!
//! Then the staged objects of committed batches are deleted, and so are objects of checkpoint
//! ids up to the attempt's claim that no pending entry names (checkpoints that never
//! completed, or batches committed before the crash). Objects above the claim may be a newer
//! JobManager's, in flight: left alone. A staged object missing for a batch above its marker
//! is [`Error::CorruptCheckpoint`]: its records would be lost.
//!
//! Rescaling needs nothing more: recovery commits the old writers' batches under their old
//! ids, then the new writers use `<prefix>-0..<new parallelism>`; each new writer's
//! `init_transactions` fences its own id once more.
//!
//! # Limits
//!
//! - Output becomes visible one checkpoint interval (plus the commit) after it was written,
//!   and each subtask produces its batch while its checkpoint-complete notification is
//!   handled, so commits add to the sink's processing time.
//! - Every record is written to local disk and to checkpoint storage once more.
//! - One checkpoint's batch of one subtask must be produced within the brokers' transaction
//!   timeout (`transaction.timeout.ms`, 60 s by default, settable in `kafka.properties`), or
//!   its commit fails again after every restart.
//! - The marker compares checkpoint ids, which increase for as long as the job keeps its
//!   checkpoint storage. Moving a job to new (or wiped) checkpoint storage restarts ids: give it
//!   a new `transactionalIdPrefix` then.
//! - Transactional ids `<prefix>-<s>` and groups `<prefix>-<s>` must belong to this job alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::api::{RecoverContext, SinkContext, SinkFactory, SinkWriter};
use crate::error::{Error, Result};
use crate::fault_points::{self, FaultPoint};
use crate::spec::{CheckpointMode, JobDocument, KafkaOptions};
use crate::storage::{Location, ObjectStore, StorageError};

/// Folder of staged batches under the job's checkpoint folder.
pub const STAGING_FOLDER: &str = "kafka-staging";

/// Transaction calls, flushes and offset reads.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// The topic check at writer creation; also how long an unreachable broker takes to report.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// First bytes of a staged batch file (format version 1).
const BATCH_MAGIC: &[u8; 8] = b"WEIRKB1\n";
/// Length prefix of an absent key.
const NO_KEY: u32 = u32::MAX;

/// How a Kafka sink delivers its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Kafka transactions committed after each checkpoint: `read_committed` readers see every
    /// record once.
    ExactlyOnce,
    /// Idempotent producer flushed at every checkpoint: nothing is lost, a restore may
    /// write records again.
    AtLeastOnce,
    /// Fire and forget; flushed only at the end of input.
    None,
}

/// A Kafka output as a job document writes it (`output: {kafka: {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSinkSpec {
    /// The topic written to; it must exist (Weir never creates topics).
    pub topic: String,
    /// Default: `exactly-once` when the job checkpoints in exactly-once mode, else
    /// `at-least-once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Transactional ids are `<prefix>-<subtask>`. Default `weir-<jobId>-<topic>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id_prefix: Option<String>,
}

/// One record as it goes to Kafka; the encoder fills it (cleared before each record).
#[derive(Debug, Default)]
pub struct EncodedRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

type Encoder<T> = dyn Fn(&T, &mut EncodedRecord) -> Result<()> + Send + Sync;

/// A Kafka sink for records of type `T`.
pub struct KafkaSink<T> {
    spec: KafkaSinkSpec,
    /// Where the spec sits in the job document (e.g. `job.args.output.kafka`), for errors.
    field: String,
    encode: Arc<Encoder<T>>,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize + 'static> KafkaSink<T> {
    /// Writes each record as a JSON value, keyed by `key` (no key when it returns `None`).
    pub fn json<K: AsRef<[u8]>>(
        spec: KafkaSinkSpec,
        field: impl Into<String>,
        key: impl Fn(&T) -> Option<K> + Send + Sync + 'static,
    ) -> Self {
        KafkaSink {
            spec,
            field: field.into(),
            encode: Arc::new(move |item: &T, out: &mut EncodedRecord| {
                out.key = key(item).map(|k| k.as_ref().to_vec());
                serde_json::to_writer(&mut out.value, item)
                    .map_err(|e| Error::codec("Kafka sink record", e))
            }),
            _t: PhantomData,
        }
    }
}

/// The spec with every default decided against the job document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    topic: String,
    delivery: Delivery,
    prefix: String,
    /// Folder of staged batches (`None` without checkpointing).
    staging: Option<Location>,
}

fn resolve(spec: &KafkaSinkSpec, field: &str, doc: &JobDocument) -> Result<Resolved> {
    let KafkaSinkSpec {
        topic,
        delivery,
        transactional_id_prefix,
    } = spec;
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if !valid_name(topic) {
        return Err(Error::spec(
            format!("{field}.topic"),
            format!("{topic:?} is not a Kafka topic name ([A-Za-z0-9._-]+)"),
        ));
    }
    let prefix = match transactional_id_prefix {
        Some(prefix) if !valid_name(prefix) => {
            return Err(Error::spec(
                format!("{field}.transactionalIdPrefix"),
                format!(
                    "{prefix:?} must be non-empty and use only [A-Za-z0-9._-] (it names a storage folder)"
                ),
            ));
        }
        Some(prefix) => prefix.clone(),
        None => format!("{}-{topic}", super::default_group_id(doc)),
    };
    let delivery = delivery.unwrap_or(match &doc.checkpointing {
        Some(c) if c.mode == CheckpointMode::ExactlyOnce => Delivery::ExactlyOnce,
        _ => Delivery::AtLeastOnce,
    });
    let staging = match &doc.checkpointing {
        Some(c) => Some(
            Location::parse(&c.storage)?
                .join(doc.job_id())
                .join(STAGING_FOLDER)
                .join(&prefix),
        ),
        None => None,
    };
    Ok(Resolved {
        topic: topic.clone(),
        delivery,
        prefix,
        staging,
    })
}

/// `<prefix>-<subtask>`: the transactional id of writer `subtask`, and its marker's group.
fn transactional_id(prefix: &str, subtask: u32) -> String {
    format!("{prefix}-{subtask}")
}

// ---------------------------------------------------------------------------------------------
// Pending state and the pure recovery plan
// ---------------------------------------------------------------------------------------------

/// One entry of the sink's pending state: a writer, and a batch it staged but did not commit
/// (none in the entry every writer always reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingEntry {
    writer: u32,
    parallelism: u32,
    #[serde(flatten)]
    batch: Option<StagedBatch>,
}

/// A checkpoint's records of one writer, staged in checkpoint storage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StagedBatch {
    checkpoint: u64,
    /// Full URI of the staged object.
    object: String,
}

/// What recovery does for one old writer subtask: fence its id, then commit `batches` (oldest
/// first) that its marker does not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WriterRecovery {
    writer: u32,
    batches: Vec<StagedBatch>,
}

/// Every writer of the old parallelism (the highest any entry names), each with its batches
/// sorted by checkpoint id and without duplicates.
fn plan_recovery(entries: &[PendingEntry]) -> Vec<WriterRecovery> {
    let parallelism = entries
        .iter()
        .map(|e| e.parallelism.max(e.writer + 1))
        .max()
        .unwrap_or(0);
    let mut batches: BTreeMap<u32, BTreeSet<StagedBatch>> = BTreeMap::new();
    for entry in entries {
        if let Some(batch) = &entry.batch {
            batches
                .entry(entry.writer)
                .or_default()
                .insert(batch.clone());
        }
    }
    (0..parallelism)
        .map(|writer| WriterRecovery {
            writer,
            batches: batches
                .remove(&writer)
                .map(|b| b.into_iter().collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// Whether the batch of `checkpoint` is already in Kafka, given the writer's marker.
fn is_committed(marker: Option<u64>, checkpoint: u64) -> bool {
    marker.is_some_and(|m| m >= checkpoint)
}

/// The marker in the broker's answer for the marker partition: its committed offset, `None`
/// when the group has committed nothing. A missing partition, an error for it or an offset
/// that is not a plain number is no answer.
fn marker_of(
    partition: Option<(Offset, rdkafka::error::KafkaResult<()>)>,
) -> std::result::Result<Option<u64>, String> {
    match partition {
        None => Err("the broker's answer does not name the marker partition".into()),
        Some((_, Err(e))) => Err(format!(
            "the broker answered with an error for the marker: {e}"
        )),
        Some((Offset::Offset(n), Ok(()))) if n >= 0 => Ok(Some(n as u64)),
        Some((Offset::Invalid, Ok(()))) => Ok(None),
        Some((other, Ok(()))) => Err(format!("unexpected committed offset {other:?}")),
    }
}

/// The checkpoint id at the end of a staged object's name `<subtask>-<attempt>-<checkpoint>`.
fn staged_checkpoint_id(key: &str) -> Option<u64> {
    key.rsplit(['-', '/']).next()?.parse().ok()
}

/// Staged objects to delete: not named by a pending entry, and of checkpoint ids up to the
/// claim (above it they may be a newer JobManager's, in flight). Unparsable names stay.
fn orphans<'a>(
    listed: impl IntoIterator<Item = &'a str>,
    pending: &BTreeSet<&str>,
    claimed: Option<u64>,
) -> Vec<&'a str> {
    listed
        .into_iter()
        .filter(|uri| !pending.contains(uri))
        .filter(|uri| match (staged_checkpoint_id(uri), claimed) {
            (Some(id), Some(claimed)) => id <= claimed,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Batch files: length-prefixed (key, value) frames
// ---------------------------------------------------------------------------------------------

struct BatchFile {
    path: PathBuf,
    file: BufWriter<std::fs::File>,
    records: u64,
}

impl BatchFile {
    fn create(path: PathBuf) -> Result<BatchFile> {
        let file = std::fs::File::create(&path).map_err(|e| Error::io(path.display(), e))?;
        let mut file = BufWriter::with_capacity(256 << 10, file);
        file.write_all(BATCH_MAGIC)
            .map_err(|e| Error::io(path.display(), e))?;
        Ok(BatchFile {
            path,
            file,
            records: 0,
        })
    }

    fn append(&mut self, record: &EncodedRecord) -> Result<()> {
        let io = |e| Error::io(self.path.display(), e);
        let mut frame = |bytes: Option<&[u8]>| -> std::io::Result<()> {
            match bytes {
                None => self.file.write_all(&NO_KEY.to_le_bytes()),
                Some(bytes) => {
                    let len = u32::try_from(bytes.len())
                        .ok()
                        .filter(|&l| l != NO_KEY)
                        .ok_or_else(|| std::io::Error::other("record larger than 4 GiB"))?;
                    self.file.write_all(&len.to_le_bytes())?;
                    self.file.write_all(bytes)
                }
            }
        };
        frame(record.key.as_deref()).map_err(io)?;
        frame(Some(&record.value)).map_err(io)?;
        self.records += 1;
        Ok(())
    }

    /// Flushes and closes the file; returns its path.
    fn seal(mut self) -> Result<PathBuf> {
        self.file
            .flush()
            .map_err(|e| Error::io(self.path.display(), e))?;
        Ok(self.path)
    }
}

struct BatchReader {
    file: BufReader<std::fs::File>,
    /// The staged object's URI, for errors.
    origin: String,
}

impl BatchReader {
    fn open(path: &Path, origin: &str) -> Result<BatchReader> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
        let mut reader = BatchReader {
            file: BufReader::with_capacity(256 << 10, file),
            origin: origin.to_string(),
        };
        let mut magic = [0u8; 8];
        reader
            .file
            .read_exact(&mut magic)
            .map_err(|e| reader.corrupt(e))?;
        if &magic != BATCH_MAGIC {
            return Err(reader.corrupt("not a Kafka sink batch (bad header)"));
        }
        Ok(reader)
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> Error {
        Error::CorruptCheckpoint {
            object: self.origin.clone(),
            reason: format!("staged Kafka records cannot be read: {reason}"),
        }
    }

    /// The next record into `record`; false at the end.
    fn next(&mut self, record: &mut EncodedRecord) -> Result<bool> {
        let mut len = [0u8; 4];
        match self.file.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(self.corrupt(e)),
        }
        let key_len = u32::from_le_bytes(len);
        record.key = if key_len == NO_KEY {
            None
        } else {
            let mut key = vec![0; key_len as usize];
            self.file
                .read_exact(&mut key)
                .map_err(|e| self.corrupt(e))?;
            Some(key)
        };
        self.file
            .read_exact(&mut len)
            .map_err(|e| self.corrupt(e))?;
        record.value.resize(u32::from_le_bytes(len) as usize, 0);
        self.file
            .read_exact(&mut record.value)
            .map_err(|e| self.corrupt(e))?;
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka clients
// ---------------------------------------------------------------------------------------------

/// Counts deliveries; keeps the first failure.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                crate::metrics::global().kafka_records_produced.inc();
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

impl Deliveries {
    /// Fails when a delivery failed since the last check.
    fn check(&self, context: &str) -> Result<()> {
        let failed = self.failed.swap(0, Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        let first = self
            .first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        Err(Error::kafka(
            context,
            format!("{failed} records were not delivered, first: {first}"),
        ))
    }
}

/// A producer for one topic, with the job's connection settings.
struct TopicProducer {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    bootstrap: String,
}

impl TopicProducer {
    fn create(
        connection: &Connection,
        topic: &str,
        extra: &[(&str, &str)],
    ) -> Result<TopicProducer> {
        let mut config = connection.config.clone();
        // A typo in the topic must fail, not create a topic with default settings.
        config.set("allow.auto.create.topics", "false");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        let producer = ThreadedProducer::from_config_and_context(&config, Deliveries::default())
            .map_err(|e| Error::kafka("creating the Kafka producer (kafka.properties)", e))?;
        Ok(TopicProducer {
            producer,
            topic: topic.to_string(),
            bootstrap: connection.bootstrap.clone(),
        })
    }

    /// Fails with an error naming the setting when the topic does not exist or the brokers
    /// cannot be reached.
    fn check_topic(&self, field: &str) -> Result<()> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(|e| connection_error(&self.bootstrap, "reading topic metadata", &e))?;
        let topic = metadata.topics().iter().find(|t| t.name() == self.topic);
        let error = topic.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
        match (topic, error) {
            (Some(t), None) if !t.partitions().is_empty() => Ok(()),
            (_, Some(RDKafkaErrorCode::TopicAuthorizationFailed)) => Err(Error::kafka(
                format!("{field}.topic"),
                format!(
                    "not authorized to write topic {:?} on kafka.bootstrapServers ({}); check the ACLs of the credentials in kafka.properties / kafka.propertiesFromEnv",
                    self.topic, self.bootstrap
                ),
            )),
            (_, error) => Err(Error::spec(
                format!("{field}.topic"),
                format!(
                    "topic {:?} does not exist on kafka.bootstrapServers ({}){}; create it first (Weir never creates topics)",
                    self.topic,
                    self.bootstrap,
                    error.map(|e| format!(" ({e})")).unwrap_or_default()
                ),
            )),
        }
    }

    /// Enqueues one record, waiting while librdkafka's queue is full (records leave it when
    /// delivered or when they time out, so this ends).
    fn send(&self, record: &EncodedRecord) -> Result<()> {
        loop {
            let mut out = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(&record.value);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            match self.producer.send(out) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(Error::kafka(
                        format!("producing to topic {}", self.topic),
                        e,
                    ));
                }
            }
        }
    }

    fn flush(&self) -> Result<()> {
        self.producer
            .flush(KAFKA_TIMEOUT)
            .map_err(|e| Error::kafka(format!("flushing records to topic {}", self.topic), e))?;
        self.producer
            .context()
            .check(&format!("producing to topic {}", self.topic))
    }
}

/// The job's Kafka connection settings.
struct Connection {
    config: ClientConfig,
    bootstrap: String,
}

impl Connection {
    fn of(doc: &JobDocument) -> Result<Connection> {
        let options: &KafkaOptions = super::options(doc)?;
        Ok(Connection {
            config: super::client_config(options)?,
            bootstrap: options.bootstrap_servers.clone(),
        })
    }
}

/// An error of a call that needs the brokers, naming the setting to check.
fn connection_error(bootstrap: &str, context: &str, e: &KafkaError) -> Error {
    let hint = match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
        ) => {
            "authentication or authorization failed: check the SASL/SSL settings in kafka.properties and kafka.propertiesFromEnv"
        }
        _ => "are the brokers in kafka.bootstrapServers reachable?",
    };
    Error::kafka(
        format!("{context} (kafka.bootstrapServers {bootstrap})"),
        format!("{e}; {hint}"),
    )
}

/// A transactional producer for writer `subtask`, fenced in (`init_transactions` done), with
/// its marker group.
struct TransactionalProducer {
    out: TopicProducer,
    transactional_id: String,
    group: ConsumerGroupMetadata,
    /// Reads the marker (offsets of `group`).
    marker_reader: BaseConsumer,
}

impl TransactionalProducer {
    /// Creates the producer and initialises transactions: this aborts a transaction a previous
    /// producer of the id left open and fences it (its later calls fail).
    fn init(
        connection: &Connection,
        topic: &str,
        transactional_id: String,
        field: Option<&str>,
    ) -> Result<TransactionalProducer> {
        let out = TopicProducer::create(
            connection,
            topic,
            &[
                ("transactional.id", &transactional_id),
                ("enable.idempotence", "true"),
            ],
        )?;
        if let Some(field) = field {
            out.check_topic(field)?;
        }
        out.producer.init_transactions(KAFKA_TIMEOUT).map_err(|e| {
            connection_error(
                &connection.bootstrap,
                &format!("initialising transactions of {transactional_id}"),
                &e,
            )
        })?;
        let marker_reader: BaseConsumer = connection
            .config
            .clone()
            .set("group.id", &transactional_id)
            .set("enable.auto.commit", "false")
            // Offsets committed by a transaction still in flight are waited for.
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| Error::kafka("creating the Kafka marker reader", e))?;
        let group = marker_reader.group_metadata().ok_or_else(|| {
            Error::kafka(
                format!("group metadata of {transactional_id}"),
                "librdkafka returned none",
            )
        })?;
        Ok(TransactionalProducer {
            out,
            transactional_id,
            group,
            marker_reader,
        })
    }

    /// The id of the newest checkpoint whose batch this writer committed, if any.
    ///
    /// Only a definite answer counts: an answer with an error for the partition (a coordinator
    /// still loading its groups after a pause, say) is asked again and, if it persists, fails
    /// recovery. Reading it as "no marker" would commit every staged batch a second time.
    fn read_marker(&self) -> Result<Option<u64>> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            let mut partitions = TopicPartitionList::new();
            partitions.add_partition(&self.out.topic, 0);
            let answer = self
                .marker_reader
                .committed_offsets(partitions, KAFKA_TIMEOUT)
                .map_err(|e| e.to_string())
                .and_then(|committed| {
                    marker_of(
                        committed
                            .find_partition(&self.out.topic, 0)
                            .map(|p| (p.offset(), p.error())),
                    )
                });
            match answer {
                Ok(marker) => return Ok(marker),
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(transactional_id = %self.transactional_id, attempt, error = %e, "reading the commit marker failed; asking again");
                    std::thread::sleep(Duration::from_secs(1));
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Error::kafka(
                        format!("reading the commit marker of {}", self.transactional_id),
                        format!("{e} (asked {ATTEMPTS} times)"),
                    ));
                }
            }
        }
    }

    /// Produces the batch in `path` in one transaction, with the marker `checkpoint` when
    /// given. Returns the number of records.
    fn commit_batch(
        &self,
        path: &Path,
        origin: &str,
        checkpoint: Option<u64>,
        crash_point: Option<FaultPoint>,
    ) -> Result<u64> {
        let context = |what: &str| format!("{what} (transactional id {})", self.transactional_id);
        self.out
            .producer
            .begin_transaction()
            .map_err(|e| Error::kafka(context("beginning a transaction"), e))?;
        let result = (|| {
            let mut reader = BatchReader::open(path, origin)?;
            let mut record = EncodedRecord::default();
            let mut records = 0;
            while reader.next(&mut record)? {
                self.out.send(&record)?;
                records += 1;
            }
            if let Some(point) = crash_point
                && fault_points::is_armed(point)
            {
                // The records reach the broker first: the crash leaves them in an open
                // transaction.
                self.out.flush()?;
                fault_points::hit(point);
            }
            if let Some(checkpoint) = checkpoint {
                let mut marker = TopicPartitionList::new();
                marker
                    .add_partition_offset(&self.out.topic, 0, Offset::Offset(checkpoint as i64))
                    .map_err(|e| Error::kafka(context("building the commit marker"), e))?;
                self.out
                    .producer
                    .send_offsets_to_transaction(&marker, &self.group, KAFKA_TIMEOUT)
                    .map_err(|e| Error::kafka(context("committing the marker"), e))?;
            }
            self.out
                .producer
                .commit_transaction(KAFKA_TIMEOUT)
                .map_err(|e| Error::kafka(context("committing a transaction"), e))?;
            Ok(records)
        })();
        match result {
            Ok(records) => {
                crate::metrics::global().kafka_transactions_committed.inc();
                // A transaction's delivery failures fail its commit; none may count later.
                let _ = self.out.producer.context().check("");
                Ok(records)
            }
            Err(e) => {
                // Leave no transaction open behind a failure (a fenced producer cannot abort;
                // whoever fenced it already did).
                if let Err(abort) = self.out.producer.abort_transaction(KAFKA_TIMEOUT) {
                    tracing::debug!(transactional_id = %self.transactional_id, error = %abort, "aborting the failed transaction failed");
                }
                let _ = self.out.producer.context().check("");
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The factory
// ---------------------------------------------------------------------------------------------

impl<T: Send + 'static> SinkFactory<T> for KafkaSink<T> {
    fn create_writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>> {
        let resolved = resolve(&self.spec, &self.field, &ctx.doc)?;
        let connection = Connection::of(&ctx.doc)?;
        match resolved.delivery {
            Delivery::ExactlyOnce => {
                std::fs::create_dir_all(&ctx.local_dir)
                    .map_err(|e| Error::io(ctx.local_dir.display(), e))?;
                let staging = match &resolved.staging {
                    Some(location) => {
                        Some(ctx.rt.block_on(ObjectStore::open(location, &ctx.doc.s3))?)
                    }
                    None => None,
                };
                let producer = TransactionalProducer::init(
                    &connection,
                    &resolved.topic,
                    transactional_id(&resolved.prefix, ctx.subtask),
                    Some(&self.field),
                )?;
                Ok(Box::new(ExactlyOnceWriter {
                    encode: self.encode.clone(),
                    record: EncodedRecord::default(),
                    producer,
                    rt: ctx.rt.clone(),
                    staging,
                    local_dir: ctx.local_dir.clone(),
                    subtask: ctx.subtask,
                    parallelism: ctx.parallelism,
                    attempt_id: ctx.attempt_id.clone(),
                    in_progress: None,
                    staged: Vec::new(),
                }))
            }
            Delivery::AtLeastOnce | Delivery::None => {
                let extra: &[(&str, &str)] = match resolved.delivery {
                    Delivery::AtLeastOnce => &[("enable.idempotence", "true")],
                    _ => &[],
                };
                let out = TopicProducer::create(&connection, &resolved.topic, extra)?;
                out.check_topic(&self.field)?;
                Ok(Box::new(DirectWriter {
                    encode: self.encode.clone(),
                    record: EncodedRecord::default(),
                    out,
                    flush_at_barriers: resolved.delivery == Delivery::AtLeastOnce,
                }))
            }
        }
    }

    fn recover(&self, pending: Vec<serde_json::Value>, ctx: &RecoverContext) -> Result<()> {
        let resolved = resolve(&self.spec, &self.field, &ctx.doc)?;
        let entries: Vec<PendingEntry> = pending
            .into_iter()
            .map(serde_json::from_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                Error::codec(
                    format!(
                        "pending state of the Kafka sink of topic {}",
                        resolved.topic
                    ),
                    e,
                )
            })?;
        let plan = plan_recovery(&entries);
        let mut stores = Stores::new(ctx);
        if !plan.is_empty() {
            let connection = Connection::of(&ctx.doc)?;
            for writer in &plan {
                recover_writer(&connection, &resolved, writer, ctx, &mut stores)?;
            }
        }
        // Objects no pending entry names: checkpoints that never completed, batches committed
        // before the crash. Only up to the claim (see the module docs).
        if let Some(staging) = &resolved.staging {
            let store = stores.open(staging)?;
            let listed: Vec<String> = ctx
                .rt
                .block_on(store.list(""))?
                .into_iter()
                .map(|o| store.uri(&o.key))
                .collect();
            let named: BTreeSet<&str> = entries
                .iter()
                .filter_map(|e| e.batch.as_ref().map(|b| b.object.as_str()))
                .collect();
            for orphan in orphans(listed.iter().map(String::as_str), &named, ctx.claimed) {
                tracing::info!(object = %orphan, "discarding staged Kafka records of a checkpoint that never completed or was committed");
                stores.delete(orphan)?;
            }
        }
        Ok(())
    }
}

/// Fences one old writer's transactional id, then commits its batches the marker does not
/// cover.
fn recover_writer(
    connection: &Connection,
    resolved: &Resolved,
    writer: &WriterRecovery,
    ctx: &RecoverContext,
    stores: &mut Stores<'_>,
) -> Result<()> {
    let id = transactional_id(&resolved.prefix, writer.writer);
    // Fencing first: after this no zombie of the id can commit, so the marker read next is
    // final.
    let producer = TransactionalProducer::init(connection, &resolved.topic, id.clone(), None)?;
    tracing::info!(transactional_id = %id, "fenced the transactional id of a writer of the restored checkpoint (its open transaction, if any, is aborted)");
    if writer.batches.is_empty() {
        return Ok(());
    }
    let marker = producer.read_marker()?;
    if let (Some(marker), Some(claimed)) = (marker, ctx.claimed)
        && marker > claimed
    {
        tracing::warn!(transactional_id = %id, marker, claimed, "the commit marker is above this attempt's checkpoint id: a newer JobManager is committing, or the checkpoint ids restarted (new checkpoint storage; give the sink a new transactionalIdPrefix then)");
    }
    for batch in &writer.batches {
        if is_committed(marker, batch.checkpoint) {
            tracing::info!(transactional_id = %id, checkpoint_id = batch.checkpoint, "staged Kafka records were committed before the restart");
            stores.delete(&batch.object)?;
            continue;
        }
        let local = stores.download(&batch.object)?;
        let committed = producer.commit_batch(&local, &batch.object, Some(batch.checkpoint), None);
        let _ = std::fs::remove_file(&local);
        let records = committed?;
        tracing::info!(transactional_id = %id, writer = writer.writer, checkpoint_id = batch.checkpoint, records, "committed staged Kafka records of a completed checkpoint");
        stores.delete(&batch.object)?;
    }
    Ok(())
}

/// Stores of staged objects during recovery, by folder URI.
struct Stores<'a> {
    ctx: &'a RecoverContext,
    open: HashMap<String, ObjectStore>,
    scratch: PathBuf,
}

impl<'a> Stores<'a> {
    fn new(ctx: &'a RecoverContext) -> Stores<'a> {
        Stores {
            ctx,
            open: HashMap::new(),
            scratch: std::env::temp_dir().join(format!(
                "weir-kafka-recovery-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )),
        }
    }

    fn open(&mut self, location: &Location) -> Result<ObjectStore> {
        let uri = location.uri();
        if let Some(store) = self.open.get(&uri) {
            return Ok(store.clone());
        }
        let store = self
            .ctx
            .rt
            .block_on(ObjectStore::open(location, &self.ctx.doc.s3))?;
        self.open.insert(uri, store.clone());
        Ok(store)
    }

    /// The store of an object's folder and the object's key in it.
    fn locate(&mut self, object: &str) -> Result<(ObjectStore, String)> {
        let (folder, name) = object
            .rsplit_once('/')
            .ok_or_else(|| Error::CorruptCheckpoint {
                object: object.to_string(),
                reason: "a staged Kafka batch must be named by a full URI".into(),
            })?;
        let store = self.open(&Location::parse(folder)?)?;
        Ok((store, name.to_string()))
    }

    /// Downloads a staged object of a completed checkpoint; missing is corruption.
    fn download(&mut self, object: &str) -> Result<PathBuf> {
        let (store, key) = self.locate(object)?;
        std::fs::create_dir_all(&self.scratch).map_err(|e| Error::io(self.scratch.display(), e))?;
        let local = self.scratch.join(&key);
        match self.ctx.rt.block_on(store.get_file(&key, &local)) {
            Ok(_) => Ok(local),
            Err(StorageError::NotFound { .. }) => Err(Error::CorruptCheckpoint {
                object: object.to_string(),
                reason: "staged Kafka records of a completed checkpoint are missing and not committed (the commit marker is below it); its records would be lost".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn delete(&mut self, object: &str) -> Result<()> {
        let (store, key) = self.locate(object)?;
        Ok(self.ctx.rt.block_on(store.delete(&key))?)
    }
}

impl Drop for Stores<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

/// A batch staged at a barrier, not yet committed.
struct LocalBatch {
    batch: StagedBatch,
    /// The staged object's key in `staging`.
    key: String,
    /// The local copy, read instead of downloading the object.
    local: PathBuf,
}

struct ExactlyOnceWriter<T> {
    encode: Arc<Encoder<T>>,
    record: EncodedRecord,
    producer: TransactionalProducer,
    rt: tokio::runtime::Handle,
    /// `None` without checkpointing: everything is committed at the end of input.
    staging: Option<ObjectStore>,
    local_dir: PathBuf,
    subtask: u32,
    parallelism: u32,
    attempt_id: String,
    in_progress: Option<BatchFile>,
    staged: Vec<LocalBatch>,
}

impl<T> ExactlyOnceWriter<T> {
    fn entries(&self) -> Vec<PendingEntry> {
        std::iter::once(None)
            .chain(self.staged.iter().map(|s| Some(s.batch.clone())))
            .map(|batch| PendingEntry {
                writer: self.subtask,
                parallelism: self.parallelism,
                batch,
            })
            .collect()
    }

    /// Commits one batch from its local copy, or from the staged object when the copy is gone.
    fn commit_staged(&mut self, staged: &LocalBatch) -> Result<()> {
        let Some(store) = self.staging.clone() else {
            return Ok(());
        };
        if !staged.local.exists() {
            self.rt
                .block_on(store.get_file(&staged.key, &staged.local))?;
        }
        let records = self.producer.commit_batch(
            &staged.local,
            &staged.batch.object,
            Some(staged.batch.checkpoint),
            Some(FaultPoint::KafkaSinkInTransaction),
        )?;
        tracing::debug!(
            subtask = self.subtask,
            checkpoint_id = staged.batch.checkpoint,
            records,
            "committed a Kafka transaction"
        );
        fault_points::hit(FaultPoint::KafkaSinkCommitted);
        let _ = std::fs::remove_file(&staged.local);
        // A failed delete leaves an orphan that the next recovery removes.
        if let Err(e) = self.rt.block_on(store.delete(&staged.key)) {
            tracing::warn!(object = %staged.batch.object, error = %e, "deleting committed staged Kafka records failed; recovery removes them later");
        }
        Ok(())
    }
}

impl<T: Send> SinkWriter<T> for ExactlyOnceWriter<T> {
    fn write(&mut self, item: T) -> Result<()> {
        self.record.key = None;
        self.record.value.clear();
        (self.encode)(&item, &mut self.record)?;
        let in_progress = match &mut self.in_progress {
            Some(file) => file,
            None => self
                .in_progress
                .insert(BatchFile::create(self.local_dir.join("in-progress"))?),
        };
        in_progress.append(&self.record)
    }

    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        if let Some(in_progress) = self.in_progress.take() {
            let Some(store) = &self.staging else {
                return Err(Error::kafka(
                    "Kafka sink",
                    "a barrier arrived but the job has no checkpoint storage to stage records in",
                ));
            };
            let sealed = in_progress.seal()?;
            let local = self.local_dir.join(format!("staged-{checkpoint_id}"));
            std::fs::rename(&sealed, &local).map_err(|e| Error::io(local.display(), e))?;
            let key = format!(
                "{:04}-{}-{checkpoint_id:010}",
                self.subtask, self.attempt_id
            );
            self.rt.block_on(store.put_file(&key, &local))?;
            self.staged.push(LocalBatch {
                batch: StagedBatch {
                    checkpoint: checkpoint_id,
                    object: store.uri(&key),
                },
                key,
                local,
            });
        }
        self.entries()
            .iter()
            .map(|e| {
                serde_json::to_value(e).map_err(|e| Error::codec("Kafka sink pending state", e))
            })
            .collect()
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<()> {
        let ready = self
            .staged
            .iter()
            .take_while(|s| s.batch.checkpoint <= checkpoint_id)
            .count();
        if ready > 0 {
            fault_points::hit(FaultPoint::KafkaSinkBeforeTransaction);
        }
        // Oldest first, each removed once committed: a failure leaves it and the rest pending.
        for _ in 0..ready {
            let staged = self.staged.remove(0);
            if let Err(e) = self.commit_staged(&staged) {
                self.staged.insert(0, staged);
                return Err(e);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        // Records after the last barrier: all of them without checkpointing (one transaction
        // at the end of input), none when the final checkpoint covered the input.
        let Some(in_progress) = self.in_progress.take() else {
            return Ok(());
        };
        let path = in_progress.seal()?;
        let records = self
            .producer
            .commit_batch(&path, &path.display().to_string(), None, None)?;
        tracing::info!(
            subtask = self.subtask,
            records,
            "committed the records of the end of input in one Kafka transaction"
        );
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}

/// At-least-once (flushes at every barrier and fails on a lost record) and `none`.
struct DirectWriter<T> {
    encode: Arc<Encoder<T>>,
    record: EncodedRecord,
    out: TopicProducer,
    flush_at_barriers: bool,
}

impl<T: Send> SinkWriter<T> for DirectWriter<T> {
    fn write(&mut self, item: T) -> Result<()> {
        self.record.key = None;
        self.record.value.clear();
        (self.encode)(&item, &mut self.record)?;
        self.out.send(&self.record)
    }

    fn pre_commit(&mut self, _checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        if self.flush_at_barriers {
            // Everything before the barrier is in Kafka before the checkpoint can complete.
            self.out.flush()?;
        }
        Ok(Vec::new())
    }

    fn commit(&mut self, _checkpoint_id: u64) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        match self.out.flush() {
            Err(e) if !self.flush_at_barriers => {
                tracing::warn!(error = %e, "Kafka sink with delivery none lost records");
                Ok(())
            }
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(extra: &str) -> JobDocument {
        JobDocument::from_yaml(
            &format!("job: {{name: seq}}\njobId: j1\nkafka: {{bootstrapServers: 'h:1'}}\n{extra}"),
            "job.yaml",
        )
        .expect("valid document")
    }

    fn spec(yaml: &str) -> KafkaSinkSpec {
        serde_yaml_ng::from_str(yaml).expect("spec")
    }

    #[test]
    fn only_a_definite_answer_is_a_marker() {
        assert_eq!(marker_of(Some((Offset::Offset(7), Ok(())))), Ok(Some(7)));
        assert_eq!(marker_of(Some((Offset::Invalid, Ok(())))), Ok(None));
        // An error for the partition comes with offset -1001 (Invalid): never "no marker",
        // which would commit every staged batch again.
        let loading = KafkaError::OffsetFetch(RDKafkaErrorCode::CoordinatorLoadInProgress);
        let error = marker_of(Some((Offset::Invalid, Err(loading)))).unwrap_err();
        assert!(error.contains("error for the marker"), "{error}");
        assert!(marker_of(None).unwrap_err().contains("does not name"));
        assert!(marker_of(Some((Offset::End, Ok(())))).is_err());
    }

    fn batch(checkpoint: u64, writer: u32) -> StagedBatch {
        StagedBatch {
            checkpoint,
            object: format!(
                "file:///s/j1/kafka-staging/p/{writer:04}-0000000003-0badf00d-{checkpoint:010}"
            ),
        }
    }

    fn entry(writer: u32, parallelism: u32, batch: Option<StagedBatch>) -> PendingEntry {
        PendingEntry {
            writer,
            parallelism,
            batch,
        }
    }

    #[test]
    fn defaults_follow_the_checkpointing_mode() {
        let s = spec("{topic: out}");
        let checkpointed = doc("checkpointing: {interval: 1s, storage: 'file:///s'}");
        let resolved = resolve(&s, "job.args.output.kafka", &checkpointed).expect("resolve");
        assert_eq!(resolved.delivery, Delivery::ExactlyOnce);
        assert_eq!(resolved.prefix, "weir-j1-out");
        assert_eq!(
            resolved.staging.map(|l| l.uri()),
            Some("file:///s/j1/kafka-staging/weir-j1-out".to_string())
        );
        let unaligned =
            doc("checkpointing: {interval: 1s, storage: 'file:///s', mode: at-least-once}");
        let resolved = resolve(&s, "f", &unaligned).expect("resolve");
        assert_eq!(resolved.delivery, Delivery::AtLeastOnce);
        let resolved = resolve(&s, "f", &doc("")).expect("resolve");
        assert_eq!(
            (resolved.delivery, resolved.staging),
            (Delivery::AtLeastOnce, None)
        );
    }

    #[test]
    fn bad_names_and_unknown_fields_name_the_setting() {
        let err = resolve(&spec("{topic: 'a b'}"), "job.args.output.kafka", &doc(""))
            .expect_err("bad topic")
            .to_string();
        assert!(err.contains("job.args.output.kafka.topic"), "{err}");
        let err = resolve(
            &spec("{topic: t, transactionalIdPrefix: 'x/y'}"),
            "job.args.output.kafka",
            &doc(""),
        )
        .expect_err("bad prefix")
        .to_string();
        assert!(
            err.contains("job.args.output.kafka.transactionalIdPrefix"),
            "{err}"
        );
        assert!(serde_yaml_ng::from_str::<KafkaSinkSpec>("{topic: t, topics: u}").is_err());
        assert_eq!(
            spec("{topic: t, delivery: none}").delivery,
            Some(Delivery::None)
        );
    }

    #[test]
    fn pending_entries_round_trip_with_and_without_a_batch() {
        for e in [entry(1, 2, None), entry(0, 2, Some(batch(7, 0)))] {
            let json = serde_json::to_value(&e).expect("json");
            assert_eq!(
                serde_json::from_value::<PendingEntry>(json).expect("parse"),
                e
            );
        }
        let json = serde_json::to_value(entry(0, 2, Some(batch(7, 0)))).expect("json");
        assert_eq!(json["checkpoint"], 7);
        assert_eq!(json["writer"], 0);
    }

    #[test]
    fn recovery_covers_every_writer_of_the_old_parallelism_in_checkpoint_order() {
        let entries = vec![
            entry(0, 3, None),
            entry(0, 3, Some(batch(9, 0))),
            entry(0, 3, Some(batch(8, 0))),
            entry(2, 3, None),
            entry(2, 3, Some(batch(9, 2))),
            // The same batch reported twice (it stayed pending across two checkpoints).
            entry(2, 3, Some(batch(9, 2))),
        ];
        let plan = plan_recovery(&entries);
        assert_eq!(
            plan,
            vec![
                WriterRecovery {
                    writer: 0,
                    batches: vec![batch(8, 0), batch(9, 0)]
                },
                // Subtask 1 reported nothing (lost entries): its id is still fenced.
                WriterRecovery {
                    writer: 1,
                    batches: vec![]
                },
                WriterRecovery {
                    writer: 2,
                    batches: vec![batch(9, 2)]
                },
            ]
        );
        assert!(plan_recovery(&[]).is_empty());
    }

    #[test]
    fn a_marker_covers_its_checkpoint_and_older_ones() {
        assert!(!is_committed(None, 1));
        assert!(is_committed(Some(8), 8));
        assert!(is_committed(Some(9), 8));
        assert!(!is_committed(Some(7), 8));
    }

    #[test]
    fn orphans_are_unnamed_objects_up_to_the_claim() {
        let listed = [
            batch(5, 0).object,
            batch(6, 0).object,
            batch(7, 1).object,
            batch(12, 0).object,
            "file:///s/j1/kafka-staging/p/notes.txt".to_string(),
        ];
        let named: BTreeSet<&str> = [listed[1].as_str()].into();
        let orphans = orphans(listed.iter().map(String::as_str), &named, Some(10));
        assert_eq!(orphans, vec![listed[0].as_str(), listed[2].as_str()]);
        assert_eq!(staged_checkpoint_id(&batch(12, 3).object), Some(12));
    }

    #[test]
    fn batch_files_round_trip_keys_and_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = BatchFile::create(dir.path().join("b")).expect("create");
        let records = [
            EncodedRecord {
                key: Some(b"k1".to_vec()),
                value: b"{\"a\":1}".to_vec(),
            },
            EncodedRecord {
                key: None,
                value: Vec::new(),
            },
            EncodedRecord {
                key: Some(Vec::new()),
                value: b"v".to_vec(),
            },
        ];
        for r in &records {
            file.append(r).expect("append");
        }
        let path = file.seal().expect("seal");
        let mut reader = BatchReader::open(&path, "test").expect("open");
        let mut read = EncodedRecord::default();
        for r in &records {
            assert!(reader.next(&mut read).expect("next"));
            assert_eq!((&read.key, &read.value), (&r.key, &r.value));
        }
        assert!(!reader.next(&mut read).expect("end"));

        std::fs::write(&path, b"garbage!").expect("write");
        let err = BatchReader::open(&path, "s3://b/x").err().expect("corrupt");
        assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err}");
    }
}
