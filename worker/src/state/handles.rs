//! Typed keyed-state handles, as job authors use them: declared once in `open`, then read and
//! written for the current key in `process`. Values are encoded with postcard.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::{KeyedStateBackend, StateId};
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
    names: Vec<(StateId, String)>,
    cached_files: CachedFiles,
}

impl StateRegistry {
    pub(crate) fn new(operator: &str) -> Self {
        StateRegistry {
            operator: operator.to_string(),
            names: Vec::new(),
            cached_files: CachedFiles::default(),
        }
    }

    pub(crate) fn with_cached_files(mut self, cached_files: CachedFiles) -> Self {
        self.cached_files = cached_files;
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

    fn register(&mut self, name: &str) -> Result<Descriptor> {
        let id = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32;
        if let Some((_, other)) = self.names.iter().find(|(other_id, _)| *other_id == id) {
            return Err(Error::operator(
                &self.operator,
                format!("state {name:?} registered twice (or collides with {other:?})"),
            ));
        }
        self.names.push((id, name.to_string()));
        Ok(Descriptor {
            id,
            name: Arc::from(format!("{}/{name}", self.operator)),
        })
    }

    pub fn value_state<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<ValueState<T>> {
        Ok(ValueState {
            desc: self.register(name)?,
            _t: PhantomData,
        })
    }

    pub fn list_state<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<ListState<T>> {
        Ok(ListState {
            desc: self.register(name)?,
            _t: PhantomData,
        })
    }

    pub fn map_state<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<MapState<K, V>> {
        Ok(MapState {
            desc: self.register(name)?,
            _t: PhantomData,
        })
    }

    pub fn reducing_state<T, F>(&mut self, name: &str, reduce: F) -> Result<ReducingState<T>>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        Ok(ReducingState {
            desc: self.register(name)?,
            reduce: Arc::new(reduce),
        })
    }

    pub fn aggregating_state<A: AggregateFunction>(
        &mut self,
        name: &str,
        function: A,
    ) -> Result<AggregatingState<A>> {
        Ok(AggregatingState {
            desc: self.register(name)?,
            function,
        })
    }
}

#[derive(Clone)]
struct Descriptor {
    id: StateId,
    /// `operator/state`, for error messages.
    name: Arc<str>,
}

impl Descriptor {
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| Error::codec(format!("state {}", self.name), e))
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| Error::codec(format!("state {}", self.name), e))
    }

    fn get<T: DeserializeOwned>(
        &self,
        ctx: &mut KeyedContext<'_>,
        suffix: &[u8],
    ) -> Result<Option<T>> {
        match ctx.backend.get(self.id, suffix)? {
            Some(bytes) => Ok(Some(self.decode(bytes)?)),
            None => Ok(None),
        }
    }

    fn put<T: Serialize + ?Sized>(
        &self,
        ctx: &mut KeyedContext<'_>,
        suffix: &[u8],
        value: &T,
    ) -> Result<()> {
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
pub struct ListState<T> {
    desc: Descriptor,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ListState<T> {
    pub fn get(&self, ctx: &mut KeyedContext<'_>) -> Result<Vec<T>> {
        Ok(self.desc.get(ctx, &[])?.unwrap_or_default())
    }

    pub fn add(&self, ctx: &mut KeyedContext<'_>, value: T) -> Result<()> {
        let mut list = self.get(ctx)?;
        list.push(value);
        self.update(ctx, &list)
    }

    pub fn update(&self, ctx: &mut KeyedContext<'_>, values: &[T]) -> Result<()> {
        if values.is_empty() {
            return self.clear(ctx);
        }
        self.desc.put(ctx, &[], values)
    }

    pub fn clear(&self, ctx: &mut KeyedContext<'_>) -> Result<()> {
        ctx.backend.delete(self.desc.id, &[])
    }
}

/// Namespaced lists (one per window of the current key) are stored as the concatenated
/// postcard encodings of their elements, so `add_in` appends bytes without decoding the list.
impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// Appends `value`; returns whether the namespace's list was empty before.
    pub fn add_in(&self, ctx: &mut KeyedContext<'_>, namespace: &[u8], value: &T) -> Result<bool> {
        let encoded = self.desc.encode(value)?;
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
        Ok(ctx.backend.get(self.desc.id, &suffix)?.is_some())
    }

    /// Every entry of the current key's map, in encoded-key order.
    pub fn entries(&self, ctx: &mut KeyedContext<'_>) -> Result<Vec<(K, V)>> {
        ctx.backend
            .entries(self.desc.id)?
            .into_iter()
            .map(|(k, v)| Ok((self.desc.decode(&k)?, self.desc.decode(&v)?)))
            .collect()
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
