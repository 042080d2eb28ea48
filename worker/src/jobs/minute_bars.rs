//! `minute-bars`: the per-minute stock example of the reference notes (分时个股窗口,
//! `MinStockWindowFunction`). Trades carry a security's cumulative day volume and amount;
//! per security code and one-minute event-time window, the latest trade of the minute gives
//! the bar, and the minute's volume and amount are its cumulative totals minus those of the
//! security's previous bar, kept in MapState keyed by security code.
//!
//! As in the reference, a security's first bar has volume and amount 0 (there is no previous
//! total to subtract). Records later than the allowed lateness go to `lateOutput` if given.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BuiltJob;
use super::endpoints::{Input, Output};
use crate::api::{
    Emitter, StreamEnv, TimeWindow, WatermarkStrategy, WindowAssigner, WindowFunction,
};
use crate::error::Result;
use crate::state::{KeyedContext, MapState, StateRegistry};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    /// Trades as JSON: files, or a Kafka topic (each partition gets its own watermark).
    input: Input,
    /// Minute bars as JSON: files, or a Kafka topic (keyed by security code).
    output: Output,
    /// Where late trades go; omit to drop them.
    #[serde(default)]
    late_output: Option<Output>,
    /// How far behind the newest trade one may arrive (default 2s).
    #[serde(default = "default_out_of_orderness", with = "humantime_serde")]
    out_of_orderness: Duration,
    /// How long a minute stays open for late trades after it fired (default 0).
    #[serde(default, with = "humantime_serde")]
    allowed_lateness: Duration,
    /// Trades between watermarks (default 1024); 1 gives Flink's punctuated behaviour.
    #[serde(default)]
    emit_watermark_every: Option<u64>,
}

fn default_out_of_orderness() -> Duration {
    Duration::from_secs(2)
}

/// One trade snapshot: prices of the day so far and cumulative day totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trade {
    pub sec_code: String,
    #[serde(default)]
    pub sec_name: String,
    /// ms since the epoch.
    pub event_time: i64,
    #[serde(default)]
    pub pre_close_price: f64,
    #[serde(default)]
    pub open_price: f64,
    #[serde(default)]
    pub high_price: f64,
    #[serde(default)]
    pub low_price: f64,
    pub trade_price: f64,
    /// Cumulative volume of the day (shares).
    pub trade_vol_day: u64,
    /// Cumulative amount of the day (in the smallest currency unit, so differences are exact).
    pub trade_amt_day: u64,
    /// The Kafka partition the trade was read from, as a watermark split (per-partition
    /// watermarks); not part of the record.
    #[serde(skip)]
    pub split: u64,
}

/// One security's minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MinuteBar {
    pub sec_code: String,
    pub sec_name: String,
    pub window_start: i64,
    pub window_end: i64,
    /// Time of the minute's latest trade.
    pub event_time: i64,
    pub pre_close_price: f64,
    pub open_price: f64,
    pub high_price: f64,
    pub low_price: f64,
    pub trade_price: f64,
    /// This minute's volume and amount: cumulative totals minus the previous bar's.
    pub minute_vol: u64,
    pub minute_amt: u64,
    pub trade_vol_day: u64,
    pub trade_amt_day: u64,
}

/// The minute's latest trade; on equal times the larger cumulative totals (they only grow),
/// so the choice does not depend on arrival order.
fn latest(a: Trade, b: Trade) -> Trade {
    let rank = |t: &Trade| (t.event_time, t.trade_vol_day, t.trade_amt_day);
    if rank(&b) > rank(&a) { b } else { a }
}

#[derive(Default)]
struct MinuteBarFunction {
    /// Previous bar by security code (the reference's `stockMs`).
    previous: Option<MapState<String, MinuteBar>>,
}

impl WindowFunction<String, Trade, MinuteBar> for MinuteBarFunction {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.previous = Some(state.map_state("stockMs")?);
        Ok(())
    }

    fn apply(
        &mut self,
        code: &String,
        window: &TimeWindow,
        trade: Trade,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, MinuteBar>,
    ) -> Result<()> {
        let Some(previous) = &self.previous else {
            return Ok(());
        };
        let (minute_vol, minute_amt) = match previous.get(ctx, code)? {
            Some(last) => (
                trade.trade_vol_day.saturating_sub(last.trade_vol_day),
                trade.trade_amt_day.saturating_sub(last.trade_amt_day),
            ),
            None => (0, 0),
        };
        let bar = MinuteBar {
            sec_code: trade.sec_code,
            sec_name: trade.sec_name,
            window_start: window.start,
            window_end: window.end,
            event_time: trade.event_time,
            pre_close_price: trade.pre_close_price,
            open_price: trade.open_price,
            high_price: trade.high_price,
            low_price: trade.low_price,
            trade_price: trade.trade_price,
            minute_vol,
            minute_amt,
            trade_vol_day: trade.trade_vol_day,
            trade_amt_day: trade.trade_amt_day,
        };
        previous.put(ctx, code, &bar)?;
        out.emit(bar)
    }
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: Args = env.doc().args()?;
    let mut strategy =
        WatermarkStrategy::bounded_out_of_orderness(args.out_of_orderness, |t: &Trade| {
            t.event_time
        });
    if let Some(every) = args.emit_watermark_every {
        strategy = strategy.with_emit_every(every);
    }
    if args.input.is_kafka() {
        // Flink's per-partition watermarks: one partition far ahead never makes the trades of
        // another behind it late.
        strategy = strategy.with_splits(|t: &Trade| t.split);
    }
    let trades = args
        .input
        .source(env, "trades", |t: &mut Trade, split| t.split = split)?;
    let windows = trades
        .assign_timestamps("trade-time", strategy)
        .key_by(|t: &Trade| t.sec_code.clone())
        .window(WindowAssigner::tumbling(Duration::from_secs(60)))
        .allowed_lateness(args.allowed_lateness)
        .reduce("minute-bars", latest, MinuteBarFunction::default);
    let by_code = |bar: &MinuteBar| Some(bar.sec_code.clone());
    let mut graph = args
        .output
        .sink(windows.results, "output", "job.args.output", by_code)?;
    if let Some(late_output) = &args.late_output {
        let by_code = |t: &Trade| Some(t.sec_code.clone());
        graph = graph.and(late_output.sink(
            windows.late,
            "late-output",
            "job.args.lateOutput",
            by_code,
        )?);
    }
    Ok(BuiltJob {
        graph,
        output: Some(args.output.describe()),
        monitor: None,
    })
}
