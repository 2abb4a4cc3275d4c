//! One libFuzzer binary for every target of `rtds::fuzzing`, chosen by
//! the environment: `RTDS_FUZZ_TARGET=http_request cargo fuzz run target`
//! (the names are `rtds::fuzzing::TARGETS`; docs/tests.md#fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn chosen() -> fn(&[u8]) {
    static TARGET: OnceLock<fn(&[u8])> = OnceLock::new();
    *TARGET.get_or_init(|| {
        let name = std::env::var("RTDS_FUZZ_TARGET").unwrap_or_default();
        rtds::fuzzing::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| {
                let names: Vec<&str> = rtds::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
                panic!("set RTDS_FUZZ_TARGET to one of: {}", names.join(", "))
            })
    })
}

fuzz_target!(|data: &[u8]| chosen()(data));
