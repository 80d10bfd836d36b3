//! `edge serve` owning its certificates: obtain on start, renew on its own, hot
//! swap under load, pick up files written by others, survive failures. Real
//! Pebble, real Flask, real TLS clients (openssl s_client, curl).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

fn daemon_config(
    p: &Pebble,
    provider: &str,
    upstream: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    config(&format!(
        "{}{}{}",
        listen_any(),
        p.acme_toml(provider),
        site(&["flask.test"], &[upstream.to_string()])
    ))
}

fn live_serial(dir: &tempfile::TempDir) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(dir.path().join("state/live/flask.test/cert.pem"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Polls the served certificate until it carries `serial`; returns how long it took.
fn until_served(port: u16, serial: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let s = served_serial(port, "flask.test");
        if s.contains(serial) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{serial} not served within {within:?}; serving {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn obtains_on_start_and_renews_on_its_own() {
    // Ten-second certificates: due at half their life, so several renewals happen here.
    let p = Pebble::start_with(10);
    let f = Flask::start(1);
    let (dir, cfg) = daemon_config(&p, &p.challtestsrv_dns(), &f.addr());
    let edge = Edge::serve(&cfg);
    let port = edge.https.port();
    let mut serials = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while serials.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 certificates in 60s: {serials:?}\n{}",
            edge.proc.output()
        );
        let n = edge.proc.count("renewal succeeded");
        if n > serials.len() {
            let serial = live_serial(&dir);
            until_served(
                port,
                serial.trim_start_matches("serial="),
                Duration::from_secs(1),
            );
            if serials.last() != Some(&serial) {
                serials.push(serial);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    serials.dedup();
    assert_eq!(serials.len(), 3, "{serials:?}");
    // The served certificate chains to Pebble and requests still flow.
    let (code, body) = curl("flask.test", port, "/", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(
        edge.proc.output().contains("old_serial="),
        "structured outcome line"
    );
}

#[test]
fn twenty_swaps_under_load_lose_no_request() {
    let p = Pebble::start();
    let f = Flask::start(1);
    let (dir, cfg) = daemon_config(&p, &p.challtestsrv_dns(), &f.addr());
    assert!(edge(&["obtain", "-d", "flask.test"], &cfg).status.success());
    let edge_d = Edge::serve(&cfg);
    let port = edge_d.https.port();
    let url = format!("https://flask.test:{port}/");
    let resolve = format!("flask.test:{port}:127.0.0.1");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for keepalive in [false, false, true] {
        let (stop, ok, failed, url, resolve) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            url.clone(),
            resolve.clone(),
        );
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Keep-alive: 20 requests on one connection; else one new TLS connection each.
                let n = if keepalive { 20 } else { 1 };
                let mut cmd = Command::new("curl");
                cmd.args([
                    "-sk",
                    "--max-time",
                    "10",
                    "--resolve",
                    &resolve,
                    "-w",
                    "%{http_code}\n",
                ]);
                for _ in 0..n {
                    cmd.args(["-o", "/dev/null", &url]);
                }
                let out = cmd.output().unwrap();
                let codes = String::from_utf8_lossy(&out.stdout).into_owned();
                let good = codes.lines().filter(|c| *c == "200").count();
                ok.fetch_add(good, Ordering::Relaxed);
                failed.fetch_add(n - good, Ordering::Relaxed);
            }
        }));
    }
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let before = live_serial(&dir);
        let o = edge(&["renew", "--force"], &cfg);
        assert!(o.status.success(), "swap {i}: {}", text(&o));
        let after = live_serial(&dir);
        assert_ne!(before, after, "swap {i} did not change the certificate");
        worst = worst.max(until_served(
            port,
            after.trim_start_matches("serial="),
            Duration::from_secs(1),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("hot swap under load: 20 swaps, {ok} requests ok, {failed} failed, new serial served at most {worst:?} after `edge renew` returned");
    assert_eq!(failed, 0);
    assert!(ok > 20, "the load loop barely ran: {ok}");
    // The renewals went through the daemon's control socket.
    assert!(edge_d.proc.count("request over the control socket") >= 20);
}

#[test]
fn certificates_copied_into_live_are_picked_up_and_bad_pairs_refused() {
    let (dir, cfg) = config(&format!(
        "{}{}",
        listen_any(),
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ));
    let edge_d = Edge::serve(&cfg);
    let port = edge_d.https.port();
    let live = dir.path().join("state/live/flask.test");
    std::fs::create_dir_all(&live).unwrap();
    let (c1, k1) = self_signed(&["flask.test"]);
    std::fs::write(live.join("privkey.pem"), &k1).unwrap();
    std::fs::write(live.join("fullchain.pem"), &c1).unwrap();
    let serial = |pem: &str| {
        let f = dir.path().join("x.pem");
        std::fs::write(&f, pem).unwrap();
        let o = Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&f)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_string()
    };
    let took = until_served(port, &serial(&c1), Duration::from_secs(2));
    println!("hand-copied certificate served after {took:?}");
    // A mismatched pair: refused, logged, the previous one keeps serving.
    let (c2, _) = self_signed(&["flask.test"]);
    let (_, k3) = self_signed(&["flask.test"]);
    std::fs::write(live.join("privkey.pem"), &k3).unwrap();
    std::fs::write(live.join("fullchain.pem"), &c2).unwrap();
    edge_d
        .proc
        .wait_for("do not belong together", Duration::from_secs(3));
    assert!(served_serial(port, "flask.test").contains(&serial(&c1)));
}

#[test]
fn failed_renewal_keeps_serving_and_kill_mid_renewal_resumes() {
    let p = Pebble::start_env(3600, &[("PEBBLE_AUTHZREUSE", "0")]);
    let (dir, cfg) = daemon_config(&p, &p.challtestsrv_dns(), "127.0.0.1:9");
    assert!(edge(&["obtain", "-d", "flask.test"], &cfg).status.success());
    let good = live_serial(&dir);
    let good_cfg = std::fs::read_to_string(&cfg).unwrap();

    // A provider whose record never appears.
    let hook = dir.path().join("slow-hook.sh");
    let marker = dir.path().join("hook-started");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch {}\n[ \"$1\" = present ] && sleep \"${{HOOK_SLEEP:-0}}\"\nexit 0\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let broken = good_cfg
        .replace(
            &p.challtestsrv_dns(),
            &format!("provider = \"exec\"\ncommand = \"{}\"", hook.display()),
        )
        .replace(
            "propagation_timeout = \"20s\"",
            "propagation_timeout = \"1s\"",
        );
    std::fs::write(&cfg, &broken).unwrap();
    // A fresh account, so Pebble has no valid authorization to reuse and both
    // renewals below must go through the hook: PEBBLE_AUTHZREUSE=0 still reuses
    // one 1% of the time (it reuses unless rand.Intn(100) > 0).
    std::fs::remove_dir_all(dir.path().join("state/accounts")).unwrap();
    let mut edge_d = Edge::serve(&cfg);
    let port = edge_d.https.port();
    let o = edge(&["renew", "--force"], &cfg);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAILED"), "{}", text(&o));
    edge_d
        .proc
        .wait_for("renewal failed", Duration::from_secs(5));
    assert!(served_serial(port, "flask.test").contains(good.trim_start_matches("serial=")));
    assert_eq!(live_serial(&dir), good);

    // Kill the daemon (kill -9) while a renewal is in its DNS step: the hook
    // sleeps, as a slow DNS API would. HOOK_SLEEP reaches the hook through the
    // daemon's environment, since the daemon runs the renewal.
    edge_d.proc.kill();
    let _ = std::fs::remove_file(&marker);
    let mut cmd = Command::new(edge_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("HOOK_SLEEP", "30")
        .env("RUST_LOG", "info");
    let mut slow = Proc::spawn("edge", cmd);
    slow.wait_for("edge ready", Duration::from_secs(10));
    let mut cmd = Command::new(edge_bin());
    cmd.args(["renew", "--force", "--config"]).arg(&cfg);
    let _client = Proc::spawn("edge renew", cmd);
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "hook never ran: {}",
            slow.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .arg("-9")
        .arg(slow.pid().to_string())
        .status()
        .unwrap();
    slow.wait_exit(Duration::from_secs(5));

    // Restart with the working provider: state is consistent and renewal resumes.
    std::fs::write(&cfg, &good_cfg).unwrap();
    let edge2 = Edge::serve(&cfg);
    assert!(served_serial(edge2.https.port(), "flask.test")
        .contains(good.trim_start_matches("serial=")));
    let o = edge(&["renew", "--force"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    let renewed = live_serial(&dir);
    assert_ne!(renewed, good);
    until_served(
        edge2.https.port(),
        renewed.trim_start_matches("serial="),
        Duration::from_secs(1),
    );
    let c = edge(&["certs"], &cfg);
    assert!(c.status.success(), "{}", text(&c));
}
