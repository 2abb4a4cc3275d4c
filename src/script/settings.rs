//! A script's settings, typed: what the `scripts` and `script_limits`
//! sections of the configuration become once validated.

use super::schedule::Schedule;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// One validated script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    /// Name in logs (the file stem unless given).
    pub name: String,
    /// The `.rhai` file, resolved against the config's directory.
    pub file: PathBuf,
    /// When it runs.
    pub schedule: Schedule,
    /// Rhai operations one run may take.
    pub max_operations: u64,
    /// Wall-clock time one run may take.
    pub max_time: Duration,
}

/// Limits on one script run. Defaults stop an endless loop in well under a
/// second on a gateway while leaving room for a script over 10,000 tags.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    /// Rhai operations per run (each script may lower or raise its own).
    pub max_operations: u64,
    /// Wall-clock milliseconds per run (each script may set its own).
    pub max_ms: u64,
    /// Nesting of function calls.
    pub max_call_levels: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_size: usize,
    /// Largest array a script may build.
    pub max_array_size: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 20_000_000,
            max_ms: 1000,
            max_call_levels: 64,
            max_string_size: 1 << 20,
            max_array_size: 1 << 20,
        }
    }
}
