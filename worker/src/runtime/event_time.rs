//! Event time inside a keyed task: applies watermarks from its inputs and fires the timers
//! they make due, then forwards the watermark, so results of a window always precede the
//! watermark that closed it.

use super::chain::{Collector, Output};
use super::watermark::{Timestamp, Watermark, WatermarkTracker};
use crate::api::{Key, KeyedProcessFunction};
use crate::error::{Error, Result};
use crate::state::timers::{attach_staged, delete_fired, processing_time_now};
use crate::state::{KeyedContext, KeyedStateBackend, TimeDomain, Timer};

/// Stores the timers the last user call registered for `key`.
pub(crate) fn after_call<K: Key>(backend: &mut KeyedStateBackend, key: &K) -> Result<()> {
    if !backend.timers.has_staged() {
        return Ok(());
    }
    let payload = postcard::to_allocvec(key).map_err(|e| Error::codec("timer key", e))?;
    attach_staged(backend, &payload)
}

/// Fires, in time order, every timer of `domain` due at `time`, including ones registered
/// by the timers it fires.
pub(crate) fn fire_timers<K: Key, T: 'static, O: 'static>(
    domain: TimeDomain,
    time: Timestamp,
    backend: &mut KeyedStateBackend,
    function: &mut dyn KeyedProcessFunction<K, T, O>,
    chain: &mut dyn Collector<O>,
    emitted: &mut u64,
) -> Result<()> {
    while let Some((timer, payload)) = backend.timers.pop_due(domain, time) {
        delete_fired(backend, domain, &timer)?;
        let key: K = postcard::from_bytes(&payload).map_err(|e| Error::codec("timer key", e))?;
        backend.set_current_key(timer.key_group, &timer.key);
        let fired = Timer {
            timestamp: timer.time,
            domain,
            namespace: timer.namespace,
        };
        let mut ctx = KeyedContext {
            backend: &mut *backend,
        };
        let mut out = Output {
            next: &mut *chain,
            emitted: &mut *emitted,
        };
        function.on_timer(&key, &fired, &mut ctx, &mut out)?;
        if backend.timers.has_staged() {
            attach_staged(backend, &payload)?;
        }
    }
    Ok(())
}

/// A watermark from input `input`: advance event time, fire what became due, forward.
pub(crate) fn on_watermark<K: Key, T: 'static, O: 'static>(
    tracker: &mut WatermarkTracker,
    input: usize,
    watermark: Watermark,
    backend: &mut KeyedStateBackend,
    function: &mut dyn KeyedProcessFunction<K, T, O>,
    chain: &mut dyn Collector<O>,
    emitted: &mut u64,
) -> Result<()> {
    let Some(forward) = tracker.on_watermark(input, watermark) else {
        return Ok(());
    };
    if let Watermark::At(time) = forward {
        backend.timers.watermark = time;
        fire_timers(
            TimeDomain::EventTime,
            time,
            backend,
            function,
            chain,
            emitted,
        )?;
    }
    chain.on_watermark(forward)
}

/// Fires the processing-time timers the wall clock has reached.
pub(crate) fn fire_processing_timers<K: Key, T: 'static, O: 'static>(
    backend: &mut KeyedStateBackend,
    function: &mut dyn KeyedProcessFunction<K, T, O>,
    chain: &mut dyn Collector<O>,
    emitted: &mut u64,
) -> Result<()> {
    match backend.timers.next_due(TimeDomain::ProcessingTime) {
        Some(next) if next <= processing_time_now() => fire_timers(
            TimeDomain::ProcessingTime,
            processing_time_now(),
            backend,
            function,
            chain,
            emitted,
        ),
        _ => Ok(()),
    }
}
