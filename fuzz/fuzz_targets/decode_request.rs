//! Every gRPC request type decoded (and the KV ones validated) as the services do.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrokv_fuzz_harness::decode_request(data));
