//! `window-check`: the event-time oracle. The replayable sequence generator's events get
//! event times that are out of order (within `outOfOrderness`) and come in bursts per key
//! (so sessions form), then go through one kind of window:
//!
//! - `tumbling`: count, min and max sequence number per window (AggregatingState);
//! - `sliding`: the largest sequence number per window (ReducingState);
//! - `session`: every sequence number of the session (ListState), summarized.
//!
//! The event time of an event depends only on its key and number, so the window results of
//! any run, crashed, restored or rescaled, must equal those of an uninterrupted one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BuiltJob;
use crate::api::{
    Emitter, MapWindow, StreamEnv, TimeWindow, WatermarkStrategy, WindowAssigner, WindowStreams,
};
use crate::connectors::{FileSink, SequenceEvent, SequenceGenerator};
use crate::error::{Error, Result};
use crate::state::AggregateFunction;

/// Milliseconds between consecutive numbers of one key.
pub const STEP_MS: i64 = 100;
/// Numbers per burst; bursts are `BURST_GAP_MS` apart, so a session gap below it splits them.
pub const BURST: u64 = 40;
pub const BURST_GAP_MS: i64 = 3_000;

/// The event time of `seq` of `key`: a deterministic jitter of up to 399 ms on a regular
/// clock, plus a gap between bursts.
pub fn event_time(key: u64, seq: u64) -> i64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&key.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    let jitter = (xxhash_rust::xxh3::xxh3_64(&bytes) % 400) as i64;
    seq as i64 * STEP_MS + (seq / BURST) as i64 * BURST_GAP_MS + jitter
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    keys: u64,
    events_per_key: u64,
    #[serde(default)]
    events_per_second: Option<u64>,
    /// `tumbling` (size 1s), `sliding` (size 2s, slide 1s) or `session` (gap 1s).
    window: String,
    #[serde(default = "default_out_of_orderness", with = "humantime_serde")]
    out_of_orderness: Duration,
    output: String,
    #[serde(default)]
    late_output: Option<String>,
}

fn default_out_of_orderness() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowSummary {
    pub key: u64,
    pub start: i64,
    pub end: i64,
    pub count: u64,
    pub min_seq: u64,
    pub max_seq: u64,
}

#[derive(Clone)]
struct SeqStats;

impl AggregateFunction for SeqStats {
    type In = SequenceEvent;
    /// (count, min, max)
    type Acc = (u64, u64, u64);
    type Out = (u64, u64, u64);
    fn create_accumulator(&self) -> Self::Acc {
        (0, u64::MAX, 0)
    }
    fn add(&self, e: SequenceEvent, (n, lo, hi): Self::Acc) -> Self::Acc {
        (n + 1, lo.min(e.seq), hi.max(e.seq))
    }
    fn result(&self, acc: &Self::Acc) -> Self::Out {
        *acc
    }
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Option<Self::Acc> {
        Some((a.0 + b.0, a.1.min(b.1), a.2.max(b.2)))
    }
}

fn summary(
    key: u64,
    window: &TimeWindow,
    (count, min_seq, max_seq): (u64, u64, u64),
) -> WindowSummary {
    WindowSummary {
        key,
        start: window.start,
        end: window.end,
        count,
        min_seq,
        max_seq,
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: Args = env.doc().args()?;
    let generator = SequenceGenerator {
        keys: args.keys,
        events_per_key: Some(args.events_per_key),
        events_per_second: args.events_per_second,
    };
    let keyed = env
        .source("generator", generator)
        .assign_timestamps(
            "event-time",
            WatermarkStrategy::bounded_out_of_orderness(
                args.out_of_orderness,
                |e: &SequenceEvent| event_time(e.key, e.seq),
            )
            .with_emit_every(64),
        )
        .key_by(|e: &SequenceEvent| e.key);
    let windows: WindowStreams<WindowSummary, SequenceEvent> = match args.window.as_str() {
        "tumbling" => keyed
            .window(WindowAssigner::tumbling(Duration::from_secs(1)))
            .aggregate("windows", SeqStats, || {
                MapWindow(|key: &u64, w: &TimeWindow, stats| summary(*key, w, stats))
            }),
        "sliding" => keyed
            .window(WindowAssigner::sliding(
                Duration::from_secs(2),
                Duration::from_secs(1),
            ))
            .reduce(
                "windows",
                |a: SequenceEvent, b: SequenceEvent| if b.seq > a.seq { b } else { a },
                || {
                    MapWindow(|key: &u64, w: &TimeWindow, max: SequenceEvent| {
                        summary(*key, w, (0, 0, max.seq))
                    })
                },
            ),
        "session" => keyed
            .window(WindowAssigner::session(Duration::from_secs(1)))
            .process("windows", || SessionSummary),
        other => {
            return Err(Error::spec(
                "job.args.window",
                format!("{other:?} is not tumbling, sliding or session"),
            ));
        }
    };
    let mut graph = windows
        .results
        .sink("output", FileSink::json_lines(&args.output))?;
    if let Some(late_output) = &args.late_output {
        graph = graph.and(
            windows
                .late
                .sink("late-output", FileSink::json_lines(late_output))?,
        );
    }
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}

struct SessionSummary;

impl crate::api::WindowFunction<u64, Vec<SequenceEvent>, WindowSummary> for SessionSummary {
    fn apply(
        &mut self,
        key: &u64,
        window: &TimeWindow,
        events: Vec<SequenceEvent>,
        _ctx: &mut crate::state::KeyedContext<'_>,
        out: &mut Emitter<'_, WindowSummary>,
    ) -> Result<()> {
        let stats = events.iter().fold(SeqStats.create_accumulator(), |acc, e| {
            SeqStats.add(*e, acc)
        });
        out.emit(summary(*key, window, stats))
    }
}
