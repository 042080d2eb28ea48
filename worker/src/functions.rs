//! The traits job authors implement, and what the runtime hands them: keyed process
//! functions with state and timers, replayable sources, two-phase-commit sinks, and the
//! [`Output`] a function emits into.
//!
//! The runtime calls these; it never calls the stream builders of `api`, which sit above it
//! (as Flink's function interfaces sit below its runtime and its DataStream API above).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::spec::JobDocument;
use crate::state::{BroadcastStates, KeyedContext, StateRegistry, Timer};
use crate::types::CachedFiles;

/// Where a source subtask runs.
pub struct SourceContext {
    pub subtask: u32,
    pub parallelism: u32,
    pub rt: tokio::runtime::Handle,
    pub doc: Arc<JobDocument>,
    /// The distributed cache's files on this process (see [`SourceContext::cached_file`]).
    pub cached_files: CachedFiles,
}

impl SourceContext {
    /// The local copy of the job document's `cachedFiles.<name>`: read-only, shared by the
    /// process's subtasks. Unknown names fail listing the registered ones.
    pub fn cached_file(&self, name: &str) -> Result<&Path> {
        cached_file(&self.cached_files, name)
    }
}

fn cached_file<'a>(files: &'a CachedFiles, name: &str) -> Result<&'a Path> {
    files
        .path(name)
        .ok_or_else(|| Error::unknown_cached_file(name, files.names()))
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
    /// The distributed cache's files on this process (see [`SinkContext::cached_file`]).
    pub cached_files: CachedFiles,
}

impl SinkContext {
    /// The local copy of the job document's `cachedFiles.<name>`: read-only, shared by the
    /// process's subtasks. Unknown names fail listing the registered ones.
    pub fn cached_file(&self, name: &str) -> Result<&Path> {
        cached_file(&self.cached_files, name)
    }
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

/// A keyed function connected to a broadcast stream (Flink's `KeyedBroadcastProcessFunction`):
/// every subtask gets every broadcast record, and writes what it keeps into broadcast state
/// (declared in `open` with `StateRegistry::broadcast_map_state`); the keyed side reads it,
/// and has its keyed state and timers as a [`KeyedProcessFunction`] has.
///
/// Broadcast state stays alike on every subtask only if `process_broadcast_element` treats
/// every record the same everywhere: it must not depend on the subtask or on keyed state.
pub trait KeyedBroadcastProcessFunction<K, I, B, O>: Send + 'static {
    /// Declare keyed and broadcast state here.
    fn open(&mut self, state: &mut StateRegistry) -> Result<()>;

    fn process_element(
        &mut self,
        key: &K,
        value: I,
        broadcast: &BroadcastStates,
        ctx: &mut KeyedContext<'_>,
        out: &mut Output<'_, O>,
    ) -> Result<()>;

    fn process_broadcast_element(
        &mut self,
        value: B,
        broadcast: &mut BroadcastStates,
        out: &mut Output<'_, O>,
    ) -> Result<()>;

    /// A timer of `key` fired (see [`KeyedProcessFunction::on_timer`]).
    fn on_timer(
        &mut self,
        _key: &K,
        _timer: &Timer,
        _broadcast: &BroadcastStates,
        _ctx: &mut KeyedContext<'_>,
        _out: &mut Output<'_, O>,
    ) -> Result<()> {
        Ok(())
    }
}

/// A non-keyed function connected to a broadcast stream (Flink's `BroadcastProcessFunction`):
/// as [`KeyedBroadcastProcessFunction`], without keyed state and timers. Its main input is not
/// repartitioned: subtask `i` reads what subtask `i` upstream produced.
pub trait BroadcastProcessFunction<I, B, O>: Send + 'static {
    /// Declare broadcast state here.
    fn open(&mut self, state: &mut StateRegistry) -> Result<()>;

    fn process_element(
        &mut self,
        value: I,
        broadcast: &BroadcastStates,
        out: &mut Output<'_, O>,
    ) -> Result<()>;

    fn process_broadcast_element(
        &mut self,
        value: B,
        broadcast: &mut BroadcastStates,
        out: &mut Output<'_, O>,
    ) -> Result<()>;
}

/// Where a user function's records go: the rest of its chain. The runtime's chain links
/// (`runtime::chain::Collector`) are this plus the checkpoint and lifecycle hooks.
pub trait Downstream<T> {
    fn collect(&mut self, item: T) -> Result<()>;
}

/// What user functions emit into.
pub struct Output<'a, O> {
    pub(crate) next: &'a mut dyn Downstream<O>,
    pub(crate) emitted: &'a mut u64,
}

impl<O> Output<'_, O> {
    pub fn emit(&mut self, item: O) -> Result<()> {
        *self.emitted += 1;
        self.next.collect(item)
    }
}
