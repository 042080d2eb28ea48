//! Weir's Kubernetes operator: reconciles `StreamJob` resources into a JobManager, its
//! TaskManagers and the savepoints, upgrades, rescales and restores around them.
//!
//! Layout: [`crd`] is the API, [`lifecycle`] decides (a pure function), [`build`] renders child
//! objects, [`jobmanager`] talks to the job, [`storage`] looks at checkpoints, and
//! [`controller`] wires observe -> plan -> apply -> status.

pub mod build;
pub mod controller;
pub mod crd;
#[cfg(test)]
pub(crate) mod fake_kube;
pub mod jobmanager;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod peer_tls;
pub mod rest_token;
pub mod storage;

/// The one field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "weir-operator";
/// Finalizer that guards cleanup outside Kubernetes (final savepoint, checkpoint storage).
pub const FINALIZER: &str = "weir.dev/cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the StreamJob spec cannot run: {0}")]
    InvalidSpec(String),

    #[error("Kubernetes API call failed: {action} {kind} {namespace}/{name}: {source}")]
    Kube {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("finalizer handling for {namespace}/{name} failed: {message}")]
    Finalizer {
        namespace: String,
        name: String,
        message: String,
    },

    #[error("JobManager at {url} unreachable: {source}")]
    JobManagerUnreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("JobManager at {url} answered {status}: {body}")]
    JobManagerStatus {
        url: String,
        status: u16,
        body: String,
    },

    #[error("cannot build the HTTP client: {source}")]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },

    #[error("checkpoint storage {uri}: {message}")]
    Storage { uri: String, message: String },

    #[error("cannot serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot make the TLS certificates of StreamJob {namespace}/{name} ({what}): {source}")]
    Certificates {
        namespace: String,
        name: String,
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    #[error("leader election on Lease {namespace}/{name} failed: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("another replica took the Lease {namespace}/{name}")]
    LeadershipLost { namespace: String, name: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources on one line, joined with `: `, each part on one line (repeats
/// dropped: SDK errors often say the same thing at two levels). For logs, conditions and
/// Events, where a multi-line error is unreadable.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = lifecycle::one_line(&e.to_string());
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    lifecycle::one_line(&parts.join(": "))
}

impl Error {
    /// Errors that go away by themselves (network, API server, a restarting JobManager); the
    /// rest need a spec change and are not retried quickly.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::InvalidSpec(_) | Error::Serialize { .. } => false,
            Error::JobManagerStatus { status, .. } => {
                *status >= 500 || *status == 404 || *status == 409
            }
            _ => true,
        }
    }

    /// Short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Kube { .. } => "kube",
            Error::Finalizer { .. } => "finalizer",
            Error::JobManagerUnreachable { .. } => "jobmanager_unreachable",
            Error::JobManagerStatus { .. } => "jobmanager_status",
            Error::HttpClient { .. } => "http_client",
            Error::Storage { .. } => "storage",
            Error::Serialize { .. } => "serialize",
            Error::Certificates { .. } => "certificates",
            Error::Lease { .. } => "lease",
            Error::LeadershipLost { .. } => "leadership_lost",
        }
    }
}
