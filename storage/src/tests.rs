//! `ObjectStore` contract tests on a local folder, plus the key rules both backends share.

use std::fs;
use std::path::Path;

use super::*;

#[test]
fn key_rules() {
    use KeyKind::{Object, Prefix};
    assert!(key_problem("a/b.txt", Object).is_none());
    assert!(key_problem("", Object).is_some());
    assert!(key_problem("", Prefix).is_none());
    assert!(key_problem("chk-", Prefix).is_none());
    assert!(key_problem("dir/", Prefix).is_none());
    assert!(key_problem("dir/", Object).is_some());
    for bad in ["../x", "a/../b", "a/./b", "/abs", "a//b", ".."] {
        assert!(key_problem(bad, Object).is_some(), "{bad}");
    }
    assert!(key_problem("a/../b", Prefix).is_some());
}

async fn local_store() -> (tempfile::TempDir, ObjectStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = Location::parse(dir.path().to_str().expect("utf8")).expect("parse");
    let store = ObjectStore::open(&loc, &S3Options::default())
        .await
        .expect("open");
    (dir, store)
}

/// Every file below `dir`, relative, including temp files (which `list` hides).
fn all_files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn local_put_get_head() {
    let (dir, store) = local_store().await;
    store
        .put("a/b/c.bin", Bytes::from_static(b"hello"))
        .await
        .expect("put");
    assert_eq!(store.get("a/b/c.bin").await.expect("get"), "hello");
    assert_eq!(store.head("a/b/c.bin").await.expect("head"), Some(5));
    assert_eq!(store.head("a/b").await.expect("head dir"), None);
    assert_eq!(store.head("nope").await.expect("head missing"), None);
    // Overwrite is atomic and leaves no temp files behind.
    store
        .put("a/b/c.bin", Bytes::from_static(b"bye"))
        .await
        .expect("overwrite");
    assert_eq!(store.get("a/b/c.bin").await.expect("get"), "bye");
    assert_eq!(all_files(dir.path()), vec!["a/b/c.bin".to_string()]);
    assert_eq!(
        store.uri("a/b/c.bin"),
        format!("file://{}/a/b/c.bin", dir.path().display())
    );
}

#[tokio::test]
async fn local_put_if_absent_creates_once_and_never_replaces() {
    let (dir, store) = local_store().await;
    let first = store.put_if_absent("chk-1/_metadata", Bytes::from_static(b"mine"));
    assert!(first.await.expect("first create"));
    let second = store.put_if_absent("chk-1/_metadata", Bytes::from_static(b"theirs"));
    assert!(!second.await.expect("second create"), "the key exists");
    assert_eq!(store.get("chk-1/_metadata").await.expect("get"), "mine");
    assert_eq!(all_files(dir.path()), vec!["chk-1/_metadata".to_string()]);

    // Many writers at once: exactly one creates the key.
    let racers = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_if_absent("chk-2/_metadata", Bytes::from(format!("writer {i}")))
                .await
                .expect("create")
        })
    });
    let mut created = 0;
    for racer in racers {
        created += usize::from(racer.await.expect("join"));
    }
    assert_eq!(created, 1);
}

#[tokio::test]
async fn local_not_found_and_invalid_keys() {
    let (_dir, store) = local_store().await;
    store
        .put("file", Bytes::from_static(b"x"))
        .await
        .expect("put");
    assert!(matches!(
        store.get("missing").await,
        Err(StorageError::NotFound { .. })
    ));
    // A key "below" a plain file is missing too, not an I/O error.
    assert!(matches!(
        store.get("file/below").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_range("missing", 0, 4).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.rename("missing", "other").await,
        Err(StorageError::NotFound { .. })
    ));
    store.delete("missing").await.expect("delete missing is ok");
    store
        .delete_prefix("missing-dir")
        .await
        .expect("delete_prefix missing is ok");
    for bad in ["../escape", "a/../../b", "/abs", ""] {
        assert!(
            matches!(
                store.put(bad, Bytes::new()).await,
                Err(StorageError::InvalidUri { .. })
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        store.list("../").await,
        Err(StorageError::InvalidUri { .. })
    ));
    assert!(matches!(
        store.put("d/.tmp-x", Bytes::new()).await,
        Err(StorageError::InvalidUri { .. })
    ));
}

#[tokio::test]
async fn local_get_range() {
    let (_dir, store) = local_store().await;
    store
        .put("r", Bytes::from_static(b"0123456789"))
        .await
        .expect("put");
    assert_eq!(store.get_range("r", 2, 3).await.expect("range"), "234");
    assert_eq!(store.get_range("r", 8, 100).await.expect("tail"), "89");
    assert!(store.get_range("r", 10, 5).await.expect("eof").is_empty());
    assert!(store.get_range("r", 50, 5).await.expect("past").is_empty());
    assert!(store.get_range("r", 0, 0).await.expect("zero").is_empty());
}

#[tokio::test]
async fn local_list_prefix_semantics() {
    let (dir, store) = local_store().await;
    for key in [
        "chk-1/meta",
        "chk-1/state/part-0",
        "chk-2.meta",
        "chk-10/meta",
        "other/x",
        "top",
    ] {
        store
            .put(key, Bytes::from(key.as_bytes().to_vec()))
            .await
            .expect("put");
    }
    // A stray temp file of an in-flight put must not be listed.
    fs::write(dir.path().join("chk-1/.tmp-123-0"), b"partial").expect("temp");
    let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("").await.expect("list all")),
        vec![
            "chk-1/meta",
            "chk-1/state/part-0",
            "chk-10/meta",
            "chk-2.meta",
            "other/x",
            "top"
        ]
    );
    assert_eq!(
        keys(store.list("chk-1").await.expect("list")),
        vec!["chk-1/meta", "chk-1/state/part-0", "chk-10/meta"]
    );
    assert_eq!(
        keys(store.list("chk-1/").await.expect("list dir")),
        vec!["chk-1/meta", "chk-1/state/part-0"]
    );
    assert_eq!(
        keys(store.list("chk-1/state/pa").await.expect("list deep")),
        vec!["chk-1/state/part-0"]
    );
    assert!(store.list("nothing/").await.expect("empty").is_empty());
    let sized = store.list("top").await.expect("list top");
    assert_eq!(
        sized,
        vec![ObjectMeta {
            key: "top".into(),
            size: 3
        }]
    );
    // Children see the same objects with shorter keys.
    let child = store.child("chk-1");
    assert_eq!(
        keys(child.list("").await.expect("child list")),
        vec!["meta", "state/part-0"]
    );
    assert_eq!(child.get("meta").await.expect("child get"), "chk-1/meta");
}

#[tokio::test]
async fn local_rename_and_delete_prefix() {
    let (dir, store) = local_store().await;
    store
        .put("a/x", Bytes::from_static(b"1"))
        .await
        .expect("put");
    store.rename("a/x", "b/c/y").await.expect("rename");
    assert_eq!(store.head("a/x").await.expect("head"), None);
    assert_eq!(store.get("b/c/y").await.expect("get"), "1");

    for key in ["chk-5/a", "chk-5/deep/b", "chk-50/a", "chk-5.meta"] {
        store.put(key, Bytes::from_static(b"z")).await.expect("put");
    }
    store.delete_prefix("chk-5").await.expect("delete_prefix");
    let keys: Vec<String> = store
        .list("")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    // Folder semantics: chk-50/ and chk-5.meta survive.
    assert_eq!(keys, vec!["b/c/y", "chk-5.meta", "chk-50/a"]);
    store.delete("chk-5.meta").await.expect("delete");
    store.delete_prefix("").await.expect("delete all");
    assert!(store.list("").await.expect("list").is_empty());
    assert!(dir.path().is_dir(), "root folder itself is kept");
}

#[tokio::test]
async fn local_put_file() {
    let (dir, store) = local_store().await;
    let src = dir.path().join("source.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&src, &data).expect("write source");
    store
        .put_file("out/copy.bin", &src)
        .await
        .expect("put_file");
    assert_eq!(store.get("out/copy.bin").await.expect("get"), data);
    match store
        .put_file("out/none.bin", &dir.path().join("missing"))
        .await
    {
        Err(StorageError::Io { uri, .. }) => assert!(uri.ends_with("/missing"), "{uri}"),
        other => panic!("expected Io error, got {other:?}"),
    }
    assert_eq!(
        all_files(&dir.path().join("out")),
        vec!["copy.bin".to_string()]
    );
}
