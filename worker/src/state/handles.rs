//! Typed keyed-state handles, as job authors use them: declared once in `open`, then read and
//! written for the current key in `process`. Values are encoded with postcard.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::{KeyedStateBackend, StateId};
use super::broadcast::BroadcastMapState;
use super::ttl::{self, Layout, StateFormat, StateTtl, Ttl, TtlClock, TtlStates};
use crate::error::{Error, Result};
use crate::types::CachedFiles;

/// What `process` gets: the state of the current key.
pub struct KeyedContext<'a> {
    pub(crate) backend: &'a mut KeyedStateBackend,
}

/// What `open` gets: registers state, and opens the files of the distributed cache. Names
/// are per operator; ids are derived from names so a restored snapshot finds its state
/// without a separate mapping.
pub struct StateRegistry {
    operator: String,
    names: Vec<(StateId, String, StateFormat)>,
    ttl_states: TtlStates,
    clock: TtlClock,
    cached_files: CachedFiles,
    /// Broadcast states by name, in registration order.
    broadcast: Vec<Arc<str>>,
}

impl StateRegistry {
    pub(crate) fn new(operator: &str) -> Self {
        StateRegistry {
            operator: operator.to_string(),
            names: Vec::new(),
            ttl_states: TtlStates::default(),
            clock: ttl::system_clock(),
            cached_files: CachedFiles::default(),
            broadcast: Vec::new(),
        }
    }

    pub(crate) fn with_cached_files(mut self, cached_files: CachedFiles) -> Self {
        self.cached_files = cached_files;
        self
    }

    /// The processing-time clock TTL'd states read (tests: a manual one).
    #[cfg(test)]
    pub(crate) fn with_clock(mut self, clock: TtlClock) -> Self {
        self.clock = clock;
        self
    }

    /// The local copy of the job document's `cachedFiles.<name>` (Flink's
    /// `getDistributedCache().getFile(name)`): read-only, shared by the process's subtasks.
    /// Unknown names fail listing the registered ones.
    pub fn cached_file(&self, name: &str) -> Result<&Path> {
        self.cached_files
            .path(name)
            .ok_or_else(|| Error::unknown_cached_file(name, self.cached_files.names()))
    }

    /// Every cached file with its size and checksum.
    pub fn cached_files(&self) -> &CachedFiles {
        &self.cached_files
    }

    /// Registers the next state with a time to live (Flink's
    /// `descriptor.enableTimeToLive(ttlConfig)`):
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use weir::prelude::*;
    /// # fn open(state: &mut StateRegistry) -> Result<()> {
    /// let count: ValueState<u64> = state
    ///     .with_ttl(StateTtl::new(Duration::from_secs(600)))
    ///     .value_state("count")?;
    /// # Ok(()) }
    /// ```
    ///
    /// A state's TTL is part of its stored format: a restore that finds the state stored
    /// without TTL (or with, when now registered without) fails naming it, as Flink does.
    pub fn with_ttl(&mut self, ttl: StateTtl) -> WithTtl<'_> {
        WithTtl {
            registry: self,
            ttl,
        }
    }

    fn register(&mut self, name: &str, ttl: Option<(StateTtl, Layout)>) -> Result<Descriptor> {
        let id = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32;
        if let Some((_, other, _)) = self.names.iter().find(|(other_id, ..)| *other_id == id) {
            return Err(Error::operator(
                &self.operator,
                format!("state {name:?} registered twice (or collides with {other:?})"),
            ));
        }
        let format = match ttl {
            Some(_) => StateFormat::Ttl,
            None => StateFormat::Plain,
        };
        self.names.push((id, name.to_string(), format));
        let full_name: Arc<str> = Arc::from(format!("{}/{name}", self.operator));
        let ttl = ttl.map(|(config, layout)| {
            let ttl = Ttl::new(config, self.clock.clone());
            self.ttl_states
                .states
                .push((id, full_name.clone(), layout, ttl.clone()));
            ttl
        });
        Ok(Descriptor {
            id,
            name: full_name,
            ttl,
        })
    }

    /// Every registered state's format, by name: recorded in snapshots.
    pub(crate) fn formats(&self) -> BTreeMap<String, StateFormat> {
        self.names
            .iter()
            .map(|(_, name, format)| (name.clone(), *format))
            .collect()
    }

    /// The names of the TTL'd states: recorded in snapshots.
    pub(crate) fn ttl_names(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|(.., format)| *format == StateFormat::Ttl)
            .map(|(_, name, _)| name.clone())
            .collect()
    }

    /// The TTL'd states, for the sweep before each snapshot.
    pub(crate) fn ttl_states(&self) -> &TtlStates {
        &self.ttl_states
    }

    /// Registers a broadcast map state (only a function on a broadcast-connected stream gets
    /// the states to read and write it; see `BroadcastStates`). Its name is its identity in
    /// checkpoints, within this operator.
    pub fn broadcast_map_state<K, V>(&mut self, name: &str) -> Result<BroadcastMapState<K, V>>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Error::operator(
                &self.operator,
                format!("broadcast state name {name:?} must be non-empty [A-Za-z0-9._-]"),
            ));
        }
        if self.broadcast.iter().any(|n| &**n == name) {
            return Err(Error::operator(
                &self.operator,
                format!("broadcast state {name:?} registered twice"),
            ));
        }
        let name: Arc<str> = Arc::from(name);
        self.broadcast.push(name.clone());
        Ok(BroadcastMapState {
            name,
            _types: PhantomData,
        })
    }

    /// The registered broadcast states' names.
    pub(crate) fn broadcast_names(&self) -> &[Arc<str>] {
        &self.broadcast
    }

    pub fn value_state<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<ValueState<T>> {
        self.value_state_inner(name, None)
    }

    fn value_state_inner<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
        ttl: Option<StateTtl>,
    ) -> Result<ValueState<T>> {
        Ok(ValueState {
            desc: self.register(name, ttl.map(|t| (t, Layout::Single)))?,
            _t: PhantomData,
        })
    }

    pub fn list_state<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<ListState<T>> {
        self.list_state_inner(name, None)
    }

    fn list_state_inner<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
        ttl: Option<StateTtl>,
    ) -> Result<ListState<T>> {
        Ok(ListState {
            desc: self.register(name, ttl.map(|t| (t, Layout::List)))?,
            _t: PhantomData,
        })
    }

    pub fn map_state<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<MapState<K, V>> {
        self.map_state_inner(name, None)
    }

    fn map_state_inner<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
        ttl: Option<StateTtl>,
    ) -> Result<MapState<K, V>> {
        Ok(MapState {
            desc: self.register(name, ttl.map(|t| (t, Layout::Single)))?,
            _t: PhantomData,
        })
    }

    pub fn reducing_state<T, F>(&mut self, name: &str, reduce: F) -> Result<ReducingState<T>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        self.reducing_state_inner(name, None, reduce)
    }

    fn reducing_state_inner<T, F>(
        &mut self,
        name: &str,
        ttl: Option<StateTtl>,
        reduce: F,
    ) -> Result<ReducingState<T>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        Ok(ReducingState {
            desc: self.register(name, ttl.map(|t| (t, Layout::Single)))?,
            reduce: Arc::new(reduce),
        })
    }

    pub fn aggregating_state<A: AggregateFunction>(
        &mut self,
        name: &str,
        function: A,
    ) -> Result<AggregatingState<A>> {
        self.aggregating_state_inner(name, None, function)
    }

    fn aggregating_state_inner<A: AggregateFunction>(
        &mut self,
        name: &str,
        ttl: Option<StateTtl>,
        function: A,
    ) -> Result<AggregatingState<A>> {
        Ok(AggregatingState {
            desc: self.register(name, ttl.map(|t| (t, Layout::Single)))?,
            function,
        })
    }
}

/// Registers one state with a TTL: [`StateRegistry::with_ttl`]. The same state kinds as the
/// registry; lists expire per element and maps per entry, as in Flink.
pub struct WithTtl<'a> {
    registry: &'a mut StateRegistry,
    ttl: StateTtl,
}

impl WithTtl<'_> {
    pub fn value_state<T: Serialize + DeserializeOwned>(self, name: &str) -> Result<ValueState<T>> {
        self.registry.value_state_inner(name, Some(self.ttl))
    }

    pub fn list_state<T: Serialize + DeserializeOwned>(self, name: &str) -> Result<ListState<T>> {
        self.registry.list_state_inner(name, Some(self.ttl))
    }

    pub fn map_state<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        self,
        name: &str,
    ) -> Result<MapState<K, V>> {
        self.registry.map_state_inner(name, Some(self.ttl))
    }

    pub fn reducing_state<T, F>(self, name: &str, reduce: F) -> Result<ReducingState<T>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        self.registry
            .reducing_state_inner(name, Some(self.ttl), reduce)
    }

    pub fn aggregating_state<A: AggregateFunction>(
        self,
        name: &str,
        function: A,
    ) -> Result<AggregatingState<A>> {
        self.registry
            .aggregating_state_inner(name, Some(self.ttl), function)
    }
}

#[derive(Clone)]
struct Descriptor {
    id: StateId,
    /// `operator/state`, for error messages.
    name: Arc<str>,
    ttl: Option<Ttl>,
}

impl Descriptor {
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| Error::codec(format!("state {}", self.name), e))
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| Error::codec(format!("state {}", self.name), e))
    }

    fn no_timestamp(&self) -> Error {
        Error::codec(
            format!("state {}", self.name),
            "a stored value has no TTL timestamp",
        )
    }

    /// The value at `suffix`, after the TTL check: an expired value is deleted (and returned
    /// only under `ReturnExpiredIfNotCleanedUp`); a live one is re-stamped under
    /// `OnReadAndWrite`.
    fn get<T: DeserializeOwned>(
        &self,
        ctx: &mut KeyedContext<'_>,
        suffix: &[u8],
    ) -> Result<Option<T>> {
        let Some(ttl) = &self.ttl else {
            return match ctx.backend.get(self.id, suffix)? {
                Some(bytes) => Ok(Some(self.decode(bytes)?)),
                None => Ok(None),
            };
        };
        let now = ttl.now();
        let Some(bytes) = ctx.backend.get(self.id, suffix)? else {
            return Ok(None);
        };
        let (written, payload) = ttl::unstamp(bytes).ok_or_else(|| self.no_timestamp())?;
        if ttl.expired(written, now) {
            let value = if ttl.return_expired() {
                Some(self.decode(payload)?)
            } else {
                None
            };
            ctx.backend.delete(self.id, suffix)?;
            return Ok(value);
        }
        let value = self.decode(payload)?;
        if ttl.refresh_on_read() {
            let mut restamped = Vec::with_capacity(bytes.len());
            ttl::stamp(now, payload, &mut restamped);
            ctx.backend.put(self.id, suffix, &restamped)?;
        }
        Ok(Some(value))
    }

    fn put<T: Serialize + ?Sized>(
        &self,
        ctx: &mut KeyedContext<'_>,
        suffix: &[u8],
        value: &T,
    ) -> Result<()> {
        if let Some(ttl) = &self.ttl {
            let payload = self.encode(value)?;
            let mut bytes = Vec::with_capacity(8 + payload.len());
            ttl::stamp(ttl.now(), &payload, &mut bytes);
            return ctx.backend.put(self.id, suffix, &bytes);
        }
        // Small values are encoded on the stack: no allocation per put.
        let mut buf = [0u8; 64];
        match postcard::to_slice(value, &mut buf) {
            Ok(bytes) => ctx.backend.put(self.id, suffix, bytes),
            Err(postcard::Error::SerializeBufferFull) => {
                let bytes = self.encode(value)?;
                ctx.backend.put(self.id, suffix, &bytes)
            }
            Err(e) => Err(Error::codec(format!("state {}", self.name), e)),
        }
    }

    /// The live elements of a TTL'd list at `suffix` (expired ones too under
    /// `ReturnExpiredIfNotCleanedUp`), deleting expired elements and re-stamping under
    /// `OnReadAndWrite`.
    fn get_frames<T: DeserializeOwned>(
        &self,
        ctx: &mut KeyedContext<'_>,
        ttl: &Ttl,
        suffix: &[u8],
    ) -> Result<Vec<T>> {
        let now = ttl.now();
        let Some(bytes) = ctx.backend.get(self.id, suffix)? else {
            return Ok(Vec::new());
        };
        let frames = ttl::frames(bytes).ok_or_else(|| self.no_timestamp())?;
        let mut values = Vec::with_capacity(frames.len());
        let mut kept = Vec::with_capacity(bytes.len());
        let mut changed = false;
        for (written, element) in &frames {
            if ttl.expired(*written, now) {
                changed = true;
                if ttl.return_expired() {
                    values.push(self.decode(element)?);
                }
                continue;
            }
            values.push(self.decode(element)?);
            let stamp = if ttl.refresh_on_read() {
                changed = true;
                now
            } else {
                *written
            };
            ttl::push_frame(stamp, element, &mut kept);
        }
        if changed {
            if kept.is_empty() {
                ctx.backend.delete(self.id, suffix)?;
            } else {
                ctx.backend.put(self.id, suffix, &kept)?;
            }
        }
        Ok(values)
    }
}

/// A single value per key (Flink's `ValueState`).
pub struct ValueState<T> {
    desc: Descriptor,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    pub fn get(&self, ctx: &mut KeyedContext<'_>) -> Result<Option<T>> {
        self.desc.get(ctx, &[])
    }

    pub fn set(&self, ctx: &mut KeyedContext<'_>, value: &T) -> Result<()> {
        self.desc.put(ctx, &[], value)
    }

    pub fn clear(&self, ctx: &mut KeyedContext<'_>) -> Result<()> {
        ctx.backend.delete(self.desc.id, &[])
    }
}

/// A list per key, stored as one value: appends are read-modify-write through the cache.
/// With a TTL each element expires on its own.
pub struct ListState<T> {
    desc: Descriptor,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ListState<T> {
    pub fn get(&self, ctx: &mut KeyedContext<'_>) -> Result<Vec<T>> {
        if self.desc.ttl.is_some() {
            return self.get_in(ctx, &[]);
        }
        Ok(self.desc.get(ctx, &[])?.unwrap_or_default())
    }

    pub fn add(&self, ctx: &mut KeyedContext<'_>, value: T) -> Result<()> {
        if self.desc.ttl.is_some() {
            return self.add_in(ctx, &[], &value).map(drop);
        }
        let mut list = self.get(ctx)?;
        list.push(value);
        self.update(ctx, &list)
    }

    pub fn update(&self, ctx: &mut KeyedContext<'_>, values: &[T]) -> Result<()> {
        if values.is_empty() {
            return self.clear(ctx);
        }
        if let Some(ttl) = &self.desc.ttl {
            let now = ttl.now();
            let mut bytes = Vec::new();
            for value in values {
                ttl::push_frame(now, &self.desc.encode(value)?, &mut bytes);
            }
            return ctx.backend.put(self.desc.id, &[], &bytes);
        }
        self.desc.put(ctx, &[], values)
    }

    pub fn clear(&self, ctx: &mut KeyedContext<'_>) -> Result<()> {
        ctx.backend.delete(self.desc.id, &[])
    }
}

/// Namespaced lists (one per window of the current key) are stored as the concatenated
/// postcard encodings of their elements (TTL frames with a TTL), so `add_in` appends bytes
/// without decoding the list.
impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// Appends `value`; returns whether the namespace's list was empty before.
    pub fn add_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8], value: &T) -> Result<bool> {
        let mut encoded = self.desc.encode(value)?;
        if let Some(ttl) = &self.desc.ttl {
            let mut frame = Vec::with_capacity(encoded.len() + 12);
            ttl::push_frame(ttl.now(), &encoded, &mut frame);
            encoded = frame;
        }
        let existing = ctx
            .backend
            .get(self.desc.id, namespace)?
            .map(<[u8]>::to_vec);
        let created = existing.is_none();
        let mut bytes = existing.unwrap_or_default();
        bytes.extend_from_slice(&encoded);
        ctx.backend.put(self.desc.id, namespace, &bytes)?;
        Ok(created)
    }

    pub fn get_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8]) -> Result<Vec<T>> {
        if let Some(ttl) = &self.desc.ttl {
            return self.desc.get_frames(ctx, ttl, namespace);
        }
        let Some(mut rest) = ctx.backend.get(self.desc.id, namespace)? else {
            return Ok(Vec::new());
        };
        let mut values = Vec::new();
        while !rest.is_empty() {
            let (value, tail) = postcard::take_from_bytes(rest)
                .map_err(|e| Error::codec(format!("state {}", self.desc.name), e))?;
            values.push(value);
            rest = tail;
        }
        Ok(values)
    }

    /// Appends the list of `from` to that of `into` and clears `from`.
    pub fn merge_in(&self, ctx: &mut KeyedContext<'_>, from: &[u8], into: &[u8]) -> Result<()> {
        let Some(moved) = ctx.backend.get(self.desc.id, from)?.map(<[u8]>::to_vec) else {
            return Ok(());
        };
        let mut bytes = ctx
            .backend
            .get(self.desc.id, into)?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        bytes.extend_from_slice(&moved);
        ctx.backend.put(self.desc.id, into, &bytes)?;
        ctx.backend.delete(self.desc.id, from)
    }

    pub fn clear_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8]) -> Result<()> {
        ctx.backend.delete(self.desc.id, namespace)
    }
}

/// A map per key; each map entry is its own RocksDB entry, so large maps stay cheap to update.
/// With a TTL each entry expires on its own.
pub struct MapState<K, V> {
    desc: Descriptor,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> MapState<K, V> {
    pub fn get(&self, ctx: &mut KeyedContext<'_>, key: &K) -> Result<Option<V>> {
        let suffix = self.desc.encode(key)?;
        self.desc.get(ctx, &suffix)
    }

    pub fn put(&self, ctx: &mut KeyedContext<'_>, key: &K, value: &V) -> Result<()> {
        let suffix = self.desc.encode(key)?;
        self.desc.put(ctx, &suffix, value)
    }

    pub fn remove(&self, ctx: &mut KeyedContext<'_>, key: &K) -> Result<()> {
        let suffix = self.desc.encode(key)?;
        ctx.backend.delete(self.desc.id, &suffix)
    }

    pub fn contains(&self, ctx: &mut KeyedContext<'_>, key: &K) -> Result<bool> {
        let suffix = self.desc.encode(key)?;
        if self.desc.ttl.is_some() {
            return Ok(self.desc.get::<V>(ctx, &suffix)?.is_some());
        }
        Ok(ctx.backend.get(self.desc.id, &suffix)?.is_some())
    }

    /// Every entry of the current key's map, in encoded-key order.
    pub fn entries(&self, ctx: &mut KeyedContext<'_>) -> Result<Vec<(K, V)>> {
        let stored = ctx.backend.entries(self.desc.id)?;
        let Some(ttl) = &self.desc.ttl else {
            return stored
                .into_iter()
                .map(|(k, v)| Ok((self.desc.decode(&k)?, self.desc.decode(&v)?)))
                .collect();
        };
        let now = ttl.now();
        let mut entries = Vec::with_capacity(stored.len());
        for (suffix, bytes) in stored {
            let (written, payload) =
                ttl::unstamp(&bytes).ok_or_else(|| self.desc.no_timestamp())?;
            if ttl.expired(written, now) {
                ctx.backend.delete(self.desc.id, &suffix)?;
                if !ttl.return_expired() {
                    continue;
                }
            } else if ttl.refresh_on_read() {
                let mut restamped = Vec::with_capacity(bytes.len());
                ttl::stamp(now, payload, &mut restamped);
                ctx.backend.put(self.desc.id, &suffix, &restamped)?;
            }
            entries.push((self.desc.decode(&suffix)?, self.desc.decode(payload)?));
        }
        Ok(entries)
    }

    pub fn clear(&self, ctx: &mut KeyedContext<'_>) -> Result<()> {
        ctx.backend.clear_all(self.desc.id)
    }
}

/// A value per key folded with a reduce function on every `add`.
pub struct ReducingState<T> {
    desc: Descriptor,
    reduce: Arc<dyn Fn(T, T) -> T + Send + Sync>,
}

impl<T: Serialize + DeserializeOwned> ReducingState<T> {
    pub fn add(&self, ctx: &mut KeyedContext<'_>, value: T) -> Result<()> {
        let next = match self.desc.get(ctx, &[])? {
            Some(current) => (self.reduce)(current, value),
            None => value,
        };
        self.desc.put(ctx, &[], &next)
    }

    pub fn get(&self, ctx: &mut KeyedContext<'_>) -> Result<Option<T>> {
        self.desc.get(ctx, &[])
    }

    pub fn clear(&self, ctx: &mut KeyedContext<'_>) -> Result<()> {
        ctx.backend.delete(self.desc.id, &[])
    }
}

/// Namespaced values (one per window of the current key).
impl<T: Serialize + DeserializeOwned> ReducingState<T> {
    /// Folds `value` in; returns whether the namespace had no value before.
    pub fn add_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8], value: T) -> Result<bool> {
        let (next, created) = match self.desc.get(ctx, namespace)? {
            Some(current) => ((self.reduce)(current, value), false),
            None => (value, true),
        };
        self.desc.put(ctx, namespace, &next)?;
        Ok(created)
    }

    pub fn get_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8]) -> Result<Option<T>> {
        self.desc.get(ctx, namespace)
    }

    /// Folds the value of `from` into that of `into` and clears `from`.
    pub fn merge_in(&self, ctx: &mut KeyedContext<'_>, from: &[u8], into: &[u8]) -> Result<()> {
        if let Some(moved) = self.desc.get(ctx, from)? {
            ctx.backend.delete(self.desc.id, from)?;
            self.add_in(ctx, into, moved)?;
        }
        Ok(())
    }

    pub fn clear_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8]) -> Result<()> {
        ctx.backend.delete(self.desc.id, namespace)
    }
}

/// Flink's `AggregateFunction`: an accumulator that takes inputs and yields a result.
pub trait AggregateFunction: Send + 'static {
    type In;
    type Acc: Serialize + DeserializeOwned;
    type Out;
    fn create_accumulator(&self) -> Self::Acc;
    fn add(&self, value: Self::In, acc: Self::Acc) -> Self::Acc;
    fn result(&self, acc: &Self::Acc) -> Self::Out;
    /// Combines two accumulators; needed only by merging (session) windows. `None` means
    /// the function cannot merge.
    fn merge(&self, _a: Self::Acc, _b: Self::Acc) -> Option<Self::Acc> {
        None
    }
}

pub struct AggregatingState<A: AggregateFunction> {
    desc: Descriptor,
    function: A,
}

impl<A: AggregateFunction> AggregatingState<A> {
    pub fn add(&self, ctx: &mut KeyedContext<'_>, value: A::In) -> Result<()> {
        let acc = match self.desc.get(ctx, &[])? {
            Some(acc) => acc,
            None => self.function.create_accumulator(),
        };
        let acc = self.function.add(value, acc);
        self.desc.put(ctx, &[], &acc)
    }

    pub fn get(&self, ctx: &mut KeyedContext<'_>) -> Result<Option<A::Out>> {
        let acc: Option<A::Acc> = self.desc.get(ctx, &[])?;
        Ok(acc.map(|acc| self.function.result(&acc)))
    }

    pub fn clear(&self, ctx: &mut KeyedContext<'_>) -> Result<()> {
        ctx.backend.delete(self.desc.id, &[])
    }
}

/// Namespaced accumulators (one per window of the current key).
impl<A: AggregateFunction> AggregatingState<A> {
    /// Adds `value`; returns whether the namespace had no accumulator before.
    pub fn add_in(
        &self,
        ctx: &mut KeyedContext<'_>,
        namespace: &[u8],
        value: A::In,
    ) -> Result<bool> {
        let (acc, created) = match self.desc.get(ctx, namespace)? {
            Some(acc) => (acc, false),
            None => (self.function.create_accumulator(), true),
        };
        let acc = self.function.add(value, acc);
        self.desc.put(ctx, namespace, &acc)?;
        Ok(created)
    }

    pub fn get_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8]) -> Result<Option<A::Out>> {
        let acc: Option<A::Acc> = self.desc.get(ctx, namespace)?;
        Ok(acc.map(|acc| self.function.result(&acc)))
    }

    /// Merges the accumulator of `from` into that of `into` and clears `from`.
    pub fn merge_in(&self, ctx: &mut KeyedContext<'_>, from: &[u8], into: &[u8]) -> Result<()> {
        let Some(moved) = self.desc.get::<A::Acc>(ctx, from)? else {
            return Ok(());
        };
        let merged = match self.desc.get::<A::Acc>(ctx, into)? {
            None => moved,
            Some(existing) => self.function.merge(existing, moved).ok_or_else(|| {
                Error::operator(
                    self.desc.name.to_string(),
                    "this AggregateFunction cannot merge accumulators (implement `merge` for session windows)",
                )
            })?,
        };
        self.desc.put(ctx, into, &merged)?;
        ctx.backend.delete(self.desc.id, from)
    }

    pub fn clear_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8]) -> Result<()> {
        ctx.backend.delete(self.desc.id, namespace)
    }
}
