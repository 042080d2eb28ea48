//! `nexmark`: the benchmark workloads of issue 7, exactly as `docs/bench-workloads.md` defines
//! them, chosen by `job.args.query`:
//!
//! - `q0`, `q1`, `q2` (a): bid JSON lines from files → parse, stamp → (q2: filter) → project
//!   and serialize to JSON → sink;
//! - `count` (b): generated bids with a uniform bidder → running count per `bidder % keys`;
//! - `q5` (c): bids per auction over sliding windows (10 s / 2 s) → the hottest auction per
//!   window;
//! - `q7` (d): the highest bid per tumbling 10 s window, first per auction, then per window;
//! - `state` (e): load `keys` values of `valueBytes` bytes, then a trickle of updates; the job
//!   triggers two checkpoints once everything is loaded and prints `ready_to_kill`, so
//!   `scripts/bench.sh` can kill it and time the recovery.
//!
//! Every output goes to a counting sink that discards it and samples end-to-end latency (sink
//! time minus the ingestion stamp the record carries). When the job ends it prints one JSON
//! line `{"workload":...}` with its figures on stdout; `scripts/bench.sh` adds the process's
//! CPU time and prints the table.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{BuiltJob, JobMonitor};
use crate::api::{
    Emitter, KeyedProcessFunction, MapWindow, SinkContext, SinkFactory, SinkWriter, StreamEnv,
    TimeWindow, WatermarkStrategy, WindowAssigner,
};
use crate::connectors::FileSource;
use crate::connectors::nexmark::{
    self, NexmarkSource, STAMP_EVERY, bid, bid_index, keyed_count_key, stamp_now, state_value,
};
use crate::error::{Error, Result};
use crate::runtime::job::{CheckpointStats, JobHandle};
use crate::runtime::watermark::Timestamp;
use crate::spec::RestoreSource;
use crate::state::{AggregateFunction, KeyedContext, StateRegistry, Timer, ValueState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Query {
    Q0,
    Q1,
    Q2,
    Count,
    Q5,
    Q7,
    State,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    query: Query,
    /// Input records: bids for q0-q7 (for q0-q2, how many the files hold).
    #[serde(default)]
    events: Option<u64>,
    /// q0-q2: the folder of bid files (`weir-worker nexmark-gen`).
    #[serde(default)]
    input: Option<String>,
    /// count: distinct keys; state: keys loaded.
    #[serde(default)]
    keys: Option<u64>,
    /// state: bytes per value.
    #[serde(default = "default_value_bytes")]
    value_bytes: usize,
}

fn default_value_bytes() -> usize {
    100
}

/// What the sinks and keyed functions of one run count, read by the monitor.
#[derive(Default)]
struct BenchStats {
    outputs: AtomicU64,
    /// Latency samples, ns.
    samples: Mutex<Vec<u64>>,
    /// Wall clock of the first output record, ms since the epoch (0: none yet).
    first_output_epoch_ms: AtomicU64,
    /// state: load records stored, and trickle records that found no old value.
    loaded: AtomicU64,
    missing: AtomicU64,
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, 100 ticks per second).
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// A discarding sink: counts records and samples latency every `sample_every`th record.
struct CountingSink<T> {
    stats: Arc<BenchStats>,
    sample_every: u64,
    stamp: fn(&T) -> u64,
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

// ---------------------------------------------------------------- (a) q0, q1, q2

/// A bid line as parsed (strings borrowed from the line).
#[derive(Debug, PartialEq, Eq, Deserialize, Serialize)]
struct BidRef<'a> {
    auction: u64,
    bidder: u64,
    price: u64,
    #[serde(borrow)]
    channel: &'a str,
    #[serde(borrow)]
    url: &'a str,
    date_time: u64,
}

#[derive(Serialize)]
struct Q1Out {
    auction: u64,
    bidder: u64,
    price: u64,
    date_time: u64,
}

#[derive(Serialize)]
struct Q2Out {
    auction: u64,
    price: u64,
}

/// The fast path of [`parse_bid`]: exactly the encoding of docs/bench-workloads.md §1.6 —
/// `{"auction":N,"bidder":N,"price":N,"channel":"S","url":"S","date_time":N}`, fields in that
/// order, no whitespace, integers as plain decimal digits that fit a `u64` (no sign, fraction
/// or exponent; no leading zero), strings without escapes or control characters. Anything else
/// is `None` and goes to serde_json, so the result (and every error) is serde_json's.
///
/// The strings it returns need no escaping, so [`write_bid_plain`] may copy them verbatim.
fn parse_bid_plain(line: &str) -> Option<BidRef<'_>> {
    let mut c = Cursor { s: line, i: 0 };
    c.literal(br#"{"auction":"#)?;
    let auction = c.uint()?;
    c.literal(br#","bidder":"#)?;
    let bidder = c.uint()?;
    c.literal(br#","price":"#)?;
    let price = c.uint()?;
    c.literal(br#","channel":""#)?;
    let channel = c.plain_str()?;
    c.literal(br#","url":""#)?;
    let url = c.plain_str()?;
    c.literal(br#","date_time":"#)?;
    let date_time = c.uint()?;
    c.literal(b"}")?;
    (c.i == line.len()).then_some(BidRef {
        auction,
        bidder,
        price,
        channel,
        url,
        date_time,
    })
}

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.i..]
    }

    /// Consumes `lit` (a fixed-size array, so the comparison is a few loads, not a `memcmp`).
    #[inline(always)]
    fn literal<const N: usize>(&mut self, lit: &[u8; N]) -> Option<()> {
        (self.rest().first_chunk::<N>() == Some(lit)).then(|| self.i += N)
    }

    /// A JSON integer that serde_json would read into a `u64` with the same value.
    fn uint(&mut self) -> Option<u64> {
        let rest = self.rest();
        let mut n: u64 = 0;
        let mut digits = 0;
        while let Some(d) = rest
            .get(digits)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|d| *d <= 9)
        {
            // Cannot overflow up to 19 digits; 20 are parsed again with overflow checks below.
            n = n.wrapping_mul(10).wrapping_add(u64::from(d));
            digits += 1;
        }
        // Empty, or a leading zero (invalid JSON unless the number is `0`), or more digits than
        // any u64 has: leave it to serde.
        if digits == 0 || (digits > 1 && rest[0] == b'0') || digits > 20 {
            return None;
        }
        if digits == 20 {
            n = self.s.get(self.i..self.i + digits)?.parse().ok()?;
        }
        self.i += digits;
        Some(n)
    }

    /// The characters up to the closing quote, which it consumes; `None` if the string holds
    /// anything serde_json would unescape or reject (`\`, control characters) or is unclosed.
    fn plain_str(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let len = memchr::memchr(b'"', rest)?;
        // A fold without early exit, so it vectorizes (`any` goes byte by byte).
        let special = rest[..len]
            .iter()
            .fold(false, |found, &b| found | (b == b'\\') | (b < 0x20));
        if special {
            return None;
        }
        let start = self.i;
        self.i += len + 1;
        // The quote is ASCII, so both ends are character boundaries of the (valid UTF-8) line.
        self.s.get(start..start + len)
    }
}

/// `line` as a bid: the fast path when the line is in the canonical encoding (then `true`:
/// its strings need no escaping), serde_json otherwise.
fn parse_bid(line: &str) -> std::result::Result<(BidRef<'_>, bool), String> {
    match parse_bid_plain(line) {
        Some(bid) => Ok((bid, true)),
        None => serde_json::from_str(line)
            .map(|bid| (bid, false))
            .map_err(|e| e.to_string()),
    }
}

fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// serde_json's serialization of `bid` when its strings need no escaping (as
/// [`parse_bid_plain`] guarantees): the same bytes, without the escape scan.
fn write_bid_plain(bid: &BidRef<'_>, out: &mut String) {
    out.push_str(r#"{"auction":"#);
    push_u64(out, bid.auction);
    out.push_str(r#","bidder":"#);
    push_u64(out, bid.bidder);
    out.push_str(r#","price":"#);
    push_u64(out, bid.price);
    out.push_str(r#","channel":""#);
    out.push_str(bid.channel);
    out.push_str(r#"","url":""#);
    out.push_str(bid.url);
    out.push_str(r#"","date_time":"#);
    push_u64(out, bid.date_time);
    out.push('}');
}

/// serde_json's serialization of [`Q1Out`].
fn write_q1(q: &Q1Out, out: &mut String) {
    out.push_str(r#"{"auction":"#);
    push_u64(out, q.auction);
    out.push_str(r#","bidder":"#);
    push_u64(out, q.bidder);
    out.push_str(r#","price":"#);
    push_u64(out, q.price);
    out.push_str(r#","date_time":"#);
    push_u64(out, q.date_time);
    out.push('}');
}

/// serde_json's serialization of [`Q2Out`].
fn write_q2(q: &Q2Out, out: &mut String) {
    out.push_str(r#"{"auction":"#);
    push_u64(out, q.auction);
    out.push_str(r#","price":"#);
    push_u64(out, q.price);
    out.push('}');
}

thread_local! {
    /// The ingestion stamp of this source subtask (one thread each) and records since.
    static FILE_STAMP: Cell<(u64, u32)> = const { Cell::new((0, STAMP_EVERY)) };
}

fn file_stamp() -> u64 {
    FILE_STAMP.with(|cell| {
        let (stamp, since) = cell.get();
        if since + 1 >= STAMP_EVERY {
            let now = stamp_now();
            cell.set((now, 0));
            now
        } else {
            cell.set((stamp, since + 1));
            stamp
        }
    })
}

/// Parse, stamp, filter (q2), project and serialize one line: the whole chain of (a).
///
/// The output is serde_json's serialization of the projected record (the tests compare), written
/// field by field into one string allocated at its final size's upper bound (20 digits per
/// integer).
fn stateless(query: Query, line: &str) -> std::result::Result<Option<(String, u64)>, String> {
    let (bid, plain) = parse_bid(line)?;
    let stamp = file_stamp();
    let json = match query {
        Query::Q0 if plain => {
            let mut out = String::with_capacity(68 + 4 * 20 + bid.channel.len() + bid.url.len());
            write_bid_plain(&bid, &mut out);
            out
        }
        Query::Q0 => serde_json::to_string(&bid).map_err(|e| e.to_string())?,
        Query::Q1 => {
            let mut out = String::with_capacity(44 + 4 * 20);
            write_q1(
                &Q1Out {
                    auction: bid.auction,
                    bidder: bid.bidder,
                    price: bid.price * 908 / 1000,
                    date_time: bid.date_time,
                },
                &mut out,
            );
            out
        }
        _ => {
            if !bid.auction.is_multiple_of(123) {
                return Ok(None);
            }
            let mut out = String::with_capacity(22 + 2 * 20);
            write_q2(
                &Q2Out {
                    auction: bid.auction,
                    price: bid.price,
                },
                &mut out,
            );
            out
        }
    };
    Ok(Some((json, stamp)))
}

// ---------------------------------------------------------------- (b) keyed running count

#[derive(Default)]
struct CountPerKey {
    count: Option<ValueState<u64>>,
}

impl KeyedProcessFunction<u64, (u64, u64), (u64, u64, u64)> for CountPerKey {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.count = Some(state.value_state("count")?);
        Ok(())
    }

    fn process(
        &mut self,
        key: &u64,
        (_, stamp): (u64, u64),
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, (u64, u64, u64)>,
    ) -> Result<()> {
        let Some(count) = &self.count else {
            return Ok(());
        };
        let n = count.get(ctx)?.unwrap_or(0) + 1;
        count.set(ctx, &n)?;
        out.emit((*key, n, stamp))
    }
}

// ---------------------------------------------------------------- (c) q5

/// (auction, date_time, stamp)
type Q5Bid = (u64, Timestamp, u64);
/// (window end, auction, count, max stamp)
type Q5Count = (Timestamp, u64, u64, u64);

/// Per (auction, window): (count, max stamp).
#[derive(Clone)]
struct CountAgg;

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
fn more_bids(best: Q5Count, input: Q5Count) -> Q5Count {
    let stamp = best.3.max(input.3);
    if input.2 > best.2 || (input.2 == best.2 && input.1 < best.1) {
        (input.0, input.1, input.2, stamp)
    } else {
        (best.0, best.1, best.2, stamp)
    }
}

/// Keyed by window end: the best of the window's records by `pick`, emitted when the
/// watermark passes the window (q5: most bids, q7: highest bid).
struct BestPerWindow<T> {
    best: Option<ValueState<T>>,
    /// (best so far, new record) -> new best.
    pick: fn(T, T) -> T,
}

impl<T> BestPerWindow<T> {
    fn new(pick: fn(T, T) -> T) -> Self {
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
type Q7Bid = (u64, u64, u64, Timestamp, u64);
/// (window end, auction, bidder, price, date_time, max stamp)
type Q7Winner = (Timestamp, u64, u64, u64, Timestamp, u64);

/// The higher price wins; ties to the smaller auction, then bidder, then the earlier time.
fn beats(x: &Q7Bid, y: &Q7Bid) -> bool {
    (std::cmp::Reverse(x.2), x.0, x.1, x.3) < (std::cmp::Reverse(y.2), y.0, y.1, y.3)
}

fn max_bid(x: Q7Bid, y: Q7Bid) -> Q7Bid {
    let stamp = x.4.max(y.4);
    let w = if beats(&y, &x) { y } else { x };
    (w.0, w.1, w.2, w.3, stamp)
}

/// The window's highest bid by `beats`, with the latest stamp of either.
fn higher_bid(best: Q7Winner, input: Q7Winner) -> Q7Winner {
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
type StateRecord = (u64, u64, String, u64);

struct StoreValue {
    keys: u64,
    stats: Arc<BenchStats>,
    value: Option<ValueState<String>>,
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

// ---------------------------------------------------------------- the job

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: Args = env.doc().args()?;
    let stats = Arc::new(BenchStats::default());
    let need = |what: Option<u64>, field: &str| {
        what.ok_or_else(|| {
            Error::spec(
                format!("job.args.{field}"),
                format!("query {:?} needs {field}", args.query),
            )
        })
    };
    let graph = match args.query {
        Query::Q0 | Query::Q1 | Query::Q2 => {
            let query = args.query;
            let input = args.input.clone().ok_or_else(|| {
                Error::spec(
                    "job.args.input",
                    "q0-q2 read bid files: weir-worker nexmark-gen",
                )
            })?;
            need(args.events, "events")?;
            env.source(
                "bid-files",
                FileSource::decoded(input, move |line| stateless(query, line)),
            )
            .flat_map(|out: Option<(String, u64)>| out)
            .sink(
                "counting-sink",
                CountingSink {
                    stats: stats.clone(),
                    sample_every: 64,
                    stamp: |r: &(String, u64)| r.1,
                },
            )?
        }
        Query::Count => {
            let keys = need(args.keys, "keys")?;
            let events = need(args.events, "events")?;
            env.source(
                "nexmark-bids",
                NexmarkSource::new(Some(events), move |k, stamp| {
                    let mut b = bid(bid_index(k));
                    // Workload (b): a uniform bidder, so the state really holds `keys` keys.
                    b.bidder = nexmark::FIRST_PERSON_ID + keyed_count_key(k, keys);
                    (b, stamp)
                }),
            )
            .map(move |(b, stamp): (nexmark::Bid, u64)| (b.bidder % keys, stamp))
            .key_by(|r: &(u64, u64)| r.0)
            .process("count", CountPerKey::default)
            .sink(
                "counting-sink",
                CountingSink {
                    stats: stats.clone(),
                    sample_every: 64,
                    stamp: |r: &(u64, u64, u64)| r.2,
                },
            )?
        }
        Query::Q5 => {
            let events = need(args.events, "events")?;
            env.source(
                "nexmark-bids",
                NexmarkSource::new(Some(events), |k, stamp| (bid(bid_index(k)), stamp)),
            )
            .map(|(b, stamp): (nexmark::Bid, u64)| (b.auction, b.date_time as Timestamp, stamp))
            .assign_timestamps("event-time", WatermarkStrategy::monotonous(|r: &Q5Bid| r.1))
            .key_by(|r: &Q5Bid| r.0)
            .window(WindowAssigner::sliding(
                Duration::from_secs(10),
                Duration::from_secs(2),
            ))
            .aggregate("count-per-auction", CountAgg, || {
                MapWindow(|auction: &u64, w: &TimeWindow, (n, stamp): (u64, u64)| {
                    (w.end, *auction, n, stamp)
                })
            })
            .results
            .key_by(|r: &Q5Count| r.0)
            .process("max-per-window", || BestPerWindow::new(more_bids))
            .sink(
                "counting-sink",
                CountingSink {
                    stats: stats.clone(),
                    sample_every: 1,
                    stamp: |r: &Q5Count| r.3,
                },
            )?
        }
        Query::Q7 => {
            let events = need(args.events, "events")?;
            env.source(
                "nexmark-bids",
                NexmarkSource::new(Some(events), |k, stamp| (bid(bid_index(k)), stamp)),
            )
            .map(|(b, stamp): (nexmark::Bid, u64)| {
                (
                    b.auction,
                    b.bidder,
                    b.price,
                    b.date_time as Timestamp,
                    stamp,
                )
            })
            .assign_timestamps("event-time", WatermarkStrategy::monotonous(|r: &Q7Bid| r.3))
            .key_by(|r: &Q7Bid| r.0)
            .window(WindowAssigner::tumbling(Duration::from_secs(10)))
            .reduce("max-per-auction", max_bid, || {
                MapWindow(|_: &u64, w: &TimeWindow, b: Q7Bid| (w.end, b.0, b.1, b.2, b.3, b.4))
            })
            .results
            .key_by(|r: &Q7Winner| r.0)
            .process("max-per-window", || BestPerWindow::new(higher_bid))
            .sink(
                "counting-sink",
                CountingSink {
                    stats: stats.clone(),
                    sample_every: 1,
                    stamp: |r: &Q7Winner| r.5,
                },
            )?
        }
        Query::State => {
            let keys = need(args.keys, "keys")?;
            let len = args.value_bytes;
            let store_stats = stats.clone();
            env.source(
                "state-records",
                NexmarkSource::new(None, move |j, stamp| {
                    if j < keys {
                        (j, j, state_value(j, 0, len), stamp)
                    } else {
                        let key = keyed_count_key(j, keys);
                        (j, key, state_value(key, j, len), stamp)
                    }
                })
                .paced_from(keys),
            )
            .key_by(|r: &StateRecord| r.1)
            .process("store", move || StoreValue {
                keys,
                stats: store_stats.clone(),
                value: None,
            })
            .sink(
                "counting-sink",
                CountingSink {
                    stats: stats.clone(),
                    sample_every: 1,
                    stamp: |r: &(u64, u64, u64)| r.2,
                },
            )?
        }
    };
    let restoring = !matches!(env.doc().restore, RestoreSource::None);
    Ok(BuiltJob {
        graph,
        output: None,
        monitor: Some(Arc::new(Monitor {
            query: args.query,
            events: args.events,
            keys: args.keys,
            value_bytes: args.value_bytes,
            restoring,
            stats,
            cpu_at_start: Mutex::new(0.0),
        })),
    })
}

struct Monitor {
    query: Query,
    events: Option<u64>,
    keys: Option<u64>,
    value_bytes: usize,
    /// The document restores (state: this is the run after the kill).
    restoring: bool,
    stats: Arc<BenchStats>,
    cpu_at_start: Mutex<f64>,
}

/// Prints one line on stdout at once (the runner reads them as they come).
fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn checkpoint_summary(stats: &CheckpointStats) -> serde_json::Value {
    let mut durations: Vec<u64> = stats
        .history
        .iter()
        .filter(|c| !c.savepoint)
        .filter_map(|c| c.duration_ms)
        .collect();
    durations.sort_unstable();
    serde_json::json!({
        "completed": stats.counts.completed,
        "failed": stats.counts.failed,
        "duration_ms_p50": percentile(&durations, 50.0),
        "duration_ms_max": durations.last(),
        "last_state_size_bytes": stats.latest.as_ref().and_then(|c| c.state_size),
        "last_checkpointed_size_bytes": stats.latest.as_ref().and_then(|c| c.checkpointed_size),
    })
}

impl JobMonitor for Monitor {
    fn started(&self, job: &JobHandle) {
        stamp_now();
        *self.cpu_at_start.lock().unwrap_or_else(|e| e.into_inner()) = process_cpu_s();
        if self.query != Query::State {
            return;
        }
        let (job, stats) = (job.clone(), self.stats.clone());
        let keys = self.keys.unwrap_or(0);
        let value_bytes = self.value_bytes;
        let restoring = self.restoring;
        std::thread::Builder::new()
            .name("bench-state".into())
            .spawn(move || {
                let result = if restoring {
                    drive_restored(&job, &stats, keys)
                } else {
                    drive_load(&job, &stats, keys, value_bytes)
                };
                if let Err(message) = result {
                    eprintln!("[weir state] {message}");
                    let _ = job.cancel();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("[weir state] cannot start the driver thread: {e}"));
    }

    fn ended(&self, job: &JobHandle, wall: Duration) {
        if self.query == Query::State {
            return;
        }
        let job_cpu_s =
            process_cpu_s() - *self.cpu_at_start.lock().unwrap_or_else(|e| e.into_inner());
        let mut samples =
            std::mem::take(&mut *self.stats.samples.lock().unwrap_or_else(|e| e.into_inner()));
        samples.sort_unstable();
        let us = |ns: Option<u64>| ns.map(|ns| (ns as f64 / 1000.0 * 10.0).round() / 10.0);
        let line = serde_json::json!({
            "workload": self.query,
            "engine": "weir",
            "events": self.events,
            "keys": self.keys,
            "outputs": self.stats.outputs.load(Ordering::Relaxed),
            "wall_s": wall.as_secs_f64(),
            "job_cpu_s": job_cpu_s,
            "latency_us": {
                "samples": samples.len(),
                "p50": us(percentile(&samples, 50.0)),
                "p99": us(percentile(&samples, 99.0)),
                "max": us(samples.last().copied()),
            },
            "checkpoints": checkpoint_summary(&job.checkpoints()),
        });
        emit(&line.to_string());
    }
}

/// Waits (polling) until `done`; errors when the job ended first.
fn wait_for(job: &JobHandle, mut done: impl FnMut() -> bool) -> std::result::Result<(), String> {
    use crate::runtime::job::JobState;
    while !done() {
        if matches!(
            job.overview().state,
            JobState::Finished | JobState::Failed | JobState::Canceled
        ) {
            return Err(format!("job ended ({:?})", job.overview().state));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Triggers a checkpoint and waits for it; returns its details.
fn checkpoint_now(job: &JobHandle) -> std::result::Result<serde_json::Value, String> {
    let before = job.checkpoints().latest.map_or(0, |c| c.id);
    job.trigger_checkpoint()?;
    let mut latest = None;
    wait_for(job, || {
        latest = job.checkpoints().latest.filter(|c| c.id > before);
        latest.is_some()
    })?;
    let c = latest.ok_or("no checkpoint")?;
    Ok(serde_json::json!({
        "event": "checkpoint",
        "id": c.id,
        "duration_ms": c.duration_ms,
        "state_size_bytes": c.state_size,
        "checkpointed_size_bytes": c.checkpointed_size,
        "external_path": c.external_path,
    }))
}

/// Fresh run of (e): wait for the load, checkpoint twice, say when to kill.
fn drive_load(
    job: &JobHandle,
    stats: &BenchStats,
    keys: u64,
    value_bytes: usize,
) -> std::result::Result<(), String> {
    let t0 = Instant::now();
    let cpu0 = process_cpu_s();
    let mut last_print = Instant::now();
    wait_for(job, || {
        let loaded = stats.loaded.load(Ordering::Relaxed);
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "[weir state] {:5.1} s  loaded {loaded} of {keys} keys",
                t0.elapsed().as_secs_f64()
            );
        }
        loaded >= keys
    })?;
    let load_s = t0.elapsed().as_secs_f64();
    let load_cpu_s = process_cpu_s() - cpu0;
    emit(
        &serde_json::json!({"event": "loaded", "keys": keys, "load_s": load_s, "load_cpu_s": load_cpu_s})
            .to_string(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let first = checkpoint_now(job)?;
    emit(&first.to_string());
    std::thread::sleep(Duration::from_secs(3));
    let second = checkpoint_now(job)?;
    emit(&second.to_string());
    emit(
        &serde_json::json!({
            "workload": "state",
            "engine": "weir",
            "keys": keys,
            "value_bytes": value_bytes,
            "load_s": load_s,
            "load_cpu_s": load_cpu_s,
            "checkpoints": [first, second.clone()],
        })
        .to_string(),
    );
    emit(
        &serde_json::json!({"event": "ready_to_kill", "checkpoint": second["external_path"]})
            .to_string(),
    );
    Ok(())
}

/// Run of (e) after the kill: report the first output, let some updates check their keys,
/// then cancel.
fn drive_restored(
    job: &JobHandle,
    stats: &BenchStats,
    keys: u64,
) -> std::result::Result<(), String> {
    let submitted = epoch_ms();
    wait_for(job, || {
        stats.first_output_epoch_ms.load(Ordering::Relaxed) != 0
    })?;
    std::thread::sleep(Duration::from_secs(1));
    emit(
        &serde_json::json!({
            "workload": "state-restore",
            "engine": "weir",
            "keys": keys,
            "first_output_epoch_ms": stats.first_output_epoch_ms.load(Ordering::Relaxed),
            "job_submitted_epoch_ms": submitted,
            "outputs_after_restore": stats.outputs.load(Ordering::Relaxed),
            "missing_keys_seen": stats.missing.load(Ordering::Relaxed),
        })
        .to_string(),
    );
    job.cancel()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain of (a) as it was, all serde_json: what [`stateless`] must produce.
    fn reference(query: Query, line: &str) -> std::result::Result<Option<String>, String> {
        let bid: BidRef<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let json = match query {
            Query::Q0 => serde_json::to_string(&bid),
            Query::Q1 => serde_json::to_string(&Q1Out {
                auction: bid.auction,
                bidder: bid.bidder,
                price: bid.price * 908 / 1000,
                date_time: bid.date_time,
            }),
            _ => {
                if !bid.auction.is_multiple_of(123) {
                    return Ok(None);
                }
                serde_json::to_string(&Q2Out {
                    auction: bid.auction,
                    price: bid.price,
                })
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(Some(json))
    }

    fn assert_same(line: &str) {
        for query in [Query::Q0, Query::Q1, Query::Q2] {
            let got = stateless(query, line).map(|out| out.map(|(json, _)| json));
            assert_eq!(got, reference(query, line), "{query:?} on {line:?}");
        }
        if let Some(bid) = parse_bid_plain(line) {
            let parsed: BidRef<'_> = serde_json::from_str(line).expect("serde_json accepts it");
            assert_eq!(bid, parsed, "{line:?}");
        }
    }

    fn generated(k: u64) -> String {
        let mut line = Vec::new();
        bid(bid_index(k)).write_json(&mut line);
        String::from_utf8(line).expect("ASCII")
    }

    #[test]
    fn generated_bids_take_the_fast_path_and_match_serde_json() {
        for k in (0..20_000).chain([1_000_000, 123 * 4567, 9_999_999]) {
            let line = generated(k);
            assert!(parse_bid_plain(&line).is_some(), "{line}");
            assert_same(&line);
            // q0 is a pass-through: the same bytes as the input line.
            assert_eq!(
                stateless(Query::Q0, &line).map(|o| o.map(|(json, _)| json)),
                Ok(Some(line.clone()))
            );
        }
    }

    #[test]
    fn tricky_lines_match_serde_json() {
        let ok = r#"{"auction":1006,"bidder":1008,"price":82600,"channel":"Apple","url":"https://www.nexmark.com/bgwmv/pzpxq/rnogy/item.htm?query=1","date_time":1700000000000}"#;
        let lines = [
            ok.to_string(),
            // Escapes and characters serde_json escapes on output.
            ok.replace("Apple", r#"Ap\"ple"#),
            ok.replace("Apple", r"Ap\\ple"),
            ok.replace("Apple", r"Ap\nple"),
            ok.replace("Apple", r"Ap\u00e9\u0001ple"),
            ok.replace("Apple", r"Ap\/ple"),
            ok.replace("Apple", "Ap\tple"),
            ok.replace("Apple", "Ap\u{1}ple"),
            ok.replace("Apple", "Ap\u{7f}ple"),
            ok.replace("Apple", "Apé日本ple"),
            ok.replace("Apple", ""),
            ok.replace("Apple", r"\"),
            ok.replace("Apple", "Ap\"ple"),
            ok.replace("query=1", r#"query=1\""#),
            // Whitespace, order, duplicates, unknown and missing fields.
            ok.replace(",", ", "),
            ok.replace(":", " : "),
            format!(" {ok}"),
            format!("{ok} "),
            format!("{ok}\t"),
            format!("{ok}x"),
            format!("{ok}}}"),
            ok.replace(
                r#""auction":1006,"bidder":1008"#,
                r#""bidder":1008,"auction":1006"#,
            ),
            ok.replace(r#""bidder":1008"#, r#""bidder":1008,"bidder":7"#),
            ok.replace(r#""bidder":1008,"#, ""),
            ok.replace(r#""bidder":1008"#, r#""bidder":1008,"extra":1"#),
            ok.replace("}", r#","extra":null}"#),
            // Numbers.
            ok.replace("1006", "0"),
            ok.replace("1006", "01006"),
            ok.replace("1006", "00"),
            ok.replace("1006", "-1006"),
            ok.replace("1006", "-0"),
            ok.replace("1006", "1006.0"),
            ok.replace("1006", "1.006e3"),
            ok.replace("1006", "1006e0"),
            ok.replace("1006", "1006E0"),
            ok.replace("1006", &u64::MAX.to_string()),
            ok.replace("1006", "18446744073709551616"),
            ok.replace("1006", "99999999999999999999999"),
            ok.replace("1006", r#""1006""#),
            ok.replace("1006", ""),
            ok.replace("82600", &(u64::MAX / 908).to_string()),
            ok.replace("1700000000000", "1700000000000.5"),
            ok.replace("1700000000000", &u64::MAX.to_string()),
            ok.replace("1700000000000", "18446744073709551616"),
            // Truncated and broken.
            ok[..ok.len() - 1].to_string(),
            ok[..40].to_string(),
            ok.replace(r#""Apple""#, r#""Apple"#),
            ok.replace(r#""Apple""#, "Apple"),
            ok.replace(r#""Apple""#, "null"),
            String::new(),
            "{}".to_string(),
            "null".to_string(),
        ];
        for line in &lines {
            assert_same(line);
        }
        // The ones the fast path must leave to serde_json.
        assert!(parse_bid_plain(&lines[1]).is_none());
        assert!(parse_bid_plain(&lines[6]).is_none());
        assert!(parse_bid_plain(&lines[15]).is_none());
        // Non-ASCII and DEL need no escaping: fast path, same bytes.
        assert!(parse_bid_plain(&lines[8]).is_some());
        assert!(parse_bid_plain(&lines[9]).is_some());
        // 20 digits: u64::MAX on the fast path, one more is serde_json's error.
        let max = ok.replace("1006", &u64::MAX.to_string());
        assert_eq!(parse_bid_plain(&max).map(|b| b.auction), Some(u64::MAX));
        assert!(parse_bid_plain(&ok.replace("1006", "18446744073709551616")).is_none());
        assert!(parse_bid_plain(&ok.replace("1006", "10000000000000000000")).is_some());
    }

    /// Random edits of generated lines (bytes JSON cares about): fast path or not, the outputs
    /// and errors are serde_json's.
    #[test]
    fn mutated_lines_match_serde_json() {
        const ALPHABET: &[u8] = b"0123456789\"\\{}[]:,.-+eE \tnul/az";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for k in 0..20_000u64 {
            let mut line = generated(k * 7919).into_bytes();
            for _ in 0..1 + next() % 3 {
                let at = (next() % (line.len() as u64 + 1)) as usize;
                let byte = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                match next() % 3 {
                    0 if at < line.len() => line[at] = byte,
                    1 if at < line.len() => {
                        line.remove(at);
                    }
                    _ => line.insert(at, byte),
                }
            }
            let line = String::from_utf8(line).expect("ASCII");
            assert_same(&line);
        }
    }
}
