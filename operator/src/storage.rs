//! What the operator needs from checkpoint storage: the latest completed checkpoint of a job
//! (a `chk-<n>` directory counts only once its `_metadata` exists), whether a savepoint
//! directory is complete, and deleting directories for retention and cleanup.
//!
//! [`SchemeStore`] is what the operator runs with: `s3://` goes to [`S3Store`] (AWS SDK,
//! standard credential chain, endpoint and path style from the StreamJob's `spec.job.s3`),
//! `file://` and plain paths to [`LocalStore`]. [`MemoryStore`] backs the tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::future::BoxFuture;
use weir_spec::S3Options;
use weir_spec::layout;

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
        _s3: &'a S3Options,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>> {
        Box::pin(async move {
            let Some(root) = local_path(storage) else {
                return Ok(None);
            };
            let dir = root.join(job_id);
            let uri = dir.display().to_string();
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(storage_error(&uri, e)),
            };
            let mut best: Option<StoredCheckpoint> = None;
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| storage_error(&uri, e))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = layout::parse_checkpoint_dir(&name) else {
                    continue;
                };
                let complete = tokio::fs::try_exists(entry.path().join(layout::METADATA_OBJECT))
                    .await
                    .unwrap_or(false);
                if complete && best.as_ref().is_none_or(|b| id > b.id) {
                    best = Some(StoredCheckpoint {
                        id,
                        path: join(&layout::job_dir(storage, job_id), &name),
                    });
                }
            }
            Ok(best)
        })
    }

    fn has_metadata<'a>(
        &'a self,
        _s3: &'a S3Options,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(async move {
            let Some(path) = local_path(dir) else {
                return Ok(None);
            };
            Ok(Some(
                tokio::fs::try_exists(path.join(layout::METADATA_OBJECT))
                    .await
                    .unwrap_or(false),
            ))
        })
    }

    fn delete_dir<'a>(&'a self, _s3: &'a S3Options, dir: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(path) = local_path(dir) else {
                return Err(storage_error(dir, "not a local path"));
            };
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(storage_error(dir, e)),
            }
        })
    }
}

/// Picks the store for a URI by its scheme: `s3://` to S3, everything else to the local
/// filesystem. What the operator binary runs with.
#[derive(Debug, Default)]
pub struct SchemeStore {
    local: LocalStore,
    s3: S3Store,
}

impl SchemeStore {
    fn pick(&self, uri: &str) -> &dyn CheckpointStore {
        if uri.starts_with("s3://") {
            &self.s3
        } else {
            &self.local
        }
    }
}

impl CheckpointStore for SchemeStore {
    fn can_list(&self, uri: &str) -> bool {
        self.pick(uri).can_list(uri)
    }

    fn latest_completed_checkpoint<'a>(
        &'a self,
        s3: &'a S3Options,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>> {
        self.pick(storage)
            .latest_completed_checkpoint(s3, storage, job_id)
    }

    fn has_metadata<'a>(
        &'a self,
        s3: &'a S3Options,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        self.pick(dir).has_metadata(s3, dir)
    }

    fn delete_dir<'a>(&'a self, s3: &'a S3Options, dir: &'a str) -> BoxFuture<'a, Result<()>> {
        self.pick(dir).delete_dir(s3, dir)
    }
}

/// `s3://bucket/prefix` through the AWS SDK. Credentials come from the operator pod's
/// environment, IRSA web identity or a profile (for AWS S3 the SDK's default chain, for a
/// custom endpoint the same without EC2 instance metadata, see [`CredentialSources`]);
/// endpoint, region and path style from the StreamJob. One client per distinct setting, built
/// on first use and kept.
#[derive(Default)]
pub struct S3Store {
    clients: tokio::sync::Mutex<HashMap<ClientKey, aws_sdk_s3::Client>>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").finish_non_exhaustive()
    }
}

/// The parts of [`S3Options`] that shape a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    endpoint: Option<String>,
    region: Option<String>,
    force_path_style: bool,
    instance_metadata: bool,
    static_credentials: Option<(String, String)>,
}

/// Keys sent per DeleteObjects request (the S3 maximum).
const DELETE_BATCH: usize = 1000;

/// `s3://bucket/a/b` -> (`bucket`, `a/b`), without trailing slashes.
fn split_s3(uri: &str) -> Result<(String, String)> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| storage_error(uri, "not an s3:// location"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(storage_error(
            uri,
            "no bucket (expected s3://bucket/prefix)",
        ));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// `prefix/` for listing "inside" a prefix; empty for the bucket root.
fn dir_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// One line per error, stable from one attempt to the next: the error chain plus the S3 error
/// code and message, but not the SDK's debug dump (request ids, raw responses), so the same
/// trouble reads the same each reconcile and is logged once.
fn s3_error<E>(operation: &str, uri: &str, error: &SdkError<E>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    let mut message = format!("{operation}: {}", crate::error_chain(error));
    if let Some(service) = error.as_service_error() {
        for detail in [service.code(), service.message()].into_iter().flatten() {
            if !message.contains(detail) {
                message.push_str(": ");
                message.push_str(detail);
            }
        }
    }
    storage_error(uri, message)
}

impl S3Store {
    async fn client(&self, s3: &S3Options, uri: &str) -> Result<aws_sdk_s3::Client> {
        let key = ClientKey {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            force_path_style: s3.force_path_style,
            instance_metadata: s3.instance_metadata,
            static_credentials: s3.static_credentials.clone(),
        };
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = weir_spec::s3::client(s3, weir_spec::s3::Purpose::Control)
            .await
            .map_err(|message| storage_error(uri, message))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Whether `key` exists in `bucket`.
    async fn exists(
        client: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
        uri: &str,
    ) -> Result<bool> {
        match client.head_object().bucket(bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(s3_error("HeadObject", uri, &e)),
        }
    }
}

/// HEAD answers a missing key with a bare 404, which the SDK reports as `NotFound`.
fn is_not_found<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
    let status = error.raw_response().map(|r| r.status().as_u16());
    status == Some(404)
        || matches!(
            error.as_service_error().and_then(|e| e.code()),
            Some("NotFound" | "NoSuchKey")
        )
}

impl CheckpointStore for S3Store {
    fn can_list(&self, uri: &str) -> bool {
        uri.starts_with("s3://")
    }

    fn latest_completed_checkpoint<'a>(
        &'a self,
        s3: &'a S3Options,
        storage: &'a str,
        job_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCheckpoint>>> {
        Box::pin(async move {
            let base = layout::job_dir(storage, job_id);
            let (bucket, prefix) = split_s3(&base)?;
            let client = self.client(s3, &base).await?;
            // One level down only: `chk-<n>/` common prefixes, not every state file.
            let mut ids = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(dir_prefix(&prefix))
                    .delimiter("/")
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| s3_error("ListObjectsV2", &base, &e))?;
                ids.extend(
                    page.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix())
                        .filter_map(|p| p.trim_end_matches('/').rsplit('/').next())
                        .filter_map(layout::parse_checkpoint_dir),
                );
                match page.next_continuation_token() {
                    Some(next) if page.is_truncated().unwrap_or(false) => {
                        token = Some(next.to_string());
                    }
                    _ => break,
                }
            }
            // Newest first: the newest directory may still be in progress (no `_metadata`).
            ids.sort_unstable_by(|a, b| b.cmp(a));
            for id in ids {
                let name = layout::checkpoint_dir(id);
                let dir = join(&base, &name);
                let key = format!("{}{name}/{}", dir_prefix(&prefix), layout::METADATA_OBJECT);
                if Self::exists(&client, &bucket, &key, &dir).await? {
                    return Ok(Some(StoredCheckpoint { id, path: dir }));
                }
            }
            Ok(None)
        })
    }

    fn has_metadata<'a>(
        &'a self,
        s3: &'a S3Options,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(async move {
            let (bucket, prefix) = split_s3(dir)?;
            let client = self.client(s3, dir).await?;
            let key = format!("{}{}", dir_prefix(&prefix), layout::METADATA_OBJECT);
            Self::exists(&client, &bucket, &key, dir).await.map(Some)
        })
    }

    fn delete_dir<'a>(&'a self, s3: &'a S3Options, dir: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (bucket, prefix) = split_s3(dir)?;
            if prefix.is_empty() {
                // A typo in a spec must not empty a whole bucket.
                return Err(storage_error(dir, "refusing to delete a bucket root"));
            }
            let client = self.client(s3, dir).await?;
            loop {
                // Deleting shrinks the listing, so always read the first page again.
                let page = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(dir_prefix(&prefix))
                    .max_keys(i32::try_from(DELETE_BATCH).unwrap_or(i32::MAX))
                    .send()
                    .await
                    .map_err(|e| s3_error("ListObjectsV2", dir, &e))?;
                let objects = page
                    .contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(|key| ObjectIdentifier::builder().key(key).build())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| storage_error(dir, e))?;
                if objects.is_empty() {
                    return Ok(());
                }
                let count = objects.len();
                let delete = Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| storage_error(dir, e))?;
                let out = client
                    .delete_objects()
                    .bucket(&bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| s3_error("DeleteObjects", dir, &e))?;
                // DeleteObjects reports per-key failures inside a 200; they must not be lost.
                if let Some(first) = out.errors().first() {
                    return Err(storage_error(
                        dir,
                        format!(
                            "DeleteObjects: {} of {count} keys failed, first {:?}: {} {}",
                            out.errors().len(),
                            first.key().unwrap_or_default(),
                            first.code().unwrap_or_default(),
                            first.message().unwrap_or_default()
                        ),
                    ));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_locations_split_into_bucket_and_prefix() {
        assert_eq!(
            split_s3("s3://b/chk/job/").expect("valid"),
            ("b".to_string(), "chk/job".to_string())
        );
        assert_eq!(
            split_s3("s3://b").expect("valid"),
            ("b".to_string(), String::new())
        );
        assert!(split_s3("s3:///x").is_err());
        assert!(split_s3("file:///x").is_err());
    }

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
        let latest = LocalStore
            .latest_completed_checkpoint(&S3Options::default(), &storage, "job")
            .await
            .expect("lists");
        assert_eq!(latest.map(|c| c.id), Some(3));
        let chk3 = format!("{storage}/job/chk-3");
        assert_eq!(
            LocalStore
                .has_metadata(&S3Options::default(), &chk3)
                .await
                .expect("stat"),
            Some(true)
        );
        LocalStore
            .delete_dir(&S3Options::default(), &chk3)
            .await
            .expect("delete");
        assert_eq!(
            LocalStore
                .has_metadata(&S3Options::default(), &chk3)
                .await
                .expect("stat"),
            Some(false)
        );
        assert_eq!(
            LocalStore
                .has_metadata(&S3Options::default(), "s3://b/x")
                .await
                .expect("stat"),
            None
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
