//! The command-line override grammar (`key=value`, `+key=value`, `~key`, sweeps, groups): any
//! text is parsed or refused with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xbench::config::overrides::Override;

fuzz_target!(|text: &str| {
    if let Err(e) = Override::parse(text) {
        assert!(!e.to_string().is_empty());
    }
});
