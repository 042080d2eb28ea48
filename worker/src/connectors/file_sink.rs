//! Exactly-once file sink (local folder or S3 prefix) by two-phase commit.
//!
//! - write: records go to an in-progress file in the task's local scratch space;
//! - pre-commit (at the barrier): the in-progress file is uploaded to
//!   `_pending/<part>` (durable, invisible) and recorded in the checkpoint;
//! - commit (checkpoint complete): `_pending/<part>` is renamed to `<part>`;
//! - recover (before a restored job starts): pending parts of the restored checkpoint are
//!   committed (idempotently: a part already published counts as done), and every other
//!   pending part of a checkpoint id up to the attempt's claim, from checkpoints that never
//!   completed, is deleted. Parts of higher ids are left alone: they may be a newer
//!   JobManager's, in flight (`checkpoint::coordinator`), when an old one recovers late.
//!
//! Readers consider only files whose path has no component starting with `_` or `.`.
//! Part names carry subtask, attempt id and checkpoint id, so no two writers ever collide.

use std::collections::HashSet;
use std::io::Write;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::api::{RecoverContext, SinkContext, SinkFactory, SinkWriter};
use crate::error::{Error, Result};
use crate::fault_points::{self, FaultPoint};
use crate::storage::{Location, ObjectStore, StorageError};

pub const PENDING_DIR: &str = "_pending";

pub struct FileSink<T> {
    uri: String,
    _t: PhantomData<fn(T)>,
}

impl<T> FileSink<T> {
    /// Writes each record as one JSON line.
    pub fn json_lines(uri: impl Into<String>) -> Self {
        FileSink {
            uri: uri.into(),
            _t: PhantomData,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingPart {
    checkpoint_id: u64,
    name: String,
}

fn pending_key(name: &str) -> String {
    format!("{PENDING_DIR}/{name}")
}

/// The checkpoint id in a part name `part-<subtask>-<attempt>-<checkpoint>-<n>.jsonl`.
fn part_checkpoint_id(name: &str) -> Option<u64> {
    name.strip_suffix(".jsonl")?
        .rsplit('-')
        .nth(1)?
        .parse()
        .ok()
}

/// Publishes one pending part; a part that is already published counts as done.
async fn publish(store: &ObjectStore, name: &str) -> Result<()> {
    match store.rename(&pending_key(name), name).await {
        Ok(()) => {}
        Err(StorageError::NotFound { .. }) => {
            if store.head(name).await?.is_none() {
                return Err(Error::CorruptCheckpoint {
                    object: store.uri(&pending_key(name)),
                    reason: "pending output of a completed checkpoint is missing; its records would be lost".into(),
                });
            }
        }
        Err(e) => return Err(e.into()),
    }
    crate::metrics::global().committed_files.inc();
    Ok(())
}

impl<T: Serialize + Send + 'static> SinkFactory<T> for FileSink<T> {
    fn create_writer(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>> {
        let store = ctx
            .rt
            .block_on(ObjectStore::open(&Location::parse(&self.uri)?, &ctx.doc.s3))?;
        std::fs::create_dir_all(&ctx.local_dir)
            .map_err(|e| Error::io(ctx.local_dir.display(), e))?;
        Ok(Box::new(FileSinkWriter {
            store,
            rt: ctx.rt.clone(),
            local_dir: ctx.local_dir.clone(),
            subtask: ctx.subtask,
            attempt_id: ctx.attempt_id.clone(),
            in_progress: None,
            pending: Vec::new(),
            part_counter: 0,
            line: Vec::with_capacity(256),
            _t: PhantomData,
        }))
    }

    fn recover(&self, pending: Vec<serde_json::Value>, ctx: &RecoverContext) -> Result<()> {
        let rt = &ctx.rt;
        let store = rt.block_on(ObjectStore::open(&Location::parse(&self.uri)?, &ctx.doc.s3))?;
        let parts: Vec<PendingPart> = pending
            .into_iter()
            .map(serde_json::from_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::codec(format!("pending parts of sink {}", self.uri), e))?;
        rt.block_on(async {
            for part in &parts {
                publish(&store, &part.name).await?;
            }
            let keep: HashSet<String> = parts.iter().map(|p| pending_key(&p.name)).collect();
            let ours = |key: &str| match (ctx.claimed, part_checkpoint_id(key)) {
                (Some(claimed), Some(id)) => id <= claimed,
                _ => true,
            };
            for stale in store.list(&format!("{PENDING_DIR}/")).await? {
                if !keep.contains(&stale.key) && ours(&stale.key) {
                    tracing::info!(part = %store.uri(&stale.key), "discarding output of a checkpoint that never completed");
                    store.delete(&stale.key).await?;
                }
            }
            Ok::<_, Error>(())
        })?;
        if !parts.is_empty() {
            tracing::info!(parts = parts.len(), sink = %self.uri, "committed pending output of the restored checkpoint");
        }
        Ok(())
    }
}

struct InProgress {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    bytes: u64,
}

struct FileSinkWriter<T> {
    store: ObjectStore,
    rt: tokio::runtime::Handle,
    local_dir: PathBuf,
    subtask: u32,
    attempt_id: String,
    in_progress: Option<InProgress>,
    pending: Vec<PendingPart>,
    part_counter: u64,
    line: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

impl<T> FileSinkWriter<T> {
    fn part_name(&mut self, checkpoint_id: u64) -> String {
        self.part_counter += 1;
        format!(
            "part-{:04}-{}-{checkpoint_id:010}-{}.jsonl",
            self.subtask, self.attempt_id, self.part_counter
        )
    }

    /// Closes the in-progress file and uploads it to `key`. `None` if nothing was written.
    fn seal(&mut self, key: &str) -> Result<bool> {
        let Some(mut in_progress) = self.in_progress.take() else {
            return Ok(false);
        };
        in_progress
            .file
            .flush()
            .map_err(|e| Error::io(in_progress.path.display(), e))?;
        drop(in_progress.file);
        self.rt
            .block_on(self.store.put_file(key, &in_progress.path))?;
        let _ = std::fs::remove_file(&in_progress.path);
        Ok(true)
    }
}

impl<T: Serialize + Send> SinkWriter<T> for FileSinkWriter<T> {
    fn write(&mut self, item: T) -> Result<()> {
        if self.in_progress.is_none() {
            let path = self
                .local_dir
                .join(format!("in-progress-{}", self.part_counter + 1));
            let file = std::fs::File::create(&path).map_err(|e| Error::io(path.display(), e))?;
            self.in_progress = Some(InProgress {
                path,
                file: std::io::BufWriter::with_capacity(256 << 10, file),
                bytes: 0,
            });
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, &item)
            .map_err(|e| Error::codec("file sink record", e))?;
        self.line.push(b'\n');
        if let Some(in_progress) = self.in_progress.as_mut() {
            in_progress
                .file
                .write_all(&self.line)
                .map_err(|e| Error::io(in_progress.path.display(), e))?;
            in_progress.bytes += self.line.len() as u64;
        }
        Ok(())
    }

    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        let name = self.part_name(checkpoint_id);
        if self.seal(&pending_key(&name))? {
            self.pending.push(PendingPart {
                checkpoint_id,
                name,
            });
        }
        self.pending
            .iter()
            .map(|p| {
                serde_json::to_value(p).map_err(|e| Error::codec("file sink pending parts", e))
            })
            .collect()
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<()> {
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.checkpoint_id <= checkpoint_id);
        self.pending = later;
        self.rt.block_on(async {
            for part in &ready {
                publish(&self.store, &part.name).await?;
                fault_points::hit(FaultPoint::FileSinkPublishedPart);
            }
            Ok::<_, Error>(())
        })
    }

    fn finish(&mut self) -> Result<()> {
        // Only reached with data left when checkpointing is off: publish directly.
        let name = self.part_name(0);
        if self.seal(&name)? {
            crate::metrics::global().committed_files.inc();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn part_names_carry_their_checkpoint_id() {
        assert_eq!(
            part_checkpoint_id("_pending/part-0001-0000000042-1a2b3c4d-0000000043-7.jsonl"),
            Some(43)
        );
        // Attempt ids from before they carried the claim.
        assert_eq!(
            part_checkpoint_id("part-0000-00ff00ff00ff00ff-0000000009-1.jsonl"),
            Some(9)
        );
        assert_eq!(part_checkpoint_id("_pending/notes.txt"), None);
    }

    /// A sink folder on the local filesystem, with what `recover` needs around it.
    struct Folder {
        rt: tokio::runtime::Runtime,
        uri: String,
        store: ObjectStore,
        _dir: tempfile::TempDir,
    }

    impl Folder {
        fn new() -> Folder {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let dir = tempfile::tempdir().expect("tempdir");
            let uri = format!("file://{}", dir.path().display());
            let store = rt
                .block_on(ObjectStore::open(
                    &Location::parse(&uri).expect("uri"),
                    &Default::default(),
                ))
                .expect("store");
            Folder {
                rt,
                uri,
                store,
                _dir: dir,
            }
        }

        fn put(&self, key: &str, content: &str) {
            self.rt
                .block_on(self.store.put(key, content.to_string().into()))
                .expect("put");
        }

        /// Runs the recovery of an attempt that claimed `claimed` and restores a checkpoint
        /// whose sink state names `restored` as pending.
        fn recover(&self, restored: &[PendingPart], claimed: Option<u64>) -> Result<()> {
            let doc: crate::spec::JobDocument = serde_json::from_str(
                r#"{"job":{"name":"sequence-check","args":{}},"parallelism":1}"#,
            )
            .expect("document");
            let ctx = RecoverContext {
                rt: self.rt.handle().clone(),
                doc: Arc::new(doc),
                claimed,
            };
            let pending = restored
                .iter()
                .map(|p| serde_json::to_value(p).expect("json"))
                .collect();
            FileSink::<String>::json_lines(self.uri.clone()).recover(pending, &ctx)
        }

        /// Every object in the folder with its content, sorted by key.
        fn objects(&self) -> Vec<(String, String)> {
            let mut keys: Vec<String> = self
                .rt
                .block_on(self.store.list(""))
                .expect("list")
                .into_iter()
                .map(|o| o.key)
                .collect();
            keys.sort();
            keys.into_iter()
                .map(|key| {
                    let content = self.rt.block_on(self.store.get(&key)).expect("get");
                    let content = String::from_utf8(content.to_vec()).expect("utf-8");
                    (key, content)
                })
                .collect()
        }
    }

    /// The name a writer of `subtask` gives its `n`th part of checkpoint `checkpoint_id`.
    fn part(subtask: u32, checkpoint_id: u64, n: u64) -> PendingPart {
        PendingPart {
            checkpoint_id,
            name: format!("part-{subtask:04}-0000000003-0a0b0c0d-{checkpoint_id:010}-{n}.jsonl"),
        }
    }

    /// What the test writes into a part: unique per part, so a mix-up shows.
    fn records(part: &PendingPart) -> String {
        format!("{{\"part\":\"{}\"}}\n", part.name)
    }

    fn published(part: &PendingPart) -> (String, String) {
        (part.name.clone(), records(part))
    }

    fn still_pending(part: &PendingPart) -> (String, String) {
        (pending_key(&part.name), records(part))
    }

    fn sorted(mut objects: Vec<(String, String)>) -> Vec<(String, String)> {
        objects.sort();
        objects
    }

    #[test]
    fn recovery_publishes_exactly_the_parts_the_restored_checkpoint_names() {
        let folder = Folder::new();
        // Checkpoint 5 is restored. Subtask 0 rolled two parts in it; subtask 2 also still
        // held a part of checkpoint 4, whose completion notice it never received.
        let restored = [
            part(0, 5, 1),
            part(0, 5, 2),
            part(1, 5, 1),
            part(2, 4, 1),
            part(2, 5, 2),
        ];
        for p in &restored {
            folder.put(&pending_key(&p.name), &records(p));
        }
        folder.recover(&restored, Some(6)).expect("recover");
        assert_eq!(
            folder.objects(),
            sorted(restored.iter().map(published).collect())
        );
    }

    #[test]
    fn recovery_leaves_published_output_of_other_checkpoints_alone() {
        let folder = Folder::new();
        // Output committed long ago (2, 3), and by a newer JobManager above the claim (8):
        // recovery deals only with `_pending/`.
        let committed = [part(0, 2, 1), part(1, 3, 1), part(0, 8, 1)];
        for p in &committed {
            folder.put(&p.name, &records(p));
        }
        let restored = [part(0, 5, 1)];
        folder.put(&pending_key(&restored[0].name), &records(&restored[0]));
        folder.recover(&restored, Some(6)).expect("recover");
        assert_eq!(
            folder.objects(),
            sorted(committed.iter().chain(&restored).map(published).collect())
        );
    }

    #[test]
    fn recovery_deletes_only_pending_parts_of_checkpoints_that_never_completed() {
        let folder = Folder::new();
        let restored = [part(0, 4, 1), part(1, 4, 1)];
        // 3 failed, 5 was in flight when the job failed, 6 is the id this attempt claimed
        // (whoever triggered it lost it): none ever completes. 7 is above the claim: a newer
        // JobManager's, in flight.
        let never_completed = [part(0, 3, 1), part(1, 5, 1), part(0, 5, 2), part(0, 6, 1)];
        let newer = [part(0, 7, 1), part(1, 7, 1)];
        for p in restored.iter().chain(&never_completed).chain(&newer) {
            folder.put(&pending_key(&p.name), &records(p));
        }
        folder.recover(&restored, Some(6)).expect("recover");
        let mut expected: Vec<_> = restored.iter().map(published).collect();
        expected.extend(newer.iter().map(still_pending));
        assert_eq!(folder.objects(), sorted(expected));
    }

    #[test]
    fn recovery_without_a_claim_deletes_every_pending_part_it_does_not_publish() {
        let folder = Folder::new();
        let restored = [part(0, 4, 1)];
        for p in [part(0, 4, 1), part(0, 5, 1), part(0, 9, 1)] {
            folder.put(&pending_key(&p.name), &records(&p));
        }
        folder.recover(&restored, None).expect("recover");
        assert_eq!(folder.objects(), vec![published(&restored[0])]);
    }

    #[test]
    fn recovery_run_twice_leaves_the_same_objects() {
        let folder = Folder::new();
        let restored = [part(0, 5, 1), part(1, 5, 1), part(1, 5, 2)];
        let committed = part(0, 4, 1);
        let never_completed = part(0, 6, 1);
        let newer = part(0, 7, 1);
        folder.put(&committed.name, &records(&committed));
        for p in restored.iter().chain([&never_completed, &newer]) {
            folder.put(&pending_key(&p.name), &records(p));
        }
        let mut expected: Vec<_> = restored.iter().map(published).collect();
        expected.push(published(&committed));
        expected.push(still_pending(&newer));
        let expected = sorted(expected);

        folder.recover(&restored, Some(6)).expect("first recovery");
        assert_eq!(folder.objects(), expected);
        // A restart before the attempt's first checkpoint restores the same checkpoint.
        folder.recover(&restored, Some(6)).expect("second recovery");
        assert_eq!(folder.objects(), expected, "nothing moved, nothing doubled");
    }

    #[test]
    fn a_restored_part_that_is_already_published_counts_as_done() {
        let folder = Folder::new();
        // The committer renamed the first part before the job failed, not the second.
        let restored = [part(0, 5, 1), part(0, 5, 2)];
        folder.put(&restored[0].name, &records(&restored[0]));
        folder.put(&pending_key(&restored[1].name), &records(&restored[1]));
        folder.recover(&restored, Some(6)).expect("recover");
        assert_eq!(
            folder.objects(),
            sorted(restored.iter().map(published).collect())
        );
    }

    #[test]
    fn a_restored_part_missing_everywhere_fails_recovery_naming_it() {
        let folder = Folder::new();
        let present = part(0, 5, 1);
        let lost = part(1, 5, 1);
        let never_completed = part(0, 6, 1);
        folder.put(&pending_key(&present.name), &records(&present));
        folder.put(
            &pending_key(&never_completed.name),
            &records(&never_completed),
        );
        let error = folder
            .recover(&[present.clone(), lost.clone()], Some(6))
            .expect_err("a completed checkpoint's output is gone");
        match error {
            Error::CorruptCheckpoint { object, .. } => {
                assert_eq!(object, folder.store.uri(&pending_key(&lost.name)));
            }
            other => panic!("expected CorruptCheckpoint, got {other:?}"),
        }
        // It stops before deleting anything: the parts it published before stay published.
        assert_eq!(
            folder.objects(),
            vec![still_pending(&never_completed), published(&present)]
        );
    }

    #[test]
    fn recovery_leaves_pending_output_above_its_claim_alone() {
        let folder = Folder::new();
        let part = |id: u64| part(0, id, 1);
        for id in [9, 10, 11, 12] {
            folder.put(&pending_key(&part(id).name), &records(&part(id)));
        }
        // The restored checkpoint (10) left one part pending.
        folder.recover(&[part(10)], Some(11)).expect("recover");
        assert_eq!(
            folder.objects(),
            vec![
                still_pending(&part(12)), // a newer JobManager's checkpoint: untouched
                published(&part(10)),     // the restored checkpoint's output: published
            ]
        );
    }
}
