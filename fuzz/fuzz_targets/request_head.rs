//! Request-head handling on arbitrary bytes: parsing, framing checks, routing, header rewrites.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| levee::fuzzing::request_head(data));
