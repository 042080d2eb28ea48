package weir.bench;

/**
 * The Nexmark-style event generator, exactly as specified in docs/bench-workloads.md.
 *
 * <p>Every event is a pure function of its index: no state is carried from one event to the
 * next, so any subtask can generate any index range and a checkpoint only needs the position.
 * All arithmetic is on unsigned 64-bit integers (Java longs with unsigned remainder/division)
 * so that the Rust side produces identical bytes.
 */
public final class Nexmark {
    private Nexmark() {}

    // ---- layout of the event stream ----
    public static final long PROPORTION_TOTAL = 50; // per 50 events:
    public static final long PERSONS_PER_50 = 1; //   offset 0: person
    public static final long AUCTIONS_PER_50 = 3; //   offsets 1..3: auctions
    public static final long BIDS_PER_50 = 46; //   offsets 4..49: bids
    public static final long FIRST_PERSON_ID = 1000;
    public static final long FIRST_AUCTION_ID = 1000;
    public static final long FIRST_CATEGORY_ID = 10;
    public static final long NUM_CATEGORIES = 5;
    public static final long HOT_AUCTION_RATIO = 100; // hot auction = last auction rounded down to 100
    public static final long HOT_PERSON_RATIO = 100; // hot seller / bidder rounded down to 100
    public static final long NUM_IN_FLIGHT_AUCTIONS = 100;
    public static final long AUCTION_ID_LEAD = 10;
    public static final long NUM_ACTIVE_PEOPLE = 1000;
    public static final long PERSON_ID_LEAD = 10;

    // ---- time: event i happens at BASE_TIME_MS + i / EVENTS_PER_MS (100 events per ms) ----
    public static final long BASE_TIME_MS = 1_700_000_000_000L; // 2023-11-14T22:13:20Z, a multiple of 10 s
    public static final long EVENTS_PER_MS = 100;

    static final String[] FIRST_NAMES = {
        "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"
    };
    static final String[] LAST_NAMES = {
        "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"
    };
    static final String[] US_CITIES = {
        "Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle",
        "Kent", "Cheyenne"
    };
    static final String[] US_STATES = {"AZ", "CA", "ID", "OR", "WA", "WY"};
    static final String[] CHANNELS = {"Google", "Facebook", "Baidu", "Apple"};

    // ---- the PRNG: SplitMix64 ----
    static final long GAMMA = 0x9E3779B97F4A7C15L;
    static final long EVENT_SALT = 0x5745495242454E43L; // "WEIRBENC"
    static final long KEY_SALT = 0x4B4559L; // "KEY"
    static final long VALUE_SALT = 0x56414C5545L; // "VALUE"

    /** SplitMix64's output function. */
    public static long mix64(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** A SplitMix64 stream. Not thread-safe; one per event. */
    public static final class Rng {
        long state;

        public Rng(long seed) {
            state = seed;
        }

        /** The stream of event {@code i}: seeded with mix64(i + EVENT_SALT). */
        public static Rng forEvent(long i) {
            return new Rng(mix64(i + EVENT_SALT));
        }

        public long next() {
            state += GAMMA;
            return mix64(state);
        }
    }

    static long umod(long r, long n) {
        return Long.remainderUnsigned(r, n);
    }

    /** {@code len} (at most 13) lowercase letters from one draw: repeatedly r % 26, r /= 26. */
    public static String randomString(long r, int len) {
        char[] cs = new char[len];
        for (int j = 0; j < len; j++) {
            cs[j] = (char) ('a' + umod(r, 26));
            r = Long.divideUnsigned(r, 26);
        }
        return new String(cs);
    }

    /** A price in cents from one draw: (100 + (r / 6) % 900) * 10^(r % 6), i.e. 100 .. 99,900,000. */
    public static long price(long r) {
        long exp = umod(r, 6);
        long mant = 100 + umod(Long.divideUnsigned(r, 6), 900);
        long p = mant;
        for (long e = 0; e < exp; e++) p *= 10;
        return p;
    }

    public static long dateTime(long i) {
        return BASE_TIME_MS + i / EVENTS_PER_MS;
    }

    /** 0 = person, 1 = auction, 2 = bid. */
    public static int kind(long i) {
        long off = i % PROPORTION_TOTAL;
        if (off < PERSONS_PER_50) return 0;
        if (off < PERSONS_PER_50 + AUCTIONS_PER_50) return 1;
        return 2;
    }

    /** The event index of bid number k (bids counted from 0, skipping persons and auctions). */
    public static long bidIndex(long k) {
        return (k / BIDS_PER_50) * PROPORTION_TOTAL + PERSONS_PER_50 + AUCTIONS_PER_50 + (k % BIDS_PER_50);
    }

    /** A person or bidder among the active people, base 0: the last 1000 people plus a lead of 10. */
    static long activePerson(long lastPerson, long r) {
        long numPeople = lastPerson + 1;
        long active = Math.min(numPeople, NUM_ACTIVE_PEOPLE);
        return numPeople - active + umod(r, active + PERSON_ID_LEAD);
    }

    // ---- events ----

    public static final class Person {
        public long id;
        public String name;
        public String email;
        public String city;
        public String state;
        public long date_time;

        public String toJson() {
            return "{\"id\":" + id + ",\"name\":\"" + name + "\",\"email\":\"" + email + "\",\"city\":\""
                    + city + "\",\"state\":\"" + state + "\",\"date_time\":" + date_time + "}";
        }
    }

    public static final class Auction {
        public long id;
        public String item_name;
        public long initial_bid;
        public long reserve;
        public long date_time;
        public long expires;
        public long seller;
        public long category;

        public String toJson() {
            return "{\"id\":" + id + ",\"item_name\":\"" + item_name + "\",\"initial_bid\":" + initial_bid
                    + ",\"reserve\":" + reserve + ",\"date_time\":" + date_time + ",\"expires\":" + expires
                    + ",\"seller\":" + seller + ",\"category\":" + category + "}";
        }
    }

    /** A bid. Public fields named as in the JSON so Jackson binds them directly. */
    public static final class Bid {
        public long auction;
        public long bidder;
        public long price;
        public String channel;
        public String url;
        public long date_time;

        public String toJson() {
            StringBuilder sb = new StringBuilder(160);
            sb.append("{\"auction\":").append(auction)
                    .append(",\"bidder\":").append(bidder)
                    .append(",\"price\":").append(price)
                    .append(",\"channel\":\"").append(channel)
                    .append("\",\"url\":\"").append(url)
                    .append("\",\"date_time\":").append(date_time).append('}');
            return sb.toString();
        }
    }

    public static Person person(long i) {
        long epoch = i / PROPORTION_TOTAL;
        Rng rng = Rng.forEvent(i);
        Person p = new Person();
        p.id = FIRST_PERSON_ID + epoch;
        String first = FIRST_NAMES[(int) umod(rng.next(), FIRST_NAMES.length)];
        String last = LAST_NAMES[(int) umod(rng.next(), LAST_NAMES.length)];
        p.name = first + " " + last;
        String local = randomString(rng.next(), 7);
        String domain = randomString(rng.next(), 5);
        p.email = local + "@" + domain + ".com";
        p.city = US_CITIES[(int) umod(rng.next(), US_CITIES.length)];
        p.state = US_STATES[(int) umod(rng.next(), US_STATES.length)];
        p.date_time = dateTime(i);
        return p;
    }

    public static Auction auction(long i) {
        long epoch = i / PROPORTION_TOTAL;
        long off = i % PROPORTION_TOTAL;
        Rng rng = Rng.forEvent(i);
        Auction a = new Auction();
        a.id = FIRST_AUCTION_ID + epoch * AUCTIONS_PER_50 + (off - PERSONS_PER_50);
        a.item_name = randomString(rng.next(), 10);
        a.initial_bid = price(rng.next());
        a.reserve = a.initial_bid + price(rng.next());
        a.category = FIRST_CATEGORY_ID + umod(rng.next(), NUM_CATEGORIES);
        long hot = rng.next();
        long pick = rng.next();
        long lastPerson = epoch; // base 0
        long seller = umod(hot, 4) != 0 ? (lastPerson / HOT_PERSON_RATIO) * HOT_PERSON_RATIO
                : activePerson(lastPerson, pick);
        a.seller = FIRST_PERSON_ID + seller;
        a.date_time = dateTime(i);
        a.expires = a.date_time + 1000 * (10 + umod(rng.next(), 50));
        return a;
    }

    public static Bid bid(long i) {
        long epoch = i / PROPORTION_TOTAL;
        Rng rng = Rng.forEvent(i);
        Bid b = new Bid();
        long lastAuction = epoch * AUCTIONS_PER_50 + AUCTIONS_PER_50 - 1; // base 0
        long lastPerson = epoch; // base 0
        long auctionHot = rng.next();
        long auctionPick = rng.next();
        long auction;
        if (umod(auctionHot, 2) != 0) {
            auction = (lastAuction / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO;
        } else {
            long min = Math.max(lastAuction - NUM_IN_FLIGHT_AUCTIONS, 0);
            auction = min + umod(auctionPick, lastAuction - min + 1 + AUCTION_ID_LEAD);
        }
        long bidderHot = rng.next();
        long bidderPick = rng.next();
        long bidder = umod(bidderHot, 4) != 0 ? (lastPerson / HOT_PERSON_RATIO) * HOT_PERSON_RATIO + 1
                : activePerson(lastPerson, bidderPick);
        b.auction = FIRST_AUCTION_ID + auction;
        b.bidder = FIRST_PERSON_ID + bidder;
        b.price = price(rng.next());
        b.channel = CHANNELS[(int) umod(rng.next(), CHANNELS.length)];
        String s1 = randomString(rng.next(), 5);
        String s2 = randomString(rng.next(), 5);
        String s3 = randomString(rng.next(), 5);
        b.url = "https://www.nexmark.com/" + s1 + "/" + s2 + "/" + s3 + "/item.htm?query=1";
        b.date_time = dateTime(i);
        return b;
    }

    /** The JSON line of event i, wrapped by kind: {"person":{..}}, {"auction":{..}} or {"bid":{..}}. */
    public static String eventJson(long i) {
        switch (kind(i)) {
            case 0: return "{\"person\":" + person(i).toJson() + "}";
            case 1: return "{\"auction\":" + auction(i).toJson() + "}";
            default: return "{\"bid\":" + bid(i).toJson() + "}";
        }
    }

    // ---- workload helpers ----

    /** Workload (b): the key of bid number k, uniform over [0, keys). */
    public static long keyedCountKey(long k, long keys) {
        return umod(mix64(k + KEY_SALT), keys);
    }

    /** Workload (e): the 100-byte value of key j, version v (v = 0 when loaded). Lowercase letters. */
    public static byte[] stateValue(long j, long v, int len) {
        Rng rng = new Rng(mix64(j + VALUE_SALT) ^ v);
        byte[] out = new byte[len];
        int pos = 0;
        while (pos < len) {
            long r = rng.next();
            for (int c = 0; c < 10 && pos < len; c++) {
                out[pos++] = (byte) ('a' + umod(r, 26));
                r = Long.divideUnsigned(r, 26);
            }
        }
        return out;
    }

    /** FNV-1a 64 over bytes, used for the test vectors in the workload document. */
    public static long fnv1a(long h, byte[] bytes) {
        for (byte x : bytes) {
            h ^= (x & 0xff);
            h *= 0x100000001B3L;
        }
        return h;
    }

    public static final long FNV_OFFSET = 0xCBF29CE484222325L;
}
