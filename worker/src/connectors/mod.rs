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

use crate::error::{Error, Result};
use crate::spec::MalformedRecordPolicy;

/// A record at `location` that did not decode: an error naming it (`fail`), or counted and
/// logged (`skip`), by the job's `malformedRecords` policy.
pub(crate) fn malformed_record(
    policy: MalformedRecordPolicy,
    location: String,
    message: String,
) -> Result<()> {
    match policy {
        MalformedRecordPolicy::Fail => Err(Error::MalformedRecord { location, message }),
        MalformedRecordPolicy::Skip => {
            crate::metrics::global().malformed_records.inc();
            tracing::warn!(%location, %message, "skipping malformed record");
            Ok(())
        }
    }
}
