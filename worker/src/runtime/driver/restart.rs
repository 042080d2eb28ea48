//! Between attempts: the restart strategy's decision (how long to wait, or give up) and the
//! wait itself, which still answers cancellations and savepoint requests.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::Result;
use crate::runtime::job::{JobCommand, JobHandle};
use crate::runtime::shutdown;
use crate::spec::RestartStrategy;

/// Applies the restart strategy: how long to wait before the next attempt, or `None` to give up.
pub(super) struct RestartTracker {
    strategy: RestartStrategy,
    pub(super) restarts: u32,
    recent_failures: VecDeque<Instant>,
}

impl RestartTracker {
    pub(super) fn new(strategy: RestartStrategy) -> Self {
        RestartTracker {
            strategy,
            restarts: 0,
            recent_failures: VecDeque::new(),
        }
    }

    pub(super) fn next_delay(&mut self) -> Option<Duration> {
        let delay = match &self.strategy {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (self.restarts < *attempts).then_some(*delay)
            }
            RestartStrategy::ExponentialDelay {
                initial_delay,
                max_delay,
                multiplier,
                max_attempts,
            } => {
                if max_attempts.is_some_and(|max| self.restarts >= max) {
                    None
                } else {
                    let factor = multiplier.powi(self.restarts.min(64) as i32);
                    Some(initial_delay.mul_f64(factor).min(*max_delay))
                }
            }
            RestartStrategy::FailureRate {
                max_failures_per_interval,
                interval,
                delay,
            } => {
                let now = Instant::now();
                self.recent_failures.push_back(now);
                while self
                    .recent_failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > *interval)
                {
                    self.recent_failures.pop_front();
                }
                (self.recent_failures.len() <= *max_failures_per_interval as usize)
                    .then_some(*delay)
            }
        };
        if delay.is_some() {
            self.restarts += 1;
        }
        delay
    }
}

/// Waits `delay` before the next attempt, answering requests meanwhile: a savepoint trigger
/// fails at once (no tasks run that could take it; trigger again once the job is RUNNING), a
/// cancellation ends the job. True when the job was cancelled.
pub(super) fn wait_out_restart_delay(
    delay: Duration,
    job: &JobHandle,
    commands: &Receiver<JobCommand>,
) -> Result<bool> {
    let until = Instant::now() + delay;
    loop {
        shutdown::check()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        match commands.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(JobCommand::Cancel) => return Ok(true),
            Ok(JobCommand::Savepoint { trigger_id, .. }) => job.savepoint_finished(
                &trigger_id,
                Err("the job is restarting after a failure; trigger the savepoint again once it is RUNNING".into()),
            ),
            Ok(JobCommand::Checkpoint) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                shutdown::sleep(left)?;
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn fixed_delay_gives_up_after_attempts() {
        let mut t = RestartTracker::new(RestartStrategy::FixedDelay {
            attempts: 2,
            delay: Duration::from_millis(5),
        });
        assert_eq!(t.next_delay(), Some(Duration::from_millis(5)));
        assert_eq!(t.next_delay(), Some(Duration::from_millis(5)));
        assert_eq!(t.next_delay(), None);
    }

    #[test]
    fn exponential_delay_grows_to_the_cap() {
        let mut t = RestartTracker::new(RestartStrategy::ExponentialDelay {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            multiplier: 2.0,
            max_attempts: Some(4),
        });
        let delays: Vec<_> = std::iter::from_fn(|| t.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 350, 350].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn failure_rate_gives_up_when_failures_bunch_up() {
        let mut t = RestartTracker::new(RestartStrategy::FailureRate {
            max_failures_per_interval: 2,
            interval: Duration::from_secs(60),
            delay: Duration::ZERO,
        });
        assert!(t.next_delay().is_some());
        assert!(t.next_delay().is_some());
        assert!(t.next_delay().is_none());
    }

    #[test]
    fn corrupt_checkpoints_are_never_retried() {
        assert!(
            !Error::CorruptCheckpoint {
                object: "x".into(),
                reason: "y".into()
            }
            .is_recoverable()
        );
        assert!(Error::Cancelled.is_recoverable());
    }
}
