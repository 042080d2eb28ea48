//! Event-time windows on keyed streams, built as Flink's `WindowOperator` is: a keyed
//! process function whose window contents live in namespaced keyed state (RocksDB) and
//! whose firings are event-time timers, so windows are checkpointed, restored and rescaled
//! like any other keyed state.
//!
//! ```ignore
//! env.source("trades", FileSource::json_lines(input))
//!     .assign_timestamps("trade-time", WatermarkStrategy::bounded_out_of_orderness(5s, |t| t.time))
//!     .key_by(|t: &Trade| t.code.clone())
//!     .window(WindowAssigner::tumbling(Duration::from_secs(60)))
//!     .allowed_lateness(Duration::from_secs(10))
//!     .reduce("bars", |a, b| latest(a, b), MinuteBar::default)
//! // -> WindowStreams { results, late }
//! ```
//!
//! Semantics (as Flink's event-time trigger): a window `[start, end)` fires when the watermark
//! reaches `end - 1`; a record for a window already fired but within the allowed lateness
//! fires it again with the updated contents; window state is dropped once the watermark
//! passes `end - 1 + allowed lateness`. A record all of whose windows are past that point is
//! late: it goes to the `late` stream.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::stream::Stream;
use super::time::{EventTimeKeyedStream, TimestampFn};
use super::{Data, Emitter, Key, KeyedProcessFunction};
use crate::error::{Error, Result};
use crate::runtime::chain::{Collector, Downstream, Output};
use crate::runtime::watermark::{Timestamp, Watermark};
use crate::runtime::{Barrier, TaskEnv, TaskSnapshot};
use crate::state::{
    AggregateFunction, AggregatingState, KeyedContext, ListState, ReducingState, StateRegistry,
    TimeDomain, Timer, ValueState,
};

/// A half-open interval of event time `[start, end)`, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimeWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl TimeWindow {
    pub fn new(start: Timestamp, end: Timestamp) -> Self {
        TimeWindow { start, end }
    }

    /// The last timestamp inside the window; it fires when the watermark reaches this.
    pub fn max_timestamp(&self) -> Timestamp {
        self.end - 1
    }

    /// Overlapping or adjacent (Flink merges sessions that touch).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }

    /// The window as a state and timer namespace: order-preserving bytes.
    fn namespace(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&((self.start as u64) ^ (1 << 63)).to_be_bytes());
        out[8..].copy_from_slice(&((self.end as u64) ^ (1 << 63)).to_be_bytes());
        out
    }

    fn from_namespace(bytes: &[u8]) -> Option<TimeWindow> {
        let start = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?) ^ (1 << 63);
        let end = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?) ^ (1 << 63);
        Some(TimeWindow::new(start as i64, end as i64))
    }
}

/// Which windows a record belongs to, by its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed, non-overlapping windows of `size`, aligned to the epoch plus `offset`.
    Tumbling { size: Timestamp, offset: Timestamp },
    /// Windows of `size` starting every `slide`: a record is in `size / slide` of them.
    Sliding {
        size: Timestamp,
        slide: Timestamp,
        offset: Timestamp,
    },
    /// Per key, records less than `gap` apart share a window; windows merge as records
    /// bridge them.
    Session { gap: Timestamp },
}

fn millis(d: Duration) -> Timestamp {
    (d.as_millis() as Timestamp).max(1)
}

/// Flink's `TimeWindow.getWindowStartWithOffset`.
fn window_start(timestamp: Timestamp, offset: Timestamp, size: Timestamp) -> Timestamp {
    timestamp - (timestamp - offset).rem_euclid(size)
}

impl WindowAssigner {
    pub fn tumbling(size: Duration) -> Self {
        WindowAssigner::Tumbling {
            size: millis(size),
            offset: 0,
        }
    }

    pub fn sliding(size: Duration, slide: Duration) -> Self {
        WindowAssigner::Sliding {
            size: millis(size),
            slide: millis(slide),
            offset: 0,
        }
    }

    pub fn session(gap: Duration) -> Self {
        WindowAssigner::Session { gap: millis(gap) }
    }

    /// Shifts window boundaries (e.g. to align daily windows to a time zone).
    pub fn with_offset(self, offset: Duration) -> Self {
        let ms = offset.as_millis() as Timestamp;
        match self {
            WindowAssigner::Tumbling { size, .. } => WindowAssigner::Tumbling {
                size,
                offset: ms % size,
            },
            WindowAssigner::Sliding { size, slide, .. } => WindowAssigner::Sliding {
                size,
                slide,
                offset: ms % slide,
            },
            session => session,
        }
    }

    pub fn assign_windows(&self, timestamp: Timestamp) -> Vec<TimeWindow> {
        match *self {
            WindowAssigner::Tumbling { size, offset } => {
                let start = window_start(timestamp, offset, size);
                vec![TimeWindow::new(start, start + size)]
            }
            WindowAssigner::Sliding {
                size,
                slide,
                offset,
            } => {
                let mut windows = Vec::with_capacity((size / slide) as usize + 1);
                let mut start = window_start(timestamp, offset, slide);
                while start > timestamp - size {
                    windows.push(TimeWindow::new(start, start + size));
                    start -= slide;
                }
                windows
            }
            WindowAssigner::Session { gap } => {
                vec![TimeWindow::new(timestamp, timestamp + gap)]
            }
        }
    }

    fn is_merging(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }
}

/// Turns a window's contents into output (Flink's `ProcessWindowFunction`). `input` is the
/// reduced value, the aggregate's result, or every element, depending on how the window
/// aggregates. `ctx` holds the key's state (not per window), e.g. totals across windows.
pub trait WindowFunction<K, A, O>: Send + 'static {
    /// Declare state here.
    fn open(&mut self, _state: &mut StateRegistry) -> Result<()> {
        Ok(())
    }

    fn apply(
        &mut self,
        key: &K,
        window: &TimeWindow,
        input: A,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, O>,
    ) -> Result<()>;
}

/// A stateless window function from a closure.
pub struct MapWindow<F>(pub F);

impl<K, A, O, F> WindowFunction<K, A, O> for MapWindow<F>
where
    F: FnMut(&K, &TimeWindow, A) -> O + Send + 'static,
{
    fn apply(
        &mut self,
        key: &K,
        window: &TimeWindow,
        input: A,
        _ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, O>,
    ) -> Result<()> {
        out.emit((self.0)(key, window, input))
    }
}

/// What a window operator emits before it is split into results and late records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WindowOutput<O, T> {
    Result(O),
    Late(T),
}

/// A window operator's two outputs. Sink `late` too (and join the graphs with
/// [`JobGraph::and`](super::JobGraph::and)) to keep late records; otherwise they are dropped.
pub struct WindowStreams<O, T> {
    pub results: Stream<O>,
    pub late: Stream<T>,
}

/// A keyed stream cut into windows, waiting for how to aggregate them.
pub struct WindowedStream<K, T> {
    input: EventTimeKeyedStream<K, T>,
    assigner: WindowAssigner,
    allowed_lateness: Timestamp,
}

impl<K: Key, T: Data> EventTimeKeyedStream<K, T> {
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<K, T> {
        WindowedStream {
            input: self,
            assigner,
            allowed_lateness: 0,
        }
    }
}

impl<K, T> WindowedStream<K, T>
where
    K: Key,
    T: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// Keep window state this long after a window fired; records arriving in that time fire
    /// it again with the updated contents.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness.as_millis() as Timestamp;
        self
    }

    /// Incremental: keeps one value per window, folded with `reduce` as records arrive
    /// (ReducingState); `function` receives it when the window fires.
    pub fn reduce<O, W>(
        self,
        uid: &str,
        reduce: impl Fn(T, T) -> T + Send + Sync + 'static,
        function: impl Fn() -> W + Send + Sync + 'static,
    ) -> WindowStreams<O, T>
    where
        O: Send + 'static,
        W: WindowFunction<K, T, O>,
    {
        let reduce = Arc::new(reduce);
        self.build(uid, move || {
            let reduce = reduce.clone();
            (
                ReduceContents {
                    reduce: Arc::new(move |a, b| reduce(a, b)),
                    state: None,
                },
                function(),
            )
        })
    }

    /// Incremental: keeps one accumulator per window (AggregatingState); `function` receives
    /// the aggregate's result. Session windows need `AggregateFunction::merge`.
    pub fn aggregate<A, O, W>(
        self,
        uid: &str,
        aggregate: A,
        function: impl Fn() -> W + Send + Sync + 'static,
    ) -> WindowStreams<O, T>
    where
        A: AggregateFunction<In = T> + Clone + Sync,
        O: Send + 'static,
        W: WindowFunction<K, A::Out, O>,
    {
        self.build(uid, move || {
            (
                AggregateContents {
                    function: aggregate.clone(),
                    state: None,
                },
                function(),
            )
        })
    }

    /// Keeps every record of a window (ListState); `function` receives them all, in arrival
    /// order.
    pub fn process<O, W>(
        self,
        uid: &str,
        function: impl Fn() -> W + Send + Sync + 'static,
    ) -> WindowStreams<O, T>
    where
        O: Send + 'static,
        W: WindowFunction<K, Vec<T>, O>,
    {
        self.build(uid, move || {
            (
                ListContents::<T> {
                    state: None,
                    _t: PhantomData,
                },
                function(),
            )
        })
    }

    fn build<C, W, O>(
        self,
        uid: &str,
        make: impl Fn() -> (C, W) + Send + Sync + 'static,
    ) -> WindowStreams<O, T>
    where
        C: Contents<T>,
        W: WindowFunction<K, C::Out, O>,
        O: Send + 'static,
    {
        let timestamp = self.input.timestamp.clone();
        let assigner = self.assigner;
        let allowed_lateness = self.allowed_lateness;
        let operator_name = uid.to_string();
        let output = self.input.keyed.process(uid, move || {
            let (contents, function) = make();
            WindowOperator {
                name: operator_name.clone(),
                timestamp: timestamp.clone(),
                assigner,
                allowed_lateness,
                contents,
                function,
                sessions: None,
                _k: PhantomData,
            }
        });
        split(output)
    }
}

/// How a window keeps its records: the three kinds of namespaced state.
trait Contents<T>: Send + 'static {
    type Out;
    fn open(&mut self, state: &mut StateRegistry) -> Result<()>;
    /// Returns whether the window had no contents before (its timers are not registered).
    fn add(&self, ctx: &mut KeyedContext<'_>, window: &[u8], value: T) -> Result<bool>;
    fn get(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<Option<Self::Out>>;
    fn merge(&self, ctx: &mut KeyedContext<'_>, from: &[u8], into: &[u8]) -> Result<()>;
    fn clear(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<()>;
}

const CONTENTS_STATE: &str = "window-contents";
const SESSIONS_STATE: &str = "window-sessions";

fn unopened() -> Error {
    Error::operator("window", "window state used before open")
}

struct ReduceContents<T> {
    reduce: Arc<dyn Fn(T, T) -> T + Send + Sync>,
    state: Option<ReducingState<T>>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Contents<T> for ReduceContents<T> {
    type Out = T;
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        let reduce = self.reduce.clone();
        self.state = Some(state.reducing_state(CONTENTS_STATE, move |a, b| reduce(a, b))?);
        Ok(())
    }
    fn add(&self, ctx: &mut KeyedContext<'_>, window: &[u8], value: T) -> Result<bool> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .add_in(ctx, window, value)
    }
    fn get(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<Option<T>> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .get_in(ctx, window)
    }
    fn merge(&self, ctx: &mut KeyedContext<'_>, from: &[u8], into: &[u8]) -> Result<()> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .merge_in(ctx, from, into)
    }
    fn clear(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<()> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .clear_in(ctx, window)
    }
}

struct AggregateContents<A: AggregateFunction> {
    function: A,
    state: Option<AggregatingState<A>>,
}

impl<A: AggregateFunction + Clone> Contents<A::In> for AggregateContents<A> {
    type Out = A::Out;
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.state = Some(state.aggregating_state(CONTENTS_STATE, self.function.clone())?);
        Ok(())
    }
    fn add(&self, ctx: &mut KeyedContext<'_>, window: &[u8], value: A::In) -> Result<bool> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .add_in(ctx, window, value)
    }
    fn get(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<Option<A::Out>> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .get_in(ctx, window)
    }
    fn merge(&self, ctx: &mut KeyedContext<'_>, from: &[u8], into: &[u8]) -> Result<()> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .merge_in(ctx, from, into)
    }
    fn clear(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<()> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .clear_in(ctx, window)
    }
}

struct ListContents<T> {
    state: Option<ListState<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Contents<T> for ListContents<T> {
    type Out = Vec<T>;
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.state = Some(state.list_state(CONTENTS_STATE)?);
        Ok(())
    }
    fn add(&self, ctx: &mut KeyedContext<'_>, window: &[u8], value: T) -> Result<bool> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .add_in(ctx, window, &value)
    }
    fn get(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<Option<Vec<T>>> {
        let values = self
            .state
            .as_ref()
            .ok_or_else(unopened)?
            .get_in(ctx, window)?;
        Ok((!values.is_empty()).then_some(values))
    }
    fn merge(&self, ctx: &mut KeyedContext<'_>, from: &[u8], into: &[u8]) -> Result<()> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .merge_in(ctx, from, into)
    }
    fn clear(&self, ctx: &mut KeyedContext<'_>, window: &[u8]) -> Result<()> {
        self.state
            .as_ref()
            .ok_or_else(unopened)?
            .clear_in(ctx, window)
    }
}

/// The window operator: a keyed function over records, firing on event-time timers.
struct WindowOperator<K, T, C, W> {
    name: String,
    timestamp: TimestampFn<T>,
    assigner: WindowAssigner,
    allowed_lateness: Timestamp,
    contents: C,
    function: W,
    /// Session windows only: the key's open sessions.
    sessions: Option<ValueState<Vec<TimeWindow>>>,
    _k: PhantomData<fn(K)>,
}

impl<K, T, C, W> WindowOperator<K, T, C, W>
where
    K: Key,
    T: Clone + Send + 'static,
    C: Contents<T>,
{
    fn cleanup_time(&self, window: &TimeWindow) -> Timestamp {
        window.max_timestamp().saturating_add(self.allowed_lateness)
    }

    fn is_window_late(&self, window: &TimeWindow, watermark: Timestamp) -> bool {
        self.cleanup_time(window) <= watermark
    }

    /// After a record was added: fires the window now when the watermark has already passed
    /// its end (a late record within the allowed lateness); for a `new_window`, registers its
    /// firing and cleanup timers (an existing window has them: registering once per window
    /// rather than per record keeps timer lookups off the hot path).
    fn trigger<O>(
        &mut self,
        key: &K,
        window: &TimeWindow,
        new_window: bool,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, WindowOutput<O, T>>,
    ) -> Result<()>
    where
        W: WindowFunction<K, C::Out, O>,
    {
        let namespace = window.namespace();
        let fire_now = window.max_timestamp() <= ctx.current_watermark();
        if new_window {
            ctx.register_timer(TimeDomain::EventTime, self.cleanup_time(window), &namespace);
            if !fire_now {
                ctx.register_timer(TimeDomain::EventTime, window.max_timestamp(), &namespace);
            }
        }
        if fire_now {
            self.fire(key, window, ctx, out)?;
        }
        Ok(())
    }

    fn fire<O>(
        &mut self,
        key: &K,
        window: &TimeWindow,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, WindowOutput<O, T>>,
    ) -> Result<()>
    where
        W: WindowFunction<K, C::Out, O>,
    {
        let Some(contents) = self.contents.get(ctx, &window.namespace())? else {
            return Ok(());
        };
        let mut results = ResultsOnly {
            next: &mut *out.next,
        };
        let mut emitter = Output {
            next: &mut results,
            emitted: &mut *out.emitted,
        };
        self.function
            .apply(key, window, contents, ctx, &mut emitter)
    }

    fn late<O>(&self, value: T, out: &mut Emitter<'_, WindowOutput<O, T>>) -> Result<()> {
        out.emit(WindowOutput::Late(value))
    }

    /// Session windows: merge the record's window with the sessions it touches; the merged
    /// window takes over their contents and timers.
    fn process_merging<O>(
        &mut self,
        key: &K,
        value: T,
        timestamp: Timestamp,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, WindowOutput<O, T>>,
    ) -> Result<()>
    where
        W: WindowFunction<K, C::Out, O>,
    {
        let sessions_state = self.sessions.as_ref().ok_or_else(unopened)?;
        let mut sessions = sessions_state.get(ctx)?.unwrap_or_default();
        let watermark = ctx.current_watermark();
        let mut merged = self.assigner.assign_windows(timestamp)[0];
        let (touching, mut others): (Vec<_>, Vec<_>) =
            sessions.drain(..).partition(|s| s.intersects(&merged));
        for session in &touching {
            merged = merged.cover(session);
        }
        if self.is_window_late(&merged, watermark) {
            // Nothing changes: the record is late for every session it could join.
            others.extend(touching);
            others.sort_unstable();
            sessions_state.set(ctx, &others)?;
            return self.late(value, out);
        }
        let target = merged.namespace();
        for session in touching.iter().filter(|s| **s != merged) {
            let namespace = session.namespace();
            self.contents.merge(ctx, &namespace, &target)?;
            ctx.delete_timer(TimeDomain::EventTime, session.max_timestamp(), &namespace)?;
            ctx.delete_timer(
                TimeDomain::EventTime,
                self.cleanup_time(session),
                &namespace,
            )?;
        }
        self.contents.add(ctx, &target, value)?;
        let new_window = !touching.contains(&merged);
        others.push(merged);
        others.sort_unstable();
        sessions_state.set(ctx, &others)?;
        self.trigger(key, &merged, new_window, ctx, out)
    }
}

impl<K, T, C, W, O> KeyedProcessFunction<K, T, WindowOutput<O, T>> for WindowOperator<K, T, C, W>
where
    K: Key,
    T: Serialize + DeserializeOwned + Clone + Send + 'static,
    C: Contents<T>,
    W: WindowFunction<K, C::Out, O>,
    O: Send + 'static,
{
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.contents.open(state)?;
        if self.assigner.is_merging() {
            self.sessions = Some(state.value_state(SESSIONS_STATE)?);
        }
        self.function.open(state)
    }

    fn process(
        &mut self,
        key: &K,
        value: T,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, WindowOutput<O, T>>,
    ) -> Result<()> {
        let timestamp = (self.timestamp)(&value);
        if self.assigner.is_merging() {
            return self.process_merging(key, value, timestamp, ctx, out);
        }
        let watermark = ctx.current_watermark();
        let windows: Vec<TimeWindow> = self
            .assigner
            .assign_windows(timestamp)
            .into_iter()
            .filter(|w| !self.is_window_late(w, watermark))
            .collect();
        let Some((last, rest)) = windows.split_last() else {
            return self.late(value, out);
        };
        for window in rest {
            let new_window = self.contents.add(ctx, &window.namespace(), value.clone())?;
            self.trigger(key, window, new_window, ctx, out)?;
        }
        let new_window = self.contents.add(ctx, &last.namespace(), value)?;
        self.trigger(key, last, new_window, ctx, out)
    }

    fn on_timer(
        &mut self,
        key: &K,
        timer: &Timer,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, WindowOutput<O, T>>,
    ) -> Result<()> {
        let window = TimeWindow::from_namespace(&timer.namespace)
            .ok_or_else(|| Error::operator(&self.name, "timer without a window namespace"))?;
        if timer.timestamp == window.max_timestamp() {
            self.fire(key, &window, ctx, out)?;
        }
        if timer.timestamp == self.cleanup_time(&window) {
            self.contents.clear(ctx, &window.namespace())?;
            if let Some(sessions_state) = &self.sessions {
                let mut sessions = sessions_state.get(ctx)?.unwrap_or_default();
                sessions.retain(|s| *s != window);
                if sessions.is_empty() {
                    sessions_state.clear(ctx)?;
                } else {
                    sessions_state.set(ctx, &sessions)?;
                }
            }
        }
        Ok(())
    }
}

/// Wraps a window function's output as results.
struct ResultsOnly<'a, O, T> {
    next: &'a mut dyn Downstream<WindowOutput<O, T>>,
}

impl<O, T> Downstream<O> for ResultsOnly<'_, O, T> {
    fn collect(&mut self, item: O) -> Result<()> {
        self.next.collect(WindowOutput::Result(item))
    }
}

/// Late collectors per subtask of one attempt, filled when the late stream is built.
type LateSlot<T> = Arc<Mutex<Vec<Option<Box<dyn Collector<T>>>>>>;

/// Splits a window operator's output into its results and its late records. Both chains run
/// in the window operator's task; the late one is wired in when that task opens, so the two
/// graphs may be joined in either order.
fn split<O: Send + 'static, T: Send + 'static>(
    stream: Stream<WindowOutput<O, T>>,
) -> WindowStreams<O, T> {
    let slot: LateSlot<T> = Arc::new(Mutex::new(Vec::new()));
    let filler = slot.clone();
    let late = Stream {
        env: stream.env.clone(),
        build: Arc::new(move |_graph, tails: Vec<Box<dyn Collector<T>>>| {
            *filler.lock().unwrap_or_else(|e| e.into_inner()) =
                tails.into_iter().map(Some).collect();
            Ok(())
        }),
    };
    let upstream = stream.build;
    let results = Stream {
        env: stream.env,
        build: Arc::new(move |graph, tails: Vec<Box<dyn Collector<O>>>| {
            let splits = tails
                .into_iter()
                .map(|results| {
                    Box::new(SplitOp {
                        results,
                        late: None,
                        slot: slot.clone(),
                    }) as Box<dyn Collector<WindowOutput<O, T>>>
                })
                .collect();
            upstream(graph, splits)
        }),
    };
    WindowStreams { results, late }
}

struct SplitOp<O, T> {
    results: Box<dyn Collector<O>>,
    late: Option<Box<dyn Collector<T>>>,
    slot: LateSlot<T>,
}

impl<O: Send + 'static, T: Send + 'static> Downstream<WindowOutput<O, T>> for SplitOp<O, T> {
    fn collect(&mut self, item: WindowOutput<O, T>) -> Result<()> {
        match item {
            WindowOutput::Result(result) => self.results.collect(result),
            WindowOutput::Late(record) => match &mut self.late {
                Some(late) => late.collect(record),
                None => Ok(()),
            },
        }
    }
}

impl<O: Send + 'static, T: Send + 'static> Collector<WindowOutput<O, T>> for SplitOp<O, T> {
    fn open(&mut self, env: &TaskEnv) -> Result<()> {
        self.late = self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(env.id.subtask as usize)
            .and_then(Option::take);
        if let Some(late) = &mut self.late {
            late.open(env)?;
        }
        self.results.open(env)
    }

    fn on_barrier(&mut self, barrier: &Barrier, snapshot: &mut TaskSnapshot) -> Result<()> {
        if let Some(late) = &mut self.late {
            late.on_barrier(barrier, snapshot)?;
        }
        self.results.on_barrier(barrier, snapshot)
    }

    fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        if let Some(late) = &mut self.late {
            late.on_checkpoint_complete(checkpoint_id)?;
        }
        self.results.on_checkpoint_complete(checkpoint_id)
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(late) = &mut self.late {
            late.flush()?;
        }
        self.results.flush()
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(late) = &mut self.late {
            late.finish()?;
        }
        self.results.finish()
    }

    fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
        if let Some(late) = &mut self.late {
            late.on_watermark(watermark)?;
        }
        self.results.on_watermark(watermark)
    }
}

#[cfg(test)]
mod harness_tests {
    //! The window operator driven record by record and watermark by watermark, as a keyed
    //! task drives it: exact, deterministic results for out-of-order input.
    use super::*;
    use crate::runtime::event_time;
    use crate::runtime::watermark::WatermarkTracker;
    use crate::spec::StateBackendKind;
    use crate::state::KeyedStateBackend;
    use crate::state::backend::test_on_both_backends;
    use crate::state::backend::test_support::open_backend;
    use crate::state::keygroups::{KeyGroupRange, key_group_for_key_bytes};

    /// (key, event time, id)
    type Ev = (u64, i64, u32);
    type Out = WindowOutput<(u64, i64, i64, Vec<u32>), Ev>;

    struct Recorder(Arc<Mutex<Vec<Out>>>);

    impl Downstream<Out> for Recorder {
        fn collect(&mut self, item: Out) -> Result<()> {
            self.0.lock().expect("lock").push(item);
            Ok(())
        }
    }

    impl Collector<Out> for Recorder {
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
    }

    struct Harness {
        _dir: tempfile::TempDir,
        backend: KeyedStateBackend,
        operator: Box<dyn KeyedProcessFunction<u64, Ev, Out>>,
        tracker: WatermarkTracker,
        chain: Recorder,
        seen: Arc<Mutex<Vec<Out>>>,
    }

    fn ids_of(key: &u64, w: &TimeWindow, events: Vec<Ev>) -> (u64, i64, i64, Vec<u32>) {
        let mut ids: Vec<u32> = events.iter().map(|e| e.2).collect();
        ids.sort_unstable();
        (*key, w.start, w.end, ids)
    }

    impl Harness {
        /// Windows that keep every element (ListState).
        fn listing(kind: StateBackendKind, assigner: WindowAssigner, lateness: i64) -> Self {
            let operator = WindowOperator {
                name: "windows".into(),
                timestamp: Arc::new(|e: &Ev| e.1),
                assigner,
                allowed_lateness: lateness,
                contents: ListContents::<Ev> {
                    state: None,
                    _t: PhantomData,
                },
                function: MapWindow(ids_of),
                sessions: None,
                _k: PhantomData,
            };
            Self::with(kind, Box::new(operator))
        }

        /// Windows that keep one reduced element: the ids are summed into the id field.
        fn reducing(kind: StateBackendKind, assigner: WindowAssigner) -> Self {
            let operator = WindowOperator {
                name: "windows".into(),
                timestamp: Arc::new(|e: &Ev| e.1),
                assigner,
                allowed_lateness: 0,
                contents: ReduceContents::<Ev> {
                    reduce: Arc::new(|a: Ev, b: Ev| (a.0, a.1.max(b.1), a.2 + b.2)),
                    state: None,
                },
                function: MapWindow(|key: &u64, w: &TimeWindow, e: Ev| {
                    (*key, w.start, w.end, vec![e.2])
                }),
                sessions: None,
                _k: PhantomData,
            };
            Self::with(kind, Box::new(operator))
        }

        fn with(
            kind: StateBackendKind,
            mut operator: Box<dyn KeyedProcessFunction<u64, Ev, Out>>,
        ) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let backend = open_backend(
                kind,
                &dir.path().join("db"),
                KeyGroupRange { start: 0, end: 128 },
                1 << 20,
            );
            let mut registry = StateRegistry::new("windows");
            operator.open(&mut registry).expect("open operator");
            let seen = Arc::new(Mutex::new(Vec::new()));
            Harness {
                _dir: dir,
                backend,
                operator,
                tracker: WatermarkTracker::new(1),
                chain: Recorder(seen.clone()),
                seen,
            }
        }

        fn element(&mut self, key: u64, time: i64, id: u32) {
            let bytes = key.to_be_bytes();
            self.backend
                .set_current_key(key_group_for_key_bytes(&bytes, 128), &bytes);
            let mut emitted = 0;
            let mut ctx = KeyedContext {
                backend: &mut self.backend,
            };
            let mut out = Output {
                next: &mut self.chain,
                emitted: &mut emitted,
            };
            self.operator
                .process(&key, (key, time, id), &mut ctx, &mut out)
                .expect("process");
            event_time::after_call(&mut self.backend, &key).expect("timers");
        }

        fn watermark(&mut self, time: i64) {
            let mut emitted = 0;
            event_time::on_watermark(
                &mut self.tracker,
                0,
                Watermark::At(time),
                &mut self.backend,
                self.operator.as_mut(),
                &mut self.chain,
                &mut emitted,
            )
            .expect("watermark");
        }

        fn take(&mut self) -> Vec<Out> {
            std::mem::take(&mut *self.seen.lock().expect("lock"))
        }
    }

    fn result(key: u64, start: i64, end: i64, ids: &[u32]) -> String {
        format!("{:?}", Out::Result((key, start, end, ids.to_vec())))
    }

    fn late(key: u64, time: i64, id: u32) -> String {
        format!("{:?}", Out::Late((key, time, id)))
    }

    fn shown(outputs: Vec<Out>) -> Vec<String> {
        outputs.iter().map(|o| format!("{o:?}")).collect()
    }

    test_on_both_backends! {
    fn tumbling_windows_fire_at_the_watermark_refire_within_lateness_then_drop_late_records(kind) {
        let mut h = Harness::listing(kind, WindowAssigner::tumbling(Duration::from_millis(10)), 5);
        h.element(1, 1, 1);
        h.element(1, 12, 2);
        h.element(1, 5, 3); // out of order, not late
        h.element(2, 3, 10);
        h.watermark(8);
        assert!(h.take().is_empty(), "nothing closes before 9");
        h.watermark(9);
        assert_eq!(
            shown(h.take()),
            // Timers of one time fire in key-group order: deterministic, key 2 first here.
            vec![result(2, 0, 10, &[10]), result(1, 0, 10, &[1, 3])]
        );
        h.element(1, 7, 4); // late but within the allowed lateness: fires again, updated
        assert_eq!(shown(h.take()), vec![result(1, 0, 10, &[1, 3, 4])]);
        h.watermark(14); // 9 + 5: state of [0, 10) is dropped
        assert!(h.take().is_empty());
        h.element(1, 8, 5); // beyond the lateness: the late stream
        h.element(1, 14, 6);
        assert_eq!(shown(h.take()), vec![late(1, 8, 5)]);
        h.watermark(i64::MAX);
        assert_eq!(shown(h.take()), vec![result(1, 10, 20, &[2, 6])]);
        assert_eq!(
            h.backend.timers.len(TimeDomain::EventTime),
            0,
            "no timer left behind"
        );
    }
    }

    test_on_both_backends! {
    fn sliding_windows_fire_each_overlapping_window_in_time_order(kind) {
        let mut h = Harness::reducing(kind, WindowAssigner::sliding(
            Duration::from_millis(10),
            Duration::from_millis(5),
        ));
        h.element(1, 7, 2);
        h.element(1, 3, 1);
        h.element(1, 12, 4);
        h.watermark(9);
        assert_eq!(
            shown(h.take()),
            vec![result(1, -5, 5, &[1]), result(1, 0, 10, &[3])],
            "ids are summed by the reduce function"
        );
        h.element(1, 4, 100); // both of its windows have fired: late
        h.element(1, 9, 8); // [0, 10) has fired, [5, 15) has not: not late
        assert_eq!(shown(h.take()), vec![late(1, 4, 100)]);
        h.watermark(i64::MAX);
        assert_eq!(
            shown(h.take()),
            vec![result(1, 5, 15, &[14]), result(1, 10, 20, &[4])]
        );
    }
    }

    test_on_both_backends! {
    fn session_windows_merge_when_a_record_bridges_them(kind) {
        let mut h = Harness::listing(kind, WindowAssigner::session(Duration::from_millis(5)), 0);
        h.element(1, 1, 1);
        h.element(1, 4, 2); // [1, 9)
        h.element(1, 20, 3); // [20, 25)
        h.element(1, 14, 4); // [14, 19): does not touch [20, 25)
        h.element(2, 2, 50);
        h.watermark(8);
        assert_eq!(
            shown(h.take()),
            vec![result(2, 2, 7, &[50]), result(1, 1, 9, &[1, 2])]
        );
        h.element(1, 17, 5); // [17, 22) bridges [14, 19) and [20, 25)
        h.element(1, 2, 6); // its session is closed and gone: late
        assert_eq!(shown(h.take()), vec![late(1, 2, 6)]);
        h.watermark(23);
        assert!(h.take().is_empty(), "the merged session ends at 25");
        h.watermark(24);
        assert_eq!(shown(h.take()), vec![result(1, 14, 25, &[3, 4, 5])]);
        assert_eq!(h.backend.timers.len(TimeDomain::EventTime), 0);
    }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: i64, end: i64) -> TimeWindow {
        TimeWindow::new(start, end)
    }

    #[test]
    fn tumbling_windows_align_to_the_epoch_and_offset() {
        let a = WindowAssigner::tumbling(Duration::from_secs(60));
        assert_eq!(a.assign_windows(0), vec![w(0, 60_000)]);
        assert_eq!(a.assign_windows(59_999), vec![w(0, 60_000)]);
        assert_eq!(a.assign_windows(60_000), vec![w(60_000, 120_000)]);
        assert_eq!(a.assign_windows(-1), vec![w(-60_000, 0)]);
        let shifted = a.with_offset(Duration::from_secs(15));
        assert_eq!(shifted.assign_windows(10_000), vec![w(-45_000, 15_000)]);
    }

    #[test]
    fn sliding_windows_hold_a_record_size_over_slide_times() {
        let a = WindowAssigner::sliding(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(
            a.assign_windows(12_000),
            vec![w(10_000, 20_000), w(5_000, 15_000)]
        );
        assert_eq!(
            a.assign_windows(10_000),
            vec![w(10_000, 20_000), w(5_000, 15_000)]
        );
        let thirds = WindowAssigner::sliding(Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(thirds.assign_windows(2_500).len(), 3);
    }

    #[test]
    fn session_windows_start_at_the_record_and_merge_when_touching() {
        let a = WindowAssigner::session(Duration::from_secs(5));
        assert_eq!(a.assign_windows(1_000), vec![w(1_000, 6_000)]);
        assert!(w(1_000, 6_000).intersects(&w(6_000, 11_000)));
        assert!(!w(1_000, 6_000).intersects(&w(6_001, 11_001)));
        assert_eq!(w(1_000, 6_000).cover(&w(4_000, 9_000)), w(1_000, 9_000));
    }

    #[test]
    fn window_namespaces_sort_like_windows_and_round_trip() {
        let windows = [w(-5, 0), w(-5, 3), w(0, 10), w(7, 8)];
        for pair in windows.windows(2) {
            assert!(pair[0].namespace() < pair[1].namespace());
        }
        for window in windows {
            assert_eq!(
                TimeWindow::from_namespace(&window.namespace()),
                Some(window)
            );
        }
    }
}
