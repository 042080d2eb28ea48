//! `rule-alerts`: the broadcast state pattern. Rules arrive on a broadcast stream and change
//! while the job runs; every subtask of the keyed matcher keeps them all in broadcast state
//! and applies them to its keys' events.
//!
//! Events come from the replayable sequence generator (key, seq), at event time
//! `seq * 100 ms`. A rule line `{"at": 40, "rule": "fives", "every": 5}` says: from sequence
//! number 40 on, alert on every event whose number is a multiple of 5; a later
//! `{"at": 90, "rule": "fives"}` (no `every`) switches it off from 90 on. Rule lines must be
//! in `at` order; their event time is `at * 100 ms`.
//!
//! The matcher keeps each rule's versions in the order the broadcast side delivered them and
//! evaluates an event only once the watermark (the least of both inputs) has passed it: by
//! then every rule version up to the event's time has arrived, so the alerts do not depend on
//! how the two inputs interleaved, and any run, crashed, restored or rescaled, must produce
//! the same alerts: `{"key":3,"seq":45,"rule":"fives","alerts":7}`, where `alerts` counts the
//! key's alerts so far (keyed state).

use serde::{Deserialize, Serialize};

use super::BuiltJob;
use crate::api::{Emitter, KeyedBroadcastProcessFunction, StreamEnv, WatermarkStrategy};
use crate::connectors::{FileSink, FileSource, SequenceEvent, SequenceGenerator};
use crate::error::{Error, Result};
use crate::state::{
    BroadcastMapState, BroadcastStates, KeyedContext, StateRegistry, Timer, ValueState,
};
use crate::types::Timestamp;

/// Event time between consecutive numbers of one key.
pub const STEP_MS: i64 = 100;
/// The operator uid of the matcher (its keyed and broadcast state live under it).
pub const MATCHER: &str = "rule-matcher";
/// The matcher's broadcast state: every rule's versions, by rule name.
pub const RULES_STATE: &str = "rules";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    keys: u64,
    events_per_key: u64,
    /// Per generator subtask; as fast as possible when absent.
    #[serde(default)]
    events_per_second: Option<u64>,
    /// Folder or S3 prefix with the rule files (JSON lines).
    rules: String,
    /// Folder or S3 prefix for committed alerts.
    output: String,
}

/// One line of the rules input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The sequence number from which this version applies.
    pub at: u64,
    pub rule: String,
    /// Alert on multiples of this; absent switches the rule off. (Always serialized: rules
    /// cross TaskManagers in postcard, which has no field names to skip by.)
    #[serde(default)]
    pub every: Option<u64>,
}

/// One version of a rule, as broadcast state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleVersion {
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub key: u64,
    pub seq: u64,
    pub rule: String,
    /// The key's alerts so far, this one included.
    pub alerts: u64,
}

/// The rule versions in force at `seq`: for each rule, the last delivered version whose `at`
/// is at or before it.
pub fn alerting_rules<'a>(
    rules: impl IntoIterator<Item = (&'a str, &'a [RuleVersion])>,
    seq: u64,
) -> impl Iterator<Item = &'a str> {
    rules.into_iter().filter_map(move |(name, versions)| {
        let every = versions.iter().rev().find(|v| v.at <= seq)?.every?;
        (every > 0 && seq.is_multiple_of(every)).then_some(name)
    })
}

pub fn define(env: &StreamEnv) -> Result<BuiltJob> {
    let args: Args = env.doc().args()?;
    if args.keys == 0 {
        return Err(Error::spec("job.args.keys", "must be at least 1"));
    }
    let generator = SequenceGenerator {
        keys: args.keys,
        events_per_key: Some(args.events_per_key),
        events_per_second: args.events_per_second,
    };
    let rules = env
        .source(
            "rules",
            FileSource::decoded(&args.rules, |line| {
                let rule: Rule = serde_json::from_str(line).map_err(|e| e.to_string())?;
                if rule.every == Some(0) {
                    return Err("\"every\" must be at least 1".into());
                }
                Ok(rule)
            }),
        )
        .assign_timestamps(
            "rule-time",
            WatermarkStrategy::monotonous(|rule: &Rule| rule.at as Timestamp * STEP_MS)
                .with_emit_every(1),
        )
        .into_stream()
        .broadcast();
    let graph = env
        .source("events", generator)
        .assign_timestamps(
            "event-time",
            WatermarkStrategy::monotonous(|e: &SequenceEvent| e.seq as Timestamp * STEP_MS)
                .with_emit_every(64),
        )
        .key_by(|e: &SequenceEvent| e.key)
        .connect(rules)
        .process(MATCHER, RuleMatcher::default)
        .sink("alerts", FileSink::json_lines(&args.output))?;
    Ok(BuiltJob {
        graph,
        output: Some(args.output),
        monitor: None,
    })
}

#[derive(Default)]
struct RuleMatcher {
    rules: Option<BroadcastMapState<String, Vec<RuleVersion>>>,
    alerts: Option<ValueState<u64>>,
    /// The largest `at` delivered, to warn about rules out of order (they apply late).
    latest_at: u64,
    /// The rules decoded from broadcast state, so a timer does not decode every rule's JSON
    /// for each event. `None` until the first timer after the state changed (or was restored).
    decoded: Option<Vec<(String, Vec<RuleVersion>)>>,
}

impl KeyedBroadcastProcessFunction<u64, SequenceEvent, Rule, Alert> for RuleMatcher {
    fn open(&mut self, state: &mut StateRegistry) -> Result<()> {
        self.rules = Some(state.broadcast_map_state(RULES_STATE)?);
        self.alerts = Some(state.value_state("alerts")?);
        Ok(())
    }

    /// Evaluated when the watermark passes the event (see the module docs): its time is its
    /// number, so the timer is all there is to keep.
    fn process_element(
        &mut self,
        _key: &u64,
        event: SequenceEvent,
        _broadcast: &BroadcastStates,
        ctx: &mut KeyedContext<'_>,
        _out: &mut Emitter<'_, Alert>,
    ) -> Result<()> {
        ctx.register_event_time_timer(event.seq as Timestamp * STEP_MS);
        Ok(())
    }

    fn process_broadcast_element(
        &mut self,
        rule: Rule,
        broadcast: &mut BroadcastStates,
        _out: &mut Emitter<'_, Alert>,
    ) -> Result<()> {
        if rule.at < self.latest_at {
            tracing::warn!(rule = %rule.rule, at = rule.at, after = self.latest_at, "rule out of `at` order: events before it may have been evaluated without it");
        }
        self.latest_at = self.latest_at.max(rule.at);
        self.decoded = None;
        let rules = self.rules()?;
        let mut versions = rules.get(broadcast, &rule.rule)?.unwrap_or_default();
        versions.push(RuleVersion {
            at: rule.at,
            every: rule.every,
        });
        rules.put(broadcast, &rule.rule, &versions)
    }

    fn on_timer(
        &mut self,
        key: &u64,
        timer: &Timer,
        broadcast: &BroadcastStates,
        ctx: &mut KeyedContext<'_>,
        out: &mut Emitter<'_, Alert>,
    ) -> Result<()> {
        let seq = (timer.timestamp / STEP_MS) as u64;
        let rules = match &mut self.decoded {
            Some(rules) => rules,
            stale => stale.insert(
                self.rules
                    .as_ref()
                    .ok_or_else(not_open)?
                    .entries(broadcast)?,
            ),
        };
        let alerting: Vec<&str> = alerting_rules(
            rules
                .iter()
                .map(|(name, versions)| (name.as_str(), versions.as_slice())),
            seq,
        )
        .collect();
        if alerting.is_empty() {
            return Ok(());
        }
        let count = self.alerts.as_ref().ok_or_else(not_open)?;
        let mut alerts = count.get(ctx)?.unwrap_or(0);
        for rule in alerting {
            alerts += 1;
            out.emit(Alert {
                key: *key,
                seq,
                rule: rule.to_string(),
                alerts,
            })?;
        }
        count.set(ctx, &alerts)
    }
}

impl RuleMatcher {
    fn rules(&self) -> Result<&BroadcastMapState<String, Vec<RuleVersion>>> {
        self.rules.as_ref().ok_or_else(not_open)
    }
}

fn not_open() -> Error {
    Error::operator(MATCHER, "used before open")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(at: u64, every: Option<u64>) -> RuleVersion {
        RuleVersion { at, every }
    }

    #[test]
    fn the_last_delivered_version_at_or_before_an_event_applies() {
        let fives = vec![v(10, Some(5)), v(20, None), v(30, Some(10))];
        let rules = [("fives", fives.as_slice())];
        let at = |seq| alerting_rules(rules, seq).collect::<Vec<_>>();
        assert!(at(5).is_empty(), "before the first version");
        assert_eq!(at(10), ["fives"]);
        assert_eq!(at(15), ["fives"]);
        assert!(at(25).is_empty(), "switched off");
        assert!(at(35).is_empty(), "35 is no multiple of 10");
        assert_eq!(at(40), ["fives"]);
    }

    #[test]
    fn keys_must_be_positive() {
        let doc = crate::spec::JobDocument::from_yaml(
            "job: {name: rule-alerts, args: {keys: 0, eventsPerKey: 1, rules: r, output: o}}",
            "test",
        )
        .expect("valid");
        let err = crate::jobs::JobRegistry::builtin()
            .build(std::sync::Arc::new(doc))
            .err()
            .expect("zero keys");
        assert!(err.to_string().contains("job.args.keys"), "{err}");
    }
}
