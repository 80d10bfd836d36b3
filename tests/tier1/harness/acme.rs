//! A scripted ACME CA (RFC 8555) on loopback, plain HTTP: enough of the
//! protocol for instant-acme's client (directory, nonces, account, orders,
//! authorizations, DNS-01 challenges, finalize, certificate, ARI), with knobs
//! for what real CAs do to a client: validations that fail, rate limits with
//! `Retry-After`, an unreachable CA, an ARI window. Signatures are not
//! checked; the DNS-01 record is, at the DNS server the test names (edge's
//! built-in responder), as a CA would look it up. Certificates are signed by
//! its own root, with an authority key identifier (so ARI ids exist), valid
//! from the test clock's now (`edge::clock::now`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, SerialNumber,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .unwrap_or_default()
}

/// What the CA does; change it while the test runs.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Lifetime of the certificates it issues.
    pub lifetime: Duration,
    /// Every validation fails ("No TXT records found").
    pub fail_validation: bool,
    /// New orders are refused as rate limited, with `Retry-After` in seconds.
    pub rate_limited: Option<u64>,
    /// Connections are closed at once, as by a CA that cannot be reached.
    pub down: bool,
    /// The ARI window (start, end) offered for every certificate; `None`: no ARI.
    pub ari: Option<(SystemTime, SystemTime)>,
    /// Where to look the `_acme-challenge` TXT records up; `None`: trust the client.
    pub dns: Option<SocketAddr>,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            lifetime: Duration::from_secs(90 * 86400),
            fail_validation: false,
            rate_limited: None,
            down: false,
            ari: None,
            dns: None,
        }
    }
}

/// One order as the CA keeps it.
#[derive(Debug, Clone)]
pub struct Order {
    pub names: Vec<String>,
    /// The `replaces` the client sent (an ARI id).
    pub replaces: Option<String>,
    pub tokens: Vec<String>,
    /// Per authorization: validated yet, and the error if it failed.
    pub valid: Vec<Option<bool>>,
    pub finalized: bool,
    pub chain: Option<String>,
    pub serial: Option<String>,
}

#[derive(Default)]
struct State {
    knobs: Knobs,
    orders: Vec<Order>,
    /// Every request: "METHOD /path".
    log: Vec<String>,
    thumbprint: String,
    nonce: u64,
}

pub struct Ca {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    signer: Arc<Signer>,
    root_pem: String,
    /// Connections accepted, answered or not.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Signer {
    params: CertificateParams,
    key: KeyPair,
    root_pem: String,
}

impl Ca {
    pub async fn start(knobs: Knobs) -> Ca {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Scripted Test CA");
        params.distinguished_name = dn;
        let root_pem = params.self_signed(&key).unwrap().pem();
        let signer = Arc::new(Signer {
            params,
            key,
            root_pem: root_pem.clone(),
        });
        let state = Arc::new(Mutex::new(State {
            knobs,
            ..Default::default()
        }));
        let st = state.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (acc, sig) = (accepted.clone(), signer.clone());
        let task = tokio::spawn(async move {
            let signer = sig;
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    continue;
                };
                acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if st.lock().unwrap().knobs.down {
                    drop(sock);
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let (st, signer) = (st.clone(), signer.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (st, signer) = (st.clone(), signer.clone());
                        async move { Ok::<_, Infallible>(handle(req, addr, &st, &signer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Ca {
            addr,
            state,
            signer,
            root_pem,
            accepted,
            task,
        }
    }

    /// Connections accepted so far (also while `down`).
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A certificate and key for `names` signed by this CA outside ACME, as
    /// one it issued before: (full chain PEM, key PEM, serial).
    pub fn certificate(&self, names: &[&str], lifetime: Duration) -> (String, String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap();
        let (chain, serial) = issue(csr.der(), lifetime, &self.signer).unwrap();
        (chain, key.serialize_pem(), serial)
    }

    pub fn directory(&self) -> String {
        format!("http://{}/dir", self.addr)
    }

    /// `[acme]` for this CA.
    pub fn toml(&self) -> String {
        format!("[acme]\ndirectory = \"{}\"\n", self.directory())
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn set(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.state.lock().unwrap().knobs);
    }

    pub fn orders(&self) -> Vec<Order> {
        self.state.lock().unwrap().orders.clone()
    }

    /// Orders that got a certificate.
    pub fn issued(&self) -> usize {
        self.orders().iter().filter(|o| o.chain.is_some()).count()
    }

    /// How many requests matched `what` ("POST /new-account", "GET /ari", ...).
    pub fn requests(&self, what: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.starts_with(what))
            .count()
    }
}

fn problem(status: StatusCode, kind: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = json!({ "type": format!("urn:ietf:params:acme:error:{kind}"), "detail": detail, "status": status.as_u16() });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/problem+json".parse().unwrap(),
    );
    r
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

fn order_json(base: &str, id: usize, o: &Order) -> Value {
    let status = if o.valid.contains(&Some(false)) {
        "invalid"
    } else if o.chain.is_some() {
        "valid"
    } else if o.valid.iter().all(|v| *v == Some(true)) {
        "ready"
    } else {
        "pending"
    };
    let mut v = json!({
        "status": status,
        "identifiers": o.names.iter().map(|n| json!({"type": "dns", "value": n.trim_start_matches("*.")})).collect::<Vec<_>>(),
        "authorizations": (0..o.names.len()).map(|i| format!("{base}/authz/{id}/{i}")).collect::<Vec<_>>(),
        "finalize": format!("{base}/finalize/{id}"),
    });
    if o.chain.is_some() {
        v["certificate"] = json!(format!("{base}/cert/{id}"));
    }
    if let Some(r) = &o.replaces {
        v["replaces"] = json!(r);
    }
    v
}

fn authz_json(base: &str, id: usize, i: usize, o: &Order) -> Value {
    let name = &o.names[i];
    let (status, ch_status) = match o.valid[i] {
        None => ("pending", "pending"),
        Some(true) => ("valid", "valid"),
        Some(false) => ("invalid", "invalid"),
    };
    let mut ch = json!({
        "type": "dns-01",
        "url": format!("{base}/chall/{id}/{i}"),
        "token": o.tokens[i],
        "status": ch_status,
    });
    if o.valid[i] == Some(false) {
        ch["error"] = json!({"type": "urn:ietf:params:acme:error:unauthorized", "detail": format!("No TXT records found for DNS challenge at _acme-challenge.{}", name.trim_start_matches("*."))});
    }
    json!({
        "status": status,
        "identifier": {"type": "dns", "value": name.trim_start_matches("*.")},
        "wildcard": name.starts_with("*."),
        "challenges": [ch],
    })
}

/// RFC 7638 thumbprint of an EC or RSA JWK.
fn thumbprint(jwk: &Value) -> String {
    let canonical = match jwk["kty"].as_str() {
        Some("EC") => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["crv"].as_str().unwrap_or(""),
            jwk["x"].as_str().unwrap_or(""),
            jwk["y"].as_str().unwrap_or("")
        ),
        _ => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            jwk["e"].as_str().unwrap_or(""),
            jwk["n"].as_str().unwrap_or("")
        ),
    };
    b64(&Sha256::digest(canonical.as_bytes()))
}

async fn handle(
    req: Request<Incoming>,
    addr: SocketAddr,
    st: &Arc<Mutex<State>>,
    signer: &Signer,
) -> Response<Full<Bytes>> {
    let base = format!("http://{addr}");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    st.lock().unwrap().log.push(format!("{method} {path}"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = route(&method, &path, &body, &base, st, signer).await;
    let nonce = {
        let mut s = st.lock().unwrap();
        s.nonce += 1;
        format!("nonce{}", s.nonce)
    };
    resp.headers_mut()
        .insert("replay-nonce", nonce.parse().unwrap());
    resp
}

async fn route(
    method: &Method,
    path: &str,
    body: &[u8],
    base: &str,
    st: &Arc<Mutex<State>>,
    signer: &Signer,
) -> Response<Full<Bytes>> {
    let jws: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let protected: Value = serde_json::from_slice(&unb64(jws["protected"].as_str().unwrap_or("")))
        .unwrap_or(Value::Null);
    let payload: Value = serde_json::from_slice(&unb64(jws["payload"].as_str().unwrap_or("")))
        .unwrap_or(Value::Null);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let index = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
    match (method.as_str(), parts[0]) {
        ("GET", "dir") => {
            let mut d = json!({
                "newNonce": format!("{base}/nonce"),
                "newAccount": format!("{base}/new-account"),
                "newOrder": format!("{base}/new-order"),
                "revokeCert": format!("{base}/revoke"),
                "keyChange": format!("{base}/key-change"),
            });
            if st.lock().unwrap().knobs.ari.is_some() {
                d["renewalInfo"] = json!(format!("{base}/ari"));
            }
            json_response(StatusCode::OK, d)
        }
        ("HEAD" | "GET", "nonce") => json_response(StatusCode::OK, Value::Null),
        ("POST", "new-account") => {
            st.lock().unwrap().thumbprint = thumbprint(&protected["jwk"]);
            let mut r = json_response(
                StatusCode::CREATED,
                json!({"status": "valid", "orders": format!("{base}/orders/1")}),
            );
            r.headers_mut()
                .insert("location", format!("{base}/acct/1").parse().unwrap());
            r
        }
        ("POST", "new-order") => {
            let mut s = st.lock().unwrap();
            if let Some(secs) = s.knobs.rate_limited {
                let mut r = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rateLimited",
                    "too many new orders recently",
                );
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
                return r;
            }
            let names: Vec<String> = payload["identifiers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["value"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let id = s.orders.len();
            let order = Order {
                tokens: (0..names.len())
                    .map(|i| b64(format!("token-{id}-{i}-{}", rand::random::<u64>()).as_bytes()))
                    .collect(),
                valid: vec![None; names.len()],
                names,
                replaces: payload["replaces"].as_str().map(str::to_string),
                finalized: false,
                chain: None,
                serial: None,
            };
            let body = order_json(base, id, &order);
            s.orders.push(order);
            let mut r = json_response(StatusCode::CREATED, body);
            r.headers_mut()
                .insert("location", format!("{base}/order/{id}").parse().unwrap());
            r
        }
        ("POST", "order") => {
            let s = st.lock().unwrap();
            match index(1).and_then(|id| s.orders.get(id).map(|o| (id, o))) {
                Some((id, o)) => json_response(StatusCode::OK, order_json(base, id, o)),
                None => problem(StatusCode::NOT_FOUND, "malformed", "no such order"),
            }
        }
        ("POST", "authz") => {
            let s = st.lock().unwrap();
            match (index(1), index(2)) {
                (Some(id), Some(i)) if id < s.orders.len() => {
                    json_response(StatusCode::OK, authz_json(base, id, i, &s.orders[id]))
                }
                _ => problem(StatusCode::NOT_FOUND, "malformed", "no such authorization"),
            }
        }
        ("POST", "chall") => {
            let (Some(id), Some(i)) = (index(1), index(2)) else {
                return problem(StatusCode::NOT_FOUND, "malformed", "no such challenge");
            };
            let (name, token, thumb, knobs) = {
                let s = st.lock().unwrap();
                let Some(o) = s.orders.get(id) else {
                    return problem(StatusCode::NOT_FOUND, "malformed", "no such challenge");
                };
                (
                    o.names[i].clone(),
                    o.tokens[i].clone(),
                    s.thumbprint.clone(),
                    s.knobs.clone(),
                )
            };
            let valid = if knobs.fail_validation {
                false
            } else if let Some(server) = knobs.dns {
                let want = b64(&Sha256::digest(format!("{token}.{thumb}").as_bytes()));
                let fqdn = format!("_acme-challenge.{}", name.trim_start_matches("*."));
                edge::dns::propagation::query_txt(server, &fqdn, false)
                    .await
                    .is_ok_and(|v| v.contains(&want))
            } else {
                true
            };
            let mut s = st.lock().unwrap();
            s.orders[id].valid[i] = Some(valid);
            let mut ch = authz_json(base, id, i, &s.orders[id])["challenges"][0].clone();
            if valid {
                ch["status"] = json!("valid");
            }
            json_response(StatusCode::OK, ch)
        }
        ("POST", "finalize") => {
            let Some(id) = index(1) else {
                return problem(StatusCode::NOT_FOUND, "malformed", "no such order");
            };
            let csr = unb64(payload["csr"].as_str().unwrap_or(""));
            let lifetime = st.lock().unwrap().knobs.lifetime;
            let issued = issue(&csr, lifetime, signer);
            let mut s = st.lock().unwrap();
            match issued {
                Ok((chain, serial)) => {
                    let o = &mut s.orders[id];
                    o.finalized = true;
                    o.chain = Some(chain);
                    o.serial = Some(serial);
                    let body = order_json(base, id, o);
                    json_response(StatusCode::OK, body)
                }
                Err(e) => problem(StatusCode::BAD_REQUEST, "badCSR", &e),
            }
        }
        ("POST", "cert") => {
            let s = st.lock().unwrap();
            match index(1).and_then(|id| s.orders.get(id)?.chain.clone()) {
                Some(chain) => {
                    let mut r = Response::new(Full::new(Bytes::from(chain)));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        "application/pem-certificate-chain".parse().unwrap(),
                    );
                    r
                }
                None => problem(StatusCode::NOT_FOUND, "malformed", "no certificate"),
            }
        }
        ("GET", "ari") => {
            let window = st.lock().unwrap().knobs.ari;
            match window {
                Some((start, end)) => {
                    let fmt = |t: SystemTime| {
                        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
                        time::OffsetDateTime::from_unix_timestamp(secs as i64)
                            .unwrap()
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap()
                    };
                    let mut r = json_response(
                        StatusCode::OK,
                        json!({"suggestedWindow": {"start": fmt(start), "end": fmt(end)}}),
                    );
                    r.headers_mut()
                        .insert("retry-after", "21600".parse().unwrap());
                    r
                }
                None => problem(StatusCode::NOT_FOUND, "malformed", "no ARI"),
            }
        }
        _ => problem(StatusCode::NOT_FOUND, "malformed", "unknown resource"),
    }
}

/// Signs the CSR's names with the root, valid from the test clock's now.
fn issue(csr_der: &[u8], lifetime: Duration, signer: &Signer) -> Result<(String, String), String> {
    let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let mut csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| e.to_string())?;
    let now = edge::clock::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    csr.params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 60).unwrap();
    csr.params.not_after =
        time::OffsetDateTime::from_unix_timestamp(now + lifetime.as_secs() as i64).unwrap();
    let serial: [u8; 16] = rand::random();
    let mut serial = serial.to_vec();
    serial[0] &= 0x7f;
    csr.params.serial_number = Some(SerialNumber::from_slice(&serial));
    csr.params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_params(&signer.params, &signer.key);
    let cert = csr.signed_by(&issuer).map_err(|e| e.to_string())?;
    let info = edge::certinfo::inspect(cert.der()).map_err(|e| e.to_string())?;
    Ok((format!("{}{}", cert.pem(), signer.root_pem), info.serial))
}
