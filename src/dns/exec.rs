//! `provider = "exec"`: a user's hook script, with certbot's manual-hook environment.
//!
//! The hook is run once per record. Present gets `CERTBOT_DOMAIN`,
//! `CERTBOT_VALIDATION`, `CERTBOT_REMAINING_CHALLENGES`, `CERTBOT_ALL_DOMAINS`
//! exactly as certbot's `--manual-auth-hook`; cleanup additionally gets
//! `CERTBOT_AUTH_OUTPUT` (what present printed), which is how certbot hook
//! scripts tell cleanup from present, so existing scripts work unchanged. The
//! `EDGE_*` variables and the arguments `present|cleanup FQDN. VALUE` (lego's exec
//! convention) say the same for scripts written for edge.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use super::{BoxFuture, DnsError, DnsProvider, ProviderSpec, Publisher, TxtRecord};
use crate::check::Report;
use crate::config::{ConfigError, ProviderKeys, Site};
use crate::ui::Ui;

pub static PROVIDER: ProviderSpec = ProviderSpec {
    name: "exec",
    keys: &["command"],
    parse,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    command: Option<String>,
}

#[derive(Debug)]
struct Settings {
    command: PathBuf,
}

fn parse(k: &mut ProviderKeys<'_>) -> Result<Arc<dyn DnsProvider>, ConfigError> {
    let keys: Keys = k.read()?;
    let command = k.required(
        "command",
        keys.command,
        "provider \"exec\" needs the path of the hook script",
    )?;
    Ok(Arc::new(Settings {
        command: PathBuf::from(command),
    }))
}

impl DnsProvider for Settings {
    fn name(&self) -> &'static str {
        PROVIDER.name
    }

    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError> {
        Ok(Box::new(Exec::new(self.command.clone())))
    }

    fn check(&self, _sites: &[Site], report: &mut Report) {
        crate::check::executable(&self.command, "dns.command", report);
    }
}

/// A hook that hangs must not hang the renewal forever.
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Exec {
    command: PathBuf,
    /// Present's stdout per record, handed to cleanup as certbot does.
    outputs: Mutex<HashMap<(String, String), String>>,
}

impl Exec {
    pub fn new(command: PathBuf) -> Exec {
        Exec {
            command,
            outputs: Mutex::new(HashMap::new()),
        }
    }

    async fn run(
        &self,
        action: &'static str,
        r: &TxtRecord,
        remaining: usize,
        all: &str,
    ) -> Result<String, DnsError> {
        let base = r.domain.strip_prefix("*.").unwrap_or(&r.domain);
        let mut cmd = Command::new(&self.command);
        cmd.arg(action)
            .arg(format!("{}.", r.fqdn))
            .arg(&r.value)
            .env("CERTBOT_DOMAIN", base)
            .env("CERTBOT_VALIDATION", &r.value)
            .env("CERTBOT_TOKEN", "")
            .env("CERTBOT_REMAINING_CHALLENGES", remaining.to_string())
            .env("CERTBOT_ALL_DOMAINS", all)
            .env("EDGE_ACTION", action)
            .env("EDGE_DOMAIN", &r.domain)
            .env("EDGE_FQDN", format!("{}.", r.fqdn))
            .env("EDGE_VALIDATION", &r.value)
            .env("EDGE_REMAINING_CHALLENGES", remaining.to_string())
            .env("EDGE_ALL_DOMAINS", all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if action == "cleanup" {
            let key = (r.fqdn.clone(), r.value.clone());
            let out = self
                .outputs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key)
                .unwrap_or_default();
            cmd.env("CERTBOT_AUTH_OUTPUT", out);
        }
        let err = |outcome: String, stderr: String| DnsError::Hook {
            command: self.command.display().to_string(),
            action,
            fqdn: r.fqdn.clone(),
            outcome,
            stderr,
        };
        let child = cmd
            .spawn()
            .map_err(|e| err(format!("could not be started: {e}"), String::new()))?;
        let out = match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(err(format!("failed: {e}"), String::new())),
            Err(_) => {
                return Err(err(
                    format!(
                        "did not finish within {}s and was killed",
                        HOOK_TIMEOUT.as_secs()
                    ),
                    String::new(),
                ))
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let stderr = if stderr.is_empty() {
                String::new()
            } else {
                format!("; its stderr: {stderr}")
            };
            let code = out
                .status
                .code()
                .map(|c| format!("exited with status {c}"))
                .unwrap_or_else(|| "was killed by a signal".into());
            return Err(err(code, stderr));
        }
        Ok(stdout)
    }
}

impl Publisher for Exec {
    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let all = all_domains(records);
            for (i, r) in records.iter().enumerate() {
                let out = self.run("present", r, records.len() - i - 1, &all).await?;
                self.outputs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((r.fqdn.clone(), r.value.clone()), out);
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
            let all = all_domains(records);
            let mut first_err = None;
            // Every record is cleaned even if one cleanup fails.
            for (i, r) in records.iter().enumerate() {
                if let Err(e) = self.run("cleanup", r, records.len() - i - 1, &all).await {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }
}

fn all_domains(records: &[TxtRecord]) -> String {
    let mut v: Vec<&str> = records.iter().map(|r| r.domain.as_str()).collect();
    v.dedup();
    v.join(",")
}
