//! The small vocabulary every layer shares: record and key traits, event time, task ids, the
//! distributed cache's files.
//!
//! It sits at the bottom of the worker and imports no other module of it, so `state`,
//! `checkpoint`, `runtime` and `api` can all speak it without depending on each other.

mod cache;
mod key;
mod time;

pub use cache::{CachedFile, CachedFiles};
pub use key::{Data, Key};
pub use time::{Timestamp, Watermark};

use serde::{Deserialize, Serialize};

/// One subtask of one vertex: what runs on one thread, and what acknowledges checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub vertex: u32,
    pub subtask: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vertex {} subtask {}", self.vertex, self.subtask)
    }
}
