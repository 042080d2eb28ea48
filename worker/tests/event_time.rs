//! Event time end to end, on real processes: exact window results for out-of-order input
//! (with late records), and window results that do not change across SIGKILL + restore or a
//! rescale 2 -> 3 through stop-with-savepoint (each window fires once: its timers fire once).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::*;

/// 2020-11-02 01:30:00 UTC, a minute boundary.
const T0: i64 = 1_604_280_600_000;

fn trade(code: &str, offset_ms: i64, vol: u64, amt: u64) -> String {
    json!({"secCode": code, "secName": format!("S{code}"), "eventTime": T0 + offset_ms,
           "tradePrice": 10.0, "tradeVolDay": vol, "tradeAmtDay": amt})
    .to_string()
}

#[test]
fn minute_bars_on_out_of_order_input_are_exact_and_late_trades_go_to_the_late_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).expect("input dir");
    let lines = [
        trade("A", 1_000, 100, 1_000),
        trade("A", 30_000, 300, 3_100),
        trade("B", 20_000, 50, 500),
        trade("A", 15_000, 200, 2_000), // out of order, within the 1 s bound of nothing: still on time
        trade("A", 61_000, 400, 4_200), // watermark 59_999: minute 0 closes
        trade("A", 59_000, 350, 3_600), // late: its minute has fired and lateness is 0
        trade("B", 125_000, 90, 900),   // watermark 123_999: A's minute 1 closes
    ];
    std::fs::write(input.join("trades.jsonl"), lines.join("\n") + "\n").expect("write input");
    let out = dir.path().join("out");
    let yaml = format!(
        "job:\n  name: minute-bars\n  args: {{input: '{}', output: '{}', lateOutput: '{}', outOfOrderness: 1s, emitWatermarkEvery: 1}}\n\
         parallelism: 1\ncheckpointing: {{interval: 1s, storage: 'file://{}'}}\nrestore: none\n",
        input.display(),
        out.join("bars").display(),
        out.join("late").display(),
        dir.path().join("checkpoints").display(),
    );
    let job = write_job(dir.path(), "job.yaml", &yaml);
    run_job(&job, &[], &[], &dir.path().join("work"));

    let bars: Vec<(String, i64, u64, u64, u64, u64)> = committed_json(&out.join("bars"))
        .iter()
        .map(|b| {
            (
                b["secCode"].as_str().expect("code").to_string(),
                b["windowStart"].as_i64().expect("start") - T0,
                b["minuteVol"].as_u64().expect("vol"),
                b["minuteAmt"].as_u64().expect("amt"),
                b["tradeVolDay"].as_u64().expect("day vol"),
                b["tradeAmtDay"].as_u64().expect("day amt"),
            )
        })
        .collect();
    let s = |c: &str| c.to_string();
    assert_eq!(
        bars,
        vec![
            // First bar of a security: no previous totals, so 0 (as in the reference).
            // Windows closing at one watermark fire in key-group order (A's, then B's).
            (s("A"), 0, 0, 0, 300, 3_100),
            (s("B"), 0, 0, 0, 50, 500),
            (s("A"), 60_000, 100, 1_100, 400, 4_200),
            (s("B"), 120_000, 40, 400, 90, 900),
        ],
        "bars in firing order"
    );
    let late = committed_json(&out.join("late"));
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["eventTime"], T0 + 59_000);
    assert_eq!(late[0]["tradeVolDay"], 350);
}

/// `window-check` with keyed state on `backend` (`state.backend`).
fn window_job(
    dir: &Path,
    window: &str,
    rate: Option<u64>,
    name: &str,
    backend: &str,
) -> (PathBuf, PathBuf) {
    let store = dir.join(name);
    let rate = rate.map_or(String::new(), |r| format!(", eventsPerSecond: {r}"));
    let yaml = format!(
        "job:\n  name: window-check\n  args: {{keys: 10, eventsPerKey: 1500{rate}, window: {window}, output: '{out}', lateOutput: '{late}'}}\n\
         jobId: windows\nparallelism: 2\n\
         checkpointing: {{interval: 200ms, storage: 'file://{chk}', retained: 2, savepointDirectories: ['file://{sp}']}}\n\
         restartStrategy: {{type: none}}\nstate: {{backend: {backend}}}\n",
        out = store.join("output").display(),
        late = store.join("late").display(),
        chk = store.join("checkpoints").display(),
        sp = store.join("savepoints").display(),
    );
    (write_job(dir, &format!("{name}.yaml"), &yaml), store)
}

/// Window results, sorted (subtasks and attempts interleave differently from run to run).
fn window_results(store: &Path) -> Vec<String> {
    let mut lines = committed_lines(&store.join("output"));
    lines.sort();
    let distinct: std::collections::HashSet<_> = lines.iter().collect();
    assert_eq!(distinct.len(), lines.len(), "a window fired twice");
    assert!(
        committed_lines(&store.join("late")).is_empty(),
        "no record is late in this input"
    );
    lines
}

/// The windows `window-check`'s input defines (10 keys x 1500 events, the job's own event
/// times): tumbling 1 s, sliding 2 s every 1 s, sessions with a 1 s gap. As (key, start, end).
fn expected_windows(window: &str) -> std::collections::BTreeSet<(u64, i64, i64)> {
    use weir::jobs::window_check::event_time;
    let mut windows = std::collections::BTreeSet::new();
    for key in 0..10u64 {
        let mut times: Vec<i64> = (0..1500).map(|seq| event_time(key, seq)).collect();
        times.sort_unstable();
        match window {
            "tumbling" => {
                for t in &times {
                    let start = t.div_euclid(1000) * 1000;
                    windows.insert((key, start, start + 1000));
                }
            }
            "sliding" => {
                for t in &times {
                    let last = t.div_euclid(1000) * 1000;
                    for start in [last - 1000, last] {
                        windows.insert((key, start, start + 2000));
                    }
                }
            }
            "session" => {
                let (mut start, mut end) = (times[0], times[0] + 1000);
                for &t in &times[1..] {
                    if t < end {
                        end = end.max(t + 1000);
                    } else {
                        windows.insert((key, start, end));
                        (start, end) = (t, t + 1000);
                    }
                }
                windows.insert((key, start, end));
            }
            other => panic!("no such window {other:?}"),
        }
    }
    windows
}

fn uninterrupted(dir: &Path, window: &str, backend: &str) -> Vec<String> {
    let (job, store) = window_job(dir, window, None, "baseline", backend);
    run_job(&job, &[], &[], &dir.join("work-baseline"));
    let results = window_results(&store);
    // Every window the input defines fires exactly once, and no other: (key, start, end).
    let fired: std::collections::BTreeSet<(u64, i64, i64)> = results
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let field = |name: &str| v[name].as_i64().expect(name);
            (field("key") as u64, field("start"), field("end"))
        })
        .collect();
    assert_eq!(fired.len(), results.len(), "a window fired twice");
    assert_eq!(fired, expected_windows(window), "{window} windows");
    if window == "session" {
        // 10 keys x 1500 events in bursts of 40: 38 sessions per key.
        assert_eq!(results.len(), 380);
    }
    if window != "sliding" {
        let counted: u64 = results
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["count"]
                    .as_u64()
                    .expect("count")
            })
            .sum();
        assert_eq!(
            counted,
            10 * 1500,
            "every event in exactly one {window} window"
        );
    }
    results
}

fn sigkill_and_restore_equals_uninterrupted(window: &str, backend: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = uninterrupted(dir.path(), window, backend);
    let (job, store) = window_job(dir.path(), window, Some(1_000), "killed", backend);
    let checkpoints = store.join("checkpoints/windows");
    for kill in 0..3 {
        let before = completed_checkpoints(&checkpoints)
            .last()
            .copied()
            .unwrap_or(0);
        let log = dir.path().join(format!("run-{kill}.log"));
        let mut child = spawn_job(&job, &[], &[], &dir.path().join("work"), &log);
        wait_until(Duration::from_secs(60), "a new checkpoint", || {
            completed_checkpoints(&checkpoints)
                .last()
                .copied()
                .unwrap_or(0)
                > before + 1
        });
        assert!(
            child.try_wait().expect("poll").is_none(),
            "job ended before it could be killed; see {}",
            log.display()
        );
        sigkill(&mut child);
    }
    let last = run_job(&job, &[], &[], &dir.path().join("work"));
    let stdout = String::from_utf8_lossy(&last.stdout);
    assert!(stdout.contains("restored from: file://"), "{stdout}");
    assert_eq!(window_results(&store), expected);
}

on_each_backend! {
fn tumbling_window_results_survive_sigkill_and_restore(backend) {
    sigkill_and_restore_equals_uninterrupted("tumbling", backend);
}
}

on_each_backend! {
fn session_window_results_survive_sigkill_and_restore(backend) {
    sigkill_and_restore_equals_uninterrupted("session", backend);
}
}

fn rescale_through_stop_with_savepoint_equals_uninterrupted(window: &str, backend: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = uninterrupted(dir.path(), window, backend);
    let (job, store) = window_job(dir.path(), window, Some(1_000), "rescaled", backend);
    let log = dir.path().join("run.log");
    let savepoint = format!("file://{}", store.join("savepoints/sp").display());
    run_then_stop_with_savepoint(
        &job,
        "windows",
        &store.join("checkpoints/windows"),
        2,
        &savepoint,
        &dir.path().join("work"),
        &log,
    );
    assert!(
        store.join("savepoints/sp/_metadata").exists(),
        "see {}",
        log.display()
    );
    let at_stop = committed_lines(&store.join("output")).len();
    assert!(at_stop < expected.len(), "stopped mid-stream");

    let output = run_job(
        &job,
        &["--parallelism", "3", "--restore", &savepoint],
        &[],
        &dir.path().join("work"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("restored from: {savepoint}")),
        "{stdout}"
    );
    assert_eq!(window_results(&store), expected);
}

on_each_backend! {
fn sliding_window_results_survive_rescale_2_to_3_through_stop_with_savepoint(backend) {
    rescale_through_stop_with_savepoint_equals_uninterrupted("sliding", backend);
}
}

on_each_backend! {
fn session_window_results_survive_rescale_2_to_3_through_stop_with_savepoint(backend) {
    rescale_through_stop_with_savepoint_equals_uninterrupted("session", backend);
}
}

/// Windows on the distributed runtime: watermarks cross TaskManagers in the data frames,
/// timers survive a TaskManager SIGKILL with the rest of the keyed state.
#[test]
fn session_windows_on_jobmanager_and_taskmanagers_survive_a_taskmanager_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = uninterrupted(dir.path(), "session", "rocksdb");
    let (job, store) = window_job(dir.path(), "session", Some(1_000), "cluster", "rocksdb");
    run_on_a_cluster_killing_a_taskmanager(dir.path(), &job, &store.join("checkpoints/windows"));
    assert_eq!(window_results(&store), expected);
}
