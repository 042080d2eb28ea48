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
        Ok(Box::new(self.reader(ctx, restored, READ_CHUNK)?))
    }
}

impl<T: Send + 'static> FileSource<T> {
    fn reader(
        &self,
        ctx: &SourceContext,
        restored: Option<Vec<serde_json::Value>>,
        read_chunk: u64,
    ) -> Result<FileReader<T>> {
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
        Ok(FileReader {
            store,
            files,
            current: 0,
            buffer: Chunk::Raw(Vec::new()),
            buffer_start: 0,
            buffer_pos: 0,
            carry: Vec::new(),
            started: false,
            read_chunk,
            decode: self.decode.clone(),
            policy: ctx.doc.malformed_records,
            rt: ctx.rt.clone(),
        })
    }
}

/// Files and folders starting with `_` or `.` are metadata (e.g. a sink's `_pending/`).
fn is_hidden(key: &str) -> bool {
    key.split('/')
        .any(|part| part.starts_with('_') || part.starts_with('.'))
}

/// One read of a file, as read (no copy). `Text` when the whole read is valid UTF-8: its lines
/// are then sliced as `&str` without validating each again; otherwise each line is validated
/// on its own (a read may also start or end inside a character).
enum Chunk {
    Text(String),
    Raw(Vec<u8>),
}

impl Chunk {
    fn new(bytes: bytes::Bytes) -> Self {
        // Without a copy when the read's buffer is not shared (the local store's never is).
        match String::from_utf8(Vec::from(bytes)) {
            Ok(text) => Chunk::Text(text),
            Err(e) => Chunk::Raw(e.into_bytes()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Text(text) => text.as_bytes(),
            Chunk::Raw(raw) => raw,
        }
    }

    /// `[start, end)`, where both ends are at a newline, the chunk's start or its end.
    fn line(&self, start: usize, end: usize) -> Line<'_> {
        match self {
            // Fails (then validated as bytes) only if the chunk's start or end cuts a character.
            Chunk::Text(text) => match text.get(start..end) {
                Some(line) => Line::Text(line),
                None => Line::Raw(&text.as_bytes()[start..end]),
            },
            Chunk::Raw(raw) => Line::Raw(&raw[start..end]),
        }
    }
}

enum Line<'a> {
    Text(&'a str),
    Raw(&'a [u8]),
}

struct FileReader<T> {
    store: ObjectStore,
    files: Vec<FilePosition>,
    current: usize,
    /// The last read of the current file.
    buffer: Chunk,
    /// File offset of `buffer[0]`.
    buffer_start: u64,
    /// The next unread byte of `buffer`.
    buffer_pos: usize,
    /// The start of a line that the previous read cut (file offset `buffer_start - carry.len()`).
    carry: Vec<u8>,
    started: bool,
    read_chunk: u64,
    decode: Decoder<T>,
    policy: MalformedRecordPolicy,
    rt: tokio::runtime::Handle,
}

impl<T> FileReader<T> {
    fn next_file(&mut self) {
        self.current += 1;
        self.buffer = Chunk::Raw(Vec::new());
        self.buffer_pos = 0;
        self.carry.clear();
        self.started = false;
    }

    /// Decodes the line at file offset `offset` (without its `\n`) into `out`.
    fn emit_line(&self, line: Line<'_>, offset: u64, out: &mut Vec<T>) -> Result<()> {
        let decoded = match line {
            Line::Text(line) => {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.bytes().all(|b| b.is_ascii_whitespace()) {
                    return Ok(());
                }
                (self.decode)(line)
            }
            Line::Raw(raw) => {
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                if raw.iter().all(u8::is_ascii_whitespace) {
                    return Ok(());
                }
                std::str::from_utf8(raw)
                    .map_err(|e| e.to_string())
                    .and_then(|line| (self.decode)(line))
            }
        };
        match decoded {
            Ok(record) => out.push(record),
            Err(message) => {
                let file = &self.files[self.current];
                let location = format!("{}:{offset}", self.store.uri(&file.file));
                super::malformed_record(self.policy, location, message)?;
            }
        }
        Ok(())
    }

    /// Emits the line that `carry` starts and `buffer[..end]` ends; the next line starts at
    /// `next`.
    fn emit_carried(&mut self, end: usize, next: usize, out: &mut Vec<T>) -> Result<()> {
        let mut line = std::mem::take(&mut self.carry);
        let offset = self.buffer_start - line.len() as u64;
        line.extend_from_slice(&self.buffer.bytes()[..end]);
        self.buffer_pos = next;
        let result = self.emit_line(Line::Raw(&line), offset, out);
        line.clear();
        self.carry = line;
        result
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
            let unread = &self.buffer.bytes()[self.buffer_pos..];
            if let Some(newline) = memchr::memchr(b'\n', unread) {
                let (start, end) = (self.buffer_pos, self.buffer_pos + newline);
                if self.carry.is_empty() {
                    self.buffer_pos = end + 1;
                    let line = self.buffer.line(start, end);
                    self.emit_line(line, self.buffer_start + start as u64, out)?;
                } else {
                    self.emit_carried(end, end + 1, out)?;
                }
                self.files[self.current].offset = self.buffer_start + self.buffer_pos as u64;
                continue;
            }
            // The rest is the start of a line the next read ends.
            self.carry.extend_from_slice(unread);
            self.buffer_start += self.buffer.bytes().len() as u64;
            self.buffer = Chunk::Raw(Vec::new());
            self.buffer_pos = 0;
            let key = self.files[self.current].file.clone();
            let chunk = self.rt.block_on(self.store.get_range(
                &key,
                self.buffer_start,
                self.read_chunk,
            ))?;
            if chunk.is_empty() {
                // A last line without a newline is still a record.
                if !self.carry.is_empty() {
                    self.emit_carried(0, 0, out)?;
                }
                let file = &mut self.files[self.current];
                file.offset = self.buffer_start;
                file.done = true;
                self.next_file();
                continue;
            }
            self.buffer = Chunk::new(chunk);
        }
        Ok(SourceStatus::More)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
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

    /// What the reader must produce from one file's bytes: each `\n`-terminated line (and a
    /// last one without), `\r\n` as `\n`, blank lines and invalid UTF-8 (skipped) left out.
    fn expected_lines(content: &[u8]) -> Vec<String> {
        let mut lines: Vec<&[u8]> = content.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
            .into_iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .filter_map(|l| std::str::from_utf8(l).ok().map(str::to_string))
            .collect()
    }

    fn read_all(
        source: &FileSource<String>,
        ctx: &SourceContext,
        restored: Option<Vec<serde_json::Value>>,
        chunk: u64,
    ) -> Vec<String> {
        let mut reader = source.reader(ctx, restored, chunk).expect("reader");
        let mut out = Vec::new();
        loop {
            let mut batch = Vec::new();
            let status = reader.poll(&mut batch, 7).expect("poll");
            out.append(&mut batch);
            if matches!(status, SourceStatus::Finished) {
                return out;
            }
        }
    }

    #[test]
    fn lines_across_reads_of_any_size_and_restores() {
        let files: [&[u8]; 3] = [
            "{\"a\":1}\n\nplain line\r\n  \n\u{e9}t\u{e9} \u{65e5}\u{672c}\u{8a9e} \u{1F600}\nlong line \
             that is longer than the small reads, with \u{e9}\u{e9}\u{e9} in it\nlast, no newline \u{e9}"
                .as_bytes(),
            b"ok\n\xff\xfe invalid utf-8\nafter\n\xe9t\xe9 latin-1\r\nend\n",
            b"",
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let mut expected = Vec::new();
        for (i, content) in files.iter().enumerate() {
            std::fs::write(dir.path().join(format!("part-{i}.txt")), content).expect("write");
            expected.extend(expected_lines(content));
        }
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let doc =
            crate::spec::JobDocument::from_yaml("job: {name: x}\nmalformedRecords: skip", "test")
                .expect("valid");
        let ctx = SourceContext {
            subtask: 0,
            parallelism: 1,
            rt: rt.handle().clone(),
            doc: Arc::new(doc),
            cached_files: Default::default(),
        };
        let source = FileSource::lines(format!("file://{}", dir.path().display()));
        for chunk in (1..=24).chain([64, 4096]) {
            assert_eq!(
                read_all(&source, &ctx, None, chunk),
                expected,
                "reads of {chunk}"
            );
            // Restore from the offsets after each record: the rest, exactly.
            let mut reader = source.reader(&ctx, None, chunk).expect("reader");
            let mut seen = Vec::new();
            loop {
                let mut batch = Vec::new();
                let status = reader.poll(&mut batch, 1).expect("poll");
                seen.append(&mut batch);
                let rest = read_all(
                    &source,
                    &ctx,
                    Some(reader.snapshot(1).expect("snapshot")),
                    chunk,
                );
                assert_eq!(
                    rest,
                    expected[seen.len()..],
                    "reads of {chunk}, after {}",
                    seen.len()
                );
                if matches!(status, SourceStatus::Finished) {
                    break;
                }
            }
            assert_eq!(seen, expected);
        }
    }
}
