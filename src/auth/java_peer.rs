//! Tests against the real Spark client side: Spark's AuthEngine, CtrTransportCipher
//! (commons-crypto), GcmTransportCipher (Tink, in Spark's own Netty handlers) and SparkSaslClient (the JDK's DIGEST-MD5), from the pyspark jars, driven as
//! a child `java` process (src/auth/java/SparkAuthPeer.java) over a hex line protocol.
//!
//! Where the jars come from: `$SPARK_JARS_DIR`, else `<repo>/.venv`'s pyspark, else the pyspark of
//! `python3`. Without Java or the jars these tests are skipped with a note, except under
//! `CI=true`, where they fail: a CI run must not pass without its real peer.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use super::*;

const PEER_CLASS: &str = "org.apache.spark.network.crypto.SparkAuthPeer";

fn pyspark_jars() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SPARK_JARS_DIR") {
        return Some(dir.into());
    }
    let venv_python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let python = if venv_python.exists() { venv_python } else { "python3".into() };
    let out = Command::new(python)
        .args(["-c", "import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), 'jars'))"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && dir.join("spark-network-common_2.13-4.3.0.jar").exists()).then_some(dir)
}

/// The compiled peer's classpath, built once per test process; `None` (skip) outside CI.
fn classpath() -> Option<&'static str> {
    static CP: OnceLock<Result<String, String>> = OnceLock::new();
    let cp = CP.get_or_init(|| {
        let jars = pyspark_jars().ok_or("no pyspark jars (set SPARK_JARS_DIR)")?;
        // A fresh directory per process; it is small and left for the OS to clean.
        let classes = std::env::temp_dir().join(format!("spark-auth-peer-{}", std::process::id()));
        let jar_cp = format!("{}/*", jars.display());
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/auth/java/SparkAuthPeer.java");
        let status = Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .args(["-cp", &jar_cp])
            .arg(src)
            .status()
            .map_err(|e| format!("javac: {e}"))?;
        if !status.success() {
            return Err(format!("javac failed: {status}"));
        }
        Ok(format!("{}:{jar_cp}", classes.display()))
    });
    match cp {
        Ok(cp) => Some(cp),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true and no Java peer: {why}"),
        Err(why) => {
            eprintln!("skipping the real-Java test: {why}");
            None
        }
    }
}

/// One running SparkAuthPeer.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(args: &[&str]) -> Option<Peer> {
        let mut child = Command::new("java")
            .args(["-cp", classpath()?, PEER_CLASS])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()) // Spark's log4j start-up noise; failures arrive as "ERR" lines.
            .spawn()
            .expect("java runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Some(Peer { child, stdin, stdout })
    }

    /// The next line, split into tag and bytes; an "ERR" line is returned as `Err(text)`.
    fn recv(&mut self, tag: &str) -> Result<Vec<u8>, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(err) = line.strip_prefix("ERR ") {
            return Err(err.to_string());
        }
        let hex =
            line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')).unwrap_or_else(|| panic!("want {tag}: {line}"));
        Ok(crate::auth::message::tests::unhex(hex))
    }

    fn send(&mut self, tag: &str, bytes: &[u8]) {
        writeln!(self.stdin, "{tag} {}", engine::hex(bytes)).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line as it came.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    fn rest(mut self) -> String {
        let mut s = String::new();
        let _ = self.stdout.read_to_string(&mut s);
        let _ = self.child.wait();
        s
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31) ^ (i >> 8)) as u8).collect()
}

/// Applies `cipher` in uneven pieces (1, 8, 27, ... bytes), as reads and writes would come.
fn apply_in_pieces(cipher: &mut CtrCipher, data: &mut [u8]) {
    let mut rest = data;
    let mut n = 1usize;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at_mut((n * n * n % 40_000 + 1).min(rest.len()));
        cipher.apply(piece);
        rest = tail;
        n += 1;
    }
}

/// The Spark client authenticates against our server; then 200 KB each way through both CTR
/// streams (past commons-crypto's internal buffer, pieces of every size on both sides).
fn engine_round_trip(version: EngineVersion, arg: &str) {
    const LEN: usize = 200_000;
    let app = "app-20261202124700-0007";
    let Some(mut java) = Peer::start(&["engine", arg, "s3cr3t-\u{e9}", app, &LEN.to_string(), &LEN.to_string()]) else {
        return;
    };
    let c = java.recv("C").unwrap();
    let Ok(Handshake::Auth(challenge)) = Handshake::decode(&mut &c[..]) else { panic!("not an AuthMessage") };
    assert_eq!(challenge.app_id, app);
    let out = respond(app, &Secret::new("s3cr3t-\u{e9}"), &challenge, version, &mut OsRandom).unwrap();
    java.send("S", &out.response.to_bytes());
    assert_eq!(engine::hex(&java.recv("KEYID").unwrap()), out.keys.key_id(), "Spark derived another key");

    let mut ciphers = out.keys.server_ciphers();
    let mut up = java.recv("CT").unwrap();
    apply_in_pieces(&mut ciphers.inbound, &mut up);
    assert!(up == pattern(LEN), "client->server plaintext differs");

    let mut down = pattern(LEN);
    apply_in_pieces(&mut ciphers.outbound, &mut down);
    java.send("SCT", &down);
    assert!(java.recv("PT").unwrap() == pattern(LEN), "Spark decrypted something else");
}

#[test]
fn spark_s_auth_engine_v1_client_authenticates_and_both_ctr_streams_match() {
    engine_round_trip(EngineVersion::V1, "1");
}

#[test]
fn spark_s_auth_engine_v2_client_authenticates_and_both_ctr_streams_match() {
    engine_round_trip(EngineVersion::V2, "2");
}

fn seeded(n: usize, seed: u8) -> Vec<u8> {
    pattern(n).into_iter().map(|b| b ^ seed).collect()
}

/// Bodies of the client's RpcRequests: empty, one byte, around one segment (frame header
/// included: 21 bytes), several segments.
const UP_BODIES: [usize; 6] = [0, 1, 32_731, 32_752, 100_000, 5];

/// The Spark client authenticates with AES/GCM/NoPadding; then Spark's own EncryptionHandler
/// (behind MessageEncoder) sends several frames, and our decryptor and frame decoder must see
/// exactly them; and frames we seal, grouped into GCM messages in several ways, must come out
/// of Spark's DecryptionHandler, TransportFrameDecoder and MessageDecoder as the same messages.
fn gcm_round_trip(version: EngineVersion, arg: &str) {
    use crate::protocol::{FrameCodec, Inbound, Message, StreamChunkId};
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    let app = "app-20261203072100-0042";
    let lens = UP_BODIES.map(|n| n.to_string()).join(",");
    let Some(mut java) = Peer::start(&["gcm", arg, "s3cr3t", app, &lens]) else { return };
    let c = java.recv("C").unwrap();
    let Ok(Handshake::Auth(challenge)) = Handshake::decode(&mut &c[..]) else { panic!("not an AuthMessage") };
    let out = respond(app, &Secret::new("s3cr3t"), &challenge, version, &mut OsRandom).unwrap();
    java.send("S", &out.response.to_bytes());
    assert_eq!(engine::hex(&java.recv("KEYID").unwrap()), out.keys.key_id(), "Spark derived another key");
    let mut ciphers = out.keys.server_gcm();

    // Client -> server. One GCM message per Netty write: walk the length prefixes.
    let up = java.recv("CT").unwrap();
    let (mut at, mut messages) = (0usize, 0);
    while at < up.len() {
        at += u64::from_be_bytes(up[at..at + 8].try_into().unwrap()) as usize;
        messages += 1;
    }
    assert_eq!((at, messages), (up.len(), 2 * UP_BODIES.len()), "one message per frame, lengths that add up");
    let mut plain = BytesMut::new();
    let (mut rest, mut n) = (&up[..], 1usize);
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at((n * n * n % 40_000 + 1).min(rest.len()));
        ciphers.inbound.feed(piece, &mut plain).unwrap();
        (rest, n) = (tail, n + 1);
    }
    assert!(ciphers.inbound.at_message_boundary());
    let mut codec = FrameCodec::new(1 << 24);
    for (i, len) in UP_BODIES.into_iter().enumerate() {
        let id = i as i64;
        let want = Message::RpcRequest { request_id: id, body: Bytes::from(seeded(len, i as u8)) };
        assert_eq!(codec.decode(&mut plain).unwrap(), Some(Inbound::Message(want)), "RpcRequest {i}");
        let want = Message::ChunkFetchRequest(StreamChunkId { stream_id: id, chunk_index: i as i32 });
        assert_eq!(codec.decode(&mut plain).unwrap(), Some(Inbound::Message(want)), "ChunkFetchRequest {i}");
    }
    assert!(plain.is_empty(), "{} bytes left over", plain.len());

    // Server -> client: frames of several sizes, in GCM messages cut anywhere (an empty one,
    // several frames in one, one frame split over two).
    let frames = [
        Message::RpcResponse { request_id: 7, body: Bytes::from(seeded(10, 1)) },
        Message::ChunkFetchSuccess {
            chunk: StreamChunkId { stream_id: 3, chunk_index: 1 },
            body: seeded(100_000, 2).into(),
        },
        Message::RpcResponse { request_id: 8, body: Bytes::new() },
        Message::ChunkFetchSuccess {
            chunk: StreamChunkId { stream_id: 4, chunk_index: 2 },
            body: seeded(32_731, 3).into(),
        },
        Message::RpcResponse { request_id: 9, body: Bytes::from(seeded(70_000, 4)) },
    ];
    let wire: Vec<BytesMut> = frames
        .iter()
        .map(|m| {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            b
        })
        .collect();
    let groups: [Vec<u8>; 6] = [
        wire[0].to_vec(),
        Vec::new(),
        [&wire[1][..], &wire[2][..]].concat(),
        wire[3][..10].to_vec(),
        [&wire[3][10..], &wire[4][..]].concat(),
        Vec::new(),
    ];
    let sealed: Vec<u8> = groups.iter().flat_map(|g| ciphers.outbound.seal(g).unwrap()).collect();
    java.send("SCT", &sealed);
    let expected: Vec<String> = frames
        .iter()
        .map(|m| match m {
            Message::RpcResponse { request_id, body } => format!("MSG rpc:{request_id}:0 {}", engine::hex(body)),
            Message::ChunkFetchSuccess { chunk, body } => {
                format!("MSG chunk:{}:{} {}", chunk.stream_id, chunk.chunk_index, engine::hex(body))
            }
            _ => unreachable!("only those two are sent"),
        })
        .collect();
    for (i, want) in expected.iter().enumerate() {
        let got = java.line();
        assert!(got == *want, "message {i} as Spark decoded it: {}", &got[..got.len().min(200)]);
    }
    assert_eq!(java.line(), "END");
}

#[test]
fn spark_s_gcm_cipher_v1_and_ours_exchange_several_messages_both_ways() {
    gcm_round_trip(EngineVersion::V1, "1");
}

#[test]
fn spark_s_gcm_cipher_v2_and_ours_exchange_several_messages_both_ways() {
    gcm_round_trip(EngineVersion::V2, "2");
}

#[test]
fn spark_s_gcm_decryptor_refuses_a_message_we_tampered_with() {
    let Some(mut java) = Peer::start(&["gcm", "1", "s", "app", "1"]) else { return };
    let c = java.recv("C").unwrap();
    let challenge = AuthMessage::decode(&mut &c[..]).unwrap();
    let out = respond("app", &Secret::new("s"), &challenge, EngineVersion::V1, &mut OsRandom).unwrap();
    java.send("S", &out.response.to_bytes());
    java.recv("KEYID").unwrap();
    java.recv("CT").unwrap();
    let mut frame = bytes::BytesMut::new();
    crate::protocol::Message::RpcResponse { request_id: 1, body: bytes::Bytes::from_static(b"hello") }
        .encode(&mut frame);
    let mut sealed = out.keys.server_gcm().outbound.seal(&frame).unwrap();
    let last = sealed.len() - 1;
    sealed[last] ^= 0x80;
    java.send("SCT", &sealed);
    let line = java.line();
    assert!(line.starts_with("ERR ") && line.contains("AEADBadTagException"), "{line}");
}

#[test]
fn spark_s_auth_engine_client_with_another_secret_is_refused() {
    let Some(mut java) = Peer::start(&["engine", "1", "other", "appId", "1", "1"]) else { return };
    let c = java.recv("C").unwrap();
    let challenge = AuthMessage::decode(&mut &c[..]).unwrap();
    let err = respond("appId", &Secret::new("secret"), &challenge, EngineVersion::V1, &mut OsRandom).unwrap_err();
    assert!(matches!(err, AuthError::BadClientKey), "{err:?}");
}

#[test]
fn spark_s_auth_engine_client_refuses_a_response_made_with_another_secret() {
    let Some(mut java) = Peer::start(&["engine", "1", "secret", "appId", "1", "1"]) else { return };
    let c = java.recv("C").unwrap();
    let challenge = AuthMessage::decode(&mut &c[..]).unwrap();
    // A server that knows the client's key (it decrypted C) but answers with another secret.
    let public = engine::unwrap_public_key("appId", &Secret::new("secret"), &challenge, &[]).unwrap();
    let forged = engine::wrap_public_key("appId", &Secret::new("other"), &public, &c, &mut OsRandom).unwrap();
    java.send("S", &forged.to_bytes());
    let err = java.recv("KEYID").unwrap_err();
    assert!(err.contains("GeneralSecurityException") || err.contains("AEADBadTag"), "{err}");
}

#[test]
fn spark_s_ctr_cipher_matches_ours_across_a_64_bit_counter_carry() {
    // The IV's low 64 bits are 1 block from wrapping: the counter must carry into the high half
    // (commons-crypto and Ctr128BE are both 128-bit big-endian counters).
    use zeroize::Zeroizing;
    let iv: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe];
    for key in [SessionKey::Aes256(Zeroizing::new([0x11; 32])), SessionKey::Aes128(Zeroizing::new([0x11; 16]))] {
        let Some(mut java) = Peer::start(&["ctr", &engine::hex(key.as_bytes()), &engine::hex(&iv), "100"]) else {
            return;
        };
        let mut ours = pattern(100);
        CtrCipher::new(&key, &iv).apply(&mut ours);
        assert_eq!(java.recv("CT").unwrap(), ours);
    }
}

/// Runs SparkSaslClient against our server; returns our server's error or the client's.
fn sasl_exchange(client_secret: &str, encrypt: bool, tamper_rspauth: bool) -> Option<Result<(), String>> {
    sasl_exchange_with("secret", client_secret, encrypt, tamper_rspauth)
}

fn sasl_exchange_with(
    server_secret: &str,
    client_secret: &str,
    encrypt: bool,
    tamper_rspauth: bool,
) -> Option<Result<(), String>> {
    let mut java = Peer::start(&["sasl", client_secret, "app-1", &encrypt.to_string()])?;
    // The first token arrives framed by Spark's own SaslMessage; the server is pinned to its id.
    let first = java.recv("M").unwrap();
    let Ok(Handshake::Sasl(first)) = Handshake::decode(&mut &first[..]) else { panic!("not a SaslMessage") };
    assert_eq!(first.app_id, "app-1");
    let mut server = SaslServer::new(first.app_id.clone(), &Secret::new(server_secret)).unwrap();
    let mut pending = Some(first.token.to_vec());
    loop {
        let token = match pending.take().map(Ok).unwrap_or_else(|| java.recv("T")) {
            Ok(t) => t,
            Err(java_err) => return Some(Err(java_err)),
        };
        match server.step(&token) {
            Ok(SaslStep::Continue(reply)) => java.send("T", &reply),
            Ok(SaslStep::Done(mut reply)) => {
                if tamper_rspauth {
                    let last = reply.len() - 1;
                    reply[last] = if reply[last] == b'0' { b'1' } else { b'0' };
                }
                java.send("T", &reply);
                // The client checks rspauth now: its last (empty) token and DONE, or ERR.
                if let Err(java_err) = java.recv("T") {
                    return Some(Err(java_err));
                }
                let rest = java.rest();
                return Some(if rest.trim() == "DONE" { Ok(()) } else { Err(rest) });
            }
            Err(e) => return Some(Err(e.client_error().to_string())),
        }
    }
}

#[test]
fn the_jdk_sasl_client_authenticates_with_the_right_secret_and_checks_rspauth() {
    let Some(result) = sasl_exchange("secret", false, false) else { return };
    assert_eq!(result, Ok(()));
}

#[test]
fn the_jdk_sasl_client_authenticates_with_a_secret_as_long_as_spark_generates() {
    // 64 hex characters: its password is longer than one line of Netty's Base64.
    let secret = "4f1c0a7d9e2b6c3a8d5e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";
    let Some(result) = sasl_exchange_with(secret, secret, false, false) else { return };
    assert_eq!(result, Ok(()));
}

#[test]
fn the_jdk_sasl_client_refuses_a_wrong_rspauth() {
    let Some(result) = sasl_exchange("secret", false, true) else { return };
    let err = result.unwrap_err();
    assert!(err.contains("Server's rspauth value does not match what client expects"), "{err}");
}

#[test]
fn the_jdk_sasl_client_with_a_wrong_secret_gets_the_jdk_text() {
    let Some(result) = sasl_exchange("not-the-secret", false, false) else { return };
    assert_eq!(
        result.unwrap_err(),
        "java.lang.RuntimeException: javax.security.sasl.SaslException: \
         DIGEST-MD5: digest response format violation. Mismatched response."
    );
}

#[test]
fn a_client_that_demands_sasl_encryption_fails_clearly_in_its_own_jdk() {
    let Some(result) = sasl_exchange("secret", true, false) else { return };
    let err = result.unwrap_err();
    assert!(err.contains("No common protection layer between client and server"), "{err}");
}
