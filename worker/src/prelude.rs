//! Everything a job needs, in one import: `use weir::prelude::*;`
//!
//! ```no_run
//! use weir::prelude::*;
//!
//! /// Counts lines per distinct line: a keyed function with one value state.
//! #[derive(Default)]
//! struct Count(Option<ValueState<u64>>);
//!
//! impl KeyedProcessFunction<String, String, (String, u64)> for Count {
//!     fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
//!         self.0 = Some(state.value_state("count")?);
//!         Ok(())
//!     }
//!
//!     fn process(
//!         &mut self,
//!         key: &String,
//!         _line: String,
//!         ctx: &mut KeyedContext<'_>,
//!         out: &mut Emitter<'_, (String, u64)>,
//!     ) -> Result<()> {
//!         let state = self.0.as_ref().expect("opened");
//!         let n = state.get(ctx)?.unwrap_or(0) + 1;
//!         state.set(ctx, &n)?;
//!         out.emit((key.clone(), n))
//!     }
//! }
//!
//! fn define(env: &StreamEnv) -> Result<BuiltJob> {
//!     let graph = env
//!         .source("lines", FileSource::lines("input/"))
//!         .key_by(|line: &String| line.clone())
//!         .process("count", Count::default)
//!         .sink("output", FileSink::json_lines("output/"))?;
//!     Ok(BuiltJob { graph, output: Some("output/".into()), monitor: None })
//! }
//!
//! fn main() -> anyhow::Result<()> {
//!     let mut jobs = JobRegistry::builtin();
//!     jobs.register("line-count", define);
//!     weir::cli::main_with(jobs)
//! }
//! ```
//!
//! The modules behind it ([`api`](crate::api), [`state`](crate::state),
//! [`connectors`](crate::connectors), [`jobs`](crate::jobs), [`types`](crate::types)) hold
//! the rest of what job authors may use.

pub use crate::api::{
    BroadcastProcessFunction, Data, Emitter, KeyedBroadcastProcessFunction, KeyedProcessFunction,
    KeyedStream, MapWindow, RecoverContext, SinkContext, SinkFactory, SinkWriter, SourceContext,
    SourceFactory, SourceReader, SourceStatus, Stream, StreamEnv, TimeWindow, WatermarkStrategy,
    WindowAssigner, WindowFunction, WindowOutput,
};
pub use crate::connectors::{FileSink, FileSource, PrintSink};
pub use crate::jobs::{BuiltJob, JobRegistry};
pub use crate::spec::JobDocument;
pub use crate::state::{
    AggregateFunction, AggregatingState, BroadcastMapState, BroadcastStates, KeyedContext,
    ListState, MapState, ReducingState, StateRegistry, StateTtl, TimeDomain, Timer, UpdateType,
    ValueState, Visibility,
};
pub use crate::types::{Key, Timestamp, Watermark};
pub use crate::{Error, Result};
