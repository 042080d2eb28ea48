//! Event time: timestamps and the watermarks that flow with the records.
//!
//! A watermark `At(t)` on a channel promises that no record with timestamp `<= t` follows on
//! that channel (records that do are late). How a task with several inputs combines them is
//! `runtime::watermark::WatermarkTracker`.

use serde::{Deserialize, Serialize};

/// Milliseconds since the epoch, as event timestamps are.
pub type Timestamp = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Watermark {
    /// No record with a timestamp `<= t` follows.
    At(Timestamp),
    /// This channel has had no records for a while: leave it out of the minimum until it
    /// sends `At` again (Flink's `WatermarkStatus.IDLE`).
    Idle,
}

impl Watermark {
    /// Sent at the end of input: fires every event-time timer and window.
    pub const MAX: Watermark = Watermark::At(Timestamp::MAX);
}
