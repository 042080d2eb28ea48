//! Process-wide termination on SIGTERM or SIGINT: from the moment it is requested this process
//! publishes nothing more. No checkpoint is triggered or completed (`_metadata` written), no
//! completion is sent, no sink commits; then every role cancels its tasks and exits.
//!
//! Kubernetes sends SIGTERM when it deletes a pod and starts the replacement at the same time,
//! so a terminating JobManager has to go quiet at once, not at the end of its grace period.
//! (Without a handler the signal is worse than useless: PID 1 of a container ignores it, and the
//! old JobManager kept completing checkpoints beside its successor until SIGKILL.)
//!
//! Steps that publish (writing `_metadata`, sending completions, committing a sink) run inside
//! [`effect`]: the signal handler first refuses new steps, then waits (bounded) for the one in
//! flight, and only then logs `received SIGTERM`. So everything the process wrote is written
//! before that line, and nothing after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static TERMINATING: AtomicBool = AtomicBool::new(false);
static SIGNAL: OnceLock<&'static str> = OnceLock::new();
static REQUESTED_AT: OnceLock<Instant> = OnceLock::new();
/// Read-held by every publishing step; write-taken once by the signal handler.
static GATE: RwLock<()> = RwLock::new(());

/// Longest the handler waits for a publishing step in flight (an S3 request that hangs must not
/// keep the process alive until SIGKILL).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The signal that asked this process to stop, if any.
pub fn requested() -> Option<&'static str> {
    TERMINATING
        .load(Ordering::Acquire)
        .then(|| SIGNAL.get().copied().unwrap_or("a signal"))
}

/// Time since termination was requested (zero if it was not).
pub fn since_request() -> Duration {
    REQUESTED_AT.get().map_or(Duration::ZERO, Instant::elapsed)
}

/// `Err(Error::Terminated)` once termination was requested.
pub fn check() -> Result<()> {
    match requested() {
        Some(signal) => Err(Error::Terminated { signal }),
        None => Ok(()),
    }
}

/// Held while one publishing step runs; termination waits for it.
pub struct Effect {
    _gate: RwLockReadGuard<'static, ()>,
}

/// Permission to run one publishing step, or `None` once termination was requested.
pub fn effect() -> Option<Effect> {
    let gate = GATE.read().unwrap_or_else(|e| e.into_inner());
    // Checked under the lock: the handler sets the flag before it waits for the lock, so a
    // step either sees the flag or finishes before the handler proceeds.
    if TERMINATING.load(Ordering::Acquire) {
        return None;
    }
    Some(Effect { _gate: gate })
}

/// Like [`effect`], as a `Result` for `?`.
pub fn begin() -> Result<Effect> {
    effect().ok_or(Error::Terminated {
        signal: requested().unwrap_or("a signal"),
    })
}

/// Requests termination as if `signal` had arrived: refuses new publishing steps, waits for the
/// one in flight, and logs. Returns false when termination was already requested.
pub fn request(signal: &'static str) -> bool {
    let _ = SIGNAL.set(signal);
    let _ = REQUESTED_AT.set(Instant::now());
    if TERMINATING.swap(true, Ordering::AcqRel) {
        return false;
    }
    let started = Instant::now();
    let drained = loop {
        match GATE.try_write() {
            Ok(_) | Err(std::sync::TryLockError::Poisoned(_)) => break true,
            Err(std::sync::TryLockError::WouldBlock) if started.elapsed() < DRAIN_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::sync::TryLockError::WouldBlock) => break false,
        }
    };
    if drained {
        tracing::info!(
            signal,
            waited_ms = started.elapsed().as_millis() as u64,
            "received {signal}: publishing nothing more (no new checkpoint, no completion, no commit); stopping"
        );
    } else {
        tracing::warn!(
            signal,
            "received {signal}: publishing nothing more; a storage write still in flight after {DRAIN_TIMEOUT:?} may yet land; stopping"
        );
    }
    true
}

/// Listens for SIGTERM and SIGINT on `rt`. The first requests termination; a second one ends
/// the process at once (for a stop that hangs).
pub fn install(rt: &tokio::runtime::Handle) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered here, synchronously: from this line on the default action no longer applies.
    let _context = rt.enter();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    rt.spawn(async move {
        loop {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            let first = tokio::task::spawn_blocking(move || request(name))
                .await
                .unwrap_or(false);
            if !first {
                tracing::warn!(signal = name, "second termination signal; exiting now");
                std::process::exit(if name == "SIGINT" { 130 } else { 143 });
            }
        }
    });
    Ok(())
}

/// Sleeps for `duration`, waking early when termination is requested.
pub fn sleep(duration: Duration) -> Result<()> {
    let until = Instant::now() + duration;
    loop {
        check()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
