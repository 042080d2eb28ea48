//! Each job's own certificate authority for mutual TLS between its JobManager and
//! TaskManagers (the worker's `cluster::tls`). The operator makes a CA and one certificate it
//! signs for the DNS name `weir-peer`, writes certificate, key and CA certificate into the
//! job's Secret `<job>-peer-tls-<uid prefix>` (owned by the StreamJob) and mounts it into
//! every pod of the job. The CA's private key is dropped right after signing: nobody, the operator included,
//! can issue another certificate this job's peers would accept. A process of another job (or
//! none) is refused in the handshake.
//!
//! The Secret is created once and never read or replaced by the operator (RBAC `create`
//! only): a new CA would split a running job's pods into two groups that refuse each other.

use crate::{Error, Result};

/// The DNS name in every peer certificate (`weir::cluster::tls::PEER_NAME`).
pub const PEER_NAME: &str = "weir-peer";

/// Keys of the job's Secret.
pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";

/// PEM texts of a new job CA's certificate and of one peer certificate and key it signed.
#[derive(Clone)]
pub struct PeerCertificates {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for PeerCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCertificates(<key redacted>)")
    }
}

/// Makes a CA named after the job and a peer certificate it signs.
pub fn generate(namespace: &str, name: &str) -> Result<PeerCertificates> {
    let failed = |what: &'static str, source: rcgen::Error| Error::Certificates {
        namespace: namespace.to_string(),
        name: name.to_string(),
        what,
        source,
    };
    let ca_key = rcgen::KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("CA", e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("weir job {namespace}/{name}"),
    );
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| failed("CA", e))?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let peer_key = rcgen::KeyPair::generate().map_err(|e| failed("peer key", e))?;
    let mut peer_params = rcgen::CertificateParams::new(vec![PEER_NAME.to_string()])
        .map_err(|e| failed("peer", e))?;
    // Every peer is both: the client of one connection and the server of another.
    peer_params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    peer_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("weir peer {namespace}/{name}"),
    );
    let peer = peer_params
        .signed_by(&peer_key, &issuer)
        .map_err(|e| failed("peer", e))?;
    Ok(PeerCertificates {
        ca: ca.pem(),
        cert: peer.pem(),
        key: peer_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_gets_its_own_ca_and_a_peer_certificate_for_weir_peer() {
        let a = generate("ns", "a").expect("a");
        let b = generate("ns", "a").expect("b");
        assert_ne!(a.ca, b.ca, "a new CA every time");
        for pem in [&a.ca, &a.cert] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        assert!(a.key.contains("PRIVATE KEY"));
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
