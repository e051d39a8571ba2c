//! Config composition: the input is an experiment file (YAML) and, after a NUL byte, override
//! lines. Composing, expanding the sweep and building each cell's engine config either works or
//! names what is wrong, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xbench::config::overrides::Override;
use xbench::config::sweep;

fuzz_target!(|data: &[u8]| {
    let (yaml, rest) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let conf = xbench_fuzz::conf();
    std::fs::write(conf.join("experiment/fuzz.yaml"), yaml).expect("write the experiment file");
    let overrides: Vec<Override> = String::from_utf8_lossy(rest)
        .lines()
        .filter_map(|line| Override::parse(line).ok())
        .collect();
    match sweep::expand(conf, Some("fuzz"), &overrides) {
        Ok((_, cells)) => {
            for cell in cells {
                let engine = xbench::engine::EngineConfig::from_config(&cell.config);
                assert!(!engine.models.is_empty());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
