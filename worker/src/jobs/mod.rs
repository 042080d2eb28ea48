//! Built-in jobs, chosen by `job.name`. A custom job is a binary that links `weir`, adds its
//! jobs to a [`JobRegistry`] and calls [`crate::cli::main_with`]: the role a jar plays in Flink.

pub mod consumer_lag;
pub mod endpoints;
pub mod kafka_bench;
pub mod minute_bars;
pub mod nexmark;
pub mod rule_alerts;
pub mod sequence_check;
mod shared;
pub mod state_machine;
pub mod url_count;
pub mod window_check;
pub mod word_count;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use sequence_check::{CheckRecord, SequenceChecker};
pub use state_machine::{Alert, EventType, MachineState};

use crate::api::{JobGraph, StreamEnv};
use crate::error::{Error, Result};
use crate::runtime::job::JobHandle;
use crate::spec::JobDocument;

/// A job ready to run, and where its results go (for the user's benefit).
pub struct BuiltJob {
    pub graph: JobGraph,
    pub output: Option<String>,
    /// Watches the run from outside the tasks (in local mode): the benchmark jobs use it to
    /// trigger checkpoints and report their figures.
    pub monitor: Option<Arc<dyn JobMonitor>>,
}

/// Hooks around a local run of a job.
pub trait JobMonitor: Send + Sync {
    /// Right before the job is submitted. Long-running work belongs on a thread of its own.
    fn started(&self, _job: &JobHandle) {}
    /// After the job ended (finished, cancelled or failed) `wall` after it was submitted.
    fn ended(&self, _job: &JobHandle, _wall: std::time::Duration) {}
}

pub type JobDefinition = fn(&StreamEnv) -> Result<BuiltJob>;

#[derive(Clone, Default)]
pub struct JobRegistry {
    jobs: BTreeMap<String, JobDefinition>,
}

impl JobRegistry {
    /// The jobs of the stock `weir-worker` image.
    pub fn builtin() -> Self {
        let mut registry = JobRegistry::default();
        registry.register("url-count", url_count::define);
        registry.register("consumer-lag", consumer_lag::define);
        registry.register("state-machine", state_machine::define);
        registry.register("rule-alerts", rule_alerts::define);
        registry.register("word-count", word_count::define);
        registry.register("sequence-check", sequence_check::define);
        registry.register("minute-bars", minute_bars::define);
        registry.register("window-check", window_check::define);
        registry.register("nexmark", nexmark::define);
        registry.register("kafka-bench", kafka_bench::define);
        registry
    }

    pub fn register(&mut self, name: &str, define: JobDefinition) {
        self.jobs.insert(name.to_string(), define);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }

    pub fn build(&self, doc: Arc<JobDocument>) -> Result<BuiltJob> {
        let define = self
            .jobs
            .get(&doc.job.name)
            .ok_or_else(|| Error::UnknownJob {
                name: doc.job.name.clone(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })?;
        define(&StreamEnv::new(doc))
    }
}

/// Arguments shared by the file-to-file jobs.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileJobArgs {
    /// Folder or S3 prefix with the input files.
    input: String,
    /// Folder or S3 prefix for committed output.
    output: String,
}
