//! The control server's TOML configuration file.
//!
//! Checked on every input: nothing panics while parsing or validating; a
//! configuration that parses and validates writes back to TOML that parses
//! to the same configuration (what `s2cs` would show or persist is what the
//! operator wrote).
#![no_main]

use control::ServerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(config) = ServerConfig::from_toml_str(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    let written = toml::to_string(&config).expect("a valid configuration serializes");
    match ServerConfig::from_toml_str(&written) {
        Ok(again) => assert_eq!(again, config, "written as:\n{written}"),
        Err(err) => panic!("the written configuration does not parse: {err}\n{written}"),
    }
});
