//! The distributed runtime: one JobManager process and TaskManager processes.
//!
//! - The **JobManager** runs the same driver as local mode (`runtime::driver`): restore
//!   point, checkpoint coordinator, restart strategy, savepoints, REST API. Its executor
//!   deploys each attempt onto registered TaskManagers instead of threads, and turns a lost
//!   TaskManager (closed connection or missed heartbeats) into a task failure, so recovery is
//!   the ordinary restart from the latest completed checkpoint.
//! - A **TaskManager** registers its slots, heartbeats, and runs the subtasks it is given
//!   (slot sharing: slot `i` runs subtask `i` of every vertex) as threads, exactly as local
//!   mode does. Keyed exchanges between TaskManagers go over one TCP connection per channel
//!   (`exchange`), carrying records, barriers and end-of-stream in order.
//! - **Fencing**: every attempt has an epoch (`wire`). Control messages, task events and data
//!   connections of any other epoch are dropped, and sinks commit only on a completion
//!   notice of their own epoch, so a TaskManager that was paused and resumes cannot add
//!   output to a job that moved on.
//! - **No HA store**: a restarted JobManager finds the latest completed checkpoint under the
//!   job's storage prefix (`_metadata` written last makes that safe) and restores from it.
//!   Two JobManagers alive at once (the replacement pod starts while the old one terminates,
//!   or a paused one resumes) are fenced through that storage too: every checkpoint id's
//!   `_metadata` is written create-only, in order, and the newer JobManager's first write takes
//!   the id the older one needs next (`checkpoint::coordinator`).

pub mod exchange;
pub mod frame;
#[cfg(test)]
mod fuzz_seeds;
pub mod jobmanager;
pub mod taskmanager;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::spec::S3Options;
use crate::storage::{Location, ObjectStore};

#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub interval: Duration,
    /// A peer silent this long is considered lost.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Sends one control message as a frame and flushes.
pub(crate) fn send_control<T: serde::Serialize>(
    out: &mut BufWriter<impl Write>,
    message: &T,
) -> Result<()> {
    let payload = wire::encode_control(message)?;
    frame::write_frame(out, &payload).map_err(|e| Error::io("control connection", e))?;
    out.flush().map_err(|e| Error::io("control connection", e))
}

/// Reads one control message; `Ok(None)` on a clean close.
pub(crate) fn recv_control<T: serde::de::DeserializeOwned>(
    input: &mut BufReader<impl std::io::Read>,
    buf: &mut Vec<u8>,
) -> Result<Option<T>> {
    if !frame::read_frame(input, buf).map_err(|e| Error::io("control connection", e))? {
        return Ok(None);
    }
    wire::decode_control(buf).map(Some)
}

/// Opens savepoint directories named in barriers, once per URI.
pub(crate) struct Stores {
    rt: tokio::runtime::Handle,
    s3: S3Options,
    opened: Mutex<HashMap<String, ObjectStore>>,
}

impl Stores {
    pub fn new(rt: tokio::runtime::Handle, s3: S3Options) -> Self {
        Stores {
            rt,
            s3,
            opened: Mutex::new(HashMap::new()),
        }
    }
}

impl wire::StoreResolver for Stores {
    fn open(&self, uri: &str) -> Result<ObjectStore> {
        if let Some(store) = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uri)
        {
            return Ok(store.clone());
        }
        let store = self
            .rt
            .block_on(ObjectStore::open(&Location::parse(uri)?, &self.s3))?;
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uri.to_string(), store.clone());
        Ok(store)
    }
}
