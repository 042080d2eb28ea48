package weir.bench;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.connector.source.lib.util.IteratorSourceEnumerator;
import org.apache.flink.api.connector.source.lib.util.IteratorSourceReader;
import org.apache.flink.api.connector.source.lib.util.IteratorSourceSplit;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.core.io.SimpleVersionedSerializer;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;

/**
 * A bounded, replayable, checkpointed source of {@code count} generated records. Split s of P
 * yields the indices s, s+P, s+2P, ... below count, so every subtask advances through event
 * time at the same pace (watermarks stay close). A checkpoint stores only each split's next
 * index; records are a pure function of the index, so replay after restore is exact.
 */
public class StridedSource<T> implements Source<T, StridedSource.Split<T>, Collection<StridedSource.Split<T>>>,
        ResultTypeQueryable<T> {

    /** Makes record {@code index}; {@code ingestNanos} is the source's ingestion stamp (System.nanoTime). */
    public interface IndexFn<T> extends Serializable {
        T make(long index, long ingestNanos) throws Exception;
    }

    /** Refresh the ingestion stamp (and the progress counter) every this many records. */
    static final int STAMP_EVERY = 256;

    private final long count;
    private final IndexFn<T> fn;
    private final TypeInformation<T> type;

    public StridedSource(long count, IndexFn<T> fn, TypeInformation<T> type) {
        this.count = count;
        this.fn = fn;
        this.type = type;
    }

    @Override
    public Boundedness getBoundedness() {
        return Boundedness.BOUNDED;
    }

    @Override
    public TypeInformation<T> getProducedType() {
        return type;
    }

    @Override
    public SourceReader<T, Split<T>> createReader(SourceReaderContext ctx) {
        return new IteratorSourceReader<>(ctx);
    }

    @Override
    public SplitEnumerator<Split<T>, Collection<Split<T>>> createEnumerator(SplitEnumeratorContext<Split<T>> ctx) {
        int p = ctx.currentParallelism();
        List<Split<T>> splits = new ArrayList<>();
        for (int s = 0; s < p; s++) splits.add(new Split<>(fn, s, s, p, count));
        return new IteratorSourceEnumerator<>(ctx, splits);
    }

    @Override
    public SplitEnumerator<Split<T>, Collection<Split<T>>> restoreEnumerator(
            SplitEnumeratorContext<Split<T>> ctx, Collection<Split<T>> checkpoint) {
        return new IteratorSourceEnumerator<>(ctx, checkpoint);
    }

    @Override
    public SimpleVersionedSerializer<Split<T>> getSplitSerializer() {
        return new SplitSerializer<>(fn);
    }

    @Override
    public SimpleVersionedSerializer<Collection<Split<T>>> getEnumeratorCheckpointSerializer() {
        SplitSerializer<T> one = new SplitSerializer<>(fn);
        return new SimpleVersionedSerializer<>() {
            public int getVersion() {
                return 1;
            }

            public byte[] serialize(Collection<Split<T>> splits) throws IOException {
                ByteArrayOutputStream bos = new ByteArrayOutputStream();
                DataOutputStream out = new DataOutputStream(bos);
                out.writeInt(splits.size());
                for (Split<T> s : splits) one.write(out, s);
                out.flush();
                return bos.toByteArray();
            }

            public Collection<Split<T>> deserialize(int version, byte[] bytes) throws IOException {
                DataInputStream in = new DataInputStream(new ByteArrayInputStream(bytes));
                int n = in.readInt();
                List<Split<T>> splits = new ArrayList<>(n);
                for (int i = 0; i < n; i++) splits.add(one.read(in));
                return splits;
            }
        };
    }

    /** Indices next, next+stride, ... below end. */
    public static final class Split<T> implements IteratorSourceSplit<T, Iter<T>> {
        final IndexFn<T> fn;
        final int id;
        final long next;
        final long stride;
        final long end;

        Split(IndexFn<T> fn, int id, long next, long stride, long end) {
            this.fn = fn;
            this.id = id;
            this.next = next;
            this.stride = stride;
            this.end = end;
        }

        @Override
        public String splitId() {
            return Integer.toString(id);
        }

        @Override
        public Iter<T> getIterator() {
            return new Iter<>(this);
        }

        @Override
        public IteratorSourceSplit<T, Iter<T>> getUpdatedSplitForIterator(Iter<T> it) {
            return new Split<>(fn, id, it.next, stride, end);
        }

        @Override
        public String toString() {
            return "Split{" + id + ", next=" + next + ", stride=" + stride + ", end=" + end + "}";
        }
    }

    static final class Iter<T> implements Iterator<T> {
        final Split<T> split;
        long next;
        long stamp;
        int sinceStamp = STAMP_EVERY;

        Iter(Split<T> split) {
            this.split = split;
            this.next = split.next;
        }

        @Override
        public boolean hasNext() {
            return next < split.end;
        }

        @Override
        public T next() {
            if (next >= split.end) throw new NoSuchElementException();
            if (++sinceStamp >= STAMP_EVERY) {
                sinceStamp = 0;
                stamp = System.nanoTime();
                Stats.PRODUCED.add(STAMP_EVERY);
            }
            long i = next;
            next += split.stride;
            try {
                return split.fn.make(i, stamp);
            } catch (RuntimeException e) {
                throw e;
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        }
    }

    static final class SplitSerializer<T> implements SimpleVersionedSerializer<Split<T>> {
        final IndexFn<T> fn;

        SplitSerializer(IndexFn<T> fn) {
            this.fn = fn;
        }

        public int getVersion() {
            return 1;
        }

        void write(DataOutputStream out, Split<T> s) throws IOException {
            out.writeInt(s.id);
            out.writeLong(s.next);
            out.writeLong(s.stride);
            out.writeLong(s.end);
        }

        Split<T> read(DataInputStream in) throws IOException {
            return new Split<>(fn, in.readInt(), in.readLong(), in.readLong(), in.readLong());
        }

        public byte[] serialize(Split<T> s) throws IOException {
            ByteArrayOutputStream bos = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(bos);
            write(out, s);
            out.flush();
            return bos.toByteArray();
        }

        public Split<T> deserialize(int version, byte[] bytes) throws IOException {
            return read(new DataInputStream(new ByteArrayInputStream(bytes)));
        }
    }
}
