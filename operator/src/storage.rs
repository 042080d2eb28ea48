//! What the operator needs from checkpoint storage: the latest completed checkpoint of a job
//! (a `chk-<n>` directory counts only once its `_metadata` exists), whether a savepoint
//! directory is complete, and deleting directories for retention and cleanup.
//!
//! `LocalStore` serves `file://` and plain paths; `MemoryStore` backs the tests. S3 listing is
//! not implemented yet: for `s3://` the store answers `None` ("cannot tell"), and the operator
//! falls back to the checkpoint the JobManager reported, marked unverified in
//! `status.restorePoint`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::{Error, Result};

/// A completed checkpoint found in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub id: u64,
    /// The `chk-<n>` directory (holding `_metadata`).
    pub path: String,
}

pub trait CheckpointStore: Send + Sync {
    /// Whether this store can list `uri` (otherwise the operator trusts the JobManager's report).
    fn can_list(&self, uri: &str) -> bool;

    /// `None` when the job has no completed checkpoint, or the store cannot list this URI.
    fn latest_completed_checkpoint<'a>(
        &'a self,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>>;

    /// Whether `<dir>/_metadata` exists; `None` when the store cannot tell.
    fn has_metadata<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Option<bool>>>;

    fn delete_dir<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<()>>;
}

fn join(base: &str, child: &str) -> String {
    format!("{}/{child}", base.trim_end_matches('/'))
}

/// Parses `chk-<n>`.
fn checkpoint_id(dir_name: &str) -> Option<u64> {
    dir_name.strip_prefix("chk-")?.parse().ok()
}

/// Picks the highest `chk-<n>` that has `_metadata` from a list of object paths.
fn latest_from_objects<'a>(
    base: &str,
    objects: impl Iterator<Item = &'a str>,
) -> Option<StoredCheckpoint> {
    let prefix = format!("{}/", base.trim_end_matches('/'));
    objects
        .filter_map(|object| {
            let rest = object.strip_prefix(&prefix)?;
            let (dir, file) = rest.split_once('/')?;
            (file == "_metadata").then_some(dir)
        })
        .filter_map(|dir| checkpoint_id(dir).map(|id| (id, dir)))
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
}

impl MemoryStore {
    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A poisoned lock only means another test thread panicked; the set is still usable.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `<dir>/_metadata`.
    pub fn put_metadata(&self, dir: &str) {
        self.objects().insert(join(dir, "_metadata"));
    }

    pub fn contains_dir(&self, dir: &str) -> bool {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.objects().iter().any(|o| o.starts_with(&prefix))
    }
}

impl CheckpointStore for MemoryStore {
    fn can_list(&self, _uri: &str) -> bool {
        true
    }

    fn latest_completed_checkpoint<'a>(
        &'a self,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>> {
        Box::pin(async move {
            let base = join(storage, job_id);
            let objects = self.objects();
            Ok(latest_from_objects(
                &base,
                objects.iter().map(String::as_str),
            ))
        })
    }

    fn has_metadata<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(async move { Ok(Some(self.objects().contains(&join(dir, "_metadata")))) })
    }

    fn delete_dir<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let prefix = format!("{}/", dir.trim_end_matches('/'));
            self.objects().retain(|o| !o.starts_with(&prefix));
            Ok(())
        })
    }
}

/// `file:///path` and plain paths (a volume shared with the workers).
#[derive(Debug, Clone, Default)]
pub struct LocalStore;

fn local_path(uri: &str) -> Option<std::path::PathBuf> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Some(path.into());
    }
    (!uri.contains("://")).then(|| uri.into())
}

impl CheckpointStore for LocalStore {
    fn can_list(&self, uri: &str) -> bool {
        local_path(uri).is_some()
    }

    fn latest_completed_checkpoint<'a>(
        &'a self,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>> {
        Box::pin(async move {
            let Some(root) = local_path(storage) else {
                return Ok(None);
            };
            let dir = root.join(job_id);
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(Error::Storage {
                        uri: dir.display().to_string(),
                        message: e.to_string(),
                    });
                }
            };
            let mut best: Option<StoredCheckpoint> = None;
            while let Some(entry) = entries.next_entry().await.map_err(|e| Error::Storage {
                uri: dir.display().to_string(),
                message: e.to_string(),
            })? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = checkpoint_id(&name) else {
                    continue;
                };
                let complete = tokio::fs::try_exists(entry.path().join("_metadata"))
                    .await
                    .unwrap_or(false);
                if complete && best.as_ref().is_none_or(|b| id > b.id) {
                    best = Some(StoredCheckpoint {
                        id,
                        path: join(&join(storage, job_id), &name),
                    });
                }
            }
            Ok(best)
        })
    }

    fn has_metadata<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(async move {
            let Some(path) = local_path(dir) else {
                return Ok(None);
            };
            Ok(Some(
                tokio::fs::try_exists(path.join("_metadata"))
                    .await
                    .unwrap_or(false),
            ))
        })
    }

    fn delete_dir<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(path) = local_path(dir) else {
                return Err(Error::Storage {
                    uri: dir.into(),
                    message: "deleting from this storage scheme is not supported yet".into(),
                });
            };
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::Storage {
                    uri: dir.into(),
                    message: e.to_string(),
                }),
            }
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
            .latest_completed_checkpoint("s3://b/chk", "job")
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
        let latest = LocalStore
            .latest_completed_checkpoint(&storage, "job")
            .await
            .expect("lists");
        assert_eq!(latest.map(|c| c.id), Some(3));
        let chk3 = format!("{storage}/job/chk-3");
        assert_eq!(
            LocalStore.has_metadata(&chk3).await.expect("stat"),
            Some(true)
        );
        LocalStore.delete_dir(&chk3).await.expect("delete");
        assert_eq!(
            LocalStore.has_metadata(&chk3).await.expect("stat"),
            Some(false)
        );
        assert_eq!(
            LocalStore.has_metadata("s3://b/x").await.expect("stat"),
            None
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
