//! The HTTP side of the simulated API server: reading a request head, parsing the target
//! (path, query, label and field selectors, as the API server applies them), and writing
//! responses, chunks and Status objects. No state of its own.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed request target.
#[derive(Debug, Default)]
pub(super) struct Query {
    pub(super) namespace: Option<String>,
    pub(super) params: BTreeMap<String, String>,
}

impl Query {
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

pub(super) async fn read_head(socket: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub(super) fn parse_target(target: &str) -> Option<Query> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let namespace = match segments.as_slice() {
        ["", "api", "v1", "pods"] => None,
        ["", "api", "v1", "namespaces", ns, "pods"] => Some(ns.to_string()),
        _ => return None,
    };
    let params = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Query { namespace, params })
}

pub(super) fn decode_target(target: &str) -> String {
    percent_decode(target)
}

/// application/x-www-form-urlencoded decoding, as kube encodes query strings.
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Label and field selectors, as the API server applies them.
#[derive(Debug, Default)]
pub(super) struct Selectors {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

#[derive(Debug)]
pub(super) enum Term {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    Absent(String),
}

pub(super) const FIELDS: &[&str] = &["spec.nodeName", "metadata.name", "metadata.namespace", "status.phase"];

impl Selectors {
    pub(super) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selectors, String> {
        let terms = |s: Option<&str>| -> Vec<Term> {
            s.unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    if let Some((k, v)) = t.split_once("!=") {
                        Term::NotEq(k.into(), v.into())
                    } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                        Term::Eq(k.into(), v.into())
                    } else if let Some(k) = t.strip_prefix('!') {
                        Term::Absent(k.into())
                    } else {
                        Term::Exists(t.into())
                    }
                })
                .collect()
        };
        let selectors = Selectors { labels: terms(labels), fields: terms(fields) };
        for term in &selectors.fields {
            match term {
                Term::Eq(k, _) | Term::NotEq(k, _) if FIELDS.contains(&k.as_str()) => {}
                Term::Eq(k, _) | Term::NotEq(k, _) | Term::Exists(k) | Term::Absent(k) => {
                    return Err(format!("field label not supported: {k}"))
                }
            }
        }
        Ok(selectors)
    }

    pub(super) fn matches(&self, pod: &Value) -> bool {
        let label = |k: &str| pod["metadata"]["labels"][k].as_str().map(str::to_string);
        let field = |k: &str| {
            let v = match k {
                "spec.nodeName" => &pod["spec"]["nodeName"],
                "metadata.name" => &pod["metadata"]["name"],
                "metadata.namespace" => &pod["metadata"]["namespace"],
                _ => &pod["status"]["phase"],
            };
            Some(v.as_str().unwrap_or("").to_string())
        };
        let holds = |term: &Term, get: &dyn Fn(&str) -> Option<String>| match term {
            Term::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
            Term::NotEq(k, v) => get(k).as_deref() != Some(v.as_str()),
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
        };
        self.labels.iter().all(|t| holds(t, &label)) && self.fields.iter().all(|t| holds(t, &field))
    }
}

pub(super) async fn write_chunk(socket: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).expect("json");
    line.push(b'\n');
    socket.write_all(format!("{:x}\r\n", line.len()).as_bytes()).await?;
    socket.write_all(&line).await?;
    socket.write_all(b"\r\n").await?;
    socket.flush().await
}

pub(super) async fn respond(socket: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).expect("json");
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&body).await?;
    socket.shutdown().await
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code })
}
