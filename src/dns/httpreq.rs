//! `provider = "httpreq"`: lego's httpreq convention, for people with their own
//! DNS tooling. `POST <url>/present` and `POST <url>/cleanup` with
//! `{"fqdn": "_acme-challenge.example.org.", "value": "..."}`, optional basic auth.

use serde_json::json;

use super::{BoxFuture, DnsError, Publisher, TxtRecord};
use crate::config::Secret;

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
        let http = crate::acme::http::client(None, std::time::Duration::from_secs(30))
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
    fn present<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            for r in records {
                self.post("present", r).await?;
            }
            Ok(())
        })
    }

    fn cleanup<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
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
