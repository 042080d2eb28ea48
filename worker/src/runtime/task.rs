//! The two kinds of task: a source task (reader + chain) and a keyed task (aligned inputs +
//! keyed function over RocksDB state, broadcast state when connected to a broadcast stream +
//! chain).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Select};

use super::chain::{Collector, Output};
use super::shuffle::KeyedRecord;
use super::{
    BATCH_SIZE, Barrier, ControlMessage, FLUSH_INTERVAL, Message, Task, TaskEnv, TaskEvent,
    TaskSnapshot,
};
use crate::checkpoint::KeyedStateHandle;
use crate::checkpoint::incremental::{self, IncrementalSnapshots};
use crate::error::{Error, Result};
use crate::fault_points::{self, FaultPoint};
use crate::functions::{
    KeyedProcessFunction, SourceContext, SourceFactory, SourceReader, SourceStatus,
};
use crate::spec::layout;
use crate::spec::{CheckpointMode, StateBackendKind};
use crate::state::keygroups::key_group_range_for_subtask;
use crate::state::{
    BroadcastStates, KeyGroupRange, KeyedContext, KeyedStateBackend, Redistribution, StateRegistry,
};
use crate::types::Key;

/// Name of a source's offsets in operator state.
pub const SOURCE_OFFSETS_STATE: &str = "offsets";

enum Flow {
    Continue,
    Exit,
}

pub struct SourceTask<T> {
    pub uid: String,
    pub factory: Arc<dyn SourceFactory<Item = T>>,
    pub chain: Box<dyn Collector<T>>,
}

impl<T: Send + 'static> Task for SourceTask<T> {
    fn run(self: Box<Self>, env: TaskEnv) -> Result<()> {
        let SourceTask {
            uid,
            factory,
            mut chain,
        } = *self;
        let restored =
            env.restored_operator_state(&uid, SOURCE_OFFSETS_STATE, Redistribution::Union);
        let ctx = SourceContext {
            subtask: env.id.subtask,
            parallelism: env.parallelism,
            rt: env.rt.clone(),
            doc: env.doc.clone(),
            cached_files: env.cached_files.clone(),
        };
        let mut reader = factory.create_reader(&ctx, restored)?;
        chain.open(&env)?;
        let metrics = crate::metrics::global();
        let records_out = metrics
            .records_out
            .get_or_create(&metrics.operator(&uid))
            .clone();

        // After a stop-with-savepoint barrier a source emits nothing more: everything after it
        // would be replayed from the savepoint, so emitting it now would duplicate it.
        let stopping = std::cell::Cell::new(false);
        let handle = |msg: ControlMessage,
                      chain: &mut Box<dyn Collector<T>>,
                      reader: &mut Box<dyn SourceReader<T>>|
         -> Result<Flow> {
            match msg {
                ControlMessage::TriggerCheckpoint(barrier) => {
                    let mut snapshot = TaskSnapshot::default();
                    snapshot.add_operator_state(
                        &uid,
                        SOURCE_OFFSETS_STATE,
                        Redistribution::Union,
                        reader.snapshot(barrier.checkpoint_id)?,
                    );
                    chain.on_barrier(&barrier, &mut snapshot)?;
                    if barrier.stops_job() {
                        chain.flush()?;
                        stopping.set(true);
                    }
                    // The coordinator may be gone during teardown; nothing to do then.
                    let _ = env.events.send(TaskEvent::Acknowledge {
                        checkpoint_id: barrier.checkpoint_id,
                        task: env.id,
                        states: snapshot.states,
                    });
                }
                // The chain first: a chained sink publishes the checkpoint's output before the
                // reader reports the checkpoint's positions (Kafka commits them to the consumer
                // group), so monitoring never sees input consumed whose output is not out yet.
                ControlMessage::CheckpointComplete(id) => {
                    chain.on_checkpoint_complete(id)?;
                    reader.notify_checkpoint_complete(id)?;
                }
                // A failed stop-with-savepoint leaves the job running.
                ControlMessage::AbortCheckpoint(_) => stopping.set(false),
                ControlMessage::Stop => {
                    chain.finish()?;
                    let _ = env.events.send(TaskEvent::Finished { task: env.id });
                    return Ok(Flow::Exit);
                }
                ControlMessage::Cancel => return Err(Error::Cancelled),
            }
            Ok(Flow::Continue)
        };

        let mut batch = Vec::with_capacity(BATCH_SIZE);
        let mut announced_splits: Option<Vec<u64>> = None;
        let mut finished = false;
        let mut last_flush = Instant::now();
        loop {
            while let Ok(msg) = env.control.try_recv() {
                if let Flow::Exit = handle(msg, &mut chain, &mut reader)? {
                    return Ok(());
                }
            }
            if env.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if finished || stopping.get() {
                // Still answer barriers and completions until the coordinator says stop.
                let msg = env.control.recv().map_err(|_| Error::Cancelled)?;
                if let Flow::Exit = handle(msg, &mut chain, &mut reader)? {
                    return Ok(());
                }
                continue;
            }
            let status = reader.poll(&mut batch, BATCH_SIZE)?;
            // Before the records: a split found in this poll holds the watermark back before
            // the records of the others can move it past the new split's first records.
            if let Some(splits) = reader.splits()
                && announced_splits.as_ref() != Some(&splits)
            {
                chain.on_splits(&splits)?;
                announced_splits = Some(splits);
            }
            records_out.inc_by(batch.len() as u64);
            for item in batch.drain(..) {
                chain.collect(item)?;
            }
            match status {
                SourceStatus::More => {
                    if last_flush.elapsed() >= FLUSH_INTERVAL {
                        chain.flush()?;
                        last_flush = Instant::now();
                    }
                }
                SourceStatus::Idle(wait) => {
                    chain.flush()?;
                    last_flush = Instant::now();
                    match env.control.recv_timeout(wait) {
                        Ok(msg) => {
                            if let Flow::Exit = handle(msg, &mut chain, &mut reader)? {
                                return Ok(());
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
                    }
                }
                SourceStatus::Finished => {
                    // End of input closes every window (Flink's MAX_WATERMARK).
                    chain.on_watermark(super::watermark::Watermark::MAX)?;
                    chain.flush()?;
                    finished = true;
                    tracing::debug!(operator = %uid, subtask = env.id.subtask, "source reached end of input");
                    let _ = env.events.send(TaskEvent::SourceFinished { task: env.id });
                }
            }
        }
    }
}

/// What a keyed task runs: a keyed function, and what it does with the records of its
/// broadcast inputs (a plain keyed function has none: `B` is `Infallible`).
pub trait KeyedOperator<K, T, B, O>: KeyedProcessFunction<K, T, O> {
    fn process_broadcast(&mut self, value: B, out: &mut Output<'_, O>) -> Result<()>;
    /// The broadcast states, checkpointed with the keyed state; `None` without broadcast.
    fn broadcast_states(&mut self) -> Option<&mut BroadcastStates>;
}

/// A keyed function without broadcast inputs.
pub struct Plain<P>(pub P);

impl<K, T, O, P: KeyedProcessFunction<K, T, O>> KeyedProcessFunction<K, T, O> for Plain<P> {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.0.open(state)
    }

    #[inline]
    fn process(
        &mut self,
        key: &K,
        value: T,
        ctx: &mut KeyedContext<'_>,
        out: &mut Output<'_, O>,
    ) -> Result<()> {
        self.0.process(key, value, ctx, out)
    }

    fn on_timer(
        &mut self,
        key: &K,
        timer: &crate::state::Timer,
        ctx: &mut KeyedContext<'_>,
        out: &mut Output<'_, O>,
    ) -> Result<()> {
        self.0.on_timer(key, timer, ctx, out)
    }
}

impl<K, T, O, P: KeyedProcessFunction<K, T, O>> KeyedOperator<K, T, Infallible, O> for Plain<P> {
    fn process_broadcast(&mut self, value: Infallible, _out: &mut Output<'_, O>) -> Result<()> {
        match value {}
    }

    fn broadcast_states(&mut self) -> Option<&mut BroadcastStates> {
        None
    }
}

/// A keyed function over its keyed inputs and, when connected to a broadcast stream, its
/// broadcast inputs. Barriers align and watermarks combine across both kinds alike (the
/// broadcast inputs come after the keyed ones in the numbering).
pub struct KeyedTask<K, T, B, O> {
    pub uid: String,
    pub inputs: Vec<Receiver<Message<KeyedRecord<K, T>>>>,
    pub broadcast_inputs: Vec<Receiver<Message<B>>>,
    pub function: Box<dyn KeyedOperator<K, T, B, O>>,
    pub chain: Box<dyn Collector<O>>,
}

/// Barrier alignment across the inputs of one task (the Chandy-Lamport step).
struct Alignment {
    exactly_once: bool,
    current: Option<Barrier>,
    arrived: Vec<bool>,
    ended: Vec<bool>,
    /// Barriers at or below this id are stale (snapshotted or aborted).
    done_up_to: u64,
}

impl Alignment {
    fn new(inputs: usize, mode: CheckpointMode) -> Self {
        Alignment {
            exactly_once: mode == CheckpointMode::ExactlyOnce,
            current: None,
            arrived: vec![false; inputs],
            ended: vec![false; inputs],
            done_up_to: 0,
        }
    }

    /// An input is read unless it has ended or, in exactly-once mode, has delivered the
    /// barrier being aligned: records behind it belong to the next checkpoint.
    fn is_readable(&self, input: usize) -> bool {
        let blocked = self.exactly_once && self.arrived[input];
        !(self.ended[input] || blocked)
    }

    /// Returns the barrier to snapshot at, once every live input has delivered it.
    fn on_barrier(&mut self, input: usize, barrier: Barrier) -> Option<Barrier> {
        if barrier.checkpoint_id <= self.done_up_to {
            return None;
        }
        match self.current {
            Some(ref current) if barrier.checkpoint_id < current.checkpoint_id => return None,
            Some(ref current) if barrier.checkpoint_id == current.checkpoint_id => {}
            // A newer barrier overtakes an unfinished alignment: the old checkpoint is lost.
            _ => {
                self.current = Some(barrier);
                self.arrived.iter_mut().for_each(|a| *a = false);
            }
        }
        self.arrived[input] = true;
        self.complete_if_aligned()
    }

    fn on_end_of_stream(&mut self, input: usize) -> Option<Barrier> {
        self.ended[input] = true;
        self.complete_if_aligned()
    }

    fn complete_if_aligned(&mut self) -> Option<Barrier> {
        let current = self.current.clone()?;
        let aligned = self.arrived.iter().zip(&self.ended).all(|(a, e)| *a || *e);
        if !aligned {
            return None;
        }
        self.reset(current.checkpoint_id);
        Some(current)
    }

    fn abort(&mut self, checkpoint_id: u64) {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.checkpoint_id <= checkpoint_id)
        {
            self.reset(checkpoint_id);
        }
        self.done_up_to = self.done_up_to.max(checkpoint_id);
    }

    fn reset(&mut self, done: u64) {
        self.current = None;
        self.arrived.iter_mut().for_each(|a| *a = false);
        self.done_up_to = self.done_up_to.max(done);
    }

    fn all_ended(&self) -> bool {
        self.ended.iter().all(|e| *e)
    }
}

impl<K: Key, T: Send + 'static, B: Send + 'static, O: Send + 'static> Task
    for KeyedTask<K, T, B, O>
{
    fn run(self: Box<Self>, env: TaskEnv) -> Result<()> {
        let KeyedTask {
            uid,
            inputs,
            broadcast_inputs,
            mut function,
            mut chain,
        } = *self;
        let key_groups =
            key_group_range_for_subtask(env.max_parallelism, env.parallelism, env.id.subtask);
        let snapshots = IncrementalSnapshots::new(&uid, env.id.subtask, &env.attempt_id);
        let mut backend = open_keyed_state(&env, &uid, key_groups, &snapshots)?;
        let mut registry = StateRegistry::new(&uid).with_cached_files(env.cached_files.clone());
        function.open(&mut registry)?;
        let ttl_states = registry.ttl_states().clone();
        let ttl_names = registry.ttl_names();
        if let Some(states) = function.broadcast_states() {
            *states = BroadcastStates::restore(
                registry.broadcast_names(),
                |name| env.restored_operator_state(&uid, name, Redistribution::Broadcast),
                &uid,
            )?;
        }
        if let Some(restore) = &env.restore {
            crate::state::ttl::check_restored_formats(
                &uid,
                &registry.formats(),
                &ttl_states,
                &restore.ttl_states(&uid, key_groups),
                &mut backend,
                &restore.uri(),
            )?;
        }
        chain.open(&env)?;

        let metrics = crate::metrics::global();
        let labels = metrics.operator(&uid);
        let records_in = metrics.records_in.get_or_create(&labels).clone();
        let records_out = metrics.records_out.get_or_create(&labels).clone();
        let mut emitted = 0u64;
        let mut key_bytes = Vec::with_capacity(64);
        let keyed_inputs = inputs.len();
        let all_inputs = keyed_inputs + broadcast_inputs.len();
        let mut alignment = Alignment::new(all_inputs, env.checkpoint_mode);
        let mut watermarks = super::watermark::WatermarkTracker::new(all_inputs);

        // Set once a stop-with-savepoint barrier is snapshotted: event time stands still from
        // then on (a source's last watermark may follow its barrier), because whatever a timer
        // fired now would emit is after the savepoint, and is produced again by whoever
        // restores it. Cleared if that savepoint is aborted: the job goes on.
        let mut stopping_at: Option<u64> = None;
        loop {
            if stopping_at.is_none() {
                super::event_time::fire_processing_timers(
                    &mut backend,
                    function.as_mut(),
                    chain.as_mut(),
                    &mut emitted,
                )?;
            }
            let mut select = Select::new();
            select.recv(&env.control);
            let mut readable = Vec::with_capacity(all_inputs);
            for (i, input) in inputs.iter().enumerate() {
                if alignment.is_readable(i) {
                    readable.push(i);
                    select.recv(input);
                }
            }
            for (i, input) in broadcast_inputs.iter().enumerate() {
                if alignment.is_readable(keyed_inputs + i) {
                    readable.push(keyed_inputs + i);
                    select.recv(input);
                }
            }
            let Ok(op) = select.select_timeout(FLUSH_INTERVAL) else {
                chain.flush()?;
                records_out.inc_by(std::mem::take(&mut emitted));
                continue;
            };
            if op.index() == 0 {
                let msg = op.recv(&env.control).map_err(|_| Error::Cancelled)?;
                match msg {
                    ControlMessage::CheckpointComplete(id) => {
                        snapshots.on_checkpoint_complete(id);
                        chain.on_checkpoint_complete(id)?;
                    }
                    ControlMessage::AbortCheckpoint(id) => {
                        alignment.abort(id);
                        if stopping_at.is_some_and(|stop| stop <= id) {
                            stopping_at = None;
                        }
                    }
                    ControlMessage::Cancel => return Err(Error::Cancelled),
                    ControlMessage::TriggerCheckpoint(_) | ControlMessage::Stop => {}
                }
                continue;
            }
            let input = readable[op.index() - 1];
            let message = match input.checked_sub(keyed_inputs) {
                None => op.recv(&inputs[input]).map_err(|_| Error::Cancelled)?,
                Some(b) => {
                    let message = op
                        .recv(&broadcast_inputs[b])
                        .map_err(|_| Error::Cancelled)?;
                    match message.into_records() {
                        Ok(batch) => {
                            records_in.inc_by(batch.len() as u64);
                            for value in batch {
                                let mut out = Output {
                                    next: chain.as_mut(),
                                    emitted: &mut emitted,
                                };
                                function.process_broadcast(value, &mut out)?;
                            }
                            continue;
                        }
                        Err(control) => control,
                    }
                }
            };
            let aligned = match message {
                Message::Records(batch) => {
                    records_in.inc_by(batch.len() as u64);
                    for record in batch {
                        key_bytes.clear();
                        record.key.write_key(&mut key_bytes);
                        backend.set_current_key(record.key_group, &key_bytes);
                        let mut ctx = KeyedContext {
                            backend: &mut backend,
                        };
                        let mut out = Output {
                            next: chain.as_mut(),
                            emitted: &mut emitted,
                        };
                        function.process(&record.key, record.value, &mut ctx, &mut out)?;
                        super::event_time::after_call(&mut backend, &record.key)?;
                    }
                    None
                }
                Message::Barrier(barrier) => alignment.on_barrier(input, barrier),
                Message::Watermark(_) if stopping_at.is_some() => None,
                Message::Watermark(watermark) => {
                    super::event_time::on_watermark(
                        &mut watermarks,
                        input,
                        watermark,
                        &mut backend,
                        function.as_mut(),
                        chain.as_mut(),
                        &mut emitted,
                    )?;
                    None
                }
                Message::EndOfStream => {
                    watermarks.on_end_of_stream(input);
                    alignment.on_end_of_stream(input)
                }
            };
            if let Some(barrier) = aligned {
                if barrier.stops_job() {
                    stopping_at = Some(barrier.checkpoint_id);
                }
                if !ttl_states.is_empty() {
                    // Cleanup at snapshot: expired values are not in what follows.
                    let started = Instant::now();
                    let swept = ttl_states.sweep(&mut backend)?;
                    tracing::debug!(operator = %uid, subtask = env.id.subtask, checkpoint_id = barrier.checkpoint_id, scanned = swept.scanned, deleted = swept.deleted, rewritten = swept.rewritten, elapsed = ?started.elapsed(), "expired state swept before the snapshot");
                }
                let mut task_snapshot = TaskSnapshot::default();
                task_snapshot.set_ttl_states(&uid, ttl_names.clone());
                if let Some(states) = function.broadcast_states() {
                    for (name, state) in states.snapshot() {
                        task_snapshot.add_operator_state(
                            &uid,
                            &name,
                            state.redistribution,
                            state.entries,
                        );
                    }
                }
                snapshot(
                    &env,
                    &uid,
                    task_snapshot,
                    &mut backend,
                    &snapshots,
                    chain.as_mut(),
                    barrier,
                )?;
            }
            if alignment.all_ended() {
                // Completions are sent before sources are told to stop, so any completion
                // of the final checkpoint is already queued: apply it before finishing.
                while let Ok(msg) = env.control.try_recv() {
                    if let ControlMessage::CheckpointComplete(id) = msg {
                        snapshots.on_checkpoint_complete(id);
                        chain.on_checkpoint_complete(id)?;
                    }
                }
                chain.finish()?;
                records_out.inc_by(emitted);
                let _ = env.events.send(TaskEvent::Finished { task: env.id });
                return Ok(());
            }
        }
    }
}

/// Opens the keyed state of a subtask owning `key_groups` on the job's `state.backend`,
/// restored when the attempt restores.
///
/// Restoring one incremental handle of exactly these key groups (a restart at the same
/// parallelism) onto RocksDB opens RocksDB on its downloaded files: nothing is rewritten.
/// Anything else (a rescale, full snapshot objects, or any restore onto the heap) copies the
/// wanted key groups into a fresh instance. Either backend restores what either wrote.
fn open_keyed_state(
    env: &TaskEnv,
    uid: &str,
    key_groups: KeyGroupRange,
    snapshots: &IncrementalSnapshots,
) -> Result<KeyedStateBackend> {
    // Snapshots are written here before they are stored, on either backend (RocksDB would
    // create it for its instance; the heap has no instance).
    std::fs::create_dir_all(&env.local_dir).map_err(|e| Error::io(env.local_dir.display(), e))?;
    let db_path = env.local_dir.join("rocksdb");
    let cache_bytes = env.doc.state.cache_bytes;
    let kind = env.doc.state.backend;
    let Some(restore) = &env.restore else {
        return KeyedStateBackend::open_kind(kind, &db_path, key_groups, cache_bytes);
    };
    let started = Instant::now();
    let full = restore.keyed_handles(uid, key_groups);
    let incremental = restore.incremental_handles(uid, key_groups);
    if let (StateBackendKind::Rocksdb, [], [handle]) =
        (kind, full.as_slice(), incremental.as_slice())
        && handle.key_groups == key_groups
    {
        env.rt
            .block_on(incremental::download(restore, handle, &db_path))?;
        fault_points::hit(FaultPoint::RestoreStateDownloaded);
        let backend =
            KeyedStateBackend::open_restored(&db_path, key_groups, cache_bytes, &restore.uri())?;
        // Later checkpoints may refer to the restored files only where they live: in this
        // job's own checkpoint folder (a checkpoint of another job is never written to).
        let same_job = restore
            .store
            .parent()
            .zip(env.checkpoint_store.as_ref())
            .is_some_and(|(folder, job)| folder.location() == job.location());
        if same_job {
            snapshots.adopt(handle);
        }
        tracing::info!(operator = %uid, subtask = env.id.subtask, files = handle.shared.len() + handle.private.len(), bytes = handle.full_size(), elapsed = ?started.elapsed(), from = %restore.uri(), "keyed state restored (RocksDB files opened as they are)");
        return Ok(backend);
    }
    let mut backend = KeyedStateBackend::open_kind(kind, &db_path, key_groups, cache_bytes)?;
    let mut entries = 0;
    for handle in full {
        let data = env.rt.block_on(restore.fetch_keyed(&handle))?;
        fault_points::hit(FaultPoint::RestoreStateDownloaded);
        entries += backend.restore_snapshot(&data, &restore.store.uri(&handle.object))?;
    }
    for (i, handle) in incremental.iter().enumerate() {
        let dir = env.local_dir.join(format!("restore-{i}"));
        env.rt
            .block_on(incremental::download(restore, handle, &dir))?;
        fault_points::hit(FaultPoint::RestoreStateDownloaded);
        entries += backend.restore_from_files(&dir, &restore.uri())?;
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
    }
    tracing::info!(operator = %uid, subtask = env.id.subtask, backend = ?kind, entries, elapsed = ?started.elapsed(), from = %restore.uri(), "keyed state restored");
    Ok(backend)
}

/// Snapshots keyed state and the chain at `barrier`. The synchronous part (RocksDB: flush and
/// hard-link checkpoint; heap: a copy-on-write clone of the maps; then the sink pre-commit)
/// runs here; storing the state runs on the I/O runtime, which acknowledges (or declines) when
/// done. RocksDB checkpoints store its files incrementally (unless
/// `state.incrementalCheckpoints` is off); savepoints, and every heap snapshot, write one
/// full, relocatable snapshot object.
fn snapshot<O>(
    env: &TaskEnv,
    uid: &str,
    mut task_snapshot: TaskSnapshot,
    backend: &mut KeyedStateBackend,
    snapshots: &IncrementalSnapshots,
    chain: &mut dyn Collector<O>,
    barrier: Barrier,
) -> Result<()> {
    let checkpoint_id = barrier.checkpoint_id;
    let started = Instant::now();
    let copy_dir = env.local_dir.join(format!("snapshot-{checkpoint_id}"));
    let pending = backend.checkpoint_to(&copy_dir)?;
    let synchronous = started.elapsed();
    let subtask = env.id.subtask;
    let kind = backend.kind();
    tracing::debug!(operator = %uid, subtask, checkpoint_id, backend = ?kind, elapsed = ?synchronous, "keyed snapshot: synchronous part done");
    chain.on_barrier(&barrier, &mut task_snapshot)?;

    let (store, job_store) = match (&barrier.savepoint, &env.checkpoint_store) {
        (Some(savepoint), _) => (savepoint.store.clone(), None),
        (None, Some(job_store)) => (
            job_store.child(&layout::checkpoint_dir(checkpoint_id)),
            Some(job_store.clone()),
        ),
        (None, None) => return Ok(()),
    };
    let incremental_to = job_store.filter(|_| env.doc.state.incremental_checkpoints);
    if incremental_to.is_some() && pending.rocksdb_files().is_none() {
        static EXPLAINED: std::sync::Once = std::sync::Once::new();
        EXPLAINED.call_once(|| {
            tracing::info!(operator = %uid, "state.incrementalCheckpoints is on but state.backend is heap: heap state has no files to share between checkpoints, so every checkpoint is a full snapshot (as in Flink)");
        });
    }
    let private_prefix = format!("{uid}-{}", env.id.subtask);
    let object = format!("{private_prefix}.state");
    let file = env
        .local_dir
        .join(format!("snapshot-{checkpoint_id}.state"));
    let key_groups = backend.key_groups();
    let events = env.events.clone();
    let task = env.id;
    let uid = uid.to_string();
    let snapshots = snapshots.clone();
    let scratch = [copy_dir.clone(), file.clone()];
    env.rt.spawn(async move {
        let stored = async {
            if let (Some(job_store), Some(copy_dir)) = (&incremental_to, pending.rocksdb_files()) {
                let handle = snapshots
                    .store(
                        checkpoint_id,
                        copy_dir,
                        key_groups,
                        job_store,
                        &store,
                        &private_prefix,
                    )
                    .await?;
                let bytes = handle.full_size();
                task_snapshot.set_keyed_incremental(&uid, handle);
                return Ok::<_, Error>((None, bytes));
            }
            let file_for_write = file.clone();
            let info = tokio::task::spawn_blocking(move || pending.write_full(&file_for_write))
                .await
                .map_err(|e| Error::operator(&uid, format!("snapshot writer panicked: {e}")))??;
            store.move_file(&object, &file).await?;
            task_snapshot.set_keyed(
                &uid,
                KeyedStateHandle {
                    object: object.clone(),
                    key_groups,
                    size: info.size,
                    crc32: info.crc32,
                    entries: info.entries,
                },
            );
            Ok((Some(info.entries), info.size))
        };
        let result = stored.await;
        match &result {
            Ok((entries, bytes)) => {
                tracing::debug!(operator = %uid, subtask, checkpoint_id, backend = ?kind, entries, bytes, synchronous = ?synchronous, elapsed = ?started.elapsed(), "keyed snapshot: stored");
            }
            Err(_) => {
                // A declined snapshot (often a savepoint into storage that refuses it) leaves
                // no local copy behind: repeated retries must not fill the task's disk.
                let [copy_dir, file] = &scratch;
                let _ = tokio::fs::remove_dir_all(copy_dir).await;
                let _ = tokio::fs::remove_file(file).await;
            }
        }
        let event = match result {
            Ok(_) => TaskEvent::Acknowledge {
                checkpoint_id,
                task,
                states: task_snapshot.states,
            },
            Err(e) => TaskEvent::Decline {
                checkpoint_id,
                task,
                reason: e.to_string(),
            },
        };
        let _ = events.send(event);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(id: u64) -> Barrier {
        Barrier {
            checkpoint_id: id,
            timestamp_ms: 0,
            savepoint: None,
        }
    }

    fn ids(b: Option<Barrier>) -> Option<u64> {
        b.map(|b| b.checkpoint_id)
    }

    #[test]
    fn exactly_once_blocks_inputs_until_all_barriers_arrive() {
        let mut a = Alignment::new(3, CheckpointMode::ExactlyOnce);
        assert_eq!(ids(a.on_barrier(1, barrier(1))), None);
        assert!(!a.is_readable(1), "input with the barrier is blocked");
        assert!(a.is_readable(0) && a.is_readable(2));
        assert_eq!(ids(a.on_barrier(0, barrier(1))), None);
        assert_eq!(ids(a.on_barrier(2, barrier(1))), Some(1));
        assert!(
            (0..3).all(|i| a.is_readable(i)),
            "all unblocked after the snapshot"
        );
    }

    #[test]
    fn at_least_once_never_blocks() {
        let mut a = Alignment::new(2, CheckpointMode::AtLeastOnce);
        assert_eq!(ids(a.on_barrier(0, barrier(1))), None);
        assert!(a.is_readable(0));
        assert_eq!(ids(a.on_barrier(1, barrier(1))), Some(1));
    }

    #[test]
    fn newer_barrier_supersedes_and_stale_ones_are_ignored() {
        let mut a = Alignment::new(2, CheckpointMode::ExactlyOnce);
        a.on_barrier(0, barrier(1));
        assert_eq!(ids(a.on_barrier(1, barrier(2))), None);
        assert!(
            a.is_readable(0),
            "input 0 unblocked: checkpoint 1 was abandoned"
        );
        assert_eq!(ids(a.on_barrier(0, barrier(2))), Some(2));
        assert_eq!(
            ids(a.on_barrier(1, barrier(1))),
            None,
            "late barrier of an old checkpoint"
        );
    }

    #[test]
    fn ended_inputs_do_not_hold_alignment() {
        let mut a = Alignment::new(2, CheckpointMode::ExactlyOnce);
        a.on_end_of_stream(0);
        assert_eq!(ids(a.on_barrier(1, barrier(4))), Some(4));
    }

    #[test]
    fn abort_unblocks() {
        let mut a = Alignment::new(2, CheckpointMode::ExactlyOnce);
        a.on_barrier(0, barrier(3));
        a.abort(3);
        assert!(a.is_readable(0));
        assert_eq!(ids(a.on_barrier(1, barrier(3))), None);
    }
}
