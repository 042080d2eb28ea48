//! Where a job's state lives in checkpoint storage, and the ports its processes listen on:
//! the contract between the worker, which writes the layout and opens the ports, and the
//! operator, which reads the layout (latest checkpoint, savepoint done?), cleans it up and
//! points Services and NetworkPolicies at the ports. Both sides use these functions; neither
//! spells a folder name or port number of its own.
//!
//! ```text
//! <checkpointing.storage>/
//!   <jobId>/                         job_dir
//!     chk-<n>/_metadata              checkpoint_dir, METADATA_OBJECT: written last; without it
//!     chk-<n>/<operator>-<subtask>…    the directory is an aborted attempt
//!     shared/<backend id>/<file>     SHARED_FOLDER: incremental RocksDB files
//!   savepoints/                      default_savepoint_base (the operator's savepoints)
//! ```

/// Written last into a checkpoint or savepoint directory: the directory is complete (a
/// checkpoint or savepoint exists) exactly when this object does.
pub const METADATA_OBJECT: &str = "_metadata";

/// The folder under a job's directory holding the files incremental checkpoints share.
pub const SHARED_FOLDER: &str = "shared";

const CHECKPOINT_DIR_PREFIX: &str = "chk-";

/// A job's directory under checkpoint storage: `<storage>/<jobId>`.
pub fn job_dir(storage: &str, job_id: &str) -> String {
    format!("{}/{job_id}", storage.trim_end_matches('/'))
}

/// The directory name of checkpoint `id` under a job's directory: `chk-<id>`.
pub fn checkpoint_dir(id: u64) -> String {
    format!("{CHECKPOINT_DIR_PREFIX}{id}")
}

/// The checkpoint id of a directory name made by [`checkpoint_dir`].
pub fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    name.strip_prefix(CHECKPOINT_DIR_PREFIX)?.parse().ok()
}

/// The prefix every checkpoint directory name starts with, for listing.
pub fn checkpoint_dir_prefix() -> &'static str {
    CHECKPOINT_DIR_PREFIX
}

/// Where the operator puts savepoints when the StreamJob names no directory.
pub fn default_savepoint_base(storage: &str) -> String {
    format!("{}/savepoints", storage.trim_end_matches('/'))
}

/// The ports a job's processes listen on (the operator's pods declare exactly these).
pub mod ports {
    /// The JobManager's REST API (`docs/jobmanager-api.yaml`), `/metrics` and health probes.
    pub const REST: u16 = 8081;
    /// The JobManager's port for TaskManager connections.
    pub const RPC: u16 = 6123;
    /// A TaskManager's port for keyed-exchange data from other TaskManagers.
    pub const DATA: u16 = 6121;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_directories_round_trip_and_nothing_else_parses() {
        assert_eq!(checkpoint_dir(42), "chk-42");
        assert_eq!(parse_checkpoint_dir(&checkpoint_dir(42)), Some(42));
        for other in ["chk-", "chk-x", "shared", "chk-1.meta", "savepoints"] {
            assert_eq!(parse_checkpoint_dir(other), None, "{other}");
        }
        assert!(checkpoint_dir(7).starts_with(checkpoint_dir_prefix()));
    }

    #[test]
    fn job_and_savepoint_folders_ignore_a_trailing_slash() {
        assert_eq!(job_dir("s3://b/chk/", "ns-job"), "s3://b/chk/ns-job");
        assert_eq!(job_dir("s3://b/chk", "ns-job"), "s3://b/chk/ns-job");
        assert_eq!(
            default_savepoint_base("s3://b/chk/"),
            "s3://b/chk/savepoints"
        );
    }
}
