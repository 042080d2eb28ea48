//! The local-folder backend. All filesystem work is synchronous and runs on tokio's blocking
//! pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::location::join_local;
use super::{ObjectMeta, Result, StorageError, TEMP_PREFIX, io_err};

/// A store rooted at a local folder. Keys are validated by [`super::ObjectStore`] before they
/// get here; `uri` arguments are the full URIs to name in errors.
pub(super) struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub(super) fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    /// Same joining rules as `Location::join`, so backend and location stay in step.
    pub(super) fn child(&self, sub: &str) -> LocalStore {
        LocalStore {
            root: join_local(&self.root, sub),
        }
    }

    /// `None` at the filesystem root.
    pub(super) fn parent(&self) -> Option<LocalStore> {
        Some(LocalStore {
            root: self.root.parent()?.to_path_buf(),
        })
    }

    pub(super) async fn put(&self, key: &str, data: Bytes, uri: &str) -> Result<()> {
        let path = local_path(&self.root, key);
        let err_uri = uri.to_string();
        blocking(uri, move || {
            write_atomic(&path, |file| io::Write::write_all(file, &data))
                .map_err(|source| io_err(&err_uri, source))
        })
        .await
    }

    pub(super) async fn put_if_absent(&self, key: &str, data: Bytes, uri: &str) -> Result<bool> {
        let path = local_path(&self.root, key);
        let err_uri = uri.to_string();
        blocking(uri, move || {
            create_new_atomic(&path, |file| io::Write::write_all(file, &data))
                .map_err(|source| io_err(&err_uri, source))
        })
        .await
    }

    /// Renames the local file `src` into place as `key`. `Ok(false)` when that is not possible
    /// (e.g. another filesystem), so the caller copies instead.
    pub(super) async fn rename_into_place(&self, key: &str, src: &Path, uri: &str) -> Result<bool> {
        let dst = local_path(&self.root, key);
        let src = src.to_path_buf();
        blocking(uri, move || {
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
        .await
    }

    /// Hard-links the local file `src` into place as `key`. `Ok(false)` when that is not
    /// possible (e.g. another filesystem), so the caller copies instead.
    pub(super) async fn hard_link_into_place(
        &self,
        key: &str,
        src: &Path,
        uri: &str,
    ) -> Result<bool> {
        let dst = local_path(&self.root, key);
        let src = src.to_path_buf();
        let log_uri = uri.to_string();
        let linked = blocking(uri, move || {
            Ok(link_atomic(&src, &dst).inspect_err(|e| {
                tracing::debug!(uri = %log_uri, error = %e, "hard link failed, copying instead");
            }))
        })
        .await?;
        Ok(linked.is_ok())
    }

    pub(super) async fn put_file(
        &self,
        key: &str,
        path: &Path,
        uri: &str,
        src_uri: &str,
    ) -> Result<()> {
        let dst = local_path(&self.root, key);
        let src = path.to_path_buf();
        let src_uri = src_uri.to_string();
        let err_uri = uri.to_string();
        blocking(uri, move || {
            // Open the source first so a missing source is reported against its own URI.
            let mut source = File::open(&src).map_err(|e| io_err(&src_uri, e))?;
            write_atomic(&dst, |file| io::copy(&mut source, file).map(drop))
                .map_err(|e| io_err(&err_uri, e))
        })
        .await
    }

    pub(super) async fn get(&self, key: &str, uri: &str) -> Result<Bytes> {
        let path = local_path(&self.root, key);
        let err_uri = uri.to_string();
        blocking(uri, move || match fs::read(&path) {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) => Err(not_found_or_io(&err_uri, e)),
        })
        .await
    }

    pub(super) async fn get_file(&self, key: &str, dest: &Path, uri: &str) -> Result<u64> {
        let src = local_path(&self.root, key);
        let dest = dest.to_path_buf();
        let err_uri = uri.to_string();
        blocking(uri, move || {
            fs::copy(&src, &dest).map_err(|e| not_found_or_io(&err_uri, e))
        })
        .await
    }

    /// Hard-links the object `key` to the local file `dest`: `Ok(Some(size))` when linked,
    /// `Ok(None)` when linking is not possible (e.g. another filesystem), so the caller copies
    /// instead. `NotFound` when missing.
    pub(super) async fn hard_link_out(
        &self,
        key: &str,
        dest: &Path,
        uri: &str,
    ) -> Result<Option<u64>> {
        let src = local_path(&self.root, key);
        let dest = dest.to_path_buf();
        let linked = blocking(uri, move || {
            Ok(fs::hard_link(&src, &dest).and_then(|()| fs::metadata(&dest)))
        })
        .await?;
        match linked {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if is_missing(&e) => Err(StorageError::NotFound {
                uri: uri.to_string(),
            }),
            Err(_) => Ok(None), // e.g. another filesystem: copy
        }
    }

    pub(super) async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        uri: &str,
    ) -> Result<Bytes> {
        let path = local_path(&self.root, key);
        let err_uri = uri.to_string();
        blocking(uri, move || {
            read_range(&path, offset, len).map_err(|e| not_found_or_io(&err_uri, e))
        })
        .await
    }

    pub(super) async fn head(&self, key: &str, uri: &str) -> Result<Option<u64>> {
        let path = local_path(&self.root, key);
        let err_uri = uri.to_string();
        blocking(uri, move || match fs::metadata(&path) {
            Ok(md) if md.is_file() => Ok(Some(md.len())),
            // A directory is a "folder" of other keys, not an object.
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(io_err(&err_uri, e)),
        })
        .await
    }

    pub(super) async fn list(&self, prefix: &str, uri: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let err_uri = uri.to_string();
        blocking(uri, move || {
            list_local(&root, &prefix).map_err(|e| io_err(&err_uri, e))
        })
        .await
    }

    pub(super) async fn delete(&self, key: &str, uri: &str) -> Result<()> {
        let path = local_path(&self.root, key);
        let err_uri = uri.to_string();
        blocking(uri, move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(io_err(&err_uri, e)),
        })
        .await
    }

    /// Removes the folder `folder` (no trailing '/'; `""` = everything under the root).
    pub(super) async fn delete_folder(&self, folder: &str, uri: &str) -> Result<()> {
        let dir = local_path(&self.root, folder);
        let whole_root = folder.is_empty();
        let err_uri = uri.to_string();
        blocking(uri, move || {
            remove_local_tree(&dir, whole_root).map_err(|e| io_err(&err_uri, e))
        })
        .await
    }

    pub(super) async fn rename(
        &self,
        from: &str,
        to: &str,
        from_uri: &str,
        to_uri: &str,
    ) -> Result<()> {
        let src = local_path(&self.root, from);
        let dst = local_path(&self.root, to);
        let from_uri = from_uri.to_string();
        let to_uri = to_uri.to_string();
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
