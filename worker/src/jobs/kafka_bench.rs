//! `kafka-bench`: the Kafka benchmark job of `scripts/bench-kafka.sh` (BENCHMARKS.md, "Kafka").
//! Reads `{"key": k, "ts": ms, "seq": n, "v": x, "p": "..."}` from Kafka (or files) and writes
//! one record per input record:
//!
//! - `mode: map`: stateless; `{key, ts, seq, v: v * 3, p}` (the producer's `ts` passed through);
//! - `mode: count`: keyed running count in `ValueState`; `{key, count, ts}`.
//!
//! `ts` is the producer's wall clock (ms since the epoch), so a reader of the output topic
//! measures end-to-end latency as its own clock minus `ts`. With the exactly-once sink a record
//! becomes visible only when its checkpoint completed: latency ≈ the checkpoint interval.
//!
//! ```yaml
//! job:
//!   name: kafka-bench
//!   args: {mode: count, input: {kafka: {topics: [in], bounded: true}}, output: {kafka: {topic: out}}}
//! ```
//!
//! At the end (a bounded input finished, or the job was cancelled) it prints one JSON line on
//! stdout: `{"bench": "kafka", "mode": ..., "wall_s": ..., "checkpoints": {...}}`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::endpoints::{Input, Output};
use super::shared::{RunningCount, checkpoint_durations, percentile, print_line};
use super::{BuiltJob, JobMonitor};
use crate::api::StreamEnv;
use crate::error::Result;
use crate::runtime::job::JobHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Mode {
    /// Stateless: every record transformed and passed on.
    Map,
    /// Keyed running count per `key`.
    Count,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    mode: Mode,
    /// Events as JSON: a Kafka topic (usually) or files.
    input: Input,
    /// Results as JSON, keyed by `key` in Kafka.
    output: Output,
}

/// One input event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchEvent {
    pub key: u64,
    /// The producer's clock, ms since the epoch.
    pub ts: i64,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub v: u64,
    /// Padding, passed through by `map`.
    #[serde(default)]
    pub p: String,
}

/// `count`'s output: the key's count so far and the `ts` of the event that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCount {
    pub key: u64,
    pub count: u64,
    pub ts: i64,
}

/// Prints the run's figures when it ends.
struct Monitor {
    mode: Mode,
}

impl JobMonitor for Monitor {
    fn ended(&self, job: &JobHandle, wall: Duration) {
        let stats = job.checkpoints();
        let durations = checkpoint_durations(&stats);
        let line = serde_json::json!({
            "bench": "kafka",
            "mode": self.mode,
            "wall_s": wall.as_secs_f64(),
            "checkpoints": {
                "completed": stats.counts.completed,
                "failed": stats.counts.failed,
                "duration_ms_p50": percentile(&durations, 50.0),
                "duration_ms_max": durations.last(),
            },
        });
        print_line(&line.to_string());
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: Args = env.doc().args()?;
    let events = args
        .input
        .source(env, "input", |_: &mut BenchEvent, _| {})?;
    let graph = match args.mode {
        Mode::Map => {
            let mapped = events.map(|e: BenchEvent| BenchEvent {
                v: e.v.wrapping_mul(3),
                ..e
            });
            args.output
                .sink(mapped, "output", "job.args.output", |e: &BenchEvent| {
                    Some(e.key.to_string())
                })?
        }
        Mode::Count => {
            let counted = events.key_by(|e: &BenchEvent| e.key).process("count", || {
                RunningCount::new(|key: &u64, count, event: BenchEvent| KeyCount {
                    key: *key,
                    count,
                    ts: event.ts,
                })
            });
            args.output
                .sink(counted, "output", "job.args.output", |c: &KeyCount| {
                    Some(c.key.to_string())
                })?
        }
    };
    Ok(BuiltJob {
        graph,
        output: Some(args.output.describe()),
        monitor: Some(std::sync::Arc::new(Monitor { mode: args.mode })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(yaml: &str) -> crate::error::Result<Args> {
        crate::jobs::shared::parse_args("kafka-bench", yaml)
    }

    #[test]
    fn mode_input_and_output() {
        let map = args(
            "{mode: map, input: {kafka: {topics: [in], bounded: true}}, output: {kafka: {topic: out}}}",
        )
        .expect("map");
        assert_eq!(map.mode, Mode::Map);
        assert!(matches!(map.input, Input::Kafka(spec) if spec.topics == ["in"] && spec.bounded));
        assert!(matches!(map.output, Output::Kafka(spec) if spec.topic == "out"));
        let count = args("{mode: count, input: /in, output: /out}").expect("count");
        assert_eq!(count.mode, Mode::Count);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let err = args("{mode: reduce, input: /in, output: /out}")
            .expect_err("unknown mode")
            .to_string();
        assert!(err.contains("mode"), "{err}");
        assert!(
            args("{input: /in, output: /out}").is_err(),
            "mode is required"
        );
        assert!(
            args("{mode: map, input: /in, output: /out, rate: 5}").is_err(),
            "unknown field"
        );
    }

    #[test]
    fn events_decode_with_defaults_and_count_encodes() {
        let e: BenchEvent = serde_json::from_str(r#"{"key":7,"ts":1700000000000}"#).expect("event");
        assert_eq!(
            (e.key, e.ts, e.seq, e.v, e.p.as_str()),
            (7, 1_700_000_000_000, 0, 0, "")
        );
        let c = serde_json::to_string(&KeyCount {
            key: 7,
            count: 2,
            ts: 5,
        })
        .expect("encode");
        assert_eq!(c, r#"{"key":7,"count":2,"ts":5}"#);
    }
}
