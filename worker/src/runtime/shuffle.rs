//! The producer side of a keyed shuffle: routes each record to the subtask owning its key
//! group, in batches, over bounded channels. A full channel blocks the producer, which is how
//! a slow consumer slows its sources instead of growing memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};

use super::chain::{Collector, Downstream};
use super::watermark::Watermark;
use super::{BATCH_SIZE, Barrier, Message, TaskEnv, TaskSnapshot};
use crate::error::{Error, Result};
use crate::state::keygroups::{key_group_for_key_bytes, subtask_for_key_group};
use crate::types::Key;

/// A record with its key and key group, computed once by the producer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct KeyedRecord<K, T> {
    pub key_group: u16,
    pub key: K,
    pub value: T,
}

pub struct ShuffleWriter<K, T> {
    pub(crate) key_fn: Arc<dyn Fn(&T) -> K + Send + Sync>,
    pub(crate) outputs: Vec<Sender<Message<KeyedRecord<K, T>>>>,
    pub(crate) max_parallelism: u32,
    buffers: Vec<Vec<KeyedRecord<K, T>>>,
    key_bytes: Vec<u8>,
    cancelled: Option<Arc<std::sync::atomic::AtomicBool>>,
    blocked: Duration,
    operator: String,
    last_watermark: Option<Watermark>,
}

impl<K: Key, T: Send + 'static> ShuffleWriter<K, T> {
    pub fn new(
        key_fn: Arc<dyn Fn(&T) -> K + Send + Sync>,
        outputs: Vec<Sender<Message<KeyedRecord<K, T>>>>,
        max_parallelism: u32,
        operator: &str,
    ) -> Self {
        let buffers = outputs
            .iter()
            .map(|_| Vec::with_capacity(BATCH_SIZE))
            .collect();
        ShuffleWriter {
            key_fn,
            outputs,
            max_parallelism,
            buffers,
            key_bytes: Vec::with_capacity(64),
            cancelled: None,
            blocked: Duration::ZERO,
            operator: operator.to_string(),
            last_watermark: None,
        }
    }

    fn send(&mut self, target: usize, mut message: Message<KeyedRecord<K, T>>) -> Result<()> {
        let mut started: Option<Instant> = None;
        loop {
            match self.outputs[target].send_timeout(message, Duration::from_millis(100)) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(m)) => {
                    started.get_or_insert_with(Instant::now);
                    if self
                        .cancelled
                        .as_ref()
                        .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                    {
                        return Err(Error::Cancelled);
                    }
                    message = m;
                }
                // The consumer is gone: the attempt is being torn down.
                Err(SendTimeoutError::Disconnected(_)) => return Err(Error::Cancelled),
            }
        }
        if let Some(started) = started {
            self.blocked += started.elapsed();
        }
        Ok(())
    }

    fn send_batch(&mut self, target: usize) -> Result<()> {
        if self.buffers[target].is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buffers[target], Vec::with_capacity(BATCH_SIZE));
        self.send(target, Message::Records(batch))
    }

    fn broadcast(&mut self, make: impl Fn() -> Message<KeyedRecord<K, T>>) -> Result<()> {
        for target in 0..self.outputs.len() {
            self.send_batch(target)?;
            self.send(target, make())?;
        }
        Ok(())
    }

    fn report_backpressure(&mut self) {
        if !self.blocked.is_zero() {
            let metrics = crate::metrics::global();
            metrics
                .backpressure_ms
                .get_or_create(&metrics.operator(&self.operator))
                .inc_by(self.blocked.as_millis() as u64);
            self.blocked = Duration::ZERO;
        }
    }
}

impl<K: Key, T: Send + 'static> Downstream<T> for ShuffleWriter<K, T> {
    fn collect(&mut self, value: T) -> Result<()> {
        let key = (self.key_fn)(&value);
        self.key_bytes.clear();
        key.write_key(&mut self.key_bytes);
        let key_group = key_group_for_key_bytes(&self.key_bytes, self.max_parallelism);
        let target =
            subtask_for_key_group(key_group, self.max_parallelism, self.outputs.len() as u32)
                as usize;
        self.buffers[target].push(KeyedRecord {
            key_group,
            key,
            value,
        });
        if self.buffers[target].len() >= BATCH_SIZE {
            self.send_batch(target)?;
        }
        Ok(())
    }
}

impl<K: Key, T: Send + 'static> Collector<T> for ShuffleWriter<K, T> {
    fn open(&mut self, env: &TaskEnv) -> Result<()> {
        self.cancelled = Some(env.cancelled.clone());
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &Barrier, _snapshot: &mut TaskSnapshot) -> Result<()> {
        self.broadcast(|| Message::Barrier(barrier.clone()))?;
        self.report_backpressure();
        Ok(())
    }

    fn on_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        for target in 0..self.outputs.len() {
            self.send_batch(target)?;
        }
        self.report_backpressure();
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.broadcast(|| Message::EndOfStream)
    }

    /// Every consumer gets the watermark, after the records that preceded it.
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if self.last_watermark == Some(watermark) {
            return Ok(());
        }
        self.last_watermark = Some(watermark);
        self.broadcast(|| Message::Watermark(watermark))
    }
}
