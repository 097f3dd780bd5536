//! Fuzz target: arbitrary bytes as the head of a request to the admin port. The parser must
//! never panic, and what it accepts must be a well-formed request line: a method and a path
//! with no space in them, the path without its query string.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spark_shuffle_agent::admin::http::parse_request_line;

fuzz_target!(|data: &[u8]| {
    if let Some((method, path)) = parse_request_line(data) {
        assert!(!method.contains(' ') && !path.contains(' '), "{method:?} {path:?}");
        assert!(!path.contains('?'), "the query is dropped: {path:?}");
        assert!(!method.contains('\n') && !path.contains('\n'));
    }
});
