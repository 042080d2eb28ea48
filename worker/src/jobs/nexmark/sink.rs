//! The counting sink every query ends in: it discards the records, counts them into
//! [`BenchStats`] and samples end-to-end latency from the ingestion stamp each record carries.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{BenchStats, epoch_ms};
use crate::api::{SinkContext, SinkFactory, SinkWriter};
use crate::connectors::nexmark::stamp_now;
use crate::error::Result;

/// A discarding sink: counts records and samples latency every `sample_every`th record.
pub(super) struct CountingSink<T> {
    stats: Arc<BenchStats>,
    sample_every: u64,
    stamp: fn(&T) -> u64,
}

impl<T> CountingSink<T> {
    /// `stamp` reads the ingestion stamp a record carries.
    pub(super) fn new(stats: &Arc<BenchStats>, sample_every: u64, stamp: fn(&T) -> u64) -> Self {
        CountingSink {
            stats: stats.clone(),
            sample_every,
            stamp,
        }
    }
}

impl<T: Send + 'static> SinkFactory<T> for CountingSink<T> {
    fn create_writer(&self, _ctx: &SinkContext) -> Result<Box<dyn SinkWriter<T>>> {
        Ok(Box::new(CountingWriter {
            stats: self.stats.clone(),
            sample_every: self.sample_every.max(1),
            stamp: self.stamp,
            count: 0,
            unreported: 0,
            samples: Vec::new(),
        }))
    }
}

struct CountingWriter<T> {
    stats: Arc<BenchStats>,
    sample_every: u64,
    stamp: fn(&T) -> u64,
    count: u64,
    unreported: u64,
    samples: Vec<u64>,
}

impl<T> CountingWriter<T> {
    fn report(&mut self) {
        self.stats
            .outputs
            .fetch_add(std::mem::take(&mut self.unreported), Ordering::Relaxed);
    }
}

impl<T: Send> SinkWriter<T> for CountingWriter<T> {
    fn write(&mut self, item: T) -> Result<()> {
        if self.count == 0 {
            let _ = self.stats.first_output_epoch_ms.compare_exchange(
                0,
                epoch_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if self.count.is_multiple_of(self.sample_every) {
            self.samples
                .push(stamp_now().saturating_sub((self.stamp)(&item)));
        }
        self.count += 1;
        self.unreported += 1;
        if self.unreported >= 1024 {
            self.report();
        }
        Ok(())
    }

    fn pre_commit(&mut self, _checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        self.report();
        Ok(Vec::new())
    }

    fn commit(&mut self, _checkpoint_id: u64) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.report();
        let mut samples = self.stats.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.append(&mut self.samples);
        Ok(())
    }
}
