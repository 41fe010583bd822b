//! Configuration: read YAML, check it, and produce the validated [`Config`] the gateway runs.
//!
//! Three layers keep concerns apart: [`file`] mirrors the YAML (and yields the JSON Schema),
//! [`validate`] checks meaning and reports every problem as `FILE:LINE:COL: message`, and
//! [`spec`] holds the checked values the data plane is built from. A config either passes
//! whole or is refused whole; nothing half-valid ever runs.

mod changes;
pub mod duration;
pub mod file;
pub mod guardrails;
pub mod matcher;
pub mod mcp;
mod parse;
pub mod prompt;
pub mod secrets;
mod shown;
pub mod source_map;
pub mod spec;
pub mod transport;
mod validate;

use std::fmt;
use std::path::Path;

pub use spec::Config;
pub use validate::check_fault;
pub use validate::policies::parse_rate;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Reads and validates the config file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 1,
            col: 1,
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    let mut config = load_str(&text, &name)?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Validates config `text`; `name` is the file name used in error messages.
pub fn load_str(text: &str, name: &str) -> Result<Config, ConfigErrors> {
    validate::load(text, name)
}
