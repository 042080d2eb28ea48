//! The Kafka source: reads listed topics and/or topics matching a pattern, from positions that
//! are the job's checkpointed operator state. The consumer group only receives the offsets of
//! completed checkpoints, for monitoring; recovery never reads them.
//!
//! Each partition belongs to one subtask by Flink's `KafkaTopicPartitionAssigner` formula
//! ([`owner`]), and each subtask `assign`s exactly its partitions: no group membership, no
//! rebalancing, the same answer after every restart. Offsets are union-redistributed on
//! restore, so after a rescale every subtask picks the entries of the partitions it now owns;
//! an owned partition without an entry appeared after the checkpoint and is read from its
//! earliest offset (as are partitions found later by discovery). A fresh start resolves
//! `startFrom` to concrete offsets before reading, so every snapshot holds plain numbers.
//!
//! Bounded (`bounded: true`, Flink's `setBounded(latest())`): the end offset of every partition
//! is taken once, at the job's first start, and checkpointed beside the position, so a
//! restored run stops exactly where the first run would have.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::api::{SourceContext, SourceFactory, SourceReader, SourceStatus};
use crate::error::{Error, Result};
use crate::spec::{KafkaOptions, MalformedRecordPolicy};

/// Where jobs accept the source's settings (`input: {kafka: {...}}` in their args); spec
/// errors name fields under it.
pub const INPUT_FIELD: &str = "job.args.input.kafka";

/// How long metadata and offset requests may take before the broker counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the task waits before polling again when no record is ready.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Snapshots kept for committing to the group; older ones never completed.
const PENDING_COMMITS: usize = 16;
/// Transient consumer errors are logged at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The source's settings, as jobs accept them (`input: {kafka: {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// Topics to read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// A regular expression a whole topic name must match to be read; topics created later
    /// that match are found by partition discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// Where a fresh start (no checkpoint) begins reading.
    #[serde(default)]
    pub start_from: StartFrom,
    /// The consumer group completed checkpoints' offsets are committed to (monitoring only).
    /// Default: `weir-<jobId>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default)]
    pub isolation: Isolation,
    /// How often to look for new partitions (and new topics matching `topicPattern`); `0s`
    /// turns discovery off, as does `bounded`.
    #[serde(
        default = "default_partition_discovery_interval",
        with = "humantime_serde"
    )]
    pub partition_discovery_interval: Duration,
    /// Read up to the end offsets seen at the job's first start, then finish.
    #[serde(default)]
    pub bounded: bool,
}

fn default_partition_discovery_interval() -> Duration {
    Duration::from_secs(30)
}

impl KafkaSourceSpec {
    /// `topics`, everything else at its default.
    pub fn topics<S: Into<String>>(topics: impl IntoIterator<Item = S>) -> Self {
        KafkaSourceSpec {
            topics: topics.into_iter().map(Into::into).collect(),
            topic_pattern: None,
            start_from: StartFrom::default(),
            group_id: None,
            isolation: Isolation::default(),
            partition_discovery_interval: default_partition_discovery_interval(),
            bounded: false,
        }
    }
}

/// Where a fresh start begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StartFrom {
    /// Each partition's first offset.
    #[default]
    Earliest,
    /// Each partition's end at start-up: only records written afterwards.
    Latest,
    /// The consumer group's committed offsets; partitions without one start from earliest.
    Committed,
    /// The first record at or after this time (ms since the epoch); partitions with none
    /// start at their end.
    Timestamp(i64),
}

/// Which records a reader sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Only records of committed transactions (and non-transactional ones).
    #[default]
    ReadCommitted,
    /// Everything written, aborted transactions included.
    ReadUncommitted,
}

impl Isolation {
    fn property(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// One Kafka record as the job receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Create or log-append time, ms since the epoch.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl KafkaRecord {
    /// The record's partition as a watermark split (`WatermarkStrategy::with_splits`).
    pub fn split_id(&self) -> u64 {
        split_id(&self.topic, self.partition)
    }

    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A stable id of `topic`'s `partition` (the same in every process and release).
pub fn split_id(topic: &str, partition: i32) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(topic.as_bytes(), u64::from(partition as u32))
}

/// The subtask that reads `topic`'s `partition`: Flink's `KafkaTopicPartitionAssigner`, so
/// a topic's partitions spread round-robin from a start that depends on the topic's name.
pub(crate) fn owner(topic: &str, partition: i32, parallelism: u32) -> u32 {
    // Java's String.hashCode over UTF-16 code units, with int overflow.
    let hash = topic.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let parallelism = u64::from(parallelism.max(1));
    let start = u64::from((hash.wrapping_mul(31) & 0x7FFF_FFFF) as u32) % parallelism;
    ((start + u64::from(partition as u32)) % parallelism) as u32
}

/// Which topics a source reads: validated once, when the job is defined.
#[derive(Debug)]
struct Subscription {
    topics: Vec<String>,
    pattern: Option<Regex>,
}

impl Subscription {
    fn new(spec: &KafkaSourceSpec) -> Result<Self> {
        if spec.topics.is_empty() && spec.topic_pattern.is_none() {
            return Err(Error::spec(
                format!("{INPUT_FIELD}.topics"),
                "name at least one topic, or set topicPattern",
            ));
        }
        if let Some(empty) = spec.topics.iter().find(|t| t.trim().is_empty()) {
            return Err(Error::spec(
                format!("{INPUT_FIELD}.topics"),
                format!("topic name {empty:?} is empty"),
            ));
        }
        if let StartFrom::Timestamp(ms) = spec.start_from
            && ms < 0
        {
            return Err(Error::spec(
                format!("{INPUT_FIELD}.startFrom.timestamp"),
                format!("{ms} is before 1970: give milliseconds since the epoch"),
            ));
        }
        let pattern = spec
            .topic_pattern
            .as_deref()
            .map(|p| {
                // Whole names only, as Flink's `Pattern.matcher(topic).matches()`.
                Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    Error::spec(
                        format!("{INPUT_FIELD}.topicPattern"),
                        format!("invalid regular expression: {e}"),
                    )
                })
            })
            .transpose()?;
        Ok(Subscription {
            topics: spec.topics.clone(),
            pattern,
        })
    }

    fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
            || self.pattern.as_ref().is_some_and(|p| p.is_match(topic))
    }
}

type Decoder<T> = Arc<dyn Fn(KafkaRecord) -> std::result::Result<T, String> + Send + Sync>;

/// A replayable Kafka source (see the module documentation).
pub struct KafkaSource<T> {
    spec: KafkaSourceSpec,
    subscription: Arc<Subscription>,
    decode: Decoder<T>,
}

impl KafkaSource<KafkaRecord> {
    /// Every record as it is.
    pub fn records(spec: KafkaSourceSpec) -> Result<Self> {
        Ok(KafkaSource {
            subscription: Arc::new(Subscription::new(&spec)?),
            spec,
            decode: Arc::new(Ok),
        })
    }
}

impl<T: Send + 'static> KafkaSource<T> {
    /// Each record through `decode`; an `Err` is a malformed record (the job's
    /// `malformedRecords` policy: fail naming topic, partition and offset, or skip and count).
    pub fn decoded(
        spec: KafkaSourceSpec,
        decode: impl Fn(&KafkaRecord) -> std::result::Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self> {
        Ok(KafkaSource {
            subscription: Arc::new(Subscription::new(&spec)?),
            spec,
            decode: Arc::new(move |record| decode(&record)),
        })
    }
}

/// The checkpointed position of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PartitionOffset {
    topic: String,
    partition: i32,
    /// The next offset to read.
    offset: i64,
    /// Bounded: the offset reading stops before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct PartitionState {
    next: i64,
    end: Option<i64>,
}

impl PartitionState {
    fn finished(&self) -> bool {
        self.end.is_some_and(|end| self.next >= end)
    }
}

/// `BTreeMap<Arc<str>, _>` looks up by `&str` and hands records the shared topic name.
type Partitions = BTreeMap<Arc<str>, BTreeMap<i32, PartitionState>>;

/// Partition ids of the topics a subscription matches, from the broker's metadata.
type TopicPartitions = BTreeMap<String, Vec<i32>>;

impl<T: Send + 'static> SourceFactory for KafkaSource<T> {
    type Item = T;

    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<Vec<serde_json::Value>>,
    ) -> Result<Box<dyn SourceReader<T>>> {
        let options = super::options(&ctx.doc)?;
        let group_id = self
            .spec
            .group_id
            .clone()
            .unwrap_or_else(|| super::default_group_id(&ctx.doc));
        let consumer = create_consumer(options, &group_id, self.spec.isolation, ctx.subtask)?;
        let discovery = (!self.spec.bounded && !self.spec.partition_discovery_interval.is_zero())
            .then_some(self.spec.partition_discovery_interval);
        let mut reader = KafkaReader {
            consumer,
            subscription: self.subscription.clone(),
            bootstrap: options.bootstrap_servers.clone(),
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            bounded: self.spec.bounded,
            partitions: Partitions::new(),
            discovery,
            next_discovery: Instant::now() + discovery.unwrap_or_default(),
            pending_commits: BTreeMap::new(),
            decode: self.decode.clone(),
            policy: ctx.doc.malformed_records,
            last_warning: None,
        };
        let found = reader.fetch_partitions()?;
        if let Some(missing) = self
            .subscription
            .topics
            .iter()
            .find(|t| !found.contains_key(*t))
        {
            return Err(Error::spec(
                format!("{INPUT_FIELD}.topics"),
                format!("topic {missing:?} does not exist on {}", reader.bootstrap),
            ));
        }
        let owned = reader.owned(&found);
        // A checkpoint without this source's state (it was added to the job since) is a
        // fresh start for it.
        match restored.filter(|entries| !entries.is_empty()) {
            Some(entries) => reader.restore(&owned, entries)?,
            None => reader.start_fresh(&owned, self.spec.start_from)?,
        }
        let assigned: Vec<String> = reader
            .partitions
            .iter()
            .flat_map(|(topic, ps)| {
                ps.iter()
                    .map(move |(p, s)| format!("{topic}[{p}]@{}", s.next))
            })
            .collect();
        tracing::info!(subtask = ctx.subtask, parallelism = ctx.parallelism, group = %group_id, partitions = %assigned.join(" "), bounded = self.spec.bounded, "Kafka source assigned");
        reader.assign_unfinished(&reader.partitions)?;
        Ok(Box::new(reader))
    }
}

/// A consumer that is assigned partitions (never subscribes) and commits only by hand.
fn create_consumer(
    options: &KafkaOptions,
    group_id: &str,
    isolation: Isolation,
    subtask: u32,
) -> Result<BaseConsumer<ReaderContext>> {
    let mut config = super::client_config(options)?;
    if config.get("client.id").is_none() {
        config.set("client.id", format!("{group_id}-source-{subtask}"));
    }
    // Only when a checkpointed offset is gone (retention deleted it): losing the least.
    if config.get("auto.offset.reset").is_none() {
        config.set("auto.offset.reset", "earliest");
    }
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", isolation.property());
    config.create_with_context(ReaderContext).map_err(|e| {
        Error::spec(
            "kafka.properties",
            format!("cannot create a Kafka consumer: {e}"),
        )
    })
}

/// Routes librdkafka's callbacks to tracing.
struct ReaderContext;

impl ClientContext for ReaderContext {
    /// Mostly transient (a broker restarting); the client reconnects by itself.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka consumer");
    }
}

impl ConsumerContext for ReaderContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "committing a checkpoint's offsets to the consumer group failed (they are for monitoring only)");
        }
    }
}

struct KafkaReader<T> {
    consumer: BaseConsumer<ReaderContext>,
    subscription: Arc<Subscription>,
    bootstrap: String,
    subtask: u32,
    parallelism: u32,
    bounded: bool,
    /// What this subtask reads; bounded partitions stay after they finish (checkpointed).
    partitions: Partitions,
    discovery: Option<Duration>,
    next_discovery: Instant,
    /// Positions of snapshots whose checkpoint may still complete, by checkpoint id.
    pending_commits: BTreeMap<u64, Vec<(Arc<str>, i32, i64)>>,
    decode: Decoder<T>,
    policy: MalformedRecordPolicy,
    last_warning: Option<Instant>,
}

/// `ListOffsets` queries.
const EARLIEST: Offset = Offset::Beginning;
const LATEST: Offset = Offset::End;

impl<T> KafkaReader<T> {
    fn broker_error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::kafka(
            format!(
                "{what} from kafka.bootstrapServers {} (waited up to {REQUEST_TIMEOUT:?})",
                self.bootstrap
            ),
            e,
        )
    }

    /// The partitions of every existing topic the subscription matches.
    fn fetch_partitions(&self) -> Result<TopicPartitions> {
        let metadata = self
            .consumer
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|e| self.broker_error("topic metadata", e))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && self.subscription.matches(t.name()))
            .map(|t| {
                let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                ids.sort_unstable();
                (t.name().to_string(), ids)
            })
            .collect())
    }

    fn owned(&self, found: &TopicPartitions) -> Vec<(Arc<str>, i32)> {
        let mut owned = Vec::new();
        for (topic, ids) in found {
            let topic: Arc<str> = Arc::from(topic.as_str());
            for partition in ids {
                if owner(&topic, *partition, self.parallelism) == self.subtask {
                    owned.push((topic.clone(), *partition));
                }
            }
        }
        owned
    }

    fn insert(&mut self, topic: &Arc<str>, partition: i32, state: PartitionState) {
        self.partitions
            .entry(topic.clone())
            .or_default()
            .insert(partition, state);
    }

    fn start_fresh(&mut self, owned: &[(Arc<str>, i32)], start_from: StartFrom) -> Result<()> {
        let starts = match start_from {
            StartFrom::Earliest => self.list_offsets(owned, EARLIEST)?,
            StartFrom::Latest => self.list_offsets(owned, LATEST)?,
            StartFrom::Timestamp(ms) => self.list_offsets(owned, Offset::Offset(ms))?,
            StartFrom::Committed => self.committed_offsets(owned)?,
        };
        let ends = if self.bounded {
            Some(self.list_offsets(owned, LATEST)?)
        } else {
            None
        };
        for (topic, partition) in owned {
            let key = (topic.clone(), *partition);
            // Both lists answer every partition asked for (or failed above).
            let end = ends.as_ref().map(|ends| ends[&key]);
            let next = starts[&key];
            self.insert(
                topic,
                *partition,
                PartitionState {
                    // A start past the end (records written in between) reads nothing.
                    next: end.map_or(next, |end| next.min(end)),
                    end,
                },
            );
        }
        Ok(())
    }

    fn restore(
        &mut self,
        owned: &[(Arc<str>, i32)],
        entries: Vec<serde_json::Value>,
    ) -> Result<()> {
        let mut positions: BTreeMap<(String, i32), PartitionOffset> = BTreeMap::new();
        for entry in entries {
            let position: PartitionOffset = serde_json::from_value(entry)
                .map_err(|e| Error::codec("Kafka source offsets", e))?;
            positions.insert((position.topic.clone(), position.partition), position);
        }
        let mut created_since = Vec::new();
        let mut end_unknown = Vec::new();
        for (topic, partition) in owned {
            match positions.remove(&(topic.to_string(), *partition)) {
                Some(position) => {
                    let end = if self.bounded { position.end } else { None };
                    if self.bounded && end.is_none() {
                        end_unknown.push((topic.clone(), *partition));
                    }
                    self.insert(
                        topic,
                        *partition,
                        PartitionState {
                            next: position.offset,
                            end,
                        },
                    );
                }
                // Bounded input is what existed at the first start: later partitions are not
                // part of it.
                None if self.bounded => {}
                None => created_since.push((topic.clone(), *partition)),
            }
        }
        // Checkpointed before the job was bounded: its end is taken now.
        for ((topic, partition), end) in self.list_offsets(&end_unknown, LATEST)? {
            if let Some(state) = self
                .partitions
                .get_mut(&topic)
                .and_then(|ps| ps.get_mut(&partition))
            {
                state.end = Some(end);
            }
        }
        for ((topic, partition), next) in self.list_offsets(&created_since, EARLIEST)? {
            self.insert(&topic, partition, PartitionState { next, end: None });
        }
        if !created_since.is_empty() {
            tracing::info!(subtask = self.subtask, partitions = %describe(&created_since), "Kafka source: partitions created since the checkpoint, read from their earliest offset");
        }
        Ok(())
    }

    /// Concrete offsets for `query` (earliest, latest, or a timestamp in ms) per partition.
    /// A timestamp after a partition's last record gives its end.
    fn list_offsets(
        &self,
        partitions: &[(Arc<str>, i32)],
        query: Offset,
    ) -> Result<BTreeMap<(Arc<str>, i32), i64>> {
        let mut offsets = BTreeMap::new();
        if partitions.is_empty() {
            return Ok(offsets);
        }
        let mut request = TopicPartitionList::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            request
                .add_partition_offset(topic, *partition, query)
                .map_err(|e| self.broker_error("listing offsets", e))?;
        }
        // `offsets_for_times` is ListOffsets: -2 is earliest, -1 latest (at the isolation
        // level: the last stable offset for read_committed), others a timestamp.
        let answer = self
            .consumer
            .offsets_for_times(request, REQUEST_TIMEOUT)
            .map_err(|e| self.broker_error("listing offsets", e))?;
        let mut past_the_end = Vec::new();
        for (topic, partition) in partitions {
            let element = answer.find_partition(topic, *partition).ok_or_else(|| {
                self.broker_error(
                    "listing offsets",
                    format!("no answer for {topic}[{partition}]"),
                )
            })?;
            element.error().map_err(|e| {
                self.broker_error(&format!("listing offsets of {topic}[{partition}]"), e)
            })?;
            match element.offset() {
                Offset::Offset(offset) => {
                    offsets.insert((topic.clone(), *partition), offset);
                }
                // No record at or after the timestamp.
                _ if matches!(query, Offset::Offset(_)) => {
                    past_the_end.push((topic.clone(), *partition));
                }
                other => {
                    return Err(self.broker_error(
                        &format!("listing offsets of {topic}[{partition}]"),
                        format!("no offset in the answer ({other:?})"),
                    ));
                }
            }
        }
        offsets.extend(self.list_offsets(&past_the_end, LATEST)?);
        Ok(offsets)
    }

    /// The group's committed offsets; earliest where the group has none.
    fn committed_offsets(
        &self,
        partitions: &[(Arc<str>, i32)],
    ) -> Result<BTreeMap<(Arc<str>, i32), i64>> {
        let mut offsets = BTreeMap::new();
        if partitions.is_empty() {
            return Ok(offsets);
        }
        let mut request = TopicPartitionList::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            request.add_partition(topic, *partition);
        }
        let answer = self
            .consumer
            .committed_offsets(request, REQUEST_TIMEOUT)
            .map_err(|e| self.broker_error("the consumer group's committed offsets", e))?;
        let mut uncommitted = Vec::new();
        for (topic, partition) in partitions {
            match answer.find_partition(topic, *partition).map(|e| e.offset()) {
                Some(Offset::Offset(offset)) => {
                    offsets.insert((topic.clone(), *partition), offset);
                }
                _ => uncommitted.push((topic.clone(), *partition)),
            }
        }
        offsets.extend(self.list_offsets(&uncommitted, EARLIEST)?);
        Ok(offsets)
    }

    /// Adds `partitions` (with their positions) to the consumer's assignment, except finished
    /// bounded ones.
    fn assign_unfinished(&self, partitions: &Partitions) -> Result<()> {
        let mut assignment = TopicPartitionList::new();
        for (topic, ps) in partitions {
            for (partition, state) in ps.iter().filter(|(_, s)| !s.finished()) {
                assignment
                    .add_partition_offset(topic, *partition, Offset::Offset(state.next))
                    .map_err(|e| Error::kafka("assigning partitions", e))?;
            }
        }
        if assignment.count() == 0 {
            return Ok(());
        }
        // Incremental: discovery adds to the assignment without restarting the others.
        self.consumer
            .incremental_assign(&assignment)
            .map_err(|e| Error::kafka("assigning partitions", e))
    }

    /// Looks for partitions created since the last look; those this subtask owns are read
    /// from their earliest offset.
    fn discover(&mut self) -> Result<()> {
        let found = self.fetch_partitions()?;
        let new: Vec<(Arc<str>, i32)> = self
            .owned(&found)
            .into_iter()
            .filter(|(topic, partition)| {
                !self
                    .partitions
                    .get(topic)
                    .is_some_and(|ps| ps.contains_key(partition))
            })
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut added = Partitions::new();
        for ((topic, partition), next) in self.list_offsets(&new, EARLIEST)? {
            added
                .entry(topic)
                .or_default()
                .insert(partition, PartitionState { next, end: None });
        }
        self.assign_unfinished(&added)?;
        for (topic, ps) in added {
            self.partitions.entry(topic).or_default().extend(ps);
        }
        tracing::info!(subtask = self.subtask, partitions = %describe(&new), "Kafka source: new partitions found, reading them from their earliest offset");
        Ok(())
    }

    /// Moves positions past what the consumer skipped without handing it out (transaction
    /// markers, aborted records): the end of a bounded partition may be such a marker.
    fn advance_to_consumer_positions(&mut self) -> Result<()> {
        let positions = self
            .consumer
            .position()
            .map_err(|e| Error::kafka("reading the consumer's positions", e))?;
        let mut finished = TopicPartitionList::new();
        for element in positions.elements() {
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            let Some(state) = self
                .partitions
                .get_mut(element.topic())
                .and_then(|ps| ps.get_mut(&element.partition()))
            else {
                continue;
            };
            state.next = state.next.max(position);
            if state.finished() {
                finished.add_partition(element.topic(), element.partition());
            }
        }
        self.unassign(&finished)
    }

    fn unassign(&self, partitions: &TopicPartitionList) -> Result<()> {
        if partitions.count() == 0 {
            return Ok(());
        }
        self.consumer
            .incremental_unassign(partitions)
            .map_err(|e| Error::kafka("unassigning finished partitions", e))
    }

    fn all_finished(&self) -> bool {
        self.partitions
            .values()
            .flat_map(BTreeMap::values)
            .all(PartitionState::finished)
    }

    /// Transient errors (a broker restarting or unreachable for a while) are the client's to
    /// retry; anything else fails the attempt (the job restarts from its checkpoint).
    fn on_consumer_error(&mut self, error: KafkaError) -> Result<()> {
        use RDKafkaErrorCode::*;
        match error {
            KafkaError::PartitionEOF(_) => Ok(()),
            KafkaError::MessageConsumption(
                BrokerTransportFailure
                | AllBrokersDown
                | Resolve
                | OperationTimedOut
                | RequestTimedOut
                | NetworkException
                | BrokerNotAvailable
                | LeaderNotAvailable
                | NotLeaderForPartition
                | NotCoordinator
                | CoordinatorNotAvailable
                | CoordinatorLoadInProgress
                | UnknownTopicOrPartition
                | KafkaStorageError
                | FencedLeaderEpoch
                | UnknownLeaderEpoch,
            ) => {
                if self
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= WARNING_INTERVAL)
                {
                    self.last_warning = Some(Instant::now());
                    tracing::warn!(%error, bootstrap = %self.bootstrap, subtask = self.subtask, "Kafka source: transient error, the client retries");
                }
                Ok(())
            }
            error => Err(Error::kafka(
                format!("reading from kafka.bootstrapServers {}", self.bootstrap),
                error,
            )),
        }
    }
}

/// The record `message` is, or `None` when it is not to be read (past a bounded end).
fn to_record(partitions: &Partitions, message: &BorrowedMessage<'_>) -> Option<KafkaRecord> {
    let (partition, offset) = (message.partition(), message.offset());
    let (topic, ps) = partitions.get_key_value(message.topic())?;
    if ps.get(&partition)?.end.is_some_and(|end| offset >= end) {
        return None;
    }
    Some(KafkaRecord {
        topic: topic.clone(),
        partition,
        offset,
        timestamp: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

impl<T: Send + 'static> KafkaReader<T> {
    /// Advances the record's partition past it and hands it to the job (decoded); a bounded
    /// partition that reached its end leaves the assignment.
    fn accept(&mut self, record: KafkaRecord, out: &mut Vec<T>) -> Result<()> {
        let (partition, offset) = (record.partition, record.offset);
        let topic = record.topic.clone();
        if let Some(state) = self
            .partitions
            .get_mut(&topic)
            .and_then(|ps| ps.get_mut(&partition))
        {
            state.next = offset + 1;
            if state.finished() {
                let mut done = TopicPartitionList::new();
                done.add_partition(&topic, partition);
                self.unassign(&done)?;
            }
        }
        match (self.decode)(record) {
            Ok(item) => out.push(item),
            Err(message) => {
                let location = format!("kafka topic {topic} partition {partition} offset {offset}");
                crate::connectors::malformed_record(self.policy, location, message)?;
            }
        }
        Ok(())
    }
}

fn describe(partitions: &[(Arc<str>, i32)]) -> String {
    partitions
        .iter()
        .map(|(t, p)| format!("{t}[{p}]"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl<T: Send + 'static> SourceReader<T> for KafkaReader<T> {
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        if let Some(interval) = self.discovery
            && Instant::now() >= self.next_discovery
        {
            self.next_discovery = Instant::now() + interval;
            // A failed look is tried again at the next interval; reading goes on meanwhile.
            if let Err(e) = self.discover() {
                tracing::warn!(error = %e, subtask = self.subtask, "Kafka source: partition discovery failed");
            }
        }
        while out.len() < max {
            // A message borrows the consumer: copy it out before updating the reader.
            let polled = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => Ok(to_record(&self.partitions, &message)),
                Some(Err(e)) => Err(e),
            };
            match polled {
                Ok(Some(record)) => self.accept(record, out)?,
                Ok(None) => {}
                Err(e) => self.on_consumer_error(e)?,
            }
        }
        if !out.is_empty() {
            return Ok(SourceStatus::More);
        }
        self.advance_to_consumer_positions()?;
        if self.bounded && self.all_finished() {
            return Ok(SourceStatus::Finished);
        }
        Ok(SourceStatus::Idle(IDLE_WAIT))
    }

    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        let mut entries = Vec::new();
        let mut commit = Vec::new();
        for (topic, ps) in &self.partitions {
            for (partition, state) in ps {
                commit.push((topic.clone(), *partition, state.next));
                let entry = PartitionOffset {
                    topic: topic.to_string(),
                    partition: *partition,
                    offset: state.next,
                    end: state.end,
                };
                entries.push(
                    serde_json::to_value(entry)
                        .map_err(|e| Error::codec("Kafka source offsets", e))?,
                );
            }
        }
        self.pending_commits.insert(checkpoint_id, commit);
        while self.pending_commits.len() > PENDING_COMMITS {
            self.pending_commits.pop_first();
        }
        Ok(entries)
    }

    fn splits(&self) -> Option<Vec<u64>> {
        Some(
            self.partitions
                .iter()
                .flat_map(|(topic, ps)| {
                    ps.iter()
                        .filter(|(_, state)| !state.finished())
                        .map(|(partition, _)| split_id(topic, *partition))
                })
                .collect(),
        )
    }

    /// Commits the checkpoint's positions to the consumer group (asynchronously): lag
    /// monitoring and `startFrom: committed` see them; recovery does not use them.
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let Some(positions) = self.pending_commits.remove(&checkpoint_id) else {
            return Ok(());
        };
        // Snapshots older than a completed checkpoint are superseded.
        self.pending_commits = self.pending_commits.split_off(&checkpoint_id);
        let mut offsets = TopicPartitionList::with_capacity(positions.len());
        for (topic, partition, next) in &positions {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| Error::kafka("committing offsets", e))?;
        }
        if offsets.count() == 0 {
            return Ok(());
        }
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, checkpoint_id, "committing the checkpoint's offsets to the consumer group failed (they are for monitoring only)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_flinks_formula() {
        // Java: "test".hashCode() == 3556498, "orders".hashCode() == -1008770331.
        let owners = |topic: &str, parallelism: u32| -> Vec<u32> {
            (0..4).map(|p| owner(topic, p, parallelism)).collect()
        };
        assert_eq!(owners("test", 2), [0, 1, 0, 1]);
        assert_eq!(owners("test", 3), [1, 2, 0, 1]);
        assert_eq!(owners("orders", 3), [0, 1, 2, 0]);
        assert_eq!(owners("orders", 7), [3, 4, 5, 6]);
        // Surrogate pairs hash as two UTF-16 units, as in Java.
        assert_eq!(owners("clicks-\u{e9}\u{1F600}", 7), [6, 0, 1, 2]);
    }

    /// As jobs read it: YAML in the document, then JSON values (`JobDocument::args`).
    fn parse(yaml: &str) -> std::result::Result<KafkaSourceSpec, String> {
        let value: serde_json::Value = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn spec_defaults_and_forms() {
        let spec = parse("topics: [a]").expect("spec");
        assert_eq!(spec, KafkaSourceSpec::topics(["a"]));
        assert_eq!(spec.start_from, StartFrom::Earliest);
        assert_eq!(spec.isolation, Isolation::ReadCommitted);
        assert_eq!(spec.partition_discovery_interval, Duration::from_secs(30));
        assert!(!spec.bounded && spec.group_id.is_none());
        let spec = parse(
            "{topicPattern: 'orders-.*', startFrom: {timestamp: 1700000000000}, isolation: read_uncommitted, \
             partitionDiscoveryInterval: 0s, bounded: true, groupId: g}",
        )
        .expect("spec");
        assert_eq!(spec.start_from, StartFrom::Timestamp(1_700_000_000_000));
        assert_eq!(spec.isolation, Isolation::ReadUncommitted);
        assert!(spec.partition_discovery_interval.is_zero());
        for (text, start) in [
            ("earliest", StartFrom::Earliest),
            ("latest", StartFrom::Latest),
            ("committed", StartFrom::Committed),
        ] {
            let spec = parse(&format!("{{topics: [a], startFrom: {text}}}")).expect("spec");
            assert_eq!(spec.start_from, start);
        }
        let err = parse("{topics: [a], topic: b}").expect_err("unknown field");
        assert!(err.contains("topic"), "{err}");
        assert!(parse("{topics: [a], startFrom: newest}").is_err());
    }

    #[test]
    fn invalid_subscriptions_name_the_field() {
        let mut spec = KafkaSourceSpec::topics(Vec::<String>::new());
        let err = KafkaSource::records(spec.clone()).err().expect("no topics");
        assert!(
            err.to_string().contains("job.args.input.kafka.topics"),
            "{err}"
        );
        spec.topic_pattern = Some("orders-(".into());
        let err = KafkaSource::records(spec.clone())
            .err()
            .expect("bad pattern");
        assert!(
            err.to_string()
                .contains("job.args.input.kafka.topicPattern"),
            "{err}"
        );
        spec.topic_pattern = Some("orders-.*".into());
        spec.start_from = StartFrom::Timestamp(-1);
        let err = KafkaSource::records(spec)
            .err()
            .expect("negative timestamp");
        assert!(
            err.to_string()
                .contains("job.args.input.kafka.startFrom.timestamp"),
            "{err}"
        );
    }

    #[test]
    fn patterns_match_whole_topic_names() {
        let mut spec = KafkaSourceSpec::topics(["exact"]);
        spec.topic_pattern = Some("orders-[0-9]+".into());
        let subscription = Subscription::new(&spec).expect("valid");
        assert!(subscription.matches("orders-12"));
        assert!(subscription.matches("exact"));
        assert!(!subscription.matches("old-orders-12"));
        assert!(!subscription.matches("orders-12-dlq"));
    }

    #[test]
    fn split_ids_differ_by_topic_and_partition() {
        assert_ne!(split_id("a", 0), split_id("a", 1));
        assert_ne!(split_id("a", 0), split_id("b", 0));
        assert_eq!(split_id("a", 3), split_id("a", 3));
    }
}
