//! A real S3 server for integration tests: `s3s-fs` serving a temp folder on a loopback port.
//!
//! Each top-level directory of the served root is a bucket and each object is a plain file at
//! `root/bucket/key`, which lets tests inspect or corrupt objects directly.
//! `scripts/test.sh` installs the binary (`cargo install s3s-fs --features binary`).

// Shared by several test crates; each uses only part of it.
#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_spec::S3Options;

pub const ACCESS_KEY: &str = "weir-test";
pub const SECRET_KEY: &str = "weir-test-secret";
pub const REGION: &str = "us-east-1";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A real S3 server (s3s-fs) on a free loopback port, serving a temp folder; killed on drop.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`. An IP endpoint also makes the SDK use path-style requests.
    pub endpoint: String,
    /// The served folder; each top-level directory is a bucket.
    pub root: tempfile::TempDir,
    /// Server output lives outside `root` so it never shows up as a bucket.
    logs: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    /// Incremented per (re)start so each run keeps its own log file.
    runs: u32,
}

impl S3Server {
    /// Starts s3s-fs on a free port and waits (up to 10 s) until it accepts connections.
    /// Panics with instructions when the binary is not installed.
    pub fn start() -> S3Server {
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "s3s-fs not found on PATH, in $CARGO_HOME/bin or in ~/.cargo/bin; \
                 run scripts/test.sh, which installs s3s-fs \
                 (or: cargo install s3s-fs@0.14.1 --features binary --locked)"
            )
        });
        let root = tempfile::Builder::new()
            .prefix("weir-s3-root-")
            .tempdir()
            .expect("create temp dir for the S3 root");
        let logs = tempfile::Builder::new()
            .prefix("weir-s3-logs-")
            .tempdir()
            .expect("create temp dir for S3 server logs");
        let port = free_port();
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            logs,
            child: None,
            port,
            binary,
            runs: 0,
        };
        server.spawn();
        server
    }

    /// Creates a bucket (s3s-fs treats every top-level directory of its root as one).
    pub fn create_bucket(&self, name: &str) {
        fs::create_dir_all(self.bucket_path(name))
            .unwrap_or_else(|e| panic!("create bucket directory {name:?}: {e}"));
    }

    /// SIGKILLs the server (for outage tests). Data on disk is kept for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel but never
    /// answered, like a hung storage endpoint. `resume` thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the S3 server runs");
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} the S3 server");
    }

    /// Starts the server again on the same port and root (stopping it first if running).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Options for `ObjectStore::open` in-process.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some(REGION.to_string()),
            force_path_style: true,
            instance_metadata: false,
            static_credentials: Some((ACCESS_KEY.to_string(), SECRET_KEY.to_string())),
        }
    }

    /// Environment for child processes (workers) so the standard AWS chain finds this server.
    /// IMDS is disabled so nothing stalls probing for EC2 metadata.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Where the objects of `bucket` live on disk: object `key` is the file `bucket_path/key`.
    pub fn bucket_path(&self, bucket: &str) -> PathBuf {
        self.root.path().join(bucket)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log_path = self.logs.path().join(format!("s3s-fs-{}.log", self.runs));
        let log = fs::File::create(&log_path).expect("create S3 server log file");
        let log_err = log.try_clone().expect("clone S3 server log file handle");
        let child = Command::new(&self.binary)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready(&log_path);
    }

    fn wait_ready(&mut self, log_path: &Path) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                self.child = None;
                panic!(
                    "s3s-fs exited during startup ({status}) on port {}; log:\n{}",
                    self.port,
                    fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "s3s-fs did not accept connections on {addr} within {STARTUP_TIMEOUT:?}; log:\n{}",
                    fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // `stop` ignores every error, so dropping never panics (not even during unwinding).
        self.stop();
    }
}

/// A port that was free a moment ago: bind port 0, read it, release it. Another process could
/// grab it in between, which is rare enough for tests.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port to find a free one")
}

fn find_binary() -> Option<PathBuf> {
    let name = "s3s-fs";
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    let cargo_home =
        std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin").join(name));
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    on_path
        .chain(cargo_home)
        .chain(home)
        .find(|candidate| candidate.is_file())
}
