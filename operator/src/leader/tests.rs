//! Leader election against the in-memory API server (`resourceVersion` conflicts like the real
//! one), with the clock given to each attempt.

use super::*;
use crate::fake_kube::{FakeApiServer, Timeline};

const LEASE_NAMESPACE: &str = "weir-system";
const LEASE_NAME: &str = "weir-operator-leader";
const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/weir-system/leases/weir-operator-leader";
const DURATION: Duration = Duration::from_secs(15);

/// `seconds` after a fixed start.
fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).expect("valid time")
}

fn replica(client: &kube::Client, identity: &str) -> LeaseLock {
    LeaseLock::new(
        client.clone(),
        LEASE_NAMESPACE,
        LEASE_NAME,
        identity,
        DURATION,
    )
}

fn start() -> (FakeApiServer, kube::Client, LeaseLock, LeaseLock) {
    let (api, client) = FakeApiServer::start(Timeline::default());
    let (a, b) = (replica(&client, "a"), replica(&client, "b"));
    (api, client, a, b)
}

fn holder(api: &FakeApiServer) -> Option<String> {
    api.get(LEASE_PATH)
        .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_string))
}

fn spec(holder: Option<&str>, renewed: i64, seconds: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: holder.map(str::to_string),
        lease_duration_seconds: Some(seconds),
        renew_time: Some(MicroTime(at(renewed))),
        ..LeaseSpec::default()
    }
}

// ---- the decision ----

#[test]
fn decision_follows_holder_and_expiry() {
    assert_eq!(decide(None, "a", at(0), DURATION), LeaseDecision::Create);
    let held_by_b = spec(Some("b"), 0, 15);
    assert_eq!(
        decide(Some(&held_by_b), "a", at(15), DURATION),
        LeaseDecision::Wait,
        "15s old is not yet expired"
    );
    assert_eq!(
        decide(Some(&held_by_b), "a", at(16), DURATION),
        LeaseDecision::Take
    );
    assert_eq!(
        decide(Some(&held_by_b), "b", at(100), DURATION),
        LeaseDecision::Renew
    );
    let released = spec(None, 0, 1);
    assert_eq!(
        decide(Some(&released), "a", at(0), DURATION),
        LeaseDecision::Take,
        "a lease without holder is free at once"
    );
    let empty_holder = spec(Some(""), 0, 15);
    assert_eq!(
        decide(Some(&empty_holder), "a", at(0), DURATION),
        LeaseDecision::Take
    );
}

// ---- against the API server ----

#[tokio::test]
async fn first_candidate_creates_the_lease_and_the_other_waits() {
    let (api, _, a, b) = start();
    assert!(a.try_acquire_or_renew_at(at(0)).await.expect("attempt"));
    assert!(!b.try_acquire_or_renew_at(at(1)).await.expect("attempt"));
    assert!(a.try_acquire_or_renew_at(at(5)).await.expect("renews"));
    assert_eq!(holder(&api).as_deref(), Some("a"));
}

#[tokio::test]
async fn the_other_replica_takes_over_only_once_renewals_stopped_for_the_lease_duration() {
    let (api, _, a, b) = start();
    assert!(a.try_acquire_or_renew_at(at(0)).await.expect("attempt"));
    assert!(a.try_acquire_or_renew_at(at(5)).await.expect("renews"));
    // `a` stops renewing (paused, partitioned): its lease runs until 5 + 15.
    assert!(!b.try_acquire_or_renew_at(at(20)).await.expect("attempt"));
    assert!(b.try_acquire_or_renew_at(at(21)).await.expect("attempt"));
    assert_eq!(holder(&api).as_deref(), Some("b"));
    assert!(
        !a.try_acquire_or_renew_at(at(22)).await.expect("attempt"),
        "the old leader finds it lost the lease"
    );
    let lease = api.get(LEASE_PATH).expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn two_candidates_acting_on_the_same_read_cannot_both_win() {
    let (api, client, a, b) = start();
    let c = replica(&client, "c");
    assert!(c.try_acquire_or_renew_at(at(0)).await.expect("attempt"));
    // `c` stops renewing; `a` and `b` both read its expired lease, then both write.
    let read: Lease = c.api.get(LEASE_NAME).await.expect("read");
    let first = a.write_decision(Some(read.clone()), at(30)).await;
    let second = b.write_decision(Some(read), at(30)).await;
    assert_eq!(
        (first.expect("write"), second.expect("write")),
        (true, false),
        "the second write carries a stale resourceVersion"
    );
    assert_eq!(holder(&api).as_deref(), Some("a"));
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let (api, _, a, b) = start();
    assert!(a.try_acquire_or_renew_at(at(0)).await.expect("attempt"));
    assert!(a.try_acquire_or_renew_at(at(10)).await.expect("renews"));

    assert!(a.release_at(at(11)).await.expect("release"));
    assert_eq!(holder(&api), None);
    assert!(
        b.try_acquire_or_renew_at(at(11)).await.expect("attempt"),
        "no need to wait out the 15s lease"
    );
    assert_eq!(holder(&api).as_deref(), Some("b"));
    let lease = api.get(LEASE_PATH).expect("lease");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
}

#[tokio::test]
async fn only_the_holder_releases() {
    let (api, _, a, b) = start();
    assert!(a.try_acquire_or_renew_at(at(0)).await.expect("attempt"));
    assert!(!b.release_at(at(1)).await.expect("release"));
    assert_eq!(holder(&api).as_deref(), Some("a"));
}

#[tokio::test]
async fn releasing_without_a_lease_is_a_no_op() {
    let (_, _, a, _) = start();
    assert!(!a.release_at(at(0)).await.expect("release"));
}

/// Two replicas attempt, renew, pause and release in a long pseudo-random schedule. Whenever
/// one wins, the other's last win must be older than the lease duration, or released since.
#[tokio::test]
async fn two_replicas_never_hold_the_lease_at_the_same_time() {
    let (api, _, a, b) = start();
    let replicas = [a, b];
    // When each replica last won, and whether it released since.
    let mut last_win: [Option<i64>; 2] = [None, None];
    let mut released = [false; 2];
    let mut wins = [0_u32; 2];
    let mut takeovers = 0;
    let mut holder_before = None;
    let mut seed: u64 = 0x5eed;
    let mut random = move |bound: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    let mut now = 0;
    for step in 0..600 {
        now += 1 + i64::try_from(random(6)).expect("small");
        let who = usize::try_from(random(2)).expect("0 or 1");
        // Replica `a` is paused (GC, partition) for a while, twice.
        if who == 0 && ((150..200).contains(&step) || (400..430).contains(&step)) {
            continue;
        }
        let other = 1 - who;
        if random(20) == 0 {
            if replicas[who].release_at(at(now)).await.expect("release") {
                released[who] = true;
            }
            continue;
        }
        if replicas[who]
            .try_acquire_or_renew_at(at(now))
            .await
            .expect("attempt")
        {
            if let Some(their_win) = last_win[other] {
                let expired = their_win + 15 < now;
                assert!(
                    expired || released[other],
                    "step {step}: replica {who} won at {now}s while replica {other} renewed at {their_win}s"
                );
            }
            if holder_before == Some(other) {
                takeovers += 1;
            }
            holder_before = Some(who);
            last_win[who] = Some(now);
            released[who] = false;
            wins[who] += 1;
        }
        if let Some(current) = holder(&api) {
            assert!(current == "a" || current == "b", "{current}");
        }
    }
    assert!(
        wins[0] > 10 && wins[1] > 10 && takeovers >= 3,
        "the schedule must exercise takeovers: wins {wins:?}, takeovers {takeovers}"
    );
}
