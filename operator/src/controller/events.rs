//! Publishes Kubernetes Events (`events.k8s.io/v1`) about StreamJobs. The same event again
//! within [`SERIES_WINDOW`] bumps the count of the first one (`series`) instead of creating
//! another object, as kube's `Recorder` does; unlike that recorder, the note is part of what
//! makes two events "the same". kube keys only on type, reason and action and keeps the first
//! note, so with one action for everything `kubectl describe` showed `LifecycleChanged (x8)
//! Deploying -> Deploying` for eight different transitions, and only the first of several
//! `StopWithSavepoint` messages.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::lifecycle::{Event, one_line};

/// How long a published event can still be counted again, as kube's `Recorder`.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// The API server rejects longer notes.
const MAX_NOTE_BYTES: usize = 1024;

/// What makes two events the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EventKey {
    namespace: String,
    name: String,
    uid: String,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

#[derive(Debug, Clone)]
struct Published {
    /// Name of the Event object.
    name: String,
    count: i32,
    last_observed: Timestamp,
}

pub struct EventPublisher {
    client: Client,
    /// `reportingController`.
    controller: String,
    /// `reportingInstance`: this replica.
    instance: String,
    published: tokio::sync::Mutex<HashMap<EventKey, Published>>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        EventPublisher {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            published: tokio::sync::Mutex::default(),
        }
    }

    /// Creates the event, or counts it again on the Event object published for the same
    /// object, type, reason, action and note within [`SERIES_WINDOW`].
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let note = note(&event.message);
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = EventKey {
            namespace: namespace.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
            warning: event.warning,
            reason: event.reason.to_string(),
            action: event.action.as_str().to_string(),
            note: note.clone(),
        };
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &namespace);
        let mut published = self.published.lock().await;
        published.retain(|_, p| p.last_observed + SERIES_WINDOW > now);
        if let Some(previous) = published.get_mut(&key) {
            let count = previous.count + 1;
            let series = json!({"series": EventSeries {
                count,
                last_observed_time: MicroTime(now),
            }});
            match api
                .patch(
                    &previous.name,
                    &PatchParams::default(),
                    &Patch::Merge(&series),
                )
                .await
            {
                Ok(_) => {
                    previous.count = count;
                    previous.last_observed = now;
                    return Ok(());
                }
                // Expired or deleted meanwhile: publish it anew.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let object = KubeEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(event.reason.to_string()),
            action: Some(event.action.as_str().to_string()),
            note: Some(note),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..KubeEvent::default()
        };
        api.create(&PostParams::default(), &object).await?;
        published.insert(
            key,
            Published {
                name,
                count: 1,
                last_observed: now,
            },
        );
        Ok(())
    }
}

/// The message as an Event note: one line, at most [`MAX_NOTE_BYTES`].
fn note(message: &str) -> String {
    let mut note = one_line(message);
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - '…'.len_utf8();
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push('…');
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_one_line_and_fit_the_api_limit() {
        assert_eq!(note("a\n  b\tc"), "a b c");
        let long = "é".repeat(2000);
        let cut = note(&long);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
