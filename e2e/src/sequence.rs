//! The exactly-once oracle for `sequence-check` output, as a pure function over the committed
//! lines: every key holds 0, 1, 2, ... with no repeat and no gap, and no record carries an
//! `alert`. Committed output is every object under the output prefix whose path relative to
//! it has no component starting with `_` (pending parts) or `.` (in-progress files).

use std::collections::BTreeMap;

use serde::Deserialize;

/// One record the sequence-check sink writes: `{"key":k,"seq":n}`, plus `alert` (and
/// `expected`) when the checker saw a gap or a repeat.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub key: u64,
    pub seq: u64,
    #[serde(default)]
    pub alert: Option<String>,
    #[serde(default)]
    pub expected: Option<u64>,
}

/// Whether an object key below the output prefix is committed output.
pub fn is_committed(relative_key: &str) -> bool {
    !relative_key.is_empty()
        && relative_key
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('_') && !part.starts_with('.'))
}

/// What the committed output holds, per key and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    /// Records carrying an `alert` (a gap or repeat the job itself saw).
    pub alerts: Vec<Record>,
    /// (key, seq) committed more than once, with the count.
    pub duplicates: Vec<(u64, u64, u64)>,
    /// Per key: the sequence numbers present, as a sorted, de-duplicated list's length and max.
    pub keys: BTreeMap<u64, KeySummary>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySummary {
    /// Distinct sequence numbers committed.
    pub distinct: u64,
    /// Highest sequence number committed.
    pub max: u64,
}

impl KeySummary {
    /// Missing numbers below the highest one: a gap in the committed prefix.
    pub fn holes(&self) -> u64 {
        self.max + 1 - self.distinct
    }
}

/// What a finished run must have committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub keys: u64,
    pub events_per_key: u64,
}

impl Expected {
    pub fn records(&self) -> u64 {
        self.keys * self.events_per_key
    }
}

/// Tallies records; [`Report`] then answers the exactly-once questions.
pub fn report(records: impl IntoIterator<Item = Record>) -> Report {
    let mut seen: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut report = Report::default();
    for record in records {
        report.records += 1;
        *seen.entry((record.key, record.seq)).or_default() += 1;
        if record.alert.is_some() {
            report.alerts.push(record);
        }
    }
    for (&(key, seq), &count) in &seen {
        if count > 1 {
            report.duplicates.push((key, seq, count));
        }
        let summary = report.keys.entry(key).or_default();
        summary.distinct += 1;
        summary.max = summary.max.max(seq);
    }
    report
}

impl Report {
    /// No alert, no duplicate, and every key a gap-free prefix 0..=max: what committed output
    /// must look like at any moment of an exactly-once run.
    pub fn violations(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.alerts.is_empty() {
            problems.push(format!(
                "{} alert record(s), first: {:?}",
                self.alerts.len(),
                self.alerts.first()
            ));
        }
        if !self.duplicates.is_empty() {
            problems.push(format!(
                "{} (key, seq) committed more than once, first: {:?} (key, seq, times)",
                self.duplicates.len(),
                &self.duplicates[..self.duplicates.len().min(5)]
            ));
        }
        let holes: Vec<_> = self
            .keys
            .iter()
            .filter(|(_, s)| s.holes() > 0)
            .map(|(key, s)| format!("key {key}: {} missing below {}", s.holes(), s.max))
            .collect();
        if !holes.is_empty() {
            problems.push(format!("gaps: {}", holes.join("; ")));
        }
        problems
    }

    /// [`Report::violations`] plus completeness: every key has exactly `events_per_key` numbers.
    pub fn violations_of_complete_run(&self, expected: Expected) -> Vec<String> {
        let mut problems = self.violations();
        let short: Vec<_> = (0..expected.keys)
            .filter_map(|key| {
                let distinct = self.keys.get(&key).map_or(0, |s| s.distinct);
                (distinct != expected.events_per_key).then(|| format!("key {key}: {distinct}"))
            })
            .collect();
        if !short.is_empty() {
            problems.push(format!(
                "expected {} records per key, got {}",
                expected.events_per_key,
                short.join(", ")
            ));
        }
        if let Some(extra) = self.keys.keys().find(|k| **k >= expected.keys) {
            problems.push(format!(
                "key {extra} is outside 0..{} (keys = {})",
                expected.keys, expected.keys
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: u64, seq: u64) -> Record {
        Record {
            key,
            seq,
            alert: None,
            expected: None,
        }
    }

    fn complete(keys: u64, events_per_key: u64) -> Vec<Record> {
        (0..keys)
            .flat_map(|k| (0..events_per_key).map(move |s| record(k, s)))
            .collect()
    }

    const TWO_BY_THREE: Expected = Expected {
        keys: 2,
        events_per_key: 3,
    };

    #[test]
    fn committed_output_skips_pending_and_hidden_parts() {
        assert!(is_committed("part-0-1.jsonl"));
        assert!(is_committed("2024/part-0-1.jsonl"));
        assert!(!is_committed("_pending/part-0-1.jsonl"));
        assert!(!is_committed(".part-0-1.inprogress"));
        assert!(!is_committed("a/_tmp/part"));
        assert!(!is_committed(""));
    }

    #[test]
    fn a_complete_run_has_no_violations() {
        let report = report(complete(2, 3));
        assert_eq!(
            report.violations_of_complete_run(TWO_BY_THREE),
            Vec::<String>::new()
        );
        assert_eq!(report.records, 6);
    }

    #[test]
    fn a_repeated_record_is_a_duplicate() {
        let mut records = complete(2, 3);
        records.push(record(1, 2));
        let problems = report(records).violations();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("more than once"), "{problems:?}");
    }

    #[test]
    fn a_missing_record_is_a_gap_even_mid_run() {
        let records = vec![record(0, 0), record(0, 2)];
        let problems = report(records).violations();
        assert!(
            problems[0].contains("key 0: 1 missing below 2"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_alert_fails_the_run() {
        let mut records = complete(2, 3);
        records[0].alert = Some("repeat".into());
        let problems = report(records).violations();
        assert!(problems[0].contains("alert"), "{problems:?}");
    }

    #[test]
    fn a_prefix_is_fine_mid_run_but_not_at_the_end() {
        let report = report(vec![record(0, 0), record(0, 1), record(1, 0)]);
        assert!(report.violations().is_empty());
        let problems = report.violations_of_complete_run(TWO_BY_THREE);
        assert!(problems[0].contains("key 0: 2, key 1: 1"), "{problems:?}");
    }

    #[test]
    fn records_parse_from_the_sink_format() {
        let good: Record = serde_json::from_str(r#"{"key":3,"seq":9}"#).expect("parses");
        assert_eq!(good, record(3, 9));
        let alert: Record = serde_json::from_str(r#"{"key":3,"seq":9,"alert":"gap","expected":7}"#)
            .expect("parses");
        assert_eq!(alert.alert.as_deref(), Some("gap"));
    }
}
