//! SQS attributes: another client's message, and Spillway's own round trip.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    body: String,
    message_id: String,
    attributes: Vec<(String, Option<String>, Option<Vec<u8>>)>,
    receive_count: String,
    own_id: String,
    own_body: Vec<u8>,
    own_attributes: BTreeMap<String, String>,
}

fuzz_target!(|i: Input| {
    spillway_queue::fuzzing::sqs_foreign(&i.body, &i.message_id, &i.attributes, &i.receive_count);
    spillway_queue::fuzzing::sqs_round_trip(&i.own_id, &i.own_body, &i.own_attributes);
});
