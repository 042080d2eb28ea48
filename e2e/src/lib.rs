//! End-to-end checks for Weir on Kubernetes.
//!
//! Two kinds of tests use this crate. The manifest tests (`tests/chart.rs`) render the Helm
//! chart with the `helm` binary and assert on the objects, with no cluster, and
//! `tests/examples.rs` checks the StreamJob manifests against the CRD schema. The scenarios
//! (`tests/scenarios.rs`, run by scripts/e2e.sh) drive a real cluster through the kube client
//! and end by reading the committed output of a `sequence-check` job from S3: every (key, seq)
//! exactly once, no alert.

pub mod cluster;
pub mod helm;
pub mod manifests;
pub mod s3;
pub mod schema;
pub mod sequence;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("helm not found (looked in {searched} and PATH): run scripts/install-helm.sh")]
    HelmMissing { searched: String },

    #[error("`helm {args}` failed ({status}): {stderr}")]
    Helm {
        args: String,
        status: String,
        stderr: String,
    },

    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse {what}: {source}")]
    Yaml {
        what: String,
        #[source]
        source: serde_yaml_ng::Error,
    },

    #[error("{what} is not a valid {kind}: {source}")]
    Decode {
        what: String,
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("Kubernetes API call failed: {action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("S3 {action} s3://{bucket}/{key} failed: {message}")]
    S3 {
        action: &'static str,
        bucket: String,
        key: String,
        message: String,
    },

    #[error("line {line} of s3://{bucket}/{key} is not a sequence-check record: {source}")]
    Record {
        bucket: String,
        key: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },

    #[error("timed out after {seconds}s waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        seconds: u64,
        last: String,
    },

    #[error("the e2e environment is not usable: {0}")]
    Environment(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The repository root (this crate lives in `<root>/e2e`). Read at run time: cargo sets
/// `CARGO_MANIFEST_DIR` for test binaries, and the compile-time value goes stale when one
/// target directory serves several clones (cargo reuses the binary across them).
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}
