//! What the operator needs from checkpoint storage: the latest completed checkpoint of a job
//! (a `chk-<n>` directory counts only once its `_metadata` exists), whether a savepoint
//! directory is complete, and deleting directories for retention and cleanup.
//!
//! [`ObjectStores`] is what the operator runs with: the worker's own storage layer
//! (`weir-storage`: local folders and S3, the same key rules, listings and S3 client
//! configuration) and its checkpoint queries, so both sides read the layout with one piece of
//! code. [`MemoryStore`] backs the controller's tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use weir_spec::S3Options;
use weir_spec::layout;
use weir_storage::{Location, ObjectStore, Purpose, StorageError};

use crate::{Error, Result};

/// A completed checkpoint found in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub id: u64,
    /// The `chk-<n>` directory (holding `_metadata`).
    pub path: String,
}

/// Every method takes the StreamJob's S3 settings (`spec.job.s3`: endpoint, region, path
/// style); stores that are not S3 ignore them.
pub trait CheckpointStore: Send + Sync {
    /// Whether this store can list `uri` (otherwise the operator trusts the JobManager's report).
    fn can_list(&self, uri: &str) -> bool;

    /// `None` when the job has no completed checkpoint, or the store cannot list this URI.
    fn latest_completed_checkpoint<'a>(
        &'a self,
        s3: &'a S3Options,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>>;

    /// Whether `<dir>/_metadata` exists; `None` when the store cannot tell.
    fn has_metadata<'a>(
        &'a self,
        s3: &'a S3Options,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>>>;

    /// Removes everything under `dir`; a missing directory is not an error.
    fn delete_dir<'a>(&'a self, s3: &'a S3Options, dir: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// A storage error about `uri`.
fn storage_error(uri: &str, message: impl ToString) -> Error {
    Error::Storage {
        uri: uri.to_string(),
        message: message.to_string(),
    }
}

fn join(base: &str, child: &str) -> String {
    format!("{}/{child}", base.trim_end_matches('/'))
}

/// What every path inside `dir` starts with.
fn inside(dir: &str) -> String {
    join(dir, "")
}

/// Picks the highest `chk-<n>` that has `_metadata` from a list of object paths.
fn latest_from_objects<'a>(
    base: &str,
    objects: impl Iterator<Item = &'a str>,
) -> Option<StoredCheckpoint> {
    let prefix = inside(base);
    objects
        .filter_map(|object| {
            let rest = object.strip_prefix(&prefix)?;
            let (dir, file) = rest.split_once('/')?;
            (file == layout::METADATA_OBJECT).then_some(dir)
        })
        .filter_map(|dir| layout::parse_checkpoint_dir(dir).map(|id| (id, dir)))
        .max_by_key(|(id, _)| *id)
        .map(|(id, dir)| StoredCheckpoint {
            id,
            path: join(&prefix, dir),
        })
}

/// In-memory object store keyed by full URI, e.g. `s3://b/chk/job/chk-3/_metadata`.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    objects: Arc<Mutex<BTreeSet<String>>>,
    /// Every call fails, like an S3 outage or missing credentials.
    unavailable: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryStore {
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable
            .store(unavailable, std::sync::atomic::Ordering::SeqCst);
    }

    fn check_available(&self, uri: &str) -> Result<()> {
        if self.unavailable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(storage_error(uri, "storage unavailable"));
        }
        Ok(())
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A poisoned lock only means another test thread panicked; the set is still usable.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `<dir>/_metadata`.
    pub fn put_metadata(&self, dir: &str) {
        self.objects().insert(join(dir, layout::METADATA_OBJECT));
    }

    pub fn contains_dir(&self, dir: &str) -> bool {
        let prefix = inside(dir);
        self.objects().iter().any(|o| o.starts_with(&prefix))
    }
}

impl CheckpointStore for MemoryStore {
    fn can_list(&self, _uri: &str) -> bool {
        true
    }

    fn latest_completed_checkpoint<'a>(
        &'a self,
        _s3: &'a S3Options,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>> {
        Box::pin(async move {
            let base = layout::job_dir(storage, job_id);
            self.check_available(&base)?;
            let objects = self.objects();
            Ok(latest_from_objects(
                &base,
                objects.iter().map(String::as_str),
            ))
        })
    }

    fn has_metadata<'a>(
        &'a self,
        _s3: &'a S3Options,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(async move {
            self.check_available(dir)?;
            Ok(Some(
                self.objects().contains(&join(dir, layout::METADATA_OBJECT)),
            ))
        })
    }

    fn delete_dir<'a>(&'a self, _s3: &'a S3Options, dir: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check_available(dir)?;
            let prefix = inside(dir);
            self.objects().retain(|o| !o.starts_with(&prefix));
            Ok(())
        })
    }
}

/// Every location opened as a [`weir_storage::ObjectStore`] with the control plane's S3
/// timeouts ([`Purpose::Control`]). Credentials come from the operator pod's environment, IRSA
/// web identity or a profile (`weir_spec::s3::client`); endpoint, region and path style from
/// the StreamJob. One S3 client per distinct setting and bucket, built on first use and kept.
#[derive(Default)]
pub struct ObjectStores {
    buckets: tokio::sync::Mutex<HashMap<(S3Options, String), ObjectStore>>,
}

impl std::fmt::Debug for ObjectStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStores").finish_non_exhaustive()
    }
}

impl From<StorageError> for Error {
    fn from(error: StorageError) -> Error {
        let (uri, message) = match error {
            StorageError::InvalidUri { uri, reason } => (uri, reason),
            StorageError::NotFound { uri } => (uri, "not found".to_string()),
            StorageError::Io { uri, source } => (uri, crate::error_chain(&source)),
            StorageError::S3 { op, uri, message } => (uri, format!("{op}: {message}")),
        };
        Error::Storage { uri, message }
    }
}

impl ObjectStores {
    /// The store rooted at `uri`.
    async fn open(&self, s3: &S3Options, uri: &str) -> Result<ObjectStore> {
        let location = Location::parse(uri)?;
        let Location::S3 { bucket, prefix } = &location else {
            return Ok(ObjectStore::open_for(&location, s3, Purpose::Control).await?);
        };
        let mut buckets = self.buckets.lock().await;
        let key = (s3.clone(), bucket.clone());
        let root = match buckets.get(&key) {
            Some(root) => root.clone(),
            None => {
                let root_location = Location::S3 {
                    bucket: bucket.clone(),
                    prefix: String::new(),
                };
                let root = ObjectStore::open_for(&root_location, s3, Purpose::Control).await?;
                buckets.insert(key, root.clone());
                root
            }
        };
        Ok(root.child(prefix))
    }
}

impl CheckpointStore for ObjectStores {
    fn can_list(&self, uri: &str) -> bool {
        Location::parse(uri).is_ok()
    }

    fn latest_completed_checkpoint<'a>(
        &'a self,
        s3: &'a S3Options,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>> {
        Box::pin(async move {
            if !self.can_list(storage) {
                return Ok(None);
            }
            let base = layout::job_dir(storage, job_id);
            let job_store = self.open(s3, &base).await?;
            let latest = weir_storage::checkpoints::latest_completed(&job_store).await?;
            Ok(latest.map(|id| StoredCheckpoint {
                id,
                path: join(&base, &layout::checkpoint_dir(id)),
            }))
        })
    }

    fn has_metadata<'a>(
        &'a self,
        s3: &'a S3Options,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(async move {
            if !self.can_list(dir) {
                return Ok(None);
            }
            let dir_store = self.open(s3, dir).await?;
            Ok(Some(
                weir_storage::checkpoints::is_complete(&dir_store).await?,
            ))
        })
    }

    fn delete_dir<'a>(&'a self, s3: &'a S3Options, dir: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let store = self.open(s3, dir).await?;
            let name = match store.location() {
                Location::Local(path) => path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned()),
                Location::S3 { prefix, .. } => prefix.rsplit('/').next().map(str::to_string),
            };
            // Deleting the folder from its parent removes the folder itself, not only its
            // contents. A typo in a spec must not empty a whole bucket or filesystem.
            let (Some(parent), Some(name)) = (store.parent(), name.filter(|n| !n.is_empty()))
            else {
                return Err(storage_error(
                    dir,
                    "refusing to delete a bucket root or a filesystem root",
                ));
            };
            Ok(parent.delete_prefix(&name).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn latest_checkpoint_needs_metadata() {
        let store = MemoryStore::default();
        store.put_metadata("s3://b/chk/job/chk-2");
        store.put_metadata("s3://b/chk/job/chk-10");
        store.put_metadata("s3://b/chk/other/chk-99");
        store
            .objects()
            .insert("s3://b/chk/job/chk-11/part-0".into());
        let latest = store
            .latest_completed_checkpoint(&S3Options::default(), "s3://b/chk", "job")
            .await
            .expect("lists");
        assert_eq!(
            latest,
            Some(StoredCheckpoint {
                id: 10,
                path: "s3://b/chk/job/chk-10".into()
            })
        );
    }

    #[tokio::test]
    async fn local_store_reads_checkpoint_directories() {
        let root = std::env::temp_dir().join(format!("weir-operator-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, complete) in [("chk-3", true), ("chk-4", false)] {
            let path = root.join("job").join(dir);
            std::fs::create_dir_all(&path).expect("mkdir");
            if complete {
                std::fs::write(path.join("_metadata"), b"m").expect("write");
            }
        }
        let storage = format!("file://{}", root.display());
        let latest = ObjectStores::default()
            .latest_completed_checkpoint(&S3Options::default(), &storage, "job")
            .await
            .expect("lists");
        assert_eq!(latest.map(|c| c.id), Some(3));
        let chk3 = format!("{storage}/job/chk-3");
        assert_eq!(
            ObjectStores::default()
                .has_metadata(&S3Options::default(), &chk3)
                .await
                .expect("stat"),
            Some(true)
        );
        ObjectStores::default()
            .delete_dir(&S3Options::default(), &chk3)
            .await
            .expect("delete");
        assert!(!root.join("job/chk-3").exists(), "the folder itself goes");
        assert!(root.join("job").exists(), "its parent stays");
        assert_eq!(
            ObjectStores::default()
                .has_metadata(&S3Options::default(), &chk3)
                .await
                .expect("stat"),
            Some(false)
        );
        assert_eq!(
            ObjectStores::default()
                .has_metadata(&S3Options::default(), "gs://b/x")
                .await
                .expect("stat"),
            None
        );
        // Deleting a filesystem root is refused.
        assert!(
            ObjectStores::default()
                .delete_dir(&S3Options::default(), "/")
                .await
                .is_err()
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
