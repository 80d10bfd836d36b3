//! `provider = "rfc2136"`: DNS UPDATE (RFC 2136) signed with TSIG (RFC 8945),
//! sent over TCP to the zone's primary server. Adding appends a value (apex and
//! wildcard share a name); cleanup deletes exactly the values edge added. Errors
//! say the server's answer in words, including the TSIG error (BADSIG, BADKEY,
//! BADTIME) that tells a wrong secret from a wrong key name or a skewed clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::rdata::{DNSSECRData, TSIG};
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{update_message, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{BoxFuture, DnsError, DnsProvider, ProviderSpec, Publisher, TxtRecord};
use crate::config::{ConfigError, ProviderKeys, Secret, SecretSource};
use crate::names;
use crate::ui::Ui;

pub static PROVIDER: ProviderSpec = ProviderSpec {
    name: "rfc2136",
    keys: &[
        "server",
        "zone",
        "tsig_key",
        "tsig_secret",
        "tsig_secret_file",
        "tsig_algorithm",
        "ttl",
    ],
    parse,
};

/// `ttl` when not set: short, so a wrong value is corrected quickly.
const DEFAULT_TTL: u32 = 60;
/// `tsig_algorithm` when not set.
const DEFAULT_ALGORITHM: &str = "hmac-sha256";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    server: Option<String>,
    zone: Option<String>,
    tsig_key: Option<String>,
    tsig_secret: Option<String>,
    tsig_secret_file: Option<String>,
    tsig_algorithm: Option<String>,
    ttl: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlg {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

#[derive(Debug)]
struct Settings {
    server: SocketAddr,
    /// Found by SOA at `server` when not given.
    zone: Option<String>,
    tsig_key: String,
    tsig_secret: SecretSource,
    tsig_algorithm: TsigAlg,
    ttl: u32,
}

fn parse(k: &mut ProviderKeys<'_>) -> Result<Arc<dyn DnsProvider>, ConfigError> {
    let keys: Keys = k.read()?;
    let server = k.required(
        "server",
        keys.server,
        "expected the primary server's IP or IP:PORT, e.g. \"192.0.2.53\"",
    )?;
    let server = k.dns_server("server", &server, "192.0.2.53")?;
    let zone = match keys.zone {
        Some(z) => Some(names::validate_domain(&z).map_err(|m| k.err("zone", m))?),
        None => None,
    };
    let tsig_key = k.required(
        "tsig_key",
        keys.tsig_key,
        "expected the TSIG key name the server knows, e.g. \"edge-key\"",
    )?;
    let tsig_secret = k.secret(
        "tsig_secret",
        keys.tsig_secret,
        keys.tsig_secret_file,
        "EDGE_DNS_TSIG_SECRET",
    )?;
    let tsig_algorithm = match keys.tsig_algorithm.as_deref().unwrap_or(DEFAULT_ALGORITHM) {
        "hmac-sha256" => TsigAlg::HmacSha256,
        "hmac-sha384" => TsigAlg::HmacSha384,
        "hmac-sha512" => TsigAlg::HmacSha512,
        "hmac-sha1" => return Err(k.err("tsig_algorithm", "hmac-sha1 is not supported by this build (its TSIG library signs with SHA-2 only); create an hmac-sha256 key")),
        other => return Err(k.err("tsig_algorithm", format!("{other:?}: expected \"hmac-sha256\" (default), \"hmac-sha384\" or \"hmac-sha512\""))),
    };
    let ttl = k.count("ttl", keys.ttl, DEFAULT_TTL, 1..=86_400)?;
    Ok(Arc::new(Settings {
        server,
        zone,
        tsig_key,
        tsig_secret,
        tsig_algorithm,
        ttl,
    }))
}

impl DnsProvider for Settings {
    fn name(&self) -> &'static str {
        PROVIDER.name
    }

    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError> {
        let secret = super::secret(&self.tsig_secret, "rfc2136", "TSIG secret")?;
        Ok(Box::new(Rfc2136::new(
            self.server,
            self.zone.clone(),
            &self.tsig_key,
            &secret,
            self.tsig_algorithm,
            self.ttl,
        )?))
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Rfc2136 {
    server: SocketAddr,
    zone: Option<String>,
    /// Zones found by SOA, per record name: present and cleanup of apex and
    /// wildcard touch one name four times, and the walk costs a query per label.
    found: std::sync::Mutex<std::collections::HashMap<String, Name>>,
    signer: TSigner,
    ttl: u32,
}

fn api(message: String) -> DnsError {
    DnsError::Api {
        provider: "rfc2136",
        message,
    }
}

impl Rfc2136 {
    pub fn new(
        server: SocketAddr,
        zone: Option<String>,
        key: &str,
        secret: &Secret,
        alg: TsigAlg,
        ttl: u32,
    ) -> Result<Rfc2136, DnsError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(secret.0.trim())
            .map_err(|_| api("tsig_secret is not base64 (copy it exactly as `keymgr -t` or `tsig-keygen` printed it)".into()))?;
        let algorithm = match alg {
            TsigAlg::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlg::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlg::HmacSha512 => TsigAlgorithm::HmacSha512,
        };
        let name = Name::from_ascii(key).map_err(|e| api(format!("tsig_key {key:?}: {e}")))?;
        let signer =
            TSigner::new(raw, algorithm, name, 300).map_err(|e| api(format!("TSIG setup: {e}")))?;
        Ok(Rfc2136 {
            server,
            zone,
            found: Default::default(),
            signer,
            ttl,
        })
    }

    /// Sends one message over TCP and returns the server's answer.
    async fn exchange(&self, mut msg: Message, sign: bool) -> Result<Message, DnsError> {
        if sign {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(0);
            msg.finalize(&self.signer, now)
                .map_err(|e| api(format!("signing: {e}")))?;
        }
        let bytes = msg.to_bytes().map_err(|e| api(format!("encoding: {e}")))?;
        let server = self.server;
        let io = async move {
            let mut s = TcpStream::connect(server).await?;
            s.write_all(&(bytes.len() as u16).to_be_bytes()).await?;
            s.write_all(&bytes).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(TIMEOUT, io)
            .await
            .map_err(|_| {
                api(format!(
                    "{server} did not answer within {}s",
                    TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| api(format!("{server}: {e}")))?;
        Message::from_bytes(&buf)
            .map_err(|e| api(format!("{server} sent an unreadable answer: {e}")))
    }

    /// The zone to update: configured, or the one whose SOA the server holds.
    async fn zone_for(&self, fqdn: &str) -> Result<Name, DnsError> {
        if let Some(z) = &self.zone {
            return Name::from_ascii(format!("{z}.")).map_err(|e| api(format!("zone {z:?}: {e}")));
        }
        if let Some(z) = self
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fqdn)
        {
            return Ok(z.clone());
        }
        let labels: Vec<&str> = fqdn.split('.').collect();
        for i in 1..labels.len() {
            let candidate = format!("{}.", labels[i..].join("."));
            let name = Name::from_ascii(&candidate).map_err(|e| api(e.to_string()))?;
            let mut q = Message::new();
            q.set_id(rand::random())
                .set_message_type(MessageType::Query)
                .set_op_code(OpCode::Query)
                .add_query(Query::query(name.clone(), RecordType::SOA));
            let a = self.exchange(q, false).await?;
            if a.answers()
                .iter()
                .any(|r| r.record_type() == RecordType::SOA && r.name() == &name)
            {
                self.found
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fqdn.to_string(), name.clone());
                return Ok(name);
            }
        }
        Err(api(format!(
            "{} is authoritative for no zone above {fqdn}; set dns.zone",
            self.server
        )))
    }

    async fn update(&self, r: &TxtRecord, add: bool) -> Result<(), DnsError> {
        let zone = self.zone_for(&r.fqdn).await?;
        let name = Name::from_ascii(format!("{}.", r.fqdn)).map_err(|e| api(e.to_string()))?;
        let mut rrset = RecordSet::new(name.clone(), RecordType::TXT, 0);
        rrset.insert(
            Record::from_rdata(name, self.ttl, RData::TXT(TXT::new(vec![r.value.clone()]))),
            0,
        );
        let mut msg = if add {
            update_message::append(rrset, zone.clone(), false, false)
        } else {
            update_message::delete_by_rdata(rrset, zone.clone(), false)
        };
        msg.set_id(rand::random());
        let answer = self.exchange(msg, true).await?;
        match answer.response_code() {
            ResponseCode::NoError => Ok(()),
            code => {
                let tsig = tsig_error(&answer)
                    .map(|e| format!(", TSIG error {e}"))
                    .unwrap_or_default();
                Err(api(format!(
                    "{} answered {}{tsig} to the update of {} in zone {zone}{}",
                    self.server,
                    rcode_words(code),
                    r.fqdn,
                    hint(code, tsig_error(&answer))
                )))
            }
        }
    }
}

fn rcode_words(code: ResponseCode) -> String {
    match code {
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::BADSIG => "BADSIG".into(),
        ResponseCode::BADKEY => "BADKEY".into(),
        ResponseCode::BADTIME => "BADTIME".into(),
        other => format!("{other:?}"),
    }
}

fn hint(code: ResponseCode, tsig: Option<&'static str>) -> &'static str {
    match (code, tsig) {
        (_, Some("BADSIG")) => ": the TSIG secret does not match the server's (dns.tsig_secret)",
        (_, Some("BADKEY")) => ": the server knows no key by that name and algorithm (dns.tsig_key, dns.tsig_algorithm)",
        (_, Some("BADTIME")) => ": this host's clock and the server's differ by more than 5 minutes",
        (ResponseCode::Refused, _) => ": the server's update policy does not allow this key to change this name",
        (ResponseCode::NotAuth, _) => ": the server is not authoritative for the zone or refused the key (dns.server, dns.zone)",
        _ => "",
    }
}

/// The TSIG error field of an answer, read from the wire since hickory's TSIG
/// type keeps it private: the RDATA ends with error (2), other length (2), other.
fn tsig_error(m: &Message) -> Option<&'static str> {
    let rec = m
        .signature()
        .iter()
        .find(|r| r.record_type() == RecordType::TSIG)?;
    let RData::DNSSEC(DNSSECRData::TSIG(t)) = rec.data() else {
        return None;
    };
    let b = BinEncodable::to_bytes(t as &TSIG).ok()?;
    // algorithm name (uncompressed), time (6), fudge (2), mac size (2), mac, id (2), error (2), other len (2), other
    let mut i = 0;
    while i < b.len() && b[i] != 0 {
        i += b[i] as usize + 1;
    }
    i += 1 + 6 + 2;
    let mac = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
    i += 2 + mac + 2;
    let err = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]);
    Some(match err {
        0 => return None,
        16 => "BADSIG",
        17 => "BADKEY",
        18 => "BADTIME",
        22 => "BADTRUNC",
        _ => "unknown",
    })
}

impl Publisher for Rfc2136 {
    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            for r in records {
                self.update(r, true).await?;
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
                if let Err(e) = self.update(r, false).await {
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), Err)
        })
    }
}
