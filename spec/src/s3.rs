//! The one S3 client configuration of the worker and the operator (feature `s3`): the region
//! without the instance metadata service, and credentials only from sources someone set up.
//!
//! The AWS SDK's default chain ends at the EC2 instance metadata service (IMDS). Off EC2 that
//! costs connect timeouts and sends requests to a link-local address nobody configured; on a
//! shared node it hands the job the node's role. So IMDS is used only when the job document
//! says `s3: {instanceMetadata: true}`, and with no credential source configured at all a
//! client is refused up front with a message naming the ways to give credentials, instead of
//! failing on the first request with the SDK's generic "no providers in chain".

use std::path::PathBuf;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::profile::region::ProfileFileRegionProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_sdk_s3::config::{Credentials, Region};

use crate::S3Options;

/// How to give S3 credentials; ends every "no credentials" error.
pub const CREDENTIALS_HELP: &str = "give S3 credentials as AWS_ACCESS_KEY_ID and \
AWS_SECRET_ACCESS_KEY (on Kubernetes: spec.s3CredentialsSecret), web identity (IRSA: \
AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), a profile (AWS_PROFILE, ~/.aws), container \
credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI / _RELATIVE_URI, EKS Pod Identity), or allow \
the EC2 instance metadata service with `s3: {instanceMetadata: true}`";

/// The credential sources configured in this process for `opts`, in the order they are
/// tried; empty means none (see [`check_credentials`]). Reads only the environment and the
/// file system: no network.
pub fn configured_credential_sources(opts: &S3Options) -> Vec<&'static str> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let mut sources = Vec::new();
    if opts.static_credentials.is_some() {
        sources.push("static");
    }
    if set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY") {
        sources.push("environment");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let profile_files = [
        std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from),
        std::env::var_os("AWS_CONFIG_FILE").map(PathBuf::from),
        home.as_ref().map(|h| h.join(".aws/credentials")),
        home.as_ref().map(|h| h.join(".aws/config")),
    ];
    if set("AWS_PROFILE") || profile_files.iter().flatten().any(|f| f.is_file()) {
        sources.push("profile");
    }
    if set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN") {
        sources.push("web identity");
    }
    if set("AWS_CONTAINER_CREDENTIALS_FULL_URI") || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        sources.push("container");
    }
    if opts.instance_metadata {
        sources.push("instance metadata");
    }
    sources
}

/// Refuses `opts` when no credential source is configured, naming how to give one.
pub fn check_credentials(opts: &S3Options) -> Result<(), String> {
    if configured_credential_sources(opts).is_empty() {
        return Err(format!("no S3 credentials configured: {CREDENTIALS_HELP}"));
    }
    Ok(())
}

/// What a client is for. The one place where the worker's and the operator's time bounds and
/// retries are decided, so the two cannot drift apart again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The operator's small calls (list, head, delete) inside a reconcile: every call,
    /// retries included, ends within 30 s, so a hung S3 never hangs a reconcile.
    Control,
    /// The worker's state and output transfers: single objects up to the multipart threshold
    /// and 16 MiB+ parts. Each attempt ends within 5 minutes (enough for a part at ~60 KB/s)
    /// and is retried; the whole call has no bound of its own: the checkpoint timeout bounds
    /// a checkpoint, and a restore must not give up on a slow but moving download.
    Transfer,
}

impl Purpose {
    /// Connection set-up is bounded the same way for both: a dead endpoint fails fast.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// The SDK's standard retry mode (exponential backoff with jitter), stated here rather
    /// than left to `BehaviorVersion`.
    const MAX_ATTEMPTS: u32 = 3;

    pub fn timeouts(self) -> TimeoutConfig {
        let builder = TimeoutConfig::builder().connect_timeout(Self::CONNECT_TIMEOUT);
        match self {
            Purpose::Control => builder.operation_timeout(Duration::from_secs(30)),
            Purpose::Transfer => builder.operation_attempt_timeout(Duration::from_secs(300)),
        }
        .build()
    }

    pub fn retries(self) -> RetryConfig {
        RetryConfig::standard().with_max_attempts(Self::MAX_ATTEMPTS)
    }
}

/// An S3 client for `opts`, bounded and retried as `purpose` says. Fails without network
/// I/O when no credential source is configured.
pub async fn client(opts: &S3Options, purpose: Purpose) -> Result<aws_sdk_s3::Client, String> {
    check_credentials(opts)?;
    // Not the SDK's default region chain either: it too ends at IMDS. The document's
    // setting, the environment, the profile, then us-east-1.
    let region = RegionProviderChain::first_try(opts.region.clone().map(Region::new))
        .or_else(EnvironmentVariableRegionProvider::new())
        .or_else(ProfileFileRegionProvider::new())
        .or_else(Region::from_static("us-east-1"))
        .region()
        .await;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region.clone())
        .timeout_config(purpose.timeouts())
        .retry_config(purpose.retries());
    if let Some(endpoint) = &opts.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader = match &opts.static_credentials {
        Some((key_id, secret)) => {
            loader.credentials_provider(Credentials::new(key_id, secret, None, None, "weir-static"))
        }
        None => {
            let conf = ProviderConfig::without_region().with_region(region);
            let mut chain = CredentialsProviderChain::first_try(
                "Environment",
                EnvironmentVariableCredentialsProvider::new(),
            )
            .or_else(
                "Profile",
                ProfileFileCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            )
            .or_else(
                "WebIdentityToken",
                WebIdentityTokenCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            )
            .or_else(
                "EcsContainer",
                EcsCredentialsProvider::builder().configure(&conf).build(),
            );
            if opts.instance_metadata {
                chain = chain.or_else(
                    "Ec2InstanceMetadata",
                    ImdsCredentialsProvider::builder().configure(&conf).build(),
                );
            }
            loader.credentials_provider(chain)
        }
    };
    let sdk_config = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&sdk_config)
        .force_path_style(opts.force_path_style)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Purpose;

    #[test]
    fn control_calls_end_within_30_s_and_transfers_only_bound_each_attempt() {
        let control = Purpose::Control.timeouts();
        assert_eq!(control.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(control.operation_timeout(), Some(Duration::from_secs(30)));

        let transfer = Purpose::Transfer.timeouts();
        assert_eq!(transfer.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(transfer.operation_timeout(), None);
        assert_eq!(
            transfer.operation_attempt_timeout(),
            Some(Duration::from_secs(300))
        );
        for purpose in [Purpose::Control, Purpose::Transfer] {
            assert_eq!(purpose.retries().max_attempts(), 3);
        }
    }
}
