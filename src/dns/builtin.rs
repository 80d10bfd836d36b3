//! `provider = "builtin"`: edge answers DNS itself (UDP and TCP) for one zone
//! delegated to this host, the acme-dns idea built in.
//!
//! For every certificate name edge derives a stable label in that zone; the
//! person creates, once, `_acme-challenge.<name>. CNAME <label>.<zone>.` and
//! every renewal after that is unattended with no DNS credentials on the host.
//! The responder answers SOA and NS for its zone, TXT for the labels being
//! validated (and for challenge names that already lie inside the zone),
//! NXDOMAIN for other names in the zone and REFUSED outside it. It never
//! recurses. Its sockets belong to the publisher: the certificate manager
//! binds them when `edge serve` starts and keeps them until it stops, so the
//! daemon holds the port and concurrent orders share it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use super::{BoxFuture, DnsError, DnsProvider, ProviderSpec, Publisher, TxtRecord};
use crate::check::Report;
use crate::config::{ConfigError, ProviderKeys, Site};
use crate::names;
use crate::ui::Ui;

pub static PROVIDER: ProviderSpec = ProviderSpec {
    name: "builtin",
    keys: &["listen", "zone"],
    parse,
};

/// `listen` when not set.
const DEFAULT_LISTEN: &str = "0.0.0.0:53";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    listen: Option<String>,
    zone: Option<String>,
}

#[derive(Debug)]
struct Settings {
    listen: SocketAddr,
    zone: String,
}

fn parse(k: &mut ProviderKeys<'_>) -> Result<Arc<dyn DnsProvider>, ConfigError> {
    let keys: Keys = k.read()?;
    let listen = k.addr("listen", keys.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
    let zone = k.required(
        "zone",
        keys.zone,
        "expected the zone delegated to this host, e.g. \"acme.example.org\"",
    )?;
    let zone = names::validate_domain(&zone).map_err(|m| k.err("zone", m))?;
    if zone.starts_with("*.") {
        return Err(k.err("zone", "a zone cannot be a wildcard"));
    }
    Ok(Arc::new(Settings { listen, zone }))
}

impl DnsProvider for Settings {
    fn name(&self) -> &'static str {
        PROVIDER.name
    }

    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError> {
        Ok(Box::new(Builtin::new(self.listen, self.zone.clone())?))
    }

    fn serves_records(&self) -> bool {
        true
    }

    fn check(&self, sites: &[Site], report: &mut Report) {
        let mut seen = std::collections::BTreeSet::new();
        for site in sites {
            for d in &site.domains {
                let line = cname_instruction(d, &self.zone);
                if seen.insert(line.clone()) {
                    report.notes.push(format!(
                        "dns.provider = \"builtin\": this CNAME must exist (once): {line}"
                    ));
                }
            }
        }
    }
}

/// The label `_acme-challenge.<name>` is delegated to, stable across runs and
/// hosts: apex and wildcard share it, as they share the challenge name.
pub fn label_for(domain: &str) -> String {
    let base = domain
        .strip_prefix("*.")
        .unwrap_or(domain)
        .to_ascii_lowercase();
    let digest = Sha256::digest(base.as_bytes());
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("edge-{hex}")
}

/// The CNAME a person creates for `domain`, as a zone-file line.
pub fn cname_instruction(domain: &str, zone: &str) -> String {
    let base = domain.strip_prefix("*.").unwrap_or(domain);
    format!(
        "_acme-challenge.{base}. CNAME {}.{zone}.",
        label_for(domain)
    )
}

/// What the responder answers from: its zone and the TXT values being validated.
struct Responder {
    zone: Name,
    /// Lower-case fqdn without trailing dot -> TXT values.
    txt: Mutex<HashMap<String, Vec<String>>>,
}

fn api(message: String) -> DnsError {
    DnsError::Api {
        provider: "builtin",
        message,
    }
}

/// The responder's sockets, served until this is dropped.
struct Serving(Vec<JoinHandle<()>>);

impl Drop for Serving {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How long a new responder waits for the one it replaces (a reload) to let
/// go of the port.
const BIND_PATIENCE: Duration = Duration::from_secs(2);

/// Binds with `bind`, trying again while the address is still in use, for
/// up to `BIND_PATIENCE`.
async fn bind_patiently<T, F: std::future::Future<Output = std::io::Result<T>>>(
    mut bind: impl FnMut() -> F,
) -> std::io::Result<T> {
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    loop {
        match bind().await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// Binds UDP and TCP on `listen` and answers from `r` until the tasks are aborted.
async fn serve(listen: SocketAddr, r: Arc<Responder>) -> Result<Serving, DnsError> {
    let udp = bind_patiently(|| UdpSocket::bind(listen))
        .await
        .map_err(|e| api(format!("cannot listen on {listen} (dns.listen): {e}; port 53 needs root or CAP_NET_BIND_SERVICE")))?;
    let tcp = bind_patiently(|| TcpListener::bind(listen))
        .await
        .map_err(|e| api(format!("cannot listen on {listen}/tcp (dns.listen): {e}")))?;
    let ru = r.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            if let Some(answer) = ru.answer(&buf[..n], 512) {
                let _ = udp.send_to(&answer, peer).await;
            }
        }
    });
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let r = r.clone();
            tokio::spawn(async move {
                let serve = async {
                    loop {
                        let mut len = [0u8; 2];
                        s.read_exact(&mut len).await?;
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        s.read_exact(&mut q).await?;
                        let Some(a) = r.answer(&q, 65_535) else {
                            return Ok::<_, std::io::Error>(());
                        };
                        s.write_all(&(a.len() as u16).to_be_bytes()).await?;
                        s.write_all(&a).await?;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), serve).await;
            });
        }
    });
    Ok(Serving(vec![udp_task, tcp_task]))
}

impl Responder {
    /// The wire answer to one query, or `None` for something not worth answering.
    fn answer(&self, query: &[u8], max: usize) -> Option<Vec<u8>> {
        let q = Message::from_bytes(query).ok()?;
        if q.message_type() != MessageType::Query {
            return None;
        }
        let mut a = Message::new();
        a.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(q.op_code())
            .set_recursion_desired(q.recursion_desired())
            .set_recursion_available(false);
        let Some(question) = q.queries().first().cloned() else {
            a.set_response_code(ResponseCode::FormErr);
            return a.to_bytes().ok();
        };
        a.add_query(question.clone());
        if q.op_code() != OpCode::Query {
            a.set_response_code(ResponseCode::NotImp);
            return a.to_bytes().ok();
        }
        let name = question.name().clone();
        if !self.zone.zone_of(&name) {
            // Not ours, and never recursed for anyone.
            a.set_response_code(ResponseCode::Refused);
            return a.to_bytes().ok();
        }
        a.set_authoritative(true);
        let key = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let mut values = self
            .txt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        // In a fleet, what any node is validating: the zone's NS records may
        // name every node, and the CA may ask any of them.
        if let Some(c) = crate::store::cluster::Cluster::current() {
            for v in c.shared_txt(&key) {
                let list = values.get_or_insert_with(Vec::new);
                if !list.contains(&v) {
                    list.push(v);
                }
            }
        }
        let apex = name == self.zone;
        match question.query_type() {
            RecordType::SOA if apex => {
                a.add_answer(self.soa());
            }
            RecordType::NS if apex => {
                let ns = Name::from_ascii(format!("ns.{}", self.zone)).ok()?;
                a.add_answer(Record::from_rdata(
                    self.zone.clone(),
                    300,
                    RData::NS(NS(ns)),
                ));
            }
            RecordType::TXT if values.is_some() => {
                for v in values.unwrap_or_default() {
                    a.add_answer(Record::from_rdata(
                        name.clone(),
                        1,
                        RData::TXT(TXT::new(vec![v])),
                    ));
                }
            }
            _ if apex || values.is_some() => {
                // The name exists, with no data of this type.
                a.add_name_server(self.soa());
            }
            _ => {
                a.set_response_code(ResponseCode::NXDomain);
                a.add_name_server(self.soa());
            }
        }
        let bytes = a.to_bytes().ok()?;
        if bytes.len() > max {
            a.take_answers();
            a.set_truncated(true);
            return a.to_bytes().ok();
        }
        Some(bytes)
    }

    fn soa(&self) -> Record {
        let serial = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let mname =
            Name::from_ascii(format!("ns.{}", self.zone)).unwrap_or_else(|_| self.zone.clone());
        let rname = Name::from_ascii(format!("hostmaster.{}", self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        Record::from_rdata(
            self.zone.clone(),
            60,
            RData::SOA(SOA::new(mname, rname, serial, 60, 60, 600, 1)),
        )
    }
}

/// The built-in zone's publisher: its records live in memory and are
/// answered from its own sockets, bound by `start` and closed when it is
/// dropped. Its owner (the certificate manager in `edge serve`, the command
/// otherwise) keeps one for as long as it may order.
pub struct Builtin {
    listen: SocketAddr,
    zone: String,
    responder: Arc<Responder>,
    serving: tokio::sync::Mutex<Option<Serving>>,
}

impl Builtin {
    pub fn new(listen: SocketAddr, zone: String) -> Result<Builtin, DnsError> {
        let zone_name =
            Name::from_ascii(format!("{zone}.")).map_err(|e| api(format!("zone {zone:?}: {e}")))?;
        Ok(Builtin {
            listen,
            zone,
            responder: Arc::new(Responder {
                zone: zone_name,
                txt: Mutex::new(HashMap::new()),
            }),
            serving: tokio::sync::Mutex::new(None),
        })
    }

    fn in_zone(&self, fqdn: &str) -> bool {
        fqdn == self.zone || fqdn.ends_with(&format!(".{}", self.zone))
    }
}

impl Publisher for Builtin {
    fn start(&self) -> BoxFuture<'_, Result<(), DnsError>> {
        Box::pin(async move {
            let mut serving = self.serving.lock().await;
            if serving.is_none() {
                *serving = Some(serve(self.listen, self.responder.clone()).await?);
                tracing::info!(listen = %self.listen, zone = %self.zone, "built-in DNS responder listening");
            }
            Ok(())
        })
    }

    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            // The challenge name must lead into our zone (its CNAME was followed already).
            let missing: Vec<String> = records
                .iter()
                .filter(|r| !self.in_zone(&r.fqdn.to_ascii_lowercase()))
                .map(|r| cname_instruction(&r.domain, &self.zone))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if !missing.is_empty() {
                return Err(api(format!(
                    "the challenge name is not delegated to this host yet. Create, once, in your DNS:\n  {}\nthen run this again (every renewal after that is unattended)",
                    missing.join("\n  ")
                )));
            }
            self.start().await?;
            let mut m = self.responder.txt.lock().unwrap_or_else(|p| p.into_inner());
            for rec in records {
                m.entry(rec.fqdn.to_ascii_lowercase())
                    .or_default()
                    .push(rec.value.clone());
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
            let mut m = self.responder.txt.lock().unwrap_or_else(|p| p.into_inner());
            for rec in records {
                let key = rec.fqdn.to_ascii_lowercase();
                if let Some(v) = m.get_mut(&key) {
                    v.retain(|x| *x != rec.value);
                    if v.is_empty() {
                        m.remove(&key);
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable_and_shared_by_apex_and_wildcard() {
        assert_eq!(
            label_for("Flask.Ashna.Online"),
            label_for("*.flask.ashna.online")
        );
        assert_ne!(label_for("a.example.org"), label_for("b.example.org"));
        assert_eq!(
            cname_instruction("flask.ashna.online", "acme.example.org"),
            format!(
                "_acme-challenge.flask.ashna.online. CNAME {}.acme.example.org.",
                label_for("flask.ashna.online")
            )
        );
    }
}
