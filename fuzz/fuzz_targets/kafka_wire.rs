//! Kafka headers: another producer's record, and Spillway's own round trip.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    partition: i32,
    offset: i64,
    own_id: String,
    own_body: Vec<u8>,
    own_attributes: BTreeMap<String, String>,
    own_key: Option<String>,
}

fuzz_target!(|i: Input| {
    spillway_queue::fuzzing::kafka_foreign(&i.payload, i.key.as_deref(), &i.headers, i.partition, i.offset);
    spillway_queue::fuzzing::kafka_round_trip(
        &i.own_id,
        &i.own_body,
        &i.own_attributes,
        i.own_key.as_deref(),
    );
});
