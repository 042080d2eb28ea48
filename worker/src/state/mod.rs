//! Keyed state (RocksDB behind a write-back cache, split into key groups) and operator state.

pub mod backend;
pub mod handles;
pub mod keygroups;
pub mod operator;
pub mod snapshot;
pub mod timers;

pub use backend::KeyedStateBackend;
pub use handles::{
    AggregateFunction, AggregatingState, KeyedContext, ListState, MapState, ReducingState,
    StateRegistry, ValueState,
};
pub use keygroups::KeyGroupRange;
pub use operator::{OperatorStateSnapshot, Redistribution};
pub use timers::{TimeDomain, Timer};
