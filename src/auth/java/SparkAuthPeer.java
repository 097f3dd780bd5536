// The real Spark client side of src/auth/, for src/auth/java_peer.rs: Spark's own AuthEngine,
// CtrTransportCipher (commons-crypto streams), GcmTransportCipher (its Netty handlers, with
// Spark's frame encoder and decoders around them) and SparkSaslClient (the JDK's DIGEST-MD5),
// from the pyspark jars. Run with `java -cp '<pyspark>/jars/*' SparkAuthPeer.java <mode> ...`.
//
// It lives in Spark's package because AuthEngine and its cipher accessors are package-private.
// Line protocol on stdin/stdout, one "<TAG> <hex>" per line; any failure prints "ERR <text>"
// and exits 2, so the Rust side can assert on the exact Java text.
package org.apache.spark.network.crypto;

import java.io.*;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.Map;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.FileRegion;
import io.netty.channel.embedded.EmbeddedChannel;
import org.apache.spark.network.buffer.NioManagedBuffer;
import org.apache.spark.network.protocol.ChunkFetchRequest;
import org.apache.spark.network.protocol.ChunkFetchSuccess;
import org.apache.spark.network.protocol.MessageDecoder;
import org.apache.spark.network.protocol.MessageEncoder;
import org.apache.spark.network.protocol.RpcRequest;
import org.apache.spark.network.protocol.RpcResponse;
import org.apache.spark.network.protocol.StreamChunkId;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.sasl.SparkSaslClient;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;
import org.apache.spark.network.util.TransportFrameDecoder;

public class SparkAuthPeer {
  static final HexFormat HEX = HexFormat.of();
  static final BufferedReader IN = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));

  public static void main(String[] args) {
    try {
      switch (args[0]) {
        case "engine" -> engine(args[1], args[2], args[3], Integer.parseInt(args[4]), Integer.parseInt(args[5]));
        case "gcm" -> gcm(args[1], args[2], args[3], args[4]);
        case "ctr" -> ctr(HEX.parseHex(args[1]), HEX.parseHex(args[2]), Integer.parseInt(args[3]));
        case "sasl" -> sasl(args[1], args[2], Boolean.parseBoolean(args[3]));
        default -> throw new IllegalArgumentException("unknown mode " + args[0]);
      }
    } catch (Throwable e) {
      StringBuilder text = new StringBuilder(e.toString());
      for (Throwable c = e.getCause(); c != null; c = c.getCause()) text.append(" | caused by ").append(c);
      System.out.println("ERR " + text.toString().replace('\n', ' '));
      System.out.flush();
      System.exit(2);
    }
  }

  static void send(String tag, byte[] bytes) {
    System.out.println(tag + " " + HEX.formatHex(bytes));
    System.out.flush();
  }

  static byte[] expect(String tag) throws IOException {
    String line = IN.readLine();
    if (line == null || !line.startsWith(tag + " ")) throw new IOException("expected " + tag + ", got " + line);
    return HEX.parseHex(line.substring(tag.length() + 1));
  }

  /** The pattern both sides encrypt: byte i = (i * 31) ^ (i >> 8). */
  static byte[] pattern(int n) {
    byte[] b = new byte[n];
    for (int i = 0; i < n; i++) b[i] = (byte) ((i * 31) ^ (i >> 8));
    return b;
  }

  static void engine(String version, String secret, String appId, int upLen, int downLen) throws Exception {
    TransportConf conf = new TransportConf("shuffle",
        new MapConfigProvider(Map.of("spark.network.crypto.authEngineVersion", version)));
    try (AuthEngine client = new AuthEngine(appId, secret, conf)) {
      AuthMessage challenge = client.challenge();
      send("C", encode(challenge));
      AuthMessage response = AuthMessage.decodeMessage(ByteBuffer.wrap(expect("S")));
      client.deriveSessionCipher(challenge, response);
      CtrTransportCipher cipher = (CtrTransportCipher) client.sessionCipher();
      send("KEYID", HEX.parseHex(cipher.getKeyId()));

      // Client -> server: written in pieces of 1, 2, 3, ... bytes, each flushed, as separate
      // Netty writes would be; the keystream must run on across them.
      ByteArrayOutputStream sink = new ByteArrayOutputStream();
      try (OutputStream out = cipher.createOutputStream(Channels.newChannel(sink))) {
        byte[] plain = pattern(upLen);
        for (int off = 0, n = 1; off < plain.length; off += n, n++) {
          out.write(plain, off, Math.min(n, plain.length - off));
          out.flush();
        }
      }
      send("CT", sink.toByteArray());

      // Server -> client: decrypted with reads of varying sizes.
      byte[] sealed = expect("SCT");
      ByteArrayOutputStream plain = new ByteArrayOutputStream();
      try (InputStream in = cipher.createInputStream(Channels.newChannel(new ByteArrayInputStream(sealed)))) {
        byte[] buf = new byte[4099];
        for (int n, want = 1; (n = in.read(buf, 0, want)) > 0; want = want % 4099 + 7) plain.write(buf, 0, n);
      }
      send("PT", plain.toByteArray());
    }
  }

  /** The pattern of the i-th message: the common pattern xor i. */
  static byte[] pattern(int n, int seed) {
    byte[] b = pattern(n);
    for (int i = 0; i < n; i++) b[i] ^= (byte) seed;
    return b;
  }

  /**
   * AuthEngine with spark.network.crypto.cipher=AES/GCM/NoPadding, then its GcmTransportCipher
   * both ways, in the client's own pipeline order (AuthEngine.sessionCipher().addToChannel puts
   * the cipher first; TransportContext puts MessageEncoder, TransportFrameDecoder and
   * MessageDecoder after it).
   *
   * Client -> server: one RpcRequest per length in upLens (body = pattern(len, i)), each
   * followed by ChunkFetchRequest(i, i), through MessageEncoder and the EncryptionHandler: one
   * GCM message per Netty write, the RpcRequest as a MessageWithHeader (FileRegion), the
   * ChunkFetchRequest as a ByteBuf. The sealed regions are drained through a channel that takes
   * at most a few hundred bytes per write, as a slow socket would. Sent as "CT".
   *
   * Server -> client: "SCT" is fed to the DecryptionHandler in pieces of 1, 2, 3, ... bytes; each
   * message Spark decodes is printed as "MSG <kind>:<id>:<chunk> <body hex>", then "END".
   */
  static void gcm(String version, String secret, String appId, String upLens) throws Exception {
    TransportConf conf = new TransportConf("shuffle", new MapConfigProvider(Map.of(
        "spark.network.crypto.authEngineVersion", version,
        "spark.network.crypto.cipher", "AES/GCM/NoPadding")));
    try (AuthEngine client = new AuthEngine(appId, secret, conf)) {
      AuthMessage challenge = client.challenge();
      send("C", encode(challenge));
      AuthMessage response = AuthMessage.decodeMessage(ByteBuffer.wrap(expect("S")));
      client.deriveSessionCipher(challenge, response);
      GcmTransportCipher cipher = (GcmTransportCipher) client.sessionCipher();
      send("KEYID", HEX.parseHex(cipher.getKeyId()));

      EmbeddedChannel out = new EmbeddedChannel(cipher.getEncryptionHandler(), MessageEncoder.INSTANCE);
      ByteArrayOutputStream sink = new ByteArrayOutputStream();
      String[] lens = upLens.split(",");
      for (int i = 0; i < lens.length; i++) {
        out.writeOutbound(new RpcRequest(i, new NioManagedBuffer(ByteBuffer.wrap(pattern(Integer.parseInt(lens[i]), i)))));
        out.writeOutbound(new ChunkFetchRequest(new StreamChunkId(i, i)));
      }
      int step = 1;
      for (Object sealed; (sealed = out.readOutbound()) != null; ) {
        FileRegion region = (FileRegion) sealed;
        int cap = 100 + 37 * step++;
        var slow = new java.nio.channels.WritableByteChannel() {
          public int write(ByteBuffer src) {
            int n = Math.min(cap, src.remaining());
            byte[] b = new byte[n];
            src.get(b);
            sink.write(b, 0, n);
            return n;
          }
          public boolean isOpen() { return true; }
          public void close() {}
        };
        while (region.transferred() < region.count()) region.transferTo(slow, region.transferred());
        region.release();
      }
      send("CT", sink.toByteArray());

      byte[] sealed = expect("SCT");
      EmbeddedChannel in = new EmbeddedChannel(
          cipher.getDecryptionHandler(), new TransportFrameDecoder(), MessageDecoder.INSTANCE);
      for (int off = 0, n = 1; off < sealed.length; off += n, n++) {
        in.writeInbound(Unpooled.wrappedBuffer(sealed, off, Math.min(n, sealed.length - off)));
      }
      for (Object m; (m = in.readInbound()) != null; ) {
        if (m instanceof RpcResponse r) {
          send("MSG rpc:" + r.requestId + ":0", bytes(r.body().nioByteBuffer()));
        } else if (m instanceof ChunkFetchSuccess c) {
          send("MSG chunk:" + c.streamChunkId.streamId() + ":" + c.streamChunkId.chunkIndex(),
              bytes(c.body().nioByteBuffer()));
        } else {
          throw new IOException("unexpected message " + m);
        }
        ((org.apache.spark.network.protocol.Message) m).body().release();
      }
      System.out.println("END");
      System.out.flush();
    }
  }

  static byte[] bytes(ByteBuffer b) {
    byte[] out = new byte[b.remaining()];
    b.get(out);
    return out;
  }

  /** Spark's CtrTransportCipher with a chosen key and IV: the keystream across a counter carry. */
  static void ctr(byte[] key, byte[] iv, int len) throws Exception {
    CtrTransportCipher cipher = new CtrTransportCipher(new java.util.Properties(),
        new javax.crypto.spec.SecretKeySpec(key, "AES"), new byte[16], iv);
    ByteArrayOutputStream sink = new ByteArrayOutputStream();
    try (OutputStream out = cipher.createOutputStream(Channels.newChannel(sink))) {
      out.write(pattern(len));
    }
    send("CT", sink.toByteArray());
  }

  static byte[] encode(AuthMessage m) {
    ByteBuf buf = Unpooled.buffer(m.encodedLength());
    m.encode(buf);
    byte[] out = new byte[buf.readableBytes()];
    buf.readBytes(out);
    return out;
  }

  /** Spark's own SaslMessage (package-private, so by reflection) with the token appended. */
  static byte[] saslMessage(String appId, byte[] token) throws Exception {
    var ctor = Class.forName("org.apache.spark.network.sasl.SaslMessage").getDeclaredConstructor(String.class, byte[].class);
    ctor.setAccessible(true);
    var msg = (org.apache.spark.network.protocol.AbstractMessage) ctor.newInstance(appId, token);
    ByteBuf buf = Unpooled.buffer();
    msg.encode(buf);
    buf.writeBytes(msg.body().nioByteBuffer());
    byte[] out = new byte[buf.readableBytes()];
    buf.readBytes(out);
    return out;
  }

  static void sasl(String secret, String appId, boolean encrypt) throws Exception {
    SecretKeyHolder keys = new SecretKeyHolder() {
      public String getSaslUser(String id) { return "sparkSaslUser"; }
      public String getSecretKey(String id) { return secret; }
    };
    SparkSaslClient client = new SparkSaslClient(appId, keys, encrypt);
    // The first token as SaslClientBootstrap frames it: SaslMessage.encode, then the body.
    send("M", saslMessage(appId, client.firstToken()));
    while (!client.isComplete()) {
      byte[] reply = client.response(expect("T"));
      send("T", reply == null ? new byte[0] : reply);
    }
    System.out.println("DONE");
    System.out.flush();
  }
}
