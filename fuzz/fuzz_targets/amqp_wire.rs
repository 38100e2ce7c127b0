//! AMQP headers: another publisher's message, and Spillway's own round trip.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    message_id: Option<String>,
    headers: Vec<(String, u8, Vec<u8>)>,
    own_id: String,
    own_body: Vec<u8>,
    own_attributes: BTreeMap<String, String>,
    own_key: Option<String>,
}

fuzz_target!(|i: Input| {
    spillway_queue::fuzzing::amqp_foreign(i.message_id.as_deref(), &i.headers);
    spillway_queue::fuzzing::amqp_round_trip(&i.own_id, &i.own_body, &i.own_attributes, i.own_key.as_deref());
});
