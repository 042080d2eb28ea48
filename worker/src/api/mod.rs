//! What job authors touch: streams and their operators, keyed functions with state, and the
//! source and sink traits connectors implement.
//!
//! ```ignore
//! let env = StreamEnv::new(doc);
//! env.source("lines", FileSource::lines(input))
//!     .flat_map(|line: String| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
//!     .key_by(|word: &String| word.clone())
//!     .process("counter", || WordCounter::default())
//!     .sink("output", FileSink::json_lines(output))
//! ```

mod graph;
mod key;
pub mod stream;
pub mod time;
pub mod window;

pub use graph::{GraphBuilder, JobGraph, TaskSpec};
pub use key::{Data, Key};
pub use stream::{KeyedStream, Stream, StreamEnv};
pub use time::{EventTimeKeyedStream, EventTimeStream, WatermarkStrategy};
pub use window::{
    MapWindow, TimeWindow, WindowAssigner, WindowFunction, WindowOutput, WindowStreams,
    WindowedStream,
};

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::runtime::chain::Output;
use crate::spec::JobDocument;
use crate::state::{KeyedContext, StateRegistry, Timer};

/// Where a source subtask runs.
pub struct SourceContext {
    pub subtask: u32,
    pub parallelism: u32,
    pub rt: tokio::runtime::Handle,
    pub doc: Arc<JobDocument>,
}

pub enum SourceStatus {
    /// More records are ready.
    More,
    /// Nothing right now; poll again after this long (or sooner on a control message).
    Idle(Duration),
    /// End of input.
    Finished,
}

/// A replayable source: its position is operator state (union-redistributed, so after a
/// rescale every subtask sees all positions and takes the splits it now owns).
pub trait SourceFactory: Send + Sync + 'static {
    type Item: Send + 'static;
    /// `restored` is `None` on a fresh start, else the positions of every old subtask.
    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<Vec<serde_json::Value>>,
    ) -> Result<Box<dyn SourceReader<Self::Item>>>;
}

pub trait SourceReader<T>: Send {
    /// Appends up to `max` records to `out`.
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus>;
    /// This subtask's positions at checkpoint `checkpoint_id`, taken between records.
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<serde_json::Value>>;
    /// Checkpoint `checkpoint_id` completed: its positions are durable (e.g. report them to
    /// the system read from, for monitoring; recovery never depends on it).
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<()> {
        Ok(())
    }
    /// The splits (Kafka partitions) this reader reads now, numbered as the records'
    /// watermark splits are (`WatermarkStrategy::with_splits`); `None` for a source without
    /// splits. The task announces them downstream before the records of each poll.
    fn splits(&self) -> Option<Vec<u64>> {
        None
    }
}

/// Where a sink subtask runs.
pub struct SinkContext {
    pub subtask: u32,
    pub parallelism: u32,
    pub rt: tokio::runtime::Handle,
    pub doc: Arc<JobDocument>,
    pub local_dir: std::path::PathBuf,
    pub attempt_id: String,
}

/// What a sink's recovery hook runs with.
pub struct RecoverContext {
    pub rt: tokio::runtime::Handle,
    pub doc: Arc<JobDocument>,
    /// The checkpoint id the starting attempt claimed (`None` without checkpointing). Pending
    /// output of checkpoints above it may be a newer JobManager's, in flight: recovery must
    /// leave it alone (it discards only output of checkpoint ids up to this one).
    pub claimed: Option<u64>,
}

/// A two-phase-commit sink (Flink's `TwoPhaseCommitSinkFunction`).
pub trait SinkFactory<T>: Send + Sync + 'static {
    fn create_writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>>;
    /// Runs once before any task starts when restoring, with the pending commits of every
    /// old subtask: publish them (idempotently: the checkpoint is complete) and discard
    /// anything newer that was never committed, up to `ctx.claimed`.
    fn recover(&self, _pending: Vec<serde_json::Value>, _ctx: &RecoverContext) -> Result<()> {
        Ok(())
    }
}

pub trait SinkWriter<T>: Send {
    fn write(&mut self, item: T) -> Result<()>;
    /// At a barrier: make what was written durable but invisible; return every commit still
    /// pending (checkpointed as operator state).
    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<Vec<serde_json::Value>>;
    /// The checkpoint completed: publish what was pre-committed up to it.
    fn commit(&mut self, checkpoint_id: u64) -> Result<()>;
    /// End of input. Without checkpointing this publishes directly.
    fn finish(&mut self) -> Result<()>;
}

/// A function over a keyed stream with per-key state (Flink's `KeyedProcessFunction`).
pub trait KeyedProcessFunction<K, I, O>: Send + 'static {
    /// Declare state here.
    fn open(&mut self, state: &mut StateRegistry) -> Result<()>;
    fn process(
        &mut self,
        key: &K,
        value: I,
        ctx: &mut KeyedContext<'_>,
        out: &mut Output<'_, O>,
    ) -> Result<()>;

    /// A timer of `key` registered through the context fired: event-time timers when the
    /// watermark reaches them, processing-time timers when the wall clock does. Each fires
    /// once; `ctx` holds `key`'s state.
    fn on_timer(
        &mut self,
        _key: &K,
        _timer: &Timer,
        _ctx: &mut KeyedContext<'_>,
        _out: &mut Output<'_, O>,
    ) -> Result<()> {
        Ok(())
    }
}

pub use crate::runtime::chain::Output as Emitter;
