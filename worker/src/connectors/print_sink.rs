//! Prints each record as a JSON line on stdout. Not transactional: after a restore, records
//! since the last checkpoint are printed again (at-least-once). For demos and debugging.

use std::io::Write;

use serde::Serialize;

use crate::api::{SinkContext, SinkFactory, SinkWriter};
use crate::error::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct PrintSink;

impl<T: Serialize + Send + 'static> SinkFactory<T> for PrintSink {
    fn create_writer(&self, _ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(PrintWriter))
    }
}

struct PrintWriter;

impl<T: Serialize> SinkWriter<T> for PrintWriter {
    fn write(&mut self, item: T) -> Result<()> {
        let line =
            serde_json::to_string(&item).map_err(|e| Error::codec("print sink record", e))?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").map_err(|e| Error::io("stdout", e))
    }

    fn pre_commit(&mut self, _checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        std::io::stdout()
            .flush()
            .map_err(|e| Error::io("stdout", e))?;
        Ok(Vec::new())
    }

    fn commit(&mut self, _checkpoint_id: u64) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        std::io::stdout()
            .flush()
            .map_err(|e| Error::io("stdout", e))
    }
}
