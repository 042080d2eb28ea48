//! `weir-operator`: watches StreamJobs in one namespace, a list, or all, behind a Lease so
//! two replicas are safe, and serves `/metrics` and `/healthz`. On SIGTERM or SIGINT it stops
//! reconciling (running reconciles finish), releases the Lease so the other replica takes
//! over at once, and exits 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use clap::Parser;
use weir_operator::controller::{self, Context, Scope, Shutdown};
use weir_operator::jobmanager::JobManagerEndpoint;
use weir_operator::leader::LeaseLock;
use weir_operator::metrics::Metrics;
use weir_operator::rest_token::TokenKey;
use weir_operator::storage::ObjectStores;

#[derive(Debug, Parser)]
#[command(version, about = "Kubernetes operator for Weir StreamJobs")]
struct Args {
    /// Namespaces to watch (repeat or comma-separate); all namespaces when absent.
    #[arg(
        long = "namespace",
        env = "WEIR_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Address for `/metrics` and `/healthz`.
    #[arg(long, env = "WEIR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Skip leader election (single replica, local development).
    #[arg(long, env = "WEIR_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// A file with the key every JobManager's REST token is derived from (at least 32
    /// bytes; the chart generates it into a Secret). Without it, JobManagers are deployed
    /// with their REST API open to anyone who can reach it.
    #[arg(long, env = "WEIR_REST_TOKEN_KEY_FILE")]
    rest_token_key_file: Option<std::path::PathBuf>,
    /// Deploy jobs without mutual TLS between their JobManager and TaskManagers (default:
    /// every job gets a CA of its own and its pods refuse peers without its certificate).
    #[arg(long, env = "WEIR_NO_PEER_TLS")]
    no_peer_tls: bool,
    /// Give every job a NetworkPolicy of its own: its pods admit RPC and data connections
    /// from the job's own TaskManagers only (the chart turns this on with its
    /// `networkPolicy.enabled`, which also grants the RBAC for it).
    #[arg(long, env = "WEIR_NETWORK_POLICIES")]
    network_policies: bool,
    /// Namespace of the leader election Lease (usually the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "weir-system")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "weir-operator")]
    identity: String,
    /// Talk to every JobManager at this base URL instead of its Service (port-forwarding).
    #[arg(long, env = "WEIR_JOBMANAGER_URL")]
    jobmanager_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: `kubectl logs` and log collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    weir_spec::fault_points::arm_from_env().map_err(anyhow::Error::msg)?;
    // rustls cannot pick a crypto provider on its own when none is installed; kube's client
    // needs one before the first connection. aws-lc-rs is the workspace's only provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client")?;
    let metrics = Arc::new(Metrics::default());

    let served = metrics.clone();
    let app = Router::new()
        .route("/metrics", get(move || async move { served.encode() }))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });

    let endpoint = args
        .jobmanager_url
        .map_or(JobManagerEndpoint::ClusterDns, JobManagerEndpoint::Fixed);
    if args.no_peer_tls {
        tracing::warn!("--no-peer-tls: jobs are deployed with plain RPC and data connections");
    }
    let rest_token_key = match &args.rest_token_key_file {
        Some(path) => Some(TokenKey::from_file(path).map_err(anyhow::Error::msg)?),
        None => {
            tracing::warn!(
                "no --rest-token-key-file: JobManagers are deployed without a REST token; anyone who reaches their port can stop or cancel jobs"
            );
            None
        }
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            endpoint,
            Arc::new(ObjectStores::default()),
            metrics,
        )?
        .with_rest_token_key(rest_token_key)
        .with_peer_tls(!args.no_peer_tls)
        .with_network_policies(args.network_policies),
    );
    let scope = if args.namespaces.is_empty() {
        Scope::All
    } else {
        Scope::Namespaces(args.namespaces)
    };

    let (request_shutdown, shutdown) = Shutdown::new();
    let signal = tokio::spawn(async move {
        match termination_signal().await {
            Ok(name) => {
                tracing::info!(signal = name, "shutting down");
                let _ = request_shutdown.send(());
            }
            // The default handlers stay: a signal then ends the process without the release.
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT"),
        }
    });

    if args.no_leader_election {
        controller::run(ctx, scope, shutdown).await;
        signal.abort();
        return Ok(());
    }
    let lease = LeaseLock::new(
        client,
        &args.lease_namespace,
        "weir-operator-leader",
        &args.identity,
        Duration::from_secs(15),
    );
    tracing::info!(identity = %args.identity, "waiting for leadership");
    tokio::select! {
        acquired = lease.acquire(Duration::from_secs(5)) => acquired?,
        // Stopped while waiting: nothing held, nothing to release.
        () = shutdown.clone().requested() => return Ok(()),
    }
    tracing::info!("leading; starting the controller");
    tokio::select! {
        // Returns once shutdown was requested and the running reconciles finished; the Lease
        // is renewed meanwhile, so no other replica starts while this one still acts.
        () = controller::run(ctx, scope, shutdown) => {}
        lost = lease.keep_renewing(Duration::from_secs(5)) => {
            return Err(lost).context("stopped leading");
        }
    }
    match lease.release().await {
        Ok(true) => tracing::info!("released the Lease"),
        Ok(false) => tracing::info!("the Lease was not ours any more; nothing to release"),
        // The other replica then takes it when it expires.
        Err(e) => tracing::warn!(error = %e, "cannot release the Lease"),
    }
    Ok(())
}

/// Waits for SIGTERM (what Kubernetes sends) or SIGINT (Ctrl+C) and names it.
async fn termination_signal() -> std::io::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => Ok("SIGTERM"),
        interrupted = tokio::signal::ctrl_c() => interrupted.map(|()| "SIGINT"),
    }
}
