//! `provider = "builtin"`: edge answers DNS itself (UDP and TCP) for one zone
//! delegated to this host, the acme-dns idea built in.
//!
//! For every certificate name edge derives a stable label in that zone; the
//! person creates, once, `_acme-challenge.<name>. CNAME <label>.<zone>.` and
//! every renewal after that is unattended with no DNS credentials on the host.
//! The responder answers SOA and NS for its zone, TXT for the labels being
//! validated (and for challenge names that already lie inside the zone),
//! NXDOMAIN for other names in the zone and REFUSED outside it. It never
//! recurses. One responder per listen address lives for the whole process, so
//! the daemon holds the port and concurrent orders share it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::{BoxFuture, DnsError, Publisher, TxtRecord};

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

struct Responder {
    zone: Name,
    /// Lower-case fqdn without trailing dot -> TXT values.
    txt: Mutex<HashMap<String, Vec<String>>>,
}

fn registry() -> &'static Mutex<HashMap<SocketAddr, Arc<Responder>>> {
    static R: OnceLock<Mutex<HashMap<SocketAddr, Arc<Responder>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn api(message: String) -> DnsError {
    DnsError::Api {
        provider: "builtin",
        message,
    }
}

/// Starts (once per address) the responder for `zone`.
async fn responder(listen: SocketAddr, zone: &str) -> Result<Arc<Responder>, DnsError> {
    if let Some(r) = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&listen)
    {
        return Ok(r.clone());
    }
    let zone_name =
        Name::from_ascii(format!("{zone}.")).map_err(|e| api(format!("zone {zone:?}: {e}")))?;
    let udp = UdpSocket::bind(listen)
        .await
        .map_err(|e| api(format!("cannot listen on {listen} (dns.listen): {e}; port 53 needs root or CAP_NET_BIND_SERVICE")))?;
    let tcp = TcpListener::bind(listen)
        .await
        .map_err(|e| api(format!("cannot listen on {listen}/tcp (dns.listen): {e}")))?;
    let r = Arc::new(Responder {
        zone: zone_name,
        txt: Mutex::new(HashMap::new()),
    });
    let (ru, rt) = (r.clone(), r.clone());
    tokio::spawn(async move {
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
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let r = rt.clone();
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
    tracing::info!(%listen, zone, "built-in DNS responder listening");
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(listen, r.clone());
    Ok(r)
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
        let values = self
            .txt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
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

pub struct Builtin {
    listen: SocketAddr,
    zone: String,
}

impl Builtin {
    pub fn new(listen: SocketAddr, zone: String) -> Builtin {
        Builtin { listen, zone }
    }

    fn in_zone(&self, fqdn: &str) -> bool {
        fqdn == self.zone || fqdn.ends_with(&format!(".{}", self.zone))
    }
}

impl Publisher for Builtin {
    fn present<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
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
            let r = responder(self.listen, &self.zone).await?;
            let mut m = r.txt.lock().unwrap_or_else(|p| p.into_inner());
            for rec in records {
                m.entry(rec.fqdn.to_ascii_lowercase())
                    .or_default()
                    .push(rec.value.clone());
            }
            Ok(())
        })
    }

    fn cleanup<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            if let Some(r) = registry()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&self.listen)
            {
                let mut m = r.txt.lock().unwrap_or_else(|p| p.into_inner());
                for rec in records {
                    let key = rec.fqdn.to_ascii_lowercase();
                    if let Some(v) = m.get_mut(&key) {
                        v.retain(|x| *x != rec.value);
                        if v.is_empty() {
                            m.remove(&key);
                        }
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
