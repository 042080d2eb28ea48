//! `word-count`: running count per word (lower-cased, split on anything not alphanumeric).

use serde::Serialize;

use super::{BuiltJob, FileJobArgs};
use crate::api::{Emitter, KeyedProcessFunction, StreamEnv};
use crate::connectors::{FileSink, FileSource};
use crate::error::Result;
use crate::state::{KeyedContext, ReducingState, StateRegistry};

#[derive(Debug, Serialize)]
pub struct WordCount {
    pub word: String,
    pub count: u64,
}

#[derive(Default)]
struct WordCounter {
    count: Option<ReducingState<u64>>,
}

impl KeyedProcessFunction<String, String, WordCount> for WordCounter {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.count = Some(state.reducing_state("count", |a: u64, b: u64| a + b)?);
        Ok(())
    }

    fn process(
        &mut self,
        word: &String,
        _value: String,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, WordCount>,
    ) -> Result<()> {
        let Some(state) = &self.count else {
            return Ok(());
        };
        state.add(ctx, 1)?;
        let count = state.get(ctx)?.unwrap_or(0);
        out.emit(WordCount {
            word: word.clone(),
            count,
        })
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: FileJobArgs = env.doc().args()?;
    let graph = env
        .source("text", FileSource::lines(&args.input))
        .flat_map(|line: String| {
            line.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .key_by(|word: &String| word.clone())
        .process("word-counter", WordCounter::default)
        .sink("output", FileSink::json_lines(&args.output))?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}
