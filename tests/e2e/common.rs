//! Shared test harness: real Pebble, real challtestsrv, real Flask backends and
//! the real `edge` binary, each a child process that is killed when dropped.
//! Readiness is a line the process prints, or, for servers that print it
//! before they bind (Pebble, challtestsrv), a real request answered; never a sleep.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const PYTHON: &str = "/usr/bin/python3";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `EDGE_TEST_BIN` runs the end-to-end tests against another build of the same
/// source, e.g. the profile-guided one users install
/// (`EDGE_TEST_BIN=target/pgo/release/edge cargo test --tests`).
pub fn edge_bin() -> PathBuf {
    match std::env::var_os("EDGE_TEST_BIN") {
        Some(bin) => std::fs::canonicalize(&bin)
            .unwrap_or_else(|e| panic!("EDGE_TEST_BIN={}: {e}", bin.to_string_lossy())),
        None => PathBuf::from(env!("CARGO_BIN_EXE_edge")),
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose output is collected; `wait_for` blocks on a condvar
/// until a line matches.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    out: Arc<(Mutex<String>, Condvar)>,
    /// How many of stdout/stderr have reached end of file.
    closed: Arc<std::sync::atomic::AtomicUsize>,
    stdin: Option<std::process::ChildStdin>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let out = out.clone();
            let closed = closed.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let (m, cv) = &*out;
                    let mut s = m.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                    cv.notify_all();
                }
                let (m, cv) = &*out;
                let _g = m.lock().unwrap();
                closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                cv.notify_all();
            });
        }
        let stdin = child.stdin.take();
        Proc {
            name: name.into(),
            child: Some(child),
            out,
            closed,
            stdin,
        }
    }

    pub fn output(&self) -> String {
        self.out.0.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`; returns that line.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.try_wait_for(needle, timeout)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// As `wait_for`, but says why instead of panicking.
    pub fn try_wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.try_wait_for_nth(needle, 1, timeout)
    }

    /// Waits for the `n`th line containing `needle` (from 1).
    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> String {
        self.try_wait_for_nth(needle, n, timeout)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_wait_for_nth(
        &self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut s = m.lock().unwrap();
        loop {
            if let Some(line) = s.lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return Ok(line.to_string());
            }
            let now = Instant::now();
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) == 2 {
                return Err(format!(
                    "{}: exited before printing {needle:?}; output:\n{}",
                    self.name, *s
                ));
            }
            if now >= deadline {
                return Err(format!(
                    "{}: no line {n} containing {needle:?} within {timeout:?}; output:\n{}",
                    self.name, *s
                ));
            }
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_some(),
            None => true,
        }
    }

    /// Counts lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.output().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn write_stdin(&mut self, text: &str) {
        let s = self.stdin.as_mut().expect("stdin");
        s.write_all(text.as_bytes()).unwrap();
        s.flush().unwrap();
    }

    /// Like `write_stdin`, but reports a closed pipe instead of panicking.
    pub fn try_write_stdin(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let s = self.stdin.as_mut().expect("stdin");
        s.write_all(bytes)?;
        s.flush()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                // Let the reader threads drain what is left.
                let _ = self.stdin.take();
                std::thread::sleep(Duration::from_millis(20));
                return st.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- Flask

pub struct Flask {
    pub proc: Proc,
    pub port: u16,
    pub version: u32,
}

impl Flask {
    /// A backend on a free port; on a fresh one if another test took the first.
    pub fn start(version: u32) -> Flask {
        Self::start_env(version, &[])
    }

    /// A backend on a port a test chose (to start one again where it was).
    pub fn start_on(version: u32, port: u16) -> Flask {
        Self::try_start(version, port, &[]).unwrap_or_else(|why| panic!("{why}"))
    }

    /// A backend with extra environment (FLASK_DELAY, FLASK_HEALTH_STATUS), on
    /// a free port as `start`.
    pub fn start_env(version: u32, env: &[(&str, &str)]) -> Flask {
        on_fresh_ports(&format!("flask{version}"), || {
            Self::try_start(version, free_port(), env)
        })
    }

    /// Werkzeug prints "Running on" once it has bound its port.
    fn try_start(version: u32, port: u16, env: &[(&str, &str)]) -> Result<Flask, String> {
        let mut cmd = Command::new(PYTHON);
        cmd.envs(env.iter().copied());
        cmd.arg(repo().join("backends/flask/app.py"))
            .env("FLASK_VERSION", version.to_string())
            .env("FLASK_PORT", port.to_string())
            .env("FLASK_HOST", "127.0.0.1")
            .env("PYTHONUNBUFFERED", "1");
        let proc = Proc::spawn(&format!("flask{version}"), cmd);
        proc.try_wait_for("Running on", Duration::from_secs(20))?;
        Ok(Flask {
            proc,
            port,
            version,
        })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub fn flask_trio() -> Vec<Flask> {
    (1..=3).map(Flask::start).collect()
}

// ---------------------------------------------------------------- Pebble

pub struct Pebble {
    pub dir: tempfile::TempDir,
    pub cts: Proc,
    pub pebble: Proc,
    pub directory: String,
    pub cts_url: String,
    pub dns: SocketAddr,
    pub mgmt: String,
    pub ca_bundle: PathBuf,
}

/// How many times a server is started on fresh ports before a test gives up.
/// Ports come from `free_port()`, so another test's listener can take one
/// between the pick and the server's bind; the server then exits, or someone
/// else answers on its port, and it is started again elsewhere.
const PORT_TRIES: usize = 5;

/// Runs `start` (which picks its own free ports) until it succeeds, at most
/// `PORT_TRIES` times; panics with the last reason.
fn on_fresh_ports<T>(what: &str, mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut why = String::new();
    for _ in 0..PORT_TRIES {
        match start() {
            Ok(t) => return t,
            Err(e) => why = e,
        }
    }
    panic!("{what} did not start in {PORT_TRIES} tries; last:\n{why}")
}

/// Which Pebble: Debian's 2.4 (`/usr/bin`), or v2.10.1 from `../shared/pebble/`
/// (profiles, ARI, dns-persist-01; `scripts/install-deps` builds it where
/// `../shared` is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PebbleVersion {
    Debian,
    V2_10,
}

impl PebbleVersion {
    fn bin(self, name: &str) -> PathBuf {
        match self {
            PebbleVersion::Debian => PathBuf::from("/usr/bin").join(name),
            PebbleVersion::V2_10 => {
                let p = repo().join("../shared/pebble").join(name);
                assert!(
                    p.exists(),
                    "{}: Pebble v2.10.1 is missing; scripts/install-deps builds it",
                    p.display()
                );
                p
            }
        }
    }
}

/// pebble-challtestsrv on free ports: (process, DNS port, management port).
pub fn challtestsrv() -> (Proc, u16, u16) {
    challtestsrv_of(PebbleVersion::Debian)
}

pub fn challtestsrv_of(version: PebbleVersion) -> (Proc, u16, u16) {
    on_fresh_ports("challtestsrv", || {
        let (dns_port, cts_mgmt) = (free_port(), free_port());
        let mut cmd = Command::new(version.bin("pebble-challtestsrv"));
        let dns_flag = match version {
            PebbleVersion::Debian => "-dns01",
            PebbleVersion::V2_10 => "-dnsserver",
        };
        cmd.args([
            dns_flag,
            &format!("127.0.0.1:{dns_port}"),
            "-management",
            &format!("127.0.0.1:{cts_mgmt}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ]);
        if version == PebbleVersion::V2_10 {
            cmd.args(["-doh", ""]);
        }
        let mut cts = Proc::spawn("challtestsrv", cmd);
        cts.try_wait_for("Starting management server", Duration::from_secs(20))?;
        answers_dns(&mut cts, dns_port)?;
        Ok((cts, dns_port, cts_mgmt))
    })
}

/// Readiness of challtestsrv's DNS server: it answers a query with the same ID.
/// (It prints its start-up lines before it binds the port.)
fn answers_dns(proc: &mut Proc, port: u16) -> Result<(), String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // ID 0x5eed, RD, one question: "ready.test" TXT IN.
    let mut query = vec![0x5e, 0xed, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 16, 0, 1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if proc.exited() {
            return Err(format!("{} exited:\n{}", proc.name, proc.output()));
        }
        let _ = sock.send_to(&query, ("127.0.0.1", port));
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 2 && buf[..2] == query[..2] {
                return Ok(());
            }
            return Err(format!("port {port}: a reply that is not challtestsrv's"));
        }
    }
    Err(format!("{}: no DNS answer on port {port}", proc.name))
}

/// `openssl s_client` to a local port with SNI flask.test, as a raw TLS client.
pub fn s_client(port: u16, quiet: bool) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client");
    if quiet {
        cmd.arg("-quiet");
    }
    cmd.args([
        "-ign_eof",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "flask.test",
    ]);
    cmd
}

impl Pebble {
    pub fn start() -> Pebble {
        Self::start_with(3600)
    }

    /// Pebble with certificates valid for `validity_secs`, its DNS pointed at a
    /// fresh challtestsrv; Pebble's HTTPS certificate is made here with rcgen.
    pub fn start_with(validity_secs: u64) -> Pebble {
        Self::start_env(validity_secs, &[])
    }

    /// As `start_with`, with extra environment for Pebble (e.g. PEBBLE_AUTHZREUSE=0
    /// so that every order needs fresh DNS validation).
    pub fn start_env(validity_secs: u64, env: &[(&str, &str)]) -> Pebble {
        Self::launch(None, validity_secs, env, &|_| {})
    }

    /// Pebble v2.10.1 with these `profiles` (name -> validity in seconds).
    pub fn current(profiles: &[(&str, u64)]) -> Pebble {
        Self::current_env(profiles, &[])
    }

    /// As `current`, with extra environment (PEBBLE_AUTHZREUSE=0: every
    /// order validates again).
    pub fn current_env(profiles: &[(&str, u64)], env: &[(&str, &str)]) -> Pebble {
        Self::current_dns(profiles, None, env)
    }

    /// As `current_env`, its VA asking `dnsserver` (Knot) for DNS.
    pub fn current_dns(
        profiles: &[(&str, u64)],
        dnsserver: Option<&str>,
        env: &[(&str, &str)],
    ) -> Pebble {
        let profiles: serde_json::Map<String, serde_json::Value> = profiles
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    serde_json::json!({"description": n, "validityPeriod": v}),
                )
            })
            .collect();
        Self::launch_of(PebbleVersion::V2_10, dnsserver, 0, env, &|c| {
            c["pebble"]["profiles"] = serde_json::Value::Object(profiles.clone());
        })
    }

    /// As `start`, letting the caller change Pebble's JSON config first.
    pub fn start_patched(patch: &dyn Fn(&mut serde_json::Value)) -> Pebble {
        Self::launch(None, 3600, &[], patch)
    }

    /// Pebble whose VA asks `dnsserver` (Knot, Unbound, edge's responder);
    /// a challtestsrv still runs for its management API.
    pub fn with_dnsserver(dnsserver: &str, env: &[(&str, &str)]) -> Pebble {
        Self::launch(Some(dnsserver), 3600, env, &|_| {})
    }

    /// A challtestsrv and a Pebble asking it (or `dnsserver`) for DNS; Pebble's
    /// HTTPS certificate is made here with rcgen and its JSON config can be patched.
    fn launch(
        dnsserver: Option<&str>,
        validity_secs: u64,
        env: &[(&str, &str)],
        patch: &dyn Fn(&mut serde_json::Value),
    ) -> Pebble {
        Self::launch_of(PebbleVersion::Debian, dnsserver, validity_secs, env, patch)
    }

    fn launch_of(
        version: PebbleVersion,
        dnsserver: Option<&str>,
        validity_secs: u64,
        env: &[(&str, &str)],
        patch: &dyn Fn(&mut serde_json::Value),
    ) -> Pebble {
        let (cts, dns_port, cts_mgmt) = challtestsrv_of(version);
        let own_dns = format!("127.0.0.1:{dns_port}");
        let dnsserver = dnsserver.unwrap_or(&own_dns);
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, cert_pem, key_pem) = test_ca_and_leaf(&["localhost"], &["127.0.0.1"]);
        let ca_bundle = dir.path().join("pebble-ca.pem");
        std::fs::write(&ca_bundle, ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
        let (pebble, directory, mgmt) = on_fresh_ports("Pebble", || {
            let (acme, mgmt) = (free_port(), free_port());
            let mut cfg = serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": free_port(),
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }});
            patch(&mut cfg);
            let cfg_path = dir.path().join("pebble.json");
            std::fs::write(&cfg_path, cfg.to_string()).unwrap();
            let mut cmd = Command::new(version.bin("pebble"));
            cmd.arg("-config")
                .arg(&cfg_path)
                .arg("-dnsserver")
                .arg(dnsserver)
                .env("PEBBLE_VA_NOSLEEP", "1")
                .envs(env.iter().copied());
            let mut pebble = Proc::spawn("pebble", cmd);
            let directory = format!("https://127.0.0.1:{acme}/dir");
            let mgmt = format!("https://127.0.0.1:{mgmt}");
            pebble.try_wait_for("ACME directory available", Duration::from_secs(20))?;
            serves_https(&mut pebble, &ca_bundle, &directory)?;
            serves_https(&mut pebble, &ca_bundle, &format!("{mgmt}/roots/0"))?;
            Ok((pebble, directory, mgmt))
        });
        Pebble {
            dir,
            cts,
            pebble,
            directory,
            cts_url: format!("http://127.0.0.1:{cts_mgmt}"),
            dns: dnsserver.parse().unwrap(),
            mgmt,
            ca_bundle,
        }
    }

    /// Pebble's issuing root, from its management API.
    pub fn root_pem(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&self.ca_bundle)
            .arg(format!("{}/roots/0", self.mgmt))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Sets a TXT record in challtestsrv, as a person or a script would.
    pub fn set_txt(&self, fqdn: &str, value: &str) {
        let body = serde_json::json!({"host": fqdn, "value": value}).to_string();
        let st = Command::new("curl")
            .args(["-sS", "-f", "-X", "POST", "-d", &body])
            .arg(format!("{}/set-txt", self.cts_url))
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The `[acme]` and `[dns]` sections for a config that uses this Pebble.
    pub fn acme_toml(&self, provider_lines: &str) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\ncontact = [\"mailto:test@example.org\"]\nca_bundle = \"{}\"\n\n[dns]\n{provider_lines}\nresolvers = [\"{}\"]\npropagation_timeout = \"20s\"\n",
            self.directory,
            self.ca_bundle.display(),
            self.dns
        )
    }

    pub fn challtestsrv_dns(&self) -> String {
        format!(
            "provider = \"pebble-challtestsrv\"\nurl = \"{}\"",
            self.cts_url
        )
    }
}

/// Readiness of an HTTPS server that prints its start-up line before it binds
/// (Pebble): `url` answers over TLS with a certificate from `ca`. A refused
/// connection is retried; any other failure means someone else has the port.
fn serves_https(proc: &mut Proc, ca: &Path, url: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if proc.exited() {
            return Err(format!("{} exited:\n{}", proc.name, proc.output()));
        }
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "3", "--cacert"])
            .arg(ca)
            .arg(url)
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => return Ok(()),
            // 7: connection refused, the server is not listening yet.
            Some(7) => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                return Err(format!(
                    "{url}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
    }
    Err(format!("{}: {url} not answering", proc.name))
}

/// A CA and a leaf it signed, as PEM: (ca, leaf, leaf key).
pub fn test_ca_and_leaf(names: &[&str], ips: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edge test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    for ip in ips {
        params
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse().unwrap()));
    }
    let leaf = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// A self-signed certificate and key for `names`, as PEM.
pub fn self_signed(names: &[&str]) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

// ---------------------------------------------------------------- edge

pub struct Edge {
    pub proc: Proc,
    pub https: SocketAddr,
    pub http: SocketAddr,
}

impl Edge {
    /// Starts `edge serve` and waits for its ready line, which carries the
    /// addresses actually bound (the configs use port 0).
    pub fn serve(config: &Path) -> Edge {
        let mut cmd = Command::new(edge_bin());
        cmd.arg("serve").arg("--config").arg(config).env(
            "RUST_LOG",
            std::env::var("EDGE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let proc = Proc::spawn("edge", cmd);
        let line = proc.wait_for("edge ready", Duration::from_secs(20));
        let field = |k: &str| -> SocketAddr {
            let start = line.find(&format!("{k}=")).unwrap() + k.len() + 1;
            line[start..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        Edge {
            https: field("https"),
            http: field("http"),
            proc,
        }
    }
}

/// Runs an edge command to completion.
pub fn edge(args: &[&str], config: &Path) -> Output {
    Command::new(edge_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// curl to `https://{url_host}:{port}{path}` with `url_host` resolved to
/// 127.0.0.1; `opts` go before the caller's `extra` options.
pub fn curl_cmd(url_host: &str, port: u16, path: &str, opts: &[&str], extra: &[&str]) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "-k"])
        .args(opts)
        .arg("--resolve")
        .arg(format!("{url_host}:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://{url_host}:{port}{path}"));
    c
}

/// curl against edge: (status, body). `host` is resolved to 127.0.0.1.
pub fn curl(url_host: &str, port: u16, path: &str, extra: &[&str]) -> (u16, String) {
    let opts = ["--max-time", "10", "-w", "\n%{http_code}"];
    let out = curl_cmd(url_host, port, path, &opts, extra)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// curl for bodies that are not text: (status, HTTP version, body bytes),
/// the body through a file in `dir`.
pub fn curl_bytes(
    url_host: &str,
    port: u16,
    path: &str,
    extra: &[&str],
    dir: &Path,
) -> (u16, String, Vec<u8>) {
    let file = dir.join("body.out");
    let file_arg = file.to_string_lossy().into_owned();
    let opts = [
        "--max-time",
        "30",
        "-o",
        &file_arg,
        "-w",
        "%{http_code} %{http_version}",
    ];
    let out = curl_cmd(url_host, port, path, &opts, extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, version) = s.split_once(' ').unwrap_or(("0", ""));
    let body = std::fs::read(&file).unwrap_or_default();
    (code.parse().unwrap_or(0), version.to_string(), body)
}

/// The serial of the certificate edge presents for `sni`, via openssl s_client.
pub fn served_serial(port: u16, sni: &str) -> String {
    let cert = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -serial -ext subjectAltName"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&cert.stdout).into_owned()
}

/// Raw bytes to a TCP port; returns everything read until close or timeout.
pub fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A temp dir with an edge config built from `body`; returns (dir, config path).
pub fn config(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let text = format!(
        "state_dir = \"{}\"\n{body}",
        dir.path().join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// `edge serve` for `flask.test` in front of one `backend`, with `limits` in
/// its `[limits]` table and `site_keys` in the site's.
pub fn edge_for(backend: &str, limits: &str, site_keys: &str) -> (tempfile::TempDir, Edge) {
    let (dir, cfg) = config(&format!(
        "{}[limits]\n{limits}\n{}{site_keys}\n",
        listen_any(),
        site(&["flask.test"], &[backend.to_string()])
    ));
    (dir, Edge::serve(&cfg))
}

pub fn listen_any() -> &'static str {
    "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n"
}

pub fn site(domains: &[&str], upstreams: &[String]) -> String {
    let d: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let u: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "\n[[site]]\ndomains = [{}]\nupstreams = [{}]\n",
        d.join(", "),
        u.join(", ")
    )
}

// ---------------------------------------------------------------- tiny HTTP server

/// One request as a test server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 server on a free loopback port, one thread, `Connection:
/// close`; `handler` returns (status, JSON body). Returns the base URL and the
/// log of requests.
pub fn http_server(
    handler: impl Fn(&SeenRequest) -> (u16, String) + Send + 'static,
) -> (String, Arc<Mutex<Vec<SeenRequest>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() || line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut headers = Vec::new();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let req = SeenRequest {
                method,
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let (status, resp) = handler(&req);
            seen.lock().unwrap().push(req);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resp}",
                resp.len()
            );
        }
    });
    (base, log)
}

/// Sets or clears a TXT record in challtestsrv from a test server thread.
pub fn cts_post(cts_url: &str, path: &str, body: serde_json::Value) {
    let st = Command::new("curl")
        .args(["-sS", "-f", "-X", "POST", "-d", &body.to_string()])
        .arg(format!("{cts_url}{path}"))
        .status()
        .unwrap();
    assert!(st.success());
}

// ---------------------------------------------------------------- Knot DNS

/// A real Knot DNS server, authoritative for `zone`, accepting TSIG-signed
/// updates from one key.
pub struct Knot {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub key_name: String,
    pub secret: String,
    pub dir: tempfile::TempDir,
}

impl Knot {
    pub fn start(zone: &str) -> Knot {
        Self::start_with(zone, "")
    }

    /// Knot with extra zone-file lines (relative to the zone origin).
    pub fn start_with(zone: &str, extra: &str) -> Knot {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let raw: Vec<u8> = (0..32)
            .map(|i| (i * 37 + 11) as u8 ^ (port as u8))
            .collect();
        let secret = base64::engine::general_purpose::STANDARD.encode(raw);
        let key_name = "edge-key".to_string();
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        std::fs::write(
            dir.path().join(format!("{zone}.zone")),
            format!(
                "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ NS ns.{zone}.\nns A 127.0.0.1\n{extra}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("knot.conf"),
            format!(
                "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\n\ndatabase:\n    storage: {d}/db\n\nlog:\n  - target: stderr\n    any: info\n\nkey:\n  - id: {key_name}\n    algorithm: hmac-sha256\n    secret: {secret}\n\nacl:\n  - id: update\n    key: {key_name}\n    action: update\n\nzone:\n  - domain: {zone}\n    storage: {d}\n    file: {zone}.zone\n    acl: update\n    zonefile-sync: -1\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/knotd");
        cmd.arg("-c").arg(dir.path().join("knot.conf"));
        let proc = Proc::spawn("knotd", cmd);
        proc.wait_for(&format!("[{zone}.] loaded"), Duration::from_secs(20));
        Knot {
            proc,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            key_name,
            secret,
            dir,
        }
    }

    /// `dig` as an outside client would ask, short answers only.
    pub fn dig(&self, name: &str, rtype: &str) -> String {
        let o = Command::new("dig")
            .args([
                "+short",
                "+tries=1",
                "+time=2",
                "-p",
                &self.addr.port().to_string(),
                "@127.0.0.1",
                name,
                rtype,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// A recursive resolver (Unbound) on a free port that sends each zone of
/// `stubs` (zone, server address) to its server: the path a real CA's
/// resolver takes. Returns the process, its port and its directory.
pub fn unbound(stubs: &[(&str, String)]) -> (Proc, u16, tempfile::TempDir) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut conf = format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n  qname-minimisation: no\n  cache-max-ttl: 0\n  cache-max-negative-ttl: 0\n  local-zone: \"test.\" nodefault\n  infra-host-ttl: 1\n  infra-keep-probing: yes\n  domain-insecure: \"test.\"\n",
        d = dir.path().display(),
    );
    for (zone, addr) in stubs {
        conf.push_str(&format!(
            "stub-zone:\n  name: \"{zone}\"\n  stub-addr: {}\n",
            addr.replace(':', "@")
        ));
    }
    std::fs::write(dir.path().join("unbound.conf"), conf).unwrap();
    let mut cmd = Command::new("/usr/sbin/unbound");
    cmd.arg("-d").arg("-c").arg(dir.path().join("unbound.conf"));
    let proc = Proc::spawn("unbound", cmd);
    proc.wait_for("start of service", Duration::from_secs(20));
    (proc, port, dir)
}
