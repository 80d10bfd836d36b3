//! The certificate manager against a scripted CA, under paused time: a
//! certificate obtained at start, renewed at its due time and swapped in,
//! failures that keep the old one serving and back off by their kind, the
//! account left alone while nothing is due, certificates from others picked
//! up, jobs over the control socket. DNS-01 runs for real through edge's
//! built-in responder, which the CA asks, as Let's Encrypt would.

use std::net::SocketAddr;
use std::time::Duration;

use edge::certs::{delegate, Request};

use crate::harness::acme::{Ca, Knobs};
use crate::harness::*;

const NAME: &str = "www.example.test";

/// A UDP and TCP port free on loopback for the built-in responder, below
/// the ephemeral range: a port handed out for `:0` (edge's own listeners, in
/// this test or another running beside it) can never be it.
async fn dns_addr() -> SocketAddr {
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        let a = SocketAddr::from(([127, 0, 0, 1], port));
        let (t, u) = (
            tokio::net::TcpListener::bind(a).await,
            tokio::net::UdpSocket::bind(a).await,
        );
        if t.is_ok() && u.is_ok() {
            return a;
        }
    }
}

struct Setup {
    ca: Ca,
    edge: Edge,
    up: Upstream,
    dns: SocketAddr,
}

/// Lets `total` of the test's clock pass in steps of at most ten minutes,
/// each taken at once (`advance`): every timer due in a step fires once, so
/// the live/ watcher's half-second poll costs one look per step, not one per
/// half second of a day.
async fn pass_time(total: Duration) {
    let step = Duration::from_secs(600);
    let mut left = total;
    while !left.is_zero() {
        let d = left.min(step);
        tokio::time::advance(d).await;
        left -= d;
        // Whatever the step woke runs now.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
}

/// A scripted CA that checks the DNS-01 records at edge's built-in responder,
/// and edge with one site and `stored` certificates.
async fn setup(knobs: Knobs, stored: bool, extra: &str) -> Setup {
    let dns = dns_addr().await;
    let ca = Ca::start(Knobs {
        dns: Some(dns),
        ..knobs
    })
    .await;
    let up = Upstream::named("app").await;
    let body = format!(
        "{}[dns]\nprovider = \"builtin\"\nlisten = \"{dns}\"\nzone = \"example.test\"\nresolvers = [\"{dns}\"]\n{extra}\n{}",
        ca.toml(),
        site(&[NAME], &[&up.addr()], "")
    );
    let edge = Edge::start_with(&body, stored).await;
    Setup { ca, edge, up, dns }
}

impl Setup {
    async fn serial(&self) -> String {
        served_serial(&tls(self.edge.https(), NAME).await)
    }

    /// Waits (test clock) until edge serves the serial of the CA's `n`th
    /// certificate (from 1); returns it.
    async fn until_issued(&self, n: usize, limit: Duration) -> String {
        within(limit, &format!("certificate {n} served"), async {
            loop {
                let issued: Vec<String> = self
                    .ca
                    .orders()
                    .iter()
                    .filter_map(|o| o.serial.clone())
                    .collect();
                if issued.len() >= n {
                    let want = issued[n - 1].clone();
                    if self.serial().await == want {
                        return want;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    }

    fn renewal_state(&self) -> serde_json::Value {
        let p = self.edge.state().join(format!("renewal/{NAME}.json"));
        serde_json::from_slice(&std::fs::read(p).unwrap_or_default()).unwrap_or_default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_certificate_is_obtained_at_start_through_the_built_in_zone_and_served() {
    let s = setup(Knobs::default(), false, "").await;
    // A placeholder serves until then.
    assert_eq!(served_names(&tls(s.edge.https(), NAME).await), [NAME]);
    let serial = s.until_issued(1, secs(60)).await;
    assert_eq!(s.ca.requests("POST /new-account"), 1);
    assert_eq!(s.ca.requests("POST /new-order"), 1);
    let order = &s.ca.orders()[0];
    assert_eq!(order.names, [NAME]);
    assert_eq!(
        order.valid,
        [Some(true)],
        "the CA did not find the TXT record"
    );
    // certbot's layout, the key 0600, and the records gone once validated.
    use std::os::unix::fs::PermissionsExt;
    let live = s.edge.state().join("live").join(NAME);
    let mode = std::fs::metadata(live.join("privkey.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(live.join("fullchain.pem").exists() && live.join("cert.pem").exists());
    let txt = edge::dns::propagation::query_txt(s.dns, &format!("_acme-challenge.{NAME}"), false)
        .await
        .unwrap();
    assert!(txt.is_empty(), "challenge records left behind: {txt:?}");
    // And requests are proxied with it.
    let a = get(s.edge.https(), NAME, "/").await;
    assert_eq!((a.status, a.text().as_str()), (200, "app"));
    assert_eq!(s.serial().await, serial);
    assert_eq!(s.up.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_short_lived_certificate_is_renewed_at_half_its_life_and_swapped_in_without_a_restart() {
    let s = setup(
        Knobs {
            lifetime: Duration::from_secs(6 * 86400),
            ..Knobs::default()
        },
        false,
        "",
    )
    .await;
    let first = s.until_issued(1, secs(60)).await;
    // Not before half its life (3 days; the jitter adds at most 1% of it).
    tokio::time::advance(Duration::from_secs(2 * 86400 + 20 * 3600)).await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(s.ca.issued(), 1, "renewed early");
    assert_eq!(s.serial().await, first);
    tokio::time::advance(Duration::from_secs(4 * 3600)).await;
    let second = s.until_issued(2, secs(3600)).await;
    assert_ne!(first, second);
    assert_eq!(
        s.ca.requests("POST /new-account"),
        1,
        "the account was registered again"
    );
    // The next one is due three days after this one.
    tokio::time::advance(Duration::from_secs(2 * 86400 + 20 * 3600)).await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(s.ca.issued(), 2);
    tokio::time::advance(Duration::from_secs(4 * 3600)).await;
    s.until_issued(3, secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_keeps_the_old_certificate_serving_and_backs_off() {
    let s = setup(
        Knobs {
            lifetime: Duration::from_secs(6 * 86400),
            ..Knobs::default()
        },
        false,
        "",
    )
    .await;
    let first = s.until_issued(1, secs(60)).await;
    s.ca.set(|k| k.fail_validation = true);
    tokio::time::advance(Duration::from_secs(3 * 86400 + 600)).await;
    within(secs(600), "a failed attempt", async {
        while s.ca.orders().len() < 2 {
            tokio::time::sleep(SECOND).await;
        }
    })
    .await;
    let failed_at = tokio::time::Instant::now();
    assert_eq!(s.serial().await, first, "the old certificate is not served");
    // The failure is recorded with the CA's reason, and the next attempt
    // waits for the backoff (5 min after one validation failure).
    within(secs(10), "state", async {
        while s.renewal_state()["failures"] != 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let state = s.renewal_state();
    assert!(
        state["last_error"]
            .as_str()
            .unwrap()
            .contains("No TXT records found"),
        "{state}"
    );
    tokio::time::sleep(secs(240)).await;
    assert_eq!(s.ca.orders().len(), 2, "retried during the backoff");
    s.ca.set(|k| k.fail_validation = false);
    let second = s.until_issued(2, secs(600)).await;
    let waited = failed_at.elapsed();
    assert!(
        waited >= secs(299) && waited <= secs(310),
        "retried after {waited:?}, the backoff is 5 min"
    );
    assert_ne!(first, second);
    assert_eq!(s.renewal_state()["failures"], 0);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_waits_until_the_time_the_ca_names() {
    let s = setup(
        Knobs {
            rate_limited: Some(3 * 3600),
            ..Knobs::default()
        },
        false,
        "",
    )
    .await;
    within(secs(60), "the first order", async {
        while s.ca.requests("POST /new-order") < 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let limited_at = tokio::time::Instant::now();
    s.ca.set(|k| k.rate_limited = None);
    // Not before the three hours the CA named, though the usual backoff is 5 min.
    pass_time(secs(3 * 3600 - 60)).await;
    assert_eq!(
        s.ca.requests("POST /new-order"),
        1,
        "asked again during the rate limit"
    );
    s.until_issued(1, secs(600)).await;
    let waited = limited_at.elapsed();
    // (Seconds are whole in the renewal state; the poll above is 100 ms.)
    assert!(
        waited >= secs(3 * 3600 - 1) && waited <= secs(3 * 3600 + 60),
        "{waited:?}"
    );
    let state = s.renewal_state();
    assert_eq!(state["failures"], 0, "{state}");
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_ca_is_tried_again_after_a_minute_not_five() {
    let s = setup(
        Knobs {
            down: true,
            ..Knobs::default()
        },
        false,
        "",
    )
    .await;
    within(secs(60), "an attempt", async {
        while s.ca.accepted() < 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let first = tokio::time::Instant::now();
    s.ca.set(|k| k.down = false);
    s.until_issued(1, secs(600)).await;
    let waited = first.elapsed();
    assert!(
        waited >= secs(60) && waited < secs(120),
        "tried again after {waited:?}"
    );
    let state = s.renewal_state();
    assert_eq!(state["failures"], 0, "{state}");
}

/// With every certificate stored and far from due, edge neither registers
/// nor loads an ACME account: nothing is POSTed to the CA. The renewal
/// window (ARI) is read with plain GETs.
#[tokio::test(start_paused = true)]
async fn no_account_is_loaded_while_every_certificate_is_stored_and_far_from_due() {
    let dns = dns_addr().await;
    let far = edge::clock::now() + Duration::from_secs(60 * 86400);
    let ca = Ca::start(Knobs {
        dns: Some(dns),
        ari: Some((far, far + Duration::from_secs(86400))),
        ..Knobs::default()
    })
    .await;
    let up = Upstream::named("app").await;
    let body = format!(
        "{}[dns]\nprovider = \"builtin\"\nlisten = \"{dns}\"\nzone = \"example.test\"\n{}",
        ca.toml(),
        site(&[NAME], &[&up.addr()], "")
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(dir.path(), &body);
    let (chain, key, serial) = ca.certificate(&[NAME], Duration::from_secs(90 * 86400));
    put_live(&dir.path().join("state"), NAME, &chain, &key);
    let running = edge::daemon::start(cfg).await.unwrap();
    pass_time(secs(86400)).await;
    assert_eq!(served_serial(&tls(running.bound.https, NAME).await), serial);
    assert!(
        ca.requests("GET /ari") >= 1,
        "the renewal window was never asked for"
    );
    assert_eq!(ca.requests("POST"), 0, "an account was used");
    assert_eq!(ca.requests("HEAD"), 0, "a nonce was fetched");
    running.shutdown().await;
}

/// ARI: a window that moves into the past makes edge renew, and the order
/// says which certificate it replaces.
#[tokio::test(start_paused = true)]
async fn an_ari_window_in_the_past_renews_and_the_order_names_what_it_replaces() {
    let far = edge::clock::now() + Duration::from_secs(60 * 86400);
    let s = setup(
        Knobs {
            ari: Some((far, far + Duration::from_secs(86400))),
            ..Knobs::default()
        },
        false,
        "",
    )
    .await;
    s.until_issued(1, secs(60)).await;
    let first = std::fs::read(s.edge.state().join("live").join(NAME).join("cert.pem")).unwrap();
    let first_id = edge::certinfo::inspect(&edge::certinfo::parse_chain(&first).unwrap()[0])
        .unwrap()
        .ari_id
        .unwrap();
    let now = edge::clock::now();
    s.ca.set(|k| {
        k.ari = Some((
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        ))
    });
    // The window is asked for again when the CA's Retry-After (6 h) has passed.
    tokio::time::advance(Duration::from_secs(6 * 3600)).await;
    s.until_issued(2, secs(3 * 3600)).await;
    s.ca.set(|k| k.ari = Some((far, far + Duration::from_secs(86400))));
    assert_eq!(
        s.ca.orders()[1].replaces.as_deref(),
        Some(first_id.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn certificates_written_into_live_by_others_are_served_within_a_second_and_bad_pairs_refused()
{
    let up = Upstream::named("app").await;
    let edge = Edge::start(&site(&[NAME], &[&up.addr()], "")).await;
    let before = served_serial(&tls(edge.https(), NAME).await);
    let (c, k) = self_signed(&[NAME]);
    put_live(&edge.state(), NAME, &c, &k);
    let want = edge::certinfo::inspect(&edge::certinfo::parse_chain(c.as_bytes()).unwrap()[0])
        .unwrap()
        .serial;
    let (_, took) = timed(within(secs(5), "pickup", async {
        while served_serial(&tls(edge.https(), NAME).await) != want {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }))
    .await;
    assert_ne!(before, want);
    assert!(
        took <= SECOND + Duration::from_millis(100),
        "picked up after {took:?}"
    );
    // A mismatched pair: refused, and the last good one keeps serving.
    let (c2, _) = self_signed(&[NAME]);
    let (_, k3) = self_signed(&[NAME]);
    put_live(&edge.state(), NAME, &c2, &k3);
    tokio::time::sleep(secs(3)).await;
    assert_eq!(served_serial(&tls(edge.https(), NAME).await), want);
    assert_eq!(get(edge.https(), NAME, "/").await.status, 200);
}

/// `edge renew --force` while the daemon runs: the daemon does the work over
/// its control socket and serves the new certificate the moment it is stored.
#[tokio::test(start_paused = true)]
async fn renew_over_the_control_socket_is_served_at_once() {
    let s = setup(Knobs::default(), false, "").await;
    let first = s.until_issued(1, secs(60)).await;
    let state_dir = s.edge.state();
    let code = within(
        secs(120),
        "renew over the control socket",
        delegate(
            &state_dir,
            &Request::Renew {
                force: true,
                domain: Some(NAME.into()),
            },
        ),
    )
    .await;
    assert_eq!(code, Some(0));
    // Served at once: no wait for the watcher.
    let now = s.serial().await;
    assert_ne!(now, first);
    assert_eq!(s.ca.issued(), 2);
    // An unknown name is an error, exit 1.
    let code = delegate(
        &state_dir,
        &Request::Renew {
            force: true,
            domain: Some("other.example.test".into()),
        },
    )
    .await;
    assert_eq!(code, Some(1));
}

/// The built-in responder is bound when the daemon starts, before any
/// order, and answers for its zone.
#[tokio::test(start_paused = true)]
async fn the_built_in_responder_holds_its_port_from_the_start() {
    let s = setup(Knobs::default(), true, "").await;
    // No order was needed (a certificate is stored) ...
    tokio::time::sleep(secs(5)).await;
    assert_eq!(s.ca.requests("POST"), 0);
    // ... and the zone is answered all the same.
    let r = edge::dns::propagation::query_txt(s.dns, "nothing.example.test", false).await;
    assert_eq!(r, Ok(vec![]), "{r:?}");
    let udp = tokio::net::UdpSocket::bind(s.dns).await;
    assert!(udp.is_err(), "the port is not held");
}

/// A reload makes the solvers anew: the built-in responder's port passes to
/// the new one, and the next order goes through it.
#[tokio::test(start_paused = true)]
async fn after_a_reload_the_built_in_zone_still_answers_and_orders_go_through() {
    let s = setup(Knobs::default(), false, "").await;
    s.until_issued(1, secs(60)).await;
    let body = format!(
        "{}[dns]\nprovider = \"builtin\"\nlisten = \"{}\"\nzone = \"example.test\"\nresolvers = [\"{}\"]\n{}",
        s.ca.toml(),
        s.dns,
        s.dns,
        site(&[NAME], &[&s.up.addr()], "")
    );
    s.edge.reload(&body).await;
    let r = edge::dns::propagation::query_txt(s.dns, "nothing.example.test", false).await;
    assert_eq!(r, Ok(vec![]), "{r:?}");
    let code = delegate(
        &s.edge.state(),
        &Request::Renew {
            force: true,
            domain: None,
        },
    )
    .await;
    assert_eq!(code, Some(0));
    assert_eq!(s.ca.issued(), 2);
    assert_eq!(s.ca.orders()[1].valid, [Some(true)]);
}
