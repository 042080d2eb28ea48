//! Named fault points: the narrow windows of the checkpoint, commit, savepoint and restore
//! protocol where a crash must still leave the output exactly-once. A test arms one in the
//! environment of a process it spawns, and that process dies right there, as abruptly as a
//! SIGKILL would (no destructor runs, nothing is flushed):
//!
//! ```text
//! WEIR_FAULT_POINTS=checkpoint-after-metadata                 the first time it is reached
//! WEIR_FAULT_POINTS=file-sink-published-part@3                the third time
//! WEIR_FAULT_POINTS=restore-state-downloaded@2,sink-notified-before-commit
//! ```
//!
//! Random kill timing reaches these windows only by luck; a named point reaches each one on
//! every run, so a regression in one fails its test every time.
//!
//! A process that is restarted with the same environment (a container in a pod) would die at
//! the same point again and again. With `WEIR_FAULT_POINTS_FIRED_DIR=<dir>` (a directory that
//! outlives the process: a pod's `emptyDir`) each point fires once: it leaves a file named
//! after itself there before aborting, and a process finding that file does not arm it.
//!
//! The points of the worker and of the operator are listed here, in the crate both share, so
//! the tests that arm them and the binaries that reach them read one list.
//!
//! Compiled in only with the `fault-points` feature (of this crate; `weir` and `weir-operator`
//! forward theirs). The workspace build (every test and CI run) has it through the `weir-e2e`
//! crate; the release images build `-p weir --bin weir-worker` and `--bin weir-operator`
//! without it, where [`hit`] compiles to nothing and an armed variable is refused at start-up
//! (a test must never believe it crashed a process that cannot crash).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

/// The variable that arms fault points.
pub const VARIABLE: &str = "WEIR_FAULT_POINTS";

/// The variable naming a directory where fired points leave a file, so each fires once
/// across restarts of a process that shares that directory.
pub const FIRED_DIR_VARIABLE: &str = "WEIR_FAULT_POINTS_FIRED_DIR";

/// A place in the protocol where a test can make the process die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Every task acknowledged (its state is in storage); `_metadata` not written yet.
    CheckpointBeforeMetadata,
    /// `_metadata` written (the checkpoint exists); no task told, so no sink committed.
    CheckpointAfterMetadata,
    /// A stop-with-savepoint's savepoint is complete; sources not stopped, sinks not told.
    SavepointBeforeStop,
    /// A sink was told its checkpoint completed; it has not committed anything yet.
    SinkNotifiedBeforeCommit,
    /// The file sink moved one more part from `_pending/` to the output (hit once per part).
    FileSinkPublishedPart,
    /// Keyed state of one restored state handle is downloaded, not loaded (once per handle).
    RestoreStateDownloaded,
    /// The Kafka sink is about to open the first transaction of a completed checkpoint's
    /// staged records.
    KafkaSinkBeforeTransaction,
    /// The Kafka sink's transaction holds a batch's records (flushed to the broker), not
    /// committed.
    KafkaSinkInTransaction,
    /// A Kafka transaction of a completed checkpoint committed; its staged object is not
    /// deleted yet, and no later checkpoint records the batch as done.
    KafkaSinkCommitted,
    /// Retention deleted one more shared state file of an expired incremental checkpoint (once
    /// per file), after its `_metadata`.
    RetentionDeletedSharedFile,
    /// Operator: a stop-with-savepoint (rescale or upgrade) completed; the operator has not
    /// written that to the StreamJob's status, nor touched the Deployments.
    OperatorSavepointObserved,
    /// Operator: the status names the savepoint as the restore point and the step as
    /// redeploying; the Deployments are not updated yet.
    OperatorRedeployRecorded,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 12] = [
        FaultPoint::CheckpointBeforeMetadata,
        FaultPoint::CheckpointAfterMetadata,
        FaultPoint::SavepointBeforeStop,
        FaultPoint::SinkNotifiedBeforeCommit,
        FaultPoint::FileSinkPublishedPart,
        FaultPoint::RestoreStateDownloaded,
        FaultPoint::KafkaSinkBeforeTransaction,
        FaultPoint::KafkaSinkInTransaction,
        FaultPoint::KafkaSinkCommitted,
        FaultPoint::RetentionDeletedSharedFile,
        FaultPoint::OperatorSavepointObserved,
        FaultPoint::OperatorRedeployRecorded,
    ];

    /// The name used in [`VARIABLE`].
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::CheckpointBeforeMetadata => "checkpoint-before-metadata",
            FaultPoint::CheckpointAfterMetadata => "checkpoint-after-metadata",
            FaultPoint::SavepointBeforeStop => "savepoint-before-stop",
            FaultPoint::SinkNotifiedBeforeCommit => "sink-notified-before-commit",
            FaultPoint::FileSinkPublishedPart => "file-sink-published-part",
            FaultPoint::RestoreStateDownloaded => "restore-state-downloaded",
            FaultPoint::KafkaSinkBeforeTransaction => "kafka-sink-before-transaction",
            FaultPoint::KafkaSinkInTransaction => "kafka-sink-in-transaction",
            FaultPoint::KafkaSinkCommitted => "kafka-sink-committed",
            FaultPoint::RetentionDeletedSharedFile => "retention-deleted-shared-file",
            FaultPoint::OperatorSavepointObserved => "operator-savepoint-observed",
            FaultPoint::OperatorRedeployRecorded => "operator-redeploy-recorded",
        }
    }

    fn parse(name: &str) -> Option<FaultPoint> {
        FaultPoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One armed point: the process dies at its `on_hit`-th hit.
#[derive(Debug)]
struct Armed {
    point: FaultPoint,
    on_hit: u64,
    hits: AtomicU64,
    /// Where to leave the file that keeps this point from firing again after a restart.
    fired_marker: Option<PathBuf>,
}

static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();

/// Parses `value` of [`VARIABLE`]: comma-separated `name` or `name@n` (n >= 1).
fn parse(value: &str) -> Result<Vec<Armed>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, on_hit) = match entry.split_once('@') {
                Some((name, n)) => match n.parse::<u64>() {
                    Ok(n) if n >= 1 => (name, n),
                    _ => {
                        return Err(format!(
                            "{entry:?}: the count after '@' must be a number >= 1"
                        ));
                    }
                },
                None => (entry, 1),
            };
            let point = FaultPoint::parse(name).ok_or_else(|| {
                let known: Vec<_> = FaultPoint::ALL.iter().map(|p| p.name()).collect();
                format!("unknown fault point {name:?}; known: {}", known.join(", "))
            })?;
            Ok(Armed {
                point,
                on_hit,
                hits: AtomicU64::new(0),
                fired_marker: None,
            })
        })
        .collect()
}

/// Arms the points named in [`VARIABLE`], once, at process start. Errors name the variable.
pub fn arm_from_env() -> Result<(), String> {
    let Ok(value) = std::env::var(VARIABLE) else {
        return Ok(());
    };
    let mut armed = parse(&value).map_err(|e| format!("{VARIABLE}: {e}"))?;
    if let Some(dir) = std::env::var_os(FIRED_DIR_VARIABLE) {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("{FIRED_DIR_VARIABLE}: cannot create {}: {e}", dir.display()))?;
        drop_fired(&mut armed, &dir);
    }
    if armed.is_empty() {
        return Ok(());
    }
    if !cfg!(feature = "fault-points") {
        return Err(format!(
            "{VARIABLE} is set but this binary was built without the `fault-points` feature \
             (release builds never have it); unset it"
        ));
    }
    let names: Vec<String> = armed
        .iter()
        .map(|a| format!("{}@{}", a.point.name(), a.on_hit))
        .collect();
    tracing::warn!(points = %names.join(","), "fault points armed: this process will abort on purpose");
    let _ = ARMED.set(armed);
    Ok(())
}

/// Keeps only the points that left no file in `dir` (they fired before a restart), and has
/// the others leave one when they fire.
fn drop_fired(armed: &mut Vec<Armed>, dir: &std::path::Path) {
    armed.retain_mut(|a| {
        let marker = dir.join(a.point.name());
        if marker.exists() {
            tracing::warn!(point = a.point.name(), marker = %marker.display(), "fault point fired before this restart; not armed again");
            return false;
        }
        a.fired_marker = Some(marker);
        true
    });
}

/// Whether `point` is armed at all: for the preparation a crash there needs (flushing what the
/// crash must leave behind).
pub fn is_armed(point: FaultPoint) -> bool {
    ARMED
        .get()
        .is_some_and(|armed| armed.iter().any(|a| a.point == point))
}

/// Marks that the process reached `point`; aborts it if that point is armed for this hit.
#[inline]
pub fn hit(point: FaultPoint) {
    #[cfg(feature = "fault-points")]
    if let Some(armed) = ARMED.get() {
        for a in armed.iter().filter(|a| a.point == point) {
            let n = a.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == a.on_hit {
                // Straight to stderr (unbuffered), the one thing said before dying: tests read
                // it to know the process died here and not elsewhere.
                eprintln!(
                    "fault point {} reached (hit {n}): aborting the process",
                    point.name()
                );
                if let Some(marker) = &a.fired_marker
                    && let Err(e) = std::fs::write(marker, b"fired\n")
                {
                    // Dying anyway would loop forever at this point after each restart.
                    eprintln!(
                        "cannot leave {}: {e}; aborting all the same",
                        marker.display()
                    );
                }
                std::process::abort();
            }
        }
    }
    #[cfg(not(feature = "fault-points"))]
    let _ = point;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counts_parse_and_unknown_names_are_refused() {
        let armed = parse("checkpoint-after-metadata, file-sink-published-part@3").expect("valid");
        assert_eq!(armed.len(), 2);
        assert_eq!(armed[0].point, FaultPoint::CheckpointAfterMetadata);
        assert_eq!(armed[0].on_hit, 1);
        assert_eq!(armed[1].point, FaultPoint::FileSinkPublishedPart);
        assert_eq!(armed[1].on_hit, 3);
        let unknown = parse("after-metadata").expect_err("unknown name");
        assert!(
            unknown.contains("known: checkpoint-before-metadata"),
            "{unknown}"
        );
        assert!(parse("savepoint-before-stop@0").is_err());
        assert!(parse("savepoint-before-stop@x").is_err());
        assert!(parse("").expect("empty").is_empty());
        for point in FaultPoint::ALL {
            assert_eq!(FaultPoint::parse(point.name()), Some(point));
        }
    }

    #[test]
    fn a_point_that_left_its_file_is_not_armed_again() {
        let dir = std::env::temp_dir().join(format!("weir-fired-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("operator-savepoint-observed"), "fired\n").expect("marker");
        let mut armed =
            parse("operator-savepoint-observed,operator-redeploy-recorded").expect("valid");
        drop_fired(&mut armed, &dir);
        assert_eq!(armed.len(), 1);
        assert_eq!(armed[0].point, FaultPoint::OperatorRedeployRecorded);
        assert_eq!(
            armed[0].fired_marker.as_deref(),
            Some(dir.join("operator-redeploy-recorded").as_path())
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
