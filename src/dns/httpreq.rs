//! `provider = "httpreq"`: lego's httpreq convention, for people with their own
//! DNS tooling. `POST <url>/present` and `POST <url>/cleanup` with
//! `{"fqdn": "_acme-challenge.example.org.", "value": "..."}`, optional basic auth.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{BoxFuture, DnsError, DnsProvider, ProviderSpec, Publisher, TxtRecord};
use crate::config::{ConfigError, ProviderKeys, Secret, SecretSource};
use crate::ui::Ui;

pub static PROVIDER: ProviderSpec = ProviderSpec {
    name: "httpreq",
    keys: &["url", "username", "password"],
    parse,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Debug)]
struct Settings {
    url: String,
    username: Option<String>,
    password: Option<SecretSource>,
}

fn parse(k: &mut ProviderKeys<'_>) -> Result<Arc<dyn DnsProvider>, ConfigError> {
    let keys: Keys = k.read()?;
    let url = k.required(
        "url",
        keys.url,
        "expected the base URL that takes /present and /cleanup",
    )?;
    let url = k.base_url("url", url)?;
    // A password without a user name means nothing to basic auth.
    let password = match (keys.password, &keys.username) {
        (p @ Some(_), _) | (p @ None, Some(_)) => Some(k.inline_or_env(p, "EDGE_DNS_PASSWORD")),
        (None, None) => None,
    };
    Ok(Arc::new(Settings {
        url,
        username: keys.username,
        password,
    }))
}

impl DnsProvider for Settings {
    fn name(&self) -> &'static str {
        PROVIDER.name
    }

    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError> {
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), super::secret(p, "httpreq", "password")?)),
            _ => None,
        };
        Ok(Box::new(Httpreq::new(self.url.clone(), auth)?))
    }
}

pub struct Httpreq {
    url: String,
    auth: Option<(String, Secret)>,
    http: reqwest::Client,
}

fn api(message: String) -> DnsError {
    DnsError::Api {
        provider: "httpreq",
        message,
    }
}

impl Httpreq {
    pub fn new(url: String, auth: Option<(String, Secret)>) -> Result<Httpreq, DnsError> {
        let http = crate::acme::http::client(std::time::Duration::from_secs(30))
            .map_err(|e| api(e.to_string()))?;
        Ok(Httpreq { url, auth, http })
    }

    async fn post(&self, action: &str, r: &TxtRecord) -> Result<(), DnsError> {
        let url = format!("{}/{action}", self.url);
        let mut req = self
            .http
            .post(&url)
            .json(&json!({"fqdn": format!("{}.", r.fqdn), "value": r.value}));
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, Some(&pass.0));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| api(format!("POST {url}: {}", crate::acme::error_chain(&e))))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
                " (check dns.username and the password)"
            } else {
                ""
            };
            return Err(api(format!(
                "POST {url} answered {status}{hint}: {}",
                body.trim()
            )));
        }
        Ok(())
    }
}

impl Publisher for Httpreq {
    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            for r in records {
                self.post("present", r).await?;
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
            let mut first = None;
            for r in records {
                if let Err(e) = self.post("cleanup", r).await {
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), Err)
        })
    }
}
