// Command-line driver of Spark's real shuffle client (org.apache.spark.network.shuffle.ExternalBlockStoreClient).
//
// The pytest suite in tests/spark compiles this file with javac against the pyspark jars and runs it as a
// subprocess. It is the "real peer" of the compatibility tests: every byte it sends is produced by Spark's own
// client code, so a server that satisfies it satisfies real executors.
//
// Usage:
//   java -cp BUILD:JARS/* ShuffleClientDriver [global options] STEP [--then STEP]...
// Global options:
//   --host H (127.0.0.1)  --port P (required unless only filepath steps)  --app APPID
//   --conf key=value (repeatable; TransportConf module "shuffle")  --timeout-s N (60, per step)
//   --secret S (authenticate as --app with this secret, as an executor with spark.authenticate=true does;
//              spark.network.crypto.enabled=true in --conf selects the AuthEngine, else SASL)
// Steps (all steps of one invocation share ONE client, so its connection pool is reused across steps):
//   register   --exec E --dir D [--dir D]... [--subdirs 64] [--manager CLASS]
//   fetch      --exec E (--id X)... | --ids a,b,c  [--download DIR [--no-reread]] [--digest both|crc32|sha256]
//   local-dirs --exec E [--exec E]...                 (getHostLocalDirs; duplicates are passed through)
//   remove     --exec E (--id X)... | --ids a,b,c  [--raw [--for-app A]]
//   open       --exec E (--id X)... [--for-app A]     (a raw OpenBlocks; --for-app acts for another app)
//   diagnose   --exec E --shuffle S --map M --reduce R --checksum C --algorithm A [--raw]
//   filepath   --dir D [--dir D]... --subdirs N --name F [--name F]...   (ExecutorDiskUtils.getFilePath; no server)
//   load       --exec E --ids a,b,c --concurrency K [--count N] [--seconds T] [--download DIR] [--ids-per-call N]
//              (--ids-per-call splits the ids into consecutive calls of N ids, taken round robin; default: all
//              ids in every call)
//   connect    --count N [--seconds T]   (N new connections one after another, each with the client's handshake,
//              then closed: the cost of connecting, and of authenticating with --secret)
// --raw sends the same BlockTransferMessage over the client's own pooled TransportClient with sendRpcSync, so
// the server's RpcFailure text becomes visible (the high-level removeBlocks/diagnoseCorruption swallow it).
//
// Output: one JSON object per line on stdout (logs go to stderr). Every object has "op" and "step".
// fetch prints one line per block in callback order, then a summary line with "done": true.

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.zip.CRC32;

import org.apache.spark.network.buffer.FileSegmentManagedBuffer;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.client.TransportClient;
import org.apache.spark.network.shuffle.BlockFetchingListener;
import org.apache.spark.network.shuffle.DownloadFile;
import org.apache.spark.network.shuffle.DownloadFileManager;
import org.apache.spark.network.shuffle.DownloadFileWritableChannel;
import org.apache.spark.network.shuffle.ExecutorDiskUtils;
import org.apache.spark.network.shuffle.ExternalBlockStoreClient;
import org.apache.spark.network.shuffle.checksum.Cause;
import org.apache.spark.network.shuffle.protocol.BlockTransferMessage;
import org.apache.spark.network.shuffle.protocol.BlocksRemoved;
import org.apache.spark.network.shuffle.protocol.CorruptionCause;
import org.apache.spark.network.shuffle.protocol.DiagnoseCorruption;
import org.apache.spark.network.shuffle.protocol.ExecutorShuffleInfo;
import org.apache.spark.network.shuffle.protocol.OpenBlocks;
import org.apache.spark.network.shuffle.protocol.RemoveBlocks;
import org.apache.spark.network.shuffle.protocol.StreamHandle;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public final class ShuffleClientDriver {

  private static final Set<String> FLAGS = new HashSet<>(Arrays.asList("--raw", "--no-reread"));
  private static final String SORT_MANAGER = "org.apache.spark.shuffle.sort.SortShuffleManager";
  private static final PrintStream OUT = System.out;

  /** The real client, with access to its own pooled TransportClient for --raw RPCs. */
  static final class ProbeClient extends ExternalBlockStoreClient {
    ProbeClient(TransportConf conf, String secret) {
      super(conf, secret == null ? null : new FixedSecret(secret), secret != null, 5000);
    }

    TransportClient pooledClient(String host, int port) throws IOException, InterruptedException {
      return clientFactory.createClient(host, port);
    }

    /** A new connection that is not pooled; the factory runs the client's bootstraps (the auth handshake). */
    TransportClient freshClient(String host, int port) throws IOException, InterruptedException {
      return clientFactory.createUnmanagedClient(host, port);
    }
  }

  /** One secret for every app id, as an executor's SecurityManager hands out its app's secret. */
  static final class FixedSecret implements org.apache.spark.network.sasl.SecretKeyHolder {
    private final String secret;

    FixedSecret(String secret) {
      this.secret = secret;
    }

    @Override
    public String getSaslUser(String appId) {
      return "sparkSaslUser";
    }

    @Override
    public String getSecretKey(String appId) {
      return secret;
    }
  }

  /** Shared state of one invocation. */
  static final class Ctx {
    String host = "127.0.0.1";
    int port = -1;
    String app = "app-20260101000000-0000";
    long timeoutMs = 60_000;
    String secret;
    Map<String, String> conf = new LinkedHashMap<>();
    TransportConf transportConf;
    ProbeClient client;
    int step;
  }

  public static void main(String[] args) throws Exception {
    int code;
    try {
      code = run(args);
    } catch (UsageError e) {
      System.err.println("usage error: " + e.getMessage());
      code = 2;
    }
    OUT.flush();
    System.exit(code);
  }

  static final class UsageError extends RuntimeException {
    UsageError(String m) {
      super(m);
    }
  }

  static int run(String[] args) throws Exception {
    Ctx ctx = new Ctx();
    ctx.conf.put("spark.shuffle.io.maxRetries", "3");
    ctx.conf.put("spark.shuffle.io.retryWait", "1s");
    ctx.conf.put("spark.shuffle.useOldFetchProtocol", "false");
    int i = 0;
    while (i < args.length && args[i].startsWith("--")) {
      String k = args[i];
      if (i + 1 >= args.length) throw new UsageError("missing value for " + k);
      String v = args[i + 1];
      switch (k) {
        case "--host": ctx.host = v; break;
        case "--port": ctx.port = Integer.parseInt(v); break;
        case "--app": ctx.app = v; break;
        case "--secret": ctx.secret = v; break;
        case "--timeout-s": ctx.timeoutMs = (long) (Double.parseDouble(v) * 1000); break;
        case "--conf": {
          int eq = v.indexOf('=');
          if (eq <= 0) throw new UsageError("--conf wants key=value: " + v);
          ctx.conf.put(v.substring(0, eq), v.substring(eq + 1));
          break;
        }
        default: throw new UsageError("unknown global option " + k);
      }
      i += 2;
    }
    List<List<String>> steps = new ArrayList<>();
    List<String> cur = new ArrayList<>();
    for (; i < args.length; i++) {
      if (args[i].equals("--then")) {
        steps.add(cur);
        cur = new ArrayList<>();
      } else {
        cur.add(args[i]);
      }
    }
    steps.add(cur);
    for (List<String> s : steps) {
      if (s.isEmpty()) throw new UsageError("empty step");
    }
    ctx.transportConf = new TransportConf("shuffle", new MapConfigProvider(ctx.conf));
    ctx.client = new ProbeClient(ctx.transportConf, ctx.secret);
    ctx.client.init(ctx.app);
    try {
      for (List<String> s : steps) {
        Map<String, List<String>> opts = parseOpts(s.subList(1, s.size()));
        runStep(ctx, s.get(0), opts);
        ctx.step++;
      }
    } finally {
      ctx.client.close();
    }
    return 0;
  }

  static Map<String, List<String>> parseOpts(List<String> a) {
    Map<String, List<String>> m = new HashMap<>();
    for (int i = 0; i < a.size(); i++) {
      String k = a.get(i);
      if (!k.startsWith("--")) throw new UsageError("expected an option, got " + k);
      if (FLAGS.contains(k)) {
        m.computeIfAbsent(k, x -> new ArrayList<>()).add("true");
        continue;
      }
      if (i + 1 >= a.size()) throw new UsageError("missing value for " + k);
      m.computeIfAbsent(k, x -> new ArrayList<>()).add(a.get(++i));
    }
    return m;
  }

  static String one(Map<String, List<String>> o, String k, String dflt) {
    List<String> v = o.get(k);
    if (v == null || v.isEmpty()) {
      if (dflt == null) throw new UsageError("missing " + k);
      return dflt;
    }
    return v.get(v.size() - 1);
  }

  static List<String> many(Map<String, List<String>> o, String k) {
    return o.getOrDefault(k, Collections.emptyList());
  }

  /** Block ids from repeated --id (any text, even empty) plus comma-separated --ids. */
  static String[] ids(Map<String, List<String>> o) {
    List<String> r = new ArrayList<>(many(o, "--id"));
    for (String s : many(o, "--ids")) {
      if (!s.isEmpty()) r.addAll(Arrays.asList(s.split(",", -1)));
    }
    if (r.isEmpty()) throw new UsageError("no block ids");
    return r.toArray(new String[0]);
  }

  static void requirePort(Ctx ctx) {
    if (ctx.port <= 0) throw new UsageError("--port is required");
  }

  static void runStep(Ctx ctx, String name, Map<String, List<String>> o) throws Exception {
    switch (name) {
      case "register": register(ctx, o); break;
      case "fetch": fetch(ctx, o); break;
      case "local-dirs": localDirs(ctx, o); break;
      case "remove": remove(ctx, o); break;
      case "diagnose": diagnose(ctx, o); break;
      case "open": open(ctx, o); break;
      case "filepath": filepath(ctx, o); break;
      case "load": load(ctx, o); break;
      case "connect": connect(ctx, o); break;
      default: throw new UsageError("unknown step " + name);
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // Steps

  static void register(Ctx ctx, Map<String, List<String>> o) {
    requirePort(ctx);
    String exec = one(o, "--exec", null);
    String[] dirs = many(o, "--dir").toArray(new String[0]);
    int subdirs = Integer.parseInt(one(o, "--subdirs", "64"));
    String manager = one(o, "--manager", SORT_MANAGER);
    Json j = base(ctx, "register").put("exec", exec);
    long t0 = System.nanoTime();
    try {
      ctx.client.registerWithShuffleServer(ctx.host, ctx.port, exec,
          new ExecutorShuffleInfo(dirs, subdirs, manager));
      j.put("ok", true);
    } catch (Throwable t) {
      j.put("ok", false);
      putError(j, t);
    }
    j.put("ms", (System.nanoTime() - t0) / 1e6);
    emit(j);
  }

  static void fetch(Ctx ctx, Map<String, List<String>> o) throws InterruptedException {
    requirePort(ctx);
    String exec = one(o, "--exec", null);
    String[] ids = ids(o);
    String dl = one(o, "--download", "");
    boolean reread = !o.containsKey("--no-reread");
    String digest = one(o, "--digest", "both");
    TrackingDownloadManager mgr = dl.isEmpty() ? null : new TrackingDownloadManager(Paths.get(dl), ctx.transportConf);
    Set<String> pending = ConcurrentHashMap.newKeySet();
    pending.addAll(Arrays.asList(ids));
    CountDownLatch latch = new CountDownLatch(pending.size());
    List<Json> results = Collections.synchronizedList(new ArrayList<>());
    final int step = ctx.step;
    long t0 = System.nanoTime();
    BlockFetchingListener listener = new BlockFetchingListener() {
      @Override
      public void onBlockFetchSuccess(String blockId, ManagedBuffer data) {
        Json j = new Json().put("op", "fetch").put("step", step).put("block", blockId).put("ok", true);
        try {
          j.put("len", data.size());
          j.put("buffer", data.getClass().getSimpleName());
          if (data instanceof FileSegmentManagedBuffer) {
            File f = ((FileSegmentManagedBuffer) data).getFile();
            j.put("temp_path", f.getAbsolutePath());
            j.put("temp_exists", f.exists());
            j.put("temp_size", f.length());
            TrackedFile tf = mgr == null ? null : mgr.byPath(f.getAbsolutePath());
            if (tf != null) {
              j.put("streamed_bytes", tf.digest.count);
              tf.digest.putInto(j, "streamed_", digest);
            }
          }
          if (mgr == null || reread) {
            Digest d = new Digest();
            try (InputStream in = data.createInputStream()) {
              d.update(in);
            }
            d.putInto(j, "", digest);
          }
        } catch (Throwable t) {
          j.put("ok", false).put("digest_failed", true);
          putError(j, t);
        }
        finish(blockId, j);
      }

      @Override
      public void onBlockFetchFailure(String blockId, Throwable t) {
        Json j = new Json().put("op", "fetch").put("step", step).put("block", blockId).put("ok", false);
        putError(j, t);
        finish(blockId, j);
      }

      private void finish(String blockId, Json j) {
        j.put("ms", (System.nanoTime() - t0) / 1e6);
        if (pending.remove(blockId)) {
          results.add(j);
          latch.countDown();
        } else {
          j.put("duplicate_callback", true);
          results.add(j);
        }
      }
    };
    ctx.client.fetchBlocks(ctx.host, ctx.port, exec, ids, listener, mgr);
    boolean done = latch.await(ctx.timeoutMs, TimeUnit.MILLISECONDS);
    List<Json> snapshot;
    synchronized (results) {
      snapshot = new ArrayList<>(results);
    }
    int okCount = 0;
    List<String> order = new ArrayList<>();
    for (Json j : snapshot) {
      emit(j);
      order.add((String) j.get("block"));
      if (Boolean.TRUE.equals(j.get("ok"))) okCount++;
    }
    Json s = base(ctx, "fetch").put("done", true).put("timeout", !done)
        .put("ok_count", okCount).put("fail_count", snapshot.size() - okCount)
        .put("order", order).put("missing", new ArrayList<>(pending))
        .put("ms", (System.nanoTime() - t0) / 1e6);
    if (mgr != null) {
      // registerTempFileToClean returned true, so the client left every successful download to us.
      int created = mgr.created.size();
      int remaining = 0;
      for (TrackedFile tf : mgr.created) {
        tf.delete();
        if (tf.file.exists()) remaining++;
      }
      s.put("temp_files_created", created).put("temp_files_remaining", remaining);
    }
    emit(s);
  }

  static void localDirs(Ctx ctx, Map<String, List<String>> o) {
    requirePort(ctx);
    String[] execs = many(o, "--exec").toArray(new String[0]);
    Json j = base(ctx, "local_dirs");
    CompletableFuture<Map<String, String[]>> f = new CompletableFuture<>();
    try {
      ctx.client.getHostLocalDirs(ctx.host, ctx.port, execs, f);
      Map<String, String[]> m = f.get(ctx.timeoutMs, TimeUnit.MILLISECONDS);
      Map<String, Object> dirs = new LinkedHashMap<>();
      for (Map.Entry<String, String[]> e : m.entrySet()) dirs.put(e.getKey(), Arrays.asList(e.getValue()));
      j.put("ok", true).put("dirs", dirs);
    } catch (ExecutionException e) {
      j.put("ok", false);
      putError(j, e.getCause());
    } catch (Throwable t) {
      j.put("ok", false);
      putError(j, t);
    }
    emit(j);
  }

  static void remove(Ctx ctx, Map<String, List<String>> o) {
    requirePort(ctx);
    String exec = one(o, "--exec", null);
    String[] ids = ids(o);
    Json j = base(ctx, "remove").put("exec", exec).put("raw", o.containsKey("--raw"));
    try {
      if (o.containsKey("--raw")) {
        TransportClient tc = ctx.client.pooledClient(ctx.host, ctx.port);
        String app = one(o, "--for-app", ctx.app);
        ByteBuffer resp = tc.sendRpcSync(new RemoveBlocks(app, exec, ids).toByteBuffer(), ctx.timeoutMs);
        BlockTransferMessage m = BlockTransferMessage.Decoder.fromByteBuffer(resp);
        j.put("ok", true).put("removed", ((BlocksRemoved) m).numRemovedBlocks);
      } else {
        Future<Integer> f = ctx.client.removeBlocks(ctx.host, ctx.port, exec, ids);
        j.put("ok", true).put("removed", f.get(ctx.timeoutMs, TimeUnit.MILLISECONDS));
      }
    } catch (Throwable t) {
      j.put("ok", false);
      putError(j, t instanceof ExecutionException && t.getCause() != null ? t.getCause() : t);
    }
    emit(j);
  }

  /** A raw OpenBlocks over the pooled (authenticated) connection, for --for-app (default: --app). */
  static void open(Ctx ctx, Map<String, List<String>> o) {
    requirePort(ctx);
    String exec = one(o, "--exec", null);
    String app = one(o, "--for-app", ctx.app);
    Json j = base(ctx, "open").put("exec", exec).put("for_app", app);
    try {
      TransportClient tc = ctx.client.pooledClient(ctx.host, ctx.port);
      OpenBlocks msg = new OpenBlocks(app, exec, ids(o));
      StreamHandle h = (StreamHandle) BlockTransferMessage.Decoder.fromByteBuffer(
          tc.sendRpcSync(msg.toByteBuffer(), ctx.timeoutMs));
      j.put("ok", true).put("chunks", h.numChunks);
    } catch (Throwable t) {
      j.put("ok", false);
      putError(j, t);
    }
    emit(j);
  }

  static void diagnose(Ctx ctx, Map<String, List<String>> o) {
    requirePort(ctx);
    String exec = one(o, "--exec", null);
    int shuffle = Integer.parseInt(one(o, "--shuffle", null));
    long map = Long.parseLong(one(o, "--map", null));
    int reduce = Integer.parseInt(one(o, "--reduce", null));
    long checksum = Long.parseLong(one(o, "--checksum", null));
    String alg = one(o, "--algorithm", null);
    Json j = base(ctx, "diagnose").put("exec", exec).put("raw", o.containsKey("--raw"));
    try {
      if (o.containsKey("--raw")) {
        TransportClient tc = ctx.client.pooledClient(ctx.host, ctx.port);
        DiagnoseCorruption msg = new DiagnoseCorruption(ctx.app, exec, shuffle, map, reduce, checksum, alg);
        ByteBuffer resp = tc.sendRpcSync(msg.toByteBuffer(), ctx.timeoutMs);
        CorruptionCause c = (CorruptionCause) BlockTransferMessage.Decoder.fromByteBuffer(resp);
        j.put("ok", true).put("cause", c.cause.name());
      } else {
        Cause c = ctx.client.diagnoseCorruption(ctx.host, ctx.port, exec, shuffle, map, reduce, checksum, alg);
        j.put("ok", true).put("cause", c.name());
      }
    } catch (Throwable t) {
      j.put("ok", false);
      putError(j, t);
    }
    emit(j);
  }

  static void filepath(Ctx ctx, Map<String, List<String>> o) {
    String[] dirs = many(o, "--dir").toArray(new String[0]);
    int subdirs = Integer.parseInt(one(o, "--subdirs", "64"));
    for (String name : many(o, "--name")) {
      emit(base(ctx, "filepath").put("name", name).put("hash", name.hashCode())
          .put("path", ExecutorDiskUtils.getFilePath(dirs, subdirs, name)));
    }
  }

  /** Repeated fetches of the same ids with K calls in flight; one JSON line of throughput and latency. */
  static void connect(Ctx ctx, Map<String, List<String>> o) throws Exception {
    requirePort(ctx);
    long count = Long.parseLong(one(o, "--count", "100"));
    double seconds = Double.parseDouble(one(o, "--seconds", "30"));
    List<Double> lat = new ArrayList<>();
    long start = System.nanoTime();
    long deadline = start + (long) (seconds * 1e9);
    while (lat.size() < count && System.nanoTime() < deadline) {
      long t = System.nanoTime();
      TransportClient c = ctx.client.freshClient(ctx.host, ctx.port);
      lat.add((System.nanoTime() - t) / 1e6);
      c.close();
    }
    double secs = (System.nanoTime() - start) / 1e9;
    Collections.sort(lat);
    emit(base(ctx, "connect").put("connections", lat.size()).put("seconds", secs)
        .put("p50_ms", pct(lat, 0.50)).put("p99_ms", pct(lat, 0.99)));
  }

  static void load(Ctx ctx, Map<String, List<String>> o) throws InterruptedException {
    requirePort(ctx);
    String exec = one(o, "--exec", null);
    String[] all = ids(o);
    int perCall = Integer.parseInt(one(o, "--ids-per-call", String.valueOf(all.length)));
    if (perCall <= 0) throw new UsageError("--ids-per-call must be positive");
    List<String[]> calls = new ArrayList<>();
    for (int i = 0; i < all.length; i += perCall) {
      calls.add(Arrays.copyOfRange(all, i, Math.min(all.length, i + perCall)));
    }
    int k = Integer.parseInt(one(o, "--concurrency", "1"));
    long count = Long.parseLong(one(o, "--count", "1000"));
    double seconds = Double.parseDouble(one(o, "--seconds", "30"));
    String dl = one(o, "--download", "");
    DownloadFileManager mgr = dl.isEmpty() ? null : new DeletingDownloadManager(Paths.get(dl), ctx.transportConf);
    Semaphore permits = new Semaphore(k);
    AtomicLong blocks = new AtomicLong();
    AtomicLong bytes = new AtomicLong();
    AtomicLong failures = new AtomicLong();
    AtomicLong completedCalls = new AtomicLong();
    List<Double> latencies = Collections.synchronizedList(new ArrayList<>());
    Map<String, Long> firstLen = new ConcurrentHashMap<>();
    AtomicLong lenMismatches = new AtomicLong();
    String[] firstError = new String[1];
    long start = System.nanoTime();
    long deadline = start + (long) (seconds * 1e9);
    long issued = 0;
    while (issued < count && System.nanoTime() < deadline) {
      if (!permits.tryAcquire(100, TimeUnit.MILLISECONDS)) continue;
      final String[] ids = calls.get((int) (issued % calls.size()));
      issued++;
      final long callStart = System.nanoTime();
      final AtomicLong left = new AtomicLong(ids.length);
      BlockFetchingListener l = new BlockFetchingListener() {
        @Override
        public void onBlockFetchSuccess(String blockId, ManagedBuffer data) {
          long n = data.size();
          Long prev = firstLen.putIfAbsent(blockId, n);
          if (prev != null && prev != n) lenMismatches.incrementAndGet();
          blocks.incrementAndGet();
          bytes.addAndGet(n);
          done();
        }

        @Override
        public void onBlockFetchFailure(String blockId, Throwable t) {
          failures.incrementAndGet();
          synchronized (firstError) {
            if (firstError[0] == null) firstError[0] = t.getClass().getName() + ": " + firstLine(t.getMessage());
          }
          done();
        }

        private void done() {
          if (left.decrementAndGet() == 0) {
            latencies.add((System.nanoTime() - callStart) / 1e6);
            completedCalls.incrementAndGet();
            permits.release();
          }
        }
      };
      ctx.client.fetchBlocks(ctx.host, ctx.port, exec, ids, l, mgr);
    }
    // Drain: wait (bounded) until every in-flight call has finished.
    boolean drained = permits.tryAcquire(k, ctx.timeoutMs, TimeUnit.MILLISECONDS);
    double secs = (System.nanoTime() - start) / 1e9;
    List<Double> lat;
    synchronized (latencies) {
      lat = new ArrayList<>(latencies);
    }
    Collections.sort(lat);
    Json j = base(ctx, "load").put("concurrency", k).put("ids_per_call", calls.get(0).length)
        .put("calls_issued", issued).put("calls_completed", completedCalls.get()).put("drained", drained)
        .put("blocks", blocks.get()).put("bytes", bytes.get()).put("failures", failures.get())
        .put("len_mismatches", lenMismatches.get()).put("seconds", secs)
        .put("blocks_per_s", blocks.get() / secs).put("mb_per_s", bytes.get() / 1e6 / secs)
        .put("p50_ms", pct(lat, 0.50)).put("p99_ms", pct(lat, 0.99))
        .put("max_ms", lat.isEmpty() ? null : lat.get(lat.size() - 1))
        .put("stream_path", mgr != null).put("first_error", firstError[0]);
    emit(j);
  }

  static Double pct(List<Double> sorted, double p) {
    if (sorted.isEmpty()) return null;
    int idx = (int) Math.ceil(p * sorted.size()) - 1;
    return sorted.get(Math.max(0, Math.min(sorted.size() - 1, idx)));
  }

  // ------------------------------------------------------------------------------------------------------------
  // Download-to-file (StreamRequest path)

  /** Digest of everything written, computed while the bytes stream in. */
  static final class Digest {
    final CRC32 crc = new CRC32();
    final MessageDigest sha;
    long count;

    Digest() {
      try {
        sha = MessageDigest.getInstance("SHA-256");
      } catch (Exception e) {
        throw new IllegalStateException(e);
      }
    }

    synchronized void update(ByteBuffer b) {
      count += b.remaining();
      crc.update(b.duplicate());
      sha.update(b.duplicate());
    }

    void update(InputStream in) throws IOException {
      byte[] buf = new byte[1 << 16];
      int n;
      while ((n = in.read(buf)) > 0) {
        update(ByteBuffer.wrap(buf, 0, n));
      }
    }

    synchronized void putInto(Json j, String prefix, String which) {
      if (!which.equals("sha256")) j.put(prefix + "crc32", crc.getValue());
      if (!which.equals("crc32")) j.put(prefix + "sha256", hex(((MessageDigest) cloneSha()).digest()));
    }

    private Object cloneSha() {
      try {
        return sha.clone();
      } catch (CloneNotSupportedException e) {
        throw new IllegalStateException(e);
      }
    }
  }

  static final class TrackedFile implements DownloadFile {
    final File file;
    final TransportConf conf;
    final Digest digest = new Digest();

    TrackedFile(File file, TransportConf conf) {
      this.file = file;
      this.conf = conf;
    }

    @Override
    public boolean delete() {
      return file.delete();
    }

    @Override
    public DownloadFileWritableChannel openForWriting() throws IOException {
      FileChannel ch = new FileOutputStream(file).getChannel();
      return new DownloadFileWritableChannel() {
        @Override
        public ManagedBuffer closeAndRead() throws IOException {
          ch.close();
          return new FileSegmentManagedBuffer(conf, file, 0, file.length());
        }

        @Override
        public int write(ByteBuffer src) throws IOException {
          ByteBuffer dup = src.duplicate();
          int n = ch.write(src);
          dup.limit(dup.position() + n);
          digest.update(dup);
          return n;
        }

        @Override
        public boolean isOpen() {
          return ch.isOpen();
        }

        @Override
        public void close() throws IOException {
          ch.close();
        }
      };
    }

    @Override
    public String path() {
      return file.getAbsolutePath();
    }
  }

  /** Creates temp files in a given dir and keeps them (registerTempFileToClean=true) so the driver can inspect them. */
  static final class TrackingDownloadManager implements DownloadFileManager {
    final Path dir;
    final TransportConf conf;
    final List<TrackedFile> created = Collections.synchronizedList(new ArrayList<>());

    TrackingDownloadManager(Path dir, TransportConf conf) {
      this.dir = dir;
      this.conf = conf;
    }

    @Override
    public DownloadFile createTempFile(TransportConf transportConf) {
      try {
        TrackedFile t = new TrackedFile(Files.createTempFile(dir, "fetch-", ".tmp").toFile(), conf);
        created.add(t);
        return t;
      } catch (IOException e) {
        throw new RuntimeException(e);
      }
    }

    @Override
    public boolean registerTempFileToClean(DownloadFile file) {
      return true;
    }

    TrackedFile byPath(String p) {
      synchronized (created) {
        for (TrackedFile t : created) {
          if (t.file.getAbsolutePath().equals(p)) return t;
        }
      }
      return null;
    }
  }

  /** For load runs: the client deletes each temp file right after the success callback. */
  static final class DeletingDownloadManager implements DownloadFileManager {
    final Path dir;
    final TransportConf conf;

    DeletingDownloadManager(Path dir, TransportConf conf) {
      this.dir = dir;
      this.conf = conf;
    }

    @Override
    public DownloadFile createTempFile(TransportConf transportConf) {
      try {
        return new TrackedFile(Files.createTempFile(dir, "load-", ".tmp").toFile(), conf);
      } catch (IOException e) {
        throw new RuntimeException(e);
      }
    }

    @Override
    public boolean registerTempFileToClean(DownloadFile file) {
      return false;
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // Output

  static Json base(Ctx ctx, String op) {
    return new Json().put("op", op).put("step", ctx.step);
  }

  static void putError(Json j, Throwable t) {
    j.put("error_class", t.getClass().getName());
    j.put("error", firstLine(t.getMessage()));
    // The whole cause chain, outermost first. For an RpcFailure the innermost message is the server's text.
    List<Object> chain = new ArrayList<>();
    Throwable c = t;
    for (int i = 0; c != null && i < 8; i++, c = c.getCause()) {
      Map<String, Object> e = new LinkedHashMap<>();
      e.put("class", c.getClass().getName());
      e.put("message", firstLine(c.getMessage()));
      chain.add(e);
      if (c.getCause() == c) break;
    }
    j.put("chain", chain);
  }

  static String firstLine(String s) {
    if (s == null) return "";
    int nl = s.indexOf('\n');
    String r = nl < 0 ? s : s.substring(0, nl);
    return r.endsWith("\r") ? r.substring(0, r.length() - 1) : r;
  }

  static synchronized void emit(Json j) {
    OUT.println(j.toString());
    OUT.flush();
  }

  static String hex(byte[] b) {
    StringBuilder sb = new StringBuilder();
    for (byte x : b) sb.append(String.format("%02x", x & 0xff));
    return sb.toString();
  }

  /** Minimal ordered JSON object writer (no dependency on the Jackson version inside the jars). */
  static final class Json {
    final LinkedHashMap<String, Object> m = new LinkedHashMap<>();

    Json put(String k, Object v) {
      m.put(k, v);
      return this;
    }

    Object get(String k) {
      return m.get(k);
    }

    @Override
    public String toString() {
      StringBuilder sb = new StringBuilder();
      write(sb, m);
      return sb.toString();
    }

    static void write(StringBuilder sb, Object v) {
      if (v == null) {
        sb.append("null");
      } else if (v instanceof String) {
        str(sb, (String) v);
      } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long) {
        sb.append(v);
      } else if (v instanceof Double) {
        double d = (Double) v;
        sb.append(Double.isFinite(d) ? String.format("%.3f", d) : "null");
      } else if (v instanceof Map) {
        sb.append('{');
        boolean first = true;
        for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
          if (!first) sb.append(',');
          first = false;
          str(sb, String.valueOf(e.getKey()));
          sb.append(':');
          write(sb, e.getValue());
        }
        sb.append('}');
      } else if (v instanceof List) {
        sb.append('[');
        boolean first = true;
        for (Object x : (List<?>) v) {
          if (!first) sb.append(',');
          first = false;
          write(sb, x);
        }
        sb.append(']');
      } else if (v instanceof Json) {
        write(sb, ((Json) v).m);
      } else {
        str(sb, v.toString());
      }
    }

    static void str(StringBuilder sb, String s) {
      sb.append('"');
      for (int i = 0; i < s.length(); i++) {
        char c = s.charAt(i);
        switch (c) {
          case '"': sb.append("\\\""); break;
          case '\\': sb.append("\\\\"); break;
          case '\n': sb.append("\\n"); break;
          case '\r': sb.append("\\r"); break;
          case '\t': sb.append("\\t"); break;
          default:
            if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
            else sb.append(c);
        }
      }
      sb.append('"');
    }
  }
}
