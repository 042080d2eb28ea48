//! Conditions, and the messages in them and in Events.

use super::{Planner, RECENT_FAILURE_MS};
use crate::crd::{Condition, Lifecycle, RestoreKind, RestorePoint, StreamJobStatus};
use crate::jobmanager::JobState;

impl Planner<'_> {
    /// `Degraded` message while the job fails and is restarted, by the JobManager (it keeps
    /// the pods) or by the operator: a recent failure, or the job RESTARTING right now.
    pub(super) fn restarting_message(&self) -> Option<String> {
        if matches!(
            self.status.lifecycle,
            Lifecycle::Failed | Lifecycle::Finished | Lifecycle::Suspended
        ) {
            return None;
        }
        let recent = self
            .status
            .last_failure
            .as_ref()
            .filter(|f| self.o.now - f.time < RECENT_FAILURE_MS);
        let restarting_now = matches!(
            self.job_state(),
            Some(JobState::Restarting | JobState::Failing)
        );
        if recent.is_none() && !restarting_now {
            return None;
        }
        let counts = format!(
            "{} JobManager restarts, {} operator restarts",
            self.status.job_manager_restarts, self.status.operator_restarts
        );
        Some(match recent {
            Some(failure) => format!(
                "the job failed at {} ({counts}): {}; clears after {} minutes without a failure",
                rfc3339(failure.time),
                failure.message,
                RECENT_FAILURE_MS / 60_000
            ),
            None => format!("the job is restarting ({counts})"),
        })
    }
}

pub(super) fn describe(restore: &RestorePoint) -> String {
    match (&restore.kind, &restore.path) {
        (RestoreKind::Empty, _) | (_, None) => "empty state".to_string(),
        (kind, Some(path)) => {
            let verified = if restore.verified {
                "verified"
            } else {
                "unverified"
            };
            format!("{kind:?} {path} ({verified})").to_lowercase()
        }
    }
}

fn rfc3339(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Longest failure or storage error kept in status and Events (an Event note holds 1 kB).
pub const MAX_MESSAGE_CHARS: usize = 900;

/// `text` on one line (line breaks and runs of whitespace become one space), cut to
/// [`MAX_MESSAGE_CHARS`]: stack traces and multi-line SDK errors stay readable in
/// `kubectl describe` and in one log line.
pub fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(MAX_MESSAGE_CHARS) {
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// Updates one condition; `lastTransitionTime` moves only when the status flips.
pub(super) fn set_condition(
    status: &mut StreamJobStatus,
    now: i64,
    generation: Option<i64>,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
) {
    let value = if value { "True" } else { "False" };
    let time = rfc3339(now);
    let condition = Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: time,
        observed_generation: generation,
    };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let transition = if existing.status == value {
                existing.last_transition_time.clone()
            } else {
                condition.last_transition_time.clone()
            };
            *existing = Condition {
                last_transition_time: transition,
                ..condition
            };
        }
        None => status.conditions.push(condition),
    }
}
