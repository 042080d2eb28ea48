package weir.bench;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.ReduceFunction;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.api.java.tuple.Tuple5;
import org.apache.flink.api.java.tuple.Tuple6;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.reader.TextLineInputFormat;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.core.fs.Path;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.SlidingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;

import java.io.File;
import java.lang.management.ManagementFactory;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CompletableFuture;

/**
 * The Flink side of the Weir benchmarks (docs/bench-workloads.md). One workload per run, in a
 * local MiniCluster inside this JVM. Prints progress to stderr and one JSON result line
 * ({"workload":...}) to stdout; workload "state" also prints {"event":...} lines the runner
 * reacts to (kill -9 after a checkpoint, restart with --restore).
 *
 * <pre>
 * java -cp weir-flink-bench.jar:$FLINK_LIB/* weir.bench.Bench --workload count --events 20000000 --keys 100000
 * </pre>
 */
public class Bench {

    static final TypeInformation<Nexmark.Bid> BID = Types.POJO(Nexmark.Bid.class);
    static final TypeInformation<Tuple2<Nexmark.Bid, Long>> TIMED_BID = Types.TUPLE(BID, Types.LONG);

    // ---------------------------------------------------------------- arguments

    static final class Args {
        String workload;
        long events = 1_000_000;
        int parallelism = 2;
        String backend = "rocksdb";
        long keys = 100_000;
        long checkpointMs = 5_000;
        boolean incremental = false;
        String input;
        String workDir;
        String restore;
        int valueBytes = 100;
        String managedMemory = "512m";

        static Args parse(String[] argv) {
            Args a = new Args();
            for (int i = 0; i < argv.length; i++) {
                String k = argv[i];
                String v = i + 1 < argv.length ? argv[i + 1] : null;
                switch (k) {
                    case "--workload": a.workload = v; i++; break;
                    case "--events": a.events = parseCount(v); i++; break;
                    case "--parallelism": a.parallelism = Integer.parseInt(v); i++; break;
                    case "--backend": a.backend = v; i++; break;
                    case "--keys": a.keys = parseCount(v); i++; break;
                    case "--checkpoint-interval-ms": a.checkpointMs = Long.parseLong(v); i++; break;
                    case "--incremental": a.incremental = Boolean.parseBoolean(v); i++; break;
                    case "--input": a.input = v; i++; break;
                    case "--work-dir": a.workDir = v; i++; break;
                    case "--restore": a.restore = v; i++; break;
                    case "--value-bytes": a.valueBytes = Integer.parseInt(v); i++; break;
                    case "--managed-memory": a.managedMemory = v; i++; break;
                    default: throw new IllegalArgumentException("unknown argument " + k + "\n" + USAGE);
                }
            }
            if (a.workload == null) throw new IllegalArgumentException("--workload is required\n" + USAGE);
            if (!a.backend.equals("rocksdb") && !a.backend.equals("heap")) {
                throw new IllegalArgumentException("--backend must be rocksdb or heap, not " + a.backend);
            }
            return a;
        }
    }

    static final String USAGE = "usage: Bench --workload q0|q1|q2|count|q5|q7|state [--events N] [--parallelism 2]\n"
            + "  [--backend rocksdb|heap] [--keys K] [--checkpoint-interval-ms 5000] [--incremental false]\n"
            + "  [--input DIR (q0-q2)] [--work-dir DIR] [--restore CHECKPOINT_DIR (state)] [--value-bytes 100]\n"
            + "  [--managed-memory 512m]\n"
            + "counts accept suffixes k and M, e.g. 20M";

    static long parseCount(String v) {
        v = v.trim();
        long mult = 1;
        if (v.endsWith("k") || v.endsWith("K")) mult = 1_000;
        if (v.endsWith("M") || v.endsWith("m")) mult = 1_000_000;
        if (mult != 1) v = v.substring(0, v.length() - 1);
        return Long.parseLong(v) * mult;
    }

    // ---------------------------------------------------------------- main

    public static void main(String[] argv) throws Exception {
        Args a;
        try {
            a = Args.parse(argv);
        } catch (IllegalArgumentException e) {
            System.err.println(e.getMessage());
            System.exit(2);
            return;
        }
        if (a.workDir == null) a.workDir = Files.createTempDirectory("weir-flink-bench-").toString();
        new File(a.workDir).mkdirs();
        int port = freePort();
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(config(a, port));
        env.setParallelism(a.parallelism);

        int sampleEvery;
        switch (a.workload) {
            case "q0": case "q1": case "q2":
                stateless(env, a);
                sampleEvery = 64;
                break;
            case "count":
                keyedCount(env, a);
                sampleEvery = 64;
                break;
            case "q5":
                hotItems(env, a);
                sampleEvery = 1;
                break;
            case "q7":
                highestBid(env, a);
                sampleEvery = 1;
                break;
            case "state":
                largeState(env, a);
                sampleEvery = 1;
                break;
            default:
                System.err.println("unknown workload " + a.workload + "\n" + USAGE);
                System.exit(2);
                return;
        }
        run(env, a, new Rest(port));
        System.exit(0); // do not wait for lingering non-daemon threads
    }

    static Configuration config(Args a, int restPort) {
        Configuration c = new Configuration();
        c.setString("parallelism.default", Integer.toString(a.parallelism));
        c.setString("state.backend.type", a.backend.equals("heap") ? "hashmap" : "rocksdb");
        c.setString("state.backend.rocksdb.localdir", a.workDir + "/rocksdb");
        c.setString("taskmanager.memory.managed.size", a.managedMemory);
        c.setString("execution.checkpointing.interval", a.checkpointMs + " ms");
        c.setString("execution.checkpointing.mode", "EXACTLY_ONCE");
        c.setString("execution.checkpointing.storage", "filesystem");
        c.setString("execution.checkpointing.dir", new File(a.workDir, "checkpoints").toURI().toString());
        c.setString("execution.checkpointing.incremental", Boolean.toString(a.incremental));
        c.setString("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION");
        c.setString("execution.checkpointing.num-retained", "2");
        c.setString("execution.checkpointing.timeout", "10 min");
        if (a.workload.equals("state")) {
            // Workload (e) triggers its checkpoints itself: the periodic scheduler's first
            // checkpoint comes at a random delay between min-pause and the interval, so both
            // are set long to keep periodic checkpoints out of the load and the restore.
            c.setString("execution.checkpointing.min-pause", a.checkpointMs + " ms");
        }
        if (a.restore != null) c.setString("execution.state-recovery.path", a.restore);
        c.setString("pipeline.object-reuse", "true");
        c.setString("io.tmp.dirs", a.workDir + "/tmp");
        c.setString("rest.bind-address", "127.0.0.1");
        c.setString("rest.address", "127.0.0.1");
        c.setString("rest.bind-port", Integer.toString(restPort));
        c.setString("rest.port", Integer.toString(restPort));
        c.setString("web.checkpoints.history", "1000");
        return c;
    }

    static int freePort() throws Exception {
        try (ServerSocket s = new ServerSocket(0)) {
            return s.getLocalPort();
        }
    }

    static long processCpuNanos() {
        return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
                .getProcessCpuTime();
    }

    static synchronized void emit(String jsonLine) {
        System.out.println(jsonLine);
        System.out.flush();
    }

    static void progress(String msg) {
        System.err.println(msg);
        System.err.flush();
    }

    // ---------------------------------------------------------------- running and reporting

    static void run(StreamExecutionEnvironment env, Args a, Rest rest) throws Exception {
        long cpu0 = processCpuNanos();
        long t0 = System.nanoTime();
        JobClient job = env.executeAsync("weir-bench-" + a.workload);
        String jobPath = "/jobs/" + job.getJobID();
        if (a.workload.equals("state")) {
            stateDriver(job, jobPath, a, rest, t0, cpu0);
            return;
        }
        JsonNode lastCheckpoints = null;
        long lastPrint = t0;
        CompletableFuture<JobExecutionResult> result = job.getJobExecutionResult();
        while (!result.isDone()) {
            Thread.sleep(500);
            try {
                lastCheckpoints = rest.get(jobPath + "/checkpoints");
            } catch (Exception e) {
                // the cluster shuts down right after the job ends
            }
            long now = System.nanoTime();
            if (now - lastPrint >= 5_000_000_000L) {
                lastPrint = now;
                progress(String.format(Locale.ROOT, "[flink %s] %5.1f s  produced %,d  outputs %,d  checkpoints %s",
                        a.workload, (now - t0) / 1e9, Stats.PRODUCED.sum(), Stats.OUTPUTS.sum(),
                        lastCheckpoints == null ? "-" : lastCheckpoints.path("counts").path("completed").asText()));
            }
        }
        long wallNanos = System.nanoTime() - t0;
        long cpuNanos = processCpuNanos() - cpu0;
        result.get(); // throws when the job failed
        StringBuilder out = new StringBuilder();
        out.append("{\"workload\":\"").append(a.workload).append('"')
                .append(",\"engine\":\"flink\"")
                .append(",\"events\":").append(a.events)
                .append(",\"outputs\":").append(Stats.OUTPUTS.sum())
                .append(",\"parallelism\":").append(a.parallelism)
                .append(",\"backend\":\"").append(a.backend).append('"');
        if (a.workload.equals("count")) out.append(",\"keys\":").append(a.keys);
        out.append(String.format(Locale.ROOT, ",\"wall_s\":%.3f,\"job_cpu_s\":%.3f", wallNanos / 1e9, cpuNanos / 1e9));
        out.append(",\"latency_us\":").append(latencyJson());
        out.append(",\"checkpoints\":").append(checkpointSummary(lastCheckpoints));
        out.append('}');
        emit(out.toString());
    }

    static String latencyJson() {
        long[] p = Stats.latencyPercentilesUs();
        if (p == null) return "null";
        return "{\"p50\":" + p[0] + ",\"p99\":" + p[1] + ",\"max\":" + p[2] + ",\"samples\":" + p[3] + "}";
    }

    /** Completed checkpoints from the REST API: count, end-to-end duration p50/max, sizes of the last. */
    static String checkpointSummary(JsonNode cp) {
        if (cp == null) return "null";
        List<Long> durations = new ArrayList<>();
        for (JsonNode h : cp.path("history")) {
            if ("COMPLETED".equals(h.path("status").asText())) durations.add(h.path("end_to_end_duration").asLong());
        }
        durations.sort(null);
        JsonNode last = cp.path("latest").path("completed");
        String failure = cp.path("latest").path("failed").path("failure_message").asText("");
        return "{\"completed\":" + cp.path("counts").path("completed").asLong()
                + ",\"failed\":" + cp.path("counts").path("failed").asLong()
                + ",\"last_failure\":" + Rest.JSON.valueToTree(failure.length() > 200 ? failure.substring(0, 200) : failure)
                + ",\"duration_ms_p50\":" + (durations.isEmpty() ? "null" : durations.get(durations.size() / 2))
                + ",\"duration_ms_max\":" + (durations.isEmpty() ? "null" : durations.get(durations.size() - 1))
                + ",\"last_checkpointed_size_bytes\":" + (last.isMissingNode() || last.isNull() ? "null" : last.path("checkpointed_size").asLong())
                + ",\"last_state_size_bytes\":" + (last.isMissingNode() || last.isNull() ? "null" : last.path("state_size").asLong())
                + "}";
    }

    // ---------------------------------------------------------------- sources

    /** Bids 0..count-1 of the Nexmark stream, each with its ingestion stamp. */
    static StridedSource<Tuple2<Nexmark.Bid, Long>> bidSource(long count) {
        return new StridedSource<>(count, (k, ns) -> Tuple2.of(Nexmark.bid(Nexmark.bidIndex(k)), ns), TIMED_BID);
    }

    static DataStream<Tuple2<Nexmark.Bid, Long>> bidsWithEventTime(StreamExecutionEnvironment env, long count) {
        WatermarkStrategy<Tuple2<Nexmark.Bid, Long>> wm = WatermarkStrategy.<Tuple2<Nexmark.Bid, Long>>forMonotonousTimestamps()
                .withTimestampAssigner((t, ts) -> t.f0.date_time);
        return env.fromSource(bidSource(count), wm, "nexmark-bids");
    }

    // ---------------------------------------------------------------- (a) stateless q0, q1, q2

    /** q1's output: the bid with the price converted to euro cents (price * 908 / 1000). */
    public static final class Q1Out {
        public long auction;
        public long bidder;
        public long price;
        public long date_time;
    }

    /** q2's output: auction and price of bids whose auction % 123 == 0. */
    public static final class Q2Out {
        public long auction;
        public long price;
    }

    /** Parses a bid JSON line with Jackson and stamps it with the ingestion time. */
    static final class ParseBid extends RichMapFunction<String, Tuple2<Nexmark.Bid, Long>> {
        transient ObjectMapper mapper;
        transient long stamp;
        transient int sinceStamp;

        @Override
        public void open(OpenContext ctx) {
            mapper = new ObjectMapper();
            sinceStamp = StridedSource.STAMP_EVERY;
        }

        @Override
        public Tuple2<Nexmark.Bid, Long> map(String line) throws Exception {
            if (++sinceStamp >= StridedSource.STAMP_EVERY) {
                sinceStamp = 0;
                stamp = System.nanoTime();
                Stats.PRODUCED.add(StridedSource.STAMP_EVERY);
            }
            return Tuple2.of(mapper.readValue(line, Nexmark.Bid.class), stamp);
        }
    }

    /** Projects (q1: converts) a bid and serializes the result to a JSON string with Jackson. */
    static final class Serialize extends RichMapFunction<Tuple2<Nexmark.Bid, Long>, Tuple2<String, Long>> {
        final String query;
        transient ObjectMapper mapper;

        Serialize(String query) {
            this.query = query;
        }

        @Override
        public void open(OpenContext ctx) {
            mapper = new ObjectMapper();
        }

        @Override
        public Tuple2<String, Long> map(Tuple2<Nexmark.Bid, Long> t) throws Exception {
            Nexmark.Bid b = t.f0;
            Object out;
            if (query.equals("q0")) {
                out = b;
            } else if (query.equals("q1")) {
                Q1Out o = new Q1Out();
                o.auction = b.auction;
                o.bidder = b.bidder;
                o.price = b.price * 908 / 1000;
                o.date_time = b.date_time;
                out = o;
            } else {
                Q2Out o = new Q2Out();
                o.auction = b.auction;
                o.price = b.price;
                out = o;
            }
            return Tuple2.of(mapper.writeValueAsString(out), t.f1);
        }
    }

    static void stateless(StreamExecutionEnvironment env, Args a) {
        if (a.input == null) throw new IllegalArgumentException("q0-q2 need --input DIR (made by weir.bench.Generate)");
        FileSource<String> files = FileSource.forRecordStreamFormat(new TextLineInputFormat(), new Path(a.input)).build();
        DataStream<Tuple2<Nexmark.Bid, Long>> bids = env
                .fromSource(files, WatermarkStrategy.noWatermarks(), "bid-files")
                .map(new ParseBid()).returns(TIMED_BID).name("parse");
        if (a.workload.equals("q2")) bids = bids.filter(t -> t.f0.auction % 123 == 0).name("filter");
        bids.map(new Serialize(a.workload)).returns(Types.TUPLE(Types.STRING, Types.LONG)).name("project-serialize")
                .sinkTo(new CountingSink<Tuple2<String, Long>>(t -> t.f1, 64)).name("counting-sink");
    }

    // ---------------------------------------------------------------- (b) keyed running count

    /** Running count per key in a ValueState; emits (key, count, ingestion stamp) on every update. */
    static final class CountPerKey extends KeyedProcessFunction<Long, Tuple2<Long, Long>, Tuple3<Long, Long, Long>> {
        transient ValueState<Long> count;

        @Override
        public void open(OpenContext ctx) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
        }

        @Override
        public void processElement(Tuple2<Long, Long> in, Context ctx, Collector<Tuple3<Long, Long, Long>> out)
                throws Exception {
            Long c = count.value();
            long n = c == null ? 1 : c + 1;
            count.update(n);
            out.collect(Tuple3.of(in.f0, n, in.f1));
        }
    }

    static void keyedCount(StreamExecutionEnvironment env, Args a) {
        final long keys = a.keys;
        // The bids of workload (b) have a uniform bidder in [1000, 1000 + K): see docs/bench-workloads.md.
        StridedSource<Tuple2<Nexmark.Bid, Long>> source = new StridedSource<>(a.events, (k, ns) -> {
            Nexmark.Bid b = Nexmark.bid(Nexmark.bidIndex(k));
            b.bidder = Nexmark.FIRST_PERSON_ID + Nexmark.keyedCountKey(k, keys);
            return Tuple2.of(b, ns);
        }, TIMED_BID);
        env.fromSource(source, WatermarkStrategy.noWatermarks(), "nexmark-bids")
                .map(t -> Tuple2.of(t.f0.bidder % keys, t.f1)).returns(Types.TUPLE(Types.LONG, Types.LONG)).name("key")
                .keyBy(t -> t.f0, Types.LONG)
                .process(new CountPerKey()).returns(Types.TUPLE(Types.LONG, Types.LONG, Types.LONG)).name("count")
                .sinkTo(new CountingSink<Tuple3<Long, Long, Long>>(t -> t.f2, 64)).name("counting-sink");
    }

    // ---------------------------------------------------------------- (c) q5 hot items

    /** Counts bids, keeping the latest ingestion stamp: accumulator (count, max stamp). */
    static final class CountAgg implements AggregateFunction<Tuple3<Long, Long, Long>, Tuple2<Long, Long>, Tuple2<Long, Long>> {
        public Tuple2<Long, Long> createAccumulator() {
            return Tuple2.of(0L, 0L);
        }

        public Tuple2<Long, Long> add(Tuple3<Long, Long, Long> bid, Tuple2<Long, Long> acc) {
            return Tuple2.of(acc.f0 + 1, Math.max(acc.f1, bid.f2));
        }

        public Tuple2<Long, Long> getResult(Tuple2<Long, Long> acc) {
            return acc;
        }

        public Tuple2<Long, Long> merge(Tuple2<Long, Long> x, Tuple2<Long, Long> y) {
            return Tuple2.of(x.f0 + y.f0, Math.max(x.f1, y.f1));
        }
    }

    /** (window end, auction, count, max stamp). */
    static final class CountWithWindowEnd
            extends ProcessWindowFunction<Tuple2<Long, Long>, Tuple4<Long, Long, Long, Long>, Long, TimeWindow> {
        public void process(Long auction, Context ctx, Iterable<Tuple2<Long, Long>> counts,
                Collector<Tuple4<Long, Long, Long, Long>> out) {
            Tuple2<Long, Long> c = counts.iterator().next();
            out.collect(Tuple4.of(ctx.window().getEnd(), auction, c.f0, c.f1));
        }
    }

    /**
     * Keyed by window end: keeps the auction with the most bids (ties: the smaller auction id) and
     * the latest stamp of any count of that window; emits it when the watermark passes the window.
     */
    static final class MaxCountPerWindow
            extends KeyedProcessFunction<Long, Tuple4<Long, Long, Long, Long>, Tuple4<Long, Long, Long, Long>> {
        transient ValueState<Tuple4<Long, Long, Long, Long>> best;

        @Override
        public void open(OpenContext ctx) {
            best = getRuntimeContext().getState(new ValueStateDescriptor<>("best",
                    Types.TUPLE(Types.LONG, Types.LONG, Types.LONG, Types.LONG)));
        }

        @Override
        public void processElement(Tuple4<Long, Long, Long, Long> in, Context ctx,
                Collector<Tuple4<Long, Long, Long, Long>> out) throws Exception {
            Tuple4<Long, Long, Long, Long> b = best.value();
            if (b == null) {
                ctx.timerService().registerEventTimeTimer(in.f0 - 1);
                best.update(Tuple4.of(in.f0, in.f1, in.f2, in.f3));
                return;
            }
            long stamp = Math.max(b.f3, in.f3);
            if (in.f2 > b.f2 || (in.f2.equals(b.f2) && in.f1 < b.f1)) {
                best.update(Tuple4.of(in.f0, in.f1, in.f2, stamp));
            } else {
                best.update(Tuple4.of(b.f0, b.f1, b.f2, stamp));
            }
        }

        @Override
        public void onTimer(long ts, OnTimerContext ctx, Collector<Tuple4<Long, Long, Long, Long>> out) throws Exception {
            out.collect(best.value());
            best.clear();
        }
    }

    static void hotItems(StreamExecutionEnvironment env, Args a) {
        TypeInformation<Tuple4<Long, Long, Long, Long>> t4 = Types.TUPLE(Types.LONG, Types.LONG, Types.LONG, Types.LONG);
        bidsWithEventTime(env, a.events)
                .map(t -> Tuple3.of(t.f0.auction, t.f0.date_time, t.f1))
                .returns(Types.TUPLE(Types.LONG, Types.LONG, Types.LONG)).name("project")
                .keyBy(t -> t.f0, Types.LONG)
                .window(SlidingEventTimeWindows.of(Duration.ofSeconds(10), Duration.ofSeconds(2)))
                .aggregate(new CountAgg(), new CountWithWindowEnd(), Types.TUPLE(Types.LONG, Types.LONG),
                        Types.TUPLE(Types.LONG, Types.LONG), t4).name("count-per-auction")
                .keyBy(t -> t.f0, Types.LONG)
                .process(new MaxCountPerWindow()).returns(t4).name("max-per-window")
                .sinkTo(new CountingSink<Tuple4<Long, Long, Long, Long>>(t -> t.f3, 1)).name("counting-sink");
    }

    // ---------------------------------------------------------------- (d) q7 highest bid

    /** (auction, bidder, price, date_time, stamp): the higher bid wins; ties by smaller auction, bidder, date_time. */
    static boolean beats(Tuple5<Long, Long, Long, Long, Long> x, Tuple5<Long, Long, Long, Long, Long> y) {
        if (!x.f2.equals(y.f2)) return x.f2 > y.f2;
        if (!x.f0.equals(y.f0)) return x.f0 < y.f0;
        if (!x.f1.equals(y.f1)) return x.f1 < y.f1;
        return x.f3 < y.f3;
    }

    static final class MaxBid implements ReduceFunction<Tuple5<Long, Long, Long, Long, Long>> {
        public Tuple5<Long, Long, Long, Long, Long> reduce(Tuple5<Long, Long, Long, Long, Long> x,
                Tuple5<Long, Long, Long, Long, Long> y) {
            Tuple5<Long, Long, Long, Long, Long> w = beats(y, x) ? y : x;
            return Tuple5.of(w.f0, w.f1, w.f2, w.f3, Math.max(x.f4, y.f4));
        }
    }

    /** (window end, auction, bidder, price, date_time, stamp). */
    static final class BidWithWindowEnd extends ProcessWindowFunction<Tuple5<Long, Long, Long, Long, Long>,
            Tuple6<Long, Long, Long, Long, Long, Long>, Long, TimeWindow> {
        public void process(Long auction, Context ctx, Iterable<Tuple5<Long, Long, Long, Long, Long>> bids,
                Collector<Tuple6<Long, Long, Long, Long, Long, Long>> out) {
            Tuple5<Long, Long, Long, Long, Long> b = bids.iterator().next();
            out.collect(Tuple6.of(ctx.window().getEnd(), b.f0, b.f1, b.f2, b.f3, b.f4));
        }
    }

    static final class MaxBidPerWindow extends KeyedProcessFunction<Long, Tuple6<Long, Long, Long, Long, Long, Long>,
            Tuple6<Long, Long, Long, Long, Long, Long>> {
        transient ValueState<Tuple6<Long, Long, Long, Long, Long, Long>> best;

        @Override
        public void open(OpenContext ctx) {
            best = getRuntimeContext().getState(new ValueStateDescriptor<>("best", T6));
        }

        @Override
        public void processElement(Tuple6<Long, Long, Long, Long, Long, Long> in, Context ctx,
                Collector<Tuple6<Long, Long, Long, Long, Long, Long>> out) throws Exception {
            Tuple6<Long, Long, Long, Long, Long, Long> b = best.value();
            if (b == null) {
                ctx.timerService().registerEventTimeTimer(in.f0 - 1);
                best.update(in.copy());
                return;
            }
            Tuple6<Long, Long, Long, Long, Long, Long> w =
                    beats(Tuple5.of(in.f1, in.f2, in.f3, in.f4, 0L), Tuple5.of(b.f1, b.f2, b.f3, b.f4, 0L)) ? in : b;
            best.update(Tuple6.of(w.f0, w.f1, w.f2, w.f3, w.f4, Math.max(in.f5, b.f5)));
        }

        @Override
        public void onTimer(long ts, OnTimerContext ctx, Collector<Tuple6<Long, Long, Long, Long, Long, Long>> out)
                throws Exception {
            out.collect(best.value());
            best.clear();
        }
    }

    static final TypeInformation<Tuple6<Long, Long, Long, Long, Long, Long>> T6 =
            Types.TUPLE(Types.LONG, Types.LONG, Types.LONG, Types.LONG, Types.LONG, Types.LONG);

    static void highestBid(StreamExecutionEnvironment env, Args a) {
        TypeInformation<Tuple5<Long, Long, Long, Long, Long>> t5 =
                Types.TUPLE(Types.LONG, Types.LONG, Types.LONG, Types.LONG, Types.LONG);
        bidsWithEventTime(env, a.events)
                .map(t -> Tuple5.of(t.f0.auction, t.f0.bidder, t.f0.price, t.f0.date_time, t.f1)).returns(t5).name("project")
                .keyBy(t -> t.f0, Types.LONG)
                .window(TumblingEventTimeWindows.of(Duration.ofSeconds(10)))
                .reduce(new MaxBid(), new BidWithWindowEnd(), T6).name("max-per-auction")
                .keyBy(t -> t.f0, Types.LONG)
                .process(new MaxBidPerWindow()).returns(T6).name("max-per-window")
                .sinkTo(new CountingSink<Tuple6<Long, Long, Long, Long, Long, Long>>(t -> t.f5, 1)).name("counting-sink");
    }

    // ---------------------------------------------------------------- (e) ~1 GB of keyed state

    /**
     * Records j < keys load key j with its value (version 0); records j >= keys are the trickle:
     * about 1000 per second per subtask, each updating key mix64(j + KEY_SALT) % keys.
     * Fields: (index, key, value, stamp).
     */
    static final class StateRecord implements StridedSource.IndexFn<Tuple4<Long, Long, byte[], Long>> {
        final long keys;
        final int valueBytes;

        StateRecord(long keys, int valueBytes) {
            this.keys = keys;
            this.valueBytes = valueBytes;
        }

        public Tuple4<Long, Long, byte[], Long> make(long j, long stamp) throws Exception {
            if (j < keys) return Tuple4.of(j, j, Nexmark.stateValue(j, 0, valueBytes), stamp);
            Thread.sleep(1);
            long key = Nexmark.keyedCountKey(j, keys);
            return Tuple4.of(j, key, Nexmark.stateValue(key, j, valueBytes), System.nanoTime());
        }
    }

    /** Stores each key's value; a trickle record checks the old value is there, replaces it, emits. */
    static final class StoreValue
            extends KeyedProcessFunction<Long, Tuple4<Long, Long, byte[], Long>, Tuple3<Long, Long, Long>> {
        final long keys;
        transient ValueState<byte[]> value;

        StoreValue(long keys) {
            this.keys = keys;
        }

        @Override
        public void open(OpenContext ctx) {
            value = getRuntimeContext().getState(new ValueStateDescriptor<>("value", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        }

        @Override
        public void processElement(Tuple4<Long, Long, byte[], Long> in, Context ctx, Collector<Tuple3<Long, Long, Long>> out)
                throws Exception {
            if (in.f0 < keys) {
                value.update(in.f2);
                Stats.LOADED.increment();
                return;
            }
            if (value.value() == null) Stats.MISSING.increment();
            value.update(in.f2);
            out.collect(Tuple3.of(in.f1, in.f0, in.f3));
        }
    }

    static void largeState(StreamExecutionEnvironment env, Args a) {
        long total = a.keys + 1_000_000_000_000L; // the trickle runs until the process is stopped
        TypeInformation<Tuple4<Long, Long, byte[], Long>> type =
                Types.TUPLE(Types.LONG, Types.LONG, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO, Types.LONG);
        env.fromSource(new StridedSource<>(total, new StateRecord(a.keys, a.valueBytes), type),
                        WatermarkStrategy.noWatermarks(), "state-records")
                .keyBy(t -> t.f1, Types.LONG)
                .process(new StoreValue(a.keys)).returns(Types.TUPLE(Types.LONG, Types.LONG, Types.LONG)).name("store")
                .sinkTo(new CountingSink<Tuple3<Long, Long, Long>>(t -> t.f2, 1)).name("counting-sink");
    }

    /**
     * Drives workload (e). Fresh run: wait until all keys are loaded, trigger a checkpoint (the
     * first one, so it holds the whole state), then a second one a few seconds later, print
     * {"event":"ready_to_kill",...} and keep running until killed. Restored run (--restore): wait
     * for the first output, print the result line, stop.
     */
    static void stateDriver(JobClient job, String jobPath, Args a, Rest rest, long t0, long cpu0) throws Exception {
        if (a.restore != null) {
            while (Stats.firstOutputEpochMs() < 0) {
                if (job.getJobExecutionResult().isDone()) throw new IllegalStateException("job ended");
                Thread.sleep(5);
            }
            long firstOutput = Stats.firstOutputEpochMs();
            Thread.sleep(1000); // let some trickle records check their keys
            JsonNode cp = rest.get(jobPath + "/checkpoints");
            JsonNode restored = cp.path("latest").path("restored");
            emit("{\"workload\":\"state-restore\",\"engine\":\"flink\",\"keys\":" + a.keys
                    + ",\"first_output_epoch_ms\":" + firstOutput
                    + ",\"jvm_start_epoch_ms\":" + ManagementFactory.getRuntimeMXBean().getStartTime()
                    + ",\"restored_checkpoint\":" + restored.path("id").asLong()
                    + ",\"restore_epoch_ms\":" + restored.path("restore_timestamp").asLong()
                    + ",\"outputs_after_restore\":" + Stats.OUTPUTS.sum()
                    + ",\"missing_keys_seen\":" + Stats.MISSING.sum() + "}");
            job.cancel().get();
            return;
        }
        long lastPrint = System.nanoTime();
        while (Stats.LOADED.sum() < a.keys) {
            if (job.getJobExecutionResult().isDone()) throw new IllegalStateException("job ended");
            Thread.sleep(200);
            if (System.nanoTime() - lastPrint >= 5_000_000_000L) {
                lastPrint = System.nanoTime();
                progress(String.format(Locale.ROOT, "[flink state] %5.1f s  loaded %,d of %,d keys",
                        (lastPrint - t0) / 1e9, Stats.LOADED.sum(), a.keys));
            }
        }
        double loadS = (System.nanoTime() - t0) / 1e9;
        double loadCpuS = (processCpuNanos() - cpu0) / 1e9;
        emit(String.format(Locale.ROOT, "{\"event\":\"loaded\",\"keys\":%d,\"load_s\":%.3f,\"load_cpu_s\":%.3f}",
                a.keys, loadS, loadCpuS));
        Thread.sleep(1000);
        List<String> results = new ArrayList<>();
        JsonNode last = null;
        for (int n = 0; n < 2; n++) {
            last = triggerCheckpoint(rest, jobPath);
            String line = "{\"event\":\"checkpoint\",\"id\":" + last.path("id").asLong()
                    + ",\"duration_ms\":" + last.path("end_to_end_duration").asLong()
                    + ",\"checkpointed_size_bytes\":" + last.path("checkpointed_size").asLong()
                    + ",\"state_size_bytes\":" + last.path("state_size").asLong()
                    + ",\"external_path\":\"" + last.path("external_path").asText() + "\"}";
            emit(line);
            results.add(line);
            if (n == 0) Thread.sleep(3000); // some trickle updates between the two checkpoints
        }
        emit(String.format(Locale.ROOT,
                "{\"workload\":\"state\",\"engine\":\"flink\",\"keys\":%d,\"value_bytes\":%d,\"backend\":\"%s\","
                        + "\"incremental\":%b,\"load_s\":%.3f,\"load_cpu_s\":%.3f,\"checkpoints\":%s}",
                a.keys, a.valueBytes, a.backend, a.incremental, loadS, loadCpuS, results));
        emit("{\"event\":\"ready_to_kill\",\"checkpoint\":\"" + last.path("external_path").asText() + "\"}");
        job.getJobExecutionResult().get();
    }

    /** Triggers a checkpoint through the REST API and returns its details once it completed. */
    static JsonNode triggerCheckpoint(Rest rest, String jobPath) throws Exception {
        JsonNode trig = rest.post(jobPath + "/checkpoints", "{\"checkpointType\":\"CONFIGURED\"}");
        String requestId = trig.path("request-id").asText();
        while (true) {
            Thread.sleep(100);
            JsonNode st = rest.get(jobPath + "/checkpoints/" + requestId);
            if ("COMPLETED".equals(st.path("status").path("id").asText())) {
                JsonNode op = st.path("operation");
                if (op.has("failure-cause")) throw new IllegalStateException("checkpoint failed: " + op);
                long id = op.path("checkpointId").asLong();
                for (int i = 0; i < 100; i++) {
                    JsonNode d = rest.get(jobPath + "/checkpoints/details/" + id);
                    if ("COMPLETED".equals(d.path("status").asText())) return d;
                    Thread.sleep(100);
                }
                throw new IllegalStateException("no details for checkpoint " + id);
            }
        }
    }
}
