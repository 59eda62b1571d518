//! The `s2cs serve` daemon around the data plane: its flags and the
//! `[gateway]` table of the configuration file under them (`config_file`),
//! start-up checks and the wiring of control server, data plane, XDP guard
//! and metrics (`serve`: `Gateway`), signals and rlimits, and SIGHUP reloads
//! (`reload`). `session` keeps the sessions themselves; nothing in it
//! depends on this module.
#![forbid(unsafe_code)]

pub mod config_file;
pub mod reload;
pub mod serve;
