//! Sources and sinks.

pub mod file_sink;
pub mod file_source;
pub mod generator;
pub mod kafka;
pub mod nexmark;
pub mod print_sink;

pub use file_sink::FileSink;
pub use file_source::FileSource;
pub use generator::{SequenceEvent, SequenceGenerator};
pub use nexmark::NexmarkSource;
pub use print_sink::PrintSink;
