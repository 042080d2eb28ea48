//! The distributed cache (Flink's `registerCachedFile`): every file of the job document's
//! `cachedFiles`, downloaded once per attempt by each process that runs tasks (the local
//! executor, every TaskManager) into `<attempt dir>/cache/<name>` before its tasks start.
//! The process's subtasks share that read-only copy (`types::CachedFiles`); it goes with the
//! attempt's directory.
//!
//! The driver checks first that every file exists ([`check_available`]), so a deployment
//! with a missing file fails before anything runs, naming the entry.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::metrics::CachedFileLabels;
use crate::spec::JobDocument;
use crate::storage::{Location, ObjectStore, S3Options, StorageError};
use crate::types::{CachedFile, CachedFiles};

/// The folder of an attempt's local directory that holds the cached files.
pub(crate) const CACHE_DIR: &str = "cache";

/// Fails naming the first `cachedFiles` entry whose file does not exist (or whose URI cannot
/// name a file). Other storage errors, such as S3 being unreachable, only warn: the attempt's
/// downloads meet them again, under the restart strategy.
pub(crate) async fn check_available(doc: &JobDocument) -> Result<()> {
    for (name, uri) in &doc.cached_files {
        let checked = async {
            let (store, key) = open_object(uri, &doc.s3).await?;
            match store.head(&key).await? {
                Some(_) => Ok(()),
                None => Err(StorageError::NotFound { uri: uri.clone() }),
            }
        };
        match checked.await {
            Ok(()) => {}
            Err(source @ (StorageError::NotFound { .. } | StorageError::InvalidUri { .. })) => {
                return Err(cached_file_error(name, uri, source));
            }
            Err(e) => {
                tracing::warn!(name, uri, error = %e, "cannot check a cached file now; the download will try again")
            }
        }
    }
    Ok(())
}

/// Downloads every file of `doc.cached_files` into `dir` (created, and removed again on
/// failure), checksums it and makes it read-only.
pub(crate) fn download(
    doc: &JobDocument,
    dir: &Path,
    rt: &tokio::runtime::Handle,
) -> Result<CachedFiles> {
    if doc.cached_files.is_empty() {
        return Ok(CachedFiles::default());
    }
    let started = Instant::now();
    tracing::info!(files = doc.cached_files.len(), dir = %dir.display(), "downloading cached files");
    let result = download_all(doc, dir, rt);
    match &result {
        Ok(files) => {
            tracing::info!(files = doc.cached_files.len(), elapsed = ?started.elapsed(), "cached files ready");
            let metrics = crate::metrics::global();
            for name in files.names() {
                metrics
                    .cached_file_downloads
                    .get_or_create(&CachedFileLabels {
                        name: name.to_string(),
                    })
                    .inc();
            }
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}

fn download_all(doc: &JobDocument, dir: &Path, rt: &tokio::runtime::Handle) -> Result<CachedFiles> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    // Concurrently: one slow object does not hold up the others.
    let downloads = doc.cached_files.iter().map(|(name, uri)| async move {
        let dest = dir.join(name);
        let size = fetch(uri, &doc.s3, &dest)
            .await
            .map_err(|source| cached_file_error(name, uri, source))?;
        Ok::<_, Error>((name, uri, dest, size))
    });
    let fetched = rt.block_on(futures::future::try_join_all(downloads))?;
    let mut files = BTreeMap::new();
    for (name, uri, path, size) in fetched {
        let crc32 = checksum_and_seal(&path).map_err(|e| Error::io(path.display(), e))?;
        tracing::info!(name, uri, size, crc32 = %format!("{crc32:08x}"), path = %path.display(), "downloaded cached file");
        files.insert(
            name.clone(),
            CachedFile {
                path,
                uri: uri.clone(),
                size,
                crc32,
            },
        );
    }
    Ok(CachedFiles::new(files))
}

/// Streams the object `uri` into `dest`; its size.
async fn fetch(uri: &str, s3: &S3Options, dest: &Path) -> Result<u64, StorageError> {
    let (store, key) = open_object(uri, s3).await?;
    store.get_file(&key, dest).await
}

/// The store holding the object `uri`, and its key there.
async fn open_object(uri: &str, s3: &S3Options) -> Result<(ObjectStore, String), StorageError> {
    let (folder, key) =
        Location::parse(uri)?
            .split_object()
            .ok_or_else(|| StorageError::InvalidUri {
                uri: uri.to_string(),
                reason: "names a bucket or a root folder, not a file".to_string(),
            })?;
    Ok((ObjectStore::open(&folder, s3).await?, key))
}

/// CRC-32 of the file, which is made read-only: every subtask of the process reads this copy.
fn checksum_and_seal(path: &Path) -> std::io::Result<u32> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut permissions = file.metadata()?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(path, permissions)?;
    Ok(hasher.finalize())
}

fn cached_file_error(name: &str, uri: &str, source: StorageError) -> Error {
    Error::CachedFile {
        name: name.to_string(),
        uri: uri.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(cached_files: &[(&str, &str)]) -> JobDocument {
        let mut doc = JobDocument::from_yaml("job: {name: x}", "test").expect("valid");
        doc.cached_files = cached_files
            .iter()
            .map(|(name, uri)| (name.to_string(), uri.to_string()))
            .collect();
        doc
    }

    #[test]
    fn every_file_is_downloaded_checksummed_and_read_only() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let source = tempfile::tempdir().expect("tempdir");
        std::fs::write(source.path().join("names.txt"), "/a first\n").expect("write");
        std::fs::write(source.path().join("empty"), "").expect("write");
        let doc = document(&[
            (
                "names",
                &format!("file://{}/names.txt", source.path().display()),
            ),
            ("empty", &source.path().join("empty").display().to_string()),
        ]);
        rt.block_on(check_available(&doc)).expect("both exist");
        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path().join(CACHE_DIR);
        let files = download(&doc, &dir, rt.handle()).expect("downloads");
        let names = files.get("names").expect("names");
        assert_eq!(names.path, dir.join("names"));
        assert_eq!(
            std::fs::read_to_string(&names.path).expect("read"),
            "/a first\n"
        );
        assert_eq!(names.size, 9);
        assert_eq!(names.crc32, crc32fast::hash(b"/a first\n"));
        assert!(
            std::fs::metadata(&names.path)
                .expect("metadata")
                .permissions()
                .readonly()
        );
        assert_eq!(files.get("empty").map(|f| f.size), Some(0));
        assert_eq!(files.names().collect::<Vec<_>>(), ["empty", "names"]);
    }

    #[test]
    fn a_missing_file_fails_naming_the_entry_and_is_final() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let source = tempfile::tempdir().expect("tempdir");
        let uri = format!("file://{}/absent.txt", source.path().display());
        let doc = document(&[("rules", &uri)]);
        let err = rt.block_on(check_available(&doc)).expect_err("missing");
        let message = err.to_string();
        assert!(message.contains("\"rules\""), "{message}");
        assert!(message.contains(&uri), "{message}");
        assert!(!err.is_recoverable(), "{err:?}");

        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path().join(CACHE_DIR);
        let err = download(&doc, &dir, rt.handle()).expect_err("missing");
        assert!(err.to_string().contains("cachedFiles.rules"), "{err}");
        assert!(!err.is_recoverable(), "{err:?}");
        assert!(!dir.exists(), "a failed download leaves nothing behind");
    }

    #[test]
    fn an_unknown_name_lists_the_registered_ones() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let source = tempfile::tempdir().expect("tempdir");
        std::fs::write(source.path().join("a"), "a").expect("write");
        let doc = document(&[
            ("rules", &source.path().join("a").display().to_string()),
            ("words", &source.path().join("a").display().to_string()),
        ]);
        let work = tempfile::tempdir().expect("tempdir");
        let files = download(&doc, &work.path().join(CACHE_DIR), rt.handle()).expect("downloads");
        let registry = crate::state::StateRegistry::new("op").with_cached_files(files);
        assert_eq!(
            registry.cached_file("rules").expect("registered"),
            work.path().join(CACHE_DIR).join("rules")
        );
        let err = registry.cached_file("rule").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "no cached file \"rule\"; the job document's cachedFiles has: rules, words"
        );
        let none = crate::state::StateRegistry::new("op");
        let err = none.cached_file("rules").expect_err("none registered");
        assert!(err.to_string().ends_with("cachedFiles has: none"), "{err}");
    }

    #[test]
    fn no_cached_files_download_nothing() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path().join(CACHE_DIR);
        let files = download(&document(&[]), &dir, rt.handle()).expect("nothing to do");
        assert!(files.is_empty());
        assert!(!dir.exists());
    }
}
