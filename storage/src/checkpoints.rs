//! The questions the worker and the operator both ask of a job's checkpoint folder (layout in
//! [`weir_spec::layout`]): which `chk-<n>` directories exist, and which of them are complete.
//! A directory is a checkpoint (or a claim naming one) exactly when its `_metadata` exists:
//! the coordinator writes it last.

use std::collections::BTreeMap;

use weir_spec::layout;

use crate::{ObjectStore, Result};

/// Every `chk-<n>` directory under a job's folder, oldest first, with whether it has
/// `_metadata` (`false`: an attempt that was aborted or is still being written).
///
/// One recursive listing of the `chk-` prefix: it never reads `shared/` (incremental state),
/// and a checkpoint directory holds one small object per subtask and operator.
pub async fn list(job_store: &ObjectStore) -> Result<Vec<(u64, bool)>> {
    let mut found: BTreeMap<u64, bool> = BTreeMap::new();
    for object in job_store.list(layout::checkpoint_dir_prefix()).await? {
        let Some((dir, rest)) = object.key.split_once('/') else {
            continue;
        };
        let Some(id) = layout::parse_checkpoint_dir(dir) else {
            continue;
        };
        let complete = found.entry(id).or_insert(false);
        *complete |= rest == layout::METADATA_OBJECT;
    }
    Ok(found.into_iter().collect())
}

/// The id of the newest complete `chk-<n>`; `None` when the job has none (yet).
pub async fn latest_completed(job_store: &ObjectStore) -> Result<Option<u64>> {
    Ok(list(job_store)
        .await?
        .into_iter()
        .rev()
        .find(|(_, complete)| *complete)
        .map(|(id, _)| id))
}

/// Whether the checkpoint or savepoint directory `dir_store` is rooted at is complete.
pub async fn is_complete(dir_store: &ObjectStore) -> Result<bool> {
    Ok(dir_store.head(layout::METADATA_OBJECT).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, S3Options};
    use bytes::Bytes;

    #[tokio::test]
    async fn only_directories_with_metadata_are_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = Location::parse(dir.path().to_str().expect("utf8")).expect("parse");
        let job = ObjectStore::open(&location, &S3Options::default())
            .await
            .expect("open");
        assert_eq!(latest_completed(&job).await.expect("list"), None);
        for key in [
            "chk-2/_metadata",
            "chk-2/map-0",
            "chk-10/_metadata",
            "chk-11/map-0",
            "shared/b-1/000012.sst",
            "chk-x/_metadata",
        ] {
            job.put(key, Bytes::from_static(b"x")).await.expect("put");
        }
        assert_eq!(
            list(&job).await.expect("list"),
            vec![(2, true), (10, true), (11, false)]
        );
        assert_eq!(latest_completed(&job).await.expect("list"), Some(10));
        assert!(is_complete(&job.child("chk-10")).await.expect("head"));
        assert!(!is_complete(&job.child("chk-11")).await.expect("head"));
        assert!(!is_complete(&job.child("chk-99")).await.expect("head"));
    }
}
