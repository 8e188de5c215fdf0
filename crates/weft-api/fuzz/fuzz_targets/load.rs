//! Fuzzes the loader with arbitrary bytes: parsing, typed decoding, validation and analysis
//! must never panic, whatever arrives.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::load::{Limits, Loader};

fuzz_target!(|data: &[u8]| {
    let mut loader = Loader::new(Limits::default());
    loader.load_reader("fuzz.yaml", data);
    let loaded = loader.finish();
    let _ = weft_api::check(&loaded);
});
