//! The crate's one error type. Every variant names what failed and on what, so the
//! message alone tells an operator where to look.

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job document or a job's arguments are invalid; `field` is the path in the document.
    #[error("invalid job document: {field}: {message}")]
    InvalidSpec { field: String, message: String },

    #[error("unknown job {name:?}; known jobs: {known}")]
    UnknownJob { name: String, known: String },

    #[error(transparent)]
    Storage(#[from] StorageError),

    /// A file of the distributed cache (`cachedFiles.<name>`) could not be fetched. Missing or
    /// unreadable is final; S3 being unreachable is retried by the restart strategy.
    #[error("cached file {name:?} (cachedFiles.{name}: {uri}): {source}")]
    CachedFile {
        name: String,
        uri: String,
        #[source]
        source: StorageError,
    },

    /// A function asked for a cached file the job document does not register.
    #[error("no cached file {name:?}; the job document's cachedFiles has: {known}")]
    UnknownCachedFile { name: String, known: String },

    /// A checkpoint or savepoint cannot be used for restore. Never answered by starting empty.
    #[error("cannot restore from {object}: {reason}")]
    CorruptCheckpoint { object: String, reason: String },

    /// A snapshot stores a state in a format the job now registers differently (a TTL
    /// switched on or off). Never answered by reading the bytes as the other format.
    #[error("cannot restore state {state:?} of operator {operator} from {snapshot}: {reason}")]
    IncompatibleState {
        operator: String,
        state: String,
        snapshot: String,
        reason: String,
    },

    #[error("RocksDB error in {context}: {source}")]
    RocksDb {
        context: String,
        #[source]
        source: rocksdb::Error,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A record or state value could not be (de)serialized.
    #[error("serialization failed for {what}: {message}")]
    Codec { what: String, message: String },

    /// A record the job could not parse, under the `fail` malformed-record policy.
    #[error("malformed record at {location}: {message}")]
    MalformedRecord { location: String, message: String },

    /// An error raised by user code in an operator.
    #[error("operator {operator} failed: {message}")]
    Operator { operator: String, message: String },

    /// The task was cancelled because a sibling failed or the job is stopping.
    #[error("task cancelled")]
    Cancelled,

    #[error("checkpoint {checkpoint_id} failed: {reason}")]
    CheckpointFailed { checkpoint_id: u64, reason: String },

    /// A failure reported by a task on another process, as its message.
    #[error("{message}")]
    Remote { message: String, recoverable: bool },

    /// A Kafka client call failed (broker unreachable, fenced producer, aborted transaction).
    /// Recoverable: a restart re-initialises the clients.
    #[error("Kafka: {context}: {message}")]
    Kafka { context: String, message: String },

    /// A TaskManager stopped answering (connection lost or heartbeats missed).
    #[error("TaskManager {task_manager} lost: {reason}")]
    TaskManagerLost {
        task_manager: String,
        reason: String,
    },

    /// Another JobManager wrote `chk-<checkpoint_id>/_metadata` first: it took the job over.
    /// This JobManager must not complete, commit or clean up anything any more; it stops.
    #[error(
        "fenced: another JobManager {what} checkpoint id {checkpoint_id} first ({object}); this JobManager stops without completing or committing anything"
    )]
    Fenced {
        checkpoint_id: u64,
        /// What the winner did with the id, e.g. "completed" or "claimed (takeover)".
        what: String,
        object: String,
    },

    /// The process received SIGTERM or SIGINT and stopped coordinating.
    #[error("stopped by {signal}")]
    Terminated { signal: &'static str },

    /// The JobManager refused this TaskManager for good: their wire protocols differ.
    #[error("the JobManager refused this TaskManager: {reason}")]
    Refused { reason: String },

    /// The restart strategy gave up; `cause` is the last failure.
    #[error("job failed after {restarts} restarts: {cause}")]
    JobFailed { restarts: u32, cause: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<weir_spec::SpecError> for Error {
    fn from(e: weir_spec::SpecError) -> Self {
        Error::InvalidSpec {
            field: e.field,
            message: e.message,
        }
    }
}

impl Error {
    /// Whether restarting from the latest checkpoint can fix this. Retrying the others would
    /// loop or, worse, start from nothing.
    pub fn is_recoverable(&self) -> bool {
        match self {
            Error::InvalidSpec { .. }
            | Error::UnknownJob { .. }
            | Error::CorruptCheckpoint { .. }
            | Error::IncompatibleState { .. }
            | Error::UnknownCachedFile { .. }
            | Error::MalformedRecord { .. }
            | Error::Fenced { .. }
            | Error::Terminated { .. }
            | Error::Refused { .. } => false,
            Error::Remote { recoverable, .. } => *recoverable,
            // Missing, malformed or unreadable stays so; S3 being unreachable may pass.
            Error::CachedFile { uri, source, .. } => match source {
                StorageError::S3 { .. } => true,
                StorageError::Io { .. } => uri.starts_with("s3://"),
                StorageError::NotFound { .. } | StorageError::InvalidUri { .. } => false,
            },
            _ => true,
        }
    }

    pub fn spec(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn operator(operator: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Operator {
            operator: operator.into(),
            message: message.to_string(),
        }
    }

    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    /// `name` is not among the `known` cached files.
    pub fn unknown_cached_file<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Self {
        let known: Vec<&str> = known.collect();
        Error::UnknownCachedFile {
            name: name.to_string(),
            known: if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
        }
    }

    pub fn rocks(context: impl Into<String>, source: rocksdb::Error) -> Self {
        Error::RocksDb {
            context: context.into(),
            source,
        }
    }

    pub fn kafka(context: impl Into<String>, error: impl std::fmt::Display) -> Self {
        Error::Kafka {
            context: context.into(),
            message: error.to_string(),
        }
    }

    pub fn codec(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Codec {
            what: what.into(),
            message: message.to_string(),
        }
    }
}
