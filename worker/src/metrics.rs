//! Process-wide Prometheus metrics. Hot loops count into locals and add per batch, so the
//! atomics here are touched thousands of times per second, not millions.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperatorLabels {
    pub operator: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub records_in: Family<OperatorLabels, Counter>,
    pub records_out: Family<OperatorLabels, Counter>,
    pub malformed_records: Counter,
    pub checkpoints_completed: Counter,
    pub checkpoints_failed: Counter,
    pub last_checkpoint_duration_ms: Gauge,
    pub last_checkpoint_size_bytes: Gauge,
    pub last_checkpoint_id: Gauge,
    pub restarts: Counter,
    /// Milliseconds producers spent blocked on full channels (backpressure).
    pub backpressure_ms: Family<OperatorLabels, Counter>,
    pub committed_files: Counter,
    pub network_bytes_sent: Counter,
    pub network_bytes_received: Counter,
    /// JobManager: registered TaskManagers and their slots; slots the job needs.
    pub task_managers: Gauge,
    pub slots_registered: Gauge,
    pub slots_required: Gauge,
    /// JobManager: per-operator totals of the TaskManagers' latest heartbeats.
    pub cluster_records_in: Family<OperatorLabels, Gauge>,
    pub cluster_records_out: Family<OperatorLabels, Gauge>,
    pub cluster_backpressure_ms: Family<OperatorLabels, Gauge>,
    /// Operators seen by `operator()`, so totals can be read back for heartbeats.
    operators: Mutex<BTreeSet<String>>,
}

/// One operator's counters in this process, as a TaskManager reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorTotals {
    pub operator: String,
    pub records_in: u64,
    pub records_out: u64,
    pub backpressure_ms: u64,
}

pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("weir");
        let metrics = Metrics {
            records_in: Family::default(),
            records_out: Family::default(),
            malformed_records: Counter::default(),
            checkpoints_completed: Counter::default(),
            checkpoints_failed: Counter::default(),
            last_checkpoint_duration_ms: Gauge::default(),
            last_checkpoint_size_bytes: Gauge::default(),
            last_checkpoint_id: Gauge::default(),
            restarts: Counter::default(),
            backpressure_ms: Family::default(),
            committed_files: Counter::default(),
            network_bytes_sent: Counter::default(),
            network_bytes_received: Counter::default(),
            task_managers: Gauge::default(),
            slots_registered: Gauge::default(),
            slots_required: Gauge::default(),
            cluster_records_in: Family::default(),
            cluster_records_out: Family::default(),
            cluster_backpressure_ms: Family::default(),
            operators: Mutex::new(BTreeSet::new()),
            registry: Registry::default(),
        };
        registry.register(
            "records_in",
            "Records received per operator",
            metrics.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Records emitted per operator",
            metrics.records_out.clone(),
        );
        registry.register(
            "malformed_records",
            "Malformed input records skipped",
            metrics.malformed_records.clone(),
        );
        registry.register(
            "checkpoints_completed",
            "Checkpoints completed",
            metrics.checkpoints_completed.clone(),
        );
        registry.register(
            "checkpoints_failed",
            "Checkpoints failed",
            metrics.checkpoints_failed.clone(),
        );
        registry.register(
            "last_checkpoint_duration_milliseconds",
            "Trigger to _metadata written, of the latest checkpoint",
            metrics.last_checkpoint_duration_ms.clone(),
        );
        registry.register(
            "last_checkpoint_size_bytes",
            "State size of the latest checkpoint",
            metrics.last_checkpoint_size_bytes.clone(),
        );
        registry.register(
            "last_checkpoint_id",
            "Id of the latest completed checkpoint",
            metrics.last_checkpoint_id.clone(),
        );
        registry.register("job_restarts", "Job restarts", metrics.restarts.clone());
        registry.register(
            "backpressure_milliseconds",
            "Time producers were blocked on full output channels",
            metrics.backpressure_ms.clone(),
        );
        registry.register(
            "sink_committed_files",
            "Files published by exactly-once sinks",
            metrics.committed_files.clone(),
        );
        registry.register(
            "network_sent_bytes",
            "Bytes of data frames sent to other TaskManagers",
            metrics.network_bytes_sent.clone(),
        );
        registry.register(
            "network_received_bytes",
            "Bytes of data frames received from other TaskManagers",
            metrics.network_bytes_received.clone(),
        );
        registry.register(
            "task_managers",
            "TaskManagers registered with this JobManager",
            metrics.task_managers.clone(),
        );
        registry.register(
            "slots_registered",
            "Task slots offered by registered TaskManagers",
            metrics.slots_registered.clone(),
        );
        registry.register(
            "slots_required",
            "Task slots the job needs (its parallelism)",
            metrics.slots_required.clone(),
        );
        registry.register(
            "cluster_records_in",
            "JobManager: records received per operator, summed over TaskManagers",
            metrics.cluster_records_in.clone(),
        );
        registry.register(
            "cluster_records_out",
            "JobManager: records emitted per operator, summed over TaskManagers",
            metrics.cluster_records_out.clone(),
        );
        registry.register(
            "cluster_backpressure_milliseconds",
            "JobManager: time producers were blocked on full channels, summed over TaskManagers",
            metrics.cluster_backpressure_ms.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn operator(&self, name: &str) -> OperatorLabels {
        let mut known = self.operators.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains(name) {
            known.insert(name.to_string());
        }
        OperatorLabels {
            operator: name.to_string(),
        }
    }

    /// This process's per-operator counters (what a TaskManager heartbeat carries).
    pub fn operator_totals(&self) -> Vec<OperatorTotals> {
        let names: Vec<String> = self
            .operators
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        names
            .into_iter()
            .map(|operator| {
                let labels = OperatorLabels {
                    operator: operator.clone(),
                };
                OperatorTotals {
                    records_in: self.records_in.get_or_create(&labels).get(),
                    records_out: self.records_out.get_or_create(&labels).get(),
                    backpressure_ms: self.backpressure_ms.get_or_create(&labels).get(),
                    operator,
                }
            })
            .collect()
    }

    /// JobManager: publishes the sum of every TaskManager's latest totals.
    pub fn publish_cluster_totals<'a>(&self, reports: impl Iterator<Item = &'a [OperatorTotals]>) {
        let mut sums: std::collections::BTreeMap<&str, (u64, u64, u64)> = Default::default();
        for report in reports {
            for t in report {
                let sum = sums.entry(&t.operator).or_default();
                sum.0 += t.records_in;
                sum.1 += t.records_out;
                sum.2 += t.backpressure_ms;
            }
        }
        for (operator, (records_in, records_out, backpressure)) in sums {
            let labels = self.operator(operator);
            self.cluster_records_in
                .get_or_create(&labels)
                .set(records_in as i64);
            self.cluster_records_out
                .get_or_create(&labels)
                .set(records_out as i64);
            self.cluster_backpressure_ms
                .get_or_create(&labels)
                .set(backpressure as i64);
        }
    }
}

/// Serves `/metrics` (Prometheus text) and `/healthz` until the process exits.
pub async fn serve(addr: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    global().encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
