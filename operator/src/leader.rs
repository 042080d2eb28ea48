//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at once. The holder renews every `renew`; a candidate takes the Lease once it is
//! `duration` old, or at once when it has no holder. Writes use `replace` with the read
//! resourceVersion, so two candidates cannot both win. A leader that fails to renew in time
//! stops (the pod restarts as a candidate); a leader that shuts down releases the Lease (no
//! holder), as client-go's `ReleaseOnCancel` does, so the other replica takes over at once
//! instead of waiting out the lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

use crate::{Error, Result};

/// What a candidate does with the Lease it read. Pure, so every case is a plain test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease yet: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it (released, or never held) or the holder stopped renewing: take it.
    Take,
    /// Someone else holds it and renews it.
    Wait,
}

/// Decides from the Lease as read at `now`. `duration` is ours, used when the Lease does not
/// say how long its holder may go without renewing.
pub fn decide(
    lease: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::Take;
    }
    let held_ms = spec.lease_duration_seconds.map_or_else(
        || i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
        |seconds| i64::from(seconds) * 1000,
    );
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        renewed.0.as_millisecond().saturating_add(held_ms) < now.as_millisecond()
    });
    if expired {
        LeaseDecision::Take
    } else {
        LeaseDecision::Wait
    }
}

#[derive(Debug, Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn error(&self, source: kube::Error) -> Error {
        Error::Lease {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// One attempt: true when this identity holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        self.try_acquire_or_renew_at(Timestamp::now()).await
    }

    /// [`Self::try_acquire_or_renew`] with the clock given, so tests can move time.
    pub async fn try_acquire_or_renew_at(&self, now: Timestamp) -> Result<bool> {
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?;
        self.write_decision(existing, now).await
    }

    /// Acts on a Lease read earlier. Split from the read so a test can have two candidates
    /// act on the same read, the race `replace` with a resourceVersion must settle.
    async fn write_decision(&self, existing: Option<Lease>, now: Timestamp) -> Result<bool> {
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
            self.duration,
        );
        let mut lease = match (decision, existing) {
            (LeaseDecision::Wait, _) => return Ok(false),
            (LeaseDecision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                    Err(e) => Err(self.error(e)),
                };
            }
            (LeaseDecision::Renew | LeaseDecision::Take, Some(lease)) => lease,
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if decision == LeaseDecision::Take {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        self.replace(&lease).await
    }

    /// `replace` with the resourceVersion read: false when someone wrote the Lease since.
    async fn replace(&self, lease: &Lease) -> Result<bool> {
        match self
            .api
            .replace(&self.name, &PostParams::default(), lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Gives the Lease up if this identity holds it: no holder, so the next candidate takes it
    /// at once (client-go's `ReleaseOnCancel`). True when it was released by this call.
    pub async fn release(&self) -> Result<bool> {
        self.release_at(Timestamp::now()).await
    }

    pub async fn release_at(&self, now: Timestamp) -> Result<bool> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(now));
        spec.acquire_time = Some(MicroTime(now));
        self.replace(&lease).await
    }

    /// Waits until this identity leads.
    pub async fn acquire(&self, retry: Duration) -> Result<()> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews until a renewal fails for longer than the lease lasts; then returns the error.
    pub async fn keep_renewing(&self, every: Duration) -> Error {
        let mut last_success = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_success = tokio::time::Instant::now(),
                Ok(false) => {
                    return Error::LeadershipLost {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                    };
                }
                Err(e) if last_success.elapsed() >= self.duration => return e,
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
