//! The replayable sequence generator behind `sequence-check`: each key gets strictly
//! increasing sequence numbers 0, 1, 2, ... Key `k` belongs to subtask `k % parallelism`;
//! the next number per key is the checkpointed offset (union-redistributed, so after a
//! rescale each subtask picks up the keys it now owns exactly where they stopped).
//!
//! Positions are checkpointed as runs: round-robin emission leaves all owned keys at one of
//! two next numbers, so a million keys take two entries, not a million.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::{SourceContext, SourceFactory, SourceReader, SourceStatus};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SequenceEvent {
    pub key: u64,
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct SequenceGenerator {
    pub keys: u64,
    /// `None` runs forever.
    pub events_per_key: Option<u64>,
    /// Per subtask; `None` is as fast as possible.
    pub events_per_second: Option<u64>,
}

/// Keys `first, first + stride, ..., last` all continue at `next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PositionRun {
    first: u64,
    last: u64,
    stride: u64,
    next: u64,
}

/// Collapses `(key, next)` pairs of keys spaced `stride` apart into runs of equal `next`.
fn position_runs(keys: &[u64], next: &[u64], stride: u64) -> Vec<PositionRun> {
    let mut runs: Vec<PositionRun> = Vec::new();
    for (&key, &n) in keys.iter().zip(next) {
        match runs.last_mut() {
            Some(run) if run.next == n && run.last + stride == key => run.last = key,
            _ => runs.push(PositionRun {
                first: key,
                last: key,
                stride,
                next: n,
            }),
        }
    }
    runs
}

impl SourceFactory for SequenceGenerator {
    type Item = SequenceEvent;

    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<Vec<serde_json::Value>>,
    ) -> Result<Box<dyn SourceReader<SequenceEvent>>> {
        let owned: Vec<u64> = (0..self.keys)
            .filter(|k| k % u64::from(ctx.parallelism) == u64::from(ctx.subtask))
            .collect();
        let mut next = vec![0u64; owned.len()];
        let (parallelism, subtask) = (u64::from(ctx.parallelism), u64::from(ctx.subtask));
        for entry in restored.unwrap_or_default() {
            let run: PositionRun = serde_json::from_value(entry)
                .map_err(|e| Error::codec("sequence generator offsets", e))?;
            if run.stride == 0 || run.last < run.first {
                return Err(Error::codec(
                    "sequence generator offsets",
                    format!("invalid run {run:?}"),
                ));
            }
            for key in (run.first..=run.last).step_by(run.stride as usize) {
                // Owned keys are subtask, subtask + p, ...: the index is arithmetic.
                if key < self.keys && key % parallelism == subtask {
                    next[((key - subtask) / parallelism) as usize] = run.next;
                }
            }
        }
        Ok(Box::new(GeneratorReader {
            owned,
            parallelism,
            next,
            cursor: 0,
            limit: self.events_per_key,
            rate: self.events_per_second,
            started: Instant::now(),
            emitted: 0,
        }))
    }
}

struct GeneratorReader {
    owned: Vec<u64>,
    parallelism: u64,
    next: Vec<u64>,
    cursor: usize,
    limit: Option<u64>,
    rate: Option<u64>,
    started: Instant,
    emitted: u64,
}

impl SourceReader<SequenceEvent> for GeneratorReader {
    fn poll(&mut self, out: &mut Vec<SequenceEvent>, max: usize) -> Result<SourceStatus> {
        let mut budget = max as u64;
        if let Some(rate) = self.rate {
            let allowed = (self.started.elapsed().as_secs_f64() * rate as f64) as u64;
            budget = budget.min(allowed.saturating_sub(self.emitted));
            if budget == 0 {
                return Ok(SourceStatus::Idle(Duration::from_millis(5)));
            }
        }
        let n = self.owned.len();
        let mut exhausted_in_a_row = 0;
        while budget > 0 && n > 0 && exhausted_in_a_row < n {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % n;
            if self.limit.is_some_and(|limit| self.next[i] >= limit) {
                exhausted_in_a_row += 1;
                continue;
            }
            exhausted_in_a_row = 0;
            out.push(SequenceEvent {
                key: self.owned[i],
                seq: self.next[i],
            });
            self.next[i] += 1;
            self.emitted += 1;
            budget -= 1;
        }
        if n == 0 || exhausted_in_a_row >= n {
            return Ok(if out.is_empty() {
                SourceStatus::Finished
            } else {
                SourceStatus::More
            });
        }
        Ok(SourceStatus::More)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        position_runs(&self.owned, &self.next, self.parallelism)
            .iter()
            .map(|run| {
                serde_json::to_value(run).map_err(|e| Error::codec("sequence generator offsets", e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_positions_collapse_into_two_runs() {
        let keys: Vec<u64> = (0..1000).map(|i| 1 + 3 * i).collect();
        let next: Vec<u64> = (0..1000).map(|i| if i < 400 { 8 } else { 7 }).collect();
        let runs = position_runs(&keys, &next, 3);
        assert_eq!(
            runs,
            vec![
                PositionRun {
                    first: 1,
                    last: 1 + 3 * 399,
                    stride: 3,
                    next: 8
                },
                PositionRun {
                    first: 1 + 3 * 400,
                    last: 1 + 3 * 999,
                    stride: 3,
                    next: 7
                },
            ]
        );
    }
}
