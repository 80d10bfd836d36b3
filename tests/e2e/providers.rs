//! DNS publishers against local servers: `httpreq` against a server written
//! here that feeds Pebble's DNS (as people's own tooling would), `cloudflare`
//! against a local stub of the v4 API endpoints (the real API cannot be reached
//! from this machine; the stub is named a stub), and CNAME following.

use crate::common::*;

fn provider_config(p: &Pebble, provider: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    config(&format!(
        "{}{}{}",
        listen_any(),
        p.acme_toml(provider),
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ))
}

#[test]
fn httpreq_publishes_through_the_users_endpoint_with_basic_auth() {
    let p = Pebble::start();
    let cts = p.cts_url.clone();
    // user:s3cret-pass
    let (url, log) = http_server(move |r| {
        if r.header("authorization") != Some("Basic dXNlcjpzM2NyZXQtcGFzcw==") {
            return (401, "{\"error\":\"bad credentials\"}".into());
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        match r.path.as_str() {
            "/present" => cts_post(
                &cts,
                "/set-txt",
                serde_json::json!({"host": v["fqdn"], "value": v["value"]}),
            ),
            "/cleanup" => cts_post(&cts, "/clear-txt", serde_json::json!({"host": v["fqdn"]})),
            _ => return (404, "{}".into()),
        }
        (200, "{}".into())
    });
    let (_d, cfg) = provider_config(&p, &format!("provider = \"httpreq\"\nurl = \"{url}\"\nusername = \"user\"\npassword = \"s3cret-pass\""));
    let o = edge(
        &["obtain", "-d", "x.example.test", "-d", "*.x.example.test"],
        &cfg,
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let seen = log.lock().unwrap().clone();
    let presents: Vec<_> = seen.iter().filter(|r| r.path == "/present").collect();
    assert_eq!(presents.len(), 2, "{seen:?}");
    assert!(
        presents.iter().all(|r| r
            .body
            .contains("\"fqdn\":\"_acme-challenge.x.example.test.\"")),
        "{seen:?}"
    );
    assert_eq!(seen.iter().filter(|r| r.path == "/cleanup").count(), 2);
    assert!(!t.contains("s3cret-pass"));

    // A wrong password: a clear error, the secret never printed.
    let bad = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("s3cret-pass", "wrong-pass-123");
    std::fs::write(&cfg, bad).unwrap();
    let o = edge(&["obtain", "-d", "y.example.test"], &cfg);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(t.contains("401") && t.contains("dns.username"), "{t}");
    assert!(!t.contains("wrong-pass-123"), "{t}");
}

#[test]
fn cloudflare_against_a_local_stub_of_the_v4_api() {
    let p = Pebble::start();
    let cts = p.cts_url.clone();
    const TOKEN: &str = "cf-token-0123456789abcdef";
    // STUB of api.cloudflare.com/client/v4: zones lookup, create and delete TXT.
    // Records it "creates" are put into challtestsrv, which Pebble asks.
    let records = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        (String, String),
    >::new()));
    let recs = records.clone();
    let (url, log) = http_server(move |r| {
        if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return (403, r#"{"success":false,"errors":[{"code":9109,"message":"Invalid access token"}],"result":null}"#.into());
        }
        let path = r.path.as_str();
        if r.method == "GET" && path.starts_with("/zones?name=") {
            let name = &path["/zones?name=".len()..];
            let result = if name == "example.test" {
                r#"[{"id":"zone-1","name":"example.test"}]"#
            } else {
                "[]"
            };
            return (
                200,
                format!(r#"{{"success":true,"errors":[],"result":{result}}}"#),
            );
        }
        if r.method == "POST" && path == "/zones/zone-1/dns_records" {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            let (name, content) = (
                v["name"].as_str().unwrap().to_string(),
                v["content"].as_str().unwrap().to_string(),
            );
            assert_eq!(v["type"], "TXT");
            cts_post(
                &cts,
                "/set-txt",
                serde_json::json!({"host": format!("{name}."), "value": content}),
            );
            let mut m = recs.lock().unwrap();
            let id = format!("rec-{}", m.len() + 1);
            m.insert(id.clone(), (name, content));
            return (
                200,
                format!(r#"{{"success":true,"errors":[],"result":{{"id":"{id}"}}}}"#),
            );
        }
        if r.method == "DELETE" && path.starts_with("/zones/zone-1/dns_records/") {
            let id = &path["/zones/zone-1/dns_records/".len()..];
            if let Some((name, _)) = recs.lock().unwrap().remove(id) {
                cts_post(
                    &cts,
                    "/clear-txt",
                    serde_json::json!({"host": format!("{name}.")}),
                );
                return (
                    200,
                    format!(r#"{{"success":true,"errors":[],"result":{{"id":"{id}"}}}}"#),
                );
            }
            return (404, r#"{"success":false,"errors":[{"code":81044,"message":"Record does not exist."}],"result":null}"#.into());
        }
        (
            404,
            r#"{"success":false,"errors":[{"code":7003,"message":"No route"}],"result":null}"#
                .into(),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("cf-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (_d, cfg) = provider_config(
        &p,
        &format!(
            "provider = \"cloudflare\"\napi_token_file = \"{}\"\napi_url = \"{url}\"",
            token_file.display()
        ),
    );
    let o = edge(
        &["obtain", "-d", "x.example.test", "-d", "*.x.example.test"],
        &cfg,
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        records.lock().unwrap().is_empty(),
        "cleanup left records behind"
    );
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|r| r.method == "POST").count(), 2);
    assert_eq!(seen.iter().filter(|r| r.method == "DELETE").count(), 2);
    assert!(!t.contains(TOKEN));

    // A token the API refuses: the API's words and a hint, never the token.
    std::fs::write(&token_file, "not-the-token-xyz").unwrap();
    let o = edge(&["obtain", "-d", "z.example.test"], &cfg);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        t.contains("Invalid access token") && t.contains("Zone.DNS edit"),
        "{t}"
    );
    assert!(!t.contains("not-the-token-xyz"), "{t}");
    // An inline token in a world-readable config: warned about at start.
    let inline = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("api_token_file = \"{}\"", token_file.display()),
        &format!("api_token = \"{TOKEN}\""),
    );
    std::fs::write(&cfg, inline).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = edge(&["obtain", "-d", "w.example.test"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("holds a credential and is readable by others"),
        "{t}"
    );
    assert!(!t.contains(TOKEN));
}

#[test]
fn cname_delegated_challenge_names_are_followed() {
    let p = Pebble::start();
    cts_post(
        &p.cts_url,
        "/set-cname",
        serde_json::json!({"host": "_acme-challenge.cname.test.", "target": "_acme-challenge.delegated.test."}),
    );
    let (_d, cfg) = provider_config(&p, &p.challtestsrv_dns());
    let o = edge(&["obtain", "-d", "cname.test"], &cfg);
    let t = text(&o);
    assert!(
        t.contains("publishing at its target") && t.contains("_acme-challenge.delegated.test"),
        "{t}"
    );
    assert!(o.status.success(), "{t}");
}

/// Pebble asks a real Knot; edge updates Knot with TSIG-signed RFC 2136 UPDATEs.
fn knot_pebble() -> (Knot, Pebble) {
    let knot = Knot::start("example.test");
    // challtestsrv is still started for Pebble's other needs; DNS goes to Knot.
    let p = Pebble::with_dnsserver(&knot.addr.to_string(), &[]);
    (knot, p)
}

fn rfc2136_config(
    knot: &Knot,
    p: &Pebble,
    secret: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let provider = format!(
        "provider = \"rfc2136\"\nserver = \"{}\"\ntsig_key = \"{}\"\ntsig_secret = \"{secret}\"",
        knot.addr, knot.key_name
    );
    // Propagation is checked at Knot itself: Pebble's DNS (p.dns) is Knot.
    let (d, cfg) = provider_config(p, &provider);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    (d, cfg)
}

#[test]
fn rfc2136_against_knot_apex_and_wildcard_then_records_are_gone() {
    let (knot, p) = knot_pebble();
    let (dir, cfg) = rfc2136_config(&knot, &p, &knot.secret);
    let o = edge(
        &["obtain", "-d", "x.example.test", "-d", "*.x.example.test"],
        &cfg,
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}\nknot:\n{}", knot.proc.output());
    assert!(!t.contains(&knot.secret), "the TSIG secret was printed");
    // Knot logged the signed updates, and the records are gone again.
    // Two values added (apex and wildcard share the name), then exactly those two deleted.
    knot.proc
        .wait_for("serial 4 -> 5", std::time::Duration::from_secs(5));
    assert_eq!(
        knot.proc.count("DDNS, finished, serial"),
        4,
        "{}",
        knot.proc.output()
    );
    assert_eq!(
        knot.dig("_acme-challenge.x.example.test", "TXT").trim(),
        "",
        "records left behind"
    );
    assert!(dir
        .path()
        .join("state/live/x.example.test/fullchain.pem")
        .exists());
}

#[test]
fn rfc2136_wrong_secret_is_a_clear_badsig_error() {
    let (knot, p) = knot_pebble();
    use base64::Engine;
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let (_dir, cfg) = rfc2136_config(&knot, &p, &wrong);
    let o = edge(&["obtain", "-d", "y.example.test"], &cfg);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("BADSIG") && t.contains("dns.tsig_secret"), "{t}");
    assert!(!t.contains(&wrong));
}

/// `dig` against edge's own responder, as an outside client would ask.
fn dig(port: u16, name: &str, rtype: &str, short: bool) -> String {
    let mut cmd = std::process::Command::new("dig");
    cmd.args([
        "+tries=1",
        "+time=2",
        "-p",
        &port.to_string(),
        "@127.0.0.1",
        name,
        rtype,
    ]);
    if short {
        cmd.arg("+short");
    }
    String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
}

#[test]
fn builtin_responder_serves_pebble_and_renews_unattended() {
    let dns_port = free_port();
    // Pebble asks edge's own responder.
    let p = Pebble::with_dnsserver(
        &format!("127.0.0.1:{dns_port}"),
        &[("PEBBLE_AUTHZREUSE", "0")],
    );
    let provider = format!(
        "provider = \"builtin\"\nlisten = \"127.0.0.1:{dns_port}\"\nzone = \"acme.example.test\""
    );
    let (state, cfg) = config(&format!(
        "{}{}{}",
        listen_any(),
        p.acme_toml(&provider),
        site(
            &["acme.example.test", "*.acme.example.test"],
            &["127.0.0.1:9".to_string()]
        )
    ));
    // The daemon obtains apex + wildcard on its own at start, through its responder.
    let edge_d = Edge::serve(&cfg);
    edge_d.proc.wait_for(
        "built-in DNS responder listening",
        std::time::Duration::from_secs(20),
    );
    edge_d
        .proc
        .wait_for("renewal succeeded", std::time::Duration::from_secs(30));
    assert!(state
        .path()
        .join("state/live/acme.example.test/fullchain.pem")
        .exists());

    // As an outside client sees it: SOA and NS for the zone, NXDOMAIN inside,
    // REFUSED outside, and never recursion.
    assert!(
        dig(dns_port, "acme.example.test", "SOA", true).contains("hostmaster.acme.example.test.")
    );
    assert!(dig(dns_port, "acme.example.test", "NS", true).contains("ns.acme.example.test."));
    let inside = dig(dns_port, "nothing.acme.example.test", "TXT", false);
    assert!(
        inside.contains("status: NXDOMAIN") && inside.contains(" aa"),
        "{inside}"
    );
    let outside = dig(dns_port, "www.example.org", "A", false);
    assert!(outside.contains("status: REFUSED"), "{outside}");
    assert!(!outside.contains(" ra"), "recursion offered: {outside}");
    assert!(
        dig(dns_port, "_acme-challenge.acme.example.test", "TXT", true)
            .trim()
            .is_empty(),
        "challenge records left behind"
    );

    // Unattended renewal: no human action.
    let before = std::fs::read(state.path().join("state/live/acme.example.test/cert.pem")).unwrap();
    let o = edge(&["renew", "--force"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(
        std::fs::read(state.path().join("state/live/acme.example.test/cert.pem")).unwrap(),
        before
    );
}

#[test]
fn builtin_tells_exactly_which_cname_is_missing() {
    let p = Pebble::start();
    let dns_port = free_port();
    let provider = format!(
        "provider = \"builtin\"\nlisten = \"127.0.0.1:{dns_port}\"\nzone = \"acme.example.test\""
    );
    let (_d, cfg) = provider_config(&p, &provider);
    let o = edge(
        &[
            "obtain",
            "-d",
            "flask.other.test",
            "-d",
            "*.flask.other.test",
        ],
        &cfg,
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let line = t
        .lines()
        .find(|l| l.contains("CNAME"))
        .unwrap_or_else(|| panic!("{t}"));
    let want = format!(
        "_acme-challenge.flask.other.test. CNAME {}.acme.example.test.",
        edge::dns::builtin::label_for("flask.other.test")
    );
    assert_eq!(line.trim(), want, "{t}");
    assert_eq!(
        t.matches(" CNAME ").count(),
        1,
        "apex and wildcard share one CNAME: {t}"
    );
    // Once the CNAME exists, edge follows it and publishes at the label.
    cts_post(
        &p.cts_url,
        "/set-cname",
        serde_json::json!({"host": "_acme-challenge.flask.other.test.", "target": format!("{}.acme.example.test.", edge::dns::builtin::label_for("flask.other.test"))}),
    );
    let o = edge(&["obtain", "-d", "flask.other.test"], &cfg);
    assert!(
        text(&o).contains("publishing at its target"),
        "{}",
        text(&o)
    );
}

/// The production path of `builtin`, end to end: the CA's resolver is a real
/// recursive resolver (Unbound); the site's zone (on Knot) holds the one-time
/// CNAME into edge's zone, which is delegated to edge's own responder.
#[test]
fn builtin_after_the_one_time_cname_through_a_recursive_resolver() {
    let label = edge::dns::builtin::label_for("flask.other.test");
    let www = edge::dns::builtin::label_for("www.other.test");
    let knot = Knot::start_with("other.test", &format!("_acme-challenge.flask CNAME {label}.acme.other.test.\n_acme-challenge.www CNAME {www}.acme.other.test.\n"));
    let edge_dns = free_port();
    let (unbound, unbound_port, _udir) = unbound(&[
        ("other.test", knot.addr.to_string()),
        ("acme.other.test", format!("127.0.0.1:{edge_dns}")),
    ]);

    let p = Pebble::with_dnsserver(
        &format!("127.0.0.1:{unbound_port}"),
        &[("PEBBLE_AUTHZREUSE", "0")],
    );
    let provider = format!(
        "provider = \"builtin\"\nlisten = \"127.0.0.1:{edge_dns}\"\nzone = \"acme.other.test\""
    );
    let (state, cfg) = config(&format!(
        "{}{}{}",
        listen_any(),
        p.acme_toml(&provider),
        site(&["flask.other.test"], &["127.0.0.1:9".to_string()])
    ));
    let t0 = std::time::Instant::now();
    let o = edge(
        &[
            "obtain",
            "-d",
            "flask.other.test",
            "-d",
            "*.flask.other.test",
            "-d",
            "www.other.test",
        ],
        &cfg,
    );
    println!("obtain through unbound took {:?}", t0.elapsed());
    let t = text(&o);
    assert!(o.status.success(), "{t}\nunbound:\n{}", unbound.output());
    assert!(t.contains("publishing at its target"), "{t}");
    let t0 = std::time::Instant::now();
    let o = edge(&["renew", "--force"], &cfg);
    println!("renew through unbound took {:?}", t0.elapsed());
    assert!(o.status.success(), "unattended renewal: {}", text(&o));
    assert!(state
        .path()
        .join("state/archive/flask.other.test/cert2.pem")
        .exists());
}
