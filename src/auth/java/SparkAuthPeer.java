// The real Spark client side of src/auth/, for src/auth/java_peer.rs: Spark's own AuthEngine,
// CtrTransportCipher (commons-crypto streams) and SparkSaslClient (the JDK's DIGEST-MD5), from
// the pyspark jars. Run with `java -cp '<pyspark>/jars/*' SparkAuthPeer.java <mode> ...`.
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
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.sasl.SparkSaslClient;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public class SparkAuthPeer {
  static final HexFormat HEX = HexFormat.of();
  static final BufferedReader IN = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));

  public static void main(String[] args) {
    try {
      switch (args[0]) {
        case "engine" -> engine(args[1], args[2], args[3], Integer.parseInt(args[4]), Integer.parseInt(args[5]));
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
