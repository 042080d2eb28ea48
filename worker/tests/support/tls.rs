//! A job's CA and one peer certificate it signed, PEM, as the operator makes them
//! (`operator/src/peer_tls.rs`). Shared by the unit tests of `cluster::tls` (included there
//! by path) and the cluster integration tests.

pub struct TestCa {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A new CA named `name` and a certificate for `peer_name` (the worker's `PEER_NAME`).
pub fn test_ca(name: &str, peer_name: &str) -> TestCa {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let peer_key = rcgen::KeyPair::generate().expect("peer key");
    let peer = rcgen::CertificateParams::new(vec![peer_name.to_string()])
        .expect("params")
        .signed_by(&peer_key, &issuer)
        .expect("peer certificate");
    TestCa {
        ca: ca.pem(),
        cert: peer.pem(),
        key: peer_key.serialize_pem(),
    }
}
