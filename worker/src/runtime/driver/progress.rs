//! The periodic progress line of a running attempt: records read and written, the rate, and
//! the latest completed checkpoint.

use std::time::{Duration, Instant};

use crate::checkpoint::CompletedCheckpoint;

/// Logs throughput and checkpoint progress at a fixed interval.
pub(super) struct Progress {
    interval: Duration,
    last: Instant,
    last_in: u64,
}

impl Progress {
    pub(super) fn new(interval: Duration) -> Self {
        Progress {
            interval,
            last: Instant::now(),
            last_in: 0,
        }
    }

    pub(super) fn tick(
        &mut self,
        sources: &[String],
        sinks: &[String],
        checkpoint: Option<&CompletedCheckpoint>,
    ) {
        if self.last.elapsed() >= self.interval {
            self.report(sources, sinks, checkpoint);
        }
    }

    pub(super) fn report(
        &mut self,
        sources: &[String],
        sinks: &[String],
        checkpoint: Option<&CompletedCheckpoint>,
    ) {
        let metrics = crate::metrics::global();
        let sum = |family: &prometheus_client::metrics::family::Family<
            _,
            prometheus_client::metrics::counter::Counter,
        >,
                   names: &[String]| {
            names
                .iter()
                .map(|n| family.get_or_create(&metrics.operator(n)).get())
                .sum::<u64>()
        };
        let read = sum(&metrics.records_out, sources);
        let written = sum(&metrics.records_in, sinks);
        let elapsed = self.last.elapsed().as_secs_f64().max(1e-3);
        let rate = (read - self.last_in.min(read)) as f64 / elapsed;
        tracing::info!(
            records_read = read,
            records_per_sec = rate as u64,
            records_to_sink = written,
            last_checkpoint = checkpoint.map(|c| c.checkpoint_id),
            "progress"
        );
        self.last = Instant::now();
        self.last_in = read;
    }
}
