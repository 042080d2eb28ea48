//! The replayable sequence generator behind `sequence-check`: each key gets strictly
//! increasing sequence numbers 0, 1, 2, ... Key `k` belongs to subtask `k % parallelism`;
//! the next number per key is the checkpointed offset (union-redistributed, so after a
//! rescale each subtask picks up the keys it now owns exactly where they stopped).

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

#[derive(Debug, Serialize, Deserialize)]
struct KeyPosition {
    key: u64,
    next: u64,
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
        for entry in restored.unwrap_or_default() {
            let position: KeyPosition = serde_json::from_value(entry)
                .map_err(|e| Error::codec("sequence generator offsets", e))?;
            if let Ok(i) = owned.binary_search(&position.key) {
                next[i] = position.next;
            }
        }
        Ok(Box::new(GeneratorReader {
            owned,
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

    fn snapshot(&mut self) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .owned
            .iter()
            .zip(&self.next)
            .map(|(&key, &next)| serde_json::json!({"key": key, "next": next}))
            .collect())
    }
}
