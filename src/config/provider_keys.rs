//! What a DNS provider gets to read its own keys of `[dns]` with: the keys
//! left after the shared ones, and helpers whose errors name `dns.<key>`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::{ConfigError, Secret, SecretSource};

pub struct ProviderKeys<'a> {
    path: &'a Path,
    table: toml::Table,
    /// Set when the file itself holds a credential.
    inline_secret: bool,
}

impl<'a> ProviderKeys<'a> {
    pub(super) fn new(path: &'a Path, table: toml::Table) -> Self {
        ProviderKeys {
            path,
            table,
            inline_secret: false,
        }
    }

    pub(super) fn holds_secret(&self) -> bool {
        self.inline_secret
    }

    /// Reads the provider's keys into its own wire type (which should deny
    /// unknown fields; the keys were already checked against the provider's
    /// list, so that only catches a list that is out of step).
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<T, ConfigError> {
        let table = std::mem::take(&mut self.table);
        serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::from_serde(self.path, None, "dns.", e))
    }

    /// An error about `dns.<key>`.
    pub fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.path, format!("dns.{key}"), message)
    }

    /// A key the provider cannot do without; `what` says what to put there.
    pub fn required<T>(&self, key: &str, value: Option<T>, what: &str) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.err(key, format!("missing; {what}")))
    }

    /// An http(s) base URL that paths are appended to: no trailing slash.
    pub fn base_url(&self, key: &str, url: String) -> Result<String, ConfigError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(self.err(key, format!("{url:?}: expected an http:// or https:// URL")));
        }
        Ok(url.trim_end_matches('/').to_string())
    }

    /// A DNS server: `IP` (port 53) or `IP:PORT`.
    pub fn dns_server(&self, key: &str, v: &str, example: &str) -> Result<SocketAddr, ConfigError> {
        dns_server(v).ok_or_else(|| {
            self.err(
                key,
                format!("{v:?}: expected IP or IP:PORT such as {example:?}"),
            )
        })
    }

    /// A listening address, `IP:PORT`.
    pub fn addr(&self, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
        v.parse().map_err(|_| {
            self.err(
                key,
                format!("{v:?} is not an address; expected IP:PORT such as \"0.0.0.0:53\""),
            )
        })
    }

    /// A secret set inline as `name`, in a file as `name_file`, or else read
    /// from the environment variable `env` when the provider is built.
    pub fn secret(
        &mut self,
        name: &str,
        inline: Option<String>,
        file: Option<String>,
        env: &'static str,
    ) -> Result<SecretSource, ConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                Err(self.err(name, format!("set {name} or {name}_file, not both")))
            }
            (Some(s), None) => {
                self.inline_secret = true;
                Ok(SecretSource::Inline(Secret(s)))
            }
            (None, Some(f)) => Ok(SecretSource::File(PathBuf::from(f))),
            (None, None) => Ok(SecretSource::Env(env)),
        }
    }

    /// An inline secret with no file form (`password`): `env` when absent.
    pub fn inline_or_env(&mut self, inline: Option<String>, env: &'static str) -> SecretSource {
        match inline {
            Some(s) => {
                self.inline_secret = true;
                SecretSource::Inline(Secret(s))
            }
            None => SecretSource::Env(env),
        }
    }

    /// A whole number in `range`, or `default` when absent.
    pub fn count(
        &self,
        key: &str,
        value: Option<i64>,
        default: u32,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<u32, ConfigError> {
        match value {
            None => Ok(default),
            Some(n) if range.contains(&n) => Ok(n as u32),
            Some(n) => Err(self.err(
                key,
                format!(
                    "{n} is out of range; expected {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }
}

/// `IP` (port 53) or `IP:PORT`.
pub(super) fn dns_server(v: &str) -> Option<SocketAddr> {
    v.parse::<SocketAddr>().ok().or_else(|| {
        v.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}
