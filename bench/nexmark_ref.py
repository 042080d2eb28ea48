#!/usr/bin/env python3
"""A second implementation of the benchmark generator, written from docs/bench-workloads.md §1.

Checks the test vectors of §1.7 (the Java generator in bench/flink/src/weir/bench/Nexmark.java
is the first implementation). Usage:

    python3 bench/nexmark_ref.py            # check the vectors (the checksums take ~1 min)
    python3 bench/nexmark_ref.py --quick    # only the single-event vectors
    python3 bench/nexmark_ref.py --print N  # print the mixed-stream lines of events 0..N-1
"""
import sys

M = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
EVENT_SALT = 0x5745495242454E43
KEY_SALT = 0x4B4559
VALUE_SALT = 0x56414C5545
BASE_TIME_MS = 1_700_000_000_000

FIRST_NAMES = "Peter Paul Luke John Saul Vicky Kate Julie Sarah Deiter Walter".split()
LAST_NAMES = "Shultz Abrams Spencer White Bartels Walton Smith Jones Noris".split()
US_CITIES = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond",
             "Seattle", "Kent", "Cheyenne"]
US_STATES = "AZ CA ID OR WA WY".split()
CHANNELS = "Google Facebook Baidu Apple".split()


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


class Rng:
    def __init__(self, seed):
        self.state = seed & M

    def next(self):
        self.state = (self.state + GAMMA) & M
        return mix64(self.state)


def draws(i, n):
    rng = Rng(mix64((i + EVENT_SALT) & M))
    return [rng.next() for _ in range(n)]


def random_string(r, n):
    out = []
    for _ in range(n):
        out.append(chr(ord("a") + r % 26))
        r //= 26
    return "".join(out)


def price(r):
    return (100 + (r // 6) % 900) * 10 ** (r % 6)


def date_time(i):
    return BASE_TIME_MS + i // 100


def active_person(last_person, r):
    num_people = last_person + 1
    active = min(num_people, 1000)
    return num_people - active + r % (active + 10)


def person(i):
    d = draws(i, 6)
    return ('{"id":%d,"name":"%s %s","email":"%s@%s.com","city":"%s","state":"%s","date_time":%d}' % (
        1000 + i // 50, FIRST_NAMES[d[0] % 11], LAST_NAMES[d[1] % 9], random_string(d[2], 7),
        random_string(d[3], 5), US_CITIES[d[4] % 10], US_STATES[d[5] % 6], date_time(i)))


def auction(i):
    epoch, off = divmod(i, 50)
    d = draws(i, 7)
    initial = price(d[1])
    seller = (epoch // 100) * 100 if d[4] % 4 != 0 else active_person(epoch, d[5])
    dt = date_time(i)
    return ('{"id":%d,"item_name":"%s","initial_bid":%d,"reserve":%d,"date_time":%d,"expires":%d,'
            '"seller":%d,"category":%d}' % (
                1000 + 3 * epoch + off - 1, random_string(d[0], 10), initial, initial + price(d[2]), dt,
                dt + 1000 * (10 + d[6] % 50), 1000 + seller, 10 + d[3] % 5))


def bid(i):
    epoch = i // 50
    d = draws(i, 9)
    last_auction, last_person = 3 * epoch + 2, epoch
    if d[0] % 2 != 0:
        a = (last_auction // 100) * 100
    else:
        lo = max(last_auction - 100, 0)
        a = lo + d[1] % (last_auction - lo + 1 + 10)
    b = (last_person // 100) * 100 + 1 if d[2] % 4 != 0 else active_person(last_person, d[3])
    url = "https://www.nexmark.com/%s/%s/%s/item.htm?query=1" % (
        random_string(d[6], 5), random_string(d[7], 5), random_string(d[8], 5))
    return '{"auction":%d,"bidder":%d,"price":%d,"channel":"%s","url":"%s","date_time":%d}' % (
        1000 + a, 1000 + b, price(d[4]), CHANNELS[d[5] % 4], url, date_time(i))


def event_json(i):
    off = i % 50
    if off == 0:
        return '{"person":%s}' % person(i)
    if off <= 3:
        return '{"auction":%s}' % auction(i)
    return '{"bid":%s}' % bid(i)


def bid_index(k):
    return (k // 46) * 50 + 4 + k % 46


def keyed_count_key(k, keys):
    return mix64((k + KEY_SALT) & M) % keys


def state_value(j, v, n):
    rng = Rng(mix64((j + VALUE_SALT) & M) ^ v)
    out = []
    while len(out) < n:
        r = rng.next()
        for _ in range(10):
            if len(out) == n:
                break
            out.append(chr(ord("a") + r % 26))
            r //= 26
    return "".join(out)


def fnv1a(lines):
    h = 0xCBF29CE484222325
    for line in lines:
        for byte in (line + "\n").encode():
            h = ((h ^ byte) * 0x100000001B3) & M
    return h


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--print":
        for i in range(int(sys.argv[2])):
            print(event_json(i))
        return
    expect = {
        0: '{"person":{"id":1000,"name":"Julie Spencer","email":"jrbhqte@vvntd.com","city":"Cheyenne","state":"WA","date_time":1700000000000}}',
        1: '{"auction":{"id":1000,"item_name":"qllwcjfbtx","initial_bid":725,"reserve":77400725,"date_time":1700000000000,"expires":1700000043000,"seller":1000,"category":10}}',
        4: '{"bid":{"auction":1006,"bidder":1008,"price":82600,"channel":"Apple","url":"https://www.nexmark.com/bgwmv/pzpxq/rnogy/item.htm?query=1","date_time":1700000000000}}',
        50: '{"person":{"id":1001,"name":"Deiter Noris","email":"uthwdzc@swigs.com","city":"San Francisco","state":"AZ","date_time":1700000000000}}',
    }
    ok = True
    def check(what, got, want):
        nonlocal ok
        if got != want:
            ok = False
            print("MISMATCH %s\n  got  %s\n  want %s" % (what, got, want))
    for i, want in expect.items():
        check("event %d" % i, event_json(i), want)
    check("bid k=1000000", bid(bid_index(1_000_000)),
          '{"auction":66200,"bidder":22701,"price":39500000,"channel":"Facebook","url":"https://www.nexmark.com/oomvs/nwmlp/vztli/item.htm?query=1","date_time":1700000010869}')
    check("mix64(1)", "%016x" % mix64(1), "5692161d100b05e5")
    check("keyedCountKey", [keyed_count_key(k, 100_000) for k in range(5)], [73160, 53692, 27096, 90025, 89007])
    check("stateValue", state_value(0, 0, 100),
          "soqmjatkwthacbpxfohstnltcdmtwirktwclpapoodjpbungeeqevbnrmxcnusorqrhuayvjeynxehpwveaipglsxxywidunwcqm")
    if "--quick" not in sys.argv:
        check("fnv1a events", "%016x" % fnv1a(event_json(i) for i in range(1_000_000)), "46459d8dae5b3e43")
        check("fnv1a bids", "%016x" % fnv1a(bid(bid_index(k)) for k in range(1_000_000)), "d00bf764a8a8f527")
    print("all vectors match" if ok else "vectors differ")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
