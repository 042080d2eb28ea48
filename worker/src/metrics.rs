//! Process-wide Prometheus metrics. Hot loops count into locals and add per batch, so the
//! atomics here are touched thousands of times per second, not millions.
//!
//! On the JobManager, which processes no records itself, `weir_records_in_total`,
//! `weir_records_out_total` and `weir_backpressure_milliseconds_total` carry the job's totals:
//! what the TaskManagers counted while registered with this JobManager ([`ClusterCounters`]),
//! so its progress line and its counters show the real numbers. `weir_cluster_*` are gauges:
//! the sum of the registered TaskManagers' latest reports (their whole process lifetime), which
//! drops when a TaskManager goes away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Labels of `weir_cached_file_downloads_total`: the `cachedFiles` entry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CachedFileLabels {
    pub name: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub records_in: Family<OperatorLabels, Counter>,
    pub records_out: Family<OperatorLabels, Counter>,
    pub malformed_records: Counter,
    pub checkpoints_completed: Counter,
    /// Periodic (and final) checkpoints that failed: these count toward `tolerableFailures`.
    pub checkpoints_failed: Counter,
    /// Savepoint triggers that ended `COMPLETED` / `FAILED` (a failed savepoint never fails
    /// the job).
    pub savepoints_completed: Counter,
    pub savepoints_failed: Counter,
    /// REST requests refused for a missing or wrong bearer token.
    pub rest_unauthorized: Counter,
    /// RPC and data connections refused in the TLS handshake (no certificate of the job's CA).
    pub peers_refused: Counter,
    pub last_checkpoint_duration_ms: Gauge,
    pub last_checkpoint_size_bytes: Gauge,
    pub last_checkpoint_id: Gauge,
    pub restarts: Counter,
    /// Milliseconds producers spent blocked on full channels (backpressure).
    pub backpressure_ms: Family<OperatorLabels, Counter>,
    pub committed_files: Counter,
    /// Kafka transactions the exactly-once Kafka sink committed (in tasks and in recovery).
    pub kafka_transactions_committed: Counter,
    /// Records the Kafka brokers acknowledged to the Kafka sink (exactly-once: also those of
    /// transactions that were aborted later).
    pub kafka_records_produced: Counter,
    pub network_bytes_sent: Counter,
    pub network_bytes_received: Counter,
    /// Files of the distributed cache this process downloaded (once per attempt).
    pub cached_file_downloads: Family<CachedFileLabels, Counter>,
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
            savepoints_completed: Counter::default(),
            savepoints_failed: Counter::default(),
            rest_unauthorized: Counter::default(),
            peers_refused: Counter::default(),
            last_checkpoint_duration_ms: Gauge::default(),
            last_checkpoint_size_bytes: Gauge::default(),
            last_checkpoint_id: Gauge::default(),
            restarts: Counter::default(),
            backpressure_ms: Family::default(),
            committed_files: Counter::default(),
            kafka_transactions_committed: Counter::default(),
            kafka_records_produced: Counter::default(),
            network_bytes_sent: Counter::default(),
            network_bytes_received: Counter::default(),
            cached_file_downloads: Family::default(),
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
            "savepoints_completed",
            "Savepoint triggers that completed",
            metrics.savepoints_completed.clone(),
        );
        registry.register(
            "savepoints_failed",
            "Savepoint triggers that failed (the job keeps running)",
            metrics.savepoints_failed.clone(),
        );
        registry.register(
            "rest_unauthorized",
            "REST API requests refused for a missing or wrong bearer token",
            metrics.rest_unauthorized.clone(),
        );
        registry.register(
            "peers_refused",
            "RPC and data connections refused in the TLS handshake: no certificate of this job's CA",
            metrics.peers_refused.clone(),
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
            "kafka_transactions_committed",
            "Kafka transactions committed by exactly-once Kafka sinks",
            metrics.kafka_transactions_committed.clone(),
        );
        registry.register(
            "kafka_records_produced",
            "Records the Kafka brokers acknowledged to Kafka sinks",
            metrics.kafka_records_produced.clone(),
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
            "cached_file_downloads",
            "Files of the distributed cache (cachedFiles) downloaded by this process, by name",
            metrics.cached_file_downloads.clone(),
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

    /// JobManager: raises the per-operator counters to the job's totals (counters only go up;
    /// the totals of [`ClusterCounters`] never go down).
    pub fn publish_job_totals(&self, totals: &[OperatorTotals]) {
        for t in totals {
            let labels = self.operator(&t.operator);
            for (counter, total) in [
                (&self.records_in, t.records_in),
                (&self.records_out, t.records_out),
                (&self.backpressure_ms, t.backpressure_ms),
            ] {
                let counter = counter.get_or_create(&labels);
                let current = counter.get();
                if total > current {
                    counter.inc_by(total - current);
                }
            }
        }
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

/// JobManager: the job's per-operator totals from what TaskManagers report, counting only what
/// they did while registered with this JobManager. Keyed by connection: a TaskManager that
/// reconnects starts a new entry whose baseline is what it reports on registering, so nothing
/// is counted twice; a connection that ends keeps what it counted.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    connections: HashMap<u64, Reported>,
    /// Counted by connections that ended.
    retired: BTreeMap<String, Counts>,
}

#[derive(Debug, Default)]
struct Reported {
    /// What the TaskManager had counted when it registered: work done before (for another
    /// JobManager, or another attempt long gone) is not this JobManager's to count.
    baseline: BTreeMap<String, Counts>,
    latest: BTreeMap<String, Counts>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    records_in: u64,
    records_out: u64,
    backpressure_ms: u64,
}

impl Counts {
    fn of(t: &OperatorTotals) -> Counts {
        Counts {
            records_in: t.records_in,
            records_out: t.records_out,
            backpressure_ms: t.backpressure_ms,
        }
    }

    fn add(&mut self, other: Counts) {
        self.records_in += other.records_in;
        self.records_out += other.records_out;
        self.backpressure_ms += other.backpressure_ms;
    }

    fn since(self, base: Counts) -> Counts {
        Counts {
            records_in: self.records_in.saturating_sub(base.records_in),
            records_out: self.records_out.saturating_sub(base.records_out),
            backpressure_ms: self.backpressure_ms.saturating_sub(base.backpressure_ms),
        }
    }
}

impl Reported {
    fn counted(&self) -> impl Iterator<Item = (&String, Counts)> {
        self.latest.iter().map(|(operator, latest)| {
            let base = self.baseline.get(operator).copied().unwrap_or_default();
            (operator, latest.since(base))
        })
    }
}

fn by_operator(totals: &[OperatorTotals]) -> BTreeMap<String, Counts> {
    totals
        .iter()
        .map(|t| (t.operator.clone(), Counts::of(t)))
        .collect()
}

impl ClusterCounters {
    /// A TaskManager registered on `connection`, having counted `totals` so far.
    pub fn registered(&mut self, connection: u64, totals: &[OperatorTotals]) {
        let baseline = by_operator(totals);
        self.connections.insert(
            connection,
            Reported {
                latest: baseline.clone(),
                baseline,
            },
        );
    }

    /// A heartbeat on `connection` reported `totals` (process lifetime counters).
    pub fn reported(&mut self, connection: u64, totals: &[OperatorTotals]) {
        let entry = self.connections.entry(connection).or_default();
        for t in totals {
            // An operator the TaskManager had not seen at registration starts from zero.
            entry.latest.insert(t.operator.clone(), Counts::of(t));
        }
    }

    /// `connection` ended: what it counted stays in the totals.
    pub fn ended(&mut self, connection: u64) {
        if let Some(reported) = self.connections.remove(&connection) {
            for (operator, counted) in reported.counted() {
                self.retired
                    .entry(operator.clone())
                    .or_default()
                    .add(counted);
            }
        }
    }

    /// Per-operator totals of the job under this JobManager.
    pub fn totals(&self) -> Vec<OperatorTotals> {
        let mut sums = self.retired.clone();
        for reported in self.connections.values() {
            for (operator, counted) in reported.counted() {
                sums.entry(operator.clone()).or_default().add(counted);
            }
        }
        sums.into_iter()
            .map(|(operator, c)| OperatorTotals {
                operator,
                records_in: c.records_in,
                records_out: c.records_out,
                backpressure_ms: c.backpressure_ms,
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(operator: &str, records_in: u64, records_out: u64) -> OperatorTotals {
        OperatorTotals {
            operator: operator.into(),
            records_in,
            records_out,
            backpressure_ms: 0,
        }
    }

    fn out_of(counters: &ClusterCounters, operator: &str) -> u64 {
        counters
            .totals()
            .iter()
            .find(|t| t.operator == operator)
            .map_or(0, |t| t.records_out)
    }

    #[test]
    fn job_totals_sum_task_managers_since_they_registered() {
        let mut counters = ClusterCounters::default();
        // TaskManager 0 ran for an earlier JobManager: 500 records before registering here.
        counters.registered(0, &[totals("source", 0, 500)]);
        counters.registered(1, &[]);
        counters.reported(0, &[totals("source", 0, 800)]);
        counters.reported(1, &[totals("source", 0, 200), totals("sink", 150, 0)]);
        assert_eq!(out_of(&counters, "source"), 300 + 200);
        let sink = counters.totals().into_iter().find(|t| t.operator == "sink");
        assert_eq!(sink.map(|t| t.records_in), Some(150));
    }

    #[test]
    fn totals_never_go_down_when_task_managers_leave_or_reconnect() {
        let mut counters = ClusterCounters::default();
        counters.registered(0, &[]);
        counters.reported(0, &[totals("source", 0, 1_000)]);
        // Lost, then the same process registers again on a new connection: what it did while
        // cut off is not counted, and nothing is counted twice.
        counters.ended(0);
        assert_eq!(out_of(&counters, "source"), 1_000);
        counters.registered(1, &[totals("source", 0, 1_200)]);
        counters.reported(1, &[totals("source", 0, 1_700)]);
        assert_eq!(out_of(&counters, "source"), 1_000 + 500);
        // A replacement process starts counting from zero.
        counters.ended(1);
        counters.registered(2, &[]);
        counters.reported(2, &[totals("source", 0, 40)]);
        assert_eq!(out_of(&counters, "source"), 1_540);
    }

    #[test]
    fn the_job_manager_counters_follow_the_job_totals() {
        let metrics = global();
        let operator = "metrics-test-source";
        metrics.publish_job_totals(&[totals(operator, 0, 10)]);
        metrics.publish_job_totals(&[totals(operator, 0, 25)]);
        let labels = metrics.operator(operator);
        assert_eq!(metrics.records_out.get_or_create(&labels).get(), 25);
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "weir_records_out_total{{operator=\"{operator}\"}} 25"
            )),
            "{text}"
        );
    }
}
