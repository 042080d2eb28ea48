//! `url-count`: the access-log example. A running count of requests per URL, kept in
//! ValueState: the first `/api/a` yields `{"url":"/api/a","count":1}`, the second `count: 2`.

use serde::{Deserialize, Serialize};

use super::{BuiltJob, FileJobArgs};
use crate::api::{Emitter, KeyedProcessFunction, StreamEnv};
use crate::connectors::{FileSink, FileSource};
use crate::error::Result;
use crate::state::{KeyedContext, StateRegistry, ValueState};

#[derive(Debug, Serialize, Deserialize)]
pub struct AccessLog {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub remote_addr: String,
    pub request: String,
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct UrlCount {
    pub url: String,
    pub count: u64,
}

#[derive(Default)]
struct UrlCounter {
    count: Option<ValueState<u64>>,
}

impl KeyedProcessFunction<String, AccessLog, UrlCount> for UrlCounter {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.count = Some(state.value_state("count")?);
        Ok(())
    }

    fn process(
        &mut self,
        url: &String,
        _log: AccessLog,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, UrlCount>,
    ) -> Result<()> {
        let Some(state) = &self.count else {
            return Ok(());
        };
        let count = state.get(ctx)?.unwrap_or(0) + 1;
        state.set(ctx, &count)?;
        out.emit(UrlCount {
            url: url.clone(),
            count,
        })
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: FileJobArgs = env.doc().args()?;
    let graph = env
        .source(
            "access-log",
            FileSource::<AccessLog>::json_lines(&args.input),
        )
        .key_by(|log: &AccessLog| log.url.clone())
        .process("url-counter", UrlCounter::default)
        .sink("output", FileSink::json_lines(&args.output))?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}
