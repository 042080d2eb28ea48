//! The checkpoint coordinator: triggers checkpoints, collects every task's acknowledgement,
//! writes `_metadata` last, and applies retention. Local mode and the JobManager drive the same
//! type; it does no task I/O itself, only storage I/O.
//!
//! At most one checkpoint is in flight. A checkpoint that times out or is declined counts as
//! a failure; more than `tolerableFailures` in a row fail the job (it then restarts from the
//! latest completed checkpoint). A savepoint that fails (bad target, storage error, declined,
//! timed out) fails only itself, as in Flink: it never counts toward `tolerableFailures`.
//!
//! # Fencing: every checkpoint id is written once, in order, create-only
//!
//! Two JobManagers of one job can be alive at once: Kubernetes starts the replacement while
//! the old pod terminates, and a paused (SIGSTOP, a stalled VM) or partitioned JobManager may
//! resume at any time later. The only thing both share is checkpoint storage, so that is where
//! the newer one fences the older one. The rules:
//!
//! 1. Every id `n` ends up with exactly one `chk-<n>/_metadata`, written create-only
//!    (`ObjectStore::put_if_absent`: S3 `If-None-Match: *`, locally a hard link): a completed
//!    checkpoint, or a claim (`metadata::IdClaim`) saying what else the id was used for: an
//!    attempt start (`takeover`, `restart`), a checkpoint that failed, a savepoint stored
//!    elsewhere. Each claim names the job's state as of its id (`restoreFrom`).
//! 2. A JobManager writes id `n + 1` only after it wrote `n` itself; its first write (the
//!    takeover claim) goes to one past the newest `_metadata` in storage, and it restores from
//!    the state as of that newest entry. A checkpoint is triggered with id `last written + 1`;
//!    when one fails, its id is written (a `failed` claim) before the next is triggered; a new
//!    attempt of the same JobManager first claims the next id (`restart`), which also settles
//!    a checkpoint the old attempt left in flight.
//! 3. Losing a create-only write means another JobManager wrote that id: this one is
//!    **fenced** (`Error::Fenced`). It does not send the completion (so its sinks never commit
//!    that checkpoint), deletes nothing, and the process exits. Unless the entry there is its
//!    own: a write the store kept while its answer was lost (`own_entry`), met again by a
//!    retry; that id stands as this JobManager's write.
//!
//! So after B's takeover claim at `h + 1` succeeded, every other JobManager's next write is at
//! some id `<= h + 1`, all of which exist: each of them is fenced at its next write, whatever
//! that write is (completing, settling a failure, restarting), and a JobManager cannot publish
//! anything without a write first. The interleavings, for A (old) and B (new), A's latest
//! completed checkpoint `n`:
//!
//! - **A completes `n + 1` before B surveys storage**: B restores from `n + 1` and claims
//!   `n + 2`. A's commit of `n + 1` and B's recovery of `n + 1`'s pending sink output publish
//!   the same parts; publishing is idempotent, so output is exactly-once.
//! - **A's write of `n + 1` and B's takeover claim race**: exactly one creates
//!   `chk-<n+1>/_metadata`. If A wins, B surveys again (restores `n + 1`, claims `n + 2`). If B
//!   wins, A is fenced and never commits `n + 1`; B restored `n`, and its sink recovery discards
//!   the parts A pre-committed for `n + 1`, which nobody will ever commit.
//! - **A resumes after B moved on** (A paused with all acknowledgements of `n + 1` in its socket
//!   buffers): A's create of `chk-<n+1>/_metadata` fails on B's claim. A checkpoint id
//!   triggered before several failures does not help A: the failed ids were written too.
//! - **A stalls between its survey and its claim**: its claim goes to an id B already wrote
//!   (fenced), or, if retention deleted that id meanwhile, into a hole: A then sees newer ids
//!   after its claim (`verify_newest`) and is fenced before it restores or deletes anything.
//! - **Pending sink parts and shared files of the loser**: cleanup at an attempt start (sink
//!   recovery, orphaned shared files) deletes only what belongs to checkpoint ids or attempts
//!   at or below the attempt's own claim: nothing of a newer JobManager, whose files all carry
//!   higher ids (`checkpoint::attempt_id`), even when the older one runs its cleanup late.
//! - **Retention deleting files**: retention deletes `_metadata` of ids below the oldest
//!   retained checkpoint, which opens holes in the id sequence. A hole is harmless unless some
//!   JobManager's *next* id lands in it. The id after a JobManager's last write is either free
//!   (it is the newest writer) or was taken by the first write of another JobManager that
//!   took over, a `takeover` claim: so retention keeps takeover claims (one small object per
//!   JobManager start) and deletes everything else in their directories.
//! - **Two JobManagers alive for good** (two Deployments by mistake): each start takes the job
//!   over and fences the other; output stays exactly-once, the job flaps.
//!
//! The guarantee is as strong as the store's create-only write: atomic on AWS S3 and MinIO and
//! on a local filesystem (`link`); the s3s-fs test server checks and writes in two steps, so
//! only writes racing within the same instant could both win there (none of the test
//! scenarios depends on that).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::metadata::{
    CheckpointMetadata, ClaimReason, IdClaim, MetadataEntry, OperatorSnapshot, SnapshotKind,
    SubtaskState,
};
use super::{Barrier, RestorePoint, SavepointTarget, list_checkpoints, read_entry};
use crate::error::{Error, Result};
use crate::spec::CheckpointConfig;
use crate::spec::layout;
use crate::storage::ObjectStore;
use crate::types::TaskId;

/// Entries of checkpoint history kept for the REST API.
const HISTORY_LEN: usize = 32;

#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    pub kind: SnapshotKind,
    /// Stop-with-savepoint: the job ends once this completes.
    pub stops_job: bool,
    pub checkpoint_id: u64,
    pub uri: String,
    pub state_size: u64,
    /// Bytes stored by this checkpoint itself (see `CheckpointMetadata::checkpointed_size`).
    pub checkpointed_size: u64,
    pub duration: Duration,
    pub timestamp_ms: u64,
}

pub use crate::spec::rest::{CheckpointCounts, CheckpointInfo, OperationStatus};

struct PendingCheckpoint {
    barrier: Barrier,
    triggered_at: Instant,
    acks: HashMap<TaskId, Vec<(String, SubtaskState)>>,
}

/// What a `chk-<n>/_metadata` holds, as far as retention needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Checkpoint,
    /// Kept for good (see the module docs).
    Takeover,
    /// Any other claim: deleted like an expired checkpoint.
    Claim,
}

impl EntryKind {
    fn of(entry: &MetadataEntry) -> EntryKind {
        match entry {
            MetadataEntry::Checkpoint(_) => EntryKind::Checkpoint,
            MetadataEntry::Claim(IdClaim {
                reason: ClaimReason::Takeover,
                ..
            }) => EntryKind::Takeover,
            MetadataEntry::Claim(_) => EntryKind::Claim,
        }
    }
}

/// Where a JobManager taking the job over writes first, and the job's state there.
#[derive(Debug)]
pub struct Survey {
    /// One past the newest `_metadata` in storage.
    pub next_id: u64,
    /// The state as of the newest `_metadata`: that checkpoint, or what the claim names.
    pub latest: Option<RestorePoint>,
}

pub struct CheckpointCoordinator {
    job_store: ObjectStore,
    config: CheckpointConfig,
    job_id: String,
    /// Written into claims: which JobManager took an id.
    job_manager: String,
    parallelism: u32,
    max_parallelism: u32,
    expected_tasks: usize,
    /// The id this JobManager wrote last, claim or checkpoint; the only one it may write next
    /// is the one after. `None` until it took the job over.
    last_written: Option<u64>,
    /// The job's state as of `last_written` (a checkpoint or savepoint URI; `None`: empty).
    state_uri: Option<String>,
    next_checkpoint_id: u64,
    pending: Option<PendingCheckpoint>,
    /// A checkpoint that failed and whose id is not written yet (id, why): nothing is triggered
    /// until it is (`settle`).
    unsettled: Option<(u64, String)>,
    consecutive_failures: u32,
    latest: Option<CompletedCheckpoint>,
    history: VecDeque<CheckpointInfo>,
    counts: CheckpointCounts,
    /// What the `_metadata` of each id holds, as far as known: spares retention re-reading.
    kinds: BTreeMap<u64, EntryKind>,
}

impl CheckpointCoordinator {
    /// `job_store` is rooted at `<storage>/<jobId>`; `job_manager` names this JobManager in the
    /// claims it writes. Nothing is read or written until
    /// [`claim_takeover`](Self::claim_takeover).
    pub fn new(
        job_store: ObjectStore,
        config: CheckpointConfig,
        job_id: &str,
        job_manager: &str,
        parallelism: u32,
        max_parallelism: u32,
    ) -> Self {
        CheckpointCoordinator {
            job_store,
            config,
            job_id: job_id.to_string(),
            job_manager: job_manager.to_string(),
            parallelism,
            max_parallelism,
            expected_tasks: 0,
            last_written: None,
            state_uri: None,
            next_checkpoint_id: 1,
            pending: None,
            unsettled: None,
            consecutive_failures: 0,
            latest: None,
            history: VecDeque::new(),
            counts: CheckpointCounts::default(),
            kinds: BTreeMap::new(),
        }
    }

    /// Reads where a takeover would write and the job's state there.
    pub async fn survey(&self) -> Result<Survey> {
        let newest = weir_storage::checkpoints::latest_completed(&self.job_store).await?;
        let Some(newest) = newest else {
            return Ok(Survey {
                next_id: 1,
                latest: None,
            });
        };
        let latest =
            RestorePoint::resolve(self.job_store.child(&layout::checkpoint_dir(newest))).await?;
        Ok(Survey {
            next_id: newest + 1,
            latest,
        })
    }

    /// Takes the job over by writing a `takeover` claim at `id` (from [`survey`]), naming
    /// `restore_from` as the state there. `Ok(false)` when another JobManager wrote that id
    /// first: survey again. `Error::Fenced` when newer ids exist above the claim (this
    /// JobManager stalled between survey and claim while the job moved on).
    ///
    /// [`survey`]: Self::survey
    pub async fn claim_takeover(&mut self, id: u64, restore_from: Option<String>) -> Result<bool> {
        if !self
            .write_claim(id, ClaimReason::Takeover, &restore_from)
            .await?
        {
            return Ok(false);
        }
        self.kinds.insert(id, EntryKind::Takeover);
        self.verify_newest(id).await?;
        self.took(id, restore_from);
        tracing::info!(checkpoint_id = id, job_manager = %self.job_manager, "took the job over: claimed checkpoint id {id}");
        Ok(true)
    }

    /// A new attempt of this JobManager: claims the id after the last one it wrote, which also
    /// settles a checkpoint the previous attempt left in flight or failed. The job's state
    /// stays what it was. `Error::Fenced` when another JobManager took that id.
    pub async fn claim_restart(&mut self) -> Result<u64> {
        let Some(last) = self.last_written else {
            return Err(Error::CheckpointFailed {
                checkpoint_id: 0,
                reason: "a restart claim before the takeover".into(),
            });
        };
        let mut id = last + 1;
        if let Some(pending) = self.pending.take() {
            self.record_failed(pending.barrier.checkpoint_id, "the job restarted");
        }
        self.unsettled = None;
        while !self
            .write_claim(id, ClaimReason::Restart, &self.state_uri)
            .await?
        {
            // The previous attempt's last write (a completion or a failed claim) may have been
            // stored with its answer lost: that id stands as written, the restart takes the
            // next one and restores what it holds.
            let Some(entry) = self.own_entry(id).await? else {
                return Err(self.fenced(id).await);
            };
            tracing::warn!(
                checkpoint_id = id,
                "checkpoint id {id} was already written by this JobManager (a write whose answer was lost); it stands"
            );
            self.adopt(id, &entry);
            id += 1;
        }
        self.kinds.insert(id, EntryKind::Claim);
        self.took(id, self.state_uri.clone());
        Ok(id)
    }

    /// The job's state as of the last id this JobManager wrote.
    pub fn state_uri(&self) -> Option<&str> {
        self.state_uri.as_deref()
    }

    /// The id of this JobManager's latest claim or checkpoint.
    pub fn last_written(&self) -> Option<u64> {
        self.last_written
    }

    fn took(&mut self, id: u64, state: Option<String>) {
        self.last_written = Some(id);
        self.next_checkpoint_id = id + 1;
        self.state_uri = state;
    }

    /// Writes a claim for `id` create-only; false when the id is taken.
    async fn write_claim(
        &self,
        id: u64,
        reason: ClaimReason,
        restore_from: &Option<String>,
    ) -> Result<bool> {
        let claim = IdClaim {
            job_id: self.job_id.clone(),
            checkpoint_id: id,
            job_manager: self.job_manager.clone(),
            reason,
            timestamp_ms: now_ms(),
            restore_from: restore_from.clone(),
        };
        let store = self.job_store.child(&layout::checkpoint_dir(id));
        Ok(store
            .put_if_absent(layout::METADATA_OBJECT, claim.encode()?.into())
            .await?)
    }

    /// `Error::Fenced` if any id above `claimed` has `_metadata`.
    async fn verify_newest(&self, claimed: u64) -> Result<()> {
        let newer = list_checkpoints(&self.job_store)
            .await?
            .into_iter()
            .filter(|(id, has_metadata)| *has_metadata && *id > claimed)
            .map(|(id, _)| id)
            .max();
        match newer {
            Some(id) => Err(self.fenced(id).await),
            None => Ok(()),
        }
    }

    /// The error for losing id `id` to another JobManager, saying what it wrote there.
    async fn fenced(&self, id: u64) -> Error {
        let store = self.job_store.child(&layout::checkpoint_dir(id));
        let what = match read_entry(&self.job_store, id).await {
            Ok(Some(MetadataEntry::Checkpoint(_))) => "completed".to_string(),
            Ok(Some(MetadataEntry::Claim(claim))) => {
                format!(
                    "claimed ({}, JobManager {})",
                    claim.reason, claim.job_manager
                )
            }
            _ => "wrote".to_string(),
        };
        Error::Fenced {
            checkpoint_id: id,
            what,
            object: store.uri(layout::METADATA_OBJECT),
        }
    }

    /// The `_metadata` of `id` if this JobManager wrote it. A create-only write that finds its
    /// id taken may only have lost its answer: the store kept the object but the client saw an
    /// error, and either we retry (`settle` after a failed completion) or the S3 client's own
    /// retry met the object (412). Such an entry is ours, not another JobManager's: not fenced.
    /// `None` when another JobManager wrote it (or nothing is there); a read error is returned
    /// as such, never taken for fencing.
    async fn own_entry(&self, id: u64) -> Result<Option<MetadataEntry>> {
        let entry = read_entry(&self.job_store, id).await?;
        let ours = match &entry {
            Some(MetadataEntry::Claim(claim)) => claim.job_manager == self.job_manager,
            Some(MetadataEntry::Checkpoint(meta)) => {
                meta.job_manager.as_deref() == Some(self.job_manager.as_str())
            }
            None => false,
        };
        Ok(entry.filter(|_| ours))
    }

    /// Takes this JobManager's own entry at `id` (see [`own_entry`](Self::own_entry)) as its
    /// write of `id`. A checkpoint becomes the job's state; a claim leaves the state as it is
    /// (a claim names the state this JobManager had when writing it).
    ///
    /// An adopted checkpoint was reported as failed when its write's answer was lost; it now
    /// counts as completed, is the latest, and ends the run of failures, as if that answer
    /// had come.
    fn adopt(&mut self, id: u64, entry: &MetadataEntry) {
        let state = match entry {
            MetadataEntry::Checkpoint(meta) => {
                let uri = self
                    .job_store
                    .child(&layout::checkpoint_dir(id))
                    .location()
                    .uri();
                let was_failed = self
                    .history
                    .iter()
                    .any(|e| e.id == id && e.status == OperationStatus::Failed);
                if was_failed {
                    self.counts.failed = self.counts.failed.saturating_sub(1);
                }
                self.counts.completed += 1;
                let completed = CompletedCheckpoint {
                    kind: SnapshotKind::Checkpoint,
                    stops_job: false,
                    checkpoint_id: id,
                    uri: uri.clone(),
                    state_size: meta.state_size(),
                    checkpointed_size: meta.checkpointed_size(),
                    // Unknown: the write's answer never came.
                    duration: Duration::ZERO,
                    timestamp_ms: meta.timestamp_ms,
                };
                self.update_history(id, |e| {
                    e.status = OperationStatus::Completed;
                    e.failure = None;
                    e.state_size = Some(completed.state_size);
                    e.checkpointed_size = Some(completed.checkpointed_size);
                    e.external_path = Some(uri.clone());
                });
                self.became_latest(completed);
                Some(uri)
            }
            MetadataEntry::Claim(_) => self.state_uri.clone(),
        };
        self.kinds.insert(id, EntryKind::of(entry));
        self.took(id, state);
    }

    /// A completed checkpoint (not a savepoint) is the one to restore from now.
    fn became_latest(&mut self, completed: CompletedCheckpoint) {
        self.consecutive_failures = 0;
        let metrics = crate::metrics::global();
        metrics.checkpoints_completed.inc();
        metrics
            .last_checkpoint_duration_ms
            .set(completed.duration.as_millis() as i64);
        metrics
            .last_checkpoint_size_bytes
            .set(completed.state_size as i64);
        metrics
            .last_checkpoint_id
            .set(completed.checkpoint_id as i64);
        self.latest = Some(completed);
    }

    /// A new attempt starts with `tasks` tasks (after its claim).
    pub fn start_attempt(&mut self, tasks: usize) {
        self.expected_tasks = tasks;
    }

    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    /// How long a checkpoint or savepoint may take (a savepoint: from its request).
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    pub fn pending_id(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.barrier.checkpoint_id)
    }

    pub fn latest_completed(&self) -> Option<&CompletedCheckpoint> {
        self.latest.as_ref()
    }

    /// Starts a checkpoint; the caller sends the barrier to every source. `None` while one
    /// is already in flight.
    pub fn trigger(&mut self) -> Option<Barrier> {
        self.start(None)
    }

    /// Starts a savepoint into `target` (its own directory). `None` while a checkpoint or
    /// savepoint is in flight: the caller retries when it completes.
    pub fn trigger_savepoint(&mut self, target: SavepointTarget) -> Option<Barrier> {
        self.start(Some(target))
    }

    fn start(&mut self, savepoint: Option<SavepointTarget>) -> Option<Barrier> {
        // Ids are written in order: nothing new before the takeover, while one is in flight,
        // or while a failed one is not written yet.
        if self.pending.is_some()
            || self.unsettled.is_some()
            || self.last_written.map(|l| l + 1) != Some(self.next_checkpoint_id)
        {
            return None;
        }
        let barrier = Barrier {
            checkpoint_id: self.next_checkpoint_id,
            timestamp_ms: now_ms(),
            savepoint,
        };
        self.next_checkpoint_id += 1;
        self.pending = Some(PendingCheckpoint {
            barrier: barrier.clone(),
            triggered_at: Instant::now(),
            acks: HashMap::new(),
        });
        self.counts.in_progress = 1;
        self.record(CheckpointInfo {
            id: barrier.checkpoint_id,
            status: OperationStatus::InProgress,
            savepoint: barrier.savepoint.is_some(),
            trigger_time: barrier.timestamp_ms as i64,
            complete_time: None,
            duration_ms: None,
            state_size: None,
            checkpointed_size: None,
            external_path: None,
            failure: None,
        });
        tracing::debug!(
            checkpoint_id = barrier.checkpoint_id,
            savepoint = barrier.savepoint.is_some(),
            "checkpoint triggered"
        );
        Some(barrier)
    }

    /// Adds or replaces the history entry of `info.id`.
    fn record(&mut self, info: CheckpointInfo) {
        if let Some(entry) = self.history.iter_mut().find(|e| e.id == info.id) {
            *entry = info;
            return;
        }
        self.history.push_front(info);
        self.history.truncate(HISTORY_LEN);
    }

    fn update_history(&mut self, id: u64, update: impl FnOnce(&mut CheckpointInfo)) {
        if let Some(entry) = self.history.iter_mut().find(|e| e.id == id) {
            update(entry);
        }
    }

    /// Newest first.
    pub fn history(&self) -> Vec<CheckpointInfo> {
        self.history.iter().cloned().collect()
    }

    pub fn counts(&self) -> CheckpointCounts {
        self.counts.clone()
    }

    /// The barrier of the checkpoint or savepoint in flight.
    pub fn pending_barrier(&self) -> Option<&Barrier> {
        self.pending.as_ref().map(|p| &p.barrier)
    }

    /// Records a task's acknowledgement. Returns true once every task has acknowledged: the
    /// caller then calls [`complete`](Self::complete). Stale acknowledgements are ignored.
    pub fn acknowledge(
        &mut self,
        checkpoint_id: u64,
        task: TaskId,
        states: Vec<(String, SubtaskState)>,
    ) -> bool {
        let Some(pending) = self.pending.as_mut() else {
            return false;
        };
        if pending.barrier.checkpoint_id != checkpoint_id {
            tracing::debug!(
                checkpoint_id,
                "ignoring acknowledgement of an aborted checkpoint"
            );
            return false;
        }
        pending.acks.insert(task, states);
        pending.acks.len() == self.expected_tasks
    }

    /// The pending checkpoint if it has run past its timeout.
    pub fn timed_out(&self) -> Option<u64> {
        self.pending
            .as_ref()
            .filter(|p| p.triggered_at.elapsed() > self.config.timeout)
            .map(|p| p.barrier.checkpoint_id)
    }

    /// Abandons the pending checkpoint or savepoint. Its id must be written (a `failed` claim,
    /// [`settle`]) before the next one. A failed checkpoint counts toward the tolerance and
    /// errors once failures exceed it; a failed savepoint never counts (it is the user's
    /// request that failed, not the job's fault tolerance).
    ///
    /// [`settle`]: Self::settle
    pub fn fail_pending(&mut self, reason: &str) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let checkpoint_id = pending.barrier.checkpoint_id;
        self.unsettled = Some((checkpoint_id, reason.to_string()));
        self.record_failed(checkpoint_id, reason);
        if pending.barrier.savepoint.is_some() {
            return Ok(());
        }
        self.count_failure(checkpoint_id, reason)
    }

    /// Failed checkpoints in a row since the last completed one (what `tolerableFailures`
    /// limits).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Counts a failure towards the tolerance (also a failed write of a failed checkpoint's
    /// id).
    pub fn count_failure(&mut self, checkpoint_id: u64, reason: &str) -> Result<()> {
        self.consecutive_failures += 1;
        tracing::warn!(
            checkpoint_id,
            failures = self.consecutive_failures,
            reason,
            "checkpoint failed"
        );
        crate::metrics::global().checkpoints_failed.inc();
        if self.consecutive_failures > self.config.tolerable_failures {
            return Err(Error::CheckpointFailed {
                checkpoint_id,
                reason: format!(
                    "{reason} ({} failures in a row exceed tolerableFailures={})",
                    self.consecutive_failures, self.config.tolerable_failures
                ),
            });
        }
        Ok(())
    }

    fn record_failed(&mut self, checkpoint_id: u64, reason: &str) {
        self.counts.in_progress = 0;
        self.counts.failed += 1;
        self.update_history(checkpoint_id, |e| {
            e.status = OperationStatus::Failed;
            e.failure = Some(reason.to_string());
        });
    }

    /// The failed checkpoint whose id still has to be written before the next trigger.
    pub fn unsettled_id(&self) -> Option<u64> {
        self.unsettled.as_ref().map(|(id, _)| *id)
    }

    /// Writes the `failed` claim of the checkpoint that failed last, so the next one can be
    /// triggered. `Error::Fenced` when another JobManager took the id; a storage error leaves
    /// it to be retried.
    pub async fn settle(&mut self) -> Result<()> {
        let Some((id, reason)) = self.unsettled.clone() else {
            return Ok(());
        };
        let state = self.state_uri.clone();
        if !self
            .write_claim(id, ClaimReason::Failed { reason }, &state)
            .await?
        {
            // Our `_metadata` of a fully acknowledged checkpoint is a complete checkpoint whose
            // sinks were never told: the next completion commits them, and a restore from it
            // publishes them.
            let Some(entry) = self.own_entry(id).await? else {
                return Err(self.fenced(id).await);
            };
            match entry {
                MetadataEntry::Claim(_) => tracing::info!(
                    checkpoint_id = id,
                    "the failed claim was already written by this JobManager"
                ),
                MetadataEntry::Checkpoint(_) => tracing::warn!(
                    checkpoint_id = id,
                    "the checkpoint reported as failed was stored after all (its write's answer was lost); it stands as completed"
                ),
            }
            self.adopt(id, &entry);
            self.unsettled = None;
            return Ok(());
        }
        self.kinds.insert(id, EntryKind::Claim);
        self.unsettled = None;
        self.took(id, state);
        Ok(())
    }

    /// Writes `_metadata` for the fully acknowledged checkpoint, create-only, making it exist.
    /// `Error::Fenced` when another JobManager wrote that id first: the caller must then not
    /// send the completion (no sink commits it). Finding this JobManager's own entry of this
    /// checkpoint there (a retried write whose first answer was lost) is success. On other
    /// errors the checkpoint counts as failed and the caller decides via
    /// [`fail_pending`](Self::fail_pending); [`settle`](Self::settle) then finds a checkpoint
    /// that was stored after all.
    ///
    /// A savepoint's `_metadata` goes into its own directory; its id here gets a `savepoint`
    /// claim, written after it (and before a stop-with-savepoint commits the sinks).
    pub async fn complete(&mut self) -> Result<CompletedCheckpoint> {
        let Some(pending) = self.pending.as_ref() else {
            return Err(Error::CheckpointFailed {
                checkpoint_id: 0,
                reason: "no checkpoint pending".into(),
            });
        };
        let checkpoint_id = pending.barrier.checkpoint_id;
        let mut operators: BTreeMap<String, OperatorSnapshot> = BTreeMap::new();
        for (task, states) in &pending.acks {
            for (operator, state) in states {
                let op = operators
                    .entry(operator.clone())
                    .or_insert_with(|| OperatorSnapshot {
                        subtasks: vec![SubtaskState::default(); self.parallelism as usize],
                    });
                let slot = op.subtasks.get_mut(task.subtask as usize).ok_or_else(|| {
                    Error::CheckpointFailed {
                        checkpoint_id,
                        reason: format!("acknowledgement from unknown subtask {task}"),
                    }
                })?;
                *slot = state.clone();
            }
        }
        let kind = if pending.barrier.savepoint.is_some() {
            SnapshotKind::Savepoint
        } else {
            SnapshotKind::Checkpoint
        };
        let metadata = CheckpointMetadata {
            job_id: self.job_id.clone(),
            checkpoint_id,
            kind,
            timestamp_ms: pending.barrier.timestamp_ms,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            operators,
            job_manager: Some(self.job_manager.clone()),
        };
        let stops_job = pending.barrier.stops_job();
        let savepoint = pending.barrier.savepoint.clone();
        let triggered_at = pending.triggered_at;
        let encoded = bytes::Bytes::from(metadata.encode()?);
        let checkpoint_store = match savepoint {
            Some(savepoint) => {
                let store = savepoint.store.clone();
                store.put(layout::METADATA_OBJECT, encoded).await?;
                let location = store.location().uri();
                // A stop-with-savepoint commits the sinks: from then on the job's state is
                // the savepoint. A plain savepoint is the user's, never a failover target.
                let state = if stops_job {
                    Some(location.clone())
                } else {
                    self.state_uri.clone()
                };
                let mut claimed = self
                    .write_claim(
                        checkpoint_id,
                        ClaimReason::Savepoint {
                            location: location.clone(),
                        },
                        &state,
                    )
                    .await;
                if !matches!(claimed, Ok(true)) {
                    // Taken, or the write's answer was lost (the claim may be stored all the
                    // same): what is stored decides. Deleting `_metadata` under a stored claim
                    // naming it would leave the job's state pointing at nothing.
                    let stored = match self.own_entry(checkpoint_id).await {
                        Ok(Some(MetadataEntry::Claim(IdClaim {
                            reason: ClaimReason::Savepoint { location: claimed },
                            ..
                        }))) => Ok(claimed == location),
                        Ok(_) => Ok(false),
                        Err(e) => Err(e),
                    };
                    claimed = match (claimed, stored) {
                        (_, Ok(true)) => Ok(true),
                        // Unknown either way: report the write's own error.
                        (Err(e), _) => Err(e),
                        (Ok(_), stored) => stored,
                    };
                }
                if !matches!(claimed, Ok(true)) {
                    // Never restore from it: once its id is not claimed as a savepoint, its
                    // pending sink output may be discarded by the next attempt's recovery.
                    if let Err(e) = store.delete(layout::METADATA_OBJECT).await {
                        tracing::warn!(savepoint = %location, error = %e, "could not remove a savepoint that did not complete; do not restore from it");
                    }
                    return Err(match claimed {
                        Err(e) => e,
                        Ok(_) => self.fenced(checkpoint_id).await,
                    });
                }
                self.kinds.insert(checkpoint_id, EntryKind::Claim);
                self.took(checkpoint_id, state);
                store
            }
            None => {
                let store = self.job_store.child(&layout::checkpoint_dir(checkpoint_id));
                if !store
                    .put_if_absent(layout::METADATA_OBJECT, encoded)
                    .await?
                {
                    match self.own_entry(checkpoint_id).await? {
                        Some(MetadataEntry::Checkpoint(_)) => tracing::warn!(
                            checkpoint_id,
                            "_metadata was already stored by this JobManager (a write whose answer was lost); the checkpoint stands as completed"
                        ),
                        _ => return Err(self.fenced(checkpoint_id).await),
                    }
                }
                self.kinds.insert(checkpoint_id, EntryKind::Checkpoint);
                self.took(checkpoint_id, Some(store.location().uri()));
                store
            }
        };
        self.pending = None;
        let completed = CompletedCheckpoint {
            kind,
            stops_job,
            checkpoint_id,
            uri: checkpoint_store.location().uri(),
            state_size: metadata.state_size(),
            checkpointed_size: metadata.checkpointed_size(),
            duration: triggered_at.elapsed(),
            timestamp_ms: metadata.timestamp_ms,
        };
        self.counts.in_progress = 0;
        self.counts.completed += 1;
        self.update_history(checkpoint_id, |e| {
            e.status = OperationStatus::Completed;
            e.complete_time = Some(now_ms() as i64);
            e.duration_ms = Some(completed.duration.as_millis() as u64);
            e.state_size = Some(completed.state_size);
            e.checkpointed_size = Some(completed.checkpointed_size);
            e.external_path = Some(completed.uri.clone());
        });
        if kind == SnapshotKind::Savepoint {
            // Savepoints are not failover targets: they are the user's, and only a
            // stop-with-savepoint commits sinks (the job ends right there).
            return Ok(completed);
        }
        self.became_latest(completed.clone());
        Ok(completed)
    }

    /// What `_metadata` of `id` holds, read once and remembered.
    async fn kind_of(&mut self, id: u64) -> Result<Option<EntryKind>> {
        if let Some(kind) = self.kinds.get(&id) {
            return Ok(Some(*kind));
        }
        let kind = read_entry(&self.job_store, id)
            .await?
            .map(|entry| EntryKind::of(&entry));
        if let Some(kind) = kind {
            self.kinds.insert(id, kind);
        }
        Ok(kind)
    }

    /// Deletes completed checkpoints beyond the newest `retained` and the claims older than
    /// those (except takeover claims, see the module docs: only the files beside them go), and
    /// aborted attempts older than the newest id written. A shared file (incremental
    /// checkpoints) goes with the last retained checkpoint that refers to it: it is deleted
    /// when a checkpoint that referred to it expires and no retained one does.
    pub async fn apply_retention(&mut self) -> Result<()> {
        let all = list_checkpoints(&self.job_store).await?;
        let mut entries = Vec::new();
        for &(id, has_metadata) in &all {
            if has_metadata && let Some(kind) = self.kind_of(id).await? {
                entries.push((id, kind));
            }
        }
        let completed: Vec<u64> = entries
            .iter()
            .filter(|(_, kind)| *kind == EntryKind::Checkpoint)
            .map(|(id, _)| *id)
            .collect();
        let keep_from = completed
            .len()
            .checked_sub(self.config.retained as usize)
            .map_or(0, |i| completed[i]);
        let newest = all
            .iter()
            .filter(|(_, has_metadata)| *has_metadata)
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(0);
        let expired: Vec<(u64, Option<EntryKind>)> = all
            .iter()
            .filter_map(|&(id, has_metadata)| {
                let kind = entries.iter().find(|(e, _)| *e == id).map(|(_, k)| *k);
                match (has_metadata, kind) {
                    (true, Some(_)) if id < keep_from => Some((id, kind)),
                    (false, _) if id < newest => Some((id, None)),
                    _ => None,
                }
            })
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        // Every retained checkpoint's references, read first: if one cannot be read, nothing
        // is deleted this time (a shared file still in use must never go).
        let mut referenced = std::collections::BTreeSet::new();
        for &id in completed.iter().filter(|&&id| id >= keep_from) {
            let metadata = self.read_metadata(id).await?;
            referenced.extend(metadata.shared_objects().map(str::to_string));
        }
        let metadata_object = layout::METADATA_OBJECT;
        for (id, kind) in expired {
            let dir = layout::checkpoint_dir(id);
            match kind {
                Some(EntryKind::Checkpoint) => {
                    tracing::debug!(checkpoint_id = id, "removing expired checkpoint");
                    let unreferenced: Vec<String> = match self.read_metadata(id).await {
                        Ok(metadata) => metadata
                            .shared_objects()
                            .filter(|object| !referenced.contains(*object))
                            .map(str::to_string)
                            .collect(),
                        Err(e) => {
                            tracing::warn!(checkpoint_id = id, error = %e, "cannot read an expired checkpoint's metadata; its shared files stay");
                            Vec::new()
                        }
                    };
                    // `_metadata` first: from then on the checkpoint no longer exists, so
                    // nothing can restore from it while its files go.
                    self.job_store
                        .delete(&format!("{dir}/{metadata_object}"))
                        .await?;
                    for object in unreferenced {
                        self.job_store.delete(&object).await?;
                        crate::fault_points::hit(
                            crate::fault_points::FaultPoint::RetentionDeletedSharedFile,
                        );
                    }
                    self.job_store.delete_prefix(&format!("{dir}/")).await?;
                    self.kinds.remove(&id);
                }
                Some(EntryKind::Takeover) => {
                    // The claim stays (it fences the JobManager it replaced); state files an
                    // attempt left beside it go.
                    let keep = format!("{dir}/{metadata_object}");
                    for object in self.job_store.list(&format!("{dir}/")).await? {
                        if object.key != keep {
                            self.job_store.delete(&object.key).await?;
                        }
                    }
                }
                Some(EntryKind::Claim) | None => {
                    self.job_store.delete_prefix(&format!("{dir}/")).await?;
                    self.kinds.remove(&id);
                }
            }
        }
        Ok(())
    }

    /// Deletes the files under `shared/` that no completed checkpoint refers to and that
    /// attempts before `claimed` (this attempt's claim) stored: stored by checkpoints that
    /// then failed, or by attempts that ended before their checkpoint completed. Files of
    /// attempts with higher claims are never touched: they may be a newer JobManager's, in
    /// flight. Only between attempts. Returns how many it deleted.
    pub async fn remove_orphaned_shared_files(&mut self, claimed: u64) -> Result<usize> {
        let shared = self
            .job_store
            .list(&format!("{}/", layout::SHARED_FOLDER))
            .await?;
        if shared.is_empty() {
            return Ok(0);
        }
        let mut referenced = std::collections::BTreeSet::new();
        for (id, has_metadata) in list_checkpoints(&self.job_store).await? {
            if has_metadata && self.kind_of(id).await? == Some(EntryKind::Checkpoint) {
                let metadata = self.read_metadata(id).await?;
                referenced.extend(metadata.shared_objects().map(str::to_string));
            }
        }
        let mut removed = 0;
        for object in shared {
            if referenced.contains(&object.key) {
                continue;
            }
            // `shared/<backend id>/<file>`; the backend id ends with its attempt id.
            let owner = object
                .key
                .split('/')
                .nth(1)
                .and_then(super::claim_in_name)
                .unwrap_or(0);
            if owner < claimed {
                self.job_store.delete(&object.key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn read_metadata(&self, checkpoint_id: u64) -> Result<CheckpointMetadata> {
        let store = self.job_store.child(&layout::checkpoint_dir(checkpoint_id));
        Ok(super::RestorePoint::open(store).await?.metadata)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;

    const TASK: TaskId = TaskId {
        vertex: 0,
        subtask: 0,
    };

    struct Storage {
        rt: tokio::runtime::Runtime,
        job: ObjectStore,
        _dir: tempfile::TempDir,
    }

    impl Storage {
        fn new() -> Storage {
            let dir = tempfile::tempdir().expect("tempdir");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let job = rt
                .block_on(ObjectStore::open(
                    &Location::Local(dir.path().join("job")),
                    &Default::default(),
                ))
                .expect("store");
            Storage { rt, job, _dir: dir }
        }

        fn job_manager(&self, name: &str, retained: u32) -> CheckpointCoordinator {
            self.job_manager_tolerating(name, retained, 10)
        }

        fn job_manager_tolerating(
            &self,
            name: &str,
            retained: u32,
            tolerable_failures: u32,
        ) -> CheckpointCoordinator {
            let config = CheckpointConfig {
                interval: Duration::from_secs(1),
                mode: Default::default(),
                storage: self.job.location().uri(),
                retained,
                timeout: Duration::from_secs(60),
                tolerable_failures,
                savepoint_directories: Vec::new(),
            };
            let mut coordinator =
                CheckpointCoordinator::new(self.job.clone(), config, "job", name, 1, 128);
            coordinator.start_attempt(1);
            coordinator
        }

        /// Surveys storage and claims the next id, as a starting JobManager does.
        fn take_over(&self, coordinator: &mut CheckpointCoordinator) -> u64 {
            let survey = self.rt.block_on(coordinator.survey()).expect("survey");
            let state = survey.latest.as_ref().map(RestorePoint::uri);
            assert!(
                self.rt
                    .block_on(coordinator.claim_takeover(survey.next_id, state))
                    .expect("claim"),
                "nobody wrote {} in between",
                survey.next_id
            );
            survey.next_id
        }

        /// Triggers a checkpoint and acknowledges it from the one task: ready to complete.
        fn acknowledged(&self, coordinator: &mut CheckpointCoordinator) -> u64 {
            let barrier = coordinator.trigger().expect("trigger");
            assert!(coordinator.acknowledge(barrier.checkpoint_id, TASK, Vec::new()));
            barrier.checkpoint_id
        }

        /// The store of a savepoint directory `dir` beside the job's folder.
        fn savepoint_store(&self, dir: &str) -> ObjectStore {
            self.rt
                .block_on(ObjectStore::open(
                    &Location::Local(self._dir.path().join(dir)),
                    &Default::default(),
                ))
                .expect("savepoint store")
        }

        /// Triggers a savepoint into `dir` (beside the job's folder); nothing acknowledges it.
        fn savepoint(&self, coordinator: &mut CheckpointCoordinator, dir: &str) -> u64 {
            let store = self.savepoint_store(dir);
            coordinator
                .trigger_savepoint(SavepointTarget { store, stop: false })
                .expect("trigger savepoint")
                .checkpoint_id
        }

        fn complete(&self, coordinator: &mut CheckpointCoordinator) -> Result<CompletedCheckpoint> {
            self.rt.block_on(coordinator.complete())
        }

        fn entry(&self, id: u64) -> Option<MetadataEntry> {
            self.rt
                .block_on(read_entry(&self.job, id))
                .expect("read _metadata")
        }

        /// Ids with `_metadata`, oldest first.
        fn ids(&self) -> Vec<u64> {
            self.rt
                .block_on(list_checkpoints(&self.job))
                .expect("list")
                .into_iter()
                .filter(|(_, has_metadata)| *has_metadata)
                .map(|(id, _)| id)
                .collect()
        }

        /// Stores the `_metadata` that `job_manager` completing the checkpoint pending in
        /// `coordinator` writes (one task, no state), as its own write would.
        fn store_completion(
            &self,
            coordinator: &CheckpointCoordinator,
            job_manager: &str,
        ) -> bytes::Bytes {
            let barrier = coordinator.pending_barrier().expect("pending");
            let metadata = CheckpointMetadata {
                job_id: "job".into(),
                checkpoint_id: barrier.checkpoint_id,
                kind: SnapshotKind::Checkpoint,
                timestamp_ms: barrier.timestamp_ms,
                parallelism: 1,
                max_parallelism: 128,
                operators: BTreeMap::new(),
                job_manager: Some(job_manager.into()),
            };
            let encoded = bytes::Bytes::from(metadata.encode().expect("encode"));
            let stored = self
                .rt
                .block_on(
                    self.job
                        .child(&layout::checkpoint_dir(barrier.checkpoint_id))
                        .put_if_absent(layout::METADATA_OBJECT, encoded.clone()),
                )
                .expect("put");
            assert!(stored, "the id was free");
            encoded
        }

        fn metadata_bytes(&self, id: u64) -> bytes::Bytes {
            self.rt
                .block_on(
                    self.job
                        .child(&layout::checkpoint_dir(id))
                        .get(layout::METADATA_OBJECT),
                )
                .expect("get _metadata")
        }

        fn latest(&self) -> Option<u64> {
            self.rt
                .block_on(RestorePoint::latest(&self.job))
                .expect("latest")
                .map(|p| p.metadata.checkpoint_id)
        }
    }

    fn fenced_at(result: Result<impl std::fmt::Debug>) -> u64 {
        match result {
            Err(Error::Fenced { checkpoint_id, .. }) => checkpoint_id,
            other => panic!("expected fenced, got {other:?}"),
        }
    }

    #[test]
    fn a_job_manager_taken_over_mid_checkpoint_cannot_complete_it() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        assert_eq!(s.take_over(&mut a), 1);
        let done = s.acknowledged(&mut a);
        s.complete(&mut a).expect("a completes 2");
        assert_eq!(done, 2);
        // A triggers 3 and every task acknowledges; A stalls before writing `_metadata`.
        assert_eq!(s.acknowledged(&mut a), 3);

        // B starts: restores A's checkpoint 2 and claims 3.
        let mut b = s.job_manager("jm-b", 3);
        assert_eq!(s.take_over(&mut b), 3);
        assert_eq!(
            b.state_uri(),
            Some(s.job.child("chk-2").location().uri().as_str())
        );

        // A resumes: its completion of 3 loses, and so would anything else it writes.
        let error = s.complete(&mut a).expect_err("fenced");
        assert!(
            error
                .to_string()
                .starts_with("fenced: another JobManager claimed (takeover, JobManager jm-b) checkpoint id 3 first"),
            "{error}"
        );
        assert_eq!(fenced_at(s.rt.block_on(a.claim_restart())), 3);
        // B goes on.
        assert_eq!(s.acknowledged(&mut b), 4);
        let completed = s.complete(&mut b).expect("b completes 4");
        assert_eq!(completed.checkpoint_id, 4);
        assert_eq!(s.latest(), Some(4));
        assert!(matches!(s.entry(3), Some(MetadataEntry::Claim(c)) if c.job_manager == "jm-b"));
    }

    #[test]
    fn an_old_job_manager_that_completes_first_is_where_the_new_one_restores() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        s.acknowledged(&mut a);
        s.complete(&mut a).expect("a completes 2");
        // B surveys after A's write: it restores 2 and claims 3.
        let mut b = s.job_manager("jm-b", 3);
        assert_eq!(s.take_over(&mut b), 3);
        // A's next checkpoint would be 3: taken.
        s.acknowledged(&mut a);
        assert_eq!(fenced_at(s.complete(&mut a)), 3);
    }

    #[test]
    fn a_takeover_claim_that_loses_the_race_surveys_again() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        s.acknowledged(&mut a);
        let mut b = s.job_manager("jm-b", 3);
        let survey = s.rt.block_on(b.survey()).expect("survey");
        assert_eq!(survey.next_id, 2);
        // A completes 2 between B's survey and B's claim.
        s.complete(&mut a).expect("a completes 2");
        assert!(!s.rt.block_on(b.claim_takeover(2, None)).expect("claim"));
        assert_eq!(s.take_over(&mut b), 3);
        assert_eq!(
            b.state_uri(),
            Some(s.job.child("chk-2").location().uri().as_str())
        );
    }

    #[test]
    fn failed_checkpoints_take_their_ids_so_a_later_one_cannot_slip_past_a_takeover() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        let failed = s.acknowledged(&mut a);
        a.fail_pending("timed out").expect("tolerated");
        assert!(
            a.trigger().is_none(),
            "nothing new before the failed id is written"
        );
        s.rt.block_on(a.settle()).expect("settle");
        assert!(matches!(
            s.entry(failed),
            Some(MetadataEntry::Claim(IdClaim {
                reason: ClaimReason::Failed { .. },
                ..
            }))
        ));
        let pending = s.acknowledged(&mut a);
        assert_eq!(pending, failed + 1);
        // B claims exactly the id A has in flight.
        let mut b = s.job_manager("jm-b", 3);
        assert_eq!(s.take_over(&mut b), pending);
        assert_eq!(fenced_at(s.complete(&mut a)), pending);
        assert_eq!(s.latest(), None, "no checkpoint ever completed");
    }

    #[test]
    fn a_claim_that_lands_in_a_hole_left_by_retention_is_fenced() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 1);
        s.take_over(&mut a);
        for _ in 0..4 {
            s.acknowledged(&mut a);
            s.complete(&mut a).expect("complete");
            s.rt.block_on(a.apply_retention()).expect("retention");
        }
        // chk-2..chk-4 expired; the takeover claim 1 stays.
        assert!(s.entry(1).is_some() && s.entry(3).is_none() && s.entry(5).is_some());
        // A JobManager that surveyed long ago claims 3 only now.
        let mut stale = s.job_manager("jm-stale", 1);
        assert_eq!(fenced_at(s.rt.block_on(stale.claim_takeover(3, None))), 5);
    }

    #[test]
    fn retention_keeps_takeover_claims_and_drops_other_expired_ids() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 2);
        s.take_over(&mut a); // 1: takeover
        s.acknowledged(&mut a);
        s.complete(&mut a).expect("2"); // 2: checkpoint
        s.acknowledged(&mut a);
        a.fail_pending("declined").expect("tolerated");
        s.rt.block_on(a.settle()).expect("3: failed claim");
        let mut b = s.job_manager("jm-b", 2);
        assert_eq!(s.take_over(&mut b), 4);
        // A leftover state file of the attempt that never completed, beside B's claim.
        s.rt.block_on(
            s.job
                .put("chk-4/op-0.state", bytes::Bytes::from_static(b"x")),
        )
        .expect("put");
        for _ in 0..3 {
            s.acknowledged(&mut b);
            s.complete(&mut b).expect("complete");
        }
        s.rt.block_on(b.apply_retention()).expect("retention");
        let ids: Vec<u64> =
            s.rt.block_on(list_checkpoints(&s.job))
                .expect("list")
                .into_iter()
                .map(|(id, _)| id)
                .collect();
        assert_eq!(ids, vec![1, 4, 6, 7], "takeovers stay, 2, 3 and 5 expired");
        let left = s.rt.block_on(s.job.list("chk-4/")).expect("list chk-4");
        assert_eq!(left.len(), 1, "only the claim stays: {left:?}");
        assert_eq!(s.latest(), Some(7));
    }

    #[test]
    fn a_restore_path_naming_a_claim_restores_the_state_it_names() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        s.acknowledged(&mut a);
        s.complete(&mut a).expect("2");
        s.rt.block_on(a.claim_restart()).expect("3: restart");
        let resolved =
            s.rt.block_on(RestorePoint::resolve(s.job.child("chk-3")))
                .expect("resolve")
                .expect("state");
        assert_eq!(resolved.metadata.checkpoint_id, 2);
        assert_eq!(s.latest(), Some(2));
        let empty =
            s.rt.block_on(RestorePoint::resolve(s.job.child("chk-1")))
                .expect("resolve");
        assert!(empty.is_none(), "the first takeover started empty");
        let strict = s.rt.block_on(RestorePoint::open(s.job.child("chk-3")));
        assert!(strict.is_err(), "a claim is never opened as a checkpoint");
    }

    #[test]
    fn a_failed_savepoint_does_not_count_toward_tolerable_failures() {
        let s = Storage::new();
        let mut a = s.job_manager_tolerating("jm-a", 3, 0);
        s.take_over(&mut a);
        for round in 0..3 {
            let id = s.savepoint(&mut a, &format!("sp-{round}"));
            a.fail_pending("vertex 1 subtask 0 declined: S3 PutObject failed")
                .expect("a failed savepoint never fails the job");
            assert_eq!(a.consecutive_failures(), 0);
            // Its id is still written in order, as a failed claim.
            s.rt.block_on(a.settle()).expect("settle");
            assert!(matches!(
                s.entry(id),
                Some(MetadataEntry::Claim(IdClaim {
                    reason: ClaimReason::Failed { .. },
                    ..
                }))
            ));
        }
        assert_eq!(a.counts().failed, 3, "each failure shows in the history");
        // Checkpoints go on after the failed savepoints.
        s.acknowledged(&mut a);
        let completed = s
            .complete(&mut a)
            .expect("a checkpoint after failed savepoints");
        assert_eq!(s.latest(), Some(completed.checkpoint_id));
    }

    #[test]
    fn a_failed_periodic_checkpoint_still_counts_toward_tolerable_failures() {
        let s = Storage::new();
        let mut a = s.job_manager_tolerating("jm-a", 3, 1);
        s.take_over(&mut a);
        s.acknowledged(&mut a);
        a.fail_pending("timed out").expect("1 failure is tolerated");
        s.rt.block_on(a.settle()).expect("settle");
        // A savepoint failing in between neither counts nor resets the count.
        s.savepoint(&mut a, "sp");
        a.fail_pending("declined").expect("savepoints never count");
        s.rt.block_on(a.settle()).expect("settle");
        assert_eq!(a.consecutive_failures(), 1);
        s.acknowledged(&mut a);
        let error = a
            .fail_pending("timed out")
            .expect_err("2 failures exceed 1");
        assert!(
            error
                .to_string()
                .contains("2 failures in a row exceed tolerableFailures=1"),
            "{error}"
        );
    }

    fn task(vertex: u32) -> TaskId {
        TaskId { vertex, subtask: 0 }
    }

    #[test]
    fn a_checkpoint_completes_only_once_every_task_acknowledged() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        a.start_attempt(3);
        let id = a.trigger().expect("trigger").checkpoint_id;
        assert!(!a.acknowledge(id, task(0), Vec::new()));
        assert!(!a.acknowledge(id, task(1), Vec::new()));
        assert!(
            !a.acknowledge(id, task(1), Vec::new()),
            "a repeated acknowledgement is not a third task"
        );
        assert!(
            !a.acknowledge(id - 1, task(2), Vec::new()),
            "an acknowledgement of another checkpoint does not count"
        );
        assert_eq!(s.entry(id), None, "acknowledging writes nothing");
        assert_eq!(a.pending_id(), Some(id));
        assert!(a.acknowledge(id, task(2), Vec::new()), "the last task");
        let completed = s.complete(&mut a).expect("complete");
        assert_eq!(completed.checkpoint_id, id);
        assert!(!a.is_pending());
        assert_eq!(s.latest(), Some(id));
    }

    #[test]
    fn a_declined_checkpoint_writes_no_metadata_and_counts_a_failure() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        a.start_attempt(2);
        let id = a.trigger().expect("trigger").checkpoint_id;
        assert!(!a.acknowledge(id, task(0), Vec::new()));
        a.fail_pending("vertex 1 subtask 0 declined")
            .expect("one failure is tolerated");
        assert_eq!(s.entry(id), None, "no _metadata for a declined checkpoint");
        assert!(!a.is_pending());
        assert_eq!(a.consecutive_failures(), 1);
        let counts = a.counts();
        assert_eq!(
            (counts.failed, counts.completed, counts.in_progress),
            (1, 0, 0)
        );
        let history = a.history();
        assert_eq!(history[0].id, id);
        assert_eq!(history[0].status, OperationStatus::Failed);
        assert_eq!(
            history[0].failure.as_deref(),
            Some("vertex 1 subtask 0 declined")
        );
        // The other task's acknowledgement arrives late: nothing to complete.
        assert!(!a.acknowledge(id, task(1), Vec::new()));
        assert!(s.complete(&mut a).is_err(), "nothing is pending");
        // Its id is written as a failed claim, never as a checkpoint.
        assert_eq!(a.unsettled_id(), Some(id));
        s.rt.block_on(a.settle()).expect("settle");
        assert!(matches!(
            s.entry(id),
            Some(MetadataEntry::Claim(IdClaim {
                reason: ClaimReason::Failed { reason },
                ..
            })) if reason == "vertex 1 subtask 0 declined"
        ));
        assert_eq!(s.latest(), None);
        assert_eq!(a.state_uri(), None, "the state is still the empty start");
    }

    #[test]
    fn a_pending_checkpoint_times_out_after_the_configured_timeout() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        a.config.timeout = Duration::from_millis(200);
        s.take_over(&mut a);
        let id = a.trigger().expect("trigger").checkpoint_id;
        assert_eq!(a.timed_out(), None, "just triggered");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(a.timed_out(), Some(id));
        // What the JobManager does with it: the checkpoint fails like a declined one.
        a.fail_pending(&format!("checkpoint {id} timed out"))
            .expect("tolerated");
        assert_eq!(a.timed_out(), None, "nothing pending any more");
        assert_eq!(a.consecutive_failures(), 1);
        assert_eq!(s.entry(id), None);
        s.rt.block_on(a.settle()).expect("settle");
        // The next one, completed in time, resets the count.
        let next = s.acknowledged(&mut a);
        assert_eq!(next, id + 1);
        assert_eq!(a.timed_out(), None);
        s.complete(&mut a).expect("complete");
        assert_eq!(a.consecutive_failures(), 0);
        assert_eq!(a.timed_out(), None);
    }

    #[test]
    fn retention_keeps_exactly_the_newest_retained_checkpoints() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        assert_eq!(s.take_over(&mut a), 1);
        let mut completed = Vec::new();
        for _ in 0..7 {
            s.acknowledged(&mut a);
            completed.push(s.complete(&mut a).expect("complete").checkpoint_id);
            s.rt.block_on(a.apply_retention()).expect("retention");
            let newest = *completed.last().expect("one");
            assert_eq!(s.latest(), Some(newest), "the newest is never deleted");
            let kept = completed.len().min(3);
            assert_eq!(s.ids()[1..], completed[completed.len() - kept..]);
        }
        assert_eq!(completed, vec![2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            s.ids(),
            vec![1, 6, 7, 8],
            "the takeover claim and 3 checkpoints"
        );
        for id in [6, 7, 8] {
            assert!(matches!(s.entry(id), Some(MetadataEntry::Checkpoint(_))));
        }
        let dirs: Vec<u64> =
            s.rt.block_on(list_checkpoints(&s.job))
                .expect("list")
                .into_iter()
                .map(|(id, _)| id)
                .collect();
        assert_eq!(
            dirs,
            vec![1, 6, 7, 8],
            "expired directories are gone entirely"
        );
    }

    #[test]
    fn a_savepoint_requested_during_a_checkpoint_waits_for_it_then_lands_in_its_directory() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        let checkpoint = a.trigger().expect("trigger").checkpoint_id;
        let target = SavepointTarget {
            store: s.savepoint_store("sp"),
            stop: false,
        };
        assert!(
            a.trigger_savepoint(target.clone()).is_none(),
            "one in flight at a time: the caller retries"
        );
        assert_eq!(
            a.pending_id(),
            Some(checkpoint),
            "the checkpoint is untouched"
        );
        assert!(a.acknowledge(checkpoint, TASK, Vec::new()));
        let done = s.complete(&mut a).expect("the checkpoint completes");
        assert_eq!(
            (done.kind, done.checkpoint_id),
            (SnapshotKind::Checkpoint, checkpoint)
        );

        let savepoint = a
            .trigger_savepoint(target)
            .expect("the retry after the checkpoint")
            .checkpoint_id;
        assert_eq!(savepoint, checkpoint + 1);
        assert!(a.acknowledge(savepoint, TASK, Vec::new()));
        let done = s.complete(&mut a).expect("the savepoint completes");
        let location = s.savepoint_store("sp").location().uri();
        assert_eq!(done.kind, SnapshotKind::Savepoint);
        assert_eq!(done.uri, location);
        let stored =
            s.rt.block_on(RestorePoint::open(s.savepoint_store("sp")))
                .expect("the savepoint's _metadata is in its directory");
        assert_eq!(stored.metadata.checkpoint_id, savepoint);
        assert_eq!(stored.metadata.kind, SnapshotKind::Savepoint);
        assert!(matches!(
            s.entry(savepoint),
            Some(MetadataEntry::Claim(IdClaim {
                reason: ClaimReason::Savepoint { location: at },
                ..
            })) if at == location
        ));
        // A savepoint is the user's: failover still goes to the checkpoint.
        assert_eq!(s.latest(), Some(checkpoint));
        assert_eq!(
            a.latest_completed().map(|c| c.checkpoint_id),
            Some(checkpoint)
        );
        let chk = s
            .job
            .child(&layout::checkpoint_dir(checkpoint))
            .location()
            .uri();
        assert_eq!(a.state_uri(), Some(chk.as_str()));
        assert_eq!(a.counts().completed, 2);
        assert_eq!(s.acknowledged(&mut a), savepoint + 1);
        s.complete(&mut a).expect("checkpoints go on");
    }

    #[test]
    fn a_savepoint_requested_during_a_checkpoint_that_fails_waits_for_its_failed_claim() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        let checkpoint = a.trigger().expect("trigger").checkpoint_id;
        let target = SavepointTarget {
            store: s.savepoint_store("sp"),
            stop: false,
        };
        assert!(a.trigger_savepoint(target.clone()).is_none());
        a.fail_pending("declined").expect("tolerated");
        assert!(
            a.trigger_savepoint(target.clone()).is_none(),
            "not before the failed id is written"
        );
        s.rt.block_on(a.settle()).expect("settle");
        let savepoint = a.trigger_savepoint(target).expect("now").checkpoint_id;
        assert_eq!(savepoint, checkpoint + 1);
        assert!(a.acknowledge(savepoint, TASK, Vec::new()));
        let done = s.complete(&mut a).expect("the savepoint completes");
        assert_eq!(done.uri, s.savepoint_store("sp").location().uri());
        assert_eq!(
            a.consecutive_failures(),
            1,
            "a savepoint does not reset the count"
        );
        assert_eq!(s.latest(), None);
    }

    #[test]
    fn a_completion_whose_write_was_stored_but_answered_with_an_error_is_ours_on_retry() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        let id = s.acknowledged(&mut a);
        // The store kept A's `_metadata` but the answer was lost; the S3 client's retry of
        // the create-only write then finds the object (412): the id is taken, by A itself.
        let written = s.store_completion(&a, "jm-a");
        let completed = s.complete(&mut a).expect("A's own checkpoint, not a fence");
        assert_eq!(completed.checkpoint_id, id);
        assert_eq!(s.metadata_bytes(id), written, "one entry, the one A stored");
        let chk = s.job.child(&layout::checkpoint_dir(id)).location().uri();
        assert_eq!(a.state_uri(), Some(chk.as_str()));
        assert_eq!(s.latest(), Some(id));
        assert_eq!(s.acknowledged(&mut a), id + 1, "the next id follows");
        s.complete(&mut a).expect("complete the next");
    }

    #[test]
    fn a_completion_whose_write_failed_after_storing_stands_when_its_id_is_settled() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        let id = s.acknowledged(&mut a);
        // The write stored `_metadata` and then answered with an error: the JobManager fails
        // the checkpoint, and settling its id finds A's own checkpoint there.
        let written = s.store_completion(&a, "jm-a");
        a.fail_pending("writing _metadata failed: connection reset")
            .expect("tolerated");
        s.rt.block_on(a.settle())
            .expect("A's own checkpoint, not a fence");
        assert_eq!(
            s.metadata_bytes(id),
            written,
            "not overwritten by a failed claim"
        );
        let chk = s.job.child(&layout::checkpoint_dir(id)).location().uri();
        assert_eq!(a.state_uri(), Some(chk.as_str()));
        assert_eq!(s.latest(), Some(id));
        // What REST and metrics report agrees with storage: completed, not failed.
        assert_eq!(
            a.latest_completed()
                .map(|c| (c.checkpoint_id, c.uri.as_str())),
            Some((id, chk.as_str()))
        );
        let counts = a.counts();
        assert_eq!((counts.completed, counts.failed), (1, 0), "{counts:?}");
        assert_eq!(a.consecutive_failures(), 0);
        let entry = a
            .history()
            .into_iter()
            .find(|e| e.id == id)
            .expect("in history");
        assert_eq!(entry.status, OperationStatus::Completed, "{entry:?}");
        assert_eq!(entry.failure, None);
        assert_eq!(s.acknowledged(&mut a), id + 1);
    }

    #[test]
    fn a_restart_after_a_completion_that_failed_after_storing_restores_it() {
        let s = Storage::new();
        let mut a = s.job_manager_tolerating("jm-a", 3, 0);
        s.take_over(&mut a);
        let id = s.acknowledged(&mut a);
        let written = s.store_completion(&a, "jm-a");
        a.fail_pending("writing _metadata failed: connection reset")
            .expect_err("no failure tolerated: the attempt fails before settling");
        let claimed = s.rt.block_on(a.claim_restart()).expect("not fenced");
        assert_eq!(
            claimed,
            id + 1,
            "the restart claims the id after A's checkpoint"
        );
        assert_eq!(s.metadata_bytes(id), written);
        let chk = s.job.child(&layout::checkpoint_dir(id)).location().uri();
        assert_eq!(a.state_uri(), Some(chk.as_str()), "the restart restores it");
        assert_eq!(a.latest_completed().map(|c| c.checkpoint_id), Some(id));
        assert_eq!(a.counts().failed, 0, "{:?}", a.counts());
        assert!(matches!(
            s.entry(claimed),
            Some(MetadataEntry::Claim(IdClaim {
                reason: ClaimReason::Restart,
                restore_from: Some(from),
                ..
            })) if from == chk
        ));
    }

    #[test]
    fn a_checkpoint_another_job_manager_stored_at_our_id_still_fences() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        let id = s.acknowledged(&mut a);
        let written = s.store_completion(&a, "jm-b");
        assert_eq!(fenced_at(s.complete(&mut a)), id);
        assert_eq!(s.metadata_bytes(id), written);
    }

    #[test]
    fn a_savepoint_claim_stored_but_answered_with_an_error_is_ours_on_retry() {
        let s = Storage::new();
        let mut a = s.job_manager("jm-a", 3);
        s.take_over(&mut a);
        let id = s.savepoint(&mut a, "sp");
        assert!(a.acknowledge(id, TASK, Vec::new()));
        // The savepoint claim A writes after the savepoint's `_metadata`, already stored by a
        // first try whose answer was lost.
        let location = s.savepoint_store("sp").location().uri();
        let claim = IdClaim {
            job_id: "job".into(),
            checkpoint_id: id,
            job_manager: "jm-a".into(),
            reason: ClaimReason::Savepoint {
                location: location.clone(),
            },
            timestamp_ms: now_ms(),
            restore_from: None,
        };
        s.rt.block_on(s.job.child(&layout::checkpoint_dir(id)).put_if_absent(
            layout::METADATA_OBJECT,
            claim.encode().expect("encode").into(),
        ))
        .expect("put");
        let done = s.complete(&mut a).expect("A's own claim, not a fence");
        assert_eq!(
            (done.kind, done.uri.as_str()),
            (SnapshotKind::Savepoint, location.as_str())
        );
        let stored =
            s.rt.block_on(RestorePoint::open(s.savepoint_store("sp")))
                .expect("the savepoint stays");
        assert_eq!(stored.metadata.checkpoint_id, id);
        assert_eq!(s.entry(id), Some(MetadataEntry::Claim(claim)));
        assert_eq!(s.acknowledged(&mut a), id + 1);
    }
}
