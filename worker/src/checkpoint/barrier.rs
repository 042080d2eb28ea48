//! The marker a checkpoint travels as: injected by the coordinator at the sources, it flows
//! with the records and splits them into before and after the snapshot.

use crate::storage::ObjectStore;

#[derive(Debug, Clone)]
pub struct Barrier {
    pub checkpoint_id: u64,
    pub timestamp_ms: u64,
    /// Set when this barrier takes a savepoint rather than a checkpoint.
    pub savepoint: Option<SavepointTarget>,
}

/// Where a savepoint goes, and whether the job stops after it.
#[derive(Debug, Clone)]
pub struct SavepointTarget {
    /// The savepoint directory itself: state objects and `_metadata` land directly in it,
    /// so it is self-contained and never touched by checkpoint retention.
    pub store: ObjectStore,
    /// Stop-with-savepoint: sources emit nothing after this barrier, sinks commit when the
    /// savepoint completes, then the job finishes.
    pub stop: bool,
}

impl Barrier {
    pub fn stops_job(&self) -> bool {
        self.savepoint.as_ref().is_some_and(|s| s.stop)
    }
}
