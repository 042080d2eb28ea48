//! `sequence-check`: the correctness oracle. A replayable generator emits 0, 1, 2, ... per
//! key; a keyed checker remembers the last number per key and passes each record on, or
//! emits an alert on a gap or a repeat. Committed output holding every (key, seq) exactly
//! once with no alert proves the pipeline exactly-once: state, offsets and sink agree.

use serde::{Deserialize, Serialize};

use super::BuiltJob;
use crate::api::{Emitter, KeyedProcessFunction, StreamEnv};
use crate::connectors::kafka::{KafkaSink, KafkaSinkSpec};
use crate::connectors::{FileSink, SequenceEvent, SequenceGenerator};
use crate::error::Result;
use crate::state::{KeyedContext, StateRegistry, ValueState};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    keys: u64,
    /// Omit to run forever.
    #[serde(default)]
    events_per_key: Option<u64>,
    /// Per source subtask; omit for full speed.
    #[serde(default)]
    events_per_second: Option<u64>,
    output: Output,
}

/// Where the checked records go: a folder or S3 prefix (exactly-once file sink), or a Kafka
/// topic (`{kafka: {topic: ...}}`, each record a JSON value keyed by its key).
#[derive(Debug)]
enum Output {
    Files(String),
    Kafka(KafkaSinkSpec),
}

impl<'de> Deserialize<'de> for Output {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        // Untagged by hand: serde's untagged enums drop the inner error, and with it the
        // field a user got wrong.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Kafka {
            kafka: serde_json::Value,
        }
        match serde_json::Value::deserialize(de)? {
            serde_json::Value::String(uri) => Ok(Output::Files(uri)),
            value @ serde_json::Value::Object(_) => {
                let Kafka { kafka } = serde_json::from_value(value).map_err(|_| {
                    D::Error::custom("expected a storage URI or {kafka: {topic: ...}}")
                })?;
                serde_path_to_error::deserialize(kafka)
                    .map(Output::Kafka)
                    .map_err(|e| match e.path().to_string().as_str() {
                        "." => D::Error::custom(format!("kafka: {}", e.inner())),
                        path => D::Error::custom(format!("kafka.{path}: {}", e.inner())),
                    })
            }
            _ => Err(D::Error::custom(
                "expected a storage URI or {kafka: {topic: ...}}",
            )),
        }
    }
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
    let generator = SequenceGenerator {
        keys: args.keys,
        events_per_key: args.events_per_key,
        events_per_second: args.events_per_second,
    };
    let checked = env
        .source("generator", generator)
        .key_by(|event: &SequenceEvent| event.key)
        .process("checker", SequenceChecker::default);
    let (graph, output) = match args.output {
        Output::Files(uri) => (checked.sink("output", FileSink::json_lines(&uri))?, uri),
        Output::Kafka(spec) => {
            let output = format!("Kafka topic {}", spec.topic);
            let sink = KafkaSink::json(spec, "job.args.output.kafka", |r: &CheckRecord| {
                Some(r.key.to_string())
            });
            (checked.sink("output", sink)?, output)
        }
    };
    Ok(BuiltJob {
        graph,
        output: Some(output),
        monitor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(yaml: &str) -> crate::error::Result<Args> {
        let doc = crate::spec::JobDocument::from_yaml(
            &format!("job: {{name: sequence-check, args: {yaml}}}"),
            "job.yaml",
        )?;
        Ok(doc.args()?)
    }

    #[test]
    fn output_is_a_storage_uri_or_a_kafka_topic() {
        let files = args("{keys: 1, output: 's3://b/out'}").expect("uri");
        assert!(matches!(files.output, Output::Files(uri) if uri == "s3://b/out"));
        let kafka =
            args("{keys: 1, output: {kafka: {topic: t, delivery: at-least-once}}}").expect("kafka");
        assert!(matches!(kafka.output, Output::Kafka(spec) if spec.topic == "t"));
    }

    #[test]
    fn a_bad_kafka_output_names_its_field() {
        let err = args("{keys: 1, output: {kafka: {topic: t, delivery: twice}}}")
            .expect_err("bad delivery")
            .to_string();
        assert!(
            err.contains("job.args.output") && err.contains("kafka.delivery"),
            "{err}"
        );
        let err = args("{keys: 1, output: {kafka: {topic: t}, extra: 1}}")
            .expect_err("extra key")
            .to_string();
        assert!(err.contains("job.args.output"), "{err}");
    }
}
