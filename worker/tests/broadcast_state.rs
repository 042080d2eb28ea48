//! Broadcast state end to end, on real processes (`rule-alerts`): rules that change
//! mid-stream reach every subtask in the order the broadcast side delivered them; SIGKILL +
//! restore and a rescale 2 -> 3 leave every subtask with the same broadcast state; the
//! alerts are exactly those of the rules, once each.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const KEYS: u64 = 10;
const EVENTS_PER_KEY: u64 = 1_200;

/// Rule versions in `at` order: switched on, changed, off, on again.
fn rules() -> Vec<Value> {
    vec![
        json!({"at": 0, "rule": "sevens", "every": 7}),
        json!({"at": 100, "rule": "fives", "every": 5}),
        json!({"at": 300, "rule": "sevens"}),
        json!({"at": 450, "rule": "fives", "every": 3}),
        json!({"at": 600, "rule": "sevens", "every": 11}),
        json!({"at": 900, "rule": "fives"}),
        json!({"at": 1_000, "rule": "sixties", "every": 60}),
    ]
}

/// Every rule's versions in delivery order, as the matcher's broadcast state must hold them
/// once the whole rules file has been read.
fn expected_broadcast_state() -> Vec<Value> {
    let mut by_rule: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for rule in rules() {
        let mut version = json!({"at": rule["at"]});
        if let Some(every) = rule.get("every") {
            version["every"] = every.clone();
        }
        by_rule
            .entry(rule["rule"].as_str().expect("name").to_string())
            .or_default()
            .push(version);
    }
    // Entries are ordered by the key's JSON text.
    let mut entries: Vec<(String, Value)> = by_rule
        .into_iter()
        .map(|(name, versions)| {
            (
                serde_json::to_string(&name).expect("json"),
                json!([name, versions]),
            )
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().map(|(_, entry)| entry).collect()
}

/// The alerts the rules define, written out independently of the job: (key, seq, rule,
/// running count per key), rules in name order within one event.
fn expected_alerts() -> Vec<(u64, u64, String, u64)> {
    let every_at = |name: &str, seq: u64| -> Option<u64> {
        let mut current = None;
        for rule in rules() {
            if rule["rule"] == name && rule["at"].as_u64().expect("at") <= seq {
                current = rule["every"].as_u64();
            }
        }
        current
    };
    let mut alerts = Vec::new();
    for key in 0..KEYS {
        let mut count = 0;
        for seq in 0..EVENTS_PER_KEY {
            for name in ["fives", "sevens", "sixties"] {
                if every_at(name, seq).is_some_and(|every| seq % every == 0) {
                    count += 1;
                    alerts.push((key, seq, name.to_string(), count));
                }
            }
        }
    }
    alerts.sort();
    alerts
}

fn job(dir: &Path, name: &str, rate: Option<u64>, backend: &str) -> (PathBuf, PathBuf) {
    let store = dir.join(name);
    let rules_dir = store.join("rules");
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    let lines: Vec<String> = rules().iter().map(Value::to_string).collect();
    std::fs::write(rules_dir.join("rules.jsonl"), lines.join("\n") + "\n").expect("rules");
    let rate = rate.map_or(String::new(), |r| format!(", eventsPerSecond: {r}"));
    let yaml = format!(
        "job:\n  name: rule-alerts\n  args: {{keys: {KEYS}, eventsPerKey: {EVENTS_PER_KEY}{rate}, rules: '{rules}', output: '{out}'}}\n\
         jobId: rules\nparallelism: 2\nstate: {{backend: {backend}}}\n\
         checkpointing: {{interval: 200ms, storage: 'file://{chk}', retained: 3, savepointDirectories: ['file://{sp}']}}\n\
         restartStrategy: {{type: none}}\n",
        rules = rules_dir.display(),
        out = store.join("output").display(),
        chk = store.join("checkpoints").display(),
        sp = store.join("savepoints").display(),
    );
    (write_job(dir, &format!("{name}.yaml"), &yaml), store)
}

/// The committed alerts, sorted, with no alert twice.
fn alerts(store: &Path) -> Vec<(u64, u64, String, u64)> {
    let mut alerts: Vec<_> = committed_json(&store.join("output"))
        .iter()
        .map(|a| {
            (
                a["key"].as_u64().expect("key"),
                a["seq"].as_u64().expect("seq"),
                a["rule"].as_str().expect("rule").to_string(),
                a["alerts"].as_u64().expect("alerts"),
            )
        })
        .collect();
    alerts.sort();
    let distinct: std::collections::BTreeSet<_> = alerts.iter().map(|a| (a.0, a.1, &a.2)).collect();
    assert_eq!(distinct.len(), alerts.len(), "an alert was committed twice");
    alerts
}

/// The matcher's broadcast state in each subtask of a completed checkpoint.
fn broadcast_states(metadata: &str) -> Vec<Value> {
    let json = metadata.split_once('\n').expect("header line").1;
    let metadata: Value = serde_json::from_str(json).expect("metadata json");
    metadata["operators"]["rule-matcher"]["subtasks"]
        .as_array()
        .expect("matcher subtasks")
        .iter()
        .map(|s| s["operatorState"]["rules"].clone())
        .collect()
}

/// Every subtask of the latest checkpoint holds the whole, identical broadcast state.
fn assert_latest_checkpoint_has_equal_broadcast_state(store: &Path, parallelism: usize) {
    let entries = metadata_entries(&store.join("checkpoints/rules"));
    let (id, latest) = entries
        .iter()
        .rev()
        .find(|(_, text)| text.starts_with("WEIR-CHECKPOINT "))
        .expect("a completed checkpoint");
    let states = broadcast_states(latest);
    assert_eq!(states.len(), parallelism, "chk-{id}: one state per subtask");
    for (subtask, state) in states.iter().enumerate() {
        assert_eq!(
            state["redistribution"], "broadcast",
            "chk-{id} subtask {subtask}"
        );
        assert_eq!(
            state["entries"],
            Value::Array(expected_broadcast_state()),
            "chk-{id} subtask {subtask}: every rule's versions, in delivery order"
        );
    }
}

on_each_backend! {
fn rule_alerts_follow_rules_that_change_mid_stream_exactly_once(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, store) = job(dir.path(), "baseline", None, backend);
    run_job(&job, &[], &[], &dir.path().join("work"));
    assert_eq!(alerts(&store), expected_alerts());
    assert_latest_checkpoint_has_equal_broadcast_state(&store, 2);
}
}

on_each_backend! {
fn broadcast_state_survives_sigkill_and_restore_on_every_subtask(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, store) = job(dir.path(), "killed", Some(800), backend);
    let checkpoints = store.join("checkpoints/rules");
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
        // The rules were read long before: after this restore they exist only in the
        // restored broadcast state.
        assert_latest_checkpoint_has_equal_broadcast_state(&store, 2);
    }
    let last = run_job(&job, &[], &[], &dir.path().join("work"));
    let stdout = String::from_utf8_lossy(&last.stdout);
    assert!(stdout.contains("restored from: file://"), "{stdout}");
    assert_eq!(alerts(&store), expected_alerts());
    assert_latest_checkpoint_has_equal_broadcast_state(&store, 2);
}
}

on_each_backend! {
fn broadcast_state_reaches_every_subtask_after_a_rescale_2_to_3(backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, store) = job(dir.path(), "rescaled", Some(800), backend);
    let savepoint = format!("file://{}", store.join("savepoints/sp").display());
    run_then_stop_with_savepoint(
        &job,
        "rules",
        &store.join("checkpoints/rules"),
        2,
        &savepoint,
        &dir.path().join("work"),
        &dir.path().join("run.log"),
    );
    let at_stop = committed_lines(&store.join("output")).len();
    assert!(at_stop < expected_alerts().len(), "stopped mid-stream");
    let sp_metadata =
        std::fs::read_to_string(store.join("savepoints/sp/_metadata")).expect("savepoint");
    assert_eq!(broadcast_states(&sp_metadata).len(), 2);

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
    assert_eq!(alerts(&store), expected_alerts());
    // The third subtask never read a rule: its copy came from the savepoint.
    assert_latest_checkpoint_has_equal_broadcast_state(&store, 3);
}
}

/// On the distributed runtime: the broadcast records cross TaskManagers in the data frames,
/// and a TaskManager SIGKILL restores every subtask's copy from the checkpoint.
#[test]
fn broadcast_state_on_jobmanager_and_taskmanagers_survives_a_taskmanager_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (job, store) = job(dir.path(), "cluster", Some(800), "rocksdb");
    run_on_a_cluster_killing_a_taskmanager(dir.path(), &job, &store.join("checkpoints/rules"));
    assert_eq!(alerts(&store), expected_alerts());
    assert_latest_checkpoint_has_equal_broadcast_state(&store, 2);
}

mod non_keyed {
    //! The non-keyed variant (`Stream::connect`), through the library: every main record
    //! reaches the function once, on the subtask of its producer; every broadcast record
    //! reaches every subtask.

    use std::sync::Arc;

    use super::support::committed_lines;
    use weir::connectors::{SequenceEvent, SequenceGenerator};
    use weir::prelude::*;
    use weir::runtime::job::JobHandle;
    use weir::runtime::local::{LocalOptions, run_local};

    #[derive(Debug, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    enum Seen {
        Event { key: u64, seq: u64, rules: usize },
        Rule { name: String },
    }

    #[derive(Default)]
    struct Tagger {
        rules: Option<BroadcastMapState<String, u64>>,
    }

    impl BroadcastProcessFunction<SequenceEvent, String, Seen> for Tagger {
        fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
            self.rules = Some(state.broadcast_map_state("names")?);
            Ok(())
        }

        fn process_element(
            &mut self,
            event: SequenceEvent,
            broadcast: &BroadcastStates,
            out: &mut Emitter<'_, Seen>,
        ) -> Result<()> {
            let rules = self.rules.as_ref().expect("open").len(broadcast)?;
            out.emit(Seen::Event {
                key: event.key,
                seq: event.seq,
                rules,
            })
        }

        fn process_broadcast_element(
            &mut self,
            name: String,
            broadcast: &mut BroadcastStates,
            out: &mut Emitter<'_, Seen>,
        ) -> Result<()> {
            self.rules
                .as_ref()
                .expect("open")
                .put(broadcast, &name, &(name.len() as u64))?;
            out.emit(Seen::Rule { name })
        }
    }

    #[test]
    fn every_record_once_and_every_broadcast_record_on_every_subtask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = dir.path().join("names");
        std::fs::create_dir_all(&names).expect("names dir");
        std::fs::write(names.join("names.txt"), "alpha\nbeta\ngamma\n").expect("names");
        let out = dir.path().join("out");
        let yaml = format!(
            "job: {{name: tagger}}\njobId: tagger\nparallelism: 3\n\
             checkpointing: {{interval: 100ms, storage: 'file://{}'}}\n",
            dir.path().join("checkpoints").display()
        );
        let doc = Arc::new(JobDocument::from_yaml(&yaml, "test").expect("document"));
        let env = StreamEnv::new(doc.clone());
        let names_stream = env
            .source("names", FileSource::lines(names.display().to_string()))
            .broadcast();
        let generator = SequenceGenerator {
            keys: 7,
            events_per_key: Some(500),
            events_per_second: None,
        };
        let graph = env
            .source("events", generator)
            .connect(names_stream)
            .process("tagger", Tagger::default)
            .sink("seen", FileSink::json_lines(out.display().to_string()))
            .expect("graph");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (job, commands) = JobHandle::new(&doc);
        let mut options = LocalOptions::for_document(&doc);
        options.work_dir = dir.path().join("work");
        run_local(
            doc.clone(),
            &graph,
            runtime.handle(),
            &options,
            &job,
            &commands,
        )
        .expect("job runs");

        let mut events = std::collections::BTreeSet::new();
        let mut rules = std::collections::BTreeMap::<String, usize>::new();
        for line in committed_lines(&out) {
            let seen: serde_json::Value = serde_json::from_str(&line).expect("json");
            if let Some(event) = seen.get("event") {
                let id = (
                    event["key"].as_u64().expect("key"),
                    event["seq"].as_u64().expect("seq"),
                );
                assert!(event["rules"].as_u64().expect("rules") <= 3);
                assert!(events.insert(id), "event {id:?} processed twice");
            } else {
                let name = seen["rule"]["name"].as_str().expect("name").to_string();
                *rules.entry(name).or_default() += 1;
            }
        }
        assert_eq!(events.len(), 7 * 500, "every event once");
        assert_eq!(
            rules,
            [("alpha", 3), ("beta", 3), ("gamma", 3)]
                .map(|(n, c)| (n.to_string(), c))
                .into(),
            "each broadcast record on each of the 3 subtasks"
        );
    }
}
