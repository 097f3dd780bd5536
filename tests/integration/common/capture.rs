//! Reader of the captured conversations in `tests/vectors/<scenario>.txt` (format in each file's
//! header and NOTES.md §1): every line `+<ms> <conn> <dir> ...` becomes an [`Event`].
//!
//! * Client frames are rebuilt byte for byte from the frame hex plus the "full body" line; frames
//!   the decoder could not decode (the bad-frame probes) are kept as raw bytes.
//! * Server replies become the [`Message`] the server sent, except that failure texts are cut to
//!   their first line (taken from `errors_full.txt`, the only stable part) and chunk or stream
//!   bodies shortened in the file are regenerated from the block they name ("= shuffle_0_1_3
//!   (100 B)") with the caller's generator.
//!
//! Nothing is substituted here (paths, stream ids); the replay does that.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use bytes::BytesMut;
use spark_shuffle_agent::protocol::{FrameCodec, Inbound, Message, StreamChunkId};
use tokio_util::codec::Decoder;

/// One step of a captured conversation, in capture order.
#[derive(Debug, Clone)]
pub enum Event {
    /// The client opened connection `conn` ("c1", "c2", ...).
    Open { conn: String },
    /// The client sent this.
    Send { conn: String, frame: ClientFrame },
    /// The server sent this.
    Reply { conn: String, reply: Reply },
    /// The client closed its side.
    ClientFin { conn: String },
    /// The server closed its side.
    ServerFin { conn: String },
}

#[derive(Debug, Clone)]
pub enum ClientFrame {
    Message(Message),
    /// Bytes that are not a valid frame (the bad-frame probes).
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole message. For ChunkFetchFailure, RpcFailure and StreamFailure the error text is
    /// the first line of what the server sent.
    Message(Message),
    /// The raw bytes after a StreamResponse frame. `truncated`: fewer arrived than announced.
    StreamData { bytes: Vec<u8>, truncated: bool },
    /// An incomplete frame the server sent before closing (the lazyFD case).
    Truncated { bytes: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct Capture {
    pub name: String,
    pub events: Vec<Event>,
}

/// The first lines of every error text the server sent, by scenario, in order.
#[derive(Debug, Clone)]
pub struct ErrorTexts {
    by_scenario: HashMap<String, VecDeque<ErrorText>>,
}

#[derive(Debug, Clone)]
pub struct ErrorText {
    /// "RpcFailure", "ChunkFetchFailure" or "StreamFailure".
    pub kind: String,
    /// Length of the whole text in bytes.
    pub len: usize,
    pub first_line: String,
}

impl ErrorTexts {
    /// Parses `errors_full.txt`: `=== <scenario>: <Kind> (<n> bytes)` followed by the text.
    pub fn load(path: &Path) -> ErrorTexts {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut by_scenario: HashMap<String, VecDeque<ErrorText>> = HashMap::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(head) = line.strip_prefix("=== ") else { continue };
            let (scenario, rest) = head.split_once(": ").expect("=== <scenario>: <kind> (<n> bytes)");
            let (kind, len) = rest.split_once(" (").expect("<kind> (<n> bytes)");
            let len = len.trim_end_matches(" bytes)").parse().expect("byte count");
            let first_line = lines.next().expect("an error text after its header").to_string();
            by_scenario.entry(scenario.to_string()).or_default().push_back(ErrorText {
                kind: kind.to_string(),
                len,
                first_line,
            });
        }
        ErrorTexts { by_scenario }
    }

    fn next(&mut self, scenario: &str, kind: &str, len: usize) -> String {
        let text = self
            .by_scenario
            .get_mut(scenario)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("{scenario}: errors_full.txt has no {kind} left"));
        assert_eq!((text.kind.as_str(), text.len), (kind, len), "{scenario}: errors_full.txt out of step");
        text.first_line
    }

    /// True when every text of `scenario` was matched to a failure message.
    pub fn all_used(&self, scenario: &str) -> bool {
        self.by_scenario.get(scenario).is_none_or(VecDeque::is_empty)
    }
}

/// How a body appears on a message line.
#[derive(Debug, Clone)]
enum Body {
    None,
    Full(Vec<u8>),
    /// Only the first bytes were logged.
    Shortened,
}

/// One `+...` line, before it is interpreted.
#[derive(Debug, Clone)]
struct Line {
    conn: String,
    /// "C->S" or "S->C".
    dir: String,
    /// "OPEN", "FIN", "RAW" or "FRAME".
    kind: &'static str,
    frame: Vec<u8>,
    body: Body,
    description: String,
}

/// Parses `<scenario>.txt`. `generate(name, len)` gives the bytes of a block named in a
/// description (`shuffle_0_1_3`, `shuffle_0_0_[0,3)`, `rdd_1_0`).
pub fn load(dir: &Path, scenario: &str, errors: &mut ErrorTexts, generate: &dyn Fn(&str, u64) -> Vec<u8>) -> Capture {
    let path = dir.join(format!("{scenario}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines = parse_lines(&text);
    let mut events = Vec::new();
    for line in lines {
        let conn = line.conn.clone();
        let event = match (line.kind, line.dir.as_str()) {
            ("OPEN", _) => Event::Open { conn },
            ("FIN", "C->S") => Event::ClientFin { conn },
            ("FIN", _) => Event::ServerFin { conn },
            ("RAW", _) => Event::Reply { conn, reply: stream_data(&line, generate) },
            (_, "C->S") => Event::Send { conn, frame: client_frame(scenario, &line) },
            _ => Event::Reply { conn, reply: server_reply(scenario, &line, errors, generate) },
        };
        events.push(event);
    }
    assert!(errors.all_used(scenario), "{scenario}: errors_full.txt has texts no failure message used");
    Capture { name: scenario.to_string(), events }
}

fn parse_lines(text: &str) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for raw in text.lines() {
        if let Some(full) = raw.trim_start().strip_prefix("full body (") {
            let (_, fields) = full.split_once("): ").expect("full body (<n> B, fields): <hex>");
            let last = out.last_mut().expect("a full body line follows a message line");
            last.body = Body::Full(hex(fields));
            continue;
        }
        let Some(rest) = raw.strip_prefix('+') else { continue };
        let mut words = rest.split_whitespace();
        let (_time, conn, dir) = (words.next(), words.next().expect("conn"), words.next().expect("dir"));
        let after_dir = &rest[rest.find(dir).expect("dir") + dir.len()..];
        let (wire, description) = match after_dir.split_once("  ## ") {
            Some((w, d)) => (w.trim(), d.trim().to_string()),
            None => (after_dir.trim(), String::new()),
        };
        let (kind, frame, body) = if dir == "OPEN" {
            ("OPEN", Vec::new(), Body::None)
        } else if wire.starts_with("FIN") {
            ("FIN", Vec::new(), Body::None)
        } else if let Some(data) = wire.strip_prefix("RAW") {
            ("RAW", Vec::new(), body_of(data.trim()))
        } else {
            let (frame, body) = match wire.split_once(" | ") {
                Some((f, b)) => (hex(f), body_of(b.trim())),
                None => (hex(wire), Body::None),
            };
            ("FRAME", frame, body)
        };
        // "c1 OPEN" has no direction; keep the conn in `conn` either way.
        out.push(Line { conn: conn.to_string(), dir: dir.to_string(), kind, frame, body, description });
    }
    out
}

fn body_of(text: &str) -> Body {
    if text == "(empty)" {
        Body::Full(Vec::new())
    } else if text.contains("...") {
        Body::Shortened
    } else {
        Body::Full(hex(text))
    }
}

/// Hex digits of `text` (spaces and other separators ignored) as bytes.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> =
        text.bytes().filter(u8::is_ascii_hexdigit).map(|c| (c as char).to_digit(16).expect("hex") as u8).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {text:?}");
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

fn decode_frame(bytes: &[u8]) -> Message {
    let mut codec = FrameCodec::new(usize::MAX);
    let mut src = BytesMut::from(bytes);
    match codec.decode(&mut src) {
        Ok(Some(Inbound::Message(m))) if src.is_empty() => m,
        other => panic!("captured frame {bytes:02x?} does not decode exactly: {other:?}"),
    }
}

fn client_frame(scenario: &str, line: &Line) -> ClientFrame {
    let undecodable = line.description.starts_with("NOT A COMPLETE FRAME") || line.description.starts_with("Unknown(");
    let body = match &line.body {
        Body::Full(b) => b.as_slice(),
        Body::None => &[],
        Body::Shortened => panic!("{scenario}: client frame without its full body: {}", line.description),
    };
    let bytes = [line.frame.as_slice(), body].concat();
    if undecodable {
        ClientFrame::Raw(bytes)
    } else {
        ClientFrame::Message(decode_frame(&bytes))
    }
}

/// `= <block> (<n> B ...)` at the end of a chunk or stream description.
fn named_block(description: &str) -> Option<(String, u64)> {
    let (_, after) = description.rsplit_once("= ")?;
    let (name, rest) = after.split_once(" (")?;
    let len = rest.split_once(' ')?.0.parse().ok()?;
    Some((name.to_string(), len))
}

fn stream_data(line: &Line, generate: &dyn Fn(&str, u64) -> Vec<u8>) -> Reply {
    let truncated = line.description.contains("TRUNCATED");
    let bytes = match (&line.body, named_block(&line.description)) {
        (Body::Full(b), _) if truncated => b.clone(),
        (body, Some((name, len))) => {
            let bytes = generate(&name, len);
            if let Body::Full(logged) = body {
                assert_eq!(logged, &bytes, "logged stream data differs from the generator: {}", line.description);
            }
            bytes
        }
        (Body::Full(b), None) => b.clone(),
        _ => panic!("stream data neither logged nor named: {}", line.description),
    };
    Reply::StreamData { bytes, truncated }
}

fn server_reply(
    scenario: &str,
    line: &Line,
    errors: &mut ErrorTexts,
    generate: &dyn Fn(&str, u64) -> Vec<u8>,
) -> Reply {
    if line.description.starts_with("NOT A COMPLETE FRAME") {
        return Reply::Truncated { bytes: line.frame.clone() };
    }
    let f = &line.frame;
    let msg = match f[8] {
        1 => {
            let body = match (&line.body, named_block(&line.description)) {
                (Body::Full(b), Some((name, len))) => {
                    assert_eq!(b, &generate(&name, len), "logged chunk differs from the generator");
                    b.clone()
                }
                (Body::Shortened, Some((name, len))) => generate(&name, len),
                (Body::Full(b), None) => b.clone(),
                _ => panic!("{scenario}: chunk body neither logged nor named: {}", line.description),
            };
            decode_frame(&[f.as_slice(), &body].concat())
        }
        2 => {
            let chunk = StreamChunkId { stream_id: be_i64(&f[9..]), chunk_index: be_i32(&f[17..]) };
            let error = errors.next(scenario, "ChunkFetchFailure", be_i32(&f[21..]) as usize);
            Message::ChunkFetchFailure { chunk, error }
        }
        5 => {
            let error = errors.next(scenario, "RpcFailure", be_i32(&f[17..]) as usize);
            Message::RpcFailure { request_id: be_i64(&f[9..]), error }
        }
        8 => {
            let id_len = be_i32(&f[9..]) as usize;
            let stream_id = String::from_utf8(f[13..13 + id_len].to_vec()).expect("utf-8 stream id");
            let error = errors.next(scenario, "StreamFailure", be_i32(&f[13 + id_len..]) as usize);
            Message::StreamFailure { stream_id, error }
        }
        _ => {
            let body = match &line.body {
                Body::Full(b) => b.as_slice(),
                Body::None => &[],
                Body::Shortened => panic!("{scenario}: reply without its full body: {}", line.description),
            };
            decode_frame(&[f.as_slice(), body].concat())
        }
    };
    Reply::Message(msg)
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}
