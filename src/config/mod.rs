//! The config file: its wire format (`wire`, serde types that only know the
//! shape), the validated model the rest of edge uses (`model`), every default
//! (`defaults`) and the step between them (`validate`). A DNS provider reads
//! its own keys of `[dns]` (`ProviderKeys`, and the provider's file in
//! `src/dns/`).
//!
//! Errors name the file, the key, the bad value and what is expected. Nothing
//! here touches the network; `edge check` adds the I/O checks on top.

mod defaults;
mod model;
mod provider_keys;
mod validate;
mod values;
mod wire;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub(crate) use provider_keys::ProviderKeys;

/// A config file that cannot be used, with the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}", Located(.path, .line, .key, .message))]
    Invalid {
        path: PathBuf,
        /// Where serde found the value, when it did.
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("no config file: looked for {tried}; pass --config FILE or set EDGE_CONFIG")]
    NotFound { tried: String },
}

/// `file[:line]: key `k`: message`.
struct Located<'a>(&'a PathBuf, &'a Option<usize>, &'a String, &'a String);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(path, line, key, message) = self;
        write!(f, "{}", path.display())?;
        if let Some(l) = line {
            write!(f, ":{l}")?;
        }
        write!(f, ": key `{key}`: {message}")
    }
}

impl ConfigError {
    pub(crate) fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A value serde refused: its key path (under `prefix`), the line when
    /// the span is known, and the value's own message.
    fn from_serde(
        path: &Path,
        text: Option<&str>,
        prefix: &str,
        e: serde_path_to_error::Error<toml::de::Error>,
    ) -> Self {
        let inner = e.inner();
        let key = match e.path().to_string() {
            p if p == "." => prefix.trim_end_matches('.').to_string(),
            p => format!("{prefix}{p}"),
        };
        let line = text
            .zip(inner.span())
            .map(|(t, s)| t[..s.start.min(t.len())].matches('\n').count() + 1);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            key,
            message: inner.message().trim_end().to_string(),
        }
    }
}

/// Where the config comes from when neither `--config` nor `EDGE_CONFIG` says.
pub const DEFAULT_PATHS: [&str; 2] = ["config/edge.toml", "/etc/edge/edge.toml"];

/// Picks the config path: an explicit one (flag or `EDGE_CONFIG`) wins, else the
/// first default that exists.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    for p in DEFAULT_PATHS {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(ConfigError::NotFound {
        tried: DEFAULT_PATHS.join(", "),
    })
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut cfg = parse(path, &text)?;
    if cfg.holds_secrets {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o044 != 0 {
            cfg.warnings.push(format!(
                "{} holds a credential and is readable by others (mode {mode:o}); run `chmod 600 {}` or move the secret to a *_file key or an EDGE_DNS_* environment variable",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(cfg)
}

/// Validates config text; `path` is only used in messages and is kept in the result.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!("invalid config: {}", e.to_string().trim_end()),
    })?;
    let file: wire::File = serde_path_to_error::deserialize(de)
        .map_err(|e| ConfigError::from_serde(path, Some(text), "", e))?;
    validate::config(path, file)
}

#[cfg(test)]
mod tests;
