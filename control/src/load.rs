//! A bootstrap, from its text to the RIB: [`crate::config`] parses, walks and decodes it,
//! then [`crate::convert`] converts it. The one place the two steps meet, so neither of
//! them imports the other.

use crate::config::{self, Format, LoadedConfig};
use crate::error::ConfigError;
use crate::rib::Rib;
use std::path::Path;

/// Reads a bootstrap file and converts it to the RIB.
pub fn load_rib(path: impl AsRef<Path>) -> Result<(Rib, LoadedConfig), ConfigError> {
    let loaded = config::load_file(path)?;
    let rib = crate::convert::bootstrap(&loaded.bootstrap)?;
    Ok((rib, loaded))
}

/// Parses text and converts it to the RIB.
pub fn parse_rib(text: &str, format: Format) -> Result<(Rib, LoadedConfig), ConfigError> {
    let loaded = config::parse_str(text, format)?;
    let rib = crate::convert::bootstrap(&loaded.bootstrap)?;
    Ok((rib, loaded))
}

/// YAML text to the RIB, for the tests of the steps below this one.
#[cfg(test)]
pub(crate) fn parse_yaml_rib(text: &str) -> Result<(Rib, LoadedConfig), ConfigError> {
    parse_rib(text, Format::Yaml)
}
