//! Error texts in the shape Spark's JVM service sends them (spec §3.5): the first line of a Java
//! stack trace, `<exception class>: <message>`. Clients only wrap the text, but Spark users and
//! Spark's own tooling grep for the class names, so every failure the agent sends is built here.

use std::fmt::Display;

pub fn illegal_argument(msg: impl Display) -> String {
    format!("java.lang.IllegalArgumentException: {msg}")
}

pub fn illegal_state(msg: impl Display) -> String {
    format!("java.lang.IllegalStateException: {msg}")
}

pub fn runtime(msg: impl Display) -> String {
    format!("java.lang.RuntimeException: {msg}")
}

pub fn security(msg: impl Display) -> String {
    format!("java.lang.SecurityException: {msg}")
}

pub fn unsupported(msg: impl Display) -> String {
    format!("java.lang.UnsupportedOperationException: {msg}")
}

/// Integer.parseInt's failure text.
pub fn number_format(input: &str) -> String {
    format!("java.lang.NumberFormatException: For input string: \"{input}\"")
}

pub fn executor_not_registered(app_id: &str, exec_id: &str) -> String {
    runtime(format_args!("Executor is not registered (appId={app_id}, execId={exec_id})"))
}

pub fn unknown_stream() -> String {
    illegal_argument("Unknown stream ID.")
}

pub fn stream_of_another_connection(stream_id: i64) -> String {
    security(format_args!(
        "Channel not authorized to read stream {stream_id}: streams may only be read from the connection that registered them."
    ))
}
