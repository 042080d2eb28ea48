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
//!
//! The parts: `codec` parses the bid lines of (a) and serializes its outputs (byte-identical to
//! serde_json), `keyed` holds the keyed and window functions of (b) to (e), `sink` the counting
//! sink, `monitor` the figures printed at the end and the driver thread of (e).

mod codec;
mod keyed;
mod monitor;
mod sink;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BuiltJob;
use super::shared::RunningCount;
use crate::api::{MapWindow, StreamEnv, TimeWindow, WatermarkStrategy, WindowAssigner};
use crate::connectors::FileSource;
use crate::connectors::nexmark::{
    self, NexmarkSource, bid, bid_index, keyed_count_key, state_value,
};
use crate::error::{Error, Result};
use crate::runtime::watermark::Timestamp;
use crate::spec::RestoreSource;
use codec::stateless;
use keyed::{
    BestPerWindow, CountAgg, Q5Bid, Q5Count, Q7Bid, Q7Winner, StateRecord, StoreValue, higher_bid,
    max_bid, more_bids,
};
use monitor::Monitor;
use sink::CountingSink;

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
                CountingSink::new(&stats, 64, |r: &(String, u64)| r.1),
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
            .process("count", || {
                RunningCount::new(|key: &u64, n, (_, stamp): (u64, u64)| (*key, n, stamp))
            })
            .sink(
                "counting-sink",
                CountingSink::new(&stats, 64, |r: &(u64, u64, u64)| r.2),
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
                CountingSink::new(&stats, 1, |r: &Q5Count| r.3),
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
                CountingSink::new(&stats, 1, |r: &Q7Winner| r.5),
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
                CountingSink::new(&stats, 1, |r: &(u64, u64, u64)| r.2),
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
