//! Prometheus metrics for the operator: reconciles, errors by kind, reconcile latency,
//! lifecycle transitions and the time jobs spent in each lifecycle state.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub transitions: Family<TransitionLabels, Counter>,
    pub time_in_state: Family<StateLabels, Histogram>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let transitions = Family::<TransitionLabels, Counter>::default();
        let time_in_state = Family::<StateLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 4.0, 10))
        });
        let mut registry = Registry::with_prefix("weir_operator");
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        registry.register(
            "lifecycle_transitions",
            "StreamJob lifecycle transitions",
            transitions.clone(),
        );
        registry.register(
            "lifecycle_state_seconds",
            "Time a StreamJob spent in a lifecycle state before leaving it",
            time_in_state.clone(),
        );
        Metrics {
            reconciles,
            errors,
            reconcile_duration,
            transitions,
            time_in_state,
            registry,
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn observe_error(&self, error: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.metric_label(),
            })
            .inc();
    }

    pub fn observe_transition(
        &self,
        from: crate::crd::Lifecycle,
        to: crate::crd::Lifecycle,
        spent: Option<Duration>,
    ) {
        self.transitions
            .get_or_create(&TransitionLabels {
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
        if let Some(spent) = spent {
            self.time_in_state
                .get_or_create(&StateLabels {
                    state: from.as_str(),
                })
                .observe(spent.as_secs_f64());
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an error here would be a bug in the encoder.
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Lifecycle;

    #[test]
    fn exposes_reconciles_errors_and_time_in_state() {
        let metrics = Metrics::default();
        metrics.observe_reconcile(Duration::from_millis(20));
        metrics.observe_error(&crate::Error::InvalidSpec("x".into()));
        metrics.observe_transition(
            Lifecycle::Deploying,
            Lifecycle::Running,
            Some(Duration::from_secs(12)),
        );
        let text = metrics.encode();
        assert!(text.contains("weir_operator_reconciles_total 1"), "{text}");
        assert!(
            text.contains(r#"weir_operator_reconcile_errors_total{error="invalid_spec"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"weir_operator_lifecycle_transitions_total{from="Deploying",to="Running"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_operator_lifecycle_state_seconds_count{state="Deploying"} 1"#),
            "{text}"
        );
    }
}
