//! Object storage behind one type: local folders (`file:///abs/path` or a plain path) and S3
//! (`s3://bucket/prefix`).
//!
//! Used for checkpoints, the file source and the exactly-once file sink. Keys are
//! '/'-separated and relative to the location's root.
//!
//! # Contract
//!
//! Both backends behave the same from the caller's point of view, so code (and tests) written
//! against a local folder behave identically on S3:
//!
//! * **Keys** are relative, '/'-separated, non-empty, and may not contain empty, `.` or `..`
//!   segments (so a key can never escape its root, locally or by confusing S3 tooling). Invalid
//!   keys fail with [`StorageError::InvalidUri`]. File names starting with `.tmp-` are reserved
//!   for in-flight local writes and cannot be written.
//! * **`put` is atomic**: readers see either the old object or the complete new one. Locally this
//!   is a temp file in the same directory, fsync, rename and a directory fsync; on S3 single-object
//!   PUTs are atomic by nature.
//! * **`list(prefix)`** is a plain string-prefix match on keys (`list("chk-")` finds `chk-1/x` and
//!   `chk-2.meta`), recursive, sorted by key (byte order, as S3 does), and only reports objects,
//!   never directories.
//! * **`delete_prefix(prefix)`** treats `prefix` as a *folder*: it removes every key under
//!   `prefix/` (a trailing '/' is optional; `""` means the whole root). It deliberately does not
//!   use string-prefix semantics, so `delete_prefix("chk-5")` can never remove `chk-50/...`.
//! * **Missing objects**: `get`/`get_range`/`rename` fail with [`StorageError::NotFound`], `head`
//!   returns `None`, `delete` succeeds. A missing *bucket* is not a missing object: it is reported
//!   as [`StorageError::S3`], so a misconfiguration never looks like "no checkpoint yet".
//! * **`rename`** is atomic locally. On S3 it is CopyObject + DeleteObject (S3 has no rename), so a
//!   crash in between leaves both keys; callers must tolerate seeing both.
//! * **`put_if_absent`** creates an object only if no object has the key, atomically: of two
//!   writers of one key exactly one creates it and the other learns it lost. Locally this is a
//!   hard link of a synced temp file (`link` fails on an existing name); on S3 a conditional
//!   PutObject with `If-None-Match: *` (answered 412 when the key exists). Checkpoint fencing
//!   rests on it (`checkpoint::coordinator`). Beware test servers: s3s-fs 0.14.1 honours the
//!   header but checks and writes in two steps, so two PUTs racing in the same instant can both
//!   succeed there; AWS S3 and MinIO decide atomically.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub mod checkpoints;
mod local;
mod location;
mod s3;
#[cfg(test)]
mod tests;

pub use location::Location;

use local::LocalStore;
use s3::S3Store;

/// Errors of every storage operation. Each variant names the full URI involved so the message
/// is actionable on its own.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("object not found: {uri}")]
    NotFound { uri: String },
    #[error("I/O error on {uri}: {source}")]
    Io {
        uri: String,
        #[source]
        source: std::io::Error,
    },
    /// `message` is the full `DisplayErrorContext` of the SDK error (it includes the cause chain,
    /// e.g. "connection refused", which the plain Display of an `SdkError` omits).
    #[error("S3 {op} failed on {uri}: {message}")]
    S3 {
        op: &'static str,
        uri: String,
        message: String,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Connection settings for s3:// locations; defined with the job document, which carries them.
pub use weir_spec::S3Options;
/// What an S3 client is for, which decides its timeouts.
pub use weir_spec::s3::Purpose;

/// Used by both backends: local files, and local files uploaded to or downloaded from S3.
fn io_err(uri: &str, source: io::Error) -> StorageError {
    StorageError::Io {
        uri: uri.to_string(),
        source,
    }
}

/// One object in a listing. `key` is relative to the store's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// Handle to a storage root. Cheap to clone (Arc inside). All keys relative to the root location.
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Inner>,
}

struct Inner {
    location: Location,
    backend: Backend,
    /// The settings the store was opened with, for related locations (`open_related`).
    s3: S3Options,
}

enum Backend {
    Local(LocalStore),
    S3(S3Store),
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

/// Files larger than this are uploaded with multipart upload by `put_file` (a single PUT is
/// limited to 5 GiB and cannot resume; parts also bound what one failed request wastes).
pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Prefix of temp files written by local atomic puts; `list` skips them.
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// A full object key: non-empty, every segment a proper name.
    Object,
    /// A listing/deletion prefix: may be empty, may end in '/', and its last segment may be a
    /// partial name.
    Prefix,
}

/// Returns why `key` is unacceptable, or `None` when it is fine.
fn key_problem(key: &str, kind: KeyKind) -> Option<&'static str> {
    if key.is_empty() {
        return (kind == KeyKind::Object).then_some("empty key");
    }
    if key.starts_with('/') {
        return Some("keys are relative to the store root and must not start with '/'");
    }
    if key.contains('\0') {
        return Some("keys must not contain NUL");
    }
    if kind == KeyKind::Object && key.ends_with('/') {
        return Some("object keys must not end with '/'");
    }
    let mut segments: Vec<&str> = key.split('/').collect();
    if kind == KeyKind::Prefix {
        // The last segment of a prefix is a partial name (or "" after a trailing '/'), never used
        // as a path component on its own.
        segments.pop();
    }
    for seg in segments {
        if seg.is_empty() {
            return Some("empty path segment ('//')");
        }
        if seg == "." || seg == ".." {
            return Some("'.' and '..' segments are not allowed");
        }
    }
    None
}

impl ObjectStore {
    /// Opens a store rooted at `location`. Builds the S3 client for s3:// locations but performs
    /// no network I/O; connection problems surface on the first operation, a missing
    /// credential source right here ([`weir_spec::s3::client`]).
    pub async fn open(location: &Location, s3: &S3Options) -> Result<ObjectStore> {
        Self::open_for(location, s3, Purpose::Transfer).await
    }

    /// Like [`ObjectStore::open`], with S3 timeouts for `purpose`: the worker moves state
    /// ([`Purpose::Transfer`]), the operator only lists and checks ([`Purpose::Control`]).
    pub async fn open_for(
        location: &Location,
        s3: &S3Options,
        purpose: Purpose,
    ) -> Result<ObjectStore> {
        let backend = match location {
            Location::Local(root) => Backend::Local(LocalStore::new(root.clone())),
            Location::S3 { bucket, prefix } => {
                Backend::S3(S3Store::open(s3, purpose, bucket, prefix, &location.uri()).await?)
            }
        };
        Ok(ObjectStore {
            inner: Arc::new(Inner {
                location: location.clone(),
                backend,
                s3: s3.clone(),
            }),
        })
    }

    /// The root this store's keys are relative to.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// Full URI of a key, for error messages.
    pub fn uri(&self, key: &str) -> String {
        let base = self.inner.location.uri();
        if key.is_empty() {
            base
        } else if base.ends_with('/') {
            format!("{base}{key}")
        } else {
            format!("{base}/{key}")
        }
    }

    /// Store rooted at `root/sub`, sharing the S3 client (and its connection pool).
    pub fn child(&self, sub: &str) -> ObjectStore {
        let location = self.inner.location.join(sub);
        let backend = match &self.inner.backend {
            Backend::Local(local) => Backend::Local(local.child(sub)),
            Backend::S3(s3) => Backend::S3(s3.child(sub)),
        };
        ObjectStore {
            inner: Arc::new(Inner {
                location,
                backend,
                s3: self.inner.s3.clone(),
            }),
        }
    }

    fn check(&self, key: &str, kind: KeyKind) -> Result<()> {
        match key_problem(key, kind) {
            None => Ok(()),
            Some(reason) => Err(StorageError::InvalidUri {
                uri: self.uri(key),
                reason: reason.to_string(),
            }),
        }
    }

    /// Like `check`, plus the reservation of temp-file names for writes.
    fn check_writable(&self, key: &str) -> Result<()> {
        self.check(key, KeyKind::Object)?;
        let name = key.rsplit('/').next().unwrap_or(key);
        if name.starts_with(TEMP_PREFIX) {
            return Err(StorageError::InvalidUri {
                uri: self.uri(key),
                reason: format!("names starting with {TEMP_PREFIX:?} are reserved for temp files"),
            });
        }
        Ok(())
    }

    /// Atomically stores `data` under `key`, replacing any previous object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.check_writable(key)?;
        let uri = self.uri(key);
        tracing::debug!(%uri, len = data.len(), "storage put");
        match &self.inner.backend {
            Backend::Local(local) => local.put(key, data, &uri).await,
            Backend::S3(s3) => s3.put(key, data, &uri).await,
        }
    }

    /// Stores `data` under `key` only if no object has that key: `Ok(true)` when this call
    /// created it, `Ok(false)` when an object was already there (left untouched). Atomic
    /// against other writers of the same key (see the module contract).
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        self.check_writable(key)?;
        let uri = self.uri(key);
        tracing::debug!(%uri, len = data.len(), "storage put_if_absent");
        match &self.inner.backend {
            Backend::Local(local) => local.put_if_absent(key, data, &uri).await,
            Backend::S3(s3) => s3.put_if_absent(key, data, &uri).await,
        }
    }

    /// Like [`ObjectStore::put_file`], but the local file is consumed: on a local store on the
    /// same filesystem it is renamed into place (no copy), otherwise uploaded and removed.
    pub async fn move_file(&self, key: &str, path: &Path) -> Result<()> {
        self.check_writable(key)?;
        let renamed = match &self.inner.backend {
            Backend::Local(local) => local.rename_into_place(key, path, &self.uri(key)).await?,
            Backend::S3(_) => false,
        };
        if renamed {
            return Ok(());
        }
        // E.g. another filesystem, or S3: copy instead.
        self.put_file(key, path).await?;
        let _ = tokio::fs::remove_file(path).await;
        Ok(())
    }

    /// Stores the local file `path` under `key` and leaves the file in place. For files that
    /// never change once written (RocksDB's SST files): a local store on the same filesystem
    /// hard-links the file into place instead of copying it, S3 uploads it like `put_file`.
    pub async fn put_immutable_file(&self, key: &str, path: &Path) -> Result<()> {
        self.check_writable(key)?;
        let linked = match &self.inner.backend {
            Backend::Local(local) => {
                local
                    .hard_link_into_place(key, path, &self.uri(key))
                    .await?
            }
            Backend::S3(_) => false,
        };
        if linked {
            return Ok(());
        }
        self.put_file(key, path).await
    }

    /// Uploads the local file `path` under `key`, atomically like `put`. On S3 the file is
    /// streamed from disk (never held in memory) and files over [`MULTIPART_THRESHOLD`] use
    /// multipart upload.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        self.check_writable(key)?;
        let uri = self.uri(key);
        let src_uri = format!("file://{}", path.display());
        tracing::debug!(%uri, src = %path.display(), "storage put_file");
        match &self.inner.backend {
            Backend::Local(local) => local.put_file(key, path, &uri, &src_uri).await,
            Backend::S3(s3) => s3.put_file(key, path, &uri, &src_uri).await,
        }
    }

    /// Reads a whole object. `NotFound` when missing.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        match &self.inner.backend {
            Backend::Local(local) => local.get(key, &uri).await,
            Backend::S3(s3) => s3.get(key, &uri).await,
        }
    }

    /// Downloads the object `key` into the local file `dest` (replaced if present), streaming
    /// it: the object is never held in memory whole. `NotFound` when missing.
    pub async fn get_file(&self, key: &str, dest: &Path) -> Result<u64> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        match &self.inner.backend {
            Backend::Local(local) => local.get_file(key, dest, &uri).await,
            Backend::S3(s3) => s3.get_file(key, dest, &uri).await,
        }
    }

    /// Like [`ObjectStore::get_file`] for objects stored by
    /// [`ObjectStore::put_immutable_file`]: a local store hard-links instead of copying. The
    /// caller must never write to `dest`.
    pub async fn get_immutable_file(&self, key: &str, dest: &Path) -> Result<u64> {
        self.check(key, KeyKind::Object)?;
        let linked = match &self.inner.backend {
            Backend::Local(local) => local.hard_link_out(key, dest, &self.uri(key)).await?,
            Backend::S3(_) => None,
        };
        match linked {
            Some(size) => Ok(size),
            None => self.get_file(key, dest).await,
        }
    }

    /// Opens `location` with this store's S3 settings, sharing its client when both are on
    /// S3: for locations recorded in storage itself (a claim naming a savepoint).
    pub async fn open_related(&self, location: &Location) -> Result<ObjectStore> {
        let backend = match (location, &self.inner.backend) {
            (Location::S3 { bucket, prefix }, Backend::S3(s3)) => {
                Backend::S3(s3.with_root(bucket, prefix))
            }
            _ => return ObjectStore::open(location, &self.inner.s3).await,
        };
        Ok(ObjectStore {
            inner: Arc::new(Inner {
                location: location.clone(),
                backend,
                s3: self.inner.s3.clone(),
            }),
        })
    }

    /// The store one folder up, sharing the client; `None` at a bucket or filesystem root.
    pub fn parent(&self) -> Option<ObjectStore> {
        let (location, backend) = match (&self.inner.location, &self.inner.backend) {
            (Location::Local(path), Backend::Local(local)) => (
                Location::Local(path.parent()?.to_path_buf()),
                Backend::Local(local.parent()?),
            ),
            (Location::S3 { bucket, .. }, Backend::S3(s3)) => {
                let up = s3.parent()?;
                (
                    Location::S3 {
                        bucket: bucket.clone(),
                        prefix: up.prefix().to_string(),
                    },
                    Backend::S3(up),
                )
            }
            _ => unreachable!("a store's location and backend are of the same kind"),
        };
        Some(ObjectStore {
            inner: Arc::new(Inner {
                location,
                backend,
                s3: self.inner.s3.clone(),
            }),
        })
    }

    /// Reads up to `len` bytes starting at `offset`. Returns fewer bytes when the object ends
    /// earlier and an empty buffer at or after its end. `NotFound` when missing.
    pub async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        match &self.inner.backend {
            Backend::Local(local) => local.get_range(key, offset, len, &uri).await,
            Backend::S3(s3) => s3.get_range(key, offset, len, &uri).await,
        }
    }

    /// Size of an object, `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        match &self.inner.backend {
            Backend::Local(local) => local.head(key, &uri).await,
            Backend::S3(s3) => s3.head(key, &uri).await,
        }
    }

    /// All objects whose key starts with `prefix` (string match; `""` = everything), recursive,
    /// keys relative to the root, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.check(prefix, KeyKind::Prefix)?;
        let uri = self.uri(prefix);
        match &self.inner.backend {
            Backend::Local(local) => local.list(prefix, &uri).await,
            Backend::S3(s3) => s3.list(prefix, &uri).await,
        }
    }

    /// Deletes one object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        tracing::debug!(%uri, "storage delete");
        match &self.inner.backend {
            Backend::Local(local) => local.delete(key, &uri).await,
            Backend::S3(s3) => s3.delete(key, &uri).await,
        }
    }

    /// Deletes everything under the folder `prefix` (`prefix/...`; trailing '/' optional; `""`
    /// = the whole root). Missing is fine. See the module docs for why this is not a plain
    /// string-prefix match.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        self.check(prefix, KeyKind::Prefix)?;
        let folder = prefix.trim_end_matches('/');
        // The last segment is a whole folder name here, so it must be a proper name too.
        if folder
            .rsplit('/')
            .next()
            .is_some_and(|s| s == "." || s == "..")
        {
            return Err(StorageError::InvalidUri {
                uri: self.uri(prefix),
                reason: "'.' and '..' segments are not allowed".to_string(),
            });
        }
        let uri = self.uri(folder);
        tracing::debug!(%uri, "storage delete_prefix");
        match &self.inner.backend {
            Backend::Local(local) => local.delete_folder(folder, &uri).await,
            Backend::S3(s3) => s3.delete_folder(folder, &uri).await,
        }
    }

    /// Moves `from` to `to`, replacing `to`. Atomic locally; CopyObject + DeleteObject on S3.
    /// `NotFound` when `from` is missing.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.check(from, KeyKind::Object)?;
        self.check_writable(to)?;
        let from_uri = self.uri(from);
        let to_uri = self.uri(to);
        tracing::debug!(from = %from_uri, to = %to_uri, "storage rename");
        match &self.inner.backend {
            Backend::Local(local) => local.rename(from, to, &from_uri, &to_uri).await,
            Backend::S3(s3) => s3.rename(from, to, &from_uri).await,
        }
    }
}
