//! Who may call a JobManager's REST API: each StreamJob's JobManager wants a bearer token
//! (`--rest-token-file`), and the operator is the only other holder.
//!
//! The token is derived, not stored: `HMAC-SHA256(key, namespace/name/uid)` under one key the
//! operator reads from a file (the chart generates it into a Secret of the operator's
//! namespace, kept across upgrades). So the operator writes each job's Secret (server-side
//! apply: `create` and `patch` on Secrets) but never reads one: its RBAC has no `get`, `list`
//! or `watch` on Secrets, and a compromised operator cannot read the other Secrets of the
//! namespaces it manages. The uid makes a StreamJob deleted and created again under the same
//! name get a new token. The Secret is owned by the StreamJob, so it goes with it.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::crd::StreamJob;

/// Bytes of key the operator wants at least (256 bits, the HMAC-SHA256 block's worth).
pub const MIN_KEY_BYTES: usize = 32;

/// The key every job's token is derived from.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// The key in `text` (surrounding whitespace ignored); errors say what is wrong with it.
    pub fn new(text: &str) -> Result<TokenKey, String> {
        let key = text.trim();
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the key has {} bytes; it needs at least {MIN_KEY_BYTES}",
                key.len()
            ));
        }
        Ok(TokenKey(key.as_bytes().to_vec()))
    }

    /// Reads the key from `path`; errors name the file.
    pub fn from_file(path: &Path) -> Result<TokenKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the REST token key: {e}", path.display()))?;
        TokenKey::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The REST token of `job`; `None` before the API server gave it a uid.
    pub fn token_for(&self, job: &StreamJob) -> Option<String> {
        let uid = job.metadata.uid.as_deref()?;
        let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
        let name = job.metadata.name.as_deref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        // Separated by a byte no Kubernetes name contains, so no two jobs share an input.
        mac.update(format!("weir-rest-token\0{namespace}\0{name}\0{uid}").as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }
}

/// What goes into the JobManager's pod template so a new token (a rotated key) replaces the
/// JobManager, which reads its token once at start: a digest, never the token.
pub fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(namespace: &str, name: &str, uid: Option<&str>) -> StreamJob {
        let mut job = StreamJob::test();
        job.metadata.name = Some(name.into());
        job.metadata.namespace = Some(namespace.into());
        job.metadata.uid = uid.map(String::from);
        job
    }

    #[test]
    fn tokens_differ_per_job_uid_and_key_and_are_stable() {
        let key = TokenKey::new(&"k".repeat(32)).expect("key");
        let a = key.token_for(&job("ns", "a", Some("u1"))).expect("token");
        assert_eq!(a.len(), 64, "hex of 32 bytes");
        assert_eq!(key.token_for(&job("ns", "a", Some("u1"))), Some(a.clone()));
        for other in [
            job("ns", "b", Some("u1")),
            job("ns2", "a", Some("u1")),
            job("ns", "a", Some("u2")),
        ] {
            assert_ne!(key.token_for(&other), Some(a.clone()));
        }
        let rotated = TokenKey::new(&"r".repeat(32)).expect("key");
        assert_ne!(
            rotated.token_for(&job("ns", "a", Some("u1"))),
            Some(a.clone())
        );
        assert_eq!(key.token_for(&job("ns", "a", None)), None, "no uid yet");
        assert_ne!(fingerprint(&a), a);
        assert_eq!(fingerprint(&a).len(), 16);
    }

    #[test]
    fn short_keys_are_refused_and_never_printed() {
        let error = TokenKey::new("short").expect_err("too short");
        assert!(error.contains("at least 32"), "{error}");
        let key = TokenKey::new(&"s".repeat(40)).expect("key");
        assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
    }
}
