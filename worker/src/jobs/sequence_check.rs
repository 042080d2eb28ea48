//! `sequence-check`: the correctness oracle. A replayable generator emits 0, 1, 2, ... per
//! key; a keyed checker remembers the last number per key and passes each record on, or
//! emits an alert on a gap or a repeat. Committed output holding every (key, seq) exactly
//! once with no alert proves the pipeline exactly-once: state, offsets and sink agree.

use serde::{Deserialize, Serialize};

use super::BuiltJob;
use super::endpoints::{Input, Output};
use crate::api::{Emitter, KeyedProcessFunction, StreamEnv};
use crate::connectors::{SequenceEvent, SequenceGenerator};
use crate::error::{Error, Result};
use crate::state::{KeyedContext, StateRegistry, ValueState};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    /// Keys of the built-in generator.
    #[serde(default)]
    keys: Option<u64>,
    /// Omit to run forever.
    #[serde(default)]
    events_per_key: Option<u64>,
    /// Per source subtask; omit for full speed.
    #[serde(default)]
    events_per_second: Option<u64>,
    /// Omit for the built-in generator; files or Kafka records hold `{"key": k, "seq": n}`,
    /// each key's numbers in order (in Kafka: one partition per key, e.g. keyed by the key).
    #[serde(default)]
    input: Option<Input>,
    /// Each checked record as JSON; in Kafka keyed by its key.
    output: Output,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub key: u64,
    pub seq: u64,
    /// `gap` or `repeat`; absent on a good record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
}

#[derive(Default)]
pub struct SequenceChecker {
    last: Option<ValueState<u64>>,
}

impl KeyedProcessFunction<u64, SequenceEvent, CheckRecord> for SequenceChecker {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.last = Some(state.value_state("last-seq")?);
        Ok(())
    }

    fn process(
        &mut self,
        key: &u64,
        event: SequenceEvent,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, CheckRecord>,
    ) -> Result<()> {
        let Some(last) = &self.last else {
            return Ok(());
        };
        let expected = last.get(ctx)?.map_or(0, |l| l + 1);
        let alert = if event.seq == expected {
            None
        } else if event.seq < expected {
            Some("repeat")
        } else {
            Some("gap")
        };
        if event.seq >= expected {
            last.set(ctx, &event.seq)?;
        }
        out.emit(CheckRecord {
            key: *key,
            seq: event.seq,
            alert: alert.map(str::to_string),
            expected: alert.map(|_| expected),
        })
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: Args = env.doc().args()?;
    let events = match (&args.input, args.keys) {
        (None, Some(keys)) => env.source(
            "generator",
            SequenceGenerator {
                keys,
                events_per_key: args.events_per_key,
                events_per_second: args.events_per_second,
            },
        ),
        (Some(input), None) => input.source(env, "input", |_: &mut SequenceEvent, _| {})?,
        (None, None) => {
            return Err(Error::spec(
                "job.args",
                "give keys (the built-in generator) or an input",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(Error::spec(
                "job.args.keys",
                "keys is for the built-in generator; an input brings its own keys",
            ));
        }
    };
    let checked = events
        .key_by(|event: &SequenceEvent| event.key)
        .process("checker", SequenceChecker::default);
    let graph = args
        .output
        .sink(checked, "output", "job.args.output", |r: &CheckRecord| {
            Some(r.key.to_string())
        })?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output.describe()),
        monitor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(yaml: &str) -> crate::error::Result<Args> {
        crate::jobs::shared::parse_args("sequence-check", yaml)
    }

    #[test]
    fn the_generator_or_an_input() {
        let generated = args("{keys: 3, output: /o}").expect("generator");
        assert!(generated.input.is_none() && generated.keys == Some(3));
        let kafka = args("{input: {kafka: {topics: [events]}}, output: {kafka: {topic: t}}}")
            .expect("kafka");
        assert!(kafka.input.is_some_and(|i| i.is_kafka()));
    }
}
