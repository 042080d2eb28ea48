//! Where an attempt restores from: the document's restore source, a newer state of the same
//! job when a JobManager restarted, and the takeover claim that fixes it for this JobManager.

use std::sync::Arc;

use super::DriverOptions;
use crate::checkpoint::{CheckpointCoordinator, RestorePoint, SharedRestore};
use crate::error::{Error, Result};
use crate::runtime::shutdown;
use crate::spec::{JobDocument, RestoreSource};
use crate::storage::{Location, ObjectStore};

/// Tries at most this many surveys and takeover claims in a row before the attempt fails
/// (another JobManager kept writing new ids in between).
const TAKEOVER_TRIES: u32 = 20;

/// Takes the job over (see `checkpoint::coordinator`): claims the id after the newest one in
/// storage and returns the state to restore, decided from the state as of that newest id.
pub(super) fn take_over(
    coordinator: &mut CheckpointCoordinator,
    doc: &JobDocument,
    options: &DriverOptions,
    rt: &tokio::runtime::Handle,
) -> Result<SharedRestore> {
    for _ in 0..TAKEOVER_TRIES {
        let survey = rt.block_on(coordinator.survey())?;
        let restore = initial_restore_point(doc, survey.latest, options, rt)?;
        let state = restore.as_ref().map(RestorePoint::uri);
        let _effect = shutdown::begin()?;
        if rt.block_on(coordinator.claim_takeover(survey.next_id, state))? {
            return Ok(restore.map(Arc::new));
        }
        tracing::info!(
            checkpoint_id = survey.next_id,
            "another JobManager wrote checkpoint id {} first; reading storage again",
            survey.next_id
        );
    }
    Err(Error::CheckpointFailed {
        checkpoint_id: 0,
        reason: format!(
            "could not claim a checkpoint id in {TAKEOVER_TRIES} tries: another JobManager keeps writing new ones"
        ),
    })
}

/// Opens the checkpoint or savepoint at `uri` with the job storage's settings.
pub(super) async fn open_state(job_store: &ObjectStore, uri: &str) -> Result<RestorePoint> {
    let store = job_store.open_related(&Location::parse(uri)?).await?;
    RestorePoint::open(store).await
}

/// Where the first attempt restores from: per the document, except that a JobManager
/// prefers a newer state of the same job (see `DriverOptions`). `latest` is the job's state as
/// of the newest id in its checkpoint storage.
pub(super) fn initial_restore_point(
    doc: &JobDocument,
    latest: Option<RestorePoint>,
    options: &DriverOptions,
    rt: &tokio::runtime::Handle,
) -> Result<Option<RestorePoint>> {
    Ok(match &doc.restore {
        RestoreSource::None => None,
        RestoreSource::Latest => latest,
        RestoreSource::Path(path) => {
            let store = rt.block_on(ObjectStore::open(&Location::parse(path)?, &doc.s3))?;
            // The path may name a claim (the operator picks "the newest `chk-<n>` with
            // `_metadata`"): then the state it names, possibly empty.
            let explicit = rt.block_on(RestorePoint::resolve(store))?;
            let newer = match options.prefer_newer_checkpoint {
                true => latest.filter(|latest| {
                    explicit
                        .as_ref()
                        .is_none_or(|e| latest.metadata.timestamp_ms > e.metadata.timestamp_ms)
                }),
                false => None,
            };
            if let Some(newer) = &newer {
                tracing::info!(configured = %path, newer = %newer.uri(), "a checkpoint newer than the configured restore point exists (the JobManager restarted); restoring from it");
            }
            newer.or(explicit)
        }
    })
}

pub(super) fn check_compatible(point: &RestorePoint, doc: &JobDocument) -> Result<()> {
    if point.metadata.max_parallelism != doc.max_parallelism {
        return Err(Error::spec(
            "maxParallelism",
            format!(
                "is {} but {} was taken with {}; key groups cannot be re-split",
                doc.max_parallelism,
                point.uri(),
                point.metadata.max_parallelism
            ),
        ));
    }
    Ok(())
}
