//! A set of rendered Kubernetes objects, looked up by kind and name, typed on demand.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct Manifests {
    objects: Vec<Value>,
}

impl Manifests {
    /// Parses a multi-document YAML stream; empty documents (`---` with only comments) are
    /// skipped.
    pub fn parse(yaml: &str, what: &str) -> Result<Manifests> {
        let mut objects = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document).map_err(|source| Error::Yaml {
                what: what.to_string(),
                source,
            })?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        Ok(Manifests { objects })
    }

    pub fn all(&self) -> &[Value] {
        &self.objects
    }

    pub fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        let kind = kind.to_string();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    pub fn count(&self, kind: &str) -> usize {
        self.of_kind(kind).count()
    }

    /// The object of `kind` named `name` (in any namespace).
    pub fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.of_kind(kind).find(|o| o["metadata"]["name"] == name)
    }

    /// The object of `kind` named `name` in `namespace`.
    pub fn get_in(&self, kind: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.of_kind(kind)
            .find(|o| o["metadata"]["name"] == name && o["metadata"]["namespace"] == namespace)
    }

    /// Every object of `kind` decoded as `T` (e.g. `k8s_openapi` types).
    pub fn typed<T: DeserializeOwned>(&self, kind: &'static str) -> Result<Vec<T>> {
        self.of_kind(kind)
            .map(|object| {
                serde_json::from_value(object.clone()).map_err(|source| Error::Decode {
                    what: format!("{kind} {}", object["metadata"]["name"]),
                    kind,
                    source,
                })
            })
            .collect()
    }
}

/// `metadata.namespace` of an object, or "" when cluster-scoped.
pub fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}
