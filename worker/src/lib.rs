//! Weir: a stream-processing runtime with Flink-grade fault tolerance.
//!
//! A job is a function from a [`api::StreamEnv`] to a graph, registered by name in a
//! [`jobs::JobRegistry`] and run by [`cli::main_with`]; [`prelude`] imports everything it needs.
//!
//! Modules from the bottom up; each uses only those listed before it (`docs/architecture.md`):
//!
//! - [`storage`]: local files and S3 behind one `ObjectStore` (crate `weir-storage`, shared with
//!   the operator);
//! - `error`, `metrics`, `fault_points`: used at every layer above;
//! - [`types`]: the shared vocabulary (records and keys, event time, task ids);
//! - [`state`]: keyed state in RocksDB split into key groups, and operator state;
//! - [`checkpoint`]: aligned-barrier checkpoints, their storage layout and the coordinator;
//! - `functions` (re-exported by [`api`]): the traits job authors implement (keyed functions, sources, sinks);
//! - [`runtime`]: tasks, chains, the job graph, channels, the local executor and the job handle;
//! - [`api`]: the stream builders job authors write jobs with, on top of the runtime;
//! - [`connectors`]: the file source, the sequence generator, the exactly-once file sink;
//! - [`jobs`]: the built-in jobs of the stock worker image;
//! - [`cluster`]: the JobManager and TaskManager processes and the protocol between them;
//! - `rest`: the JobManager REST API (`docs/jobmanager-api.yaml`);
//! - [`cli`]: the `weir-worker` command line, which starts every role;
//! - [`spec`]: the job document (crate `weir-spec`).

// What job authors use: documented, and the only stable surface.
pub mod api;
pub mod cli;
pub mod connectors;
pub mod jobs;
pub mod prelude;
pub mod state;
pub mod types;

pub use error::{Error, Result};
/// The job document (its own crate, so the operator can embed it without the runtime).
pub use weir_spec as spec;

// The machinery under the API. Not part of it: these stay `pub` (and hidden from the docs)
// only because the integration tests (`worker/tests`) and the fuzz targets (`fuzz/`) drive
// them directly, e.g. the wire decoders, the storage layer and a TLS peer.
#[doc(hidden)]
pub mod checkpoint;
#[doc(hidden)]
pub mod cluster;
#[doc(hidden)]
pub use weir_spec::fault_points;
#[doc(hidden)]
pub mod runtime;
/// Object storage (its own crate: the operator reads checkpoints through it too).
#[doc(hidden)]
pub use weir_storage as storage;

// Internal only; `api` re-exports the traits of `functions`.
mod error;
mod functions;
mod metrics;
mod rest;
