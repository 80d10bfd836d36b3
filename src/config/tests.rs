use std::path::Path;
use std::time::Duration;

use super::defaults::MAX_CONNS;
use super::validate::check_upstream_addr;
use super::*;

const GOOD: &str = r#"
state_dir = "s"
[listen]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
[[site]]
domains = ["flask.example.org"]
upstreams = ["127.0.0.1:5001", { addr = "website2:5000", weight = 3 }]
"#;

fn err(text: &str) -> String {
    parse(Path::new("t.toml"), text).unwrap_err().to_string()
}

fn with_dns(dns: &str) -> String {
    format!("{GOOD}\n[dns]\n{dns}\n")
}

#[test]
fn good_config_loads_with_defaults() {
    let c = parse(Path::new("t.toml"), GOOD).unwrap();
    assert_eq!(c.listen.redirect, 308);
    assert_eq!(c.sites[0].upstreams[1].weight, 3);
    assert_eq!(c.acme.directory, LETSENCRYPT);
    assert_eq!(c.sites[0].connect_timeout, Duration::from_secs(60));
    assert_eq!(c.sites[0].upstreams[0].max_conns, MAX_CONNS);
    assert_eq!(c.dns.provider.name(), "manual");
    assert_eq!(c.limits.max_header_bytes, 32 * 1024);
}

#[test]
fn max_conns_for_the_site_and_per_upstream() {
    let ups = r#"upstreams = ["127.0.0.1:5001", { addr = "website2:5000", weight = 3 }]"#;
    let text = GOOD.replace(
        ups,
        &format!(
            "{}\nmax_conns = 0",
            ups.replace("weight = 3", "max_conns = 8")
        ),
    );
    let c = parse(Path::new("t.toml"), &text).unwrap();
    assert_eq!(c.sites[0].upstreams[0].max_conns, 0, "0 is no limit");
    assert_eq!(c.sites[0].upstreams[1].max_conns, 8);
    let e = err(&format!("{GOOD}max_conns = -1\n"));
    assert!(
        e.contains("site[0].max_conns") && e.contains("out of range"),
        "{e}"
    );
    let e = err(&GOOD.replace("weight = 3", "max_conns = 100001"));
    assert!(
        e.contains("site[0].upstreams") && e.contains("website2:5000: max_conns"),
        "{e}"
    );
}

#[test]
fn errors_name_the_key() {
    assert!(err("bogus = 1\n").contains("unknown field `bogus`"));
    assert!(err(&GOOD.replace("127.0.0.1:8080", "nope")).contains("listen.http"));
    assert!(err(&GOOD.replace(
        r#"upstreams = ["127.0.0.1:5001", { addr = "website2:5000", weight = 3 }]"#,
        "upstreams = []"
    ))
    .contains("site[0].upstreams"));
    assert!(err(&with_dns("provider = \"manual\"\nurl = \"http://x\"")).contains("dns.url"));
    assert!(err(&GOOD.replace("flask.example.org", "a..b")).contains("site[0].domains"));
    // An IP address is a name only for http-01 and tls-alpn-01 (RFC 8738).
    let e = err(&GOOD.replace("flask.example.org", "1.2.3.4"));
    assert!(
        e.contains("site[0].challenge") && e.contains("http-01"),
        "{e}"
    );
}

/// A value serde reads (a duration, a size, an address) names its key path,
/// the line it is on, the value and what is expected.
#[test]
fn typed_values_name_key_line_value_and_fix() {
    let e = err(&format!(
        "{GOOD}\n[limits]\nheader_read_timeout = \"ten seconds\"\n"
    ));
    assert!(
        e.starts_with(
            "t.toml:11: key `limits.header_read_timeout`: \"ten seconds\" is not a duration"
        ),
        "{e}"
    );
    assert!(e.contains("expected e.g. \"10s\""), "{e}");
    let e = err(&format!("{GOOD}\n[limits]\nmax_body_bytes = \"lots\"\n"));
    assert!(
        e.contains("key `limits.max_body_bytes`") && e.contains("\"lots\" is not a size"),
        "{e}"
    );
    let e = err(&format!("{GOOD}fail_timeout = \"5q\"\n"));
    assert!(e.contains("key `site[0].fail_timeout`"), "{e}");
    let e = err(&GOOD.replace("127.0.0.1:8443", "[::1]"));
    assert!(
        e.contains("key `listen.https`") && e.contains("expected IP:PORT"),
        "{e}"
    );
    let c = parse(
        Path::new("t.toml"),
        &format!("{GOOD}\n[limits]\nmax_body_bytes = \"1m\"\nmax_header_bytes = 65536\n"),
    )
    .unwrap();
    assert_eq!(c.limits.max_body_bytes, 1 << 20);
    assert_eq!(c.limits.max_header_bytes, 65536);
}

#[test]
fn bad_toml_shows_the_line() {
    let e = err("state_dir = \n");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn upstream_addresses() {
    assert!(check_upstream_addr("127.0.0.1:5001").is_ok());
    assert!(check_upstream_addr("[::1]:5001").is_ok());
    assert!(check_upstream_addr("website1:5000").is_ok());
    assert!(check_upstream_addr("website1").is_err());
    assert!(check_upstream_addr("http://x:1").is_err());
    assert!(check_upstream_addr("x:0").is_err());
}

/// An unknown provider name is an error that lists the known ones; it never
/// falls through to some other provider.
#[test]
fn an_unknown_provider_is_an_error_never_another_provider() {
    for name in ["route53", "pebble", "Manual", "", "pebble-challtestsrv "] {
        let e = err(&with_dns(&format!(
            "provider = {name:?}\nurl = \"http://127.0.0.1:8055\""
        )));
        assert!(
            e.contains("key `dns.provider`") && e.contains("is not a provider this build knows"),
            "{name:?}: {e}"
        );
        for known in crate::dns::PROVIDERS {
            assert!(e.contains(known.name), "{e} does not list {}", known.name);
        }
    }
}

/// Each provider reads its own keys; a key of another provider is named with
/// the provider it belongs to.
#[test]
fn providers_own_their_keys() {
    let c = parse(
        Path::new("t.toml"),
        &with_dns("provider = \"pebble-challtestsrv\"\nurl = \"http://127.0.0.1:8055/\"\nresolvers = [\"127.0.0.1:8053\", \"10.0.0.1\"]\npropagation_timeout = \"1m\""),
    )
    .unwrap();
    assert_eq!(c.dns.provider.name(), "pebble-challtestsrv");
    assert_eq!(c.dns.resolvers[1].port(), 53);
    assert_eq!(c.dns.propagation_timeout, Duration::from_secs(60));
    let e = err(&with_dns(
        "provider = \"exec\"\ncommand = \"/bin/true\"\nzone = \"x.org\"",
    ));
    assert!(
        e.contains("key `dns.zone`")
            && e.contains("not used by provider \"exec\"")
            && e.contains("\"rfc2136\"")
            && e.contains("\"builtin\""),
        "{e}"
    );
    let e = err(&with_dns("provider = \"exec\"\ncomand = \"/bin/true\""));
    assert!(
        e.contains("key `dns.comand`") && e.contains("no provider takes it"),
        "{e}"
    );
    let e = err(&with_dns("provider = \"exec\""));
    assert!(e.contains("key `dns.command`: missing"), "{e}");
    let e = err(&with_dns(
        "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key = \"k\"\nttl = \"60\"",
    ));
    assert!(e.contains("key `dns.ttl`"), "{e}");
    let e = err(&with_dns(
        "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key = \"k\"\ntsig_algorithm = \"hmac-sha1\"",
    ));
    assert!(
        e.contains("key `dns.tsig_algorithm`: hmac-sha1 is not supported"),
        "{e}"
    );
    let e = err(&with_dns(
        "provider = \"cloudflare\"\napi_token = \"t\"\napi_token_file = \"/f\"",
    ));
    assert!(
        e.contains("set api_token or api_token_file, not both"),
        "{e}"
    );
    let e = err(&with_dns(
        "provider = \"builtin\"\nzone = \"*.acme.example.org\"",
    ));
    assert!(
        e.contains("key `dns.zone`: a zone cannot be a wildcard"),
        "{e}"
    );
    let e = err(&with_dns("provider = \"manual\"\npropagation_delay = 5"));
    assert!(e.contains("key `dns.propagation_delay`"), "{e}");
}

#[test]
fn an_inline_secret_is_noted_and_never_printed() {
    let c = parse(
        Path::new("t.toml"),
        &with_dns("provider = \"cloudflare\"\napi_token = \"s3cr3t-token\""),
    )
    .unwrap();
    assert!(c.holds_secrets);
    assert!(!format!("{c:?}").contains("s3cr3t-token"));
    let c = parse(
        Path::new("t.toml"),
        &with_dns("provider = \"cloudflare\"\napi_token_file = \"/etc/edge/cf\""),
    )
    .unwrap();
    assert!(!c.holds_secrets);
}

/// The shipped configs and every TOML example in the README are valid (an
/// example without a `[[site]]` gets one, to stand for the rest of a file).
#[test]
fn shipped_configs_and_readme_examples_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["config/edge.toml", "config/local.toml", "config/fleet.toml"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        parse(Path::new(f), &text).unwrap_or_else(|e| panic!("{e}"));
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut blocks = 0;
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("unclosed toml block");
        let mut text = body[..end].to_string();
        if !text.contains("[[site]]") {
            text.push_str(
                "\n[[site]]\ndomains = [\"example.org\"]\nupstreams = [\"127.0.0.1:5001\"]\n",
            );
        }
        parse(Path::new("README.md"), &text)
            .unwrap_or_else(|e| panic!("README example {}: {e}\n{text}", blocks + 1));
        blocks += 1;
        rest = &body[end + 3..];
    }
    assert!(
        blocks >= 2,
        "only {blocks} toml examples found in the README"
    );
}

#[test]
fn profiles_proxy_protocol_and_status_auth_are_checked() {
    let c = parse(
        Path::new("t.toml"),
        &format!("{GOOD}profile = \"shortlived\"\n[acme]\nprofile = \"tlsserver\"\n"),
    )
    .unwrap();
    assert_eq!(c.acme.profile.as_deref(), Some("tlsserver"));
    assert!(!c.acme.profile_required);
    assert_eq!(c.sites[0].profile.as_deref(), Some("shortlived"));
    let e = err(&format!("{GOOD}[acme]\nprofile = \"short lived\"\n"));
    assert!(
        e.contains("acme.profile") && e.contains("\"tlsserver\""),
        "{e}"
    );

    let pp = |listen: &str| {
        GOOD.replace(
            "https = \"127.0.0.1:8443\"",
            &format!("https = \"127.0.0.1:8443\"\n{listen}"),
        )
    };
    let c = parse(
        Path::new("t.toml"),
        &pp("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\"]"),
    )
    .unwrap();
    assert_eq!(c.listen.proxy_protocol.unwrap().len(), 2);
    let e = err(&pp("proxy_protocol = true"));
    assert!(
        e.contains("listen.proxy_protocol") && e.contains("proxy_protocol_from"),
        "{e}"
    );
    let e = err(&pp("proxy_protocol_from = [\"10.0.0.0/8\"]"));
    assert!(e.contains("listen.proxy_protocol_from"), "{e}");
    let e = err(&pp(
        "proxy_protocol = true\nproxy_protocol_from = [\"ten\"]",
    ));
    assert!(e.contains("\"ten\"") && e.contains("CIDR"), "{e}");

    let m = |keys: &str| format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9898\"\n{keys}\n");
    let c = parse(
        Path::new("t.toml"),
        &m("username = \"ops\"\npassword_file = \"/p\""),
    )
    .unwrap();
    assert_eq!(c.metrics_auth.unwrap().username, "ops");
    assert!(err(&m("username = \"ops\"")).contains("metrics.password_file"));
    assert!(err(&m("password_file = \"/p\"")).contains("metrics.username"));
    assert!(err(&m("username = \"a:b\"\npassword_file = \"/p\"")).contains("metrics.username"));
}

#[test]
fn the_cluster_table_names_each_bad_key() {
    let with = |c: &str| format!("{GOOD}\n[cluster]\n{c}\n");
    let ok = with(
        "store = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nnode = \"edge-1\"\nkey_encryption_key_file = \"/etc/edge/kek\"",
    );
    let c = parse(Path::new("t.toml"), &ok).unwrap().cluster.unwrap();
    assert_eq!(c.prefix, "/edge/");
    assert_eq!(c.lease, Duration::from_secs(15));
    assert_eq!(c.node, "edge-1");
    assert!(parse(Path::new("t.toml"), GOOD).unwrap().cluster.is_none());
    let base = "store = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\"]\nkey_encryption_key_file = \"k\"\nnode = \"n\"";
    for (extra, key, hint) in [
        ("store = \"consul\"\nendpoints = [\"http://a:1\"]\nkey_encryption_key_file = \"k\"", "cluster.store", "\"etcd\""),
        ("store = \"etcd\"\nkey_encryption_key_file = \"k\"", "cluster.endpoints", "2379"),
        ("store = \"etcd\"\nendpoints = [\"10.0.0.1\"]\nkey_encryption_key_file = \"k\"", "cluster.endpoints", "with a port"),
        ("store = \"etcd\"\nendpoints = [\"http://a:1\", \"https://b:1\"]\nkey_encryption_key_file = \"k\"", "cluster.endpoints", "mixes"),
        ("store = \"etcd\"\nendpoints = [\"http://a:1\"]", "cluster.key_encryption_key_file", "head -c 32 /dev/urandom"),
        (&format!("{base}\nprefix = \"edge\""), "cluster.prefix", "starts and ends with '/'"),
        (&format!("{base}\nlease = \"1s\""), "cluster.lease", "2s"),
        (&format!("{base}\ncert_file = \"c\""), "cluster.key_file", "private key"),
        (&format!("{base}\nusername = \"u\""), "cluster.password_file", "password"),
        (&format!("{base}\nca_file = \"ca\""), "cluster.endpoints", "https://"),
    ] {
        let e = err(&with(extra));
        assert!(e.contains(key) && e.contains(hint), "{extra}: {e}");
    }
    let e = err(&with(&base.replace("node = \"n\"", "node = \"a b\"")));
    assert!(e.contains("cluster.node"), "{e}");
}
