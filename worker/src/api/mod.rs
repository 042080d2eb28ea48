//! What job authors touch: streams and their operators, built on the runtime's tasks and
//! chains (as Flink's DataStream API sits on its runtime). The traits a job implements live
//! below the runtime in [`crate::functions`] and are re-exported here, so a job needs only
//! this module.
//!
//! ```ignore
//! let env = StreamEnv::new(doc);
//! env.source("lines", FileSource::lines(input))
//!     .flat_map(|line: String| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
//!     .key_by(|word: &String| word.clone())
//!     .process("counter", || WordCounter::default())
//!     .sink("output", FileSink::json_lines(output))
//! ```

pub mod broadcast;
pub mod stream;
pub mod time;
pub mod window;

pub use broadcast::{BroadcastConnectedKeyedStream, BroadcastConnectedStream, BroadcastStream};
pub use stream::{KeyedStream, Stream, StreamEnv};
pub use time::{EventTimeKeyedStream, EventTimeStream, WatermarkStrategy};
pub use window::{
    MapWindow, TimeWindow, WindowAssigner, WindowFunction, WindowOutput, WindowStreams,
    WindowedStream,
};

pub use crate::functions::{
    BroadcastProcessFunction, KeyedBroadcastProcessFunction, KeyedProcessFunction,
    Output as Emitter, RecoverContext, SinkContext, SinkFactory, SinkWriter, SourceContext,
    SourceFactory, SourceReader, SourceStatus,
};
pub use crate::runtime::graph::JobGraph;
pub use crate::types::{Data, Key};
