//! A replayable source over the files of a local folder or an S3 prefix.
//!
//! Files are listed once at start (bounded input), sorted by key, and file `j` is read by
//! subtask `j % parallelism`. The position of each file (the byte after the last record
//! emitted) is the checkpointed offset, so a restore resumes on the exact next line.
//! Lines that fail to decode follow the job's malformed-record policy.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{SourceContext, SourceFactory, SourceReader, SourceStatus};
use crate::error::{Error, Result};
use crate::spec::MalformedRecordPolicy;
use crate::storage::{Location, ObjectStore};

const READ_CHUNK: u64 = 4 << 20;

type Decoder<T> = Arc<dyn Fn(&str) -> std::result::Result<T, String> + Send + Sync>;

pub struct FileSource<T> {
    uri: String,
    decode: Decoder<T>,
}

impl FileSource<String> {
    /// Each line as a string.
    pub fn lines(uri: impl Into<String>) -> Self {
        FileSource {
            uri: uri.into(),
            decode: Arc::new(|line| Ok(line.to_string())),
        }
    }
}

impl<T: Send + 'static> FileSource<T> {
    /// Each line through `decode`; an `Err` is a malformed record (see the job's policy).
    pub fn decoded(
        uri: impl Into<String>,
        decode: impl Fn(&str) -> std::result::Result<T, String> + Send + Sync + 'static,
    ) -> Self {
        FileSource {
            uri: uri.into(),
            decode: Arc::new(decode),
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> FileSource<T> {
    /// Each line as one JSON document of type `T`.
    pub fn json_lines(uri: impl Into<String>) -> Self {
        FileSource {
            uri: uri.into(),
            decode: Arc::new(|line| serde_json::from_str(line).map_err(|e| e.to_string())),
        }
    }
}

/// Checkpointed position of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    file: String,
    offset: u64,
    done: bool,
}

impl<T: Send + 'static> SourceFactory for FileSource<T> {
    type Item = T;

    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<Vec<serde_json::Value>>,
    ) -> Result<Box<dyn SourceReader<T>>> {
        let location = Location::parse(&self.uri)?;
        let store = ctx.rt.block_on(ObjectStore::open(&location, &ctx.doc.s3))?;
        let listed = ctx.rt.block_on(store.list(""))?;
        let mut positions: std::collections::HashMap<String, FilePosition> = Default::default();
        for entry in restored.unwrap_or_default() {
            let position: FilePosition = serde_json::from_value(entry)
                .map_err(|e| Error::codec(format!("file source offsets of {}", self.uri), e))?;
            positions.insert(position.file.clone(), position);
        }
        let files: Vec<FilePosition> = listed
            .into_iter()
            .filter(|o| !is_hidden(&o.key))
            .enumerate()
            .filter(|(j, _)| *j as u32 % ctx.parallelism == ctx.subtask)
            .map(|(_, o)| {
                positions.remove(&o.key).unwrap_or(FilePosition {
                    file: o.key,
                    offset: 0,
                    done: false,
                })
            })
            .collect();
        tracing::debug!(uri = %self.uri, subtask = ctx.subtask, files = files.len(), "file source assigned files");
        Ok(Box::new(FileReader {
            store,
            files,
            current: 0,
            buffer: Vec::new(),
            buffer_start: 0,
            buffer_pos: 0,
            at_eof: false,
            started: false,
            decode: self.decode.clone(),
            policy: ctx.doc.malformed_records,
            rt: ctx.rt.clone(),
        }))
    }
}

/// Files and folders starting with `_` or `.` are metadata (e.g. a sink's `_pending/`).
fn is_hidden(key: &str) -> bool {
    key.split('/')
        .any(|part| part.starts_with('_') || part.starts_with('.'))
}

struct FileReader<T> {
    store: ObjectStore,
    files: Vec<FilePosition>,
    current: usize,
    buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    buffer_start: u64,
    buffer_pos: usize,
    at_eof: bool,
    started: bool,
    decode: Decoder<T>,
    policy: MalformedRecordPolicy,
    rt: tokio::runtime::Handle,
}

impl<T> FileReader<T> {
    fn next_file(&mut self) {
        self.current += 1;
        self.buffer.clear();
        self.buffer_pos = 0;
        self.at_eof = false;
        self.started = false;
    }

    fn emit_line(&mut self, line_start: usize, line_end: usize, out: &mut Vec<T>) -> Result<()> {
        let file = &self.files[self.current];
        let raw = &self.buffer[line_start..line_end];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let offset = self.buffer_start + line_start as u64;
        let decoded = std::str::from_utf8(raw)
            .map_err(|e| e.to_string())
            .and_then(|line| (self.decode)(line));
        match decoded {
            Ok(record) => out.push(record),
            Err(message) => {
                let location = format!("{}:{offset}", self.store.uri(&file.file));
                match self.policy {
                    MalformedRecordPolicy::Fail => {
                        return Err(Error::MalformedRecord { location, message });
                    }
                    MalformedRecordPolicy::Skip => {
                        crate::metrics::global().malformed_records.inc();
                        tracing::warn!(%location, %message, "skipping malformed record");
                    }
                }
            }
        }
        Ok(())
    }
}

impl<T: Send + 'static> SourceReader<T> for FileReader<T> {
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        while out.len() < max {
            let Some(file) = self.files.get(self.current) else {
                return Ok(if out.is_empty() {
                    SourceStatus::Finished
                } else {
                    SourceStatus::More
                });
            };
            if file.done {
                self.next_file();
                continue;
            }
            if !self.started {
                self.buffer_start = file.offset;
                self.started = true;
            }
            let unread = &self.buffer[self.buffer_pos..];
            if let Some(newline) = memchr::memchr(b'\n', unread) {
                let (start, end) = (self.buffer_pos, self.buffer_pos + newline);
                self.buffer_pos = end + 1;
                self.emit_line(start, end, out)?;
                self.files[self.current].offset = self.buffer_start + self.buffer_pos as u64;
                continue;
            }
            if self.at_eof {
                // A last line without a newline is still a record.
                if self.buffer_pos < self.buffer.len() {
                    let (start, end) = (self.buffer_pos, self.buffer.len());
                    self.buffer_pos = end;
                    self.emit_line(start, end, out)?;
                }
                let file = &mut self.files[self.current];
                file.offset = self.buffer_start + self.buffer_pos as u64;
                file.done = true;
                self.next_file();
                continue;
            }
            self.buffer.drain(..self.buffer_pos);
            self.buffer_start += self.buffer_pos as u64;
            self.buffer_pos = 0;
            let from = self.buffer_start + self.buffer.len() as u64;
            let key = self.files[self.current].file.clone();
            let chunk = self
                .rt
                .block_on(self.store.get_range(&key, from, READ_CHUNK))?;
            if chunk.is_empty() {
                self.at_eof = true;
            } else {
                self.buffer.extend_from_slice(&chunk);
            }
        }
        Ok(SourceStatus::More)
    }

    fn snapshot(&mut self) -> Result<Vec<serde_json::Value>> {
        self.files
            .iter()
            .map(|f| serde_json::to_value(f).map_err(|e| Error::codec("file source offsets", e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_paths_are_metadata() {
        assert!(is_hidden("_pending/part-1"));
        assert!(is_hidden(".tmp-x"));
        assert!(!is_hidden("logs/access-1.jsonl"));
    }
}
