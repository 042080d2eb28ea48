//! What runs beside the job: the JSON line of figures when it ends (outputs, latency
//! percentiles, CPU, checkpoints) and, for (e), the driver thread that waits for the load,
//! checkpoints twice and says when to kill.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BenchStats, Query, epoch_ms};
use crate::connectors::nexmark::stamp_now;
use crate::jobs::JobMonitor;
use crate::jobs::shared::{checkpoint_durations, percentile, print_line};
use crate::runtime::job::{CheckpointStats, JobHandle};

/// User + system CPU seconds of this process so far (`/proc/self/stat`, 100 ticks per second).
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub(super) struct Monitor {
    pub(super) query: Query,
    pub(super) events: Option<u64>,
    pub(super) keys: Option<u64>,
    pub(super) value_bytes: usize,
    /// The document restores (state: this is the run after the kill).
    pub(super) restoring: bool,
    pub(super) stats: Arc<BenchStats>,
    pub(super) cpu_at_start: Mutex<f64>,
}

fn checkpoint_summary(stats: &CheckpointStats) -> serde_json::Value {
    let durations = checkpoint_durations(stats);
    serde_json::json!({
        "completed": stats.counts.completed,
        "failed": stats.counts.failed,
        "duration_ms_p50": percentile(&durations, 50.0),
        "duration_ms_max": durations.last(),
        "last_state_size_bytes": stats.latest.as_ref().and_then(|c| c.state_size),
        "last_checkpointed_size_bytes": stats.latest.as_ref().and_then(|c| c.checkpointed_size),
    })
}

impl JobMonitor for Monitor {
    fn started(&self, job: &JobHandle) {
        stamp_now();
        *self.cpu_at_start.lock().unwrap_or_else(|e| e.into_inner()) = process_cpu_s();
        if self.query != Query::State {
            return;
        }
        let (job, stats) = (job.clone(), self.stats.clone());
        let keys = self.keys.unwrap_or(0);
        let value_bytes = self.value_bytes;
        let restoring = self.restoring;
        std::thread::Builder::new()
            .name("bench-state".into())
            .spawn(move || {
                let result = if restoring {
                    drive_restored(&job, &stats, keys)
                } else {
                    drive_load(&job, &stats, keys, value_bytes)
                };
                if let Err(message) = result {
                    eprintln!("[weir state] {message}");
                    let _ = job.cancel();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("[weir state] cannot start the driver thread: {e}"));
    }

    fn ended(&self, job: &JobHandle, wall: Duration) {
        if self.query == Query::State {
            return;
        }
        let job_cpu_s =
            process_cpu_s() - *self.cpu_at_start.lock().unwrap_or_else(|e| e.into_inner());
        let mut samples =
            std::mem::take(&mut *self.stats.samples.lock().unwrap_or_else(|e| e.into_inner()));
        samples.sort_unstable();
        let us = |ns: Option<u64>| ns.map(|ns| (ns as f64 / 1000.0 * 10.0).round() / 10.0);
        let line = serde_json::json!({
            "workload": self.query,
            "engine": "weir",
            "events": self.events,
            "keys": self.keys,
            "outputs": self.stats.outputs.load(Ordering::Relaxed),
            "wall_s": wall.as_secs_f64(),
            "job_cpu_s": job_cpu_s,
            "latency_us": {
                "samples": samples.len(),
                "p50": us(percentile(&samples, 50.0)),
                "p99": us(percentile(&samples, 99.0)),
                "max": us(samples.last().copied()),
            },
            "checkpoints": checkpoint_summary(&job.checkpoints()),
        });
        print_line(&line.to_string());
    }
}

/// Waits (polling) until `done`; errors when the job ended first.
fn wait_for(job: &JobHandle, mut done: impl FnMut() -> bool) -> std::result::Result<(), String> {
    use crate::runtime::job::JobState;
    while !done() {
        if matches!(
            job.overview().state,
            JobState::Finished | JobState::Failed | JobState::Canceled
        ) {
            return Err(format!("job ended ({:?})", job.overview().state));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Triggers a checkpoint and waits for it; returns its details.
fn checkpoint_now(job: &JobHandle) -> std::result::Result<serde_json::Value, String> {
    let before = job.checkpoints().latest.map_or(0, |c| c.id);
    job.trigger_checkpoint()?;
    let mut latest = None;
    wait_for(job, || {
        latest = job.checkpoints().latest.filter(|c| c.id > before);
        latest.is_some()
    })?;
    let c = latest.ok_or("no checkpoint")?;
    Ok(serde_json::json!({
        "event": "checkpoint",
        "id": c.id,
        "duration_ms": c.duration_ms,
        "state_size_bytes": c.state_size,
        "checkpointed_size_bytes": c.checkpointed_size,
        "external_path": c.external_path,
    }))
}

/// Fresh run of (e): wait for the load, checkpoint twice, say when to kill.
fn drive_load(
    job: &JobHandle,
    stats: &BenchStats,
    keys: u64,
    value_bytes: usize,
) -> std::result::Result<(), String> {
    let t0 = Instant::now();
    let cpu0 = process_cpu_s();
    let mut last_print = Instant::now();
    wait_for(job, || {
        let loaded = stats.loaded.load(Ordering::Relaxed);
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "[weir state] {:5.1} s  loaded {loaded} of {keys} keys",
                t0.elapsed().as_secs_f64()
            );
        }
        loaded >= keys
    })?;
    let load_s = t0.elapsed().as_secs_f64();
    let load_cpu_s = process_cpu_s() - cpu0;
    print_line(
        &serde_json::json!({"event": "loaded", "keys": keys, "load_s": load_s, "load_cpu_s": load_cpu_s})
            .to_string(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let first = checkpoint_now(job)?;
    print_line(&first.to_string());
    std::thread::sleep(Duration::from_secs(3));
    let second = checkpoint_now(job)?;
    print_line(&second.to_string());
    print_line(
        &serde_json::json!({
            "workload": "state",
            "engine": "weir",
            "keys": keys,
            "value_bytes": value_bytes,
            "load_s": load_s,
            "load_cpu_s": load_cpu_s,
            "checkpoints": [first, second.clone()],
        })
        .to_string(),
    );
    print_line(
        &serde_json::json!({"event": "ready_to_kill", "checkpoint": second["external_path"]})
            .to_string(),
    );
    Ok(())
}

/// Run of (e) after the kill: report the first output, let some updates check their keys,
/// then cancel.
fn drive_restored(
    job: &JobHandle,
    stats: &BenchStats,
    keys: u64,
) -> std::result::Result<(), String> {
    let submitted = epoch_ms();
    wait_for(job, || {
        stats.first_output_epoch_ms.load(Ordering::Relaxed) != 0
    })?;
    std::thread::sleep(Duration::from_secs(1));
    print_line(
        &serde_json::json!({
            "workload": "state-restore",
            "engine": "weir",
            "keys": keys,
            "first_output_epoch_ms": stats.first_output_epoch_ms.load(Ordering::Relaxed),
            "job_submitted_epoch_ms": submitted,
            "outputs_after_restore": stats.outputs.load(Ordering::Relaxed),
            "missing_keys_seen": stats.missing.load(Ordering::Relaxed),
        })
        .to_string(),
    );
    job.cancel()
}
