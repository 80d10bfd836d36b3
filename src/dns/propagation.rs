//! Waiting until the TXT records are visible before the CA is asked to look.
//!
//! Asking the CA too early fails the authorization and burns a rate-limit slot,
//! so edge first sees every value itself: at the configured `resolvers`, or else
//! at every authoritative server of the zone (found through NS records), which is
//! where the CA's resolvers will get the answer from. Polls run at once and then
//! every two seconds; each poll uses a fresh resolver so no cache hides a change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Resolver, TokioResolver};

use super::{DnsError, TxtRecord};
use crate::config::Dns;
use crate::ui::Ui;

const POLL_INTERVAL: Duration = Duration::from_secs(2);

fn resolver_for(addr: SocketAddr, recursion: bool) -> TokioResolver {
    let mut group = NameServerConfigGroup::new();
    group.push(NameServerConfig::new(addr, Protocol::Udp));
    group.push(NameServerConfig::new(addr, Protocol::Tcp));
    let cfg = ResolverConfig::from_parts(None, vec![], group);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    opts.recursion_desired = recursion;
    opts.cache_size = 1;
    Resolver::builder_with_config(cfg, TokioConnectionProvider::default())
        .with_options(opts)
        .build()
}

/// The TXT strings one server returns for one name (empty when it has none).
pub async fn query_txt(
    server: SocketAddr,
    name: &str,
    recursion: bool,
) -> Result<Vec<String>, String> {
    let r = resolver_for(server, recursion);
    match r.txt_lookup(format!("{name}.")).await {
        Ok(l) => Ok(l
            .iter()
            .map(|t| {
                t.txt_data()
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>()
            })
            .collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// The system's resolver; its configuration (`/etc/resolv.conf`) is read on
/// the blocking pool.
async fn system_resolver() -> Result<TokioResolver, String> {
    tokio::task::spawn_blocking(|| {
        Resolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Where `_acme-challenge.<name>` really lives: the end of its CNAME chain, if
/// it has one. Delegating the challenge name with a CNAME is how people keep
/// DNS credentials narrow; every publisher writes at the target.
pub async fn follow_cname(name: &str, resolvers: &[SocketAddr]) -> String {
    use hickory_resolver::proto::rr::{RData, RecordType};
    let resolver = match resolvers.first() {
        Some(addr) => resolver_for(*addr, true),
        None => match system_resolver().await {
            Ok(r) => r,
            Err(_) => return name.to_string(),
        },
    };
    let mut current = name.trim_end_matches('.').to_string();
    for _ in 0..8 {
        let Ok(answer) = resolver
            .lookup(format!("{current}."), RecordType::CNAME)
            .await
        else {
            break;
        };
        let next = answer.iter().find_map(|r| match r {
            RData::CNAME(c) => Some(c.0.to_utf8().trim_end_matches('.').to_string()),
            _ => None,
        });
        match next {
            Some(n) if n != current => {
                tracing::info!(from = %current, to = %n, "challenge name is a CNAME; publishing at its target");
                current = n;
            }
            _ => break,
        }
    }
    current
}

/// The servers to ask about `name`: its zone's authoritative servers.
async fn authoritative_servers(name: &str) -> Result<Vec<SocketAddr>, DnsError> {
    let system = system_resolver()
        .await
        .map_err(|e| DnsError::Lookup(format!("no system resolver: {e}")))?;
    let mut candidate = name.trim_end_matches('.');
    loop {
        if let Ok(ns) = system.ns_lookup(format!("{candidate}.")).await {
            let mut servers = Vec::new();
            for n in ns.iter() {
                if let Ok(ips) = system.lookup_ip(n.0.to_utf8()).await {
                    servers.extend(ips.iter().map(|ip| SocketAddr::new(ip, 53)));
                }
            }
            if !servers.is_empty() {
                tracing::info!(zone = candidate, servers = ?servers, "checking propagation at the zone's authoritative servers");
                return Ok(servers);
            }
        }
        match candidate.split_once('.') {
            Some((_, parent)) if parent.contains('.') => candidate = parent,
            _ => {
                return Err(DnsError::Lookup(format!(
                    "found no authoritative name servers for {name}; set dns.resolvers to the servers to check"
                )))
            }
        }
    }
}

/// The TXT values at `fqdn` as each server it would be checked at has
/// them now (one look, no waiting); `None` when a server cannot be asked.
pub async fn txt_everywhere(fqdn: &str, cfg: &Dns) -> Option<Vec<Vec<String>>> {
    let (list, recursion) = if cfg.resolvers.is_empty() {
        (authoritative_servers(fqdn).await.ok()?, false)
    } else {
        (cfg.resolvers.clone(), true)
    };
    let mut out = Vec::with_capacity(list.len());
    for server in list {
        out.push(query_txt(server, fqdn, recursion).await.ok()?);
    }
    Some(out)
}

/// Waits until every record is visible at every server, up to the timeout.
pub async fn wait(records: &[TxtRecord], cfg: &Dns, ui: &Ui) -> Result<(), DnsError> {
    if !cfg.propagation_delay.is_zero() {
        ui.step(&format!(
            "Waiting {} before checking DNS (dns.propagation_delay)",
            humantime::format_duration(cfg.propagation_delay)
        ));
        tokio::time::sleep(cfg.propagation_delay).await;
    }
    let mut expected: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in records {
        expected
            .entry(r.fqdn.as_str())
            .or_default()
            .insert(r.value.as_str());
    }
    let mut servers: BTreeMap<&str, (Vec<SocketAddr>, bool)> = BTreeMap::new();
    for name in expected.keys() {
        let list = if cfg.resolvers.is_empty() {
            (authoritative_servers(name).await?, false)
        } else {
            (cfg.resolvers.clone(), true)
        };
        servers.insert(name, list);
    }
    let start = Instant::now();
    let spinner = ui.spinner("Waiting for the TXT record(s) to be visible in DNS");
    let mut last_seen: BTreeMap<(String, SocketAddr), String> = BTreeMap::new();
    loop {
        let mut pending = 0;
        for (name, want) in &expected {
            let (list, recursion) = &servers[name];
            for server in list {
                let seen = query_txt(*server, name, *recursion).await;
                let ok = matches!(&seen, Ok(v) if want.iter().all(|w| v.iter().any(|x| x == w)));
                let shown = match &seen {
                    Ok(v) if v.is_empty() => "no TXT record".to_string(),
                    Ok(v) => format!("{v:?}"),
                    Err(e) => format!("error: {e}"),
                };
                let key = (name.to_string(), *server);
                if last_seen.get(&key) != Some(&shown) {
                    tracing::info!(name = %name, server = %server, answer = %shown, visible = ok, "propagation check");
                    last_seen.insert(key, shown);
                }
                if !ok {
                    pending += 1;
                }
            }
        }
        if pending == 0 {
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            ui.step(&format!(
                "TXT record(s) visible at every checked server after {:.1}s",
                start.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if start.elapsed() >= cfg.propagation_timeout {
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            let detail = last_seen
                .iter()
                .map(|((n, s), a)| format!("{s} answered {a} for {n}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(DnsError::NotPropagated {
                timeout: humantime::format_duration(cfg.propagation_timeout).to_string(),
                detail: format!(
                    "{detail} (expected {})",
                    expected
                        .values()
                        .flatten()
                        .map(|v| format!("{v:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let left = cfg.propagation_timeout.saturating_sub(start.elapsed());
        tokio::time::sleep(POLL_INTERVAL.min(left)).await;
    }
}
