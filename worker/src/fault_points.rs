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
//! Compiled in only with the `fault-points` feature. The workspace build (every test and CI
//! run) has it through the `weir-e2e` crate; the release images build `-p weir --bin
//! weir-worker` without it, where [`hit`] compiles to nothing and an armed variable is refused
//! at start-up (a test must never believe it crashed a process that cannot crash).

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

/// The variable that arms fault points.
pub const VARIABLE: &str = "WEIR_FAULT_POINTS";

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
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 10] = [
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
            })
        })
        .collect()
}

/// Arms the points named in [`VARIABLE`], once, at process start. Errors name the variable.
pub fn arm_from_env() -> Result<(), String> {
    let Ok(value) = std::env::var(VARIABLE) else {
        return Ok(());
    };
    let armed = parse(&value).map_err(|e| format!("{VARIABLE}: {e}"))?;
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
}
