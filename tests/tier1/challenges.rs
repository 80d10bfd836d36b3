//! HTTP-01 and TLS-ALPN-01 answers on edge's own listeners: a pending
//! answer is served, nothing is proxied for it, and every other request
//! and handshake is untouched.

use std::sync::Arc;

use edge::acme::challenges::{tls_alpn01_cert, ACME_TLS_ALPN, CHALLENGES};
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use crate::harness::*;

const HOST: &str = "alpn.example.test";

// A validation authority's client reads the certificate's extension itself
// and does not verify the handshake signature with webpki (which refuses the
// critical acmeIdentifier extension, as it should for a server certificate):
// the bench clients' verifier that checks nothing.
#[path = "../../bench/any_cert.rs"]
mod any_cert;

fn va_config(alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(any_cert::AnyCert))
    .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(c)
}

#[tokio::test(start_paused = true)]
async fn a_tls_alpn01_handshake_gets_the_challenge_certificate_and_is_closed() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let cert = tls_alpn01_cert(HOST, "token.thumbprint").unwrap();
    let want = cert.cert[0].clone();
    CHALLENGES.put_tls_alpn01(HOST, Arc::new(cert));

    let handshake = |alpn: &'static [u8]| {
        let edge_addr = edge.https();
        async move {
            let tcp = connect(edge_addr).await;
            let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
            TlsConnector::from(va_config(alpn)).connect(name, tcp).await
        }
    };
    let mut tls = handshake(ACME_TLS_ALPN)
        .await
        .expect("the validation handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ACME_TLS_ALPN));
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], want);
    let _ = tls
        .write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await;
    assert!(
        read_to_close(&mut tls).await.is_empty(),
        "closed after the handshake"
    );
    // Other handshakes are untouched.
    assert_eq!(get(edge.https(), HOST, "/").await.text(), "v1");
    assert_eq!(up.count(), 1, "the validation reached the upstream");
    // No pending challenge for a name: no certificate for acme-tls/1.
    CHALLENGES.remove_tls_alpn01(HOST);
    assert!(handshake(ACME_TLS_ALPN).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_plain_listener_answers_a_pending_http01_token_and_redirects_the_rest() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    CHALLENGES.put_http01("tok-tier1", "tok-tier1.thumbprint");
    let ask = |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
        let addr = edge.http();
        async move {
            let mut c = connect(addr).await;
            exchange(&mut c, req.as_bytes()).await.unwrap()
        }
    };
    let a = ask("/.well-known/acme-challenge/tok-tier1").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "tok-tier1.thumbprint");
    assert_eq!(ask("/.well-known/acme-challenge/other").await.status, 404);
    assert_eq!(ask("/page").await.status, 308);
    CHALLENGES.remove_http01("tok-tier1");
    assert_eq!(
        ask("/.well-known/acme-challenge/tok-tier1").await.status,
        404
    );
    assert_eq!(up.count(), 0);
}

/// Two address sites: a client without SNI gets the certificate of the
/// address it connected to, and its requests for that address are served.
#[tokio::test(start_paused = true)]
async fn a_client_without_sni_gets_the_certificate_of_the_address_it_reached() {
    let (one, two) = (Upstream::named("one").await, Upstream::named("two").await);
    let body = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"0.0.0.0:0\"\nhttp3 = false\n{}challenge = \"http-01\"\n{}challenge = \"http-01\"\n",
        site(&["127.0.0.1"], &[&one.addr()], ""),
        site(&["127.0.0.2"], &[&two.addr()], "")
    );
    let edge = Edge::start(&body).await;
    let port = edge.https().port();
    for (ip, body) in [("127.0.0.1", "one"), ("127.0.0.2", "two")] {
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let tcp = connect(addr).await;
        let name = rustls::pki_types::ServerName::IpAddress(
            ip.parse::<std::net::IpAddr>().unwrap().into(),
        );
        let mut tls = TlsConnector::from(client_config(&[b"http/1.1"]))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(served_names(&tls), [ip], "the certificate for {ip}");
        let a = exchange(
            &mut tls,
            format!("GET / HTTP/1.1\r\nhost: {ip}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(a.text(), body);
    }
}
