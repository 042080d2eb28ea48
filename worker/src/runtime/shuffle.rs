//! The producer side of an exchange between tasks: records go in batches over bounded
//! channels, and a full channel blocks the producer, which is how a slow consumer slows its
//! sources instead of growing memory. Three ways to route a record:
//!
//! - [`ShuffleWriter`]: to the subtask owning its key group (a keyed shuffle);
//! - [`BroadcastWriter`]: a copy to every subtask (the broadcast side of broadcast state);
//! - [`ForwardWriter`]: to the consumer subtask of the producer's own index.
//!
//! Barriers, watermarks and the end of the stream always go to every consumer, so each
//! consumer aligns and tracks event time over all of its producers alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};

use super::chain::{Collector, Downstream};
use super::watermark::Watermark;
use super::{BATCH_SIZE, Barrier, Message, TaskEnv, TaskSnapshot};
use crate::error::{Error, Result};
use crate::state::keygroups::{
    key_group_for_key_bytes, key_group_range_for_subtask, subtask_for_key_group,
};
use crate::types::Key;

/// A record with its key and key group, computed once by the producer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct KeyedRecord<K, T> {
    pub key_group: u16,
    pub key: K,
    pub value: T,
}

/// One producer's channels to every consumer, with a batch being filled for each.
pub struct ExchangeOutputs<R> {
    outputs: Vec<Sender<Message<R>>>,
    buffers: Vec<Vec<R>>,
    cancelled: Option<Arc<std::sync::atomic::AtomicBool>>,
    blocked: Duration,
    operator: String,
    last_watermark: Option<Watermark>,
}

impl<R: Send + 'static> ExchangeOutputs<R> {
    pub fn new(outputs: Vec<Sender<Message<R>>>, operator: &str) -> Self {
        let buffers = outputs
            .iter()
            .map(|_| Vec::with_capacity(BATCH_SIZE))
            .collect();
        ExchangeOutputs {
            outputs,
            buffers,
            cancelled: None,
            blocked: Duration::ZERO,
            operator: operator.to_string(),
            last_watermark: None,
        }
    }

    fn consumers(&self) -> usize {
        self.outputs.len()
    }

    /// Adds `record` to consumer `target`'s batch, sending the batch once it is full.
    fn push(&mut self, target: usize, record: R) -> Result<()> {
        self.buffers[target].push(record);
        if self.buffers[target].len() >= BATCH_SIZE {
            self.send_batch(target)?;
        }
        Ok(())
    }

    fn send(&mut self, target: usize, mut message: Message<R>) -> Result<()> {
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

    /// Sends `make()` to every consumer, after the records batched for it.
    fn send_to_all(&mut self, make: impl Fn() -> Message<R>) -> Result<()> {
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

    fn open(&mut self, env: &TaskEnv) -> Result<()> {
        self.cancelled = Some(env.cancelled.clone());
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &Barrier) -> Result<()> {
        self.send_to_all(|| Message::Barrier(barrier.clone()))?;
        self.report_backpressure();
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
        self.send_to_all(|| Message::EndOfStream)
    }

    /// Every consumer gets the watermark, after the records that preceded it.
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if self.last_watermark == Some(watermark) {
            return Ok(());
        }
        self.last_watermark = Some(watermark);
        self.send_to_all(|| Message::Watermark(watermark))
    }
}

/// The chain hooks of a writer whose channels are `self.out`: they are the same for every
/// way of routing records.
macro_rules! exchange_hooks {
    () => {
        fn open(&mut self, env: &TaskEnv) -> Result<()> {
            self.out.open(env)
        }
        fn on_barrier(&mut self, barrier: &Barrier, _snapshot: &mut TaskSnapshot) -> Result<()> {
            self.out.on_barrier(barrier)
        }
        fn on_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            self.out.flush()
        }
        fn finish(&mut self) -> Result<()> {
            self.out.finish()
        }
        fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
            self.out.on_watermark(watermark)
        }
    };
}

pub struct ShuffleWriter<K, T> {
    key_fn: Arc<dyn Fn(&T) -> K + Send + Sync>,
    max_parallelism: u32,
    key_bytes: Vec<u8>,
    out: ExchangeOutputs<KeyedRecord<K, T>>,
}

impl<K: Key, T: Send + 'static> ShuffleWriter<K, T> {
    pub fn new(
        key_fn: Arc<dyn Fn(&T) -> K + Send + Sync>,
        outputs: Vec<Sender<Message<KeyedRecord<K, T>>>>,
        max_parallelism: u32,
        operator: &str,
    ) -> Self {
        ShuffleWriter {
            key_fn,
            max_parallelism,
            key_bytes: Vec::with_capacity(64),
            out: ExchangeOutputs::new(outputs, operator),
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
            subtask_for_key_group(key_group, self.max_parallelism, self.out.consumers() as u32)
                as usize;
        self.out.push(
            target,
            KeyedRecord {
                key_group,
                key,
                value,
            },
        )
    }
}

impl<K: Key, T: Send + 'static> Collector<T> for ShuffleWriter<K, T> {
    exchange_hooks!();
}

/// Sends every record to every consumer (Flink's broadcast partitioner).
pub struct BroadcastWriter<T> {
    out: ExchangeOutputs<T>,
}

impl<T: Clone + Send + 'static> BroadcastWriter<T> {
    pub fn new(outputs: Vec<Sender<Message<T>>>, operator: &str) -> Self {
        BroadcastWriter {
            out: ExchangeOutputs::new(outputs, operator),
        }
    }
}

impl<T: Clone + Send + 'static> Downstream<T> for BroadcastWriter<T> {
    fn collect(&mut self, value: T) -> Result<()> {
        let Some(last) = self.out.consumers().checked_sub(1) else {
            return Ok(());
        };
        for target in 0..last {
            self.out.push(target, value.clone())?;
        }
        self.out.push(last, value)
    }
}

impl<T: Clone + Send + 'static> Collector<T> for BroadcastWriter<T> {
    exchange_hooks!();
}

/// Sends every record to the consumer subtask with the producer's index (Flink's forward
/// partitioner), for a non-keyed operator that needs a task of its own: the records travel
/// as keyed records of the unit key, in the first key group the consumer owns, so the keyed
/// task runs them unchanged.
pub struct ForwardWriter<T> {
    target: usize,
    key_group: u16,
    out: ExchangeOutputs<KeyedRecord<(), T>>,
}

impl<T: Send + 'static> ForwardWriter<T> {
    pub fn new(
        outputs: Vec<Sender<Message<KeyedRecord<(), T>>>>,
        producer: u32,
        max_parallelism: u32,
        operator: &str,
    ) -> Self {
        let parallelism = outputs.len() as u32;
        let key_group =
            key_group_range_for_subtask(max_parallelism, parallelism.max(1), producer).start;
        ForwardWriter {
            target: producer as usize,
            key_group,
            out: ExchangeOutputs::new(outputs, operator),
        }
    }
}

impl<T: Send + 'static> Downstream<T> for ForwardWriter<T> {
    fn collect(&mut self, value: T) -> Result<()> {
        let record = KeyedRecord {
            key_group: self.key_group,
            key: (),
            value,
        };
        self.out.push(self.target, record)
    }
}

impl<T: Send + 'static> Collector<T> for ForwardWriter<T> {
    exchange_hooks!();
}
