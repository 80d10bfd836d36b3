//! `provider = "cloudflare"`: TXT records through Cloudflare's v4 API with a
//! scoped API token (Zone.DNS edit). The zone is found by name, walking up from
//! the record; cleanup deletes exactly the records this run created.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{BoxFuture, DnsError, DnsProvider, ProviderSpec, Publisher, TxtRecord};
use crate::config::{ConfigError, ProviderKeys, Secret, SecretSource};
use crate::ui::Ui;

pub static PROVIDER: ProviderSpec = ProviderSpec {
    name: "cloudflare",
    keys: &["api_token", "api_token_file", "api_url"],
    parse,
};

/// `api_url` when not set.
pub const API: &str = "https://api.cloudflare.com/client/v4";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    api_token: Option<String>,
    api_token_file: Option<String>,
    api_url: Option<String>,
}

#[derive(Debug)]
struct Settings {
    token: SecretSource,
    api_url: String,
}

fn parse(k: &mut ProviderKeys<'_>) -> Result<Arc<dyn DnsProvider>, ConfigError> {
    let keys: Keys = k.read()?;
    let token = k.secret(
        "api_token",
        keys.api_token,
        keys.api_token_file,
        "EDGE_DNS_API_TOKEN",
    )?;
    let api_url = keys.api_url.unwrap_or_else(|| API.to_string());
    Ok(Arc::new(Settings {
        token,
        api_url: k.base_url("api_url", api_url)?,
    }))
}

impl DnsProvider for Settings {
    fn name(&self) -> &'static str {
        PROVIDER.name
    }

    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError> {
        let token = super::secret(&self.token, "cloudflare", "API token")?;
        Ok(Box::new(Cloudflare::new(self.api_url.clone(), token)?))
    }
}

pub struct Cloudflare {
    api: String,
    token: Secret,
    http: reqwest::Client,
    /// (fqdn, value) -> (zone id, record id), for cleanup.
    created: Mutex<HashMap<(String, String), (String, String)>>,
    /// fqdn -> zone id: apex and wildcard share a name, so one lookup serves both.
    zones: Mutex<HashMap<String, String>>,
}

fn api(message: String) -> DnsError {
    DnsError::Api {
        provider: "cloudflare",
        message,
    }
}

impl Cloudflare {
    pub fn new(api_url: String, token: Secret) -> Result<Cloudflare, DnsError> {
        let http = crate::acme::http::client(std::time::Duration::from_secs(30))
            .map_err(|e| api(e.to_string()))?;
        Ok(Cloudflare {
            api: api_url,
            token,
            http,
            created: Mutex::new(HashMap::new()),
            zones: Mutex::new(HashMap::new()),
        })
    }

    /// One API call; Cloudflare's `errors` become the message.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DnsError> {
        let url = format!("{}{path}", self.api);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token.0);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| api(format!("{method} {url}: {}", crate::acme::error_chain(&e))))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() && v["success"].as_bool().unwrap_or(false) {
            return Ok(v["result"].clone());
        }
        let errors: Vec<String> = v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{} (code {})",
                            e["message"].as_str().unwrap_or("?"),
                            e["code"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let hint = if status == reqwest::StatusCode::FORBIDDEN
            || status == reqwest::StatusCode::UNAUTHORIZED
        {
            "; the API token needs Zone.DNS edit permission on this zone"
        } else {
            ""
        };
        Err(api(format!(
            "{method} {path} answered {status}: {}{hint}",
            errors.join("; ")
        )))
    }

    /// The zone holding `fqdn`: the longest suffix Cloudflare knows, below the TLD.
    async fn zone_id(&self, fqdn: &str) -> Result<String, DnsError> {
        if let Some(id) = self
            .zones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fqdn)
        {
            return Ok(id.clone());
        }
        let labels: Vec<&str> = fqdn.split('.').collect();
        for i in 1..labels.len().saturating_sub(1) {
            let candidate = labels[i..].join(".");
            let found = self
                .call(
                    reqwest::Method::GET,
                    &format!("/zones?name={candidate}"),
                    None,
                )
                .await?;
            if let Some(id) = found
                .as_array()
                .and_then(|a| a.first())
                .and_then(|z| z["id"].as_str())
            {
                self.zones
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fqdn.to_string(), id.to_string());
                return Ok(id.to_string());
            }
        }
        Err(api(format!(
            "no zone in this Cloudflare account holds {fqdn}; check the token's zone access"
        )))
    }
}

impl Publisher for Cloudflare {
    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            for r in records {
                let zone = self.zone_id(&r.fqdn).await?;
                let rec = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/zones/{zone}/dns_records"),
                        Some(
                            json!({"type": "TXT", "name": r.fqdn, "content": r.value, "ttl": 120}),
                        ),
                    )
                    .await?;
                let id = rec["id"]
                    .as_str()
                    .ok_or_else(|| api("the API returned no record id".into()))?
                    .to_string();
                self.created
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((r.fqdn.clone(), r.value.clone()), (zone, id));
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
                let entry = self
                    .created
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(r.fqdn.clone(), r.value.clone()));
                if let Some((zone, id)) = entry {
                    if let Err(e) = self
                        .call(
                            reqwest::Method::DELETE,
                            &format!("/zones/{zone}/dns_records/{id}"),
                            None,
                        )
                        .await
                    {
                        first.get_or_insert(e);
                    }
                }
            }
            first.map_or(Ok(()), Err)
        })
    }
}
