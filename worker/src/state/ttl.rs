//! State time-to-live (Flink's `StateTtlConfig`): a state registered with a [`StateTtl`]
//! stores each value (each list element, each map entry) with the processing time of its
//! last write (or access), and treats it as gone once `ttl` has passed.
//!
//! TTL lives in the value encoding, above the backend's bytes: the handles prefix values with
//! their timestamp and check it on access, and the sweep before a snapshot
//! ([`TtlStates::sweep`]) reads only those prefixes through the backend's generic
//! [`retain_entries`](super::backend::KeyedStateBackend::retain_entries). Any backend that
//! stores bytes per `(key, state, suffix)` gets TTL without code of its own.
//!
//! Encodings (little-endian). States without TTL keep their plain postcard bytes, so old
//! savepoints restore unchanged:
//! - value, reducing, aggregating state and each map entry: `[written_ms:8][postcard value]`;
//! - list state (namespaced or not): one frame per element,
//!   `[written_ms:8][len:4][postcard element]`, so an element can be dropped without knowing
//!   its type, and appends never decode the list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::backend::{KeyedStateBackend, Retain, StateId};
use crate::error::{Error, Result};

const TS_LEN: usize = 8;
const FRAME_HEADER: usize = TS_LEN + 4;

/// How long a state's values live, when that time restarts, and whether an expired value that
/// is still stored may be returned. Opt-in per state with
/// [`StateRegistry::with_ttl`](super::StateRegistry::with_ttl):
///
/// ```
/// use std::time::Duration;
/// use weir::state::{StateTtl, UpdateType, Visibility};
///
/// let ttl = StateTtl::new(Duration::from_secs(3600))
///     .update_on(UpdateType::OnReadAndWrite)
///     .visibility(Visibility::NeverReturnExpired);
/// # let _ = ttl;
/// ```
///
/// Time is processing time (the worker's wall clock). Expired values are deleted when read
/// (cleanup on access) and by a sweep before every checkpoint and savepoint (cleanup at
/// snapshot, on by default), so they are not in the next snapshot. The timestamp is stored
/// with each value: TTL survives restore and rescale, and a restore with another `ttl`
/// applies the new one to the stored timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtl {
    ttl: Duration,
    update: UpdateType,
    visibility: Visibility,
    cleanup_at_snapshot: bool,
}

/// When a value's time to live restarts (Flink's `StateTtlConfig.UpdateType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateType {
    /// On every write (`set`, `add`, `put`, `update`): reads do not extend the life.
    #[default]
    OnCreateAndWrite,
    /// On every write and every read that returns the value.
    OnReadAndWrite,
}

/// Whether an expired value still stored may be returned (Flink's `StateVisibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Visibility {
    /// Expired values are never returned, even when not yet cleaned up.
    #[default]
    NeverReturnExpired,
    /// A read returns an expired value it finds once (and deletes it).
    ReturnExpiredIfNotCleanedUp,
}

impl StateTtl {
    /// Values live `ttl` after their last write; expired values are never returned and are
    /// swept before every snapshot.
    pub fn new(ttl: Duration) -> Self {
        StateTtl {
            ttl,
            update: UpdateType::default(),
            visibility: Visibility::default(),
            cleanup_at_snapshot: true,
        }
    }

    pub fn update_on(mut self, update: UpdateType) -> Self {
        self.update = update;
        self
    }

    pub fn visibility(mut self, visibility: Visibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// Whether a sweep deletes this state's expired values before every checkpoint and
    /// savepoint (default on). The sweep reads the subtask's whole keyed state once per
    /// snapshot; off, expired values are deleted only when read and stay in snapshots until
    /// then.
    pub fn cleanup_at_snapshot(mut self, on: bool) -> Self {
        self.cleanup_at_snapshot = on;
        self
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Processing time in milliseconds since the epoch; tests inject a manual one.
pub(crate) type TtlClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub(crate) fn system_clock() -> TtlClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// How a TTL'd state lays out its stored bytes, which the sweep needs to find timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One timestamped value per stored entry (value, reducing, aggregating, map entries).
    Single,
    /// Timestamped frames, one per list element.
    List,
}

/// The TTL of one registered state, with the clock it reads.
#[derive(Clone)]
pub(crate) struct Ttl {
    pub(crate) config: StateTtl,
    ttl_ms: u64,
    clock: TtlClock,
}

impl Ttl {
    pub(crate) fn new(config: StateTtl, clock: TtlClock) -> Self {
        Ttl {
            ttl_ms: u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX),
            config,
            clock,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }

    pub(crate) fn expired(&self, written_ms: u64, now: u64) -> bool {
        written_ms.saturating_add(self.ttl_ms) <= now
    }

    pub(crate) fn refresh_on_read(&self) -> bool {
        self.config.update == UpdateType::OnReadAndWrite
    }

    pub(crate) fn return_expired(&self) -> bool {
        self.config.visibility == Visibility::ReturnExpiredIfNotCleanedUp
    }
}

/// `[written_ms][payload]` of a single value.
pub(crate) fn stamp(now: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&now.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The timestamp and payload of a single stamped value; `None` when too short to be one.
pub(crate) fn unstamp(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (ts, payload) = bytes.split_first_chunk::<TS_LEN>()?;
    Some((u64::from_le_bytes(*ts), payload))
}

/// Appends one list frame.
pub(crate) fn push_frame(now: u64, element: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&now.to_le_bytes());
    // Elements of 4 GiB are not a thing keyed state can hold.
    out.extend_from_slice(&(element.len() as u32).to_le_bytes());
    out.extend_from_slice(element);
}

/// The `(written_ms, element)` frames of a TTL'd list; `None` when the bytes are not frames.
pub(crate) fn frames(mut bytes: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (header, rest) = bytes.split_first_chunk::<FRAME_HEADER>()?;
        let (ts, len) = header.split_at(TS_LEN);
        let ts = u64::from_le_bytes(ts.try_into().ok()?);
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        if rest.len() < len {
            return None;
        }
        out.push((ts, &rest[..len]));
        bytes = &rest[len..];
    }
    Some(out)
}

/// Whether a state is stored with timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateFormat {
    Plain,
    Ttl,
}

/// The registered states of one operator that have a TTL, for the snapshot sweep and the
/// restore check.
#[derive(Clone, Default)]
pub(crate) struct TtlStates {
    pub(crate) states: Vec<(StateId, Arc<str>, Layout, Ttl)>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SweepStats {
    pub scanned: u64,
    pub deleted: u64,
    pub rewritten: u64,
}

impl TtlStates {
    pub(crate) fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Deletes every expired value (and expired list element) of the states that clean up at
    /// snapshot. Runs on the task thread right before the snapshot's synchronous part, so
    /// neither a full nor an incremental snapshot holds them.
    pub(crate) fn sweep(&self, backend: &mut KeyedStateBackend) -> Result<SweepStats> {
        let swept: Vec<_> = self
            .states
            .iter()
            .filter(|(_, _, _, ttl)| ttl.config.cleanup_at_snapshot)
            .collect();
        if swept.is_empty() {
            return Ok(SweepStats::default());
        }
        let ids: Vec<StateId> = swept.iter().map(|(id, ..)| *id).collect();
        let mut stats = SweepStats::default();
        let mut malformed: Option<Arc<str>> = None;
        backend.retain_entries(&ids, |id, value| {
            stats.scanned += 1;
            let Some((_, name, layout, ttl)) = swept.iter().find(|(s, ..)| *s == id) else {
                return Retain::Keep;
            };
            let now = ttl.now();
            let decision = match layout {
                Layout::Single => match unstamp(value) {
                    Some((ts, _)) if ttl.expired(ts, now) => Retain::Delete,
                    Some(_) => Retain::Keep,
                    None => {
                        malformed.get_or_insert_with(|| name.clone());
                        Retain::Keep
                    }
                },
                Layout::List => match frames(value) {
                    Some(frames) => {
                        let live: Vec<_> = frames
                            .iter()
                            .filter(|(ts, _)| !ttl.expired(*ts, now))
                            .collect();
                        if live.is_empty() {
                            Retain::Delete
                        } else if live.len() == frames.len() {
                            Retain::Keep
                        } else {
                            let mut bytes = Vec::with_capacity(value.len());
                            for (ts, element) in live {
                                push_frame(*ts, element, &mut bytes);
                            }
                            Retain::Replace(bytes)
                        }
                    }
                    None => {
                        malformed.get_or_insert_with(|| name.clone());
                        Retain::Keep
                    }
                },
            };
            match decision {
                Retain::Delete => stats.deleted += 1,
                Retain::Replace(_) => stats.rewritten += 1,
                Retain::Keep => {}
            }
            decision
        })?;
        if let Some(name) = malformed {
            return Err(Error::codec(
                format!("state {name}"),
                "a stored value has no TTL timestamp (was the state stored without TTL?)",
            ));
        }
        Ok(stats)
    }
}

/// Refuses a restore that would read a state in the other format (Flink refuses the same
/// change with a `StateMigrationException`). Snapshots name their TTL'd states
/// (`recorded_ttl`); a state registered with a TTL that the snapshot does not name is either
/// new or was stored plain, which one scan of the restored entries tells (only on the first
/// restore after a TTL is added, and only over the states it concerns).
pub(crate) fn check_restored_formats(
    operator: &str,
    registered: &BTreeMap<String, StateFormat>,
    ttl_states: &TtlStates,
    recorded_ttl: &BTreeSet<String>,
    backend: &mut KeyedStateBackend,
    snapshot: &str,
) -> Result<()> {
    let incompatible = |name: &str, was: &str, now: &str| Error::IncompatibleState {
        operator: operator.to_string(),
        state: name.to_string(),
        snapshot: snapshot.to_string(),
        reason: format!(
            "it was stored {was} and is registered {now} now; switching a state's TTL on or off \
             needs a new state name (Flink refuses the same change)"
        ),
    };
    if let Some(name) = registered
        .iter()
        .find(|(name, format)| **format == StateFormat::Plain && recorded_ttl.contains(*name))
        .map(|(name, _)| name)
    {
        return Err(incompatible(name, "with a TTL", "without TTL"));
    }
    let unrecorded: Vec<StateId> = ttl_states
        .states
        .iter()
        .filter(|(_, name, ..)| !recorded_ttl.contains(short_name(name)))
        .map(|(id, ..)| *id)
        .collect();
    if unrecorded.is_empty() {
        return Ok(());
    }
    let mut found: Option<StateId> = None;
    backend.retain_entries(&unrecorded, |id, _| {
        found.get_or_insert(id);
        Retain::Keep
    })?;
    if let Some(id) = found
        && let Some((_, name, ..)) = ttl_states.states.iter().find(|(s, ..)| *s == id)
    {
        return Err(incompatible(short_name(name), "without TTL", "with a TTL"));
    }
    Ok(())
}

/// `state` of `operator/state`.
fn short_name(full: &str) -> &str {
    full.split_once('/').map_or(full, |(_, state)| state)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::spec::StateBackendKind;
    use crate::state::backend::test_on_both_backends;
    use crate::state::backend::test_support::open_backend;
    use crate::state::keygroups::key_group_for_key_bytes;
    use crate::state::{KeyGroupRange, KeyedContext, StateRegistry};

    const MAX: u32 = 128;
    const ALL: KeyGroupRange = KeyGroupRange {
        start: 0,
        end: MAX as u16,
    };

    /// Processing time the test moves by hand.
    #[derive(Clone, Default)]
    struct ManualClock(Arc<AtomicU64>);

    impl ManualClock {
        fn set(&self, ms: u64) {
            self.0.store(ms, Ordering::SeqCst);
        }

        fn registry(&self) -> StateRegistry {
            let time = self.0.clone();
            StateRegistry::new("op").with_clock(Arc::new(move || time.load(Ordering::SeqCst)))
        }
    }

    fn backend(kind: StateBackendKind, dir: &Path, name: &str) -> KeyedStateBackend {
        open_backend(kind, &dir.join(name), ALL, 64 << 20)
    }

    fn select(backend: &mut KeyedStateBackend, key: u64) -> KeyedContext<'_> {
        let bytes = key.to_be_bytes();
        backend.set_current_key(key_group_for_key_bytes(&bytes, MAX), &bytes);
        KeyedContext { backend }
    }

    fn ttl_ms(ms: u64) -> StateTtl {
        StateTtl::new(Duration::from_millis(ms))
    }

    #[test]
    fn frames_round_trip_and_reject_truncated_bytes() {
        let mut bytes = Vec::new();
        push_frame(5, b"abc", &mut bytes);
        push_frame(9, b"", &mut bytes);
        assert_eq!(
            frames(&bytes).expect("frames"),
            vec![(5, &b"abc"[..]), (9, &b""[..])]
        );
        assert!(frames(&bytes[..bytes.len() - 1]).is_none());
        assert!(frames(&bytes[..5]).is_none());
    }

    #[test]
    fn a_value_expires_exactly_ttl_after_its_write() {
        let ttl = Ttl::new(ttl_ms(100), system_clock());
        assert!(!ttl.expired(1_000, 1_099));
        assert!(ttl.expired(1_000, 1_100));
        let forever = Ttl::new(StateTtl::new(Duration::MAX), system_clock());
        assert!(!forever.expired(u64::MAX - 1, u64::MAX - 1));
    }

    test_on_both_backends! {
    fn expired_value_is_invisible_and_deleted_on_access(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let clock = ManualClock::default();
        let mut registry = clock.registry();
        let count = registry
            .with_ttl(ttl_ms(100))
            .value_state::<u64>("count")
            .expect("state");
        let id = count_id("count");
        clock.set(1_000);
        count.set(&mut select(&mut b, 1), &7).expect("set");
        clock.set(1_099);
        assert_eq!(count.get(&mut select(&mut b, 1)).expect("get"), Some(7));
        clock.set(1_100);
        assert_eq!(count.get(&mut select(&mut b, 1)).expect("get"), None);
        let ctx = select(&mut b, 1);
        assert_eq!(ctx.backend.get(id, &[]).expect("raw"), None, "deleted");
        // A write after expiry starts a new life.
        count.set(&mut select(&mut b, 1), &1).expect("set");
        clock.set(1_150);
        assert_eq!(count.get(&mut select(&mut b, 1)).expect("get"), Some(1));
    }
    }

    fn count_id(name: &str) -> StateId {
        xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32
    }

    test_on_both_backends! {
    fn return_expired_if_not_cleaned_up_returns_it_once(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let clock = ManualClock::default();
        let mut registry = clock.registry();
        let last = registry
            .with_ttl(ttl_ms(100).visibility(Visibility::ReturnExpiredIfNotCleanedUp))
            .value_state::<String>("last")
            .expect("state");
        last.set(&mut select(&mut b, 1), &"x".into()).expect("set");
        clock.set(500);
        assert_eq!(
            last.get(&mut select(&mut b, 1)).expect("get"),
            Some("x".to_string()),
            "expired but still stored"
        );
        assert_eq!(
            last.get(&mut select(&mut b, 1)).expect("get"),
            None,
            "cleaned up by the read"
        );
    }
    }

    test_on_both_backends! {
    fn on_read_and_write_extends_the_life_and_on_create_and_write_does_not(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let clock = ManualClock::default();
        let mut registry = clock.registry();
        let on_read = registry
            .with_ttl(ttl_ms(100).update_on(UpdateType::OnReadAndWrite))
            .value_state::<u32>("on-read")
            .expect("state");
        let on_write = registry
            .with_ttl(ttl_ms(100))
            .value_state::<u32>("on-write")
            .expect("state");
        on_read.set(&mut select(&mut b, 1), &1).expect("set");
        on_write.set(&mut select(&mut b, 1), &2).expect("set");
        for now in [80, 160, 240] {
            clock.set(now);
            assert_eq!(on_read.get(&mut select(&mut b, 1)).expect("get"), Some(1));
        }
        assert_eq!(on_write.get(&mut select(&mut b, 1)).expect("get"), None);
    }
    }

    test_on_both_backends! {
    fn list_elements_expire_one_by_one_in_plain_and_namespaced_lists(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let clock = ManualClock::default();
        let mut registry = clock.registry();
        let list = registry
            .with_ttl(ttl_ms(100))
            .list_state::<String>("l")
            .expect("state");
        let mut ctx = select(&mut b, 1);
        list.add(&mut ctx, "a".into()).expect("add");
        list.add_in(&mut ctx, b"w1", &"a".to_string()).expect("add");
        clock.set(50);
        list.add(&mut ctx, "b".into()).expect("add");
        list.add_in(&mut ctx, b"w1", &"b".to_string()).expect("add");
        list.add_in(&mut ctx, b"w2", &"c".to_string()).expect("add");
        list.merge_in(&mut ctx, b"w2", b"w1").expect("merge");
        assert_eq!(list.get(&mut ctx).expect("get"), vec!["a", "b"]);
        clock.set(120);
        assert_eq!(list.get(&mut ctx).expect("get"), vec!["b"]);
        assert_eq!(list.get_in(&mut ctx, b"w1").expect("get"), vec!["b", "c"]);
        list.update(&mut ctx, &["x".into(), "y".into()])
            .expect("update");
        clock.set(200);
        assert_eq!(list.get(&mut ctx).expect("get"), vec!["x", "y"]);
        assert!(list.get_in(&mut ctx, b"w1").expect("get").is_empty());
        assert_eq!(
            ctx.backend.get(count_id("l"), b"w1").expect("raw"),
            None,
            "a list whose elements all expired is deleted"
        );
    }
    }

    test_on_both_backends! {
    fn map_entries_expire_one_by_one(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let clock = ManualClock::default();
        let mut registry = clock.registry();
        let map = registry
            .with_ttl(ttl_ms(100))
            .map_state::<String, u32>("m")
            .expect("state");
        let mut ctx = select(&mut b, 1);
        map.put(&mut ctx, &"old".into(), &1).expect("put");
        clock.set(50);
        map.put(&mut ctx, &"new".into(), &2).expect("put");
        clock.set(120);
        assert!(!map.contains(&mut ctx, &"old".into()).expect("contains"));
        assert!(map.contains(&mut ctx, &"new".into()).expect("contains"));
        map.put(&mut ctx, &"older".into(), &3).expect("put");
        clock.set(155);
        assert_eq!(
            map.entries(&mut ctx).expect("entries"),
            vec![("older".to_string(), 3)]
        );
        assert_eq!(map.get(&mut ctx, &"new".into()).expect("get"), None);
    }
    }

    test_on_both_backends! {
    fn reducing_state_restarts_from_the_next_value_once_expired(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let clock = ManualClock::default();
        let mut registry = clock.registry();
        let sum = registry
            .with_ttl(ttl_ms(100))
            .reducing_state("sum", |a: u64, b: u64| a + b)
            .expect("state");
        let mut ctx = select(&mut b, 1);
        sum.add(&mut ctx, 1).expect("add");
        sum.add(&mut ctx, 2).expect("add");
        clock.set(100);
        sum.add(&mut ctx, 5).expect("add");
        assert_eq!(sum.get(&mut ctx).expect("get"), Some(5));
    }
    }

    test_on_both_backends! {
    fn states_without_ttl_keep_their_plain_bytes(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let mut registry = StateRegistry::new("op");
        let plain = registry.value_state::<u64>("plain").expect("state");
        let list = registry.list_state::<u64>("list").expect("state");
        let mut ctx = select(&mut b, 1);
        plain.set(&mut ctx, &300).expect("set");
        list.add(&mut ctx, 1).expect("add");
        list.add(&mut ctx, 2).expect("add");
        let raw = ctx.backend.get(count_id("plain"), &[]).expect("raw");
        assert_eq!(raw, Some(&postcard::to_allocvec(&300u64).expect("enc")[..]));
        let raw = ctx.backend.get(count_id("list"), &[]).expect("raw");
        assert_eq!(
            raw,
            Some(&postcard::to_allocvec(&vec![1u64, 2]).expect("enc")[..])
        );
        assert!(registry.ttl_names().is_empty());
    }
    }

    /// Bytes of the RocksDB files an incremental checkpoint would hold.
    fn sst_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .expect("checkpoint dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
            .map(|e| e.metadata().expect("metadata").len())
            .sum()
    }

    test_on_both_backends! {
    fn cleanup_at_snapshot_drops_expired_values_from_the_next_snapshot(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let clock = ManualClock::default();
        let mut registry = clock.registry();
        let session = registry
            .with_ttl(ttl_ms(1_000))
            .value_state::<String>("session")
            .expect("state");
        let recent = registry
            .with_ttl(ttl_ms(1_000))
            .list_state::<u64>("recent")
            .expect("state");
        let total = registry.value_state::<u64>("total").expect("state");
        let keys = 4_000u64;
        for key in 0..keys {
            // Even keys are written at 0, odd ones at 600: at 1,100 the even ones are expired.
            clock.set(if key % 2 == 0 { 0 } else { 600 });
            let mut ctx = select(&mut b, key);
            session.set(&mut ctx, &"s".repeat(100)).expect("set");
            total.set(&mut ctx, &key).expect("set");
            recent.add(&mut ctx, key).expect("add");
            clock.set(600);
            recent.add(&mut ctx, key + 1).expect("add");
        }
        let ttl_states = registry.ttl_states().clone();
        let pending = b
            .checkpoint_to(&dir.path().join("before"))
            .expect("checkpoint");
        let before_files = pending.rocksdb_files().map(sst_bytes);
        let before = pending
            .write_full(&dir.path().join("before.state"))
            .expect("snapshot");

        clock.set(1_100);
        let swept = ttl_states.sweep(&mut b).expect("sweep");
        assert_eq!(
            swept,
            SweepStats {
                scanned: 2 * keys,
                deleted: keys / 2,
                rewritten: keys / 2,
            },
            "even keys: session deleted, one of two list elements dropped"
        );
        let pending = b
            .checkpoint_to(&dir.path().join("after"))
            .expect("checkpoint");
        let after_files = pending.rocksdb_files().map(sst_bytes);
        let after = pending
            .write_full(&dir.path().join("after.state"))
            .expect("snapshot");
        assert_eq!(before.entries, 3 * keys);
        assert_eq!(after.entries, 3 * keys - keys / 2);
        assert!(
            after.size * 10 < before.size * 8,
            "full snapshot {} -> {} bytes",
            before.size,
            after.size
        );
        // RocksDB's incremental checkpoints hold files: they shrink once compaction rewrote
        // them. The heap has no files; its snapshots are the full objects above.
        if let (Some(before_files), Some(after_files)) = (before_files, after_files) {
            assert!(
                after_files * 10 < before_files * 8,
                "incremental files {before_files} -> {after_files} bytes"
            );
        }
        eprintln!(
            "{kind:?}: full snapshot {} -> {} bytes, RocksDB files {before_files:?} -> {after_files:?} bytes",
            before.size, after.size
        );

        // Survivors restore with their timestamps and expire on time after the restore.
        let data = std::fs::read(dir.path().join("after.state")).expect("read");
        let mut restored = backend(kind, dir.path(), "restored");
        restored.restore_snapshot(&data, "after").expect("restore");
        for key in [0u64, 1] {
            let mut ctx = select(&mut restored, key);
            let expected = (key == 1).then(|| "s".repeat(100));
            assert_eq!(session.get(&mut ctx).expect("get"), expected, "key {key}");
            assert_eq!(total.get(&mut ctx).expect("get"), Some(key));
            let list = if key == 0 { vec![1] } else { vec![1, 2] };
            assert_eq!(recent.get(&mut ctx).expect("get"), list, "key {key}");
        }
        clock.set(1_600);
        let mut ctx = select(&mut restored, 1);
        assert_eq!(session.get(&mut ctx).expect("get"), None);
    }
    }

    test_on_both_backends! {
    fn switching_ttl_on_or_off_across_a_restore_is_refused_naming_the_state(kind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = backend(kind, dir.path(), "db");
        let mut registry = StateRegistry::new("op");
        let count = registry.value_state::<u64>("count").expect("state");
        count.set(&mut select(&mut b, 1), &1).expect("set");
        b.flush_dirty().expect("flush");

        // The snapshot recorded no TTL'd state; "count" now has a TTL, and has entries.
        let mut with_ttl = StateRegistry::new("op");
        with_ttl
            .with_ttl(ttl_ms(100))
            .value_state::<u64>("count")
            .expect("state");
        with_ttl
            .with_ttl(ttl_ms(100))
            .value_state::<u64>("new")
            .expect("state");
        let err = check_restored_formats(
            "op",
            &with_ttl.formats(),
            with_ttl.ttl_states(),
            &BTreeSet::new(),
            &mut b,
            "chk-1",
        )
        .expect_err("plain -> TTL is refused");
        let message = err.to_string();
        assert!(
            message.contains("\"count\"") && message.contains("stored without TTL"),
            "{message}"
        );
        assert!(!err.is_recoverable());

        // A new TTL'd state next to an unchanged plain one is fine.
        let mut added = StateRegistry::new("op");
        added.value_state::<u64>("count").expect("state");
        added
            .with_ttl(ttl_ms(100))
            .value_state::<u64>("new")
            .expect("state");
        check_restored_formats(
            "op",
            &added.formats(),
            added.ttl_states(),
            &BTreeSet::new(),
            &mut b,
            "chk-1",
        )
        .expect("a new TTL'd state restores");

        // The snapshot recorded "new" as TTL'd; registering it plain is refused.
        let mut plain = StateRegistry::new("op");
        plain.value_state::<u64>("new").expect("state");
        let err = check_restored_formats(
            "op",
            &plain.formats(),
            plain.ttl_states(),
            &BTreeSet::from(["new".to_string()]),
            &mut b,
            "chk-2",
        )
        .expect_err("TTL -> plain is refused");
        assert!(err.to_string().contains("stored with a TTL"), "{err}");
    }
    }
}
