//! `url-count`: the access-log example. A running count of requests per URL, kept in
//! ValueState: the first `/api/a` yields `{"url":"/api/a","count":1}`, the second `count: 2`.
//!
//! With `urlLabels: <name>` every count also carries the URL's label from the cached file
//! `cachedFiles.<name>` (one `<url> <label>` per line, `#` starts a comment), read by every
//! counting subtask when it opens: `{"url":"/api/a","count":1,"label":"checkout"}`. URLs the
//! file does not list get no label.
//!
//! With `stateTtl: <duration>` (e.g. `10m`) a URL's count lives that long after its last
//! request (state TTL, `StateTtl`): a URL idle for longer counts from 1 again, and its count
//! leaves the next checkpoint.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::api::{Emitter, KeyedProcessFunction, StreamEnv};
use crate::connectors::{FileSink, FileSource};
use crate::error::{Error, Result};
use crate::jobs::BuiltJob;
use crate::state::{KeyedContext, StateRegistry, StateTtl, ValueState};

/// The operator uid of the counter (its state lives under it in checkpoints).
const COUNTER: &str = "url-counter";

#[derive(Debug, Serialize, Deserialize)]
pub struct AccessLog {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub remote_addr: String,
    pub request: String,
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct UrlCount {
    pub url: String,
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UrlCountArgs {
    /// Folder or S3 prefix with the input files.
    input: String,
    /// Folder or S3 prefix for committed output.
    output: String,
    /// Name of a `cachedFiles` entry with a label per URL.
    #[serde(default)]
    url_labels: Option<String>,
    /// How long a URL's count lives after its last request; forever when absent.
    #[serde(default, with = "humantime_serde")]
    state_ttl: Option<std::time::Duration>,
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: UrlCountArgs = env.doc().args()?;
    if let Some(name) = &args.url_labels
        && !env.doc().cached_files.contains_key(name)
    {
        return Err(Error::spec(
            "job.args.urlLabels",
            format!("{name:?} is not an entry of cachedFiles"),
        ));
    }
    if args.state_ttl.is_some_and(|ttl| ttl.is_zero()) {
        return Err(Error::spec("job.args.stateTtl", "must be longer than 0s"));
    }
    let labels = args.url_labels.clone();
    let ttl = args.state_ttl.map(StateTtl::new);
    let graph = env
        .source(
            "access-log",
            FileSource::<AccessLog>::json_lines(&args.input),
        )
        .key_by(|log: &AccessLog| log.url.clone())
        .process(COUNTER, move || UrlCounter::new(labels.clone(), ttl))
        .sink("output", FileSink::json_lines(&args.output))?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}

/// A running count per URL in the `ValueState<u64>` named `count`, labelled from the cached
/// file when the job names one.
struct UrlCounter {
    count: Option<ValueState<u64>>,
    labels_file: Option<String>,
    labels: HashMap<String, String>,
    ttl: Option<StateTtl>,
}

impl UrlCounter {
    fn new(labels_file: Option<String>, ttl: Option<StateTtl>) -> Self {
        UrlCounter {
            count: None,
            labels_file,
            ttl,
            labels: HashMap::new(),
        }
    }
}

impl KeyedProcessFunction<String, AccessLog, UrlCount> for UrlCounter {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.count = Some(match self.ttl {
            Some(ttl) => state.with_ttl(ttl).value_state("count")?,
            None => state.value_state("count")?,
        });
        if let Some(name) = &self.labels_file {
            let path = state.cached_file(name)?;
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
            self.labels = parse_labels(&text);
            tracing::debug!(file = name, labels = self.labels.len(), "URL labels loaded");
        }
        Ok(())
    }

    fn process(
        &mut self,
        url: &String,
        _record: AccessLog,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, UrlCount>,
    ) -> Result<()> {
        let Some(state) = &self.count else {
            return Err(Error::operator(COUNTER, "used before open"));
        };
        let count = state.get(ctx)?.unwrap_or(0) + 1;
        state.set(ctx, &count)?;
        out.emit(UrlCount {
            url: url.clone(),
            count,
            label: self.labels.get(url).cloned(),
        })
    }
}

/// `<url> <label>` per line; blank lines, lines starting with `#` and lines without a label
/// are skipped. The label is the rest of the line, trimmed.
fn parse_labels(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (url, label) = line.split_once(char::is_whitespace)?;
            Some((url.to_string(), label.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_rest_of_each_line() {
        let labels = parse_labels("# url label\n/api/a  checkout page\n\n/api/b\tsearch\n/bare\n");
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["/api/a"], "checkout page");
        assert_eq!(labels["/api/b"], "search");
    }

    #[test]
    fn url_labels_must_name_a_cached_file() {
        let doc = crate::spec::JobDocument::from_yaml(
            "job: {name: url-count, args: {input: in, output: out, urlLabels: labels}}",
            "test",
        )
        .expect("valid");
        let err = crate::jobs::JobRegistry::builtin()
            .build(std::sync::Arc::new(doc))
            .err()
            .expect("no such cached file");
        assert!(err.to_string().contains("job.args.urlLabels"), "{err}");
    }
}
