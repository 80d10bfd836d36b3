//! Balancing and failover with real Flask backends behind `edge serve`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

/// `n` requests on keep-alive connections (curl reuses one per invocation),
/// optionally from a given loopback source address; returns versions seen.
fn versions(port: u16, n: usize, source: Option<&str>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(100);
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sk",
            "--max-time",
            "30",
            "--resolve",
            &format!("flask.test:{port}:127.0.0.1"),
        ]);
        if let Some(s) = source {
            cmd.args(["--interface", s]);
        }
        for _ in 0..batch {
            cmd.arg(format!("https://flask.test:{port}/"));
        }
        let o = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        out.extend(
            text.match_indices("Version")
                .filter_map(|(i, _)| text[i + 7..i + 8].parse::<u32>().ok()),
        );
        left -= batch;
    }
    out
}

fn counts(v: &[u32]) -> BTreeMap<u32, usize> {
    let mut m = BTreeMap::new();
    for x in v {
        *m.entry(*x).or_insert(0) += 1;
    }
    m
}

fn edge_for(
    backends: &[&Flask],
    site_extra: &str,
    upstreams: Option<String>,
) -> (tempfile::TempDir, Edge) {
    let ups = upstreams.unwrap_or_else(|| {
        let v: Vec<String> = backends
            .iter()
            .map(|f| format!("\"{}\"", f.addr()))
            .collect();
        v.join(", ")
    });
    let (dir, cfg) = config(&format!(
        "{}\n[[site]]\ndomains = [\"flask.test\"]\nupstreams = [{ups}]\n{site_extra}\n",
        listen_any()
    ));
    let edge = Edge::serve(&cfg);
    (dir, edge)
}

#[test]
fn weights_hold_over_1000_requests() {
    let trio = flask_trio();
    let ups = format!(
        "{{ addr = \"{}\", weight = 3 }}, \"{}\", \"{}\"",
        trio[0].addr(),
        trio[1].addr(),
        trio[2].addr()
    );
    let (_d, edge) = edge_for(&[], "", Some(ups));
    let v = versions(edge.https.port(), 1000, None);
    assert_eq!(v.len(), 1000);
    let c = counts(&v);
    println!("weights 3:1:1 over 1000 requests: {c:?}");
    assert_eq!(c, BTreeMap::from([(1, 600), (2, 200), (3, 200)]));
}

#[test]
fn failover_under_load_loses_nothing_and_the_backend_comes_back() {
    let mut trio = flask_trio();
    let port2 = trio[1].port;
    let refs: Vec<&Flask> = trio.iter().collect();
    let (_d, edge) = edge_for(&refs, "fail_timeout = \"1s\"", None);
    let port = edge.https.port();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (code, _) = curl("flask.test", port, "/", &[]);
                    if code == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let wait_ok = |n: usize| {
        let target = ok.load(Ordering::Relaxed) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ok.load(Ordering::Relaxed) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} more answered requests did not come within 30 s ({} failed)",
                failed.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_ok(20);
    trio[1].proc.kill();
    wait_ok(40);
    edge.proc
        .wait_for("upstream marked down", Duration::from_secs(5));
    trio[1] = Flask::start_on(2, port2);
    // After fail_timeout the restarted backend is tried again and gets traffic.
    let mut back = false;
    for _ in 0..100 {
        wait_ok(5);
        if edge.proc.output().contains("upstream back up") {
            back = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("failover under load: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(
        back,
        "the restarted backend never came back:\n{}",
        edge.proc.output()
    );
    assert!(versions(port, 9, None).contains(&2));
    // All down: the 502 page.
    for f in trio.iter_mut() {
        f.proc.kill();
    }
    let (code, body) = curl("flask.test", port, "/", &[]);
    assert_eq!(code, 502, "{body}");
}

#[test]
fn ip_hash_sticks_per_client_and_moves_only_the_lost_backends_clients() {
    let mut trio = flask_trio();
    let refs: Vec<&Flask> = trio.iter().collect();
    let (_d, edge) = edge_for(&refs, "balance = \"ip_hash\"", None);
    let port = edge.https.port();
    let clients: Vec<String> = (2..26).map(|i| format!("127.0.0.{i}")).collect();
    let mut home = BTreeMap::new();
    for c in &clients {
        let v = versions(port, 5, Some(c));
        assert_eq!(v.len(), 5);
        assert!(v.iter().all(|x| *x == v[0]), "{c} was not sticky: {v:?}");
        home.insert(c.clone(), v[0]);
    }
    let spread = counts(&home.values().copied().collect::<Vec<_>>());
    assert!(spread.len() >= 2, "all clients on one backend: {spread:?}");
    // Take away the backend with the most clients.
    let (&lost, _) = spread.iter().max_by_key(|(_, n)| **n).unwrap();
    trio[(lost - 1) as usize].proc.kill();
    for c in &clients {
        let v = versions(port, 3, Some(c));
        let last = *v.last().unwrap();
        if home[c] == lost {
            assert_ne!(last, lost);
        } else {
            assert_eq!(last, home[c], "{c} moved although its backend is fine");
        }
    }
}

#[test]
fn least_conn_and_p2c_avoid_a_slow_backend() {
    for policy in ["least_conn", "p2c"] {
        let slow = Flask::start_env(1, &[("FLASK_DELAY", "0.4")]);
        let fast2 = Flask::start(2);
        let fast3 = Flask::start(3);
        let (_d, edge) = edge_for(
            &[&slow, &fast2, &fast3],
            &format!("balance = \"{policy}\""),
            None,
        );
        let port = edge.https.port();
        // Six concurrent clients, 10 requests each.
        let handles: Vec<_> = (0..6)
            .map(|_| std::thread::spawn(move || versions(port, 10, None)))
            .collect();
        let all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 60);
        let c = counts(&all);
        let to_slow = c.get(&1).copied().unwrap_or(0);
        println!("{policy}: {c:?}");
        assert!(
            to_slow <= 12,
            "{policy} sent {to_slow} of 60 to the slow backend: {c:?}"
        );
    }
}

#[test]
fn active_health_check_takes_out_and_puts_back() {
    let one = Flask::start(1);
    let sick = Flask::start_env(2, &[("FLASK_HEALTH_STATUS", "500")]);
    let port2 = sick.port;
    let three = Flask::start(3);
    let (_d, edge) = edge_for(
        &[&one, &sick, &three],
        "health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"1s\", status = 200, rise = 2, fall = 2 }",
        None,
    );
    let port = edge.https.port();
    edge.proc.wait_for(
        "health check failed 2 time(s) in a row",
        Duration::from_secs(10),
    );
    edge.proc
        .wait_for("upstream marked down", Duration::from_secs(1));
    let v = versions(port, 30, None);
    assert_eq!(v.len(), 30);
    assert!(
        !v.contains(&2),
        "traffic reached the unhealthy backend: {v:?}"
    );
    // Healthy again (restarted without the failing health status): back in rotation.
    drop(sick);
    let _healthy = Flask::start_on(2, port2);
    edge.proc
        .wait_for("upstream back up", Duration::from_secs(10));
    assert!(versions(port, 9, None).contains(&2));
    // Each change was logged once.
    assert_eq!(edge.proc.count("upstream marked down"), 1);
    assert_eq!(edge.proc.count("upstream back up"), 1);
}

#[test]
fn websocket_echo_through_edge_and_other_upgrades_refused() {
    let port = free_port();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(repo().join("tests/e2e/support/ws_echo.py"))
        .args(["serve", &port.to_string()]);
    let ws = Proc::spawn("ws echo", cmd);
    ws.wait_for("ws echo listening", Duration::from_secs(10));
    let (_d, edge) = edge_for(&[], "", Some(format!("\"127.0.0.1:{port}\"")));
    let url = format!("wss://flask.test:{}/chat", edge.https.port());
    let out = Command::new(PYTHON)
        .arg(repo().join("tests/e2e/support/ws_echo.py"))
        .args(["client", &url, "hello", "through edge"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["echo:hello", "echo:through edge"]
    );
    // h2c and unknown upgrades are refused, never tunnelled.
    let (code, _) = curl(
        "flask.test",
        edge.https.port(),
        "/",
        &[
            "--http1.1",
            "-H",
            "Upgrade: h2c",
            "-H",
            "Connection: Upgrade, HTTP2-Settings",
            "-H",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
    );
    assert_eq!(code, 400);
}

/// `n` requests at once, each on its own connection; their status codes.
fn concurrent_statuses(port: u16, n: usize) -> Vec<u16> {
    let handles: Vec<_> = (0..n)
        .map(|_| std::thread::spawn(move || curl("flask.test", port, "/", &[]).0))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn max_conns_queues_requests_in_edge_not_at_the_backend() {
    let slow = Flask::start_env(1, &[("FLASK_DELAY", "0.5")]);
    let (_d, edge) = edge_for(&[&slow], "max_conns = 2", None);
    let codes = concurrent_statuses(edge.https.port(), 6);
    assert_eq!(codes, vec![200; 6], "queued requests must all be answered");
    let peak = Command::new("curl")
        .args(["-s", &format!("http://{}/peak", slow.addr())])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&peak.stdout),
        "2",
        "the backend should have had exactly max_conns requests at once"
    );
}

#[test]
fn max_conns_queue_gives_503_after_connect_timeout_and_a_full_upstream_is_passed_over() {
    let slow = Flask::start_env(1, &[("FLASK_DELAY", "4")]);
    let (_d, edge) = edge_for(
        &[&slow],
        "max_conns = 1\nconnect_timeout = \"1s\"\nresponse_timeout = \"10s\"",
        None,
    );
    let port = edge.https.port();
    let first = std::thread::spawn(move || curl("flask.test", port, "/", &[]).0);
    slow.proc
        .wait_for("slow request started", Duration::from_secs(10));
    // The only slot is taken: this one waits connect_timeout in the queue, then 503.
    let out = Command::new("curl")
        .args([
            "-sk",
            "-i",
            "--resolve",
            &format!("flask.test:{port}:127.0.0.1"),
            &format!("https://flask.test:{port}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/2 503"), "{text}");
    assert!(text.contains("retry-after: 5"), "{text}");
    assert_eq!(first.join().unwrap(), 200);
    edge.proc.wait_for("max_conns", Duration::from_secs(5));
    assert_eq!(
        slow.proc.count("slow request started"),
        1,
        "the queued request reached the backend"
    );

    // Two upstreams, one full: the next request goes to the free one at once.
    let slow2 = Flask::start_env(1, &[("FLASK_DELAY", "4")]);
    let fast = Flask::start(2);
    let (_d2, edge2) = edge_for(&[&slow2, &fast], "max_conns = 1", None);
    let port2 = edge2.https.port();
    // Round robin sends the first to slow2 (listed first); it holds that slot.
    let first = std::thread::spawn(move || curl("flask.test", port2, "/", &[]).0);
    slow2
        .proc
        .wait_for("slow request started", Duration::from_secs(10));
    for _ in 0..4 {
        let (code, body) = curl("flask.test", port2, "/", &["--max-time", "3"]);
        assert_eq!(code, 200);
        assert!(body.contains("Version2"), "{body}");
    }
    assert_eq!(first.join().unwrap(), 200);
}
