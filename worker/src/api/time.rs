//! Event time for job authors: a [`WatermarkStrategy`] says where a record's timestamp is and
//! how out of order records may arrive; `Stream::assign_timestamps` applies it, and the
//! resulting [`EventTimeStream`] can be keyed and windowed.
//!
//! Watermarks are generated in the task of the assigner (usually the source task) every
//! `emit_every` records, so where a watermark falls between records depends on the input
//! alone, not on timing: with the generator's state checkpointed, a restored run sees the
//! same watermarks at the same records as an uninterrupted one. A source that stalls gets
//! its pending watermark out at the next flush, and one quiet for `idleness` is marked idle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stream::{KeyedStream, Stream};
use super::{Data, Key, KeyedProcessFunction};
use crate::error::{Error, Result};
use crate::runtime::chain::Collector;
use crate::runtime::watermark::{Timestamp, Watermark};
use crate::runtime::{BATCH_SIZE, Barrier, TaskEnv, TaskSnapshot};
use crate::state::Redistribution;

/// Name of a watermark generator's state in operator state.
pub const WATERMARK_STATE: &str = "watermark";

pub(crate) type TimestampFn<T> = Arc<dyn Fn(&T) -> Timestamp + Send + Sync>;

/// How to read timestamps and derive watermarks (Flink's `WatermarkStrategy`).
pub struct WatermarkStrategy<T> {
    pub(crate) timestamp: TimestampFn<T>,
    out_of_orderness: Timestamp,
    idleness: Option<Duration>,
    emit_every: u64,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            timestamp: self.timestamp.clone(),
            out_of_orderness: self.out_of_orderness,
            idleness: self.idleness,
            emit_every: self.emit_every,
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
/// most conservative of the old ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GeneratorState {
    subtask: u32,
    parallelism: u32,
    max_timestamp: Option<Timestamp>,
    since_emit: u64,
    emitted: Timestamp,
}

impl Default for GeneratorState {
    fn default() -> Self {
        GeneratorState {
            subtask: 0,
            parallelism: 0,
            max_timestamp: None,
            since_emit: 0,
            emitted: Timestamp::MIN,
        }
    }
}

struct TimestampsOp<T> {
    uid: String,
    strategy: WatermarkStrategy<T>,
    next: Box<dyn Collector<T>>,
    state: GeneratorState,
    records_since_flush: u64,
    last_record: Instant,
    idle: bool,
}

impl<T> TimestampsOp<T> {
    /// Sends the current watermark if it advanced (or, `reactivate`, to end idleness).
    fn emit(&mut self, reactivate: bool) -> Result<()> {
        self.state.since_emit = 0;
        let Some(max) = self.state.max_timestamp else {
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

    fn restore(&mut self, entries: Vec<serde_json::Value>, env: &TaskEnv) -> Result<()> {
        let states = entries
            .into_iter()
            .map(serde_json::from_value::<GeneratorState>)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::codec(format!("watermark state of {}", self.uid), e))?;
        let own = states
            .iter()
            .find(|s| s.parallelism == env.parallelism && s.subtask == env.id.subtask);
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

impl<T: Send + 'static> Collector<T> for TimestampsOp<T> {
    fn open(&mut self, env: &TaskEnv) -> Result<()> {
        self.next.open(env)?;
        if let Some(entries) =
            env.restored_operator_state(&self.uid, WATERMARK_STATE, Redistribution::Union)
        {
            self.restore(entries, env)?;
        }
        self.state.subtask = env.id.subtask;
        self.state.parallelism = env.parallelism;
        if self.state.emitted > Timestamp::MIN {
            // Downstream had this watermark before the failure; it precedes every record.
            self.next.on_watermark(Watermark::At(self.state.emitted))?;
        }
        Ok(())
    }

    fn collect(&mut self, item: T) -> Result<()> {
        let timestamp = (self.strategy.timestamp)(&item);
        let max = self
            .state
            .max_timestamp
            .map_or(timestamp, |m| m.max(timestamp));
        self.state.max_timestamp = Some(max);
        self.records_since_flush += 1;
        if self.strategy.idleness.is_some() {
            self.last_record = Instant::now();
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

    fn on_barrier(&mut self, barrier: &Barrier, snapshot: &mut TaskSnapshot) -> Result<()> {
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
        if stalled && self.state.since_emit > 0 {
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

    impl Collector<i64> for Recorder {
        fn open(&mut self, _env: &TaskEnv) -> Result<()> {
            Ok(())
        }
        fn collect(&mut self, item: i64) -> Result<()> {
            self.0.lock().expect("lock").push(Seen::Record(item));
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
            records_since_flush: 0,
            last_record: Instant::now(),
            idle: false,
        };
        (op, seen)
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
}
