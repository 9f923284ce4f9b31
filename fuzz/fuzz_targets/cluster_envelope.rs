//! The cluster's message envelope (`signalhub/src/server/broker.rs`): what a node decodes from
//! Redis. Any bytes: never a panic; what decodes, encodes back to bytes that decode to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalhub::fuzzing::{decode_envelope, encode_envelope};

fuzz_target!(|input: &[u8]| {
    if let Ok(parts) = decode_envelope(input) {
        let again = encode_envelope(&parts);
        assert_eq!(decode_envelope(&again), Ok(parts));
    }
});
