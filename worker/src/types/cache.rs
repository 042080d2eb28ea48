//! The distributed cache as functions see it: the files of the job document's `cachedFiles`,
//! by name, already on this process's disk. `runtime::cache` fills it before any task starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One downloaded file: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Read-only and shared by every subtask of the process: never write to it.
    pub path: PathBuf,
    /// Where it was downloaded from.
    pub uri: String,
    pub size: u64,
    /// CRC-32 (IEEE) of the contents, as logged when it was downloaded.
    pub crc32: u32,
}

/// The cached files of one attempt in this process. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CachedFiles {
    files: Arc<BTreeMap<String, CachedFile>>,
}

impl CachedFiles {
    pub fn new(files: BTreeMap<String, CachedFile>) -> Self {
        CachedFiles {
            files: Arc::new(files),
        }
    }

    pub fn get(&self, name: &str) -> Option<&CachedFile> {
        self.files.get(name)
    }

    /// The local path of `name`, `None` when the document registers no such file.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.get(name).map(|file| file.path.as_path())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}
