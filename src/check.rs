//! `edge check`: everything that can be verified without serving.
//!
//! The config has already been validated when this runs; this adds the checks
//! that need I/O: files the config names, stored certificates, and whether each
//! upstream accepts a TCP connection. Each finding is one line a person can act on.

use std::time::Duration;

use crate::config::Config;
use crate::names;
use crate::store::Store;

#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

pub async fn run(cfg: &Config) -> Report {
    let mut r = Report::default();
    match Store::open(&cfg.state_dir).await {
        Ok(store) => certs(cfg, &store, &mut r).await,
        Err(e) => r.problems.push(format!("state_dir: {e}")),
    }
    if let Some(ca) = &cfg.acme.ca_bundle {
        match std::fs::read(ca) {
            Ok(b) if crate::certinfo::parse_chain(&b).is_ok() => {}
            Ok(_) => r.problems.push(format!(
                "acme.ca_bundle: {} holds no PEM certificate",
                ca.display()
            )),
            Err(e) => r
                .problems
                .push(format!("acme.ca_bundle: {}: {e}", ca.display())),
        }
    }
    if let Some(hook) = &cfg.acme.deploy_hook {
        executable(hook, "acme.deploy_hook", &mut r);
    }
    cfg.dns.provider.check(&cfg.sites, &mut r);
    for (i, site) in cfg.sites.iter().enumerate() {
        for (status, path) in &site.error_pages {
            if let Err(e) = std::fs::metadata(path) {
                r.problems.push(format!(
                    "site[{i}].error_pages.{status}: {}: {e}",
                    path.display()
                ));
            }
        }
        for up in &site.upstreams {
            let addr = up.addr.clone();
            let res = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await;
            match res {
                Ok(Ok(_)) => r
                    .notes
                    .push(format!("site[{i}] upstream {addr}: reachable")),
                Ok(Err(e)) => r
                    .problems
                    .push(format!("site[{i}].upstreams: {addr} is not reachable: {e}")),
                Err(_) => r.problems.push(format!(
                    "site[{i}].upstreams: {addr} did not accept a connection within 3s"
                )),
            }
        }
    }
    r
}

/// A problem unless `path` is a file someone may execute.
pub(crate) fn executable(path: &std::path::Path, key: &str, r: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        Ok(_) => r.problems.push(format!(
            "{key}: {} is not an executable file (chmod +x?)",
            path.display()
        )),
        Err(e) => r.problems.push(format!("{key}: {}: {e}", path.display())),
    }
}

async fn certs(cfg: &Config, store: &Store, r: &mut Report) {
    let now = crate::clock::now();
    for site in &cfg.sites {
        let name = site.cert_name();
        match store.load_live(&name).await {
            Err(e) if e.is_not_found() => {
                r.notes.push(format!("certificate {name}: none stored yet; `edge obtain --domain {}` or `edge serve` will get one (a placeholder is served until then)", site.domains.join(" --domain ")));
            }
            Err(e) => r.problems.push(e.to_string()),
            Ok(c) if c.info.expired(now) => r.problems.push(format!(
                "certificate {name}: expired at {}",
                crate::certinfo::rfc3339(c.info.not_after)
            )),
            Ok(c) => {
                let missing: Vec<_> = site
                    .domains
                    .iter()
                    .filter(|d| !c.info.names.iter().any(|n| names::covers(n, d)))
                    .collect();
                if missing.is_empty() {
                    r.notes.push(format!(
                        "certificate {name}: valid until {}",
                        crate::certinfo::rfc3339(c.info.not_after)
                    ));
                } else {
                    r.problems.push(format!("certificate {name}: does not cover {missing:?}; run `edge renew --force --domain {name}`"));
                }
            }
        }
    }
}
