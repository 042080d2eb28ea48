//! Event time for job authors: a [`WatermarkStrategy`] says where a record's timestamp is and
//! how out of order records may arrive; `Stream::assign_timestamps` applies it, and the
//! resulting [`EventTimeStream`] can be keyed and windowed.
//!
//! Watermarks are generated in the task of the assigner (usually the source task) every
//! `emit_every` records, so where a watermark falls between records depends on the input
//! alone, not on timing: with the generator's state checkpointed, a restored run sees the
//! same watermarks at the same records as an uninterrupted one. A source that stalls gets
//! its pending watermark out at the next flush, and one quiet for `idleness` is marked idle.
//!
//! With [`WatermarkStrategy::with_splits`] a subtask that reads several splits (Kafka
//! partitions) keeps one clock per split: each advances on its own records, the watermark is
//! the minimum over the splits that are not idle, so a partition far ahead does not make the
//! records of one behind it late, and a quiet partition (after `idleness`) does not hold the
//! others back. A split the source announces (`SourceReader::splits`: a Kafka partition once
//! assigned) holds the watermark back until its first record; a split it never announces
//! counts once its first record is seen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use serde::{Deserialize, Serialize};

use super::stream::{KeyedStream, Stream};
use super::{Data, Key, KeyedProcessFunction};
use crate::error::{Error, Result};
use crate::runtime::chain::{Collector, Downstream};
use crate::runtime::watermark::{Timestamp, Watermark};
use crate::runtime::{BATCH_SIZE, Barrier, TaskEnv, TaskSnapshot};
use crate::state::Redistribution;

/// Name of a watermark generator's state in operator state.
pub const WATERMARK_STATE: &str = "watermark";

pub(crate) type TimestampFn<T> = Arc<dyn Fn(&T) -> Timestamp + Send + Sync>;
type SplitFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// How to read timestamps and derive watermarks (Flink's `WatermarkStrategy`).
pub struct WatermarkStrategy<T> {
    pub(crate) timestamp: TimestampFn<T>,
    out_of_orderness: Timestamp,
    idleness: Option<Duration>,
    emit_every: u64,
    split: Option<SplitFn<T>>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            timestamp: self.timestamp.clone(),
            out_of_orderness: self.out_of_orderness,
            idleness: self.idleness,
            emit_every: self.emit_every,
            split: self.split.clone(),
        }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Records arrive at most `bound` behind the newest one seen: the watermark is the
    /// largest timestamp seen minus `bound` minus 1 ms. `timestamp` is ms since the epoch.
    pub fn bounded_out_of_orderness(
        bound: Duration,
        timestamp: impl Fn(&T) -> Timestamp + Send + Sync + 'static,
    ) -> Self {
        WatermarkStrategy {
            timestamp: Arc::new(timestamp),
            out_of_orderness: bound.as_millis() as Timestamp,
            idleness: None,
            emit_every: BATCH_SIZE as u64,
            split: None,
        }
    }

    /// Timestamps never go backwards.
    pub fn monotonous(timestamp: impl Fn(&T) -> Timestamp + Send + Sync + 'static) -> Self {
        Self::bounded_out_of_orderness(Duration::ZERO, timestamp)
    }

    /// After `timeout` without records the stream is idle: downstream leaves it out of its
    /// minimum until records come again.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// Emit a watermark every `records` records (default 1024; at least 1).
    pub fn with_emit_every(mut self, records: u64) -> Self {
        self.emit_every = records.max(1);
        self
    }

    /// Per-split watermarks (Flink's per-partition watermarks): `split` names the split a
    /// record came from (e.g. `KafkaRecord::split_id`), a stable id across restarts. Each
    /// split's watermark advances on its own records; the stream's is the minimum over the
    /// splits not idle for `idleness`.
    pub fn with_splits(mut self, split: impl Fn(&T) -> u64 + Send + Sync + 'static) -> Self {
        self.split = Some(Arc::new(split));
        self
    }
}

/// A stream whose records carry event time.
pub struct EventTimeStream<T> {
    pub(crate) stream: Stream<T>,
    pub(crate) timestamp: TimestampFn<T>,
}

/// A keyed stream whose records carry event time: it can be windowed.
pub struct EventTimeKeyedStream<K, T> {
    pub(crate) keyed: KeyedStream<K, T>,
    pub(crate) timestamp: TimestampFn<T>,
}

impl<T: Send + 'static> Stream<T> {
    /// Assigns timestamps and generates watermarks with `strategy`; `uid` names the
    /// generator's checkpointed state.
    pub fn assign_timestamps(
        self,
        uid: &str,
        strategy: WatermarkStrategy<T>,
    ) -> EventTimeStream<T> {
        self.env.register_uid(uid);
        let timestamp = strategy.timestamp.clone();
        let uid = uid.to_string();
        let stream = self.chain(move |next| {
            Box::new(TimestampsOp {
                uid: uid.clone(),
                strategy: strategy.clone(),
                next,
                state: GeneratorState::default(),
                splits: SplitClocks::default(),
                records_since_flush: 0,
                last_record: Instant::now(),
                idle: false,
            })
        });
        EventTimeStream { stream, timestamp }
    }
}

impl<T: Send + 'static> EventTimeStream<T> {
    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        EventTimeStream {
            stream: self.stream.filter(f),
            timestamp: self.timestamp,
        }
    }

    pub fn key_by<K: Key>(
        self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> EventTimeKeyedStream<K, T> {
        EventTimeKeyedStream {
            keyed: self.stream.key_by(key),
            timestamp: self.timestamp,
        }
    }

    /// The plain stream (watermarks keep flowing; timestamps are no longer known by type).
    pub fn into_stream(self) -> Stream<T> {
        self.stream
    }
}

impl<K: Key, T: Data> EventTimeKeyedStream<K, T> {
    /// A keyed function that may use event-time timers (`ctx.register_event_time_timer`).
    pub fn process<O, P>(self, uid: &str, make: impl Fn() -> P + Send + Sync + 'static) -> Stream<O>
    where
        O: Send + 'static,
        P: KeyedProcessFunction<K, T, O>,
    {
        self.keyed.process(uid, make)
    }

    /// The timestamp of a record, as the strategy reads it.
    pub fn timestamp_of(&self, record: &T) -> Timestamp {
        (self.timestamp)(record)
    }
}

/// What a generator checkpoints. Tagged with its subtask so a restore at the same
/// parallelism resumes each generator exactly; after a rescale every subtask starts from the
/// most conservative of the old ones, and takes over a split's clock when it sees the
/// split's records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GeneratorState {
    subtask: u32,
    parallelism: u32,
    max_timestamp: Option<Timestamp>,
    since_emit: u64,
    emitted: Timestamp,
    /// Largest timestamp per split (with `with_splits` only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    splits: BTreeMap<u64, Timestamp>,
}

impl Default for GeneratorState {
    fn default() -> Self {
        GeneratorState {
            subtask: 0,
            parallelism: 0,
            max_timestamp: None,
            since_emit: 0,
            emitted: Timestamp::MIN,
            splits: BTreeMap::new(),
        }
    }
}

/// The clock of one split.
#[derive(Debug, Clone, Copy)]
struct SplitClock {
    max_timestamp: Timestamp,
    last_record: Instant,
    idle: bool,
}

impl SplitClock {
    fn new(max_timestamp: Timestamp) -> Self {
        SplitClock {
            max_timestamp,
            last_record: Instant::now(),
            idle: false,
        }
    }
}

/// Per-split clocks of a generator `with_splits`.
#[derive(Debug, Default)]
struct SplitClocks {
    clocks: FxHashMap<u64, SplitClock>,
    /// Clocks other subtasks had before a rescale: a split's is taken over with its first
    /// record here, so its watermark never restarts below where it was.
    inherited: FxHashMap<u64, Timestamp>,
}

impl SplitClocks {
    /// Records `timestamp` for `split`, which is active from now on.
    fn on_record(&mut self, split: u64, timestamp: Timestamp, track_idleness: bool) {
        let inherited = &mut self.inherited;
        let clock = self
            .clocks
            .entry(split)
            .or_insert_with(|| SplitClock::new(inherited.remove(&split).unwrap_or(Timestamp::MIN)));
        clock.max_timestamp = clock.max_timestamp.max(timestamp);
        if track_idleness {
            clock.last_record = Instant::now();
        }
        clock.idle = false;
    }

    /// The source reads exactly `splits` now. Each one holds the watermark back from now on
    /// until its first record (or until it is quiet for `idleness`), as a Flink source's
    /// per-split watermark output does from the split's assignment: otherwise a partition
    /// the consumer happens to fetch later than the others would find the watermark already
    /// past its first records, and they would be late. A split no longer read (a bounded
    /// partition at its end) stops holding it back.
    fn announce(&mut self, splits: &[u64]) {
        let inherited = &mut self.inherited;
        for &split in splits {
            self.clocks.entry(split).or_insert_with(|| {
                SplitClock::new(inherited.remove(&split).unwrap_or(Timestamp::MIN))
            });
        }
        for (split, clock) in &mut self.clocks {
            if !splits.contains(split) {
                clock.idle = true;
            }
        }
    }

    /// Marks splits quiet for `idleness` idle; returns whether any became idle.
    fn mark_idle(&mut self, idleness: Option<Duration>) -> bool {
        let Some(timeout) = idleness else {
            return false;
        };
        let mut changed = false;
        for clock in self.clocks.values_mut() {
            if !clock.idle && clock.last_record.elapsed() >= timeout {
                clock.idle = true;
                changed = true;
            }
        }
        changed
    }

    /// The smallest largest timestamp over the active splits (`None`: every split is idle).
    fn min_active(&self) -> Option<Timestamp> {
        self.clocks
            .values()
            .filter(|c| !c.idle)
            .map(|c| c.max_timestamp)
            .min()
    }

    fn snapshot(&self) -> BTreeMap<u64, Timestamp> {
        self.clocks
            .iter()
            .map(|(split, clock)| (*split, clock.max_timestamp))
            .collect()
    }
}

struct TimestampsOp<T> {
    uid: String,
    strategy: WatermarkStrategy<T>,
    next: Box<dyn Collector<T>>,
    state: GeneratorState,
    splits: SplitClocks,
    records_since_flush: u64,
    last_record: Instant,
    idle: bool,
}

impl<T> TimestampsOp<T> {
    /// Sends the current watermark if it advanced (or, `reactivate`, to end idleness).
    fn emit(&mut self, reactivate: bool) -> Result<()> {
        self.state.since_emit = 0;
        let max = if self.strategy.split.is_some() {
            self.splits.mark_idle(self.strategy.idleness);
            self.splits.min_active()
        } else {
            self.state.max_timestamp
        };
        let Some(max) = max else {
            return Ok(());
        };
        let watermark = max
            .saturating_sub(self.strategy.out_of_orderness)
            .saturating_sub(1);
        if watermark > self.state.emitted {
            self.state.emitted = watermark;
        } else if !reactivate {
            return Ok(());
        }
        self.next.on_watermark(Watermark::At(self.state.emitted))
    }

    fn restore(
        &mut self,
        entries: Vec<serde_json::Value>,
        parallelism: u32,
        subtask: u32,
    ) -> Result<()> {
        let states = entries
            .into_iter()
            .map(serde_json::from_value::<GeneratorState>)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::codec(format!("watermark state of {}", self.uid), e))?;
        let own = states
            .iter()
            .find(|s| s.parallelism == parallelism && s.subtask == subtask);
        self.splits = SplitClocks::default();
        match own {
            // The same splits come back to the same subtask: resume their clocks as they were.
            Some(own) => {
                self.splits.clocks = own
                    .splits
                    .iter()
                    .map(|(split, max)| (*split, SplitClock::new(*max)))
                    .collect();
            }
            None => {
                for (split, max) in states.iter().flat_map(|s| &s.splits) {
                    let inherited = self.splits.inherited.entry(*split).or_insert(*max);
                    *inherited = (*inherited).max(*max);
                }
            }
        }
        self.state = match own {
            Some(own) => own.clone(),
            None => GeneratorState {
                max_timestamp: states.iter().filter_map(|s| s.max_timestamp).min(),
                emitted: states
                    .iter()
                    .map(|s| s.emitted)
                    .min()
                    .unwrap_or(Timestamp::MIN),
                ..GeneratorState::default()
            },
        };
        Ok(())
    }
}

impl<T: Send + 'static> Downstream<T> for TimestampsOp<T> {
    fn collect(&mut self, item: T) -> Result<()> {
        let timestamp = (self.strategy.timestamp)(&item);
        let max = self
            .state
            .max_timestamp
            .map_or(timestamp, |m| m.max(timestamp));
        self.state.max_timestamp = Some(max);
        self.records_since_flush += 1;
        let track_idleness = self.strategy.idleness.is_some();
        if track_idleness {
            self.last_record = Instant::now();
        }
        // A split back from idleness may lower the minimum: nothing is sent then (the
        // watermark never goes back), its records may be late, as in Flink.
        if let Some(split) = &self.strategy.split {
            self.splits
                .on_record(split(&item), timestamp, track_idleness);
        }
        self.next.collect(item)?;
        self.state.since_emit += 1;
        if std::mem::take(&mut self.idle) {
            return self.emit(true);
        }
        if self.state.since_emit >= self.strategy.emit_every {
            self.emit(false)?;
        }
        Ok(())
    }
}

impl<T: Send + 'static> Collector<T> for TimestampsOp<T> {
    fn open(&mut self, env: &TaskEnv) -> Result<()> {
        self.next.open(env)?;
        if let Some(entries) =
            env.restored_operator_state(&self.uid, WATERMARK_STATE, Redistribution::Union)
        {
            self.restore(entries, env.parallelism, env.id.subtask)?;
        }
        self.state.subtask = env.id.subtask;
        self.state.parallelism = env.parallelism;
        if self.state.emitted > Timestamp::MIN {
            // Downstream had this watermark before the failure; it precedes every record.
            self.next.on_watermark(Watermark::At(self.state.emitted))?;
        }
        Ok(())
    }

    fn on_splits(&mut self, splits: &[u64]) -> Result<()> {
        if self.strategy.split.is_some() {
            self.splits.announce(splits);
        }
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &Barrier, snapshot: &mut TaskSnapshot) -> Result<()> {
        self.state.splits = self.splits.snapshot();
        let state = serde_json::to_value(&self.state)
            .map_err(|e| Error::codec(format!("watermark state of {}", self.uid), e))?;
        snapshot.add_operator_state(
            &self.uid,
            WATERMARK_STATE,
            Redistribution::Union,
            vec![state],
        );
        self.next.on_barrier(barrier, snapshot)
    }

    fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.next.on_checkpoint_complete(checkpoint_id)
    }

    fn flush(&mut self) -> Result<()> {
        let stalled = std::mem::take(&mut self.records_since_flush) == 0;
        // A split going idle can advance the minimum while the others keep the stream busy.
        let split_went_idle =
            self.strategy.split.is_some() && self.splits.mark_idle(self.strategy.idleness);
        if (stalled && self.state.since_emit > 0) || split_went_idle {
            self.emit(false)?;
        }
        if let Some(timeout) = self.strategy.idleness
            && !self.idle
            && stalled
            && self.last_record.elapsed() >= timeout
        {
            self.idle = true;
            self.next.on_watermark(Watermark::Idle)?;
        }
        self.next.flush()
    }

    fn finish(&mut self) -> Result<()> {
        self.next.finish()
    }

    /// Upstream watermarks are replaced by this generator's, except the end of input.
    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if watermark == Watermark::MAX {
            self.state.emitted = Timestamp::MAX;
            return self.next.on_watermark(watermark);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq)]
    enum Seen {
        Record(i64),
        Mark(Watermark),
    }

    struct Recorder(Arc<Mutex<Vec<Seen>>>);

    impl Downstream<i64> for Recorder {
        fn collect(&mut self, item: i64) -> Result<()> {
            self.0.lock().expect("lock").push(Seen::Record(item));
            Ok(())
        }
    }

    impl Collector<i64> for Recorder {
        fn open(&mut self, _env: &TaskEnv) -> Result<()> {
            Ok(())
        }
        fn on_barrier(&mut self, _b: &Barrier, _s: &mut TaskSnapshot) -> Result<()> {
            Ok(())
        }
        fn on_checkpoint_complete(&mut self, _id: u64) -> Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
        fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
            self.0.lock().expect("lock").push(Seen::Mark(watermark));
            Ok(())
        }
    }

    fn op(strategy: WatermarkStrategy<i64>) -> (TimestampsOp<i64>, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let op = TimestampsOp {
            uid: "ts".into(),
            strategy,
            next: Box::new(Recorder(seen.clone())),
            state: GeneratorState::default(),
            splits: SplitClocks::default(),
            records_since_flush: 0,
            last_record: Instant::now(),
            idle: false,
        };
        (op, seen)
    }

    /// Test records `split * 1_000_000 + timestamp`.
    fn split_record(split: i64, timestamp: i64) -> i64 {
        split * 1_000_000 + timestamp
    }

    fn per_split(idleness: Option<Duration>) -> WatermarkStrategy<i64> {
        let strategy = WatermarkStrategy::monotonous(|r: &i64| r % 1_000_000)
            .with_emit_every(1)
            .with_splits(|r: &i64| (r / 1_000_000) as u64);
        match idleness {
            Some(timeout) => strategy.with_idleness(timeout),
            None => strategy,
        }
    }

    #[test]
    fn bounded_out_of_orderness_emits_max_minus_bound_every_n_records() {
        let strategy =
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(10), |t: &i64| *t)
                .with_emit_every(2);
        let (mut op, seen) = op(strategy);
        for t in [100, 90, 120, 105, 104, 103] {
            op.collect(t).expect("collect");
        }
        use Seen::*;
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![
                Record(100),
                Record(90),
                Mark(Watermark::At(89)),
                Record(120),
                Record(105),
                Mark(Watermark::At(109)),
                Record(104),
                Record(103),
            ],
            "no watermark when it would not advance"
        );
    }

    #[test]
    fn a_stalled_stream_flushes_its_watermark_then_goes_idle() {
        let strategy = WatermarkStrategy::monotonous(|t: &i64| *t)
            .with_emit_every(100)
            .with_idleness(Duration::ZERO);
        let (mut op, seen) = op(strategy);
        op.collect(50).expect("collect");
        op.flush()
            .expect("flush: records since the last one, nothing yet");
        op.flush().expect("flush: stalled");
        op.collect(60).expect("collect");
        use Seen::*;
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![
                Record(50),
                Mark(Watermark::At(49)),
                Mark(Watermark::Idle),
                Record(60),
                Mark(Watermark::At(59)),
            ]
        );
    }

    #[test]
    fn each_split_advances_only_its_own_clock_and_the_watermark_is_their_minimum() {
        let (mut op, seen) = op(per_split(None));
        for (split, t) in [(1, 100), (2, 50), (1, 200), (1, 300), (2, 150), (2, 400)] {
            op.collect(split_record(split, t)).expect("collect");
        }
        use Seen::*;
        let marks: Vec<Seen> = seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| matches!(s, Mark(_)))
            .cloned()
            .collect();
        assert_eq!(
            marks,
            vec![
                Mark(Watermark::At(99)),  // only split 1 is known yet
                Mark(Watermark::At(149)), // split 1's 300 waited for split 2
                Mark(Watermark::At(299)), // split 2 passed split 1: split 1 holds it
            ],
            "split 1 alone never moves the watermark past split 2"
        );
    }

    /// A partition fetched later than the others (the flake of kafka_jobs' minute-bars test
    /// under load: one security's first five windows were dropped as late).
    #[test]
    fn an_announced_split_holds_the_watermark_back_until_its_first_record() {
        let (mut op, seen) = op(per_split(None));
        op.on_splits(&[1, 2]).expect("announce");
        for t in [100, 200, 300] {
            op.collect(split_record(1, t)).expect("collect");
        }
        let marks = |seen: &Arc<Mutex<Vec<Seen>>>| -> Vec<Seen> {
            seen.lock()
                .expect("lock")
                .iter()
                .filter(|s| matches!(s, Seen::Mark(_)))
                .cloned()
                .collect()
        };
        assert_eq!(marks(&seen), vec![], "split 2 has not been read yet");
        op.collect(split_record(2, 50)).expect("collect");
        assert_eq!(
            marks(&seen),
            vec![Seen::Mark(Watermark::At(49))],
            "{:?}",
            marks(&seen)
        );
        // Split 2 is finished (no longer announced): split 1 alone moves the watermark.
        op.on_splits(&[1]).expect("announce");
        op.collect(split_record(1, 400)).expect("collect");
        assert_eq!(
            marks(&seen),
            vec![
                Seen::Mark(Watermark::At(49)),
                Seen::Mark(Watermark::At(399))
            ]
        );
    }

    #[test]
    fn an_idle_split_is_left_out_until_its_records_come_again() {
        let (mut op, seen) = op(per_split(Some(Duration::from_millis(100))));
        op.collect(split_record(1, 100)).expect("collect");
        op.collect(split_record(2, 1_000)).expect("collect");
        std::thread::sleep(Duration::from_millis(150));
        // Split 2 keeps receiving records while split 1 stays quiet past the idleness.
        op.collect(split_record(2, 2_000)).expect("collect");
        op.flush().expect("flush");
        op.collect(split_record(1, 150))
            .expect("split 1 again: late, the watermark stays");
        op.collect(split_record(2, 3_000)).expect("collect");
        use Seen::*;
        let marks: Vec<Seen> = seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| matches!(s, Mark(_)))
            .cloned()
            .collect();
        assert_eq!(
            marks,
            vec![
                Mark(Watermark::At(99)),
                Mark(Watermark::At(1_999)), // split 1 idle: split 2 alone
            ],
            "once split 1 is active again at 150 the minimum is below what was sent"
        );
        assert!(
            !marks.contains(&Mark(Watermark::Idle)),
            "the stream is busy: not idle"
        );
    }

    #[test]
    fn split_clocks_survive_restore_and_rescale() {
        let (mut op1, _) = op(per_split(None));
        for (split, t) in [(1, 100), (2, 500)] {
            op1.collect(split_record(split, t)).expect("collect");
        }
        op1.state.subtask = 0;
        op1.state.parallelism = 2;
        op1.state.splits = op1.splits.snapshot();
        let entry = serde_json::to_value(&op1.state).expect("state");

        // Same parallelism: both clocks resume, the minimum is split 1's.
        let (mut same, seen) = op(per_split(None));
        same.restore(vec![entry.clone()], 2, 0).expect("restore");
        same.collect(split_record(2, 600)).expect("collect");
        assert_eq!(
            seen.lock().expect("lock").last(),
            Some(&Seen::Record(split_record(2, 600)))
        );
        assert_eq!(same.splits.min_active(), Some(100));

        // Rescaled: a subtask takes over the clock of a split it reads, only that one.
        let (mut rescaled, seen) = op(per_split(None));
        rescaled.restore(vec![entry], 3, 1).expect("restore");
        rescaled.collect(split_record(2, 400)).expect("collect");
        assert_eq!(
            rescaled.splits.min_active(),
            Some(500),
            "split 2's clock kept its 500"
        );
        assert_eq!(
            seen.lock().expect("lock").last(),
            Some(&Seen::Mark(Watermark::At(499)))
        );
        assert_eq!(
            rescaled.splits.snapshot().len(),
            1,
            "split 1 is not this subtask's"
        );
    }
}
