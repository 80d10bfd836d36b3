//! HTTP-01 and TLS-ALPN-01: answers edge serves on its own listeners. In
//! `edge serve` the plain-HTTP listener and the HTTPS listener find them in
//! [`CHALLENGES`] and go on serving everything else; a command run without
//! a daemon (`edge obtain`) binds the configured listener address itself
//! for the length of the order, as certbot's standalone mode does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::ChallengeType;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::challenges::{tls_alpn01_cert, ACME_TLS_ALPN, CHALLENGES};
use super::solver::{Pending, Placed, Solver};
use super::AcmeError;
use crate::config::Challenge;
use crate::dns::BoxFuture;
use crate::proxy::redirect::ACME_HTTP01_PREFIX;
use crate::ui::Ui;

/// How long a stand-in listener gives one connection.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http01,
    TlsAlpn01,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http01 => Challenge::Http01,
            Kind::TlsAlpn01 => Challenge::TlsAlpn01,
        }
        .name()
    }

    fn key(self) -> &'static str {
        match self {
            Kind::Http01 => "listen.http",
            Kind::TlsAlpn01 => "listen.https",
        }
    }
}

pub struct ListenSolver {
    kind: Kind,
    /// Where the stand-in listener binds when no listener of this process
    /// serves the answers.
    addr: SocketAddr,
    standalone: Mutex<Option<JoinHandle<()>>>,
}

impl ListenSolver {
    pub fn new(kind: Kind, addr: SocketAddr) -> ListenSolver {
        ListenSolver {
            kind,
            addr,
            standalone: Mutex::new(None),
        }
    }

    fn served(&self) -> bool {
        match self.kind {
            Kind::Http01 => CHALLENGES.http_served(),
            Kind::TlsAlpn01 => CHALLENGES.https_served(),
        }
    }

    async fn stand_in(&self, ui: &Ui) -> Result<(), AcmeError> {
        let listener = tokio::net::TcpListener::bind(self.addr).await.map_err(|e| {
            AcmeError::Other(format!(
                "{}: cannot answer {} on {}: {e}; stop what listens there, or run `edge serve`, which answers on its own listener",
                self.kind.key(),
                self.kind.name(),
                self.addr
            ))
        })?;
        ui.step(&format!(
            "Answering {} on {} until the order is done",
            self.kind.name(),
            self.addr
        ));
        let kind = self.kind;
        let task = tokio::spawn(async move {
            let tls = match kind {
                Kind::TlsAlpn01 => Some(tokio_rustls::TlsAcceptor::from(challenge_tls_config())),
                Kind::Http01 => None,
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONN_TIMEOUT, async move {
                        match tls {
                            Some(acceptor) => {
                                // The handshake is the answer; then close.
                                if let Ok(mut s) = acceptor.accept(stream).await {
                                    let _ = s.shutdown().await;
                                }
                            }
                            None => {
                                let _ = answer_http01(stream).await;
                            }
                        }
                    })
                    .await;
                });
            }
        });
        *self.standalone.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }
}

/// A TLS config that serves only TLS-ALPN-01 certificates, for the stand-in.
fn challenge_tls_config() -> Arc<rustls::ServerConfig> {
    #[derive(Debug)]
    struct OnlyChallenges;
    impl rustls::server::ResolvesServerCert for OnlyChallenges {
        fn resolve(
            &self,
            hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            challenge_for(&hello)
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OnlyChallenges));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Arc::new(cfg)
}

/// The challenge certificate for a ClientHello that offers `acme-tls/1`
/// alone (RFC 8737 §3: a validation handshake offers nothing else).
pub fn challenge_for(
    hello: &rustls::server::ClientHello<'_>,
) -> Option<Arc<rustls::sign::CertifiedKey>> {
    let mut alpn = hello.alpn()?;
    if alpn.next() != Some(ACME_TLS_ALPN) || alpn.next().is_some() {
        return None;
    }
    let sni = hello.server_name()?;
    CHALLENGES.tls_alpn01(sni).or_else(|| {
        // An IP address's validation names it by its reverse-DNS name.
        let ip = crate::names::ip_of_reverse_name(sni)?;
        CHALLENGES.tls_alpn01(&ip.to_string())
    })
}

/// One HTTP-01 request on the stand-in: the key authorization for a token
/// presented, 404 for anything else; then close.
async fn answer_http01(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut fields = Vec::new();
    let target = match crate::http1::head::read_one(&mut s, 8 * 1024, &mut buf, &mut fields).await?
    {
        None => return Ok(()),
        Some(h) => h.ok().map(|h| h.target.get(&buf).to_vec()),
    };
    let answer = target
        .as_deref()
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.strip_prefix(ACME_HTTP01_PREFIX))
        .and_then(|token| CHALLENGES.http01(token));
    let (status, body) = match answer {
        Some(ka) => ("200 OK", ka),
        None => ("404 Not Found", String::new()),
    };
    let out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(out.as_bytes()).await?;
    s.shutdown().await
}

impl Solver for ListenSolver {
    fn challenge_type(&self) -> ChallengeType {
        match self.kind {
            Kind::Http01 => ChallengeType::Http01,
            Kind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn prepare(&self, pending: Vec<Pending>) -> BoxFuture<'_, Placed> {
        Box::pin(async move {
            Placed {
                pending,
                records: Vec::new(),
            }
        })
    }

    fn present<'a>(
        &'a self,
        placed: &'a Placed,
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            for p in &placed.pending {
                match self.kind {
                    Kind::Http01 => CHALLENGES.put_http01(&p.token, &p.key_authorization),
                    Kind::TlsAlpn01 => {
                        let (name, ka) = (p.domain.clone(), p.key_authorization.clone());
                        // Key generation: off the serving threads.
                        let cert = tokio::task::spawn_blocking(move || tls_alpn01_cert(&name, &ka))
                            .await
                            .map_err(|e| AcmeError::Other(e.to_string()))?
                            .map_err(|e| {
                                AcmeError::Other(format!("the tls-alpn-01 certificate: {e}"))
                            })?;
                        CHALLENGES.put_tls_alpn01(&p.domain, Arc::new(cert));
                    }
                }
            }
            ui.step(&format!(
                "Serving {} {} answer(s) on edge's own listener",
                placed.pending.len(),
                self.kind.name()
            ));
            if !self.served() {
                self.stand_in(ui).await?;
            }
            Ok(())
        })
    }

    fn cleanup<'a>(
        &'a self,
        placed: &'a Placed,
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            for p in &placed.pending {
                match self.kind {
                    Kind::Http01 => CHALLENGES.remove_http01(&p.token),
                    Kind::TlsAlpn01 => CHALLENGES.remove_tls_alpn01(&p.domain),
                }
            }
            if let Some(t) = self
                .standalone
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                t.abort();
            }
            Ok(())
        })
    }
}
