//! The framing tracker on the raw bytes of a connection (the input as is,
//! so the seed corpus is plain HTTP), read whole and in pieces cut at
//! places drawn from the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small PRNG seeded by the input: the same input is always cut the
    // same way, and different inputs differently.
    let mut x =
        data.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    let mut cuts = Vec::new();
    for _ in 0..(x % 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cuts.push(usize::try_from(x % (data.len() as u64 + 1)).unwrap_or(0));
    }
    spillway_ingest::fuzzing::framing(data, &cuts);
});
