//! The chain of (a) in one function, [`stateless`]: a bid line parsed (a fast path for the
//! canonical encoding, serde_json otherwise), stamped, filtered and projected, and serialized
//! to exactly the bytes serde_json would write.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use super::Query;
use crate::connectors::nexmark::{STAMP_EVERY, stamp_now};

/// A bid line as parsed (strings borrowed from the line).
#[derive(Debug, PartialEq, Eq, Deserialize, Serialize)]
struct BidRef<'a> {
    auction: u64,
    bidder: u64,
    price: u64,
    #[serde(borrow)]
    channel: &'a str,
    #[serde(borrow)]
    url: &'a str,
    date_time: u64,
}

#[derive(Serialize)]
struct Q1Out {
    auction: u64,
    bidder: u64,
    price: u64,
    date_time: u64,
}

#[derive(Serialize)]
struct Q2Out {
    auction: u64,
    price: u64,
}

/// The fast path of [`parse_bid`]: exactly the encoding of docs/bench-workloads.md §1.6 —
/// `{"auction":N,"bidder":N,"price":N,"channel":"S","url":"S","date_time":N}`, fields in that
/// order, no whitespace, integers as plain decimal digits that fit a `u64` (no sign, fraction
/// or exponent; no leading zero), strings without escapes or control characters. Anything else
/// is `None` and goes to serde_json, so the result (and every error) is serde_json's.
///
/// The strings it returns need no escaping, so [`write_bid_plain`] may copy them verbatim.
fn parse_bid_plain(line: &str) -> Option<BidRef<'_>> {
    let mut c = Cursor { s: line, i: 0 };
    c.literal(br#"{"auction":"#)?;
    let auction = c.uint()?;
    c.literal(br#","bidder":"#)?;
    let bidder = c.uint()?;
    c.literal(br#","price":"#)?;
    let price = c.uint()?;
    c.literal(br#","channel":""#)?;
    let channel = c.plain_str()?;
    c.literal(br#","url":""#)?;
    let url = c.plain_str()?;
    c.literal(br#","date_time":"#)?;
    let date_time = c.uint()?;
    c.literal(b"}")?;
    (c.i == line.len()).then_some(BidRef {
        auction,
        bidder,
        price,
        channel,
        url,
        date_time,
    })
}

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.i..]
    }

    /// Consumes `lit` (a fixed-size array, so the comparison is a few loads, not a `memcmp`).
    #[inline(always)]
    fn literal<const N: usize>(&mut self, lit: &[u8; N]) -> Option<()> {
        (self.rest().first_chunk::<N>() == Some(lit)).then(|| self.i += N)
    }

    /// A JSON integer that serde_json would read into a `u64` with the same value.
    fn uint(&mut self) -> Option<u64> {
        let rest = self.rest();
        let mut n: u64 = 0;
        let mut digits = 0;
        while let Some(d) = rest
            .get(digits)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|d| *d <= 9)
        {
            // Cannot overflow up to 19 digits; 20 are parsed again with overflow checks below.
            n = n.wrapping_mul(10).wrapping_add(u64::from(d));
            digits += 1;
        }
        // Empty, or a leading zero (invalid JSON unless the number is `0`), or more digits than
        // any u64 has: leave it to serde.
        if digits == 0 || (digits > 1 && rest[0] == b'0') || digits > 20 {
            return None;
        }
        if digits == 20 {
            n = self.s.get(self.i..self.i + digits)?.parse().ok()?;
        }
        self.i += digits;
        Some(n)
    }

    /// The characters up to the closing quote, which it consumes; `None` if the string holds
    /// anything serde_json would unescape or reject (`\`, control characters) or is unclosed.
    fn plain_str(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let len = memchr::memchr(b'"', rest)?;
        // A fold without early exit, so it vectorizes (`any` goes byte by byte).
        let special = rest[..len]
            .iter()
            .fold(false, |found, &b| found | (b == b'\\') | (b < 0x20));
        if special {
            return None;
        }
        let start = self.i;
        self.i += len + 1;
        // The quote is ASCII, so both ends are character boundaries of the (valid UTF-8) line.
        self.s.get(start..start + len)
    }
}

/// `line` as a bid: the fast path when the line is in the canonical encoding (then `true`:
/// its strings need no escaping), serde_json otherwise.
fn parse_bid(line: &str) -> std::result::Result<(BidRef<'_>, bool), String> {
    match parse_bid_plain(line) {
        Some(bid) => Ok((bid, true)),
        None => serde_json::from_str(line)
            .map(|bid| (bid, false))
            .map_err(|e| e.to_string()),
    }
}

fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// serde_json's serialization of `bid` when its strings need no escaping (as
/// [`parse_bid_plain`] guarantees): the same bytes, without the escape scan.
fn write_bid_plain(bid: &BidRef<'_>, out: &mut String) {
    out.push_str(r#"{"auction":"#);
    push_u64(out, bid.auction);
    out.push_str(r#","bidder":"#);
    push_u64(out, bid.bidder);
    out.push_str(r#","price":"#);
    push_u64(out, bid.price);
    out.push_str(r#","channel":""#);
    out.push_str(bid.channel);
    out.push_str(r#"","url":""#);
    out.push_str(bid.url);
    out.push_str(r#"","date_time":"#);
    push_u64(out, bid.date_time);
    out.push('}');
}

/// serde_json's serialization of [`Q1Out`].
fn write_q1(q: &Q1Out, out: &mut String) {
    out.push_str(r#"{"auction":"#);
    push_u64(out, q.auction);
    out.push_str(r#","bidder":"#);
    push_u64(out, q.bidder);
    out.push_str(r#","price":"#);
    push_u64(out, q.price);
    out.push_str(r#","date_time":"#);
    push_u64(out, q.date_time);
    out.push('}');
}

/// serde_json's serialization of [`Q2Out`].
fn write_q2(q: &Q2Out, out: &mut String) {
    out.push_str(r#"{"auction":"#);
    push_u64(out, q.auction);
    out.push_str(r#","price":"#);
    push_u64(out, q.price);
    out.push('}');
}

thread_local! {
    /// The ingestion stamp of this source subtask (one thread each) and records since.
    static FILE_STAMP: Cell<(u64, u32)> = const { Cell::new((0, STAMP_EVERY)) };
}

fn file_stamp() -> u64 {
    FILE_STAMP.with(|cell| {
        let (stamp, since) = cell.get();
        if since + 1 >= STAMP_EVERY {
            let now = stamp_now();
            cell.set((now, 0));
            now
        } else {
            cell.set((stamp, since + 1));
            stamp
        }
    })
}

/// Parse, stamp, filter (q2), project and serialize one line: the whole chain of (a).
///
/// The output is serde_json's serialization of the projected record (the tests compare), written
/// field by field into one string allocated at its final size's upper bound (20 digits per
/// integer).
pub(super) fn stateless(
    query: Query,
    line: &str,
) -> std::result::Result<Option<(String, u64)>, String> {
    let (bid, plain) = parse_bid(line)?;
    let stamp = file_stamp();
    let json = match query {
        Query::Q0 if plain => {
            let mut out = String::with_capacity(68 + 4 * 20 + bid.channel.len() + bid.url.len());
            write_bid_plain(&bid, &mut out);
            out
        }
        Query::Q0 => serde_json::to_string(&bid).map_err(|e| e.to_string())?,
        Query::Q1 => {
            let mut out = String::with_capacity(44 + 4 * 20);
            write_q1(
                &Q1Out {
                    auction: bid.auction,
                    bidder: bid.bidder,
                    price: bid.price * 908 / 1000,
                    date_time: bid.date_time,
                },
                &mut out,
            );
            out
        }
        _ => {
            if !bid.auction.is_multiple_of(123) {
                return Ok(None);
            }
            let mut out = String::with_capacity(22 + 2 * 20);
            write_q2(
                &Q2Out {
                    auction: bid.auction,
                    price: bid.price,
                },
                &mut out,
            );
            out
        }
    };
    Ok(Some((json, stamp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::nexmark::{bid, bid_index};

    /// The chain of (a) as it was, all serde_json: what [`stateless`] must produce.
    fn reference(query: Query, line: &str) -> std::result::Result<Option<String>, String> {
        let bid: BidRef<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let json = match query {
            Query::Q0 => serde_json::to_string(&bid),
            Query::Q1 => serde_json::to_string(&Q1Out {
                auction: bid.auction,
                bidder: bid.bidder,
                price: bid.price * 908 / 1000,
                date_time: bid.date_time,
            }),
            _ => {
                if !bid.auction.is_multiple_of(123) {
                    return Ok(None);
                }
                serde_json::to_string(&Q2Out {
                    auction: bid.auction,
                    price: bid.price,
                })
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(Some(json))
    }

    fn assert_same(line: &str) {
        for query in [Query::Q0, Query::Q1, Query::Q2] {
            let got = stateless(query, line).map(|out| out.map(|(json, _)| json));
            assert_eq!(got, reference(query, line), "{query:?} on {line:?}");
        }
        if let Some(bid) = parse_bid_plain(line) {
            let parsed: BidRef<'_> = serde_json::from_str(line).expect("serde_json accepts it");
            assert_eq!(bid, parsed, "{line:?}");
        }
    }

    fn generated(k: u64) -> String {
        let mut line = Vec::new();
        bid(bid_index(k)).write_json(&mut line);
        String::from_utf8(line).expect("ASCII")
    }

    #[test]
    fn generated_bids_take_the_fast_path_and_match_serde_json() {
        for k in (0..20_000).chain([1_000_000, 123 * 4567, 9_999_999]) {
            let line = generated(k);
            assert!(parse_bid_plain(&line).is_some(), "{line}");
            assert_same(&line);
            // q0 is a pass-through: the same bytes as the input line.
            assert_eq!(
                stateless(Query::Q0, &line).map(|o| o.map(|(json, _)| json)),
                Ok(Some(line.clone()))
            );
        }
    }

    #[test]
    fn tricky_lines_match_serde_json() {
        let ok = r#"{"auction":1006,"bidder":1008,"price":82600,"channel":"Apple","url":"https://www.nexmark.com/bgwmv/pzpxq/rnogy/item.htm?query=1","date_time":1700000000000}"#;
        let lines = [
            ok.to_string(),
            // Escapes and characters serde_json escapes on output.
            ok.replace("Apple", r#"Ap\"ple"#),
            ok.replace("Apple", r"Ap\\ple"),
            ok.replace("Apple", r"Ap\nple"),
            ok.replace("Apple", r"Ap\u00e9\u0001ple"),
            ok.replace("Apple", r"Ap\/ple"),
            ok.replace("Apple", "Ap\tple"),
            ok.replace("Apple", "Ap\u{1}ple"),
            ok.replace("Apple", "Ap\u{7f}ple"),
            ok.replace("Apple", "Apé日本ple"),
            ok.replace("Apple", ""),
            ok.replace("Apple", r"\"),
            ok.replace("Apple", "Ap\"ple"),
            ok.replace("query=1", r#"query=1\""#),
            // Whitespace, order, duplicates, unknown and missing fields.
            ok.replace(",", ", "),
            ok.replace(":", " : "),
            format!(" {ok}"),
            format!("{ok} "),
            format!("{ok}\t"),
            format!("{ok}x"),
            format!("{ok}}}"),
            ok.replace(
                r#""auction":1006,"bidder":1008"#,
                r#""bidder":1008,"auction":1006"#,
            ),
            ok.replace(r#""bidder":1008"#, r#""bidder":1008,"bidder":7"#),
            ok.replace(r#""bidder":1008,"#, ""),
            ok.replace(r#""bidder":1008"#, r#""bidder":1008,"extra":1"#),
            ok.replace("}", r#","extra":null}"#),
            // Numbers.
            ok.replace("1006", "0"),
            ok.replace("1006", "01006"),
            ok.replace("1006", "00"),
            ok.replace("1006", "-1006"),
            ok.replace("1006", "-0"),
            ok.replace("1006", "1006.0"),
            ok.replace("1006", "1.006e3"),
            ok.replace("1006", "1006e0"),
            ok.replace("1006", "1006E0"),
            ok.replace("1006", &u64::MAX.to_string()),
            ok.replace("1006", "18446744073709551616"),
            ok.replace("1006", "99999999999999999999999"),
            ok.replace("1006", r#""1006""#),
            ok.replace("1006", ""),
            ok.replace("82600", &(u64::MAX / 908).to_string()),
            ok.replace("1700000000000", "1700000000000.5"),
            ok.replace("1700000000000", &u64::MAX.to_string()),
            ok.replace("1700000000000", "18446744073709551616"),
            // Truncated and broken.
            ok[..ok.len() - 1].to_string(),
            ok[..40].to_string(),
            ok.replace(r#""Apple""#, r#""Apple"#),
            ok.replace(r#""Apple""#, "Apple"),
            ok.replace(r#""Apple""#, "null"),
            String::new(),
            "{}".to_string(),
            "null".to_string(),
        ];
        for line in &lines {
            assert_same(line);
        }
        // The ones the fast path must leave to serde_json.
        assert!(parse_bid_plain(&lines[1]).is_none());
        assert!(parse_bid_plain(&lines[6]).is_none());
        assert!(parse_bid_plain(&lines[15]).is_none());
        // Non-ASCII and DEL need no escaping: fast path, same bytes.
        assert!(parse_bid_plain(&lines[8]).is_some());
        assert!(parse_bid_plain(&lines[9]).is_some());
        // 20 digits: u64::MAX on the fast path, one more is serde_json's error.
        let max = ok.replace("1006", &u64::MAX.to_string());
        assert_eq!(parse_bid_plain(&max).map(|b| b.auction), Some(u64::MAX));
        assert!(parse_bid_plain(&ok.replace("1006", "18446744073709551616")).is_none());
        assert!(parse_bid_plain(&ok.replace("1006", "10000000000000000000")).is_some());
    }

    /// Random edits of generated lines (bytes JSON cares about): fast path or not, the outputs
    /// and errors are serde_json's.
    #[test]
    fn mutated_lines_match_serde_json() {
        const ALPHABET: &[u8] = b"0123456789\"\\{}[]:,.-+eE \tnul/az";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for k in 0..20_000u64 {
            let mut line = generated(k * 7919).into_bytes();
            for _ in 0..1 + next() % 3 {
                let at = (next() % (line.len() as u64 + 1)) as usize;
                let byte = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                match next() % 3 {
                    0 if at < line.len() => line[at] = byte,
                    1 if at < line.len() => {
                        line.remove(at);
                    }
                    _ => line.insert(at, byte),
                }
            }
            let line = String::from_utf8(line).expect("ASCII");
            assert_same(&line);
        }
    }
}
