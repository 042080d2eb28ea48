//! `url-count`: the access-log example. A running count of requests per URL, kept in
//! ValueState: the first `/api/a` yields `{"url":"/api/a","count":1}`, the second `count: 2`.

use serde::{Deserialize, Serialize};

use super::shared::RunningCount;
use super::{BuiltJob, FileJobArgs};
use crate::api::StreamEnv;
use crate::connectors::{FileSink, FileSource};
use crate::error::Result;

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

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: FileJobArgs = env.doc().args()?;
    let graph = env
        .source(
            "access-log",
            FileSource::<AccessLog>::json_lines(&args.input),
        )
        .key_by(|log: &AccessLog| log.url.clone())
        .process("url-counter", || {
            RunningCount::new(|url: &String, count, _: AccessLog| UrlCount {
                url: url.clone(),
                count,
            })
        })
        .sink("output", FileSink::json_lines(&args.output))?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}
