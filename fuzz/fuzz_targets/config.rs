//! Any TOML as the ingest configuration: an error naming a key, or a
//! configuration that compiles (and builds its OpenAPI document) without a
//! panic. The queue section too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = toml::from_str::<spillway_ingest::IngestConfig>(text) {
        match cfg.compile() {
            Ok(compiled) => {
                let _ = spillway_ingest::openapi::document(&compiled, "0");
            }
            Err(e) => assert!(!e.key.is_empty(), "an error that names no key: {e}"),
        }
    }
    let _ = toml::from_str::<spillway_queue::BackendConfig>(text);
    let _ = toml::from_str::<spillway_queue::QueueSpec>(text);
});
