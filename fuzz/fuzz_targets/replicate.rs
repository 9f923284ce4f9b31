//! A replication session (`swarm::replicate`) of an in-memory log whose remote writes the fuzz
//! input, byte for byte, then ends its side: hostile frames, truncated frames, anything. Two
//! leading bytes choose the local mode, live flag, verification, local nodes and the remote's
//! write size. The session must end (within a deadline) without panicking, and store only sound
//! nodes. See `replication_driver.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "replication_driver.rs"]
mod driver;

fuzz_target!(|input: &[u8]| {
    let [a, b, remote @ ..] = input else {
        return;
    };
    driver::run(driver::Setup::from_bytes(*a, *b), remote);
});
