//! `provider = "pebble-challtestsrv"`: Pebble's test DNS server, for tests and
//! local runs. Its `/set-txt` appends a value, so apex and wildcard coexist.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{BoxFuture, DnsError, DnsProvider, ProviderSpec, Publisher, TxtRecord};
use crate::config::{ConfigError, ProviderKeys};
use crate::ui::Ui;

pub static PROVIDER: ProviderSpec = ProviderSpec {
    name: "pebble-challtestsrv",
    keys: &["url"],
    parse,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    url: Option<String>,
}

#[derive(Debug)]
struct Settings {
    url: String,
}

fn parse(k: &mut ProviderKeys<'_>) -> Result<Arc<dyn DnsProvider>, ConfigError> {
    let keys: Keys = k.read()?;
    let url = k.required(
        "url",
        keys.url,
        "expected the management URL, e.g. \"http://127.0.0.1:8055\"",
    )?;
    Ok(Arc::new(Settings {
        url: k.base_url("url", url)?,
    }))
}

impl DnsProvider for Settings {
    fn name(&self) -> &'static str {
        PROVIDER.name
    }

    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError> {
        Ok(Box::new(Challtestsrv::new(self.url.clone())?))
    }
}

pub struct Challtestsrv {
    url: String,
    http: reqwest::Client,
}

impl Challtestsrv {
    pub fn new(url: String) -> Result<Challtestsrv, DnsError> {
        let http =
            crate::acme::http::client(std::time::Duration::from_secs(10)).map_err(|e| {
                DnsError::Api {
                    provider: "pebble-challtestsrv",
                    message: e.to_string(),
                }
            })?;
        Ok(Challtestsrv { url, http })
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<(), DnsError> {
        let url = format!("{}{path}", self.url);
        let err = |message: String| DnsError::Api {
            provider: "pebble-challtestsrv",
            message,
        };
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| err(format!("POST {url}: {}", crate::acme::error_chain(&e))))?;
        if !resp.status().is_success() {
            return Err(err(format!("POST {url} answered {}", resp.status())));
        }
        Ok(())
    }
}

impl Publisher for Challtestsrv {
    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            for r in records {
                self.post(
                    "/set-txt",
                    json!({"host": format!("{}.", r.fqdn), "value": r.value}),
                )
                .await?;
            }
            Ok(())
        })
    }

    fn cleanup<'a>(
        &'a self,
        records: &'a [TxtRecord],
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let mut names: Vec<&str> = records.iter().map(|r| r.fqdn.as_str()).collect();
            names.sort();
            names.dedup();
            for n in names {
                self.post("/clear-txt", json!({"host": format!("{n}.")}))
                    .await?;
            }
            Ok(())
        })
    }
}
