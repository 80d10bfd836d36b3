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
    match Store::open_for(cfg).await {
        Ok(store) => {
            if let Some(c) = store.backend().cluster() {
                cluster(c, &mut r).await;
            }
            certs(cfg, &store, &mut r).await;
            store.backend().close().await;
        }
        Err(e) if cfg.cluster.is_some() => r.problems.push(e.to_string()),
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

/// The fleet's store: each endpoint, the quorum, and whether this node's
/// key-encryption key opens every sealed value.
async fn cluster(c: &crate::store::cluster::Cluster, r: &mut Report) {
    let p = c.probe().await;
    let mut reachable = 0;
    for (ep, res) in &p.endpoints {
        match res {
            Ok(s) => {
                reachable += 1;
                r.notes
                    .push(format!("cluster.endpoints {ep}: reachable, {s}"));
            }
            Err(e) => r
                .problems
                .push(format!("cluster.endpoints {ep}: not reachable: {e}")),
        }
    }
    match &p.quorum {
        Ok(n) => r.notes.push(format!(
            "cluster: etcd answers through a quorum ({reachable} of {} endpoints reachable); {n} values under the prefix, node {:?}",
            p.endpoints.len(),
            c.node()
        )),
        Err(e) => r.problems.push(format!(
            "cluster: etcd does not answer through a quorum ({reachable} of {} endpoints reachable): {e}; nodes keep serving their local copies and renewals wait until it does",
            p.endpoints.len()
        )),
    }
    if p.quorum.is_ok() {
        if p.unopened.is_empty() {
            r.notes.push(format!(
                "cluster.key_encryption_key_file: opens all {} sealed values",
                p.sealed
            ));
        } else {
            r.problems.push(format!(
                "cluster.key_encryption_key_file: does not open {} of {} sealed values (first: {}); copy the fleet's key file to this node",
                p.unopened.len(),
                p.sealed,
                p.unopened[0]
            ));
        }
    }
    for k in &p.plain_keys {
        r.problems.push(format!(
            "cluster: {k} holds a private key unsealed in etcd; delete it (edge never writes one)"
        ));
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
