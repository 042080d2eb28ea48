//! The `weir-worker` command line. Custom job binaries reuse it with their own registry:
//! `fn main() -> anyhow::Result<()> { weir::cli::main_with(my_registry()) }`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::cluster::Heartbeat;
use crate::cluster::jobmanager::{JobManagerOptions, run_job_manager};
use crate::cluster::taskmanager::{TaskManagerOptions, run_task_manager};
use crate::jobs::JobRegistry;
use crate::runtime::job::JobHandle;
use crate::runtime::local::{JobEnd, LocalOptions, run_local};
use crate::runtime::shutdown;
use crate::spec::layout::ports;
use crate::spec::{JobDocument, RestoreSource};

#[derive(Debug, Parser)]
#[command(name = "weir-worker", version, about = "Weir stream-processing worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole job in this process (a mini-cluster), until its input ends or it fails.
    Local {
        /// The job document (YAML or JSON).
        #[arg(long, env = "WEIR_JOB")]
        job: PathBuf,
        /// Override the document's parallelism (restoring at another parallelism rescales).
        #[arg(long)]
        parallelism: Option<u32>,
        /// Override the document's restore source: `latest`, `none`, or a checkpoint/savepoint path.
        #[arg(long)]
        restore: Option<String>,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9249).
        #[arg(long, env = "WEIR_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        /// Serve the JobManager REST API on this address (e.g. 127.0.0.1:8081): job state,
        /// checkpoints, savepoints, stop-with-savepoint, cancel.
        #[arg(long, env = "WEIR_REST_ADDR")]
        rest_addr: Option<SocketAddr>,
        #[command(flatten)]
        rest_auth: RestAuthArgs,
        /// Keep serving the REST API this long after the job ends (e.g. `30s`), so whoever
        /// stopped it can read the final state and savepoint (Flink's
        /// `execution.shutdown-on-application-finish: false`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        linger: std::time::Duration,
        /// Scratch space for RocksDB and in-progress files.
        #[arg(long, env = "WEIR_WORK_DIR")]
        work_dir: Option<PathBuf>,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 5)]
        progress_secs: u64,
    },
    /// Run the JobManager of a job: accept TaskManagers, deploy the job onto their slots,
    /// coordinate checkpoints, restart from the latest checkpoint on failure, and serve the
    /// REST API. Keeps serving the REST API after the job ends (unless `--exit-when-done`).
    Jobmanager {
        /// The job document (YAML or JSON).
        #[arg(long, env = "WEIR_JOB")]
        job: PathBuf,
        /// Override the document's parallelism.
        #[arg(long)]
        parallelism: Option<u32>,
        /// Override the document's restore source: `latest`, `none`, or a path.
        #[arg(long)]
        restore: Option<String>,
        /// Where TaskManagers connect.
        #[arg(long, env = "WEIR_RPC_ADDR", default_value_t = any_interface(ports::RPC))]
        rpc_addr: SocketAddr,
        /// The REST API (`docs/jobmanager-api.yaml`), including `/metrics` and health probes.
        #[arg(long, env = "WEIR_REST_ADDR", default_value_t = any_interface(ports::REST))]
        rest_addr: SocketAddr,
        #[command(flatten)]
        rest_auth: RestAuthArgs,
        #[command(flatten)]
        tls: PeerTlsArgs,
        #[command(flatten)]
        heartbeat: HeartbeatArgs,
        /// Exit when the job ends (status 0 unless it failed) instead of serving on.
        #[arg(long)]
        exit_when_done: bool,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 5)]
        progress_secs: u64,
    },
    /// Run a TaskManager: offer slots to a JobManager and run the subtasks it deploys.
    Taskmanager {
        /// `host:port` of the JobManager's RPC endpoint.
        #[arg(long, env = "WEIR_JOBMANAGER")]
        jobmanager: String,
        /// Task slots: each runs one subtask of every vertex.
        #[arg(long, env = "WEIR_SLOTS", default_value_t = 1)]
        slots: u32,
        /// Where other TaskManagers connect for keyed-exchange data.
        #[arg(long, env = "WEIR_DATA_ADDR", default_value_t = any_interface(ports::DATA))]
        data_addr: SocketAddr,
        /// Host other TaskManagers use to reach this one (default: the address the
        /// JobManager sees this TaskManager connect from).
        #[arg(long, env = "WEIR_DATA_HOST")]
        data_host: Option<String>,
        /// Scratch space for RocksDB and in-progress files.
        #[arg(long, env = "WEIR_WORK_DIR")]
        work_dir: Option<PathBuf>,
        /// Serve Prometheus metrics on this address.
        #[arg(long, env = "WEIR_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        #[command(flatten)]
        tls: PeerTlsArgs,
        #[command(flatten)]
        heartbeat: HeartbeatArgs,
    },
    /// Write the bid files of benchmark workload (a) (docs/bench-workloads.md §3): bids
    /// `0..count` as JSON lines in `shards` files `part-0000s.jsonl`, then `_SUCCESS`. The same
    /// bytes as the Java `weir.bench.Generate bids`.
    NexmarkGen {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 4)]
        shards: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a job document and the job's arguments without running it.
    Validate {
        #[arg(long)]
        job: PathBuf,
    },
    /// List the jobs this binary can run.
    Jobs,
}

/// Mutual TLS between the JobManager and the TaskManagers (RPC and data connections): all
/// three files, or none (plain TCP). The operator gives every job it deploys a CA of its own.
#[derive(Debug, clap::Args)]
struct PeerTlsArgs {
    /// PEM file with the job's CA certificate: peers must present a certificate it signed.
    #[arg(long, env = "WEIR_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// PEM file with this process's certificate (for the DNS name `weir-peer`).
    #[arg(long, env = "WEIR_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// PEM file with the certificate's private key.
    #[arg(long, env = "WEIR_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

impl PeerTlsArgs {
    fn load(&self) -> anyhow::Result<Option<crate::cluster::tls::PeerTls>> {
        let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key)
        else {
            tracing::info!(
                "RPC and data connections are plain TCP (no --tls-ca/--tls-cert/--tls-key)"
            );
            return Ok(None);
        };
        let tls = crate::cluster::tls::PeerTls::from_pem_files(ca, cert, key)?;
        tracing::info!(ca = %ca.display(), "RPC and data connections use mutual TLS: only peers with a certificate of this CA get in");
        Ok(Some(tls))
    }
}

/// Who may use the REST API: with a token, every endpoint except the health probes and
/// `/metrics` wants `Authorization: Bearer <token>`. Off when neither is given.
#[derive(Debug, clap::Args)]
struct RestAuthArgs {
    /// A file holding the REST API's bearer token (e.g. a mounted Secret). Instead of a flag
    /// with the token itself, which `ps` would show, the token can also come from the
    /// environment variable `WEIR_REST_TOKEN`.
    #[arg(long, env = "WEIR_REST_TOKEN_FILE")]
    rest_token_file: Option<PathBuf>,
}

impl RestAuthArgs {
    fn token(&self) -> anyhow::Result<Option<crate::rest::RestToken>> {
        if let Some(path) = &self.rest_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("--rest-token-file {}: cannot read: {e}", path.display())
            })?;
            let token = crate::rest::RestToken::new(&text).ok_or_else(|| {
                anyhow::anyhow!("--rest-token-file {}: the file is empty", path.display())
            })?;
            tracing::info!(file = %path.display(), "the REST API wants a bearer token");
            return Ok(Some(token));
        }
        match std::env::var("WEIR_REST_TOKEN") {
            Ok(text) => {
                let token = crate::rest::RestToken::new(&text)
                    .ok_or_else(|| anyhow::anyhow!("WEIR_REST_TOKEN is set but empty"))?;
                tracing::info!("the REST API wants a bearer token (from WEIR_REST_TOKEN)");
                Ok(Some(token))
            }
            Err(_) => Ok(None),
        }
    }
}

#[derive(Debug, clap::Args)]
struct HeartbeatArgs {
    /// How often JobManager and TaskManagers heartbeat each other.
    #[arg(long, env = "WEIR_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    heartbeat_interval: std::time::Duration,
    /// A peer silent this long is lost: the JobManager restarts the job without that
    /// TaskManager; a TaskManager cancels its tasks and registers again.
    #[arg(long, env = "WEIR_HEARTBEAT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    heartbeat_timeout: std::time::Duration,
}

impl HeartbeatArgs {
    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            interval: self.heartbeat_interval,
            timeout: self.heartbeat_timeout.max(self.heartbeat_interval * 2),
        }
    }
}

/// Reads the document and applies command-line overrides.
fn load_document(
    job: &std::path::Path,
    parallelism: Option<u32>,
    restore: Option<String>,
) -> anyhow::Result<Arc<JobDocument>> {
    let mut doc = JobDocument::from_file(job)?;
    if let Some(p) = parallelism {
        doc.parallelism = p;
    }
    if let Some(restore) = restore {
        doc.restore = match restore.as_str() {
            "latest" => RestoreSource::Latest,
            "none" => RestoreSource::None,
            path => RestoreSource::Path(path.to_string()),
        };
    }
    doc.validate()?;
    Ok(Arc::new(doc))
}

fn io_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-io")
        .enable_all()
        .build()?)
}

/// Installs rustls' process-wide crypto provider (aws-lc-rs, the workspace's only one) before
/// any TLS client exists, so no client has to guess it from crate features at run time.
pub fn install_tls_provider() {
    // An error only means a provider is installed already (an embedding binary chose one).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn main_with(registry: JobRegistry) -> anyhow::Result<()> {
    init_tracing();
    install_tls_provider();
    crate::fault_points::arm_from_env().map_err(anyhow::Error::msg)?;
    let cli = Cli::parse();
    match cli.command {
        Command::Jobs => {
            for name in registry.names() {
                println!("{name}");
            }
            Ok(())
        }
        Command::Jobmanager {
            job,
            parallelism,
            restore,
            rpc_addr,
            rest_addr,
            rest_auth,
            tls,
            heartbeat,
            exit_when_done,
            progress_secs,
        } => {
            let doc = load_document(&job, parallelism, restore)?;
            let token = rest_auth.token()?;
            let options = JobManagerOptions {
                rpc_bind: rpc_addr,
                heartbeat: heartbeat.heartbeat(),
                progress_interval: std::time::Duration::from_secs(progress_secs.max(1)),
                tls: tls.load()?,
            };
            run_jobmanager(&registry, doc, options, (rest_addr, token), exit_when_done)
        }
        Command::Taskmanager {
            jobmanager,
            slots,
            data_addr,
            data_host,
            work_dir,
            metrics_addr,
            tls,
            heartbeat,
        } => {
            if slots == 0 {
                anyhow::bail!("--slots must be at least 1");
            }
            let tls = tls.load()?;
            let runtime = io_runtime()?;
            shutdown::install(runtime.handle())?;
            if let Some(addr) = metrics_addr {
                let bound = runtime.block_on(crate::metrics::serve(addr))?;
                tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
            }
            let options = TaskManagerOptions {
                jobmanager,
                slots,
                data_bind: data_addr,
                data_host,
                work_dir: work_dir.unwrap_or_else(|| std::env::temp_dir().join("weir")),
                heartbeat: heartbeat.heartbeat(),
                tls,
            };
            match run_task_manager(options, registry, runtime.handle().clone()) {
                Err(crate::Error::Terminated { signal }) => {
                    tracing::info!(elapsed = ?shutdown::since_request(), "TaskManager stopped after {signal}");
                    Ok(())
                }
                result => Ok(result?),
            }
        }
        Command::NexmarkGen { count, shards, out } => {
            if shards == 0 {
                anyhow::bail!("--shards must be at least 1");
            }
            let started = std::time::Instant::now();
            crate::connectors::nexmark::write_bid_files(&out, count, shards)?;
            eprintln!(
                "wrote {count} bids in {shards} files to {} in {:.1?}",
                out.display(),
                started.elapsed()
            );
            Ok(())
        }
        Command::Validate { job } => {
            let doc = Arc::new(JobDocument::from_file(&job)?);
            registry.build(doc.clone())?;
            println!(
                "{}: valid ({} at parallelism {})",
                job.display(),
                doc.job.name,
                doc.parallelism
            );
            Ok(())
        }
        Command::Local {
            job,
            parallelism,
            restore,
            metrics_addr,
            rest_addr,
            rest_auth,
            linger,
            work_dir,
            progress_secs,
        } => {
            let token = rest_auth.token()?;
            let doc = load_document(&job, parallelism, restore)?;
            let built = registry.build(doc.clone())?;
            let runtime = io_runtime()?;
            shutdown::install(runtime.handle())?;
            if let Some(addr) = metrics_addr {
                let bound = runtime.block_on(crate::metrics::serve(addr))?;
                tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
            }
            let (job_handle, commands) = JobHandle::new(&doc);
            if let Some(addr) = rest_addr {
                let bound =
                    runtime.block_on(crate::rest::serve(addr, job_handle.clone(), token))?;
                tracing::info!(%bound, "serving the REST API at http://{bound}/v1/jobs");
            }
            let mut options = LocalOptions::for_document(&doc);
            options.progress_interval = std::time::Duration::from_secs(progress_secs.max(1));
            if let Some(dir) = work_dir {
                options.work_dir = dir;
            }
            tracing::info!(job = %doc.job.name, job_id = doc.job_id(), parallelism = doc.parallelism, "starting job in local mode");
            if let Some(monitor) = &built.monitor {
                monitor.started(&job_handle);
            }
            let started = std::time::Instant::now();
            let result = run_local(
                doc.clone(),
                &built.graph,
                runtime.handle(),
                &options,
                &job_handle,
                &commands,
            );
            if let Some(monitor) = &built.monitor {
                monitor.ended(&job_handle, started.elapsed());
            }
            if let Err(crate::Error::Terminated { signal }) = &result {
                println!(
                    "job {} stopped by {signal} after {:.1?}; restart it to continue from its latest checkpoint",
                    doc.job_id(),
                    started.elapsed()
                );
                return Ok(());
            }
            if rest_addr.is_some() && !linger.is_zero() {
                tracing::info!(state = ?job_handle.overview().state, ?linger, "job ended; REST API stays up");
                let _ = shutdown::sleep(linger);
            }
            let outcome = result?;
            match &outcome.end {
                JobEnd::Finished => {
                    println!("job {} finished in {:.1?}", doc.job_id(), started.elapsed())
                }
                JobEnd::StoppedWithSavepoint(location) => {
                    println!(
                        "job {} stopped with savepoint after {:.1?}",
                        doc.job_id(),
                        started.elapsed()
                    );
                    println!("  savepoint: {location}");
                }
                JobEnd::Cancelled => println!(
                    "job {} cancelled after {:.1?}",
                    doc.job_id(),
                    started.elapsed()
                ),
            }
            if let Some(from) = &outcome.restored_from {
                println!("  restored from: {from}");
            }
            if let Some(c) = &outcome.last_checkpoint {
                println!(
                    "  last checkpoint: {} ({} bytes of state, {:?})",
                    c.uri, c.state_size, c.duration
                );
            }
            println!("  restarts: {}", outcome.restarts);
            if let Some(output) = &built.output {
                println!("  results committed to: {output}");
            }
            Ok(())
        }
    }
}

fn run_jobmanager(
    registry: &JobRegistry,
    doc: Arc<JobDocument>,
    options: JobManagerOptions,
    (rest_addr, token): (SocketAddr, Option<crate::rest::RestToken>),
    exit_when_done: bool,
) -> anyhow::Result<()> {
    let built = registry.build(doc.clone())?;
    let runtime = io_runtime()?;
    shutdown::install(runtime.handle())?;
    let (job_handle, commands) = JobHandle::new(&doc);
    let bound = runtime.block_on(crate::rest::serve(rest_addr, job_handle.clone(), token))?;
    tracing::info!(%bound, "serving the REST API at http://{bound}/v1/jobs");
    tracing::info!(job = %doc.job.name, job_id = doc.job_id(), parallelism = doc.parallelism, "starting JobManager");
    let result = run_job_manager(
        doc.clone(),
        &built.graph,
        runtime.handle(),
        &options,
        &job_handle,
        &commands,
    );
    match &result {
        Ok(outcome) => {
            tracing::info!(end = ?outcome.end, restarts = outcome.restarts, "job ended")
        }
        // Neither is the job's end: it goes on under the next JobManager.
        Err(crate::Error::Terminated { signal }) => {
            tracing::info!(elapsed = ?shutdown::since_request(), "JobManager stopped after {signal}");
            return Ok(());
        }
        Err(e @ crate::Error::Fenced { .. }) => {
            tracing::error!(error = %e, "JobManager fenced; exiting");
            anyhow::bail!("{e}");
        }
        Err(e) => tracing::error!(error = %e, "job failed"),
    }
    if exit_when_done {
        result?;
        return Ok(());
    }
    // The operator (or a user) reads the final state and savepoint from the REST API; a
    // JobManager that exited would be restarted by Kubernetes and run the job again.
    tracing::info!(state = ?job_handle.overview().state, "job ended; the REST API stays up until this process is stopped");
    while shutdown::requested().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tracing::info!("JobManager stopped");
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: files and `kubectl logs` get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `0.0.0.0:<port>`: a listen address on every interface.
const fn any_interface(port: u16) -> SocketAddr {
    SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        port,
    ))
}
