//! Operators chained inside one task: each pushes its output straight into the next, so a
//! record crosses no queue until a shuffle. Every hook has a default that forwards, so an
//! operator implements only what it needs.

use std::marker::PhantomData;
use std::sync::Arc;

use super::watermark::Watermark;
use super::{Barrier, TaskEnv, TaskSnapshot};
use crate::error::Result;
pub use crate::functions::{Downstream, Output};

/// The downstream end of a chain link: where records go ([`Downstream::collect`]), plus the
/// hooks of the task's lifecycle and checkpoints.
pub trait Collector<T>: Downstream<T> + Send {
    fn open(&mut self, env: &TaskEnv) -> Result<()>;
    /// Called with the barrier between the records before and after it. Snapshot, then forward.
    fn on_barrier(&mut self, barrier: &Barrier, snapshot: &mut TaskSnapshot) -> Result<()>;
    fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()>;
    /// Push out partially filled buffers (latency bound).
    fn flush(&mut self) -> Result<()>;
    /// End of input: everything upstream is done.
    fn finish(&mut self) -> Result<()>;
    /// Event time advanced (or the input went idle). Operators that forward must pass it on;
    /// the default drops it, which is right for sinks.
    fn on_watermark(&mut self, _watermark: Watermark) -> Result<()> {
        Ok(())
    }
    /// The source reads exactly these splits now (see `SourceReader::splits`). Stateless links
    /// pass it on; the watermark generator uses it; everything else ignores it.
    fn on_splits(&mut self, _splits: &[u64]) -> Result<()> {
        Ok(())
    }
}

/// Implements the forwarding hooks for a stateless link whose downstream is `self.next`.
macro_rules! forward_hooks {
    () => {
        fn open(&mut self, env: &TaskEnv) -> Result<()> {
            self.next.open(env)
        }
        fn on_barrier(&mut self, barrier: &Barrier, snapshot: &mut TaskSnapshot) -> Result<()> {
            self.next.on_barrier(barrier, snapshot)
        }
        fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
            self.next.on_checkpoint_complete(checkpoint_id)
        }
        fn flush(&mut self) -> Result<()> {
            self.next.flush()
        }
        fn finish(&mut self) -> Result<()> {
            self.next.finish()
        }
        fn on_watermark(&mut self, watermark: Watermark) -> Result<()> {
            self.next.on_watermark(watermark)
        }
        fn on_splits(&mut self, splits: &[u64]) -> Result<()> {
            self.next.on_splits(splits)
        }
    };
}

pub struct MapOp<T, U, F> {
    pub f: Arc<F>,
    pub next: Box<dyn Collector<U>>,
    pub _t: PhantomData<fn(T)>,
}

impl<T, U, F> Downstream<T> for MapOp<T, U, F>
where
    F: Fn(T) -> U + Send + Sync,
    U: 'static,
{
    fn collect(&mut self, item: T) -> Result<()> {
        self.next.collect((self.f)(item))
    }
}

impl<T, U, F> Collector<T> for MapOp<T, U, F>
where
    F: Fn(T) -> U + Send + Sync,
    U: 'static,
{
    forward_hooks!();
}

pub struct FilterOp<T, F> {
    pub f: Arc<F>,
    pub next: Box<dyn Collector<T>>,
}

impl<T, F> Downstream<T> for FilterOp<T, F>
where
    F: Fn(&T) -> bool + Send + Sync,
    T: 'static,
{
    fn collect(&mut self, item: T) -> Result<()> {
        if (self.f)(&item) {
            self.next.collect(item)?;
        }
        Ok(())
    }
}

impl<T, F> Collector<T> for FilterOp<T, F>
where
    F: Fn(&T) -> bool + Send + Sync,
    T: 'static,
{
    forward_hooks!();
}

pub struct FlatMapOp<T, U, F> {
    pub f: Arc<F>,
    pub next: Box<dyn Collector<U>>,
    pub _t: PhantomData<fn(T)>,
}

impl<T, U, F, I> Downstream<T> for FlatMapOp<T, U, F>
where
    F: Fn(T) -> I + Send + Sync,
    I: IntoIterator<Item = U>,
    U: 'static,
{
    fn collect(&mut self, item: T) -> Result<()> {
        for out in (self.f)(item) {
            self.next.collect(out)?;
        }
        Ok(())
    }
}

impl<T, U, F, I> Collector<T> for FlatMapOp<T, U, F>
where
    F: Fn(T) -> I + Send + Sync,
    I: IntoIterator<Item = U>,
    U: 'static,
{
    forward_hooks!();
}
