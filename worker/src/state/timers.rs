//! Per-key timers (Flink's `TimerService`), kept in keyed state.
//!
//! A timer is one backend entry under its key's key group, so it is snapshotted, restored and
//! moved on rescale with that key group like any other state:
//! `[key group:2][0xFFFFFFFF][domain:1][time:8][key len:4][key][namespace]` (big-endian; the
//! time with its sign bit flipped so entries sort by time). `0xFFFFFFFF` sits where a state
//! entry has its key length, which no key reaches, so timers never mix with state. The value
//! is the key itself in postcard, which `on_timer` receives.
//!
//! An in-memory index (ordered by time) answers "which timers are due" without scanning; it
//! is rebuilt from the entries when state is restored. Registering an existing timer again is
//! a no-op; a timer fires once and is deleted as it fires, so a snapshot taken after it fired
//! does not hold it and a restore does not fire it again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::handles::KeyedContext;
use crate::error::{Error, Result};
use crate::types::Timestamp;

const TIMER_MARK: [u8; 4] = [0xFF; 4];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timer's time.
    EventTime,
    /// Fires when the wall clock (ms since the epoch) reaches it.
    ProcessingTime,
}

impl TimeDomain {
    fn tag(self) -> u8 {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }
}

/// A timer as `on_timer` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub timestamp: Timestamp,
    pub domain: TimeDomain,
    /// Empty for plain timers; windows put the window here.
    pub namespace: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    pub time: Timestamp,
    pub key_group: u16,
    pub key: Vec<u8>,
    pub namespace: Vec<u8>,
}

impl TimerKey {
    fn encode(&self, domain: TimeDomain) -> Vec<u8> {
        let mut out = Vec::with_capacity(19 + self.key.len() + self.namespace.len());
        out.extend_from_slice(&self.key_group.to_be_bytes());
        out.extend_from_slice(&TIMER_MARK);
        out.push(domain.tag());
        out.extend_from_slice(&((self.time as u64) ^ (1 << 63)).to_be_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.namespace);
        out
    }

    /// `None` for entries that are not timers.
    fn decode(entry: &[u8]) -> Option<std::result::Result<(TimeDomain, TimerKey), String>> {
        if entry.len() < 6 || entry[2..6] != TIMER_MARK {
            return None;
        }
        let parse = || {
            let fixed = entry.get(..19).ok_or("timer entry too short")?;
            let domain = match fixed[6] {
                0 => TimeDomain::EventTime,
                1 => TimeDomain::ProcessingTime,
                other => return Err(format!("unknown timer domain {other}")),
            };
            let time = (u64::from_be_bytes(fixed[7..15].try_into().map_err(|_| "time")?)
                ^ (1 << 63)) as i64;
            let key_len = u32::from_be_bytes(fixed[15..19].try_into().map_err(|_| "len")?);
            let key_end = 19 + key_len as usize;
            let key = entry.get(19..key_end).ok_or("timer key truncated")?;
            Ok((
                domain,
                TimerKey {
                    time,
                    key_group: u16::from_be_bytes([entry[0], entry[1]]),
                    key: key.to_vec(),
                    namespace: entry[key_end..].to_vec(),
                },
            ))
        };
        Some(parse())
    }
}

/// The timers of one keyed subtask, by domain, in firing order, with each key's postcard
/// bytes. Also holds the subtask's current watermark, which functions read.
pub(crate) struct TimerService {
    queues: [BTreeMap<TimerKey, Vec<u8>>; 2],
    /// Registered during the current call, waiting for the key bytes the task attaches after
    /// it (the backend knows keys only as state bytes).
    staged: Vec<(TimeDomain, TimerKey)>,
    pub(crate) watermark: Timestamp,
}

impl Default for TimerService {
    fn default() -> Self {
        TimerService {
            queues: [BTreeMap::new(), BTreeMap::new()],
            staged: Vec::new(),
            watermark: Timestamp::MIN,
        }
    }
}

impl TimerService {
    fn queue(&mut self, domain: TimeDomain) -> &mut BTreeMap<TimerKey, Vec<u8>> {
        &mut self.queues[domain.tag() as usize]
    }

    pub(crate) fn restore_entry(&mut self, entry: &[u8], value: &[u8], object: &str) -> Result<()> {
        match TimerKey::decode(entry) {
            None => Ok(()),
            Some(Ok((domain, key))) => {
                self.queue(domain).insert(key, value.to_vec());
                Ok(())
            }
            Some(Err(message)) => Err(Error::codec(format!("timer in {object}"), message)),
        }
    }

    pub(crate) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// The earliest timer of `domain` due at `time`, removed from the index.
    pub(crate) fn pop_due(
        &mut self,
        domain: TimeDomain,
        time: Timestamp,
    ) -> Option<(TimerKey, Vec<u8>)> {
        let queue = self.queue(domain);
        let first = queue.first_key_value()?.0;
        if first.time > time {
            return None;
        }
        queue.pop_first()
    }

    /// When the next timer of `domain` is due.
    pub(crate) fn next_due(&self, domain: TimeDomain) -> Option<Timestamp> {
        self.queues[domain.tag() as usize]
            .first_key_value()
            .map(|(k, _)| k.time)
    }

    #[cfg(test)]
    pub(crate) fn len(&self, domain: TimeDomain) -> usize {
        self.queues[domain.tag() as usize].len()
    }
}

/// Deletes a fired timer's entry (the index already dropped it).
pub(crate) fn delete_fired(
    backend: &mut super::KeyedStateBackend,
    domain: TimeDomain,
    key: &TimerKey,
) -> Result<()> {
    backend.delete_raw(&key.encode(domain))
}

/// Gives the timers registered during the last call the key they belong to, and stores them.
pub(crate) fn attach_staged(backend: &mut super::KeyedStateBackend, key: &[u8]) -> Result<()> {
    for (domain, timer) in std::mem::take(&mut backend.timers.staged) {
        let Some(payload) = backend.timers.queue(domain).get_mut(&timer) else {
            continue; // deleted again in the same call
        };
        if payload.is_empty() {
            *payload = key.to_vec();
            // New to the index, so not in RocksDB either (the index holds every timer).
            backend.put_raw_new(&timer.encode(domain), key.to_vec())?;
        }
    }
    Ok(())
}

/// Wall-clock time in ms since the epoch, the clock of processing-time timers.
pub fn processing_time_now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Timestamp)
}

/// Timers of the current key.
impl KeyedContext<'_> {
    fn timer_key(&self, time: Timestamp, namespace: &[u8]) -> TimerKey {
        let (key_group, key) = self.backend.current_key();
        TimerKey {
            time,
            key_group,
            key: key.to_vec(),
            namespace: namespace.to_vec(),
        }
    }

    /// Registers a timer of the current key in `namespace` (e.g. a window). Registering the
    /// same timer again does nothing.
    pub fn register_timer(&mut self, domain: TimeDomain, time: Timestamp, namespace: &[u8]) {
        let key = self.timer_key(time, namespace);
        let timers = &mut self.backend.timers;
        if timers.queue(domain).contains_key(&key) {
            return;
        }
        timers.queue(domain).insert(key.clone(), Vec::new());
        timers.staged.push((domain, key));
    }

    pub fn delete_timer(
        &mut self,
        domain: TimeDomain,
        time: Timestamp,
        namespace: &[u8],
    ) -> Result<()> {
        let key = self.timer_key(time, namespace);
        if let Some(payload) = self.backend.timers.queue(domain).remove(&key) {
            // An empty payload was never written: it was registered in this same call.
            if !payload.is_empty() {
                self.backend.delete_raw(&key.encode(domain))?;
            }
        }
        Ok(())
    }

    /// Calls `on_timer` once the watermark reaches `time`.
    pub fn register_event_time_timer(&mut self, time: Timestamp) {
        self.register_timer(TimeDomain::EventTime, time, &[]);
    }

    pub fn delete_event_time_timer(&mut self, time: Timestamp) -> Result<()> {
        self.delete_timer(TimeDomain::EventTime, time, &[])
    }

    /// Calls `on_timer` once the wall clock reaches `time` (ms since the epoch).
    pub fn register_processing_time_timer(&mut self, time: Timestamp) {
        self.register_timer(TimeDomain::ProcessingTime, time, &[]);
    }

    pub fn delete_processing_time_timer(&mut self, time: Timestamp) -> Result<()> {
        self.delete_timer(TimeDomain::ProcessingTime, time, &[])
    }

    /// The task's event time: `Timestamp::MIN` before the first watermark.
    pub fn current_watermark(&self) -> Timestamp {
        self.backend.timers.watermark
    }

    pub fn current_processing_time(&self) -> Timestamp {
        processing_time_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::KeyedStateBackend;
    use crate::state::backend::test_on_both_backends;
    use crate::state::backend::test_support::{open_backend, snapshot_bytes};
    use crate::state::keygroups::{
        KeyGroupRange, key_group_for_key_bytes, key_group_range_for_subtask,
    };

    const MAX: u32 = 128;

    fn select(backend: &mut KeyedStateBackend, key: u64) {
        let bytes = key.to_be_bytes();
        backend.set_current_key(key_group_for_key_bytes(&bytes, MAX), &bytes);
    }

    fn register(backend: &mut KeyedStateBackend, key: u64, time: Timestamp) {
        select(backend, key);
        let mut ctx = KeyedContext { backend };
        ctx.register_event_time_timer(time);
        attach_staged(backend, &key.to_be_bytes()).expect("attach");
    }

    /// Fires every event-time timer due at `watermark`, as the keyed task does.
    fn fire(backend: &mut KeyedStateBackend, watermark: Timestamp) -> Vec<(u64, Timestamp)> {
        let mut fired = Vec::new();
        while let Some((key, payload)) = backend.timers.pop_due(TimeDomain::EventTime, watermark) {
            delete_fired(backend, TimeDomain::EventTime, &key).expect("delete");
            let id = u64::from_be_bytes(payload.try_into().expect("u64 key"));
            fired.push((id, key.time));
        }
        fired
    }

    fn snapshot(backend: &mut KeyedStateBackend, dir: &std::path::Path, name: &str) -> Vec<u8> {
        snapshot_bytes(backend, dir, name)
    }

    fn all() -> KeyGroupRange {
        KeyGroupRange {
            start: 0,
            end: MAX as u16,
        }
    }

    test_on_both_backends! {
    fn timers_fire_in_time_order_once_and_duplicates_collapse(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = open_backend(kind, &dir.path().join("db"), all(), 1 << 20);
        register(&mut b, 1, 300);
        register(&mut b, 2, 100);
        register(&mut b, 2, 100);
        register(&mut b, 3, -5);
        assert_eq!(b.timers.len(TimeDomain::EventTime), 3);
        assert_eq!(fire(&mut b, 99), vec![(3, -5)]);
        assert_eq!(fire(&mut b, 300), vec![(2, 100), (1, 300)]);
        assert!(fire(&mut b, Timestamp::MAX).is_empty(), "each fires once");
    }
    }

    test_on_both_backends! {
    fn timers_fire_once_across_snapshot_and_restore(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = open_backend(kind, &dir.path().join("db"), all(), 1 << 20);
        register(&mut b, 1, 10);
        register(&mut b, 2, 20);
        let before = snapshot(&mut b, dir.path(), "before");
        assert_eq!(fire(&mut b, 10), vec![(1, 10)]);
        let after = snapshot(&mut b, dir.path(), "after");

        let mut restored =
            open_backend(kind, &dir.path().join("r1"), all(), 1 << 20);
        restored.restore_snapshot(&after, "after").expect("restore");
        assert_eq!(
            fire(&mut restored, 100),
            vec![(2, 20)],
            "the timer that fired before the snapshot does not fire again"
        );
        let mut replay =
            open_backend(kind, &dir.path().join("r2"), all(), 1 << 20);
        replay.restore_snapshot(&before, "before").expect("restore");
        assert_eq!(fire(&mut replay, 100), vec![(1, 10), (2, 20)]);
    }
    }

    test_on_both_backends! {
    fn timers_move_with_their_key_groups_on_rescale(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = open_backend(kind, &dir.path().join("db"), all(), 1 << 20);
        for key in 0..200u64 {
            register(&mut b, key, key as Timestamp);
        }
        let data = snapshot(&mut b, dir.path(), "snap");
        let mut total = Vec::new();
        for subtask in 0..3 {
            let range = key_group_range_for_subtask(MAX, 3, subtask);
            let mut part =
                open_backend(kind, &dir.path().join(format!("p{subtask}")), range, 1 << 20);
            part.restore_snapshot(&data, "snap").expect("restore");
            for (key, _) in fire(&mut part, Timestamp::MAX) {
                let group = key_group_for_key_bytes(&key.to_be_bytes(), MAX);
                assert!(
                    range.contains(group),
                    "key {key} fired in subtask {subtask}"
                );
                total.push(key);
            }
        }
        total.sort_unstable();
        assert_eq!(total, (0..200).collect::<Vec<_>>());
    }
    }

    test_on_both_backends! {
    fn deleting_a_timer_keeps_it_from_firing_and_timers_do_not_touch_state(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = open_backend(kind, &dir.path().join("db"), all(), 1 << 20);
        let mut registry = crate::state::StateRegistry::new("op");
        let map = registry.map_state::<u32, u32>("m").expect("state");
        register(&mut b, 1, 10);
        register(&mut b, 1, 20);
        select(&mut b, 1);
        let mut ctx = KeyedContext { backend: &mut b };
        map.put(&mut ctx, &1, &1).expect("put");
        ctx.delete_event_time_timer(10).expect("delete");
        assert_eq!(map.entries(&mut ctx).expect("entries"), vec![(1, 1)]);
        let data = snapshot(&mut b, dir.path(), "snap");
        let mut r = open_backend(kind, &dir.path().join("r"), all(), 1 << 20);
        r.restore_snapshot(&data, "snap").expect("restore");
        assert_eq!(fire(&mut r, 100), vec![(1, 20)]);
    }
    }
}
