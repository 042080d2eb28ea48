//! `consumer-lag`: the stateless example. Each record carries the producer's offset and each
//! consumer group's; the output is every consumer's lag behind the producer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BuiltJob, FileJobArgs};
use crate::api::StreamEnv;
use crate::connectors::{FileSink, FileSource};
use crate::error::Result;

#[derive(Debug, Deserialize)]
pub struct Offsets {
    pub timestamp: serde_json::Value,
    pub offset: OffsetMap,
}

#[derive(Debug, Deserialize)]
pub struct OffsetMap {
    pub producer: i64,
    #[serde(flatten)]
    pub consumers: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize)]
pub struct Lag {
    pub timestamp: serde_json::Value,
    pub lag: BTreeMap<String, i64>,
}

pub fn lag(offsets: Offsets) -> Lag {
    let producer = offsets.offset.producer;
    Lag {
        timestamp: offsets.timestamp,
        lag: offsets
            .offset
            .consumers
            .into_iter()
            .map(|(consumer, offset)| (consumer, producer - offset))
            .collect(),
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: FileJobArgs = env.doc().args()?;
    let graph = env
        .source("offsets", FileSource::<Offsets>::json_lines(&args.input))
        .map(lag)
        .sink("output", FileSink::json_lines(&args.output))?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}
