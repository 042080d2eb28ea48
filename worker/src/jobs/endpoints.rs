//! Where built-in jobs read and write: a folder or S3 prefix of JSON-lines files, or Kafka.
//! In a job document an input or output is either a storage URI or `{kafka: {...}}`:
//!
//! ```yaml
//! input: s3://bucket/trades            # or {kafka: {topics: [trades]}}
//! output: {kafka: {topic: minute-bars}} # or /tmp/out
//! ```

use serde::Deserialize;
use serde::de::{DeserializeOwned, Error as _};

use crate::api::{JobGraph, Stream, StreamEnv};
use crate::connectors::kafka::{
    KafkaRecord, KafkaSink, KafkaSinkSpec, KafkaSource, KafkaSourceSpec,
};
use crate::connectors::{FileSink, FileSource};
use crate::error::Result;

/// A job's input.
#[derive(Debug, Clone)]
pub enum Input {
    /// JSON-lines files under a folder or S3 prefix.
    Files(String),
    /// JSON values of Kafka records.
    Kafka(KafkaSourceSpec),
}

/// A job's output.
#[derive(Debug, Clone)]
pub enum Output {
    /// JSON lines committed under a folder or S3 prefix (exactly-once file sink).
    Files(String),
    /// JSON values written to a Kafka topic (transactional, exactly-once by default).
    Kafka(KafkaSinkSpec),
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        uri_or_kafka(de, "{kafka: {topics: [...]}}").map(|e| match e {
            Either::Uri(uri) => Input::Files(uri),
            Either::Kafka(spec) => Input::Kafka(spec),
        })
    }
}

impl<'de> Deserialize<'de> for Output {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        uri_or_kafka(de, "{kafka: {topic: ...}}").map(|e| match e {
            Either::Uri(uri) => Output::Files(uri),
            Either::Kafka(spec) => Output::Kafka(spec),
        })
    }
}

enum Either<T> {
    Uri(String),
    Kafka(T),
}

/// Untagged by hand: serde's untagged enums drop the inner error, and with it the field a
/// user got wrong.
fn uri_or_kafka<'de, D: serde::Deserializer<'de>, T: DeserializeOwned>(
    de: D,
    kafka_form: &str,
) -> std::result::Result<Either<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Kafka {
        kafka: serde_json::Value,
    }
    let expected = || D::Error::custom(format!("expected a storage URI or {kafka_form}"));
    match serde_json::Value::deserialize(de)? {
        serde_json::Value::String(uri) => Ok(Either::Uri(uri)),
        value @ serde_json::Value::Object(_) => {
            let Kafka { kafka } = serde_json::from_value(value).map_err(|_| expected())?;
            serde_path_to_error::deserialize(kafka)
                .map(Either::Kafka)
                .map_err(|e| match e.path().to_string().as_str() {
                    "." => D::Error::custom(format!("kafka: {}", e.inner())),
                    path => D::Error::custom(format!("kafka.{path}: {}", e.inner())),
                })
        }
        _ => Err(expected()),
    }
}

impl Input {
    /// The input's records decoded from JSON. `split` receives each Kafka record's partition
    /// as a watermark split id ([`KafkaRecord::split_id`]) for per-partition watermarks.
    pub fn source<T: DeserializeOwned + Send + 'static>(
        &self,
        env: &StreamEnv,
        uid: &str,
        split: impl Fn(&mut T, u64) + Send + Sync + 'static,
    ) -> Result<Stream<T>> {
        Ok(match self {
            Input::Files(uri) => env.source(uid, FileSource::<T>::json_lines(uri)),
            Input::Kafka(spec) => {
                let source = KafkaSource::decoded(spec.clone(), move |record: &KafkaRecord| {
                    let value = record.value.as_deref().ok_or("the record has no value")?;
                    let mut item: T = serde_json::from_slice(value).map_err(|e| e.to_string())?;
                    split(&mut item, record.split_id());
                    Ok(item)
                })?;
                env.source(uid, source)
            }
        })
    }

    pub fn is_kafka(&self) -> bool {
        matches!(self, Input::Kafka(_))
    }
}

impl Output {
    /// Sends `stream` to the output as JSON; Kafka records are keyed by `key`.
    pub fn sink<T, K>(
        &self,
        stream: Stream<T>,
        uid: &str,
        field: &str,
        key: impl Fn(&T) -> Option<K> + Send + Sync + 'static,
    ) -> Result<JobGraph>
    where
        T: serde::Serialize + Send + 'static,
        K: AsRef<[u8]>,
    {
        match self {
            Output::Files(uri) => stream.sink(uid, FileSink::json_lines(uri)),
            Output::Kafka(spec) => stream.sink(
                uid,
                KafkaSink::json(spec.clone(), format!("{field}.kafka"), key),
            ),
        }
    }

    /// Where the output goes, for the user.
    pub fn describe(&self) -> String {
        match self {
            Output::Files(uri) => uri.clone(),
            Output::Kafka(spec) => format!("Kafka topic {}", spec.topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Args {
        input: Input,
        output: Output,
    }

    fn args(yaml: &str) -> crate::error::Result<Args> {
        crate::jobs::shared::parse_args("sequence-check", yaml)
    }

    #[test]
    fn inputs_and_outputs_are_storage_uris_or_kafka() {
        let files = args("{input: /in, output: 's3://b/out'}").expect("uris");
        assert!(matches!(files.input, Input::Files(uri) if uri == "/in"));
        assert!(matches!(files.output, Output::Files(uri) if uri == "s3://b/out"));
        let kafka = args(
            "{input: {kafka: {topics: [a, b]}}, output: {kafka: {topic: t, delivery: at-least-once}}}",
        )
        .expect("kafka");
        assert!(matches!(kafka.input, Input::Kafka(spec) if spec.topics == ["a", "b"]));
        assert!(matches!(kafka.output, Output::Kafka(spec) if spec.topic == "t"));
    }

    #[test]
    fn a_bad_kafka_endpoint_names_its_field() {
        let err = args("{input: /in, output: {kafka: {topic: t, delivery: twice}}}")
            .expect_err("bad delivery")
            .to_string();
        assert!(
            err.contains("job.args.output") && err.contains("kafka.delivery"),
            "{err}"
        );
        let err = args("{input: {kafka: {topics: [a], startFrom: yesterday}}, output: /o}")
            .expect_err("bad start")
            .to_string();
        assert!(
            err.contains("job.args.input") && err.contains("kafka.startFrom"),
            "{err}"
        );
        let err = args("{input: /in, output: {kafka: {topic: t}, extra: 1}}")
            .expect_err("extra key")
            .to_string();
        assert!(err.contains("job.args.output"), "{err}");
        let err = args("{input: 7, output: /o}")
            .expect_err("number")
            .to_string();
        assert!(
            err.contains("job.args.input") && err.contains("storage URI"),
            "{err}"
        );
    }
}
