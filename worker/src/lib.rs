//! Weir: a stream-processing runtime with Flink-grade fault tolerance.
//!
//! Modules from the bottom up; each uses only those listed before it (`docs/architecture.md`):
//!
//! - [`storage`]: local files and S3 behind one `ObjectStore`;
//! - [`error`], [`metrics`], [`fault_points`]: used at every layer above;
//! - [`types`]: the shared vocabulary (records and keys, event time, task ids);
//! - [`state`]: keyed state in RocksDB split into key groups, and operator state;
//! - [`checkpoint`]: aligned-barrier checkpoints, their storage layout and the coordinator;
//! - [`functions`]: the traits job authors implement (keyed functions, sources, sinks);
//! - [`runtime`]: tasks, chains, the job graph, channels, the local executor and the job handle;
//! - [`api`]: the stream builders job authors write jobs with, on top of the runtime;
//! - [`connectors`]: the file source, the sequence generator, the exactly-once file sink;
//! - [`jobs`]: the built-in jobs of the stock worker image;
//! - [`cluster`]: the JobManager and TaskManager processes and the protocol between them;
//! - [`rest`]: the JobManager REST API (`docs/jobmanager-api.yaml`);
//! - [`cli`]: the `weir-worker` command line, which starts every role;
//! - [`spec`]: the job document (crate `weir-spec`).

pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod connectors;
pub mod error;
pub mod functions;
pub use weir_spec::fault_points;
pub mod jobs;
pub mod metrics;
pub mod rest;
pub mod runtime;
pub mod state;
pub mod storage;
pub mod types;

pub use error::{Error, Result};
/// The job document (its own crate, so the operator can embed it without the runtime).
pub use weir_spec as spec;
