package weir.bench;

import java.io.BufferedOutputStream;
import java.io.File;
import java.io.FileOutputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Locale;

/**
 * Writes the input of workload (a), or prints the generator's test vectors.
 *
 * <pre>
 * Generate bids --count N --shards S --out DIR   # DIR/part-00000.jsonl .. part-(S-1).jsonl, then DIR/_SUCCESS
 * Generate vectors                              # the first events and FNV-1a checksums (docs/bench-workloads.md)
 * </pre>
 */
public class Generate {
    public static void main(String[] argv) throws Exception {
        if (argv.length == 0) usage();
        if (argv[0].equals("vectors")) {
            vectors();
            return;
        }
        if (!argv[0].equals("bids")) usage();
        long count = -1;
        int shards = 4;
        String out = null;
        for (int i = 1; i + 1 < argv.length; i += 2) {
            switch (argv[i]) {
                case "--count": count = Bench.parseCount(argv[i + 1]); break;
                case "--shards": shards = Integer.parseInt(argv[i + 1]); break;
                case "--out": out = argv[i + 1]; break;
                default: usage();
            }
        }
        if (count < 0 || out == null) usage();
        writeBids(count, shards, new File(out));
    }

    static void usage() {
        System.err.println("usage: Generate bids --count N [--shards 4] --out DIR | Generate vectors");
        System.exit(2);
    }

    /** Shard s holds bids floor(s*N/S) .. floor((s+1)*N/S)-1, one JSON object per line, '\n' after each. */
    static void writeBids(long count, int shards, File dir) throws Exception {
        dir.mkdirs();
        new File(dir, "_SUCCESS").delete();
        long t0 = System.nanoTime();
        for (int s = 0; s < shards; s++) {
            long from = count * s / shards;
            long to = count * (s + 1) / shards;
            File f = new File(dir, String.format(Locale.ROOT, "part-%05d.jsonl", s));
            try (OutputStream o = new BufferedOutputStream(new FileOutputStream(f), 1 << 20)) {
                for (long k = from; k < to; k++) {
                    o.write(Nexmark.bid(Nexmark.bidIndex(k)).toJson().getBytes(StandardCharsets.UTF_8));
                    o.write('\n');
                }
            }
            System.err.printf(Locale.ROOT, "[generate] %s: bids %,d..%,d (%.1f s)%n", f, from, to - 1,
                    (System.nanoTime() - t0) / 1e9);
        }
        new File(dir, "_SUCCESS").createNewFile();
    }

    static void vectors() {
        System.out.println("# events 0..7 and 49..51 (eventJson)");
        for (long i : new long[] {0, 1, 2, 3, 4, 5, 6, 7, 49, 50, 51}) {
            System.out.println(i + " " + Nexmark.eventJson(i));
        }
        System.out.println("# bid numbers 0, 1, 45, 46, 1000000 (bid(bidIndex(k)).toJson())");
        for (long k : new long[] {0, 1, 45, 46, 1_000_000}) {
            System.out.println("k=" + k + " i=" + Nexmark.bidIndex(k) + " " + Nexmark.bid(Nexmark.bidIndex(k)).toJson());
        }
        long h = Nexmark.FNV_OFFSET;
        for (long i = 0; i < 1_000_000; i++) h = Nexmark.fnv1a(h, (Nexmark.eventJson(i) + "\n").getBytes(StandardCharsets.UTF_8));
        System.out.printf("fnv1a64(eventJson(i)+\"\\n\", i in 0..999999) = %016x%n", h);
        h = Nexmark.FNV_OFFSET;
        for (long k = 0; k < 1_000_000; k++) h = Nexmark.fnv1a(h, (Nexmark.bid(Nexmark.bidIndex(k)).toJson() + "\n").getBytes(StandardCharsets.UTF_8));
        System.out.printf("fnv1a64(bid lines k in 0..999999) = %016x%n", h);
        System.out.println("# workload (b): keyedCountKey(k, 100000) for k = 0..4");
        for (long k = 0; k < 5; k++) System.out.print(Nexmark.keyedCountKey(k, 100_000) + (k < 4 ? " " : "\n"));
        System.out.println("# workload (e): stateValue(j, 0, 100) for j = 0, 1");
        System.out.println(new String(Nexmark.stateValue(0, 0, 100), StandardCharsets.US_ASCII));
        System.out.println(new String(Nexmark.stateValue(1, 0, 100), StandardCharsets.US_ASCII));
        System.out.println("# mix64(0), mix64(1), Rng.forEvent(0).next()");
        System.out.printf("%016x %016x %016x%n", Nexmark.mix64(0), Nexmark.mix64(1), Nexmark.Rng.forEvent(0).next());
    }
}
