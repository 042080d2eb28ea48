//! Incremental checkpoints of keyed state: RocksDB's own files, each stored once.
//!
//! The synchronous part of a snapshot makes a RocksDB checkpoint (hard links of the live
//! files, `KeyedStateBackend::checkpoint_to`). Here its files go to storage: SST files never
//! change once written, so an SST file that a completed checkpoint already stored is referred
//! to again instead of being stored again; a new one goes to `shared/<backend id>/<file>`
//! under the job's checkpoint folder. The files RocksDB rewrites (MANIFEST, CURRENT, OPTIONS)
//! go into the checkpoint's own directory. So a checkpoint costs what changed since the last
//! one, and a restore at the same parallelism opens RocksDB on the downloaded files directly.
//!
//! Only files of a checkpoint the task has been told is complete are referred to: a file
//! stored by a checkpoint that then failed may be partial or already deleted. Shared names
//! are unique per RocksDB instance (`backendId`) and file number, so storing the same file
//! twice writes identical bytes under one name. An SST file is in a checkpoint only while it
//! is live in RocksDB, and live files never come back once compacted away: so a file an
//! in-flight checkpoint refers to is also referred to by the newest completed checkpoint,
//! which retention always keeps (`CheckpointCoordinator::apply_retention` deletes a shared
//! file only when no retained checkpoint refers to it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};

use super::RestorePoint;
use super::metadata::{IncrementalKeyedStateHandle, StateFile};
use crate::error::{Error, Result};
use crate::spec::layout;
use crate::state::KeyGroupRange;
use crate::storage::{ObjectStore, StorageError};

/// Files moved to or from storage at once (S3 requests are latency-bound).
const CONCURRENT_TRANSFERS: usize = 4;

/// What one keyed subtask has stored for its incremental checkpoints. Cheap to clone.
#[derive(Clone)]
pub struct IncrementalSnapshots {
    backend_id: String,
    stored: Arc<Mutex<Stored>>,
}

#[derive(Default)]
struct Stored {
    /// SST files of the newest checkpoint known complete, by file name.
    confirmed: BTreeMap<String, StateFile>,
    /// SST files of checkpoints acknowledged but not yet known complete.
    pending: BTreeMap<u64, BTreeMap<String, StateFile>>,
}

impl IncrementalSnapshots {
    /// One RocksDB instance of `operator`'s `subtask` in attempt `attempt_id`. The backend id
    /// (and so the `shared/` folder of its files) ends with the attempt id, which starts with
    /// the checkpoint id the attempt claimed: cleanup knows whose files they are.
    pub fn new(operator: &str, subtask: u32, attempt_id: &str) -> Self {
        IncrementalSnapshots {
            backend_id: format!("{operator}-{subtask}-{attempt_id}"),
            stored: Default::default(),
        }
    }

    /// After opening a checkpoint's files as this instance: its SST files are stored and may
    /// be referred to. Only for checkpoints in this job's own checkpoint folder.
    pub fn adopt(&self, handle: &IncrementalKeyedStateHandle) {
        let mut stored = self.stored.lock().expect("lock");
        stored.confirmed = handle
            .shared
            .iter()
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
    }

    pub fn on_checkpoint_complete(&self, checkpoint_id: u64) {
        let mut stored = self.stored.lock().expect("lock");
        if let Some(files) = stored.pending.remove(&checkpoint_id) {
            stored.confirmed = files;
        }
        stored.pending.retain(|&id, _| id > checkpoint_id);
    }

    /// Stores the RocksDB checkpoint at `copy_dir` (removed afterwards): new SST files under
    /// `job_store`'s `shared/` folder, the other files under `<private_prefix>/` in
    /// `checkpoint_store`.
    pub async fn store(
        &self,
        checkpoint_id: u64,
        copy_dir: &Path,
        key_groups: KeyGroupRange,
        job_store: &ObjectStore,
        checkpoint_store: &ObjectStore,
        private_prefix: &str,
    ) -> Result<IncrementalKeyedStateHandle> {
        let confirmed = self.stored.lock().expect("lock").confirmed.clone();
        let mut names = Vec::new();
        let mut dir = tokio::fs::read_dir(copy_dir)
            .await
            .map_err(|e| Error::io(copy_dir.display(), e))?;
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| Error::io(copy_dir.display(), e))?
        {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();

        let mut shared = Vec::new();
        let mut to_store = Vec::new();
        let mut private_names = Vec::new();
        for name in names {
            if !name.ends_with(".sst") {
                private_names.push(name);
            } else if let Some(file) = confirmed.get(&name) {
                shared.push(file.clone());
            } else {
                to_store.push(name);
            }
        }
        let backend_id = &self.backend_id;
        let stored_shared: Vec<StateFile> = futures::stream::iter(to_store)
            .map(|name| async move {
                let path = copy_dir.join(&name);
                let object = format!("{}/{backend_id}/{name}", layout::SHARED_FOLDER);
                let (size, crc32) = file_checksum(path.clone()).await?;
                job_store.put_immutable_file(&object, &path).await?;
                Ok::<_, Error>(StateFile {
                    name,
                    object,
                    size,
                    crc32,
                })
            })
            .buffer_unordered(CONCURRENT_TRANSFERS)
            .try_collect()
            .await?;
        let mut uploaded_bytes: u64 = stored_shared.iter().map(|f| f.size).sum();
        shared.extend(stored_shared);
        shared.sort_by(|a, b| a.name.cmp(&b.name));

        let mut private = Vec::new();
        for name in private_names {
            let path = copy_dir.join(&name);
            let data = tokio::fs::read(&path)
                .await
                .map_err(|e| Error::io(path.display(), e))?;
            let object = format!("{private_prefix}/{name}");
            let file = StateFile {
                name,
                object,
                size: data.len() as u64,
                crc32: crc32fast::hash(&data),
            };
            checkpoint_store.put(&file.object, data.into()).await?;
            uploaded_bytes += file.size;
            private.push(file);
        }
        tokio::fs::remove_dir_all(copy_dir)
            .await
            .map_err(|e| Error::io(copy_dir.display(), e))?;

        self.stored.lock().expect("lock").pending.insert(
            checkpoint_id,
            shared.iter().map(|f| (f.name.clone(), f.clone())).collect(),
        );
        Ok(IncrementalKeyedStateHandle {
            key_groups,
            backend_id: self.backend_id.clone(),
            shared,
            private,
            uploaded_bytes,
        })
    }
}

/// Size and CRC32 of a local file, read off the async threads.
async fn file_checksum(path: PathBuf) -> Result<(u64, u32)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io(path.display(), e))?;
            if n == 0 {
                return Ok((size, hasher.finalize()));
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
    })
    .await
    .map_err(|e| Error::io("checksum", std::io::Error::other(e)))?
}

fn mismatch(file: &StateFile, size: u64, crc32: u32) -> Option<String> {
    (size != file.size || crc32 != file.crc32).then(|| {
        format!(
            "{size} bytes with crc32 {crc32:08x}, the checkpoint says {} bytes with crc32 {:08x}",
            file.size, file.crc32
        )
    })
}

/// Downloads the files of `handle` into the new directory `dir`, checking each against the
/// metadata. A missing or damaged file is a `CorruptCheckpoint` error naming it.
pub async fn download(
    restore: &RestorePoint,
    handle: &IncrementalKeyedStateHandle,
    dir: &Path,
) -> Result<()> {
    let corrupt = |object: String, reason: String| Error::CorruptCheckpoint { object, reason };
    for file in handle.shared.iter().chain(&handle.private) {
        // Names come from `_metadata`: never let one point outside `dir`.
        if file.name.is_empty()
            || file.name.contains('/')
            || file.name.contains('\\')
            || file.name.starts_with('.')
        {
            return Err(corrupt(
                restore.store.uri(layout::METADATA_OBJECT),
                format!("invalid state file name {:?}", file.name),
            ));
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let shared_store = restore.store.parent().ok_or_else(|| {
        corrupt(
            restore.uri(),
            "an incremental checkpoint must sit in a job's checkpoint folder".into(),
        )
    })?;
    let shared_store = &shared_store;
    futures::stream::iter(&handle.shared)
        .map(|file| async move {
            let uri = shared_store.uri(&file.object);
            let path: PathBuf = dir.join(&file.name);
            match shared_store.get_immutable_file(&file.object, &path).await {
                Ok(_) => {}
                Err(StorageError::NotFound { .. }) => {
                    return Err(corrupt(
                        uri,
                        "shared state file is missing (a checkpoint refers to it; was the \
                         job's shared/ folder deleted or not copied along?)"
                            .into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            let (size, crc32) = file_checksum(path).await?;
            match mismatch(file, size, crc32) {
                Some(reason) => Err(corrupt(uri, reason)),
                None => Ok(()),
            }
        })
        .buffer_unordered(CONCURRENT_TRANSFERS)
        .try_collect::<()>()
        .await?;
    for file in &handle.private {
        let uri = restore.store.uri(&file.object);
        let data = match restore.store.get(&file.object).await {
            Ok(data) => data,
            Err(StorageError::NotFound { .. }) => {
                return Err(corrupt(uri, "state file is missing".into()));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(reason) = mismatch(file, data.len() as u64, crc32fast::hash(&data)) {
            return Err(corrupt(uri, reason));
        }
        let path = dir.join(&file.name);
        tokio::fs::write(&path, &data)
            .await
            .map_err(|e| Error::io(path.display(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::checkpoint::CheckpointCoordinator;
    use crate::checkpoint::metadata::{
        CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskState,
    };
    use crate::state::keygroups::{key_group_for_key_bytes, key_group_range_for_subtask};
    use crate::state::{KeyedContext, KeyedStateBackend, StateRegistry, ValueState};
    use crate::storage::Location;

    const MAX: u32 = 128;
    const ALL: KeyGroupRange = KeyGroupRange {
        start: 0,
        end: MAX as u16,
    };

    /// A keyed subtask over all key groups with a `count` value state, checkpointing into a
    /// local job folder the way a keyed task does.
    struct Fixture {
        rt: tokio::runtime::Runtime,
        job: ObjectStore,
        count: ValueState<u64>,
        backend: KeyedStateBackend,
        snapshots: IncrementalSnapshots,
        /// Last: the backend removes its folder inside it when dropped.
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let location = Location::Local(dir.path().join("job"));
            let job = rt
                .block_on(ObjectStore::open(&location, &Default::default()))
                .expect("store");
            let mut registry = StateRegistry::new("count");
            let count = registry.value_state::<u64>("count").expect("state");
            let backend =
                KeyedStateBackend::open(&dir.path().join("db"), ALL, 64 << 20).expect("open");
            Fixture {
                rt,
                job,
                count,
                backend,
                snapshots: IncrementalSnapshots::new("count", 0, &crate::checkpoint::attempt_id(0)),
                dir,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn set(&mut self, key: u64, value: u64) {
            select(&mut self.backend, key);
            self.count
                .set(
                    &mut KeyedContext {
                        backend: &mut self.backend,
                    },
                    &value,
                )
                .expect("set");
        }

        /// Takes checkpoint `id` and writes a `_metadata` holding it, so retention and restore
        /// see a completed checkpoint.
        fn checkpoint(&mut self, id: u64) -> IncrementalKeyedStateHandle {
            let copy = self.path(&format!("copy-{id}"));
            self.backend
                .checkpoint_to(&copy)
                .expect("rocksdb checkpoint");
            let chk = self.job.child(&layout::checkpoint_dir(id));
            let key_groups = self.backend.key_groups();
            let handle = self
                .rt
                .block_on(
                    self.snapshots
                        .store(id, &copy, key_groups, &self.job, &chk, "count-0"),
                )
                .expect("store");
            let mut operators = BTreeMap::new();
            operators.insert(
                "count".to_string(),
                OperatorSnapshot {
                    subtasks: vec![SubtaskState {
                        keyed_incremental: Some(handle.clone()),
                        ..Default::default()
                    }],
                },
            );
            let metadata = CheckpointMetadata {
                job_id: "job".into(),
                checkpoint_id: id,
                kind: SnapshotKind::Checkpoint,
                timestamp_ms: id,
                parallelism: 1,
                max_parallelism: MAX,
                operators,
                job_manager: None,
            };
            self.rt
                .block_on(chk.put(
                    layout::METADATA_OBJECT,
                    metadata.encode().expect("encode").into(),
                ))
                .expect("put metadata");
            handle
        }

        fn restore_point(&self, id: u64) -> RestorePoint {
            self.rt
                .block_on(RestorePoint::open(
                    self.job.child(&layout::checkpoint_dir(id)),
                ))
                .expect("open checkpoint")
        }

        /// Downloads `handle` of checkpoint `id` into the new folder `name`.
        fn download(
            &self,
            id: u64,
            handle: &IncrementalKeyedStateHandle,
            name: &str,
        ) -> Result<PathBuf> {
            let path = self.path(name);
            self.rt
                .block_on(download(&self.restore_point(id), handle, &path))?;
            Ok(path)
        }

        /// Opens the files of `handle` of checkpoint `id` as a new instance.
        fn restored(
            &self,
            id: u64,
            handle: &IncrementalKeyedStateHandle,
            name: &str,
        ) -> KeyedStateBackend {
            let path = self.download(id, handle, name).expect("download");
            KeyedStateBackend::open_restored(&path, ALL, 64 << 20, name).expect("open")
        }

        fn get(&self, backend: &mut KeyedStateBackend, key: u64) -> Option<u64> {
            select(backend, key);
            self.count.get(&mut KeyedContext { backend }).expect("get")
        }
    }

    fn select(backend: &mut KeyedStateBackend, key: u64) {
        let bytes = key.to_be_bytes();
        backend.set_current_key(key_group_for_key_bytes(&bytes, MAX), &bytes);
    }

    #[test]
    fn unchanged_files_are_stored_once_and_restore_opens_them_exactly() {
        let mut f = Fixture::new();
        for key in 0..5_000 {
            f.set(key, key);
        }
        let first = f.checkpoint(1);
        assert_eq!(first.uploaded_bytes, first.full_size(), "first stores all");
        f.snapshots.on_checkpoint_complete(1);
        for key in 5_000..6_000 {
            f.set(key, key);
        }
        f.set(7, 700);
        let second = f.checkpoint(2);
        for file in &first.shared {
            assert!(
                second.shared.contains(file),
                "{} is referred to, not stored again",
                file.name
            );
        }
        assert!(second.shared.len() > first.shared.len(), "a new SST file");
        let new_sst: u64 = second
            .shared
            .iter()
            .filter(|f| !first.shared.contains(f))
            .map(|f| f.size)
            .sum();
        let private: u64 = second.private.iter().map(|f| f.size).sum();
        assert_eq!(second.uploaded_bytes, new_sst + private);
        assert!(second.uploaded_bytes < second.full_size());

        // A later write must not reach the restored copy.
        f.set(1, 999);
        let mut restored = f.restored(2, &second, "restored");
        for key in 0..6_000 {
            let expected = if key == 7 { 700 } else { key };
            assert_eq!(f.get(&mut restored, key), Some(expected), "key {key}");
        }
        assert_eq!(f.get(&mut restored, 6_000), None);
    }

    #[test]
    fn rescaling_from_incremental_files_gives_each_key_to_one_subtask() {
        let mut f = Fixture::new();
        for key in 0..3_000 {
            f.set(key, key * 3);
        }
        let handle = f.checkpoint(1);
        let mut total = 0;
        for subtask in 0..3 {
            let range = key_group_range_for_subtask(MAX, 3, subtask);
            let files = f
                .download(1, &handle, &format!("files-{subtask}"))
                .expect("download");
            let mut part =
                KeyedStateBackend::open(&f.path(&format!("part-{subtask}")), range, 64 << 20)
                    .expect("open");
            total += part.restore_from_files(&files, "chk-1").expect("restore");
            for key in 0..3_000u64 {
                let group = key_group_for_key_bytes(&key.to_be_bytes(), MAX);
                if range.contains(group) {
                    assert_eq!(f.get(&mut part, key), Some(key * 3), "key {key}");
                }
            }
        }
        assert_eq!(total, 3_000, "every entry restored exactly once");
    }

    #[test]
    fn a_missing_or_truncated_shared_file_fails_the_restore_naming_it() {
        let mut f = Fixture::new();
        for key in 0..100 {
            f.set(key, key);
        }
        let handle = f.checkpoint(1);
        let sst = f.path("job").join(&handle.shared[0].object);

        std::fs::write(&sst, b"short").expect("truncate");
        let text = f
            .download(1, &handle, "a")
            .expect_err("truncated")
            .to_string();
        assert!(
            text.contains(&handle.shared[0].object) && text.contains("crc32"),
            "{text}"
        );

        std::fs::remove_file(&sst).expect("remove");
        let text = f
            .download(1, &handle, "b")
            .expect_err("missing")
            .to_string();
        assert!(
            text.contains(&handle.shared[0].object) && text.contains("missing"),
            "{text}"
        );
    }

    #[test]
    fn retention_deletes_a_shared_file_with_the_last_checkpoint_referring_to_it() {
        let mut f = Fixture::new();
        let mut handles = Vec::new();
        for id in 1..=4u64 {
            for key in 0..2_000 {
                f.set(key + id * 2_000, id);
            }
            if id == 3 {
                // Everything into one file: the SST files of checkpoints 1 and 2 are gone.
                f.backend.flush_dirty().expect("flush");
                f.backend.compact_all().expect("compact");
            }
            handles.push(f.checkpoint(id));
            f.snapshots.on_checkpoint_complete(id);
        }
        let config = crate::spec::CheckpointConfig {
            interval: std::time::Duration::from_secs(1),
            mode: Default::default(),
            storage: f.job.location().uri(),
            retained: 2,
            timeout: std::time::Duration::from_secs(60),
            tolerable_failures: 0,
            savepoint_directories: Vec::new(),
        };
        let mut coordinator =
            CheckpointCoordinator::new(f.job.clone(), config, "job", "test-jm", 1, MAX);
        f.rt.block_on(coordinator.apply_retention())
            .expect("retention");

        let exists = |object: &str| f.path("job").join(object).exists();
        let kept: std::collections::BTreeSet<&str> = handles[2..]
            .iter()
            .flat_map(|h| h.shared.iter().map(|f| f.object.as_str()))
            .collect();
        for object in &kept {
            assert!(
                exists(object),
                "{object} is referred to by a retained checkpoint"
            );
        }
        let gone: Vec<&str> = handles[..2]
            .iter()
            .flat_map(|h| h.shared.iter().map(|f| f.object.as_str()))
            .filter(|o| !kept.contains(o))
            .collect();
        assert!(!gone.is_empty(), "compaction replaced the old files");
        for object in gone {
            assert!(
                !exists(object),
                "{object} was only referred to by expired checkpoints"
            );
        }
        assert!(!exists("chk-1") && !exists("chk-2") && exists("chk-3") && exists("chk-4"));

        // Files no completed checkpoint refers to (a checkpoint that failed after storing
        // them, an attempt that died) go when the next attempt starts; referenced ones stay.
        // Only files of attempts before the one starting (claim 5): a file of a higher claim
        // may be a newer JobManager's, in flight.
        let orphan = "shared/count-0-dead/000042.sst";
        let newer = "shared/count-0-0000000009-0badcafe/000043.sst";
        for object in [orphan, newer] {
            f.rt.block_on(f.job.put(object, bytes::Bytes::from_static(b"sst")))
                .expect("put");
        }
        let removed =
            f.rt.block_on(coordinator.remove_orphaned_shared_files(5))
                .expect("cleanup");
        assert_eq!(removed, 1);
        assert!(!exists(orphan));
        assert!(exists(newer));
        for object in &kept {
            assert!(exists(object), "{object} is still referred to");
        }
        // The retained checkpoints still restore.
        for (id, handle) in [(3, &handles[2]), (4, &handles[3])] {
            let mut restored = f.restored(id, handle, &format!("restored-{id}"));
            assert_eq!(f.get(&mut restored, 2_000), Some(1), "checkpoint {id}");
        }
    }
}
