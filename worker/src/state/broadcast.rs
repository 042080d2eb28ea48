//! Broadcast state (Flink's broadcast state pattern): maps that every parallel subtask of an
//! operator holds alike, written only from the broadcast input and read on the main input.
//!
//! Every subtask sees the same broadcast records in the same order (from each producer) and
//! applies them the same way, so the copies agree at every checkpoint barrier: barriers are
//! aligned across the main and the broadcast inputs. Each subtask snapshots its copy as
//! operator state redistributed [`Redistribution::Broadcast`](super::Redistribution), so after
//! a rescale every new subtask starts from one whole copy.
//!
//! Keys and values are JSON, like other operator state: the `_metadata` stays readable and
//! an entry survives a change of a struct's field order. Entries are ordered by their key's
//! JSON text, so iteration order is the same on every subtask.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{OperatorStateSnapshot, Redistribution};
use crate::error::{Error, Result};

/// The broadcast states of one subtask, by name. The main input gets them as
/// `&BroadcastStates` (read-only), the broadcast input as `&mut BroadcastStates`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BroadcastStates {
    maps: BTreeMap<Arc<str>, BTreeMap<String, serde_json::Value>>,
}

impl BroadcastStates {
    /// Empty states for `names`, filled from the restored entries where there are any.
    pub(crate) fn restore(
        names: &[Arc<str>],
        mut restored: impl FnMut(&str) -> Option<Vec<serde_json::Value>>,
        operator: &str,
    ) -> Result<Self> {
        let mut maps = BTreeMap::new();
        for name in names {
            let not_a_pair = || {
                Error::operator(
                    operator,
                    format!("broadcast state {name:?}: a restored entry is not [key, value]"),
                )
            };
            let mut map = BTreeMap::new();
            for entry in restored(name).unwrap_or_default() {
                let serde_json::Value::Array(mut pair) = entry else {
                    return Err(not_a_pair());
                };
                let (Some(value), Some(key), true) = (pair.pop(), pair.pop(), pair.is_empty())
                else {
                    return Err(not_a_pair());
                };
                map.insert(key.to_string(), value);
            }
            maps.insert(name.clone(), map);
        }
        Ok(BroadcastStates { maps })
    }

    /// Each state as operator state: `[key, value]` entries, redistributed by copy.
    pub(crate) fn snapshot(&self) -> Vec<(String, OperatorStateSnapshot)> {
        self.maps
            .iter()
            .map(|(name, map)| {
                let entries = map
                    .iter()
                    .map(|(key, value)| {
                        let key: serde_json::Value =
                            serde_json::from_str(key).expect("keys are stored as JSON text");
                        serde_json::Value::Array(vec![key, value.clone()])
                    })
                    .collect();
                (
                    name.to_string(),
                    OperatorStateSnapshot {
                        redistribution: Redistribution::Broadcast,
                        entries,
                    },
                )
            })
            .collect()
    }

    fn map(&self, name: &Arc<str>) -> Result<&BTreeMap<String, serde_json::Value>> {
        self.maps.get(name).ok_or_else(|| unregistered(name))
    }

    fn map_mut(&mut self, name: &Arc<str>) -> Result<&mut BTreeMap<String, serde_json::Value>> {
        self.maps.get_mut(name).ok_or_else(|| unregistered(name))
    }
}

fn unregistered(name: &str) -> Error {
    Error::operator(
        name,
        "broadcast state used by an operator that did not register it in open",
    )
}

/// A broadcast map state (Flink's `MapStateDescriptor` given to `broadcast`), declared in
/// `open` with `StateRegistry::broadcast_map_state`.
pub struct BroadcastMapState<K, V> {
    pub(crate) name: Arc<str>,
    pub(crate) _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for BroadcastMapState<K, V> {
    fn clone(&self) -> Self {
        BroadcastMapState {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> BroadcastMapState<K, V> {
    fn key_text(&self, key: &K) -> Result<String> {
        serde_json::to_string(key).map_err(|e| Error::codec(format!("{} key", self.name), e))
    }

    fn decode_value(&self, value: &serde_json::Value) -> Result<V> {
        V::deserialize(value).map_err(|e| Error::codec(format!("{} value", self.name), e))
    }

    pub fn get(&self, states: &BroadcastStates, key: &K) -> Result<Option<V>> {
        let key = self.key_text(key)?;
        self.map_of(states)?
            .get(&key)
            .map(|v| self.decode_value(v))
            .transpose()
    }

    pub fn contains(&self, states: &BroadcastStates, key: &K) -> Result<bool> {
        let key = self.key_text(key)?;
        Ok(self.map_of(states)?.contains_key(&key))
    }

    /// Every entry, in the order of the keys' JSON text (the same on every subtask).
    pub fn entries(&self, states: &BroadcastStates) -> Result<Vec<(K, V)>> {
        self.map_of(states)?
            .iter()
            .map(|(key, value)| {
                let key = serde_json::from_str(key)
                    .map_err(|e| Error::codec(format!("{} key", self.name), e))?;
                Ok((key, self.decode_value(value)?))
            })
            .collect()
    }

    pub fn len(&self, states: &BroadcastStates) -> Result<usize> {
        Ok(self.map_of(states)?.len())
    }

    pub fn is_empty(&self, states: &BroadcastStates) -> Result<bool> {
        Ok(self.map_of(states)?.is_empty())
    }

    pub fn put(&self, states: &mut BroadcastStates, key: &K, value: &V) -> Result<()> {
        let key = self.key_text(key)?;
        let value = serde_json::to_value(value)
            .map_err(|e| Error::codec(format!("{} value", self.name), e))?;
        states.map_mut(&self.name)?.insert(key, value);
        Ok(())
    }

    pub fn remove(&self, states: &mut BroadcastStates, key: &K) -> Result<()> {
        let key = self.key_text(key)?;
        states.map_mut(&self.name)?.remove(&key);
        Ok(())
    }

    pub fn clear(&self, states: &mut BroadcastStates) -> Result<()> {
        states.map_mut(&self.name)?.clear();
        Ok(())
    }

    fn map_of<'a>(
        &self,
        states: &'a BroadcastStates,
    ) -> Result<&'a BTreeMap<String, serde_json::Value>> {
        states.map(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> (BroadcastMapState<String, u64>, BroadcastStates) {
        let name: Arc<str> = Arc::from("rules");
        let handle = BroadcastMapState {
            name: name.clone(),
            _types: PhantomData,
        };
        let states = BroadcastStates::restore(&[name], |_| None, "op").expect("empty");
        (handle, states)
    }

    #[test]
    fn entries_round_trip_through_a_snapshot() {
        let (rules, mut states) = rules();
        rules.put(&mut states, &"b".into(), &2).expect("put");
        rules.put(&mut states, &"a".into(), &1).expect("put");
        rules.put(&mut states, &"c".into(), &3).expect("put");
        rules.remove(&mut states, &"c".into()).expect("remove");
        assert_eq!(rules.get(&states, &"a".into()).expect("get"), Some(1));
        assert_eq!(
            rules.entries(&states).expect("entries"),
            vec![("a".to_string(), 1), ("b".to_string(), 2)]
        );

        let snapshot = states.snapshot();
        assert_eq!(snapshot.len(), 1);
        let (name, state) = &snapshot[0];
        assert_eq!(name, "rules");
        assert_eq!(state.redistribution, Redistribution::Broadcast);
        assert_eq!(
            state.entries,
            vec![serde_json::json!(["a", 1]), serde_json::json!(["b", 2])]
        );
        let restored =
            BroadcastStates::restore(&[Arc::from("rules")], |_| Some(state.entries.clone()), "op")
                .expect("restore");
        assert_eq!(restored, states);
    }

    #[test]
    fn a_malformed_restored_entry_fails_naming_the_state() {
        let err = BroadcastStates::restore(
            &[Arc::from("rules")],
            |_| Some(vec![serde_json::json!({"a": 1})]),
            "matcher",
        )
        .expect_err("not a pair");
        assert!(err.to_string().contains("\"rules\""), "{err}");
    }

    #[test]
    fn an_unregistered_state_is_an_error() {
        let (_, mut states) = rules();
        let other: BroadcastMapState<String, u64> = BroadcastMapState {
            name: Arc::from("other"),
            _types: PhantomData,
        };
        assert!(other.put(&mut states, &"a".into(), &1).is_err());
    }
}
