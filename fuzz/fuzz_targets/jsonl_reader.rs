//! The JSON-lines reader of `xbench score`: any bytes are read as pairs or refused with a message
//! naming the line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xbench::score::read_pairs;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = read_pairs(data) {
        assert!(!e.to_string().is_empty());
    }
});
