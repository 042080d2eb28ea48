//! Keyed state (RocksDB behind a write-back cache, or a copy-on-write hash index on the heap;
//! split into key groups), operator state and broadcast state.
//! Time to live ([`StateTtl`]) sits above the backend, in the handles' value encoding.

// The backend's machinery (RocksDB, key-group arithmetic, snapshot files) is the runtime's;
// job authors reach state through the handles and the names re-exported below.
pub(crate) mod backend;
pub mod broadcast;
pub mod handles;
pub(crate) mod heap;
pub(crate) mod keygroups;
pub mod operator;
pub(crate) mod snapshot;
pub mod timers;
pub(crate) mod ttl;

pub use backend::KeyedStateBackend;
pub use broadcast::{BroadcastMapState, BroadcastStates};
pub use handles::{
    AggregateFunction, AggregatingState, KeyedContext, ListState, MapState, ReducingState,
    StateRegistry, ValueState, WithTtl,
};
pub use keygroups::KeyGroupRange;
pub use operator::{OperatorStateSnapshot, Redistribution};
pub use timers::{TimeDomain, Timer};
pub use ttl::{StateTtl, UpdateType, Visibility};
