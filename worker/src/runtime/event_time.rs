//! Event time inside a keyed task: applies watermarks from its inputs and fires the timers
//! they make due, then forwards the watermark, so results of a window always precede the
//! watermark that closed it.

use super::chain::{Collector, Output};
use super::watermark::{Timestamp, Watermark, WatermarkTracker};
use crate::error::{Error, Result};
use crate::functions::KeyedProcessFunction;
use crate::state::timers::{attach_staged, delete_fired, processing_time_now};
use crate::state::{KeyedContext, KeyedStateBackend, TimeDomain, Timer};
use crate::types::Key;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::chain::{Collector, Downstream};
    use crate::runtime::{Barrier, TaskEnv, TaskSnapshot};
    use crate::state::StateRegistry;
    use crate::state::backend::test_on_both_backends;
    use crate::state::backend::test_support::open_backend;
    use crate::state::keygroups::{KeyGroupRange, key_group_for_key_bytes};

    /// Registers one timer of each domain per record; emits `(key, domain, time)` per firing.
    struct Reminder;

    impl KeyedProcessFunction<u64, i64, (u64, TimeDomain, i64)> for Reminder {
        fn open(&mut self, _state: &mut StateRegistry) -> Result<()> {
            Ok(())
        }
        fn process(
            &mut self,
            _key: &u64,
            time: i64,
            ctx: &mut KeyedContext<'_>,
            _out: &mut Output<'_, (u64, TimeDomain, i64)>,
        ) -> Result<()> {
            ctx.register_event_time_timer(time);
            // Long past on the wall clock: due at the next check.
            ctx.register_processing_time_timer(1_000);
            Ok(())
        }
        fn on_timer(
            &mut self,
            key: &u64,
            timer: &Timer,
            _ctx: &mut KeyedContext<'_>,
            out: &mut Output<'_, (u64, TimeDomain, i64)>,
        ) -> Result<()> {
            let time = match timer.domain {
                TimeDomain::EventTime => timer.timestamp,
                TimeDomain::ProcessingTime => timer.timestamp - 1_000,
            };
            out.emit((*key, timer.domain, time))
        }
    }

    #[derive(Default)]
    struct Sink(Vec<(u64, TimeDomain, i64)>, Vec<Watermark>);

    impl Downstream<(u64, TimeDomain, i64)> for Sink {
        fn collect(&mut self, item: (u64, TimeDomain, i64)) -> Result<()> {
            self.0.push(item);
            Ok(())
        }
    }

    impl Collector<(u64, TimeDomain, i64)> for Sink {
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
            self.1.push(watermark);
            Ok(())
        }
    }

    test_on_both_backends! {
    fn keyed_function_timers_fire_once_each_before_the_watermark_moves_on(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open_backend(
            kind,
            &dir.path().join("db"),
            KeyGroupRange { start: 0, end: 128 },
            1 << 20,
        );
        let mut function = Reminder;
        let mut sink = Sink::default();
        let mut emitted = 0;
        for (key, time) in [(1u64, 30i64), (2, 10), (1, 30)] {
            let bytes = key.to_be_bytes();
            backend.set_current_key(key_group_for_key_bytes(&bytes, 128), &bytes);
            let mut ctx = KeyedContext {
                backend: &mut backend,
            };
            let mut out = Output {
                next: &mut sink,
                emitted: &mut emitted,
            };
            function
                .process(&key, time, &mut ctx, &mut out)
                .expect("process");
            after_call(&mut backend, &key).expect("attach");
        }
        fire_processing_timers(&mut backend, &mut function, &mut sink, &mut emitted)
            .expect("processing timers");
        assert_eq!(
            sink.0,
            // Equal times fire in key-group order: key 2's group sorts first.
            vec![
                (2, TimeDomain::ProcessingTime, 0),
                (1, TimeDomain::ProcessingTime, 0)
            ],
            "one per key: key 1 registered the same timer twice"
        );
        sink.0.clear();
        let mut tracker = WatermarkTracker::new(2);
        for (input, at) in [(0, 40), (1, 20), (1, Timestamp::MAX), (0, Timestamp::MAX)] {
            on_watermark(
                &mut tracker,
                input,
                Watermark::At(at),
                &mut backend,
                &mut function,
                &mut sink,
                &mut emitted,
            )
            .expect("watermark");
        }
        assert_eq!(
            sink.0,
            vec![
                (2, TimeDomain::EventTime, 10),
                (1, TimeDomain::EventTime, 30)
            ]
        );
        assert_eq!(
            sink.1,
            vec![Watermark::At(20), Watermark::At(40), Watermark::MAX],
            "the minimum over both inputs, forwarded after its timers"
        );
    }
    }
}
