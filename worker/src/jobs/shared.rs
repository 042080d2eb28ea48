//! What more than one built-in job uses: a keyed running count, and the benchmark jobs'
//! report (one JSON line on stdout, the checkpoint durations it summarizes).

use crate::api::{Emitter, KeyedProcessFunction};
use crate::error::Result;
use crate::runtime::job::CheckpointStats;
use crate::state::{KeyedContext, StateRegistry, ValueState};

/// A running count per key in the `ValueState<u64>` named `count`: each record adds one and
/// emits `output(key, count so far, record)`.
pub(crate) struct RunningCount<K, I, O> {
    count: Option<ValueState<u64>>,
    output: fn(&K, u64, I) -> O,
}

impl<K, I, O> RunningCount<K, I, O> {
    pub(crate) fn new(output: fn(&K, u64, I) -> O) -> Self {
        RunningCount {
            count: None,
            output,
        }
    }
}

impl<K: 'static, I: 'static, O: 'static> KeyedProcessFunction<K, I, O> for RunningCount<K, I, O> {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.count = Some(state.value_state("count")?);
        Ok(())
    }

    fn process(
        &mut self,
        key: &K,
        record: I,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, O>,
    ) -> Result<()> {
        let Some(state) = &self.count else {
            return Ok(());
        };
        let count = state.get(ctx)?.unwrap_or(0) + 1;
        state.set(ctx, &count)?;
        out.emit((self.output)(key, count, record))
    }
}

/// Prints one line on stdout at once (the bench scripts read them as they come).
pub(crate) fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// How long each completed checkpoint took (savepoints left out), ms, shortest first.
pub(crate) fn checkpoint_durations(stats: &CheckpointStats) -> Vec<u64> {
    let mut durations: Vec<u64> = stats
        .history
        .iter()
        .filter(|c| !c.savepoint)
        .filter_map(|c| c.duration_ms)
        .collect();
    durations.sort_unstable();
    durations
}

/// The nearest-rank `p`th percentile of `sorted`; `None` when it is empty.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `args` as the `job.args` of a document for job `job`, decoded as the job decodes them.
#[cfg(test)]
pub(crate) fn parse_args<T: serde::de::DeserializeOwned>(job: &str, args: &str) -> Result<T> {
    let doc = crate::spec::JobDocument::from_yaml(
        &format!("job: {{name: {job}, args: {args}}}"),
        "job.yaml",
    )?;
    Ok(doc.args()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4, 5], 50.0), Some(3));
        assert_eq!(percentile(&[1, 2, 3, 4, 5], 99.0), Some(5));
    }

    /// kafka-bench reported the median as the lower middle element before it used this.
    #[test]
    fn the_median_is_the_lower_middle_element() {
        for n in 0..100u64 {
            let sorted: Vec<u64> = (0..n).collect();
            let lower_middle = sorted.get(sorted.len().saturating_sub(1) / 2).copied();
            assert_eq!(percentile(&sorted, 50.0), lower_middle, "{n} values");
        }
    }
}
