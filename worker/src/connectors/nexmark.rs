//! The Nexmark-style event generator of the benchmarks, exactly as `docs/bench-workloads.md`
//! §1 defines it: every event is a pure function of its index (SplitMix64 draws seeded by the
//! index), so the Java (`bench/flink/.../Nexmark.java`), Python (`bench/nexmark_ref.py`) and
//! this generator produce the same events byte for byte.
//!
//! [`NexmarkSource`] turns any function of an index into a replayable source: subtask `s` of
//! `P` generates the indices `s, s+P, s+2P, ...`, and its checkpointed position is just its
//! next index.

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::api::{SourceContext, SourceFactory, SourceReader, SourceStatus};
use crate::error::{Error, Result};

pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// "WEIRBENC"
pub const EVENT_SALT: u64 = 0x5745_4952_4245_4E43;
pub const KEY_SALT: u64 = 0x4B_4559;
pub const VALUE_SALT: u64 = 0x56_414C_5545;
/// 2023-11-14T22:13:20Z, a multiple of 10 s.
pub const BASE_TIME_MS: u64 = 1_700_000_000_000;
/// Event time advances one millisecond every this many events.
pub const EVENTS_PER_MS: u64 = 100;

pub const FIRST_PERSON_ID: u64 = 1000;
pub const FIRST_AUCTION_ID: u64 = 1000;
pub const FIRST_CATEGORY_ID: u64 = 10;
pub const NUM_CATEGORIES: u64 = 5;
pub const HOT_AUCTION_RATIO: u64 = 100;
pub const HOT_PERSON_RATIO: u64 = 100;
pub const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
pub const AUCTION_ID_LEAD: u64 = 10;
pub const NUM_ACTIVE_PEOPLE: u64 = 1000;
pub const PERSON_ID_LEAD: u64 = 10;

/// Events per epoch: 1 person, 3 auctions, 46 bids.
const EPOCH: u64 = 50;
const BIDS_PER_EPOCH: u64 = 46;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The stream of event `i`.
    pub fn for_event(i: u64) -> Self {
        Rng::new(mix64(i.wrapping_add(EVENT_SALT)))
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// The next `N` draws, in order.
    pub fn draws<const N: usize>(&mut self) -> [u64; N] {
        std::array::from_fn(|_| self.next())
    }
}

/// `N` (≤ 13) lowercase letters from one draw.
pub fn random_letters<const N: usize>(mut r: u64) -> [u8; N] {
    std::array::from_fn(|_| {
        let c = b'a' + (r % 26) as u8;
        r /= 26;
        c
    })
}

fn random_string<const N: usize>(r: u64) -> String {
    // Lowercase ASCII letters are valid UTF-8.
    String::from_utf8_lossy(&random_letters::<N>(r)).into_owned()
}

/// Cents: 100 … 99,900,000.
pub fn price(r: u64) -> u64 {
    (100 + (r / 6) % 900) * 10u64.pow((r % 6) as u32)
}

/// Event time of event `i`, ms since the epoch.
pub fn date_time(i: u64) -> u64 {
    BASE_TIME_MS + i / EVENTS_PER_MS
}

/// One of the last 1000 people, or up to 10 not created yet (base 0).
fn active_person(last_person: u64, r: u64) -> u64 {
    let num_people = last_person + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    num_people - active + r % (active + PERSON_ID_LEAD)
}

/// Event index of bid number `k` (bids counted from 0, skipping persons and auctions).
pub fn bid_index(k: u64) -> u64 {
    (k / BIDS_PER_EPOCH) * EPOCH + 4 + k % BIDS_PER_EPOCH
}

/// The uniform key of workloads (b) and (e): `mix64(k + 0x4B4559) % keys`.
pub fn keyed_count_key(k: u64, keys: u64) -> u64 {
    mix64(k.wrapping_add(KEY_SALT)) % keys
}

/// `len` lowercase letters of value version `v` of key `j` (workload (e)).
pub fn state_value(j: u64, v: u64, len: usize) -> String {
    let mut rng = Rng::new(mix64(j.wrapping_add(VALUE_SALT)) ^ v);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut r = rng.next();
        for _ in 0..10 {
            if out.len() == len {
                break;
            }
            out.push(b'a' + (r % 26) as u8);
            r /= 26;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub city: &'static str,
    pub state: &'static str,
    pub date_time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: u64,
    pub expires: u64,
    pub seller: u64,
    pub category: u64,
}

/// The three random path segments of a bid's url:
/// `https://www.nexmark.com/<a>/<b>/<c>/item.htm?query=1`, kept inline (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BidUrl(pub [[u8; 5]; 3]);

impl std::fmt::Display for BidUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c] = &self.0;
        let s = |x: &[u8; 5]| std::str::from_utf8(x).unwrap_or("?????").to_owned();
        write!(
            f,
            "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
            s(a),
            s(b),
            s(c)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: &'static str,
    pub url: BidUrl,
    pub date_time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

/// Event `i` of the mixed stream.
pub fn event(i: u64) -> Event {
    match i % EPOCH {
        0 => Event::Person(person(i)),
        1..=3 => Event::Auction(auction(i)),
        _ => Event::Bid(bid(i)),
    }
}

/// The person at event `i` (`i % 50 == 0`).
pub fn person(i: u64) -> Person {
    let d: [u64; 6] = Rng::for_event(i).draws();
    Person {
        id: FIRST_PERSON_ID + i / EPOCH,
        name: format!(
            "{} {}",
            FIRST_NAMES[(d[0] % 11) as usize],
            LAST_NAMES[(d[1] % 9) as usize]
        ),
        email: format!(
            "{}@{}.com",
            random_string::<7>(d[2]),
            random_string::<5>(d[3])
        ),
        city: US_CITIES[(d[4] % 10) as usize],
        state: US_STATES[(d[5] % 6) as usize],
        date_time: date_time(i),
    }
}

/// The auction at event `i` (`i % 50` in 1..=3).
pub fn auction(i: u64) -> Auction {
    let (epoch, offset) = (i / EPOCH, i % EPOCH);
    let d: [u64; 7] = Rng::for_event(i).draws();
    let last_person = epoch;
    let initial_bid = price(d[1]);
    let seller = if !d[4].is_multiple_of(4) {
        (last_person / HOT_PERSON_RATIO) * HOT_PERSON_RATIO
    } else {
        active_person(last_person, d[5])
    };
    let dt = date_time(i);
    Auction {
        id: FIRST_AUCTION_ID + 3 * epoch + (offset - 1),
        item_name: random_string::<10>(d[0]),
        initial_bid,
        reserve: initial_bid + price(d[2]),
        date_time: dt,
        expires: dt + 1000 * (10 + d[6] % 50),
        seller: FIRST_PERSON_ID + seller,
        category: FIRST_CATEGORY_ID + d[3] % NUM_CATEGORIES,
    }
}

/// The bid at event `i` (`i % 50` in 4..=49).
pub fn bid(i: u64) -> Bid {
    let epoch = i / EPOCH;
    let d: [u64; 9] = Rng::for_event(i).draws();
    let last_auction = 3 * epoch + 2;
    let last_person = epoch;
    let a = if !d[0].is_multiple_of(2) {
        (last_auction / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
    } else {
        let min = last_auction.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
        min + d[1] % (last_auction - min + 1 + AUCTION_ID_LEAD)
    };
    let b = if !d[2].is_multiple_of(4) {
        (last_person / HOT_PERSON_RATIO) * HOT_PERSON_RATIO + 1
    } else {
        active_person(last_person, d[3])
    };
    Bid {
        auction: FIRST_AUCTION_ID + a,
        bidder: FIRST_PERSON_ID + b,
        price: price(d[4]),
        channel: CHANNELS[(d[5] % 4) as usize],
        url: BidUrl([
            random_letters(d[6]),
            random_letters(d[7]),
            random_letters(d[8]),
        ]),
        date_time: date_time(i),
    }
}

impl Person {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            r#"{{"id":{},"name":"{}","email":"{}","city":"{}","state":"{}","date_time":{}}}"#,
            self.id, self.name, self.email, self.city, self.state, self.date_time
        );
    }
}

impl Auction {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            r#"{{"id":{},"item_name":"{}","initial_bid":{},"reserve":{},"date_time":{},"expires":{},"seller":{},"category":{}}}"#,
            self.id,
            self.item_name,
            self.initial_bid,
            self.reserve,
            self.date_time,
            self.expires,
            self.seller,
            self.category
        );
    }
}

impl Bid {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            r#"{{"auction":{},"bidder":{},"price":{},"channel":"{}","url":"https://www.nexmark.com/"#,
            self.auction, self.bidder, self.price, self.channel
        );
        let [a, b, c] = &self.url.0;
        out.extend_from_slice(a);
        out.push(b'/');
        out.extend_from_slice(b);
        out.push(b'/');
        out.extend_from_slice(c);
        let _ = write!(
            out,
            r#"/item.htm?query=1","date_time":{}}}"#,
            self.date_time
        );
    }
}

impl Event {
    /// The mixed-stream encoding: `{"person":{...}}`, `{"auction":{...}}` or `{"bid":{...}}`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Event::Person(p) => {
                out.extend_from_slice(br#"{"person":"#);
                p.write_json(out);
            }
            Event::Auction(a) => {
                out.extend_from_slice(br#"{"auction":"#);
                a.write_json(out);
            }
            Event::Bid(b) => {
                out.extend_from_slice(br#"{"bid":"#);
                b.write_json(out);
            }
        }
        out.push(b'}');
    }
}

/// Writes bids `0..count` as JSON lines into `shards` files `dir/part-0000s.jsonl` (shard `s`
/// holds bids `floor(s*count/shards) .. floor((s+1)*count/shards)`), then `dir/_SUCCESS`:
/// the same bytes as `weir.bench.Generate bids`.
pub fn write_bid_files(dir: &std::path::Path, count: u64, shards: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(dir.join("_SUCCESS"));
    let mut line = Vec::with_capacity(256);
    for s in 0..shards {
        let (from, to) = (
            (s as u128 * count as u128 / shards as u128) as u64,
            ((s + 1) as u128 * count as u128 / shards as u128) as u64,
        );
        let file = std::fs::File::create(dir.join(format!("part-{s:05}.jsonl")))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        for k in from..to {
            line.clear();
            bid(bid_index(k)).write_json(&mut line);
            line.push(b'\n');
            out.write_all(&line)?;
        }
        out.flush()?;
    }
    std::fs::write(dir.join("_SUCCESS"), b"")?;
    Ok(())
}

/// Nanoseconds on a monotonic clock shared by the whole process: the ingestion stamp of the
/// benchmarks (sink time minus stamp is the end-to-end latency).
pub fn stamp_now() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Records in a row that share one ingestion stamp.
pub const STAMP_EVERY: u32 = 256;

type MakeFn<T> = Arc<dyn Fn(u64, u64) -> T + Send + Sync>;

/// A replayable source of `make(index, stamp)` for indices `0..count` (`None`: unbounded).
/// Subtask `s` of `P` generates `s, s+P, s+2P, ...`; `stamp` is [`stamp_now`] refreshed every
/// [`STAMP_EVERY`] records. From index `paced_from` on, a subtask emits one record per
/// millisecond (workload (e)'s trickle).
pub struct NexmarkSource<T> {
    count: Option<u64>,
    paced_from: Option<u64>,
    make: MakeFn<T>,
}

impl<T> NexmarkSource<T> {
    pub fn new(count: Option<u64>, make: impl Fn(u64, u64) -> T + Send + Sync + 'static) -> Self {
        NexmarkSource {
            count,
            paced_from: None,
            make: Arc::new(make),
        }
    }

    /// From index `from` on, each subtask emits about one record per millisecond.
    pub fn paced_from(mut self, from: u64) -> Self {
        self.paced_from = Some(from);
        self
    }
}

/// A subtask's checkpointed position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StridedPosition {
    subtask: u32,
    parallelism: u32,
    next: u64,
}

/// Where subtask `subtask` of `parallelism` resumes. At the same parallelism, exactly where it
/// stopped. After a rescale, every index below the slowest old subtask's position was
/// emitted; each new subtask resumes at its first index at or above it, so indices between
/// the slowest and the fastest old subtask may be emitted twice (at-least-once on rescale).
fn resume_at(restored: &[StridedPosition], subtask: u32, parallelism: u32) -> u64 {
    if let Some(own) = restored
        .iter()
        .find(|p| p.parallelism == parallelism && p.subtask == subtask)
    {
        return own.next;
    }
    let Some(frontier) = restored.iter().map(|p| p.next).min() else {
        return u64::from(subtask);
    };
    let p = u64::from(parallelism);
    let s = u64::from(subtask);
    // The first index >= frontier with index % p == s.
    frontier + (s + p - frontier % p) % p
}

impl<T: Send + 'static> SourceFactory for NexmarkSource<T> {
    type Item = T;

    fn create_reader(
        &self,
        ctx: &SourceContext,
        restored: Option<Vec<serde_json::Value>>,
    ) -> Result<Box<dyn SourceReader<T>>> {
        let positions = restored
            .unwrap_or_default()
            .into_iter()
            .map(|v| {
                serde_json::from_value::<StridedPosition>(v)
                    .map_err(|e| Error::codec("nexmark source position", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(NexmarkReader {
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            stride: u64::from(ctx.parallelism.max(1)),
            next: resume_at(&positions, ctx.subtask, ctx.parallelism),
            count: self.count.unwrap_or(u64::MAX),
            paced_from: self.paced_from.unwrap_or(u64::MAX),
            make: self.make.clone(),
            stamp: stamp_now(),
            since_stamp: STAMP_EVERY,
        }))
    }
}

struct NexmarkReader<T> {
    subtask: u32,
    parallelism: u32,
    stride: u64,
    next: u64,
    count: u64,
    paced_from: u64,
    make: MakeFn<T>,
    stamp: u64,
    since_stamp: u32,
}

impl<T: Send> SourceReader<T> for NexmarkReader<T> {
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        for _ in 0..max {
            if self.next >= self.count {
                return Ok(if out.is_empty() {
                    SourceStatus::Finished
                } else {
                    SourceStatus::More
                });
            }
            if self.next >= self.paced_from {
                out.push((self.make)(self.next, stamp_now()));
                self.next += self.stride;
                return Ok(SourceStatus::Idle(Duration::from_millis(1)));
            }
            self.since_stamp += 1;
            if self.since_stamp >= STAMP_EVERY {
                self.since_stamp = 0;
                self.stamp = stamp_now();
            }
            out.push((self.make)(self.next, self.stamp));
            self.next += self.stride;
        }
        Ok(SourceStatus::More)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<serde_json::Value>> {
        let position = StridedPosition {
            subtask: self.subtask,
            parallelism: self.parallelism,
            next: self.next,
        };
        Ok(vec![
            serde_json::to_value(position)
                .map_err(|e| Error::codec("nexmark source position", e))?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(e: &Event) -> String {
        let mut out = Vec::new();
        e.write_json(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn bid_line(b: &Bid) -> String {
        let mut out = Vec::new();
        b.write_json(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
    }

    const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

    #[test]
    fn single_event_vectors_match_the_doc() {
        assert_eq!(format!("{:016x}", mix64(1)), "5692161d100b05e5");
        assert_eq!(
            format!("{:016x}", Rng::for_event(0).next()),
            "e0e8183798af784c"
        );
        let expect = [
            (
                0,
                r#"{"person":{"id":1000,"name":"Julie Spencer","email":"jrbhqte@vvntd.com","city":"Cheyenne","state":"WA","date_time":1700000000000}}"#,
            ),
            (
                1,
                r#"{"auction":{"id":1000,"item_name":"qllwcjfbtx","initial_bid":725,"reserve":77400725,"date_time":1700000000000,"expires":1700000043000,"seller":1000,"category":10}}"#,
            ),
            (
                2,
                r#"{"auction":{"id":1001,"item_name":"dwrokxqati","initial_bid":75000,"reserve":55375000,"date_time":1700000000000,"expires":1700000027000,"seller":1000,"category":14}}"#,
            ),
            (
                3,
                r#"{"auction":{"id":1002,"item_name":"prwclmmbro","initial_bid":24500000,"reserve":24583000,"date_time":1700000000000,"expires":1700000012000,"seller":1000,"category":10}}"#,
            ),
            (
                4,
                r#"{"bid":{"auction":1006,"bidder":1008,"price":82600,"channel":"Apple","url":"https://www.nexmark.com/bgwmv/pzpxq/rnogy/item.htm?query=1","date_time":1700000000000}}"#,
            ),
            (
                5,
                r#"{"bid":{"auction":1000,"bidder":1001,"price":40300000,"channel":"Baidu","url":"https://www.nexmark.com/myyef/lxtvh/gwgit/item.htm?query=1","date_time":1700000000000}}"#,
            ),
            (
                50,
                r#"{"person":{"id":1001,"name":"Deiter Noris","email":"uthwdzc@swigs.com","city":"San Francisco","state":"AZ","date_time":1700000000000}}"#,
            ),
        ];
        for (i, want) in expect {
            assert_eq!(line(&event(i)), want, "event {i}");
        }
        assert_eq!(bid_index(1_000_000), 1_086_960);
        assert_eq!(
            bid_line(&bid(bid_index(1_000_000))),
            r#"{"auction":66200,"bidder":22701,"price":39500000,"channel":"Facebook","url":"https://www.nexmark.com/oomvs/nwmlp/vztli/item.htm?query=1","date_time":1700000010869}"#
        );
        assert_eq!(
            bid(4).url.to_string(),
            "https://www.nexmark.com/bgwmv/pzpxq/rnogy/item.htm?query=1"
        );
        let keys: Vec<u64> = (0..5).map(|k| keyed_count_key(k, 100_000)).collect();
        assert_eq!(keys, [73160, 53692, 27096, 90025, 89007]);
        assert_eq!(
            state_value(0, 0, 100),
            "soqmjatkwthacbpxfohstnltcdmtwirktwclpapoodjpbungeeqevbnrmxcnusorqrhuayvjeynxehpwveaipglsxxywidunwcqm"
        );
    }

    #[test]
    fn checksums_of_the_first_million_events_and_bids_match_the_doc() {
        let mut buf = Vec::with_capacity(256);
        let mut events = FNV_OFFSET;
        let mut bids = FNV_OFFSET;
        for i in 0..1_000_000u64 {
            buf.clear();
            event(i).write_json(&mut buf);
            buf.push(b'\n');
            events = fnv1a(events, &buf);
            buf.clear();
            bid(bid_index(i)).write_json(&mut buf);
            buf.push(b'\n');
            bids = fnv1a(bids, &buf);
        }
        assert_eq!(format!("{events:016x}"), "46459d8dae5b3e43");
        assert_eq!(format!("{bids:016x}"), "d00bf764a8a8f527");
    }

    #[test]
    fn strided_positions_resume_exactly_or_from_the_slowest_subtask() {
        let old = [
            StridedPosition {
                subtask: 0,
                parallelism: 2,
                next: 100,
            },
            StridedPosition {
                subtask: 1,
                parallelism: 2,
                next: 95,
            },
        ];
        assert_eq!(resume_at(&old, 0, 2), 100);
        assert_eq!(resume_at(&old, 1, 2), 95);
        // Rescaled to 3: the first index >= 95 of each residue class.
        assert_eq!(resume_at(&old, 0, 3), 96);
        assert_eq!(resume_at(&old, 1, 3), 97);
        assert_eq!(resume_at(&old, 2, 3), 95);
        assert_eq!(resume_at(&[], 1, 3), 1);
    }

    #[test]
    fn bid_files_hold_the_shards_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_bid_files(dir.path(), 10, 4).expect("write");
        let shard = |s| {
            std::fs::read_to_string(dir.path().join(format!("part-{s:05}.jsonl")))
                .expect("shard")
                .lines()
                .count()
        };
        assert_eq!((shard(0), shard(1), shard(2), shard(3)), (2, 3, 2, 3));
        assert!(dir.path().join("_SUCCESS").exists());
    }
}
