//! Functions connected to a broadcast stream, as keyed operators: the keyed task runs them
//! over their main inputs and their broadcast inputs, and checkpoints their broadcast state
//! with the keyed state. A non-keyed function runs the same way, over records of the unit key
//! (see `shuffle::ForwardWriter`), and never sees the keyed context.

use std::marker::PhantomData;

use super::task::KeyedOperator;
use crate::error::Result;
use crate::functions::{
    BroadcastProcessFunction, KeyedBroadcastProcessFunction, KeyedProcessFunction, Output,
};
use crate::state::{BroadcastStates, KeyedContext, StateRegistry, Timer};

/// A keyed function with broadcast state, holding that state.
pub struct KeyedWithBroadcast<F, B> {
    function: F,
    states: BroadcastStates,
    _broadcast: PhantomData<fn(B)>,
}

impl<F, B> KeyedWithBroadcast<F, B> {
    pub fn new(function: F) -> Self {
        KeyedWithBroadcast {
            function,
            states: BroadcastStates::default(),
            _broadcast: PhantomData,
        }
    }
}

impl<K, T, B, O, F> KeyedProcessFunction<K, T, O> for KeyedWithBroadcast<F, B>
where
    F: KeyedBroadcastProcessFunction<K, T, B, O>,
    B: 'static,
{
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.function.open(state)
    }

    fn process(
        &mut self,
        key: &K,
        value: T,
        ctx: &mut KeyedContext<'_>,
        out: &mut Output<'_, O>,
    ) -> Result<()> {
        self.function
            .process_element(key, value, &self.states, ctx, out)
    }

    fn on_timer(
        &mut self,
        key: &K,
        timer: &Timer,
        ctx: &mut KeyedContext<'_>,
        out: &mut Output<'_, O>,
    ) -> Result<()> {
        self.function.on_timer(key, timer, &self.states, ctx, out)
    }
}

impl<K, T, B, O, F> KeyedOperator<K, T, B, O> for KeyedWithBroadcast<F, B>
where
    F: KeyedBroadcastProcessFunction<K, T, B, O>,
    B: 'static,
{
    fn process_broadcast(&mut self, value: B, out: &mut Output<'_, O>) -> Result<()> {
        self.function
            .process_broadcast_element(value, &mut self.states, out)
    }

    fn broadcast_states(&mut self) -> Option<&mut BroadcastStates> {
        Some(&mut self.states)
    }
}

/// A non-keyed function with broadcast state, holding that state.
pub struct NonKeyedWithBroadcast<F, B> {
    function: F,
    states: BroadcastStates,
    _broadcast: PhantomData<fn(B)>,
}

impl<F, B> NonKeyedWithBroadcast<F, B> {
    pub fn new(function: F) -> Self {
        NonKeyedWithBroadcast {
            function,
            states: BroadcastStates::default(),
            _broadcast: PhantomData,
        }
    }
}

impl<T, B, O, F> KeyedProcessFunction<(), T, O> for NonKeyedWithBroadcast<F, B>
where
    F: BroadcastProcessFunction<T, B, O>,
    B: 'static,
{
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.function.open(state)
    }

    fn process(
        &mut self,
        _key: &(),
        value: T,
        _ctx: &mut KeyedContext<'_>,
        out: &mut Output<'_, O>,
    ) -> Result<()> {
        self.function.process_element(value, &self.states, out)
    }
}

impl<T, B, O, F> KeyedOperator<(), T, B, O> for NonKeyedWithBroadcast<F, B>
where
    F: BroadcastProcessFunction<T, B, O>,
    B: 'static,
{
    fn process_broadcast(&mut self, value: B, out: &mut Output<'_, O>) -> Result<()> {
        self.function
            .process_broadcast_element(value, &mut self.states, out)
    }

    fn broadcast_states(&mut self) -> Option<&mut BroadcastStates> {
        Some(&mut self.states)
    }
}
