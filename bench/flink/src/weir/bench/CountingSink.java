package weir.bench;

import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;

import java.io.Serializable;

/**
 * A discarding sink that counts records and samples end-to-end latency: for every
 * {@code sampleEvery}-th record, System.nanoTime() minus the record's ingestion stamp.
 */
public class CountingSink<T> implements Sink<T> {

    /** The ingestion stamp (System.nanoTime at the source) carried by a record. */
    public interface IngestOf<T> extends Serializable {
        long ingestNanos(T record);
    }

    static final int MAX_SAMPLES = 1 << 20;

    private final IngestOf<T> ingestOf;
    private final int sampleEvery;

    public CountingSink(IngestOf<T> ingestOf, int sampleEvery) {
        this.ingestOf = ingestOf;
        this.sampleEvery = sampleEvery;
    }

    @Override
    public SinkWriter<T> createWriter(WriterInitContext context) {
        return new SinkWriter<>() {
            long count;
            long[] samples = new long[1024];
            int n;

            @Override
            public void write(T record, Context ctx) {
                if (count == 0) Stats.firstOutput();
                if (count % sampleEvery == 0 && n < MAX_SAMPLES) {
                    long lat = System.nanoTime() - ingestOf.ingestNanos(record);
                    if (n == samples.length) samples = java.util.Arrays.copyOf(samples, n * 2);
                    samples[n++] = lat;
                }
                count++;
                if ((count & 1023) == 0) Stats.OUTPUTS.add(1024);
            }

            @Override
            public void flush(boolean endOfInput) {}

            @Override
            public void close() {
                Stats.OUTPUTS.add(count & 1023);
                Stats.addSamples(samples, n);
            }
        };
    }
}
