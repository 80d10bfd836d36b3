//! `provider = "pebble-challtestsrv"`: Pebble's test DNS server, for tests and
//! local runs. Its `/set-txt` appends a value, so apex and wildcard coexist.

use serde_json::json;

use super::{BoxFuture, DnsError, Publisher, TxtRecord};

pub struct Challtestsrv {
    url: String,
    http: reqwest::Client,
}

impl Challtestsrv {
    pub fn new(url: String) -> Result<Challtestsrv, DnsError> {
        let http =
            crate::acme::http::client(None, std::time::Duration::from_secs(10)).map_err(|e| {
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
    fn present<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
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

    fn cleanup<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
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
