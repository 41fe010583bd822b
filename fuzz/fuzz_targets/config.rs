//! The config parser and validator on arbitrary input (operator files, reload payloads).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| levee::fuzzing::config(data));
