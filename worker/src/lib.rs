//! Weir: a stream-processing runtime with Flink-grade fault tolerance.
//!
//! - [`api`]: what job authors use (streams, keyed functions, sources and sinks);
//! - [`state`]: keyed state in RocksDB split into key groups, and operator state;
//! - [`checkpoint`]: aligned-barrier checkpoints, their storage layout and the coordinator;
//! - [`runtime`]: tasks, channels, the local executor and the job handle;
//! - [`cluster`]: the JobManager and TaskManager processes and the protocol between them;
//! - [`rest`]: the JobManager REST API (`docs/jobmanager-api.yaml`);
//! - [`connectors`]: the file source, the sequence generator, the exactly-once file sink;
//! - [`jobs`]: the built-in jobs of the stock worker image;
//! - [`spec`]: the job document (crate `weir-spec`).

pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod connectors;
pub mod error;
pub use weir_spec::fault_points;
pub mod jobs;
pub mod metrics;
pub mod rest;
pub mod runtime;
pub mod state;
pub mod storage;

pub use error::{Error, Result};
/// The job document (its own crate, so the operator can embed it without the runtime).
pub use weir_spec as spec;
