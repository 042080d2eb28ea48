//! Tasks and the messages between them.
//!
//! A job runs as tasks, one per subtask of each vertex. A source task reads records and pushes
//! them through its chained operators; a keyed shuffle carries them over bounded channels to
//! keyed tasks, which align checkpoint barriers across their inputs. Tasks talk to the
//! coordinator (the local executor or the JobManager) only through `ControlMessage` and
//! `TaskEvent`, so the same tasks run in both.

pub(crate) mod broadcast;
pub(crate) mod cache;
pub mod chain;
pub mod driver;
pub(crate) mod event_time;
pub mod graph;
pub mod job;
pub mod local;
pub mod remote;
pub mod shuffle;
pub mod shutdown;
pub mod task;
pub mod watermark;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

pub use crate::checkpoint::{Barrier, SavepointTarget};
use crate::checkpoint::{KeyedStateHandle, SharedRestore, SubtaskState};
use crate::error::Error;
use crate::spec::{CheckpointMode, JobDocument};
use crate::state::{OperatorStateSnapshot, Redistribution};
use crate::storage::ObjectStore;
use crate::types::CachedFiles;
pub use crate::types::TaskId;

/// Records per channel message: amortizes channel cost without hurting latency much, since
/// partial batches are flushed on a timer and at every barrier.
pub const BATCH_SIZE: usize = 1024;
/// Batches buffered per channel before the producer blocks (backpressure).
pub const CHANNEL_CAPACITY: usize = 8;
/// Longest a partial batch waits before it is sent (Flink's buffer timeout).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// What flows through a data channel, in order.
#[derive(Debug)]
pub enum Message<T> {
    Records(Vec<T>),
    Barrier(Barrier),
    /// Event time: no record with a timestamp at or below it follows on this channel.
    Watermark(crate::types::Watermark),
    EndOfStream,
}

impl<T> Message<T> {
    /// The records of a `Records` message, or any other message (a barrier, a watermark, the
    /// end of the stream) as a message of another record type.
    pub fn into_records<U>(self) -> std::result::Result<Vec<T>, Message<U>> {
        match self {
            Message::Records(records) => Ok(records),
            Message::Barrier(barrier) => Err(Message::Barrier(barrier)),
            Message::Watermark(watermark) => Err(Message::Watermark(watermark)),
            Message::EndOfStream => Err(Message::EndOfStream),
        }
    }
}

/// Coordinator to task.
#[derive(Debug, Clone)]
pub enum ControlMessage {
    /// Sources only: snapshot offsets and emit this barrier.
    TriggerCheckpoint(Barrier),
    CheckpointComplete(u64),
    AbortCheckpoint(u64),
    /// Sources only: end the stream (after the final checkpoint).
    Stop,
    Cancel,
}

/// Task to coordinator.
#[derive(Debug)]
pub enum TaskEvent {
    Acknowledge {
        checkpoint_id: u64,
        task: TaskId,
        states: Vec<(String, SubtaskState)>,
    },
    Decline {
        checkpoint_id: u64,
        task: TaskId,
        reason: String,
    },
    SourceFinished {
        task: TaskId,
    },
    Finished {
        task: TaskId,
    },
    Failed {
        task: TaskId,
        error: Error,
    },
}

/// Everything a task needs from its surroundings.
pub struct TaskEnv {
    pub id: TaskId,
    /// The vertex's operator uid.
    pub name: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub doc: Arc<JobDocument>,
    pub rt: tokio::runtime::Handle,
    /// Rooted at `<storage>/<jobId>`; `None` when checkpointing is off.
    pub checkpoint_store: Option<ObjectStore>,
    pub checkpoint_mode: CheckpointMode,
    pub restore: SharedRestore,
    /// Scratch space of this task for this attempt (RocksDB, in-progress files).
    pub local_dir: PathBuf,
    /// Distinguishes attempts in file names, so a late writer of an old attempt never
    /// collides with a new one.
    pub attempt_id: String,
    /// The distributed cache's files, downloaded once for every task of the attempt in this
    /// process (`runtime::cache`).
    pub cached_files: CachedFiles,
    pub control: Receiver<ControlMessage>,
    pub events: Sender<TaskEvent>,
    pub cancelled: Arc<AtomicBool>,
}

impl TaskEnv {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Operator list state to restore for this subtask, or `None` when starting fresh.
    pub fn restored_operator_state(
        &self,
        operator: &str,
        name: &str,
        redistribution: Redistribution,
    ) -> Option<Vec<serde_json::Value>> {
        self.restore.as_ref().map(|r| {
            r.operator_state(
                operator,
                name,
                redistribution,
                self.parallelism,
                self.id.subtask,
            )
        })
    }
}

/// The states a task's chain contributes to one checkpoint, by operator uid.
#[derive(Debug, Default)]
pub struct TaskSnapshot {
    pub states: Vec<(String, SubtaskState)>,
}

impl TaskSnapshot {
    fn entry(&mut self, operator: &str) -> &mut SubtaskState {
        if let Some(i) = self.states.iter().position(|(name, _)| name == operator) {
            return &mut self.states[i].1;
        }
        self.states
            .push((operator.to_string(), SubtaskState::default()));
        let last = self.states.len() - 1;
        &mut self.states[last].1
    }

    pub fn add_operator_state(
        &mut self,
        operator: &str,
        name: &str,
        redistribution: Redistribution,
        entries: Vec<serde_json::Value>,
    ) {
        self.entry(operator).operator_state.insert(
            name.to_string(),
            OperatorStateSnapshot {
                redistribution,
                entries,
            },
        );
    }

    pub fn set_keyed(&mut self, operator: &str, handle: KeyedStateHandle) {
        self.entry(operator).keyed = Some(handle);
    }

    pub fn set_ttl_states(&mut self, operator: &str, names: Vec<String>) {
        if !names.is_empty() {
            self.entry(operator).ttl_states = names;
        }
    }

    pub fn set_keyed_incremental(
        &mut self,
        operator: &str,
        handle: crate::checkpoint::IncrementalKeyedStateHandle,
    ) {
        self.entry(operator).keyed_incremental = Some(handle);
    }
}

/// A unit of work on its own thread.
pub trait Task: Send {
    fn run(self: Box<Self>, env: TaskEnv) -> crate::error::Result<()>;
}
