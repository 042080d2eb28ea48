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
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use bytes::Bytes;

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

/// A parsed location: where a storage root lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An absolute local directory.
    Local(PathBuf),
    /// A bucket and a key prefix without leading or trailing '/' (empty = whole bucket).
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Accepts `s3://bucket[/prefix]`, `file:///abs/path`, or a plain filesystem path (relative
    /// resolved against cwd). Errors (InvalidUri) on empty bucket, `file://relative`, other
    /// schemes.
    pub fn parse(uri: &str) -> Result<Location> {
        let invalid = |reason: &str| StorageError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if uri.is_empty() {
            return Err(invalid("empty location"));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("missing bucket name"));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty()
                && prefix
                    .split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(invalid(
                    "empty, '.' and '..' segments are not allowed in an S3 prefix",
                ));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "file:// URIs must be absolute (file:///abs/path); use a plain path for relative ones",
                ));
            }
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?} (expected s3://, file:// or a plain path)"
            )));
        }
        // `absolute` does not touch the filesystem beyond reading cwd, so a location can be
        // parsed before its folder exists.
        std::path::absolute(uri)
            .map(Location::Local)
            .map_err(|e| invalid(&format!("cannot resolve relative path: {e}")))
    }

    /// Child location `self/sub`. `sub` is split on '/'; empty and `.` segments are ignored and
    /// `..` segments are dropped (with a warning) so a child can never escape its parent.
    pub fn join(&self, sub: &str) -> Location {
        match self {
            Location::Local(root) => Location::Local(join_local(root, sub)),
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: join_prefix(prefix, sub),
            },
        }
    }

    /// Canonical URI: `s3://bucket/prefix` (or `s3://bucket`) or `file:///abs`.
    pub fn uri(&self) -> String {
        match self {
            Location::Local(path) => format!("file://{}", path.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Segments of a sub-location: empty and `.` segments are ignored and `..` segments are dropped
/// (with a warning) so a child can never escape its parent.
fn sub_segments(sub: &str) -> impl Iterator<Item = &str> {
    sub.split('/').filter(move |seg| {
        if *seg == ".." {
            tracing::warn!(sub, "ignoring '..' segment in storage sub-location");
        }
        !seg.is_empty() && *seg != "." && *seg != ".."
    })
}

fn join_local(root: &Path, sub: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(sub_segments(sub));
    path
}

fn join_prefix(prefix: &str, sub: &str) -> String {
    let mut out = prefix.to_string();
    for seg in sub_segments(sub) {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(seg);
    }
    out
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
    Local {
        root: PathBuf,
    },
    S3 {
        client: Client,
        bucket: String,
        prefix: String,
    },
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
/// Smallest part size used for multipart uploads; grown when a file would need > 10,000 parts.
const MIN_PART_SIZE: u64 = 16 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// DeleteObjects accepts at most 1000 keys per request.
const DELETE_BATCH: usize = 1000;
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
        let backend = match location {
            Location::Local(root) => Backend::Local { root: root.clone() },
            Location::S3 { bucket, prefix } => Backend::S3 {
                client: weir_spec::s3::client(s3, None).await.map_err(|message| {
                    StorageError::S3 {
                        op: "configure the client",
                        uri: location.uri(),
                        message,
                    }
                })?,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            },
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
        // Same joining rules as `Location::join`, so backend and location stay in step.
        let backend = match &self.inner.backend {
            Backend::Local { root } => Backend::Local {
                root: join_local(root, sub),
            },
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => Backend::S3 {
                client: client.clone(),
                bucket: bucket.clone(),
                prefix: join_prefix(prefix, sub),
            },
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
            Backend::Local { root } => {
                let path = local_path(root, key);
                let err_uri = uri.clone();
                blocking(&uri, move || {
                    write_atomic(&path, |file| io::Write::write_all(file, &data))
                        .map_err(|source| io_err(&err_uri, source))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(full_key(prefix, key))
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| s3_err("PutObject", &uri, &e))?;
                Ok(())
            }
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
            Backend::Local { root } => {
                let path = local_path(root, key);
                let err_uri = uri.clone();
                blocking(&uri, move || {
                    create_new_atomic(&path, |file| io::Write::write_all(file, &data))
                        .map_err(|source| io_err(&err_uri, source))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                let full = full_key(prefix, key);
                let mut conflicts = 0;
                loop {
                    let sent = client
                        .put_object()
                        .bucket(bucket)
                        .key(&full)
                        .if_none_match("*")
                        .body(ByteStream::from(data.clone()))
                        .send()
                        .await;
                    match sent {
                        Ok(_) => return Ok(true),
                        Err(e) if is_precondition_failed(&e) => return Ok(false),
                        // 409 ConditionalRequestConflict: another conditional write of this
                        // key was in progress; AWS asks to retry, which then gets 200 or 412.
                        Err(e) if status_of(&e) == Some(409) && conflicts < 5 => {
                            conflicts += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(50 * conflicts))
                                .await;
                        }
                        Err(e) => return Err(s3_err("PutObject (If-None-Match)", &uri, &e)),
                    }
                }
            }
        }
    }

    /// Uploads the local file `path` under `key`, atomically like `put`. On S3 the file is
    /// streamed from disk (never held in memory) and files over [`MULTIPART_THRESHOLD`] use
    /// multipart upload.
    /// Like [`ObjectStore::put_file`], but the local file is consumed: on a local store on the
    /// same filesystem it is renamed into place (no copy), otherwise uploaded and removed.
    pub async fn move_file(&self, key: &str, path: &Path) -> Result<()> {
        self.check_writable(key)?;
        if let Backend::Local { root } = &self.inner.backend {
            let dst = local_path(root, key);
            let src = path.to_path_buf();
            let uri = self.uri(key);
            let renamed = blocking(&uri.clone(), move || {
                let renamed = (|| {
                    let dir = dst.parent().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "no parent directory")
                    })?;
                    fs::create_dir_all(dir)?;
                    // The source must be durable before it becomes the object.
                    File::open(&src)?.sync_all()?;
                    fs::rename(&src, &dst)?;
                    sync_dir(dir)
                })();
                Ok(renamed.is_ok())
            })
            .await?;
            if renamed {
                return Ok(());
            }
            // E.g. another filesystem: copy instead.
        }
        self.put_file(key, path).await?;
        let _ = tokio::fs::remove_file(path).await;
        Ok(())
    }

    /// Stores the local file `path` under `key` and leaves the file in place. For files that
    /// never change once written (RocksDB's SST files): a local store on the same filesystem
    /// hard-links the file into place instead of copying it, S3 uploads it like `put_file`.
    pub async fn put_immutable_file(&self, key: &str, path: &Path) -> Result<()> {
        self.check_writable(key)?;
        if let Backend::Local { root } = &self.inner.backend {
            let dst = local_path(root, key);
            let src = path.to_path_buf();
            let uri = self.uri(key);
            let linked = blocking(&uri.clone(), move || {
                Ok(link_atomic(&src, &dst).inspect_err(|e| {
                    tracing::debug!(%uri, error = %e, "hard link failed, copying instead");
                }))
            })
            .await?;
            if linked.is_ok() {
                return Ok(());
            }
        }
        self.put_file(key, path).await
    }

    pub async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        self.check_writable(key)?;
        let uri = self.uri(key);
        let src_uri = format!("file://{}", path.display());
        tracing::debug!(%uri, src = %path.display(), "storage put_file");
        match &self.inner.backend {
            Backend::Local { root } => {
                let dst = local_path(root, key);
                let src = path.to_path_buf();
                let err_uri = uri.clone();
                blocking(&uri, move || {
                    // Open the source first so a missing source is reported against its own URI.
                    let mut source = File::open(&src).map_err(|e| io_err(&src_uri, e))?;
                    write_atomic(&dst, |file| io::copy(&mut source, file).map(drop))
                        .map_err(|e| io_err(&err_uri, e))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                let size = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| io_err(&src_uri, e))?
                    .len();
                let full = full_key(prefix, key);
                if size <= MULTIPART_THRESHOLD {
                    let body = ByteStream::from_path(path)
                        .await
                        .map_err(|e| io_err(&src_uri, io::Error::other(e)))?;
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(full)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| s3_err("PutObject", &uri, &e))?;
                    Ok(())
                } else {
                    multipart_upload(client, bucket, &full, path, size, &uri, &src_uri).await
                }
            }
        }
    }

    /// Reads a whole object. `NotFound` when missing.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        match &self.inner.backend {
            Backend::Local { root } => {
                let path = local_path(root, key);
                let err_uri = uri.clone();
                blocking(&uri, move || match fs::read(&path) {
                    Ok(data) => Ok(Bytes::from(data)),
                    Err(e) => Err(not_found_or_io(&err_uri, e)),
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                let body = get_object_body(client, bucket, &full_key(prefix, key), &uri).await?;
                collect_body(body, &uri).await
            }
        }
    }

    /// Downloads the object `key` into the local file `dest` (replaced if present), streaming
    /// it: the object is never held in memory whole. `NotFound` when missing.
    pub async fn get_file(&self, key: &str, dest: &Path) -> Result<u64> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        match &self.inner.backend {
            Backend::Local { root } => {
                let src = local_path(root, key);
                let dest = dest.to_path_buf();
                let err_uri = uri.clone();
                blocking(&uri, move || {
                    fs::copy(&src, &dest).map_err(|e| not_found_or_io(&err_uri, e))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                let mut body =
                    get_object_body(client, bucket, &full_key(prefix, key), &uri).await?;
                let dest_uri = format!("file://{}", dest.display());
                let mut file = tokio::fs::File::create(dest)
                    .await
                    .map_err(|e| io_err(&dest_uri, e))?;
                let mut written = 0u64;
                while let Some(chunk) = body
                    .try_next()
                    .await
                    .map_err(|e| io_err(&uri, io::Error::other(e)))?
                {
                    tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                        .await
                        .map_err(|e| io_err(&dest_uri, e))?;
                    written += chunk.len() as u64;
                }
                tokio::io::AsyncWriteExt::flush(&mut file)
                    .await
                    .map_err(|e| io_err(&dest_uri, e))?;
                Ok(written)
            }
        }
    }

    /// Like [`ObjectStore::get_file`] for objects stored by
    /// [`ObjectStore::put_immutable_file`]: a local store hard-links instead of copying. The
    /// caller must never write to `dest`.
    pub async fn get_immutable_file(&self, key: &str, dest: &Path) -> Result<u64> {
        self.check(key, KeyKind::Object)?;
        if let Backend::Local { root } = &self.inner.backend {
            let src = local_path(root, key);
            let dest = dest.to_path_buf();
            let uri = self.uri(key);
            let linked = blocking(&uri.clone(), move || {
                Ok(fs::hard_link(&src, &dest).and_then(|()| fs::metadata(&dest)))
            })
            .await?;
            match linked {
                Ok(meta) => return Ok(meta.len()),
                Err(e) if is_missing(&e) => return Err(StorageError::NotFound { uri }),
                Err(_) => {} // e.g. another filesystem: copy
            }
        }
        self.get_file(key, dest).await
    }

    /// Opens `location` with this store's S3 settings, sharing its client when both are on
    /// S3: for locations recorded in storage itself (a claim naming a savepoint).
    pub async fn open_related(&self, location: &Location) -> Result<ObjectStore> {
        let backend = match (location, &self.inner.backend) {
            (Location::S3 { bucket, prefix }, Backend::S3 { client, .. }) => Backend::S3 {
                client: client.clone(),
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            },
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
            (Location::Local(path), Backend::Local { root }) => (
                Location::Local(path.parent()?.to_path_buf()),
                Backend::Local {
                    root: root.parent()?.to_path_buf(),
                },
            ),
            (
                Location::S3 { bucket, .. },
                Backend::S3 {
                    client,
                    bucket: b,
                    prefix,
                },
            ) => {
                if prefix.is_empty() {
                    return None;
                }
                let up = prefix.rsplit_once('/').map_or("", |(up, _)| up).to_string();
                (
                    Location::S3 {
                        bucket: bucket.clone(),
                        prefix: up.clone(),
                    },
                    Backend::S3 {
                        client: client.clone(),
                        bucket: b.clone(),
                        prefix: up,
                    },
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
            Backend::Local { root } => {
                let path = local_path(root, key);
                let err_uri = uri.clone();
                blocking(&uri, move || {
                    read_range(&path, offset, len).map_err(|e| not_found_or_io(&err_uri, e))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                if len == 0 {
                    // An empty Range header is invalid; still report a missing object.
                    return match self.head(key).await? {
                        Some(_) => Ok(Bytes::new()),
                        None => Err(StorageError::NotFound { uri }),
                    };
                }
                let last = offset.saturating_add(len - 1);
                let result = client
                    .get_object()
                    .bucket(bucket)
                    .key(full_key(prefix, key))
                    .range(format!("bytes={offset}-{last}"))
                    .send()
                    .await;
                let out = match result {
                    Ok(out) => out,
                    Err(e) if is_missing_object(&e) => return Err(StorageError::NotFound { uri }),
                    // 416: the range starts at or after the end (including any range of an
                    // empty object), which our contract defines as an empty read.
                    Err(e) if is_invalid_range(&e) => return Ok(Bytes::new()),
                    Err(e) => return Err(s3_err("GetObject", &uri, &e)),
                };
                let ranged = out.content_range().is_some();
                let data = collect_body(out.body, &uri).await?;
                if ranged {
                    Ok(data)
                } else {
                    // A server that ignores Range sends the whole object; cut it down ourselves.
                    Ok(slice_range(data, offset, len))
                }
            }
        }
    }

    /// Size of an object, `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        match &self.inner.backend {
            Backend::Local { root } => {
                let path = local_path(root, key);
                let err_uri = uri.clone();
                blocking(&uri, move || match fs::metadata(&path) {
                    Ok(md) if md.is_file() => Ok(Some(md.len())),
                    // A directory is a "folder" of other keys, not an object.
                    Ok(_) => Ok(None),
                    Err(e) if is_missing(&e) => Ok(None),
                    Err(e) => Err(io_err(&err_uri, e)),
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                match client
                    .head_object()
                    .bucket(bucket)
                    .key(full_key(prefix, key))
                    .send()
                    .await
                {
                    Ok(out) => Ok(Some(
                        u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0),
                    )),
                    // HEAD responses have no body, so a 404 carries no error code to tell a
                    // missing key from a missing bucket; treat it as a missing key.
                    Err(e) if is_missing_object(&e) || status_of(&e) == Some(404) => Ok(None),
                    Err(e) => Err(s3_err("HeadObject", &uri, &e)),
                }
            }
        }
    }

    /// All objects whose key starts with `prefix` (string match; `""` = everything), recursive,
    /// keys relative to the root, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.check(prefix, KeyKind::Prefix)?;
        let uri = self.uri(prefix);
        match &self.inner.backend {
            Backend::Local { root } => {
                let root = root.clone();
                let prefix = prefix.to_string();
                let err_uri = uri.clone();
                blocking(&uri, move || {
                    list_local(&root, &prefix).map_err(|e| io_err(&err_uri, e))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix: root,
            } => {
                let mut out = Vec::new();
                list_s3(client, bucket, root, prefix, &uri, |page| {
                    out.extend(page);
                    async { Ok(()) }
                })
                .await?;
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
        }
    }

    /// Deletes one object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.check(key, KeyKind::Object)?;
        let uri = self.uri(key);
        tracing::debug!(%uri, "storage delete");
        match &self.inner.backend {
            Backend::Local { root } => {
                let path = local_path(root, key);
                let err_uri = uri.clone();
                blocking(&uri, move || match fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if is_missing(&e) => Ok(()),
                    Err(e) => Err(io_err(&err_uri, e)),
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                match client
                    .delete_object()
                    .bucket(bucket)
                    .key(full_key(prefix, key))
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    // S3 itself answers 204 for missing keys; some compatible servers do not.
                    Err(e) if is_missing_object(&e) => Ok(()),
                    Err(e) => Err(s3_err("DeleteObject", &uri, &e)),
                }
            }
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
            Backend::Local { root } => {
                let dir = local_path(root, folder);
                let whole_root = folder.is_empty();
                let err_uri = uri.clone();
                blocking(&uri, move || {
                    remove_local_tree(&dir, whole_root).map_err(|e| io_err(&err_uri, e))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix: root,
            } => {
                let list_prefix = if folder.is_empty() {
                    String::new()
                } else {
                    format!("{folder}/")
                };
                // Delete page by page: each listing page holds at most 1000 keys, exactly one
                // DeleteObjects batch, so memory stays bounded for huge prefixes.
                list_s3(client, bucket, root, &list_prefix, &uri, |page| {
                    let keys: Vec<String> =
                        page.into_iter().map(|m| full_key(root, &m.key)).collect();
                    delete_batch(client, bucket, keys, &uri)
                })
                .await
            }
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
            Backend::Local { root } => {
                let src = local_path(root, from);
                let dst = local_path(root, to);
                let join_uri = from_uri.clone();
                blocking(&join_uri, move || {
                    match fs::symlink_metadata(&src) {
                        Ok(_) => {}
                        Err(e) => return Err(not_found_or_io(&from_uri, e)),
                    }
                    let dir = parent_dir(&dst)?;
                    fs::create_dir_all(dir).map_err(|e| io_err(&to_uri, e))?;
                    fs::rename(&src, &dst).map_err(|e| not_found_or_io(&from_uri, e))?;
                    sync_dir(dir).map_err(|e| io_err(&to_uri, e))
                })
                .await
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                let src_key = full_key(prefix, from);
                let copy = client
                    .copy_object()
                    .bucket(bucket)
                    .key(full_key(prefix, to))
                    .copy_source(copy_source(bucket, &src_key))
                    .send()
                    .await;
                match copy {
                    Ok(_) => {}
                    Err(e) if is_missing_object(&e) => {
                        return Err(StorageError::NotFound { uri: from_uri });
                    }
                    Err(e) => return Err(s3_err("CopyObject", &from_uri, &e)),
                }
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(src_key)
                    .send()
                    .await
                    .map_err(|e| s3_err("DeleteObject", &from_uri, &e))?;
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// S3 helpers
// ---------------------------------------------------------------------------------------------

/// Key inside the bucket for a key relative to the store root.
fn full_key(root_prefix: &str, key: &str) -> String {
    if root_prefix.is_empty() {
        key.to_string()
    } else {
        format!("{root_prefix}/{key}")
    }
}

fn s3_err<E: std::error::Error + 'static>(op: &'static str, uri: &str, err: &E) -> StorageError {
    StorageError::S3 {
        op,
        uri: uri.to_string(),
        message: DisplayErrorContext(err).to_string(),
    }
}

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// True when the service said the *object* does not exist. A missing bucket (`NoSuchBucket`,
/// also a 404) is deliberately excluded: that is a configuration error, not an absent object.
fn is_missing_object<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err.as_service_error().and_then(|e| e.code()) {
        Some(code) => code == "NoSuchKey" || code == "NotFound",
        None => matches!(err, SdkError::ServiceError(_)) && status_of(err) == Some(404),
    }
}

/// 412: a conditional request's precondition (here `If-None-Match: *`) did not hold.
fn is_precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("PreconditionFailed")
        || (matches!(err, SdkError::ServiceError(_)) && status_of(err) == Some(412))
}

fn is_invalid_range<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("InvalidRange")
        || (matches!(err, SdkError::ServiceError(_)) && status_of(err) == Some(416))
}

/// The body of a whole object; `NotFound` when it is missing.
async fn get_object_body(
    client: &Client,
    bucket: &str,
    key: &str,
    uri: &str,
) -> Result<ByteStream> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            if is_missing_object(&e) {
                StorageError::NotFound {
                    uri: uri.to_string(),
                }
            } else {
                s3_err("GetObject", uri, &e)
            }
        })?;
    Ok(out.body)
}

async fn collect_body(body: ByteStream, uri: &str) -> Result<Bytes> {
    body.collect()
        .await
        .map(|agg| agg.into_bytes())
        .map_err(|e| s3_err("GetObject", uri, &e))
}

fn slice_range(data: Bytes, offset: u64, len: u64) -> Bytes {
    let total = data.len() as u64;
    let start = offset.min(total);
    let end = offset.saturating_add(len).min(total);
    // Both bounds are <= data.len(), which is a usize, so the conversions are lossless.
    data.slice(start as usize..end as usize)
}

/// `x-amz-copy-source` value: `bucket/key`, URL-encoded (the SDK does not encode it).
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for &b in bucket.as_bytes().iter().chain(b"/").chain(key.as_bytes()) {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lists `root/prefix*` page by page (handling continuation tokens), handing each page, with
/// keys relative to `root`, to `on_page`.
async fn list_s3<F, Fut>(
    client: &Client,
    bucket: &str,
    root: &str,
    prefix: &str,
    uri: &str,
    mut on_page: F,
) -> Result<()>
where
    F: FnMut(Vec<ObjectMeta>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    // With a non-empty root, "" must become "root/" rather than "root", or `root2/...` would
    // match too.
    let strip = if root.is_empty() {
        String::new()
    } else {
        format!("{root}/")
    };
    let full_prefix = format!("{strip}{prefix}");
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&full_prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| s3_err("ListObjectsV2", uri, &e))?;
        let metas = page
            .contents()
            .iter()
            .filter_map(|obj| {
                let key = obj.key()?.strip_prefix(&strip)?;
                Some(ObjectMeta {
                    key: key.to_string(),
                    size: u64::try_from(obj.size().unwrap_or(0)).unwrap_or(0),
                })
            })
            .collect();
        on_page(metas).await?;
        match page.next_continuation_token() {
            Some(next) if page.is_truncated().unwrap_or(false) => token = Some(next.to_string()),
            _ => return Ok(()),
        }
    }
}

async fn delete_batch(client: &Client, bucket: &str, keys: Vec<String>, uri: &str) -> Result<()> {
    for chunk in keys.chunks(DELETE_BATCH) {
        let objects = chunk
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| s3_err("DeleteObjects", uri, &e))?;
        tracing::debug!(%uri, count = objects.len(), "storage delete batch");
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| s3_err("DeleteObjects", uri, &e))?;
        let out = client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| s3_err("DeleteObjects", uri, &e))?;
        // DeleteObjects reports per-key failures in a 200 response; they must not be lost.
        if let Some(first) = out.errors().first() {
            return Err(StorageError::S3 {
                op: "DeleteObjects",
                uri: uri.to_string(),
                message: format!(
                    "{} of {} keys failed, first {:?}: {} {}",
                    out.errors().len(),
                    chunk.len(),
                    first.key().unwrap_or_default(),
                    first.code().unwrap_or_default(),
                    first.message().unwrap_or_default()
                ),
            });
        }
    }
    Ok(())
}

async fn multipart_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    uri: &str,
    src_uri: &str,
) -> Result<()> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .map_err(|e| s3_err("CreateMultipartUpload", uri, &e))?;
    let Some(upload_id) = created.upload_id().map(str::to_string) else {
        return Err(StorageError::S3 {
            op: "CreateMultipartUpload",
            uri: uri.to_string(),
            message: "response has no upload id".to_string(),
        });
    };
    let part_size = MIN_PART_SIZE.max(size.div_ceil(MAX_PARTS));
    tracing::debug!(%uri, size, part_size, "storage multipart upload");

    let upload = async {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < size {
            let len = part_size.min(size - offset);
            // Each part streams its slice straight from disk.
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| io_err(src_uri, io::Error::other(e)))?;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| s3_err("UploadPart", uri, &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            );
            offset += len;
            number += 1;
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_err("CompleteMultipartUpload", uri, &e))?;
        Ok::<(), StorageError>(())
    };
    let result = upload.await;
    if result.is_err() {
        // Abandoned uploads keep their parts (and cost) until aborted; best effort only, the
        // original error is the one worth reporting.
        if let Err(e) = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await
        {
            tracing::warn!(%uri, error = %DisplayErrorContext(&e), "aborting multipart upload failed");
        }
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Local helpers (all synchronous; run on the blocking pool)
// ---------------------------------------------------------------------------------------------

/// Runs filesystem work on tokio's blocking pool so it never stalls the async workers.
async fn blocking<T, F>(uri: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(io_err(uri, io::Error::other(join))),
    }
}

fn io_err(uri: &str, source: io::Error) -> StorageError {
    StorageError::Io {
        uri: uri.to_string(),
        source,
    }
}

/// ENOENT, or ENOTDIR when a parent "folder" of the key is actually a file.
fn is_missing(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn not_found_or_io(uri: &str, err: io::Error) -> StorageError {
    if is_missing(&err) {
        StorageError::NotFound {
            uri: uri.to_string(),
        }
    } else {
        io_err(uri, err)
    }
}

/// Path of a validated key (or folder prefix) under `root`.
fn local_path(root: &Path, key: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(key.split('/').filter(|s| !s.is_empty()));
    path
}

fn parent_dir(path: &Path) -> Result<&Path> {
    path.parent().ok_or_else(|| StorageError::InvalidUri {
        uri: format!("file://{}", path.display()),
        reason: "path has no parent directory".to_string(),
    })
}

fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // pid + counter is unique among concurrent writers on one host; `create_new` below turns
    // any leftover collision from a crashed process into a retryable error, never a clobber.
    format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `dst` atomically: temp file in the same directory (so rename stays on one
/// filesystem), fsync, rename over `dst`, fsync the directory so the rename itself is durable.
fn write_atomic(dst: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let dir = dst
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(temp_name());
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dst)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort; after a successful rename the temp name is already gone.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dst` with the content `write` produces, only if `dst` does not exist: the data goes
/// to a synced temp file that is then hard-linked to `dst` (`link` refuses an existing name,
/// atomically, where `rename` would replace it). `Ok(false)` when `dst` already existed.
fn create_new_atomic(
    dst: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<bool> {
    let dir = dst
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(temp_name());
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        match fs::hard_link(&tmp, dst) {
            Ok(()) => sync_dir(dir).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    // The temp name goes in every case: after a successful link `dst` holds the data.
    let _ = fs::remove_file(&tmp);
    result
}

/// Hard-links `src` to `dst` atomically (link under a temp name, rename over `dst`) and makes
/// it durable: the data (a no-op when the writer already synced it) and the directory entry.
fn link_atomic(src: &Path, dst: &Path) -> io::Result<()> {
    let dir = dst
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    fs::create_dir_all(dir)?;
    File::open(src)?.sync_all()?;
    let tmp = dir.join(temp_name());
    let result = fs::hard_link(src, &tmp)
        .and_then(|()| fs::rename(&tmp, dst))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_range(path: &Path, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    if offset >= size || len == 0 {
        return Ok(Bytes::new());
    }
    let want = len.min(size - offset);
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(usize::MAX));
    // `take` + `read_to_end` tolerates the file shrinking concurrently (returns what exists).
    file.take(want).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

fn list_local(root: &Path, prefix: &str) -> io::Result<Vec<ObjectMeta>> {
    // Start at the deepest folder the prefix names instead of walking the whole root.
    let dir_key = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    let mut out = Vec::new();
    walk_local(&local_path(root, dir_key), dir_key, prefix, &mut out)?;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn walk_local(
    dir: &Path,
    dir_key: &str,
    prefix: &str,
    out: &mut Vec<ObjectMeta>,
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        // Non-UTF-8 names cannot be expressed as keys; in-flight temp files are not objects.
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let key = if dir_key.is_empty() {
            name.to_string()
        } else {
            format!("{dir_key}/{name}")
        };
        // `metadata` follows symlinks, so linked files and folders list like real ones.
        let md = match fs::metadata(entry.path()) {
            Ok(md) => md,
            // Deleted between read_dir and here, or a dangling symlink.
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(e),
        };
        if md.is_dir() {
            let as_folder = format!("{key}/");
            if as_folder.starts_with(prefix) || prefix.starts_with(&as_folder) {
                walk_local(&entry.path(), &key, prefix, out)?;
            }
        } else if md.is_file() && key.starts_with(prefix) {
            out.push(ObjectMeta {
                key,
                size: md.len(),
            });
        }
    }
    Ok(())
}

fn remove_local_tree(dir: &Path, whole_root: bool) -> io::Result<()> {
    if whole_root {
        // Keep the root folder itself: it may be a mount point or have been created with
        // specific permissions; S3 has no notion of it either.
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            remove_any(&entry.path())?;
        }
        return Ok(());
    }
    match fs::symlink_metadata(dir) {
        Ok(md) if md.is_dir() => remove_any(dir),
        // A plain file named like the folder is an object, not under `folder/`: keep it (S3
        // would too).
        Ok(_) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if !is_missing(&e) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Location {
        Location::parse(s).expect("valid location")
    }

    #[test]
    fn parse_s3() {
        assert_eq!(
            parse("s3://bkt"),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse("s3://bkt/a/b/"),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(parse("s3://bkt/a/b/").uri(), "s3://bkt/a/b");
        assert_eq!(parse("s3://bkt/").uri(), "s3://bkt");
    }

    #[test]
    fn parse_local() {
        assert_eq!(parse("file:///data/x"), Location::Local("/data/x".into()));
        assert_eq!(parse("/data/x"), Location::Local("/data/x".into()));
        assert_eq!(parse("/data/x").uri(), "file:///data/x");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(parse("rel/dir"), Location::Local(cwd.join("rel/dir")));
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "",
            "s3://",
            "s3:///prefix",
            "s3://b/../x",
            "s3://b/a//x",
            "file://relative/x",
            "gs://bucket/x",
            "http://host/x",
        ] {
            match Location::parse(bad) {
                Err(StorageError::InvalidUri { uri, .. }) => assert_eq!(uri, bad),
                other => panic!("{bad:?} should be invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn join_locations() {
        let s3 = parse("s3://b");
        assert_eq!(s3.join("x/y").uri(), "s3://b/x/y");
        assert_eq!(s3.join("x").join("/y/").uri(), "s3://b/x/y");
        assert_eq!(s3.join("").uri(), "s3://b");
        assert_eq!(parse("s3://b/p").join("../q").uri(), "s3://b/p/q");
        assert_eq!(parse("/r").join("a/b"), Location::Local("/r/a/b".into()));
        assert_eq!(
            parse("/r").join("./a/../b"),
            Location::Local("/r/a/b".into())
        );
    }

    #[test]
    fn key_rules() {
        use KeyKind::{Object, Prefix};
        assert!(key_problem("a/b.txt", Object).is_none());
        assert!(key_problem("", Object).is_some());
        assert!(key_problem("", Prefix).is_none());
        assert!(key_problem("chk-", Prefix).is_none());
        assert!(key_problem("dir/", Prefix).is_none());
        assert!(key_problem("dir/", Object).is_some());
        for bad in ["../x", "a/../b", "a/./b", "/abs", "a//b", ".."] {
            assert!(key_problem(bad, Object).is_some(), "{bad}");
        }
        assert!(key_problem("a/../b", Prefix).is_some());
    }

    #[test]
    fn copy_source_is_encoded() {
        assert_eq!(copy_source("b", "a/b c+d.txt"), "b/a/b%20c%2Bd.txt");
        assert_eq!(copy_source("b", "ü"), "b/%C3%BC");
    }

    #[test]
    fn slice_range_bounds() {
        let data = Bytes::from_static(b"0123456789");
        assert_eq!(slice_range(data.clone(), 2, 3), Bytes::from_static(b"234"));
        assert_eq!(slice_range(data.clone(), 8, 10), Bytes::from_static(b"89"));
        assert!(slice_range(data.clone(), 10, 1).is_empty());
        assert!(slice_range(data, u64::MAX, u64::MAX).is_empty());
    }

    async fn local_store() -> (tempfile::TempDir, ObjectStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let loc = Location::parse(dir.path().to_str().expect("utf8")).expect("parse");
        let store = ObjectStore::open(&loc, &S3Options::default())
            .await
            .expect("open");
        (dir, store)
    }

    /// Every file below `dir`, relative, including temp files (which `list` hides).
    fn all_files(dir: &Path) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    let rel = path.strip_prefix(base).expect("under base");
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[tokio::test]
    async fn local_put_get_head() {
        let (dir, store) = local_store().await;
        store
            .put("a/b/c.bin", Bytes::from_static(b"hello"))
            .await
            .expect("put");
        assert_eq!(store.get("a/b/c.bin").await.expect("get"), "hello");
        assert_eq!(store.head("a/b/c.bin").await.expect("head"), Some(5));
        assert_eq!(store.head("a/b").await.expect("head dir"), None);
        assert_eq!(store.head("nope").await.expect("head missing"), None);
        // Overwrite is atomic and leaves no temp files behind.
        store
            .put("a/b/c.bin", Bytes::from_static(b"bye"))
            .await
            .expect("overwrite");
        assert_eq!(store.get("a/b/c.bin").await.expect("get"), "bye");
        assert_eq!(all_files(dir.path()), vec!["a/b/c.bin".to_string()]);
        assert_eq!(
            store.uri("a/b/c.bin"),
            format!("file://{}/a/b/c.bin", dir.path().display())
        );
    }

    #[tokio::test]
    async fn local_put_if_absent_creates_once_and_never_replaces() {
        let (dir, store) = local_store().await;
        let first = store.put_if_absent("chk-1/_metadata", Bytes::from_static(b"mine"));
        assert!(first.await.expect("first create"));
        let second = store.put_if_absent("chk-1/_metadata", Bytes::from_static(b"theirs"));
        assert!(!second.await.expect("second create"), "the key exists");
        assert_eq!(store.get("chk-1/_metadata").await.expect("get"), "mine");
        assert_eq!(all_files(dir.path()), vec!["chk-1/_metadata".to_string()]);

        // Many writers at once: exactly one creates the key.
        let racers = (0..16).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_if_absent("chk-2/_metadata", Bytes::from(format!("writer {i}")))
                    .await
                    .expect("create")
            })
        });
        let mut created = 0;
        for racer in racers {
            created += usize::from(racer.await.expect("join"));
        }
        assert_eq!(created, 1);
    }

    #[tokio::test]
    async fn local_not_found_and_invalid_keys() {
        let (_dir, store) = local_store().await;
        store
            .put("file", Bytes::from_static(b"x"))
            .await
            .expect("put");
        assert!(matches!(
            store.get("missing").await,
            Err(StorageError::NotFound { .. })
        ));
        // A key "below" a plain file is missing too, not an I/O error.
        assert!(matches!(
            store.get("file/below").await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(matches!(
            store.get_range("missing", 0, 4).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(matches!(
            store.rename("missing", "other").await,
            Err(StorageError::NotFound { .. })
        ));
        store.delete("missing").await.expect("delete missing is ok");
        store
            .delete_prefix("missing-dir")
            .await
            .expect("delete_prefix missing is ok");
        for bad in ["../escape", "a/../../b", "/abs", ""] {
            assert!(
                matches!(
                    store.put(bad, Bytes::new()).await,
                    Err(StorageError::InvalidUri { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            store.list("../").await,
            Err(StorageError::InvalidUri { .. })
        ));
        assert!(matches!(
            store.put("d/.tmp-x", Bytes::new()).await,
            Err(StorageError::InvalidUri { .. })
        ));
    }

    #[tokio::test]
    async fn local_get_range() {
        let (_dir, store) = local_store().await;
        store
            .put("r", Bytes::from_static(b"0123456789"))
            .await
            .expect("put");
        assert_eq!(store.get_range("r", 2, 3).await.expect("range"), "234");
        assert_eq!(store.get_range("r", 8, 100).await.expect("tail"), "89");
        assert!(store.get_range("r", 10, 5).await.expect("eof").is_empty());
        assert!(store.get_range("r", 50, 5).await.expect("past").is_empty());
        assert!(store.get_range("r", 0, 0).await.expect("zero").is_empty());
    }

    #[tokio::test]
    async fn local_list_prefix_semantics() {
        let (dir, store) = local_store().await;
        for key in [
            "chk-1/meta",
            "chk-1/state/part-0",
            "chk-2.meta",
            "chk-10/meta",
            "other/x",
            "top",
        ] {
            store
                .put(key, Bytes::from(key.as_bytes().to_vec()))
                .await
                .expect("put");
        }
        // A stray temp file of an in-flight put must not be listed.
        fs::write(dir.path().join("chk-1/.tmp-123-0"), b"partial").expect("temp");
        let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
        assert_eq!(
            keys(store.list("").await.expect("list all")),
            vec![
                "chk-1/meta",
                "chk-1/state/part-0",
                "chk-10/meta",
                "chk-2.meta",
                "other/x",
                "top"
            ]
        );
        assert_eq!(
            keys(store.list("chk-1").await.expect("list")),
            vec!["chk-1/meta", "chk-1/state/part-0", "chk-10/meta"]
        );
        assert_eq!(
            keys(store.list("chk-1/").await.expect("list dir")),
            vec!["chk-1/meta", "chk-1/state/part-0"]
        );
        assert_eq!(
            keys(store.list("chk-1/state/pa").await.expect("list deep")),
            vec!["chk-1/state/part-0"]
        );
        assert!(store.list("nothing/").await.expect("empty").is_empty());
        let sized = store.list("top").await.expect("list top");
        assert_eq!(
            sized,
            vec![ObjectMeta {
                key: "top".into(),
                size: 3
            }]
        );
        // Children see the same objects with shorter keys.
        let child = store.child("chk-1");
        assert_eq!(
            keys(child.list("").await.expect("child list")),
            vec!["meta", "state/part-0"]
        );
        assert_eq!(child.get("meta").await.expect("child get"), "chk-1/meta");
    }

    #[tokio::test]
    async fn local_rename_and_delete_prefix() {
        let (dir, store) = local_store().await;
        store
            .put("a/x", Bytes::from_static(b"1"))
            .await
            .expect("put");
        store.rename("a/x", "b/c/y").await.expect("rename");
        assert_eq!(store.head("a/x").await.expect("head"), None);
        assert_eq!(store.get("b/c/y").await.expect("get"), "1");

        for key in ["chk-5/a", "chk-5/deep/b", "chk-50/a", "chk-5.meta"] {
            store.put(key, Bytes::from_static(b"z")).await.expect("put");
        }
        store.delete_prefix("chk-5").await.expect("delete_prefix");
        let keys: Vec<String> = store
            .list("")
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.key)
            .collect();
        // Folder semantics: chk-50/ and chk-5.meta survive.
        assert_eq!(keys, vec!["b/c/y", "chk-5.meta", "chk-50/a"]);
        store.delete("chk-5.meta").await.expect("delete");
        store.delete_prefix("").await.expect("delete all");
        assert!(store.list("").await.expect("list").is_empty());
        assert!(dir.path().is_dir(), "root folder itself is kept");
    }

    #[tokio::test]
    async fn local_put_file() {
        let (dir, store) = local_store().await;
        let src = dir.path().join("source.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&src, &data).expect("write source");
        store
            .put_file("out/copy.bin", &src)
            .await
            .expect("put_file");
        assert_eq!(store.get("out/copy.bin").await.expect("get"), data);
        match store
            .put_file("out/none.bin", &dir.path().join("missing"))
            .await
        {
            Err(StorageError::Io { uri, .. }) => assert!(uri.ends_with("/missing"), "{uri}"),
            other => panic!("expected Io error, got {other:?}"),
        }
        assert_eq!(
            all_files(&dir.path().join("out")),
            vec!["copy.bin".to_string()]
        );
    }
}
