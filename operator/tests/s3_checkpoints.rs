//! The operator's S3 checkpoint store against a real S3 server: `s3s-fs` serving a temp folder
//! on a loopback port (each top-level directory is a bucket, each object a plain file).
//! Without `s3s-fs` installed the tests fail, saying how to install it
//! (`scripts/install-deps.sh`).

// The S3 test server every crate uses, kept with the storage crate's own tests.
#[path = "../../storage/tests/support/s3.rs"]
mod s3_server;

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use weir_operator::storage::{CheckpointStore, ObjectStores, StoredCheckpoint};
use weir_spec::S3Options;

use s3_server::{ACCESS_KEY, SECRET_KEY};
const BUCKET: &str = "state";
const JOB_ID: &str = "streams-clicks";

/// The shared server with the bucket `state`, and objects written straight to disk (s3s-fs
/// serves a file `root/state/<key>` as `s3://state/<key>`).
struct S3Server(s3_server::S3Server);

impl S3Server {
    fn start() -> S3Server {
        let server = s3_server::S3Server::start();
        server.create_bucket(BUCKET);
        S3Server(server)
    }

    /// What a StreamJob's `spec.job.s3` would say, plus static test credentials (in a cluster
    /// they come from the operator pod's environment or IRSA).
    fn options(&self) -> S3Options {
        self.0.options()
    }

    fn put(&self, key: &str) {
        let path = self.0.bucket_path(BUCKET).join(key);
        std::fs::create_dir_all(path.parent().expect("key has a parent")).expect("mkdir");
        std::fs::write(&path, b"weir").expect("write object");
    }

    fn exists(&self, key: &str) -> bool {
        self.0.bucket_path(BUCKET).join(key).exists()
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[tokio::test]
async fn latest_completed_checkpoint_is_the_newest_with_metadata() {
    let server = S3Server::start();
    server.put(&format!("checkpoints/{JOB_ID}/chk-9/_metadata"));
    server.put(&format!("checkpoints/{JOB_ID}/chk-10/_metadata"));
    server.put(&format!("checkpoints/{JOB_ID}/chk-10/state/op-1/part-0"));
    // In progress: state written, `_metadata` not yet.
    server.put(&format!("checkpoints/{JOB_ID}/chk-11/state/op-1/part-0"));
    server.put("checkpoints/streams-other/chk-99/_metadata");

    let latest = ObjectStores::default()
        .latest_completed_checkpoint(&server.options(), "s3://state/checkpoints", JOB_ID)
        .await
        .expect("lists");

    assert_eq!(
        latest,
        Some(StoredCheckpoint {
            id: 10,
            path: format!("s3://state/checkpoints/{JOB_ID}/chk-10"),
        })
    );
}

#[tokio::test]
async fn a_job_without_checkpoints_has_none() {
    let server = S3Server::start();
    server.put(&format!("checkpoints/{JOB_ID}/chk-1/state/part-0"));

    let latest = ObjectStores::default()
        .latest_completed_checkpoint(&server.options(), "s3://state/checkpoints/", JOB_ID)
        .await
        .expect("lists");

    assert_eq!(latest, None);
}

#[tokio::test]
async fn savepoint_is_complete_only_once_its_metadata_exists() {
    let server = S3Server::start();
    server.put("savepoints/streams-clicks/savepoint-1/_metadata");
    server.put("savepoints/streams-clicks/savepoint-2/state/part-0");
    let store = ObjectStores::default();
    let options = server.options();

    let complete = store
        .has_metadata(&options, "s3://state/savepoints/streams-clicks/savepoint-1")
        .await
        .expect("head");
    let partial = store
        .has_metadata(
            &options,
            "s3://state/savepoints/streams-clicks/savepoint-2/",
        )
        .await
        .expect("head");

    assert_eq!((complete, partial), (Some(true), Some(false)));
    assert!(store.can_list("s3://state/checkpoints"));
}

#[tokio::test]
async fn deleting_a_savepoint_removes_every_object_under_it_and_nothing_else() {
    let server = S3Server::start();
    for file in ["_metadata", "state/op-1/part-0", "state/op-2/part-0"] {
        server.put(&format!("savepoints/{JOB_ID}/savepoint-1/{file}"));
    }
    server.put(&format!("savepoints/{JOB_ID}/savepoint-10/_metadata"));
    let store = ObjectStores::default();

    store
        .delete_dir(
            &server.options(),
            &format!("s3://state/savepoints/{JOB_ID}/savepoint-1"),
        )
        .await
        .expect("deletes");
    // Deleting what is already gone is fine (a retried cleanup).
    store
        .delete_dir(
            &server.options(),
            &format!("s3://state/savepoints/{JOB_ID}/savepoint-1"),
        )
        .await
        .expect("idempotent");

    assert!(!server.exists(&format!("savepoints/{JOB_ID}/savepoint-1/_metadata")));
    assert!(!server.exists(&format!(
        "savepoints/{JOB_ID}/savepoint-1/state/op-2/part-0"
    )));
    assert!(server.exists(&format!("savepoints/{JOB_ID}/savepoint-10/_metadata")));
}

#[tokio::test]
async fn refuses_to_delete_a_bucket_root() {
    let server = S3Server::start();
    server.put("keep/me");

    let err = ObjectStores::default()
        .delete_dir(&server.options(), "s3://state")
        .await
        .expect_err("refused");

    assert!(err.to_string().contains("bucket root"), "{err}");
    assert!(server.exists("keep/me"));
}

#[tokio::test]
async fn unreachable_s3_is_an_error_naming_the_location() {
    let options = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{}", free_port())),
        region: Some("us-east-1".into()),
        force_path_style: true,
        instance_metadata: false,
        static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    };

    let err = ObjectStores::default()
        .latest_completed_checkpoint(&options, "s3://state/checkpoints", JOB_ID)
        .await
        .expect_err("connection refused");

    let message = err.to_string();
    assert!(
        message.contains("s3://state/checkpoints/streams-clicks"),
        "{message}"
    );
    assert!(err.is_transient());
}

/// Off AWS (an endpoint is set) a pod without credentials must get a prompt, one-line error,
/// not one that waited on EC2 instance metadata. Without the credential variables set this
/// fails at the credential chain; with them, at the closed port: quickly either way.
#[tokio::test]
async fn custom_endpoint_without_credentials_fails_fast_on_one_line_without_instance_metadata() {
    let options = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{}", free_port())),
        region: Some("us-east-1".into()),
        force_path_style: true,
        instance_metadata: false,
        static_credentials: None,
    };

    let started = Instant::now();
    let err = ObjectStores::default()
        .latest_completed_checkpoint(&options, "s3://state/checkpoints", JOB_ID)
        .await
        .expect_err("no credentials or nothing listening");

    let message = err.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}: {message}",
        started.elapsed()
    );
    assert!(!message.contains('\n'), "{message}");
    if ![
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
    {
        assert!(
            message.contains("no S3 credentials configured"),
            "{message}"
        );
    }
    for imds in ["IMDS", "Ec2InstanceMetadata", "169.254.169.254"] {
        assert!(!message.contains(imds), "{message}");
    }
}
