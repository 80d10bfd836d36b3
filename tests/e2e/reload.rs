//! SIGHUP and SIGTERM with real connections open.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn sighup_adds_an_upstream_while_a_keepalive_connection_stays_open() {
    let trio = flask_trio();
    let four = Flask::start(4);
    let ups: Vec<String> = trio.iter().map(Flask::addr).collect();
    let (_dir, cfg) = config(&format!("{}{}", listen_any(), site(&["flask.test"], &ups)));
    let edge = Edge::serve(&cfg);
    let port = edge.https.port();

    // A keep-alive connection, one request answered.
    let cmd = s_client(port, true);
    let mut client = Proc::spawn("keep-alive client", cmd);
    client.wait_for("verify return", Duration::from_secs(5));
    client.write_stdin("GET / HTTP/1.1\r\nHost: flask.test\r\n\r\n");
    client.wait_for("200 OK", Duration::from_secs(5));

    // Add the fourth backend and reload.
    let mut all = ups.clone();
    all.push(four.addr());
    let text = std::fs::read_to_string(&cfg).unwrap();
    let old_ups = ups
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let new_ups = all
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(&cfg, text.replace(&old_ups, &new_ups)).unwrap();
    edge.proc.signal("HUP");
    edge.proc.wait_for("reload done", Duration::from_secs(5));

    // The open connection still works.
    client.write_stdin("GET / HTTP/1.1\r\nHost: flask.test\r\n\r\n");
    let start = std::time::Instant::now();
    while client.count("200 OK") < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "second request on the kept-alive connection failed:\n{}",
            client.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // New requests reach all four.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let (code, body) = curl("flask.test", port, "/", &[]);
        assert_eq!(code, 200);
        let i = body.find("Version").unwrap() + 7;
        seen.insert(body[i..i + 1].to_string());
    }
    assert_eq!(seen.len(), 4, "{seen:?}");

    // A bad config on SIGHUP is refused and the running one kept.
    std::fs::write(&cfg, "this is = not [valid").unwrap();
    edge.proc.signal("HUP");
    edge.proc.wait_for(
        "reload refused, keeping the running config",
        Duration::from_secs(5),
    );
    assert_eq!(curl("flask.test", port, "/", &[]).0, 200);
}

#[test]
fn sigterm_lets_a_slow_request_finish() {
    slow_request_finishes_after_sigterm("--http1.1");
}

/// HTTP/2 streams run inside their connection's task (`h2_streams`); the
/// connection must still wait for them when it drains.
#[test]
fn sigterm_lets_a_slow_http2_request_finish() {
    slow_request_finishes_after_sigterm("--http2");
}

/// edge in front of one Flask backend that answers `/` after `delay`
/// seconds, with `limits` in its `[limits]` table.
fn slow_edge(delay: &str, limits: &str) -> (Flask, tempfile::TempDir, Edge) {
    let slow = Flask::start_env(1, &[("FLASK_DELAY", delay)]);
    let (dir, edge) = edge_for(&slow.addr(), limits, "");
    (slow, dir, edge)
}

fn slow_request_finishes_after_sigterm(http: &'static str) {
    let (slow, _dir, mut edge) = slow_edge("1.5", "");
    let port = edge.https.port();
    let req = std::thread::spawn(move || {
        curl(
            "flask.test",
            port,
            "/",
            &[http, "-w", "%{http_version}\n%{http_code}"],
        )
    });
    slow.proc
        .wait_for("slow request started", Duration::from_secs(5));
    edge.proc.signal("TERM");
    let (code, body) = req.join().unwrap();
    assert_eq!(code, 200, "in-flight request was cut: {body}");
    assert!(body.contains("Version1"));
    let want = if http == "--http2" { "2" } else { "1.1" };
    assert!(body.ends_with(want), "not over HTTP/{want}: {body}");
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(10)), 0);
    // New connections are refused once it stopped accepting.
    assert_eq!(curl("flask.test", port, "/", &[]).0, 0);
}

/// A request still running when `shutdown_grace` runs out is cut, and edge
/// exits then instead of waiting on it (systemd would SIGKILL it at its stop
/// timeout, logging nothing).
#[test]
fn sigterm_cuts_what_outlives_shutdown_grace() {
    let (slow, _dir, mut edge) = slow_edge("30", "shutdown_grace = \"1s\"");
    let port = edge.https.port();
    let req = std::thread::spawn(move || curl("flask.test", port, "/", &[]));
    slow.proc
        .wait_for("slow request started", Duration::from_secs(5));
    let start = Instant::now();
    edge.proc.signal("TERM");
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(10)), 0);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "exited after {took:?}, not at the 1 s grace"
    );
    edge.proc.wait_for(
        "HTTPS: grace period over; closing the remaining connections",
        Duration::from_secs(1),
    );
    let (code, body) = req.join().unwrap();
    assert_ne!(code, 200, "the slow request was answered: {body}");
}

/// SIGTERM closes an idle keep-alive HTTPS connection at once (one in the
/// middle of a request gets its answer first: above), so edge exits without
/// waiting out shutdown_grace for a client that may never send again.
#[test]
fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let flask = Flask::start(1);
    let (_dir, mut edge) = edge_for(&flask.addr(), "shutdown_grace = \"30s\"", "");
    let port = edge.https.port();
    let mut client = Proc::spawn("keep-alive client", s_client(port, true));
    client.wait_for("verify return", Duration::from_secs(5));
    client.write_stdin("GET / HTTP/1.1\r\nHost: flask.test\r\n\r\n");
    client.wait_for("200 OK", Duration::from_secs(5));

    let start = Instant::now();
    edge.proc.signal("TERM");
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(20)), 0);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}: the idle connection was held until the grace ran out"
    );
    assert!(
        !edge
            .proc
            .output()
            .contains("grace period over; closing the remaining connections"),
        "{}",
        edge.proc.output()
    );
    // The client saw its connection end (s_client exits on the server's close).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.exited() {
        assert!(
            Instant::now() < deadline,
            "the client's connection is still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
