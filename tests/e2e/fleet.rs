//! A fleet: three etcd members and three `edge serve` nodes on loopback, in
//! front of one Flask backend, with Debian's Pebble. Each test is one of
//! the faults the fleet must survive (README "Running several nodes").

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::common::*;

const ZONE: &str = "fleet.test";
const NAME: &str = "www.fleet.test";
const PREFIX: &str = "/edge-test/";
/// Short, so the faults that wait for a lease to run out take seconds.
const LEASE_SECS: u64 = 3;

// ---------------------------------------------------------------- etcd

struct Member {
    name: String,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
}

/// Three etcd members on free loopback ports, in one temp dir.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Etcd {
    pub fn start3() -> Etcd {
        for _ in 0..3 {
            if let Some(e) = Self::try_start3() {
                return e;
            }
        }
        panic!("etcd did not start in 3 tries");
    }

    fn try_start3() -> Option<Etcd> {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                proc: None,
            })
            .collect();
        let mut e = Etcd { dir, members };
        for i in 0..3 {
            e.spawn(i);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if (0..3).all(|i| e.healthy(i)) {
                return Some(e);
            }
            if e.members
                .iter_mut()
                .any(|m| m.proc.as_mut().unwrap().exited())
            {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.args([
            "--name",
            &m.name,
            "--data-dir",
            &self.dir.path().join(&m.name).display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", m.client),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{}", m.client),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", m.peer),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", m.peer),
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "edge-test",
            "--log-level",
            "warn",
        ]);
        self.members[i].proc = Some(Proc::spawn(&format!("etcd-{i}"), cmd));
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    fn healthy(&self, i: usize) -> bool {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!(
                "http://127.0.0.1:{}/health",
                self.members[i].client
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"")
    }

    /// Stops member `i` hard (SIGKILL).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// Starts member `i` again on its data (it rejoins).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Waits until every running member says it is healthy (has a leader).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let running: Vec<usize> = (0..3).filter(|i| self.members[*i].proc.is_some()).collect();
            if running.iter().all(|i| self.healthy(*i)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("etcd did not become healthy within {within:?}");
    }

    /// Every key and value under `prefix`, through a running member's JSON gateway.
    pub fn scan(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(&end)});
        let m = self
            .members
            .iter()
            .find(|m| m.proc.is_some())
            .expect("a running member");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-X", "POST", "-d"])
            .arg(body.to_string())
            .arg(format!("http://127.0.0.1:{}/v3/kv/range", m.client))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert!(
            v["header"]["revision"].is_string(),
            "etcd's range answer: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        v["kvs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                let k = b64.decode(kv["key"].as_str().unwrap_or("")).unwrap();
                let val = b64
                    .decode(kv["value"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                (String::from_utf8_lossy(&k).into_owned(), val)
            })
            .collect()
    }
}

// ---------------------------------------------------------------- the fleet

/// How the nodes publish challenge records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dns {
    /// Each node's built-in responder for `fleet.test`; Pebble asks node 0's.
    Builtin,
    /// As `Builtin`, with `challenge = "dns-persist-01"` and Pebble v2.10.1.
    BuiltinPersist,
    /// An exec hook that adds the record in challtestsrv; it waits 4 s (and
    /// leaves a marker) when the file `slow` exists in the node's dir, so a
    /// test can act while an order is in flight. Cleanup leaves records in
    /// place (challtestsrv keeps every value): an order resumed after a pause
    /// still validates, so what stops its write is the fence alone.
    Exec,
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub edge: Option<Edge>,
    pub metrics: Option<String>,
    env: Vec<(String, String)>,
}

impl Node {
    /// Leaves a marker and waits in the exec hook from now on.
    fn slow(&self) -> PathBuf {
        std::fs::write(self.dir.path().join("slow"), "").unwrap();
        self.dir.path().join("presented")
    }

    fn https(&self) -> u16 {
        self.edge.as_ref().unwrap().https.port()
    }

    fn log(&self) -> String {
        self.edge.as_ref().unwrap().proc.output()
    }

    fn start(&mut self) {
        let mut cmd = Command::new(edge_bin());
        cmd.arg("serve").arg("--config").arg(&self.cfg).env(
            "RUST_LOG",
            std::env::var("EDGE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("edge", cmd);
        let line = proc.wait_for("edge ready", Duration::from_secs(20));
        let field = |k: &str| -> String {
            let start = line.find(&format!("{k}=")).unwrap() + k.len() + 1;
            line[start..].split_whitespace().next().unwrap().to_string()
        };
        self.metrics = Some(field("metrics"));
        self.edge = Some(Edge {
            https: field("https").parse().unwrap(),
            http: field("http").parse().unwrap(),
            proc,
        });
    }

    fn stop(&mut self) {
        if let Some(mut e) = self.edge.take() {
            e.proc.kill();
        }
    }

    fn metrics_text(&self) -> String {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "3"])
            .arg(format!("http://{}/metrics", self.metrics.as_ref().unwrap()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        edge(args, &self.cfg)
    }
}

pub struct Fleet {
    pub etcd: Etcd,
    pub pebble: Pebble,
    pub nodes: Vec<Node>,
    _flask: Flask,
    _keys: tempfile::TempDir,
    root: PathBuf,
}

fn write_kek(path: &Path, seed: u8) {
    let bytes: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Fleet {
    fn start(dns: Dns, validity_secs: u64) -> Fleet {
        Self::start_with(dns, validity_secs, &|_| Vec::new())
    }

    /// The fleet; `env(i)` is extra environment for node `i` (libfaketime).
    fn start_with(
        dns: Dns,
        validity_secs: u64,
        env: &dyn Fn(usize) -> Vec<(String, String)>,
    ) -> Fleet {
        let etcd = Etcd::start3();
        let dns_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let pebble = match dns {
            Dns::Builtin => Pebble::with_dnsserver(
                &format!("127.0.0.1:{}", dns_ports[0]),
                &[("PEBBLE_AUTHZREUSE", "0")],
            ),
            Dns::BuiltinPersist => Pebble::current_dns(
                &[("default", validity_secs)],
                Some(&format!("127.0.0.1:{}", dns_ports[0])),
                &[("PEBBLE_AUTHZREUSE", "0")],
            ),
            Dns::Exec => Pebble::start_env(validity_secs, &[("PEBBLE_AUTHZREUSE", "0")]),
        };
        let flask = Flask::start(1);
        let keys = tempfile::tempdir().unwrap();
        let kek = keys.path().join("kek");
        write_kek(&kek, 1);
        let root = keys.path().join("root.pem");
        std::fs::write(&root, pebble.root_pem()).unwrap();
        let endpoints: Vec<String> = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, dns_port) in dns_ports.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let provider = match dns {
                Dns::Builtin | Dns::BuiltinPersist => format!(
                    "provider = \"builtin\"\nlisten = \"127.0.0.1:{dns_port}\"\nzone = \"{ZONE}\""
                ),
                Dns::Exec => {
                    let hook = dir.path().join("hook.sh");
                    let d = dir.path().display();
                    std::fs::write(
                        &hook,
                        format!(
                            "#!/bin/sh\nif [ \"$1\" = present ]; then\n  curl -sSf -X POST -d \"{{\\\"host\\\":\\\"$2\\\",\\\"value\\\":\\\"$3\\\"}}\" {cts}/set-txt >/dev/null\n  if [ -e {d}/slow ]; then touch {d}/presented; sleep 4; fi\nfi\n",
                            cts = pebble.cts_url
                        ),
                    )
                    .unwrap();
                    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
                        .unwrap();
                    format!("provider = \"exec\"\ncommand = \"{}\"", hook.display())
                }
            };
            let body = format!(
                "state_dir = \"{state}\"\n{listen}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n{acme}\n[cluster]\nstore = \"etcd\"\nendpoints = [{eps}]\nprefix = \"{PREFIX}\"\nnode = \"edge-{i}\"\nlease = \"{LEASE_SECS}s\"\nkey_encryption_key_file = \"{kek}\"\n{site}",
                state = dir.path().join("state").display(),
                listen = listen_any(),
                acme = pebble.acme_toml(&provider),
                eps = endpoints.join(", "),
                kek = kek.display(),
                site = site(&[NAME], &[flask.addr()]),
            );
            let body = match dns {
                Dns::BuiltinPersist => body + "challenge = \"dns-persist-01\"\n",
                _ => body,
            };
            let cfg = dir.path().join("edge.toml");
            std::fs::write(&cfg, body).unwrap();
            nodes.push(Node {
                dir,
                cfg,
                edge: None,
                metrics: None,
                env: env(i),
            });
        }
        for n in &mut nodes {
            n.start();
        }
        Fleet {
            etcd,
            pebble,
            nodes,
            _flask: flask,
            _keys: keys,
            root,
        }
    }

    /// How many certificates Pebble has issued so far.
    fn issued(&self) -> usize {
        self.pebble.pebble.count("Issued certificate serial")
    }

    /// The serial node `i` presents for the site's name (empty when none).
    fn serial(&self, i: usize) -> String {
        let out = served_serial(self.nodes[i].https(), NAME);
        out.lines()
            .find_map(|l| l.strip_prefix("serial="))
            .unwrap_or("")
            .to_string()
    }

    /// One request through node `i`, checked against Pebble's root.
    fn request_ok(&self, i: usize) -> bool {
        request_ok(self.nodes[i].https(), &self.root)
    }

    /// Waits until every running node in `which` serves one certificate
    /// issued by Pebble other than `not`; returns its serial and how long the
    /// slowest node took after the first.
    fn wait_same_serial(&self, which: &[usize], not: &str, within: Duration) -> (String, Duration) {
        let deadline = Instant::now() + within;
        let mut first: Option<Instant> = None;
        loop {
            let serials: Vec<String> = which.iter().map(|i| self.serial(*i)).collect();
            let fresh = |s: &String| !s.is_empty() && s != not && self.is_pebbles(s);
            if first.is_none() && serials.iter().any(fresh) {
                first = Some(Instant::now());
            }
            let set: BTreeSet<&String> = serials.iter().collect();
            if set.len() == 1 && fresh(&serials[0]) {
                return (serials[0].clone(), first.unwrap().elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "nodes {which:?} did not converge on one new certificate other than {not:?}: {serials:?}\n{}\n---- pebble\n{}",
                self.logs(),
                self.pebble.pebble.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node's `edge_cluster_store_up` says `up`.
    fn wait_store_up(&self, up: bool) {
        let want = format!("edge_cluster_store_up {}", u8::from(up));
        wait_until(
            &format!("every node to say {want}"),
            Duration::from_secs(20),
            || self.nodes.iter().all(|n| n.metrics_text().contains(&want)),
        );
    }

    /// Whether `serial` is one Pebble issued (not a placeholder).
    fn is_pebbles(&self, serial: &str) -> bool {
        let out = self.pebble.pebble.output().to_ascii_lowercase();
        let full = serial.to_ascii_lowercase();
        let short = full.trim_start_matches('0');
        out.contains(&format!("issued certificate serial {full} "))
            || out.contains(&format!("issued certificate serial {short} "))
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(e) = &n.edge {
                s.push_str(&format!("---- node {i}\n{}\n", e.proc.output()));
            }
        }
        s
    }

    /// Starts `edge renew --force` on node `i` and returns once its order is
    /// in flight: its exec hook has published the record and now waits. An
    /// order Pebble answers from an authorization it reused needs no record
    /// and so never waits: that renewal ends, and another is started.
    fn renew_held_in_hook(&self, i: usize) -> std::thread::JoinHandle<std::process::Output> {
        let marker = self.nodes[i].slow();
        for _ in 0..3 {
            let cfg = self.nodes[i].cfg.clone();
            let renew = std::thread::spawn(move || edge(&["renew", "--force"], &cfg));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if marker.exists() {
                    return renew;
                }
                if renew.is_finished() {
                    let o = renew.join().unwrap();
                    assert!(o.status.success(), "{}\n{}", text(&o), self.logs());
                    self.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(10));
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {i}'s order did not publish its record within 20 s\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "three renewals on node {i} in a row needed no DNS record\n{}",
            self.logs()
        );
    }

    /// Runs `edge renew --force` on the given nodes at the same moment.
    fn renew_force_together(&self, which: &[usize]) -> Vec<std::process::Output> {
        let start = Arc::new(std::sync::Barrier::new(which.len()));
        let handles: Vec<_> = which
            .iter()
            .map(|i| {
                let cfg = self.nodes[*i].cfg.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    edge(&["renew", "--force"], &cfg)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Requests through every listed node from a background thread until
    /// finished; counts the ones that failed.
    fn load(&self, which: &[usize]) -> Load {
        let ports: Vec<u16> = which.iter().map(|i| self.nodes[*i].https()).collect();
        let root = self.root.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, o, fl) = (stop.clone(), ok.clone(), failed.clone());
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for port in &ports {
                    if request_ok(*port, &root) {
                        o.fetch_add(1, Ordering::Relaxed);
                    } else {
                        fl.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Load {
            stop,
            ok,
            failed,
            thread: Some(t),
        }
    }
}

/// One request to `port`, checked against Pebble's root: a certificate that
/// does not match its key fails the handshake.
fn request_ok(port: u16, root: &Path) -> bool {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg("--cacert")
        .arg(root)
        .arg("--resolve")
        .arg(format!("{NAME}:{port}:127.0.0.1"))
        .arg(format!("https://{NAME}:{port}/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout) == "200"
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Stops the load; (succeeded, failed).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Started together with no certificate: one order between the three nodes,
/// validated through node 0's built-in responder whichever node ordered.
/// Then `edge renew --force` on all three at once: exactly one new
/// certificate at Pebble, the two that waited take it and exit 0, and all
/// three serve it within a second of the first.
#[test]
fn renew_force_on_every_node_orders_once_and_all_swap_within_a_second() {
    let f = Fleet::start(Dns::Builtin, 3600);
    let (first, _) = f.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(60));
    assert_eq!(
        f.issued(),
        1,
        "three nodes started together ordered more than once\n{}",
        f.logs()
    );

    // The records of an order node 1 makes are answered by node 0's responder.
    let o = f.nodes[1].run(&["renew", "--force"]);
    assert!(o.status.success(), "{}\n{}", text(&o), f.logs());
    let (second, _) = f.wait_same_serial(&[0, 1, 2], &first, Duration::from_secs(10));
    assert_eq!(f.issued(), 2);
    assert!(
        f.nodes[1]
            .log()
            .contains("renewal succeeded; new certificate is being served"),
        "{}",
        f.logs()
    );

    let outs = f.renew_force_together(&[0, 1, 2]);
    for o in &outs {
        assert!(o.status.success(), "{}\n{}", text(o), f.logs());
    }
    let all: String = outs.iter().map(text).collect();
    assert_eq!(all.matches(": renewed; serial").count(), 1, "{all}");
    assert_eq!(
        all.matches("renewed by another node while this one waited")
            .count(),
        2,
        "{all}"
    );
    let (third, spread) = f.wait_same_serial(&[0, 1, 2], &second, Duration::from_secs(10));
    assert_eq!(
        f.issued(),
        3,
        "one forced renewal on three nodes made more than one order"
    );
    assert!(
        spread < Duration::from_secs(1),
        "the last node swapped {spread:?} after the first"
    );
    assert_ne!(third, second);
    // Each node measured its own swap: all within a second.
    for (i, n) in f.nodes.iter().enumerate() {
        let m = n.metrics_text();
        assert!(m.contains("edge_cluster_store_up 1"), "node {i}: {m}");
        let count = metric(&m, "edge_cluster_swap_seconds_count");
        let under = metric(&m, "edge_cluster_swap_seconds_bucket{le=\"1.0\"}");
        assert_eq!(
            count, under,
            "node {i}: a swap took more than a second\n{m}"
        );
    }
    // `edge certs` says who renewed it, and that nobody holds its lock now.
    let o = f.nodes[2].run(&["certs"]);
    let t = text(&o);
    assert!(t.contains("Renewed by: edge-"), "{t}");
    assert!(t.contains("Lock: free"), "{t}");
    // `edge status` (the running daemon) says the same. (It exits non-zero
    // here: Pebble's one-hour certificates are within a week of expiry.)
    let o = f.nodes[2].run(&["status"]);
    let t = text(&o);
    assert!(t.contains("fleet node edge-2, following etcd"), "{t}");
    assert!(!t.contains("store (etcd) is not followed"), "{t}");
    assert!(t.contains("renewed by   edge-"), "{t}");
    assert!(t.contains("lock         free"), "{t}");
    // etcd holds the key, and no PEM private key.
    let values = f.etcd.scan(PREFIX);
    assert!(
        values.iter().any(|(k, _)| k.ends_with("privkey.pem")),
        "{values:?}"
    );
    for (k, v) in values {
        assert!(
            !String::from_utf8_lossy(&v).contains("PRIVATE KEY"),
            "{k} holds a private key in the clear"
        );
    }
}

/// dns-persist-01 with the built-in zone: the record is the fleet's, kept in
/// etcd beyond any node's lease, so the node the CA asks answers it whoever
/// set it, also after that node restarted with nothing in memory, and later
/// orders on any node make no DNS change.
#[test]
fn a_dns_persist_01_record_is_answered_by_every_node_and_set_once() {
    let mut f = Fleet::start(Dns::BuiltinPersist, 3600);
    let (mut serial, _) = f.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(60));
    // Node 0 is the one Pebble asks: restarted (past its lease, so nothing
    // bound to it is left), it answers from etcd alone.
    f.nodes[0].stop();
    std::thread::sleep(Duration::from_secs(LEASE_SECS + 1));
    f.nodes[0].start();
    for i in [1, 2] {
        let o = f.nodes[i].run(&["renew", "--force"]);
        let t = text(&o);
        assert!(o.status.success(), "node {i}: {t}\n{}", f.logs());
        // Pebble reuses a valid authorization 1% of the time even with
        // PEBBLE_AUTHZREUSE=0: then nothing is validated at all.
        assert!(
            t.contains("already in place: no DNS change")
                || t.contains("the CA already holds a valid authorization"),
            "node {i}: {t}"
        );
        let (next, _) = f.wait_same_serial(&[0, 1, 2], &serial, Duration::from_secs(10));
        serial = next;
    }
    assert_eq!(f.issued(), 3);
    let kept: Vec<String> = f
        .etcd
        .scan(PREFIX)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("challenges/_validation-persist.www.fleet.test/"))
        .collect();
    assert_eq!(kept.len(), 1, "one persist record in etcd: {kept:?}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The node renewing is killed (SIGKILL) while its order is in flight: after
/// its lease runs out another node finishes the renewal it left recorded,
/// with exactly one certificate issued, and no node ever serves a
/// certificate that does not match its key (every request is checked
/// against Pebble's root throughout).
#[test]
fn a_renewing_node_killed_mid_order_is_finished_by_another() {
    let mut f = Fleet::start(Dns::Exec, 3600);
    f.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(60));
    let load = f.load(&[0, 2]);
    let renew = f.renew_held_in_hook(1);
    // What is served and issued once node 1's order is under way.
    let (first, issued) = (f.serial(0), f.issued());
    f.nodes[1].edge.as_ref().unwrap().proc.signal("KILL");
    let _ = renew.join();
    let started = Instant::now();
    let (second, _) = f.wait_same_serial(&[0, 2], &first, Duration::from_secs(30));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(LEASE_SECS - 1),
        "taken over in {took:?}, before the lease ({LEASE_SECS}s) ran out"
    );
    let (ok, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the takeover",
        ok + failed
    );
    assert!(ok > 10, "the load made only {ok} requests");
    assert_eq!(
        f.issued(),
        issued + 1,
        "the takeover ordered more than once"
    );
    let logs = f.logs();
    assert!(
        logs.contains("a forced renewal edge-1 started did not finish"),
        "{logs}"
    );
    // The killed node comes back and catches up.
    f.nodes[1].stop();
    std::fs::remove_file(f.nodes[1].dir.path().join("slow")).unwrap();
    f.nodes[1].start();
    let (now, _) = f.wait_same_serial(&[0, 1, 2], &first, Duration::from_secs(10));
    assert_eq!(now, second);
}

/// One etcd member down: renewals and swaps go on. Two of three down (no
/// quorum): every node keeps serving with zero failed requests, due
/// renewals wait and are retried, `edge check` and the metrics say why;
/// quorum back: renewals resume on their own.
#[test]
fn etcd_members_down_keep_serving_and_renewals_resume_with_quorum() {
    // 40-second certificates: each is due at half its life, so renewals
    // come due on their own during the outage.
    let mut f = Fleet::start(Dns::Exec, 40);
    let (first, _) = f.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(60));
    let load = f.load(&[0, 1, 2]);

    f.etcd.stop(2);
    let o = f.nodes[0].run(&["renew", "--force"]);
    assert!(o.status.success(), "{}\n{}", text(&o), f.logs());
    let (second, _) = f.wait_same_serial(&[0, 1, 2], &first, Duration::from_secs(10));

    f.etcd.stop(1);
    f.wait_store_up(false);
    let o = f.nodes[0].run(&["check"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("does not answer through a quorum"), "{t}");
    assert!(t.contains("not reachable"), "{t}");
    // `edge status` says it too, and exits non-zero: it needs a person.
    let o = f.nodes[1].run(&["status"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("fleet node edge-1, NOT following etcd"), "{t}");
    assert!(
        t.contains("the fleet's store (etcd) is not followed"),
        "{t}"
    );
    // A renewal comes due and waits for the store.
    wait_until(
        "a due renewal to wait for the store",
        Duration::from_secs(40),
        || f.logs().contains("cannot lock the certificate"),
    );
    let issued = f.issued();

    f.etcd.restart(1);
    f.etcd.restart(2);
    f.etcd.wait_healthy(Duration::from_secs(30));
    f.wait_store_up(true);
    wait_until(
        "renewals to resume on their own",
        Duration::from_secs(40),
        || f.issued() > issued,
    );
    f.wait_same_serial(&[0, 1, 2], &second, Duration::from_secs(20));
    let (ok, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        ok + failed,
        f.logs()
    );
    assert!(ok > 30, "the load made only {ok} requests");
}

/// A node started while etcd cannot be reached serves the copy it last saw
/// from the fleet at once, and catches up when etcd is back.
#[test]
fn a_node_started_without_etcd_serves_its_copy_and_catches_up() {
    let mut f = Fleet::start(Dns::Exec, 3600);
    let (first, _) = f.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(60));
    f.nodes[2].stop();
    for i in 0..3 {
        f.etcd.stop(i);
    }
    let started = Instant::now();
    f.nodes[2].start();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "ready after {took:?}");
    assert_eq!(f.serial(2), first);
    assert!(f.request_ok(2));
    assert!(
        f.nodes[2].log().contains("serving the local copy"),
        "{}",
        f.nodes[2].log()
    );

    for i in 0..3 {
        f.etcd.restart(i);
    }
    f.etcd.wait_healthy(Duration::from_secs(30));
    wait_until(
        "node 0 to renew once etcd is back",
        Duration::from_secs(30),
        || f.nodes[0].run(&["renew", "--force"]).status.success(),
    );
    f.wait_same_serial(&[0, 1, 2], &first, Duration::from_secs(15));
}

/// A node whose clock is 30 s ahead, and a lock holder paused (SIGSTOP)
/// longer than its lease mid-order: another node takes over, and when the
/// paused one resumes its write is refused by the fence, so only one
/// certificate is ever written and every node serves it.
#[test]
fn a_paused_lock_holder_cannot_overwrite_and_a_skewed_clock_changes_nothing() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime missing: scripts/install-deps installs it"
    );
    let f = Fleet::start_with(Dns::Exec, 3600, &|i| {
        if i == 2 {
            vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME".into(), "+30s".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ]
        } else {
            Vec::new()
        }
    });
    f.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(60));
    let renew = f.renew_held_in_hook(1);
    let first = f.serial(0);
    f.nodes[1].edge.as_ref().unwrap().proc.signal("STOP");
    let (second, _) = f.wait_same_serial(&[0, 2], &first, Duration::from_secs(30));
    f.nodes[1].edge.as_ref().unwrap().proc.signal("CONT");
    let out = renew.join().unwrap();
    let t = text(&out);
    assert!(
        !out.status.success(),
        "the paused node's renewal claims success: {t}"
    );
    assert!(
        t.contains("was lost before the write; nothing was written"),
        "{t}"
    );
    assert!(
        f.nodes[1].log().contains("the fleet refused the write"),
        "{}",
        f.logs()
    );
    // Every node serves the one certificate the fleet holds.
    f.wait_same_serial(&[0, 1, 2], &first, Duration::from_secs(10));
    for i in 0..3 {
        assert_eq!(f.serial(i), second, "node {i}\n{}", f.logs());
    }
    let written = f
        .etcd
        .scan(&format!("{PREFIX}written/"))
        .into_iter()
        .next()
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    assert!(
        !written.contains("edge-1"),
        "the paused node wrote: {written}"
    );
}

/// A node with the wrong key-encryption key refuses to load the fleet's keys
/// with a clear error and keeps serving what it has; etcd never holds a PEM
/// private key.
#[test]
fn a_wrong_key_encryption_key_is_refused_and_nothing_leaks() {
    let mut f = Fleet::start(Dns::Exec, 3600);
    let (first, _) = f.wait_same_serial(&[0, 1, 2], "", Duration::from_secs(60));
    f.nodes[2].stop();
    let wrong = f.nodes[2].dir.path().join("wrong-kek");
    write_kek(&wrong, 99);
    let cfg = std::fs::read_to_string(&f.nodes[2].cfg).unwrap();
    let cfg = cfg
        .lines()
        .map(|l| {
            if l.starts_with("key_encryption_key_file") {
                format!("key_encryption_key_file = \"{}\"", wrong.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&f.nodes[2].cfg, cfg).unwrap();
    f.nodes[2].start();
    f.nodes[2]
        .edge
        .as_ref()
        .unwrap()
        .proc
        .wait_for("does not open", Duration::from_secs(10));
    assert_eq!(f.serial(2), first);
    assert!(f.request_ok(2));

    let o = f.nodes[2].run(&["check"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("cluster.key_encryption_key_file: does not open"),
        "{t}"
    );
    let issued = f.issued();
    let o = f.nodes[2].run(&["renew", "--force"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("key-encryption key"), "{t}");
    assert_eq!(f.issued(), issued, "a node with the wrong key ordered");

    let o = f.nodes[0].run(&["renew", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    let (second, _) = f.wait_same_serial(&[0, 1], &first, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        f.serial(2),
        first,
        "the node with the wrong key took a key it cannot open"
    );
    assert_ne!(second, first);
    assert!(f.request_ok(2));

    let values = f.etcd.scan(PREFIX);
    assert!(
        values.iter().any(|(k, _)| k.ends_with("privkey.pem")),
        "{values:?}"
    );
    for (k, v) in &values {
        assert!(
            !String::from_utf8_lossy(v).contains("PRIVATE KEY"),
            "{k} holds a private key in the clear"
        );
    }
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
