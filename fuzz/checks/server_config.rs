//! The TOML configuration file: the control server's settings and the
//! gateway's `[gateway]` table.
//!
//! Checked on every input: nothing panics while parsing or validating; a
//! configuration that parses and validates writes back to TOML that parses
//! to the same configuration (what `s2cs` would show or persist is what the
//! operator wrote).

use control::ServerConfig;
use gateway::daemon::config_file::GatewayFile;

/// Checks one input (the fuzz target's body); false when the bytes do not
/// decode into an input, which libFuzzer then leaves out of the corpus.
pub fn check_input(data: &[u8]) -> bool {
    let Ok(text) =
        <&str as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return false;
    };
    let Ok(config) = ServerConfig::from_toml_str(text) else {
        return true;
    };
    if config.validate().is_err() {
        return true;
    }
    // The gateway's own table parses or is refused, never panics.
    let _ = GatewayFile::from_table(config.gateway.as_ref());
    let written = toml::to_string(&config).expect("a valid configuration serializes");
    match ServerConfig::from_toml_str(&written) {
        Ok(again) if again == config => {}
        // A NaN in the opaque [gateway] table is unequal to itself: the
        // written text must still read back to the same text.
        Ok(again) => assert_eq!(
            toml::to_string(&again).expect("serializes"),
            written,
            "written as:\n{written}"
        ),
        Err(err) => panic!("the written configuration does not parse: {err}\n{written}"),
    }
    true
}
