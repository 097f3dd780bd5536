//! The one error type a Spark client receives ([`JavaError`]): a Java exception class and its
//! message, rendered in one place ([`std::fmt::Display`]) as the first line of a Java stack
//! trace, `<exception class>: <message>` (spec §3.5). Clients only wrap the text, but Spark
//! users and Spark's own tooling grep for the class names. Every layer's error converts into
//! it; the text exists only when a failure frame is encoded.

use std::fmt::{self, Display};

/// The Java exception classes Spark's JVM service reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JavaClass {
    IllegalArgument,
    IllegalState,
    Runtime,
    Security,
    UnsupportedOperation,
    NumberFormat,
    ArrayIndexOutOfBounds,
    IndexOutOfBounds,
    Io,
    FileNotFound,
}

impl JavaClass {
    /// The fully qualified class name.
    pub fn name(self) -> &'static str {
        match self {
            JavaClass::IllegalArgument => "java.lang.IllegalArgumentException",
            JavaClass::IllegalState => "java.lang.IllegalStateException",
            JavaClass::Runtime => "java.lang.RuntimeException",
            JavaClass::Security => "java.lang.SecurityException",
            JavaClass::UnsupportedOperation => "java.lang.UnsupportedOperationException",
            JavaClass::NumberFormat => "java.lang.NumberFormatException",
            JavaClass::ArrayIndexOutOfBounds => "java.lang.ArrayIndexOutOfBoundsException",
            JavaClass::IndexOutOfBounds => "java.lang.IndexOutOfBoundsException",
            JavaClass::Io => "java.io.IOException",
            JavaClass::FileNotFound => "java.io.FileNotFoundException",
        }
    }
}

/// An error as a Spark client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JavaError {
    pub class: JavaClass,
    /// None renders the bare class name, as Java's `Throwable.toString` does for a null message.
    pub message: Option<String>,
}

impl Display for JavaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{}: {message}", self.class.name()),
            None => f.write_str(self.class.name()),
        }
    }
}

impl std::error::Error for JavaError {}

impl JavaError {
    pub fn new(class: JavaClass, message: impl Display) -> JavaError {
        JavaError { class, message: Some(message.to_string()) }
    }

    /// The class alone, with no message.
    pub fn bare(class: JavaClass) -> JavaError {
        JavaError { class, message: None }
    }
}

pub fn illegal_argument(msg: impl Display) -> JavaError {
    JavaError::new(JavaClass::IllegalArgument, msg)
}

pub fn illegal_state(msg: impl Display) -> JavaError {
    JavaError::new(JavaClass::IllegalState, msg)
}

pub fn runtime(msg: impl Display) -> JavaError {
    JavaError::new(JavaClass::Runtime, msg)
}

pub fn security(msg: impl Display) -> JavaError {
    JavaError::new(JavaClass::Security, msg)
}

pub fn unsupported(msg: impl Display) -> JavaError {
    JavaError::new(JavaClass::UnsupportedOperation, msg)
}

/// Integer.parseInt's failure text.
pub fn number_format(input: &str) -> JavaError {
    JavaError::new(JavaClass::NumberFormat, format_args!("For input string: \"{input}\""))
}

/// An array index past the end, as the JVM words it.
pub fn array_index(index: usize, length: usize) -> JavaError {
    JavaError::new(JavaClass::ArrayIndexOutOfBounds, format_args!("Index {index} out of bounds for length {length}"))
}

pub fn executor_not_registered(app_id: &str, exec_id: &str) -> JavaError {
    runtime(format_args!("Executor is not registered (appId={app_id}, execId={exec_id})"))
}

pub fn unknown_stream() -> JavaError {
    illegal_argument("Unknown stream ID.")
}

pub fn stream_of_another_connection(stream_id: i64) -> JavaError {
    security(format_args!(
        "Channel not authorized to read stream {stream_id}: streams may only be read from the connection that registered them."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_the_first_line_of_a_java_stack_trace() {
        assert_eq!(runtime("x").to_string(), "java.lang.RuntimeException: x");
        assert_eq!(JavaError::bare(JavaClass::IndexOutOfBounds).to_string(), "java.lang.IndexOutOfBoundsException");
        assert_eq!(number_format("a").to_string(), "java.lang.NumberFormatException: For input string: \"a\"");
        assert_eq!(
            array_index(1, 1).to_string(),
            "java.lang.ArrayIndexOutOfBoundsException: Index 1 out of bounds for length 1"
        );
    }
}
