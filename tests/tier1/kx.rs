//! Post-quantum key exchange stays on: a client that offers X25519MLKEM768
//! first gets it, as browsers do now; a classic client gets X25519.

use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
use rustls::crypto::SupportedKxGroup;
use rustls::NamedGroup;
use tokio_rustls::TlsConnector;

use crate::harness::*;

const HOST: &str = "kx.example.test";

/// The group the handshake with edge agreed on, for a client offering `groups`.
async fn agreed(edge: &Edge, groups: Vec<&'static dyn SupportedKxGroup>) -> NamedGroup {
    let mut provider = default_provider();
    provider.kx_groups = groups;
    let cfg = client_config_with(provider, &[b"http/1.1"]);
    let tcp = connect(edge.https()).await;
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let tls = within(
        secs(30),
        "TLS handshake",
        TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .unwrap();
    tls.get_ref()
        .1
        .negotiated_key_exchange_group()
        .unwrap()
        .name()
}

#[tokio::test(start_paused = true)]
async fn a_client_offering_x25519mlkem768_first_gets_it_and_a_classic_one_x25519() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    assert_eq!(
        agreed(&edge, vec![kx_group::X25519MLKEM768, kx_group::X25519]).await,
        NamedGroup::X25519MLKEM768
    );
    assert_eq!(
        agreed(&edge, vec![kx_group::X25519]).await,
        NamedGroup::X25519
    );
}
