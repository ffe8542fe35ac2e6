//! The config loader never panics, whatever the file says.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = zgsz_agent::config::load_str(std::path::Path::new("fuzz.toml"), text);
    }
});
