//! Mutual TLS for the JobManager's RPC port and the TaskManagers' data ports (Flink's
//! `security.ssl.internal.*`): every peer of a job holds a certificate of the job's own CA
//! (the operator generates one per job), presents it, and accepts only peers that present one
//! too. A process without such a certificate, or with one of another job's CA, is refused
//! during the handshake, before any frame of the protocol is read.
//!
//! Peers are addressed by IP (data connections) or Service name (RPC), so the certificate
//! does not name a host: every peer's certificate carries the one DNS name [`PEER_NAME`], and
//! the CA, which signs nothing but this job's peers, is what is verified.
//!
//! The runtime's connections are blocking sockets with a reader thread and a writer thread on
//! clones of one socket. [`Connection`] keeps that shape: clones share one TLS session behind a
//! lock that is never held across a blocking socket read, and records leave in the order they
//! were sealed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::error::{Error, Result};

/// The DNS name every peer certificate of a job carries, and the name a peer verifies.
pub const PEER_NAME: &str = "weir-peer";

/// How long a handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs and counts a connection refused in the handshake: one line per attempt, naming the
/// peer, so a rogue process shows up without flooding the log of a job that keeps running.
pub(crate) fn refused(port: &str, peer: &str, error: &io::Error) {
    crate::metrics::global().peers_refused.inc();
    tracing::warn!(%peer, %port, error = %error, "refused a connection: the TLS handshake failed (no certificate of this job's CA?)");
}

/// This process's certificate and the job's CA, as client and as server.
#[derive(Clone)]
pub struct PeerTls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    /// Reads the CA certificate, this peer's certificate (chain) and its private key, all PEM.
    /// Errors name the file.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<PeerTls> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| Error::io(format!("TLS file {}", path.display()), e))
        };
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        PeerTls::from_pem(&ca_pem, &cert_pem, &key_pem).map_err(|e| match e {
            Error::InvalidSpec { field, message } => Error::InvalidSpec {
                field,
                message: format!(
                    "{message} (files {}, {}, {})",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
            },
            other => other,
        })
    }

    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<PeerTls> {
        let bad = |field: &str, message: String| Error::spec(field, message);
        let mut roots = RootCertStore::empty();
        let mut cas = 0;
        for certificate in CertificateDer::pem_slice_iter(ca) {
            let certificate =
                certificate.map_err(|e| bad("tls.ca", format!("not a PEM certificate: {e}")))?;
            roots
                .add(certificate)
                .map_err(|e| bad("tls.ca", format!("not a usable CA certificate: {e}")))?;
            cas += 1;
        }
        if cas == 0 {
            return Err(bad("tls.ca", "holds no certificate".into()));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad("tls.cert", format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(bad("tls.cert", "holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| bad("tls.key", format!("not a PEM private key: {e}")))?;
        let roots = Arc::new(roots);
        // The workspace's one provider, named here rather than taken from the process default,
        // so a config can never be built before (or without) it being installed.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad("tls.ca", format!("cannot verify peers with it: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls", e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad("tls.key", format!("does not match the certificate: {e}")))?;
        // Peers never resume sessions: no tickets to send after every handshake.
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls", e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("tls.key", format!("does not match the certificate: {e}")))?;
        Ok(PeerTls {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// A connection to a peer: plain TCP, or TLS over it. Clones ([`Connection::try_clone`]) are
/// its read and write halves, as with `TcpStream`; [`Connection::socket`] is the TCP socket
/// underneath (timeouts, shutdown, addresses).
pub struct Connection {
    socket: TcpStream,
    tls: Option<Arc<Session>>,
    /// Ciphertext read from the socket (reader half only); `unread` is the part not yet
    /// handed to the session.
    incoming: Vec<u8>,
    unread: std::ops::Range<usize>,
}

struct Session {
    state: Mutex<rustls::Connection>,
    /// Serializes writes of sealed records to the socket; taken before `state` is released,
    /// so records leave in the order they were sealed.
    out: Mutex<TcpStream>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Connection {
    /// No TLS (a job run without certificates).
    pub fn plain(socket: TcpStream) -> Connection {
        Connection {
            socket,
            tls: None,
            incoming: Vec::new(),
            unread: 0..0,
        }
    }

    /// Connects as client: plain without `tls`, else a handshake that verifies the server's
    /// certificate against the job's CA and presents ours.
    pub fn client(socket: TcpStream, tls: Option<&PeerTls>) -> io::Result<Connection> {
        let Some(tls) = tls else {
            return Ok(Connection::plain(socket));
        };
        let name = ServerName::try_from(PEER_NAME).expect("a valid DNS name");
        let session = ClientConnection::new(tls.client.clone(), name).map_err(tls_error)?;
        Connection::handshake(socket, session.into())
    }

    /// Accepts as server: plain without `tls`, else a handshake that requires the client's
    /// certificate of the job's CA.
    pub fn server(socket: TcpStream, tls: Option<&PeerTls>) -> io::Result<Connection> {
        let Some(tls) = tls else {
            return Ok(Connection::plain(socket));
        };
        let session = ServerConnection::new(tls.server.clone()).map_err(tls_error)?;
        Connection::handshake(socket, session.into())
    }

    fn handshake(mut socket: TcpStream, mut session: rustls::Connection) -> io::Result<Connection> {
        let timeout = socket.read_timeout()?;
        socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        while session.is_handshaking() {
            session.complete_io(&mut socket)?;
        }
        while session.wants_write() {
            session.write_tls(&mut socket)?;
        }
        socket.set_read_timeout(timeout)?;
        let out = socket.try_clone()?;
        Ok(Connection {
            socket,
            tls: Some(Arc::new(Session {
                state: Mutex::new(session),
                out: Mutex::new(out),
            })),
            incoming: Vec::new(),
            unread: 0..0,
        })
    }

    /// Another handle on the same connection (and TLS session).
    pub fn try_clone(&self) -> io::Result<Connection> {
        Ok(Connection {
            socket: self.socket.try_clone()?,
            tls: self.tls.clone(),
            incoming: Vec::new(),
            unread: 0..0,
        })
    }

    /// The TCP socket underneath.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }
}

impl Session {
    /// Writes every record the session has sealed.
    fn send_sealed(&self, mut state: MutexGuard<'_, rustls::Connection>) -> io::Result<()> {
        if !state.wants_write() {
            return Ok(());
        }
        let mut records = Vec::new();
        while state.wants_write() {
            state.write_tls(&mut records)?;
        }
        let mut out = lock(&self.out);
        drop(state);
        out.write_all(&records)
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(session) = self.tls.clone() else {
            return self.socket.read(buf);
        };
        loop {
            {
                let mut state = lock(&session.state);
                match state.reader().read(buf) {
                    // 0: the peer closed the session cleanly.
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // No plaintext left: only now may the session take more ciphertext (it refuses
                // it while holding plaintext, so feeding a whole socket read at once can fail).
                if self.unread.start < self.unread.end {
                    let mut ciphertext = &self.incoming[self.unread.clone()];
                    let offered = ciphertext.len();
                    state.read_tls(&mut ciphertext)?;
                    self.unread.start += offered - ciphertext.len();
                    state.process_new_packets().map_err(tls_error)?;
                    session.send_sealed(state)?;
                    continue;
                }
            }
            // Wait for ciphertext without holding the session.
            self.incoming.resize(16 << 10, 0);
            let n = self.socket.read(&mut self.incoming)?;
            self.unread = 0..n;
            if n == 0 {
                // The peer closed the socket: `read_tls` of nothing tells the session, which
                // then reports a clean close (after close_notify) or an unexpected end.
                let mut state = lock(&session.state);
                state.read_tls(&mut &[][..])?;
                state.process_new_packets().map_err(tls_error)?;
                return match state.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(session) = &self.tls else {
            return self.socket.write(buf);
        };
        let mut state = lock(&session.state);
        let n = state.writer().write(buf)?;
        session.send_sealed(state)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.tls {
            // Every write already sent what it sealed.
            Some(_) => Ok(()),
            None => self.socket.flush(),
        }
    }
}

/// Shared with the cluster integration tests.
#[cfg(test)]
#[path = "../../tests/support/tls.rs"]
mod test_ca;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    use super::test_ca::TestCa;

    fn test_ca(name: &str) -> TestCa {
        super::test_ca::test_ca(name, PEER_NAME)
    }

    fn tls(ca: &TestCa) -> PeerTls {
        PeerTls::from_pem(ca.ca.as_bytes(), ca.cert.as_bytes(), ca.key.as_bytes()).expect("tls")
    }

    /// Echo server: reads lines and writes them back until the client closes.
    fn serve(listener: TcpListener, tls: PeerTls) -> std::thread::JoinHandle<io::Result<()>> {
        std::thread::spawn(move || {
            let (socket, _) = listener.accept()?;
            let connection = Connection::server(socket, Some(&tls))?;
            let mut reader = io::BufReader::new(connection.try_clone()?);
            let mut writer = connection;
            let mut line = String::new();
            while io::BufRead::read_line(&mut reader, &mut line)? > 0 {
                writer.write_all(line.as_bytes())?;
                line.clear();
            }
            Ok(())
        })
    }

    #[test]
    fn peers_of_one_ca_talk_both_ways_from_two_threads() {
        let ca = test_ca("job-a");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = serve(listener, tls(&ca));
        let socket = TcpStream::connect(addr).expect("connect");
        let client = Connection::client(socket, Some(&tls(&ca))).expect("handshake");
        let mut writer = client.try_clone().expect("clone");
        // Writes from one thread while another reads: the runtime's shape.
        let lines = 2_000;
        let sender = std::thread::spawn(move || {
            for i in 0..lines {
                writer
                    .write_all(format!("line {i} {}\n", "x".repeat(i % 300)).as_bytes())
                    .expect("write");
            }
            writer
                .socket()
                .shutdown(std::net::Shutdown::Write)
                .expect("close");
        });
        let mut reader = io::BufReader::new(client);
        let mut line = String::new();
        for i in 0..lines {
            line.clear();
            io::BufRead::read_line(&mut reader, &mut line).expect("read");
            assert_eq!(line, format!("line {i} {}\n", "x".repeat(i % 300)));
        }
        sender.join().expect("sender");
        let _ = server.join();
    }

    /// The data path's shape: 64 KiB writes one way, as fast as they go, read in 64 KiB
    /// buffers. Many records arrive per socket read; every byte must come out, in order.
    #[test]
    fn a_bulk_stream_arrives_whole_and_in_order() {
        let ca = test_ca("job-a");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server_tls = tls(&ca);
        const BLOCKS: usize = 512;
        const BLOCK: usize = 64 << 10;
        let server = std::thread::spawn(move || -> io::Result<(usize, u64)> {
            let (socket, _) = listener.accept()?;
            let connection = Connection::server(socket, Some(&server_tls))?;
            let mut input = io::BufReader::with_capacity(BLOCK, connection);
            let (mut total, mut checksum, mut buf) = (0usize, 0u64, vec![0u8; BLOCK]);
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    return Ok((total, checksum));
                }
                for byte in &buf[..n] {
                    checksum = checksum.wrapping_mul(31).wrapping_add(u64::from(*byte));
                }
                total += n;
                if total == BLOCKS * BLOCK {
                    return Ok((total, checksum));
                }
            }
        });
        let socket = TcpStream::connect(addr).expect("connect");
        let mut client = Connection::client(socket, Some(&tls(&ca))).expect("handshake");
        let mut expected = 0u64;
        for i in 0..BLOCKS {
            let block: Vec<u8> = (0..BLOCK).map(|j| (i * 7 + j * 13) as u8).collect();
            for byte in &block {
                expected = expected.wrapping_mul(31).wrapping_add(u64::from(*byte));
            }
            client.write_all(&block).expect("write");
        }
        let (total, checksum) = server.join().expect("server thread").expect("server read");
        assert_eq!(total, BLOCKS * BLOCK);
        assert_eq!(checksum, expected, "bytes changed or reordered");
    }

    #[test]
    fn a_peer_of_another_ca_or_without_a_certificate_is_refused_in_the_handshake() {
        let ours = test_ca("job-a");
        let theirs = test_ca("job-b");
        for client_tls in [Some(tls(&theirs)), None] {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = serve(listener, tls(&ours));
            let socket = TcpStream::connect(addr).expect("connect");
            // A client that fails its own handshake (it does not trust the server) is done.
            if let Ok(mut client) = Connection::client(socket, client_tls.as_ref()) {
                // Plain, or a client whose own handshake ended before the server's verdict:
                // the first exchange gets nothing but, for a plain client, the TLS alert the
                // server closes with.
                let _ = client.write_all(b"hello\n");
                let mut got = Vec::new();
                let _ = client.read_to_end(&mut got);
                assert!(is_at_most_an_alert(&got), "the server answered: {got:?}");
            }
            let refused = server.join().expect("server thread");
            assert!(refused.is_err(), "the server accepted the peer");
        }
    }

    /// Nothing, or one TLS alert record (content type 21, 2 bytes of payload).
    pub(crate) fn is_at_most_an_alert(bytes: &[u8]) -> bool {
        bytes.is_empty() || (bytes[0] == 21 && bytes.len() == 7)
    }

    #[test]
    fn bad_files_are_named() {
        let ca = test_ca("job-a");
        let error =
            PeerTls::from_pem(b"nothing", ca.cert.as_bytes(), ca.key.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("tls.ca"), "{error}");
        let other = test_ca("job-b");
        let error = PeerTls::from_pem(ca.ca.as_bytes(), ca.cert.as_bytes(), other.key.as_bytes())
            .unwrap_err();
        assert!(error.to_string().contains("tls.key"), "{error}");
    }
}
