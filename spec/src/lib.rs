//! The job document: one YAML or JSON file that describes a job run. The operator embeds
//! these types in the StreamJob spec, so field names are the public contract (camelCase).
//!
//! `JobDocument::from_yaml` / `from_file` parse and validate; every error names the field.
//! This crate has no runtime dependencies so the operator can embed it; the `schema` feature
//! adds JSON Schema derives for the CRD.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod fault_points;
pub mod layout;
pub mod rest;
#[cfg(feature = "s3")]
pub mod s3;

/// A document that cannot run; `field` is the path in the document (e.g. `checkpointing.interval`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job document: {field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = SpecError> = std::result::Result<T, E>;

/// Connection settings for every `s3://` location of a job. Everything is optional; unset
/// fields fall back to the standard AWS environment and credential chain (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, web identity, instance profile, ...).
// `Eq` and `Hash`: the operator keeps one client per distinct setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Options {
    /// Custom endpoint, e.g. `http://minio:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Default `us-east-1` when neither this nor the environment gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), needed by MinIO and most S3 clones.
    #[serde(default)]
    pub force_path_style: bool,
    /// Take credentials from the EC2 instance metadata service when no other source has
    /// them. Off by default: it hands the job the node's role, and off EC2 it only costs
    /// timeouts.
    #[serde(default)]
    pub instance_metadata: bool,
    /// Static credentials for programmatic use (tests); never read from documents.
    #[serde(skip)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub static_credentials: Option<(String, String)>,
}

/// Connection settings for every Kafka source and sink of a job (`kafka:` in the document).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaOptions {
    /// `host:port[,host:port...]` of the brokers.
    pub bootstrap_servers: String,
    /// librdkafka client properties passed through as they are, e.g. `security.protocol:
    /// SASL_SSL`, `sasl.mechanism: SCRAM-SHA-512`, `ssl.ca.location: /etc/kafka/ca.pem`.
    /// Properties Weir sets itself (transactions, isolation, offsets) cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Secret properties: property name -> environment variable holding its value, e.g.
    /// `sasl.password: KAFKA_PASSWORD`. Read at start-up, never logged or stored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties_from_env: BTreeMap<String, String>,
}

/// Checks the shape of a storage URI: `s3://bucket[/prefix]`, `file:///absolute/path`, or a
/// plain filesystem path.
pub fn check_storage_uri(uri: &str) -> std::result::Result<(), String> {
    if uri.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(rest) = uri.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or_default();
        if bucket.is_empty() {
            return Err(format!(
                "{uri:?} has no bucket (expected s3://bucket/prefix)"
            ));
        }
        return Ok(());
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!(
                "{uri:?}: file:// URIs need an absolute path (file:///path)"
            ));
        }
        return Ok(());
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(format!(
            "unsupported scheme {scheme:?} in {uri:?} (use s3:// or file://)"
        ));
    }
    Ok(())
}

/// Checks the name of a cached file (`cachedFiles.<name>`): it becomes a file name in the
/// worker's attempt directory, so it is a single safe path segment.
pub fn check_cached_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the name must not be empty".into());
    }
    if name == "." || name == ".." || name.starts_with('.') {
        return Err(format!("{name:?} must not start with '.'"));
    }
    if name.len() > 255 {
        return Err(format!("{name:?} is longer than 255 bytes"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{name:?} must use only [A-Za-z0-9._-] (it names a file on every worker)"
        ));
    }
    Ok(())
}

/// Checks the URI of a cached file: `s3://bucket/key`, `file:///path` or a plain path, naming
/// an object (not a bucket or a folder).
pub fn check_cached_file_uri(uri: &str) -> std::result::Result<(), String> {
    check_storage_uri(uri)?;
    let path = uri
        .strip_prefix("s3://")
        .map(|rest| rest.split_once('/').map_or("", |(_, key)| key))
        .or_else(|| uri.strip_prefix("file://"))
        .unwrap_or(uri);
    if path.is_empty() || path.ends_with('/') {
        return Err(format!("{uri:?} must name a file, not a bucket or folder"));
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(format!("{uri:?} has a `.` or `..` path segment"));
    }
    Ok(())
}

/// Flink's default: enough key groups to scale out to 128 subtasks.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
/// Key groups are stored as u16 prefixes in state keys.
pub const MAX_MAX_PARALLELISM: u32 = 32768;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobDocument {
    /// Which job to run and its arguments.
    pub job: JobRef,
    /// Stable identifier of this job's checkpoints (`<storage>/<jobId>/chk-<n>`). Defaults to
    /// `job.name`; set it when two runs of the same job share one storage location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Number of key groups: the upper bound for rescaling keyed state.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    /// Absent means checkpointing is off (no fault tolerance, sinks commit at end of input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointConfig>,
    #[serde(default)]
    pub restart_strategy: RestartStrategy,
    #[serde(default)]
    pub restore: RestoreSource,
    #[serde(default)]
    pub malformed_records: MalformedRecordPolicy,
    /// Connection settings for every `s3://` location of this job.
    #[serde(default)]
    pub s3: S3Options,
    /// Connection settings for the job's Kafka sources and sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaOptions>,
    #[serde(default)]
    pub state: StateConfig,
    /// The distributed cache (Flink's `registerCachedFile`): name -> `s3://bucket/key`,
    /// `file:///path` or a plain path. Every process of an attempt downloads each file once
    /// before its tasks start, and functions open it by name. A missing file fails the job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cached_files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobRef {
    /// Name of a registered job, e.g. `url-count`.
    pub name: String,
    /// The job's own typed arguments; each job validates them.
    #[serde(default = "empty_args")]
    pub args: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointConfig {
    /// How often a checkpoint is triggered, as a duration such as `10s` or `1m` (at least
    /// `10ms`).
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub interval: Duration,
    /// `exactly-once` (default: barriers are aligned, every record counts once in state) or
    /// `at-least-once` (no alignment: lower latency, records may count twice after a restore).
    #[serde(default)]
    pub mode: CheckpointMode,
    /// `s3://bucket/prefix` or `file:///path`.
    pub storage: String,
    /// Completed checkpoints kept; older ones are deleted.
    #[serde(default = "default_retained")]
    pub retained: u32,
    /// A checkpoint not completed within this duration (e.g. `10m`, the default) is aborted
    /// and counts as failed.
    #[serde(default = "default_checkpoint_timeout", with = "humantime_serde")]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub timeout: Duration,
    /// Failed checkpoints in a row tolerated before the job fails over.
    #[serde(default)]
    pub tolerable_failures: u32,
    /// Where the REST API may write savepoints besides `storage`: URI prefixes such as
    /// `s3://bucket/savepoints`. A savepoint request for any other directory is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoint_directories: Vec<String>,
}

/// Longest savepoint `targetDirectory` accepted, in characters (S3 keys end at 1,024 bytes, and
/// the target is only a prefix of them).
pub const MAX_SAVEPOINT_TARGET_CHARS: usize = 256;

/// Why a savepoint target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavepointTargetError {
    /// Not a clean absolute URI (the REST API answers 400).
    #[error("{0}")]
    Malformed(String),
    /// Well-formed, but outside the directories the job may write (403).
    #[error("{0}")]
    NotAllowed(String),
}

impl CheckpointConfig {
    /// The prefixes a savepoint target must lie under: the checkpoint storage (a bare
    /// absolute path read as its `file://` URI) and the configured savepoint directories.
    pub fn savepoint_prefixes(&self) -> Vec<String> {
        let storage = if self.storage.starts_with('/') {
            format!("file://{}", self.storage)
        } else {
            self.storage.clone()
        };
        std::iter::once(storage)
            .chain(self.savepoint_directories.iter().cloned())
            .collect()
    }

    /// Checks a savepoint target a caller asked for: an absolute `file:///…` or
    /// `s3://bucket/…` URI, no `.`/`..` segments or empty segments, no control characters,
    /// at most [`MAX_SAVEPOINT_TARGET_CHARS`], inside one of [`Self::savepoint_prefixes`]
    /// (whole segments: `file:///sp` does not admit `file:///sp-other`). The error says
    /// which rule was broken.
    pub fn check_savepoint_target(
        &self,
        target: &str,
    ) -> std::result::Result<(), SavepointTargetError> {
        Self::check_savepoint_target_form(target).map_err(SavepointTargetError::Malformed)?;
        let target = target.trim_end_matches('/');
        let prefixes = self.savepoint_prefixes();
        let inside = prefixes.iter().any(|prefix| {
            let prefix = prefix.trim_end_matches('/');
            target
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        if !inside {
            return Err(SavepointTargetError::NotAllowed(format!(
                "{target:?} is not under an allowed savepoint directory ({}; add more with \
                 checkpointing.savepointDirectories)",
                prefixes.join(", ")
            )));
        }
        Ok(())
    }

    fn check_savepoint_target_form(target: &str) -> std::result::Result<(), String> {
        let chars = target.chars().count();
        if chars > MAX_SAVEPOINT_TARGET_CHARS {
            return Err(format!(
                "longer than {MAX_SAVEPOINT_TARGET_CHARS} characters ({chars})"
            ));
        }
        if target.chars().any(char::is_control) {
            return Err(format!("{target:?} contains control characters"));
        }
        let path = if let Some(rest) = target.strip_prefix("s3://") {
            rest
        } else if let Some(rest) = target.strip_prefix("file://") {
            rest.strip_prefix('/').ok_or_else(|| {
                format!("{target:?}: file:// URIs need an absolute path (file:///path)")
            })?
        } else {
            return Err(format!(
                "{target:?} must be an absolute file:///path or s3://bucket/prefix URI"
            ));
        };
        let path = path.strip_suffix('/').unwrap_or(path);
        if path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(format!("{target:?} has an empty, `.` or `..` path segment"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// Barriers are aligned: every record is reflected exactly once in state after a restore.
    #[default]
    ExactlyOnce,
    /// No alignment: lower latency, but records may be counted twice after a restore.
    AtLeastOnce,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RestartStrategy {
    /// Fail the job on the first task failure.
    None,
    #[serde(rename_all = "camelCase")]
    FixedDelay {
        attempts: u32,
        #[serde(with = "humantime_serde")]
        #[cfg_attr(feature = "schema", schemars(with = "String"))]
        delay: Duration,
    },
    #[serde(rename_all = "camelCase")]
    ExponentialDelay {
        #[serde(with = "humantime_serde")]
        #[cfg_attr(feature = "schema", schemars(with = "String"))]
        initial_delay: Duration,
        #[serde(with = "humantime_serde")]
        #[cfg_attr(feature = "schema", schemars(with = "String"))]
        max_delay: Duration,
        #[serde(default = "default_backoff_multiplier")]
        multiplier: f64,
        /// Unlimited when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_attempts: Option<u32>,
    },
    #[serde(rename_all = "camelCase")]
    FailureRate {
        max_failures_per_interval: u32,
        #[serde(with = "humantime_serde")]
        #[cfg_attr(feature = "schema", schemars(with = "String"))]
        interval: Duration,
        #[serde(with = "humantime_serde")]
        #[cfg_attr(feature = "schema", schemars(with = "String"))]
        delay: Duration,
    },
}

impl Default for RestartStrategy {
    /// Flink's default with checkpointing on: keep restarting, with a pause.
    fn default() -> Self {
        RestartStrategy::ExponentialDelay {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

/// Where state comes from when the job starts. Written as `latest`, `none`, or
/// `{path: s3://bucket/checkpoints/job/chk-42}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RestoreRepr", into = "RestoreRepr")]
pub enum RestoreSource {
    /// The latest completed checkpoint under `<storage>/<jobId>`, or empty state if none exists yet.
    #[default]
    Latest,
    /// Always start with empty state.
    None,
    /// A checkpoint or savepoint directory (the one holding `_metadata`). Must exist.
    Path(String),
}

/// The wire form of [`RestoreSource`]: YAML has no single spelling for "unit variant or map"
/// that every parser agrees on, so the document uses a keyword or a `{path}` mapping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(
    untagged,
    expecting = "`latest`, `none`, or `{path: <checkpoint or savepoint directory>}`"
)]
enum RestoreRepr {
    /// `latest` or `none`.
    Keyword(String),
    Path {
        /// A checkpoint or savepoint directory (the one holding `_metadata`).
        path: String,
    },
}

impl TryFrom<RestoreRepr> for RestoreSource {
    type Error = String;

    fn try_from(repr: RestoreRepr) -> std::result::Result<Self, String> {
        match repr {
            RestoreRepr::Keyword(k) if k == "latest" => Ok(RestoreSource::Latest),
            RestoreRepr::Keyword(k) if k == "none" => Ok(RestoreSource::None),
            RestoreRepr::Keyword(k) => Err(format!(
                "expected `latest`, `none`, or `{{path: ...}}`, got {k:?}"
            )),
            RestoreRepr::Path { path } => Ok(RestoreSource::Path(path)),
        }
    }
}

impl From<RestoreSource> for RestoreRepr {
    fn from(source: RestoreSource) -> Self {
        match source {
            RestoreSource::Latest => RestoreRepr::Keyword("latest".into()),
            RestoreSource::None => RestoreRepr::Keyword("none".into()),
            RestoreSource::Path(path) => RestoreRepr::Path { path },
        }
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for RestoreSource {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RestoreSource".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RestoreRepr::json_schema(generator)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum MalformedRecordPolicy {
    /// Fail the job; the error names the file and byte offset.
    #[default]
    Fail,
    /// Skip, log file:offset, count in `weir_malformed_records_total`.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateConfig {
    /// Where keyed state lives: `rocksdb` (the default; on local disk, bounded memory) or
    /// `heap` (in memory; faster for state that fits in memory). A savepoint or checkpoint
    /// of either restores on the other.
    #[serde(default)]
    pub backend: StateBackendKind,
    /// Write-back cache in front of RocksDB, per keyed subtask. Ignored by the heap backend,
    /// which keeps everything in memory and has no cache.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Where RocksDB instances and in-progress sink files live. Defaults to the OS temp dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_dir: Option<String>,
    /// Checkpoints store only the RocksDB files that changed since the previous checkpoint
    /// and restore by opening those files (Flink's incremental checkpoints). Off: every
    /// checkpoint is a full snapshot object, like a savepoint. Savepoints are always full.
    /// The heap backend always writes full snapshots (like Flink's).
    #[serde(default = "default_true")]
    pub incremental_checkpoints: bool,
}

/// The keyed-state backend of every keyed subtask of the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum StateBackendKind {
    /// RocksDB on local disk behind a write-back cache (`state.cacheBytes`): state larger
    /// than memory, incremental checkpoints.
    #[default]
    Rocksdb,
    /// Sorted in-memory maps per key group; snapshots are copy-on-write clones written out
    /// asynchronously as full snapshot objects.
    Heap,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackendKind::default(),
            cache_bytes: default_cache_bytes(),
            local_dir: None,
            incremental_checkpoints: true,
        }
    }
}

fn default_parallelism() -> u32 {
    1
}
fn default_max_parallelism() -> u32 {
    DEFAULT_MAX_PARALLELISM
}
fn default_retained() -> u32 {
    3
}
fn default_checkpoint_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_backoff_multiplier() -> f64 {
    2.0
}
fn default_true() -> bool {
    true
}
fn default_cache_bytes() -> u64 {
    64 << 20
}
fn empty_args() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl JobDocument {
    /// Parse YAML (JSON is valid YAML) and validate. `source` names the file in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<JobDocument> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let doc: JobDocument = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            SpecError::new(format!("{source}: {path}"), e.into_inner().to_string())
        })?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn from_file(path: &std::path::Path) -> Result<JobDocument> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::new(path.display().to_string(), format!("cannot read: {e}")))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    pub fn job_id(&self) -> &str {
        self.job_id.as_deref().unwrap_or(&self.job.name)
    }

    /// Checks every cross-field rule serde cannot express.
    pub fn validate(&self) -> Result<()> {
        if self.job.name.trim().is_empty() {
            return Err(SpecError::new("job.name", "must not be empty"));
        }
        if !self.job.args.is_object() {
            return Err(SpecError::new("job.args", "must be a mapping"));
        }
        let id = self.job_id();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(SpecError::new(
                "jobId",
                format!(
                    "{id:?} must be non-empty and use only [A-Za-z0-9._-] (it names a storage folder)"
                ),
            ));
        }
        if self.max_parallelism == 0 || self.max_parallelism > MAX_MAX_PARALLELISM {
            return Err(SpecError::new(
                "maxParallelism",
                format!(
                    "must be between 1 and {MAX_MAX_PARALLELISM}, got {}",
                    self.max_parallelism
                ),
            ));
        }
        if self.parallelism == 0 || self.parallelism > self.max_parallelism {
            return Err(SpecError::new(
                "parallelism",
                format!(
                    "must be between 1 and maxParallelism ({}), got {}",
                    self.max_parallelism, self.parallelism
                ),
            ));
        }
        if let Some(kafka) = &self.kafka {
            if kafka.bootstrap_servers.trim().is_empty() {
                return Err(SpecError::new(
                    "kafka.bootstrapServers",
                    "must not be empty",
                ));
            }
            for (property, variable) in &kafka.properties_from_env {
                if kafka.properties.contains_key(property) {
                    return Err(SpecError::new(
                        format!("kafka.propertiesFromEnv.{property}"),
                        "is also set in kafka.properties; set it in one place",
                    ));
                }
                if variable.trim().is_empty() {
                    return Err(SpecError::new(
                        format!("kafka.propertiesFromEnv.{property}"),
                        "must name an environment variable",
                    ));
                }
            }
        }
        if let Some(c) = &self.checkpointing {
            if c.interval < Duration::from_millis(10) {
                return Err(SpecError::new(
                    "checkpointing.interval",
                    "must be at least 10ms",
                ));
            }
            if c.timeout.is_zero() {
                return Err(SpecError::new("checkpointing.timeout", "must be positive"));
            }
            if c.retained == 0 {
                return Err(SpecError::new(
                    "checkpointing.retained",
                    "must be at least 1",
                ));
            }
            check_storage_uri(&c.storage)
                .map_err(|e| SpecError::new("checkpointing.storage", e))?;
            for (i, dir) in c.savepoint_directories.iter().enumerate() {
                let field = format!("checkpointing.savepointDirectories[{i}]");
                check_storage_uri(dir).map_err(|e| SpecError::new(field.as_str(), e))?;
                if !dir.contains("://") {
                    return Err(SpecError::new(
                        field,
                        format!("{dir:?} must be a file:///path or s3://bucket/prefix URI"),
                    ));
                }
            }
        }
        if let RestoreSource::Path(p) = &self.restore {
            check_storage_uri(p).map_err(|e| SpecError::new("restore.path", e))?;
            if self.checkpointing.is_none() {
                return Err(SpecError::new(
                    "restore",
                    "restoring from a path needs checkpointing to be configured",
                ));
            }
        }
        match &self.restart_strategy {
            RestartStrategy::ExponentialDelay {
                initial_delay,
                max_delay,
                multiplier,
                ..
            } => {
                if initial_delay > max_delay {
                    return Err(SpecError::new(
                        "restartStrategy.initialDelay",
                        "must not exceed maxDelay",
                    ));
                }
                if !(*multiplier >= 1.0 && multiplier.is_finite()) {
                    return Err(SpecError::new("restartStrategy.multiplier", "must be >= 1"));
                }
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval,
                ..
            } => {
                if *max_failures_per_interval == 0 || interval.is_zero() {
                    return Err(SpecError::new(
                        "restartStrategy",
                        "maxFailuresPerInterval and interval must be positive",
                    ));
                }
            }
            RestartStrategy::None | RestartStrategy::FixedDelay { .. } => {}
        }
        if self.state.cache_bytes < (1 << 20) {
            return Err(SpecError::new("state.cacheBytes", "must be at least 1 MiB"));
        }
        for (name, uri) in &self.cached_files {
            let field = format!("cachedFiles.{name}");
            check_cached_file_name(name).map_err(|e| SpecError::new(field.as_str(), e))?;
            check_cached_file_uri(uri).map_err(|e| SpecError::new(field.as_str(), e))?;
        }
        Ok(())
    }

    /// Deserialize the job's arguments into its own type; errors name `job.args.<field>`.
    pub fn args<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_path_to_error::deserialize(&self.job.args).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "job.args".to_string()
            } else {
                format!("job.args.{path}")
            };
            SpecError::new(field, e.into_inner().to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobDocument> {
        JobDocument::from_yaml(text, "job.yaml")
    }

    #[test]
    fn savepoint_targets_must_be_absolute_clean_and_under_an_allowed_prefix() {
        let doc = parse(
            "job: {name: x}\n\
             checkpointing: {interval: 1s, storage: 's3://b/chk', \
             savepointDirectories: ['file:///sp', 's3://other/savepoints/']}",
        )
        .expect("valid");
        let c = doc.checkpointing.expect("checkpointing");
        for ok in [
            "s3://b/chk/savepoint-1",
            "s3://b/chk",
            "file:///sp/a/b/",
            "s3://other/savepoints/x",
        ] {
            assert_eq!(c.check_savepoint_target(ok), Ok(()), "{ok}");
        }
        for (bad, rule) in [
            ("", "absolute"),
            ("/sp/x", "absolute"),
            ("relative-dir", "absolute"),
            ("file://sp/x", "absolute path"),
            ("file:///sp/../tmp/x", "`..`"),
            ("file:///sp/./x", "`.`"),
            ("file:///sp//x", "empty"),
            ("file:///sp/a\u{7}b", "control characters"),
            (
                "file:///sp-other/x",
                "not under an allowed savepoint directory",
            ),
            ("s3://b/chkx", "not under"),
            (
                "s3://evil/chk/x",
                "s3://b/chk, file:///sp, s3://other/savepoints/",
            ),
            ("http://b/chk/x", "absolute"),
        ] {
            let err = c.check_savepoint_target(bad).expect_err(bad);
            let elsewhere = rule.contains("not under") || rule.contains("s3://");
            assert_eq!(
                matches!(err, SavepointTargetError::NotAllowed(_)),
                elsewhere,
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(rule), "{bad:?}: {err}");
        }
        let long = format!("file:///sp/{}", "é".repeat(MAX_SAVEPOINT_TARGET_CHARS));
        let err = c.check_savepoint_target(&long).expect_err("too long");
        assert!(err.to_string().contains("longer"), "{err}");
        // A bare absolute storage path admits its file:// form.
        let bare = parse("job: {name: x}\ncheckpointing: {interval: 1s, storage: /chk}")
            .expect("valid")
            .checkpointing
            .expect("checkpointing");
        assert_eq!(bare.check_savepoint_target("file:///chk/sp"), Ok(()));
        let err = parse(
            "job: {name: x}\ncheckpointing: {interval: 1s, storage: /chk, \
             savepointDirectories: [relative]}",
        )
        .expect_err("a relative savepoint directory");
        assert!(
            err.to_string()
                .contains("checkpointing.savepointDirectories[0]"),
            "{err}"
        );
    }

    #[test]
    fn minimal_document_gets_flink_like_defaults() {
        let doc = parse("job: {name: url-count}").expect("valid");
        assert_eq!(doc.parallelism, 1);
        assert_eq!(doc.max_parallelism, 128);
        assert_eq!(doc.restore, RestoreSource::Latest);
        assert_eq!(doc.malformed_records, MalformedRecordPolicy::Fail);
        assert_eq!(doc.job_id(), "url-count");
    }

    #[test]
    fn full_document_round_trips() {
        let text = r#"
job: {name: sequence-check, args: {keys: 10}}
jobId: seq-1
parallelism: 2
maxParallelism: 64
checkpointing:
  interval: 500ms
  mode: at-least-once
  storage: s3://bucket/checkpoints
  retained: 2
  timeout: 30s
  tolerableFailures: 3
restartStrategy: {type: fixed-delay, attempts: 5, delay: 1s}
restore: {path: s3://bucket/savepoints/sp-1}
malformedRecords: skip
s3: {endpoint: "http://127.0.0.1:9000", forcePathStyle: true}
"#;
        let doc = parse(text).expect("valid");
        let checkpointing = doc.checkpointing.clone().expect("set");
        assert_eq!(checkpointing.interval, Duration::from_millis(500));
        assert_eq!(checkpointing.mode, CheckpointMode::AtLeastOnce);
        assert_eq!(
            doc.restart_strategy,
            RestartStrategy::FixedDelay {
                attempts: 5,
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            doc.restore,
            RestoreSource::Path("s3://bucket/savepoints/sp-1".into())
        );
        let json = serde_json::to_string(&doc).expect("serializes");
        assert_eq!(JobDocument::from_yaml(&json, "json").expect("valid"), doc);
    }

    #[test]
    fn cached_files_parse_and_default_to_none() {
        let doc = parse(
            "job: {name: x}\ncachedFiles: {url-names: 's3://b/dir/names.txt', \
             rules.json: 'file:///etc/weir/rules.json', local: data/x.csv}",
        )
        .expect("valid");
        assert_eq!(doc.cached_files.len(), 3);
        assert_eq!(doc.cached_files["url-names"], "s3://b/dir/names.txt");
        let json = serde_json::to_string(&doc).expect("serializes");
        assert!(json.contains("\"cachedFiles\""), "{json}");
        let plain = parse("job: {name: x}").expect("valid");
        assert!(plain.cached_files.is_empty());
        let json = serde_json::to_string(&plain).expect("serializes");
        assert!(!json.contains("cachedFiles"), "{json}");
    }

    #[test]
    fn cached_file_names_and_uris_are_checked_naming_the_entry() {
        for (entry, problem) in [
            ("'': s3://b/k", "must not be empty"),
            ("'../x': s3://b/k", "must not start with '.'"),
            ("'a/b': s3://b/k", "[A-Za-z0-9._-]"),
            (".hidden: s3://b/k", "must not start with '.'"),
            ("names: 's3://b'", "must name a file"),
            ("names: 's3://b/'", "must name a file"),
            ("names: 's3:///k'", "no bucket"),
            ("names: 's3://b/dir/'", "must name a file"),
            ("names: 's3://b/../k'", "`..`"),
            ("names: 'file://relative/x'", "absolute path"),
            ("names: 'http://host/x'", "unsupported scheme"),
            ("names: ''", "must not be empty"),
        ] {
            let err =
                parse(&format!("job: {{name: x}}\ncachedFiles: {{{entry}}}")).expect_err(entry);
            let name = entry
                .split(':')
                .next()
                .unwrap_or_default()
                .trim_matches('\'');
            assert!(
                err.field == format!("cachedFiles.{name}"),
                "{entry}: field {:?}",
                err.field
            );
            assert!(err.message.contains(problem), "{entry}: {err}");
        }
    }

    #[test]
    fn restore_keyword_typo_is_rejected() {
        let err = parse("job: {name: x}\nrestore: lastest").expect_err("invalid");
        assert!(err.to_string().contains("restore"), "{err}");
    }

    #[test]
    fn parallelism_above_max_names_the_field() {
        let err = parse("job: {name: x}\nparallelism: 200").expect_err("invalid");
        assert!(
            err.to_string()
                .contains("parallelism: must be between 1 and maxParallelism (128)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = parse("job: {name: x}\ncheckpointing: {interval: 1s, storage: /tmp/x, bogus: 1}")
            .expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("job.yaml: checkpointing"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let err = parse("job: {name: x}\ncheckpointing: {interval: soon, storage: /tmp/x}")
            .expect_err("invalid");
        assert!(err.to_string().contains("checkpointing.interval"), "{err}");
    }

    #[test]
    fn state_backend_is_rocksdb_by_default_and_a_bad_one_names_the_field() {
        let doc = parse("job: {name: x}").expect("valid");
        assert_eq!(doc.state.backend, StateBackendKind::Rocksdb);
        let doc = parse("job: {name: x}\nstate: {backend: heap}").expect("valid");
        assert_eq!(doc.state.backend, StateBackendKind::Heap);
        let err = parse("job: {name: x}\nstate: {backend: memory}").expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("state.backend"), "{msg}");
        assert!(msg.contains("heap") && msg.contains("rocksdb"), "{msg}");
    }

    #[test]
    fn bad_storage_uri_is_rejected() {
        let err = parse("job: {name: x}\ncheckpointing: {interval: 1s, storage: 'ftp://host/x'}")
            .expect_err("invalid");
        assert!(err.to_string().contains("checkpointing.storage"), "{err}");
    }

    #[test]
    fn job_args_errors_name_the_argument() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Args {
            keys: u32,
        }
        let doc = parse("job: {name: x, args: {keys: many}}").expect("valid document");
        let err = doc.args::<Args>().expect_err("invalid args");
        assert!(err.to_string().contains("job.args.keys"), "{err}");
    }
}
