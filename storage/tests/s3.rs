//! `weir_storage::ObjectStore` against a real S3 server (s3s-fs, see `support/s3.rs`).

// Inline so this test only needs `support/s3.rs`, whatever else `support/` holds.
mod support {
    pub mod s3;
}

use std::sync::Arc;

use bytes::Bytes;
use support::s3::S3Server;
use tokio::sync::Semaphore;
use weir_storage::{Location, ObjectMeta, ObjectStore, S3Options, StorageError};

const BUCKET: &str = "weir-bucket";

async fn open(server: &S3Server, uri: &str) -> ObjectStore {
    let location = Location::parse(uri).expect("parse location");
    ObjectStore::open(&location, &server.options())
        .await
        .expect("open store")
}

fn keys(metas: &[ObjectMeta]) -> Vec<&str> {
    metas.iter().map(|m| m.key.as_str()).collect()
}

/// Puts `n` small objects `{dir}/obj-{i:05}` with bounded concurrency.
async fn put_many(store: &ObjectStore, dir: &str, n: usize) {
    let limit = Arc::new(Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = store.clone();
        let permit = Arc::clone(&limit).acquire_owned().await.expect("semaphore");
        let key = format!("{dir}/obj-{i:05}");
        tasks.spawn(async move {
            store
                .put(&key, Bytes::from(format!("value {i}")))
                .await
                .expect("put");
            drop(permit);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("put task");
    }
}

#[tokio::test]
async fn s3_put_get_head_range() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let store = open(&server, &format!("s3://{BUCKET}/jobs/j1")).await;

    store
        .put("a/b.txt", Bytes::from_static(b"0123456789"))
        .await
        .expect("put");
    assert_eq!(store.get("a/b.txt").await.expect("get"), "0123456789");
    assert_eq!(store.head("a/b.txt").await.expect("head"), Some(10));
    assert_eq!(store.head("a/missing").await.expect("head missing"), None);
    // The object is a plain file under the bucket, at root prefix + key.
    assert_eq!(
        std::fs::read(server.bucket_path(BUCKET).join("jobs/j1/a/b.txt")).expect("on disk"),
        b"0123456789"
    );
    assert_eq!(
        store.uri("a/b.txt"),
        format!("s3://{BUCKET}/jobs/j1/a/b.txt")
    );

    assert_eq!(
        store.get_range("a/b.txt", 2, 3).await.expect("range"),
        "234"
    );
    assert_eq!(
        store.get_range("a/b.txt", 8, 100).await.expect("tail"),
        "89"
    );
    assert!(
        store
            .get_range("a/b.txt", 10, 4)
            .await
            .expect("at eof")
            .is_empty()
    );
    assert!(
        store
            .get_range("a/b.txt", 99, 4)
            .await
            .expect("past eof")
            .is_empty()
    );
    assert!(
        store
            .get_range("a/b.txt", 0, 0)
            .await
            .expect("zero len")
            .is_empty()
    );

    // Overwrite, and empty objects.
    store
        .put("a/b.txt", Bytes::from_static(b"new"))
        .await
        .expect("overwrite");
    assert_eq!(store.get("a/b.txt").await.expect("get"), "new");
    store.put("empty", Bytes::new()).await.expect("put empty");
    assert_eq!(store.head("empty").await.expect("head empty"), Some(0));
    assert!(store.get("empty").await.expect("get empty").is_empty());
    assert!(
        store
            .get_range("empty", 0, 10)
            .await
            .expect("range empty")
            .is_empty()
    );

    store.delete("a/b.txt").await.expect("delete");
    assert_eq!(store.head("a/b.txt").await.expect("head deleted"), None);
    store.delete("a/b.txt").await.expect("delete missing is ok");
}

#[tokio::test]
async fn s3_not_found_mapping() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let store = open(&server, &format!("s3://{BUCKET}")).await;

    match store.get("nope/x").await {
        Err(StorageError::NotFound { uri }) => assert_eq!(uri, format!("s3://{BUCKET}/nope/x")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        store.get_range("nope/x", 0, 10).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_range("nope/x", 0, 0).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.rename("nope/x", "y").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.get("../escape").await,
        Err(StorageError::InvalidUri { .. })
    ));

    // A missing bucket is a configuration error, never "no objects". (Real S3 also answers
    // GetObject with NoSuchBucket, which `get` reports as an S3 error; s3s-fs answers NoSuchKey
    // there, so only the listing is checked here.)
    let wrong = open(&server, "s3://no-such-bucket/p").await;
    match wrong.list("").await {
        Err(StorageError::S3 { op, uri, message }) => {
            assert_eq!(op, "ListObjectsV2");
            assert_eq!(uri, "s3://no-such-bucket/p");
            assert!(message.contains("NoSuchBucket"), "{message}");
        }
        other => panic!("expected S3 error for a missing bucket, got {other:?}"),
    }
}

#[tokio::test]
async fn s3_list_paginates_and_respects_root() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let store = open(&server, &format!("s3://{BUCKET}/root")).await;
    // More than one ListObjectsV2 page (s3s-fs returns at most 1000 keys per page).
    put_many(&store, "many", 1205).await;
    for key in ["chk-1/meta", "chk-10/meta", "chk-2.meta", "top"] {
        store
            .put(key, Bytes::from(key.as_bytes().to_vec()))
            .await
            .expect("put");
    }
    // Siblings of the root must not leak into its listings.
    let bucket = open(&server, &format!("s3://{BUCKET}")).await;
    bucket
        .put("root2/x", Bytes::from_static(b"x"))
        .await
        .expect("put sibling");
    bucket
        .put("rootfile", Bytes::from_static(b"x"))
        .await
        .expect("put sibling");

    let all = store.list("").await.expect("list all");
    assert_eq!(all.len(), 1205 + 4);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    assert_eq!(all[0].key, "chk-1/meta");

    let many = store.list("many/").await.expect("list many");
    assert_eq!(many.len(), 1205);
    assert_eq!(many[0].key, "many/obj-00000");
    assert_eq!(many[1204].key, "many/obj-01204");
    assert_eq!(many[7].size, "value 7".len() as u64);

    assert_eq!(
        keys(&store.list("chk-").await.expect("list chk-")),
        vec!["chk-1/meta", "chk-10/meta", "chk-2.meta"]
    );
    assert_eq!(
        keys(&store.list("chk-1/").await.expect("list chk-1/")),
        vec!["chk-1/meta"]
    );
    assert!(store.list("zzz").await.expect("list none").is_empty());

    // A child store shares the client and sees shorter keys.
    let child = store.child("chk-1");
    assert_eq!(child.location().uri(), format!("s3://{BUCKET}/root/chk-1"));
    assert_eq!(
        keys(&child.list("").await.expect("child list")),
        vec!["meta"]
    );
    assert_eq!(child.get("meta").await.expect("child get"), "chk-1/meta");
}

#[tokio::test]
async fn s3_delete_prefix_and_rename() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let store = open(&server, &format!("s3://{BUCKET}/r")).await;
    // More than one DeleteObjects batch (1000 keys each).
    put_many(&store, "chk-5", 1010).await;
    for key in ["chk-5.meta", "chk-50/a", "keep/me"] {
        store.put(key, Bytes::from_static(b"z")).await.expect("put");
    }

    store.delete_prefix("chk-5").await.expect("delete_prefix");
    // Folder semantics: only chk-5/... is gone.
    assert_eq!(
        keys(&store.list("").await.expect("list")),
        vec!["chk-5.meta", "chk-50/a", "keep/me"]
    );
    store
        .delete_prefix("missing/")
        .await
        .expect("missing prefix is ok");

    store.rename("keep/me", "moved/here").await.expect("rename");
    assert_eq!(store.head("keep/me").await.expect("head old"), None);
    assert_eq!(store.get("moved/here").await.expect("get new"), "z");
    // Keys that need URL encoding in the copy source.
    store
        .put("odd name+ü/x y", Bytes::from_static(b"odd"))
        .await
        .expect("put odd");
    store
        .rename("odd name+ü/x y", "plain")
        .await
        .expect("rename odd key");
    assert_eq!(store.get("plain").await.expect("get renamed"), "odd");

    store.delete_prefix("").await.expect("delete whole root");
    assert!(store.list("").await.expect("list").is_empty());
}

#[tokio::test]
async fn s3_put_file_small_and_multipart() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let store = open(&server, &format!("s3://{BUCKET}")).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let small = dir.path().join("small.bin");
    std::fs::write(&small, b"small file").expect("write small");
    store
        .put_file("files/small", &small)
        .await
        .expect("put_file small");
    assert_eq!(store.get("files/small").await.expect("get"), "small file");

    // Above the 64 MiB multipart threshold, and not a multiple of the part size.
    let size = weir_storage::MULTIPART_THRESHOLD as usize + 3 * 1024 * 1024 + 17;
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, &data).expect("write big");
    store
        .put_file("files/big", &big)
        .await
        .expect("put_file multipart");
    assert_eq!(
        store.head("files/big").await.expect("head"),
        Some(size as u64)
    );
    let back = store.get("files/big").await.expect("get big");
    assert!(back == data, "multipart round trip differs");
    let mid = 16 * 1024 * 1024 - 5;
    assert_eq!(
        store
            .get_range("files/big", mid as u64, 10)
            .await
            .expect("range"),
        &data[mid..mid + 10]
    );

    match store
        .put_file("files/none", &dir.path().join("missing"))
        .await
    {
        Err(StorageError::Io { uri, .. }) => assert!(uri.ends_with("/missing"), "{uri}"),
        other => panic!("expected Io error, got {other:?}"),
    }
}

#[tokio::test]
async fn s3_unreachable_endpoint_names_uri() {
    let mut server = S3Server::start();
    server.create_bucket(BUCKET);
    let store = open(&server, &format!("s3://{BUCKET}/p")).await;
    store
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect("put while up");

    server.stop();
    let err = store.get("k").await.expect_err("server is down");
    assert!(
        matches!(
            err,
            StorageError::S3 {
                op: "GetObject",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    println!("unreachable endpoint error: {message}");
    assert!(message.contains(&format!("s3://{BUCKET}/p/k")), "{message}");
    assert!(
        matches!(store.list("").await, Err(StorageError::S3 { .. })),
        "list while down"
    );

    // Same port and data after a restart; the existing client reconnects.
    server.restart();
    assert_eq!(store.get("k").await.expect("get after restart"), "v");
}

#[tokio::test]
async fn s3_options_from_document() {
    let doc = r#"{"endpoint":"http://127.0.0.1:9000","region":"eu-west-1","forcePathStyle":true}"#;
    let opts: S3Options = serde_json::from_str(doc).expect("deserialize");
    assert_eq!(opts.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(opts.region.as_deref(), Some("eu-west-1"));
    assert!(opts.force_path_style);
    assert_eq!(opts.static_credentials, None);
    assert_eq!(
        serde_json::from_str::<S3Options>("{}").expect("empty"),
        S3Options::default()
    );
    assert!(serde_json::from_str::<S3Options>(r#"{"staticCredentials":["a","b"]}"#).is_err());
}

/// Checkpoint fencing rests on this: `If-None-Match: *` makes PutObject create-only, and the
/// server (s3s-fs here, AWS S3 and MinIO in production) answers 412 when the key exists.
#[tokio::test]
async fn s3_put_if_absent_creates_once_and_never_replaces() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let store = open(&server, &format!("s3://{BUCKET}/checkpoints/job")).await;

    let first = store.put_if_absent("chk-7/_metadata", Bytes::from_static(b"first"));
    assert!(first.await.expect("create"), "the key was free");
    let second = store.put_if_absent("chk-7/_metadata", Bytes::from_static(b"second"));
    assert!(!second.await.expect("second create"), "the key exists");
    assert_eq!(store.get("chk-7/_metadata").await.expect("get"), "first");

    // Also when the existing object was written without a condition.
    store
        .put("chk-8/_metadata", Bytes::from_static(b"plain"))
        .await
        .expect("put");
    let over = store.put_if_absent("chk-8/_metadata", Bytes::from_static(b"other"));
    assert!(!over.await.expect("create over a plain put"));
    assert_eq!(store.get("chk-8/_metadata").await.expect("get"), "plain");
}
