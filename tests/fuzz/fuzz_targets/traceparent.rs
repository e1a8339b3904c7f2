#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acpd::fuzz::traceparent(data));
