package weir.bench;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.LongAdder;

/**
 * Figures gathered inside the one JVM of a local (MiniCluster) run. The job's classes are on the
 * application class path, so these statics are shared between the driver and the tasks.
 */
public final class Stats {
    private Stats() {}

    /** Records produced by the sources (approximate: counted in steps of 256), for progress. */
    public static final LongAdder PRODUCED = new LongAdder();
    /** Records that reached the sink. */
    public static final LongAdder OUTPUTS = new LongAdder();
    /** Workload (e): load records applied to state, and trickle reads that found no value. */
    public static final LongAdder LOADED = new LongAdder();
    public static final LongAdder MISSING = new LongAdder();

    private static final AtomicBoolean FIRST_OUTPUT = new AtomicBoolean();
    private static volatile long firstOutputEpochMs = -1;
    private static final List<long[]> SAMPLES = new ArrayList<>();

    /** Called by a sink on its first record: prints {"event":"first_output",...} once per JVM. */
    public static void firstOutput() {
        if (FIRST_OUTPUT.compareAndSet(false, true)) {
            firstOutputEpochMs = System.currentTimeMillis();
            Bench.emit("{\"event\":\"first_output\",\"epoch_ms\":" + firstOutputEpochMs + "}");
        }
    }

    public static long firstOutputEpochMs() {
        return firstOutputEpochMs;
    }

    public static synchronized void addSamples(long[] s, int n) {
        SAMPLES.add(Arrays.copyOf(s, n));
    }

    /** p50, p99 and max of the sampled latencies in microseconds; null when there are none. */
    public static synchronized long[] latencyPercentilesUs() {
        int total = 0;
        for (long[] s : SAMPLES) total += s.length;
        if (total == 0) return null;
        long[] all = new long[total];
        int pos = 0;
        for (long[] s : SAMPLES) {
            System.arraycopy(s, 0, all, pos, s.length);
            pos += s.length;
        }
        Arrays.sort(all);
        return new long[] {
            all[(int) Math.min(total - 1, (long) (total * 0.50))] / 1000,
            all[(int) Math.min(total - 1, (long) (total * 0.99))] / 1000,
            all[total - 1] / 1000,
            total
        };
    }
}
