//! A sequence of decoded KV and lease requests applied to a fresh store.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrokv_fuzz_harness::apply(data));
