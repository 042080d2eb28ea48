//! The keyed and window functions of (c) to (e): the hottest auction (q5) and the highest bid
//! (q7) per window, and the store of (e). The running count of (b) is the jobs' shared
//! `RunningCount`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::BenchStats;
use crate::api::{Emitter, KeyedProcessFunction};
use crate::error::Result;
use crate::runtime::watermark::Timestamp;
use crate::state::{AggregateFunction, KeyedContext, StateRegistry, Timer, ValueState};

// ---------------------------------------------------------------- (c) q5

/// (auction, date_time, stamp)
pub(super) type Q5Bid = (u64, Timestamp, u64);
/// (window end, auction, count, max stamp)
pub(super) type Q5Count = (Timestamp, u64, u64, u64);

/// Per (auction, window): (count, max stamp).
#[derive(Clone)]
pub(super) struct CountAgg;

impl AggregateFunction for CountAgg {
    type In = Q5Bid;
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> Self::Acc {
        (0, 0)
    }
    fn add(&self, (_, _, stamp): Q5Bid, (n, max): Self::Acc) -> Self::Acc {
        (n + 1, max.max(stamp))
    }
    fn result(&self, acc: &Self::Acc) -> Self::Out {
        *acc
    }
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Option<Self::Acc> {
        Some((a.0 + b.0, a.1.max(b.1)))
    }
}

/// The auction with the most bids (ties: the smaller id), with the latest stamp of either.
pub(super) fn more_bids(best: Q5Count, input: Q5Count) -> Q5Count {
    let stamp = best.3.max(input.3);
    if input.2 > best.2 || (input.2 == best.2 && input.1 < best.1) {
        (input.0, input.1, input.2, stamp)
    } else {
        (best.0, best.1, best.2, stamp)
    }
}

/// Keyed by window end: the best of the window's records by `pick`, emitted when the
/// watermark passes the window (q5: most bids, q7: highest bid).
pub(super) struct BestPerWindow<T> {
    best: Option<ValueState<T>>,
    /// (best so far, new record) -> new best.
    pick: fn(T, T) -> T,
}

impl<T> BestPerWindow<T> {
    pub(super) fn new(pick: fn(T, T) -> T) -> Self {
        BestPerWindow { best: None, pick }
    }
}

impl<T: crate::api::Data> KeyedProcessFunction<Timestamp, T, T> for BestPerWindow<T> {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.best = Some(state.value_state("best")?);
        Ok(())
    }

    fn process(
        &mut self,
        end: &Timestamp,
        input: T,
        ctx: &mut KeyedContext<'_>,
        _out: &mut Emitter<'_, T>,
    ) -> Result<()> {
        let Some(best) = &self.best else {
            return Ok(());
        };
        let next = match best.get(ctx)? {
            None => {
                ctx.register_event_time_timer(end - 1);
                input
            }
            Some(b) => (self.pick)(b, input),
        };
        best.set(ctx, &next)
    }

    fn on_timer(
        &mut self,
        _end: &Timestamp,
        _timer: &Timer,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, T>,
    ) -> Result<()> {
        let Some(best) = &self.best else {
            return Ok(());
        };
        if let Some(b) = best.get(ctx)? {
            best.clear(ctx)?;
            out.emit(b)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- (d) q7

/// (auction, bidder, price, date_time, stamp)
pub(super) type Q7Bid = (u64, u64, u64, Timestamp, u64);
/// (window end, auction, bidder, price, date_time, max stamp)
pub(super) type Q7Winner = (Timestamp, u64, u64, u64, Timestamp, u64);

/// The higher price wins; ties to the smaller auction, then bidder, then the earlier time.
fn beats(x: &Q7Bid, y: &Q7Bid) -> bool {
    (std::cmp::Reverse(x.2), x.0, x.1, x.3) < (std::cmp::Reverse(y.2), y.0, y.1, y.3)
}

pub(super) fn max_bid(x: Q7Bid, y: Q7Bid) -> Q7Bid {
    let stamp = x.4.max(y.4);
    let w = if beats(&y, &x) { y } else { x };
    (w.0, w.1, w.2, w.3, stamp)
}

/// The window's highest bid by `beats`, with the latest stamp of either.
pub(super) fn higher_bid(best: Q7Winner, input: Q7Winner) -> Q7Winner {
    let as_bid = |w: &Q7Winner| (w.1, w.2, w.3, w.4, 0);
    let stamp = best.5.max(input.5);
    let w = if beats(&as_bid(&input), &as_bid(&best)) {
        input
    } else {
        best
    };
    (w.0, w.1, w.2, w.3, w.4, stamp)
}

// ---------------------------------------------------------------- (e) ~1 GB of keyed state

/// (index, key, value, stamp)
pub(super) type StateRecord = (u64, u64, String, u64);

pub(super) struct StoreValue {
    pub(super) keys: u64,
    pub(super) stats: Arc<BenchStats>,
    pub(super) value: Option<ValueState<String>>,
}

impl KeyedProcessFunction<u64, StateRecord, (u64, u64, u64)> for StoreValue {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.value = Some(state.value_state("value")?);
        Ok(())
    }

    fn process(
        &mut self,
        key: &u64,
        (j, _, value, stamp): StateRecord,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, (u64, u64, u64)>,
    ) -> Result<()> {
        let Some(state) = &self.value else {
            return Ok(());
        };
        if j < self.keys {
            state.set(ctx, &value)?;
            self.stats.loaded.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if state.get(ctx)?.is_none() {
            self.stats.missing.fetch_add(1, Ordering::Relaxed);
        }
        state.set(ctx, &value)?;
        out.emit((*key, j, stamp))
    }
}
