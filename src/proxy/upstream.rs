//! Upstream servers: keep-alive connections, health, and balancing between them.
//!
//! edge keeps its own small pool of [`Conn`]s (see `h1_client` for why its own
//! client) so that the proxy decides which upstream a request goes to, sees a
//! refused connection before the request is spent, and can send a request
//! again on a fresh connection when a pooled one turns out to be stale.
//!
//! Health has two sources. Passive, as nginx: `max_fails` failures within
//! `fail_timeout` take an upstream out for `fail_timeout`. Active, when a site has
//! `health_check`: `fall` failed probes take it out, `rise` passes bring it back.
//! Each change is logged once.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::Kind;
use super::session::Protocol;

/// Every protocol, in `Protocol::index` order.
const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::Http2, Protocol::Http3];
use crate::config::{self, Balance};
use crate::http1::client::Conn;

/// Idle connections kept per upstream; more are closed when returned.
const MAX_IDLE_PER_UPSTREAM: usize = 128;
/// Points per unit of weight on the ip_hash ring: enough for an even spread.
const RING_POINTS: u32 = 160;

#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable or the name did not resolve: try the next upstream.
    Io(std::io::Error),
    Timeout(Duration),
}

impl ConnectError {
    pub fn kind(&self) -> Kind {
        match self {
            ConnectError::Io(_) => Kind::Refused,
            ConnectError::Timeout(_) => Kind::ConnectTimeout,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Timeout(d) => write!(
                f,
                "connect timed out after {}",
                humantime::format_duration(*d)
            ),
        }
    }
}

/// Milliseconds on tokio's clock (`clock::since_anchor`, never 0): cheap
/// for atomics, and a test under paused time reaches `fail_timeout` by
/// advancing it.
fn now_ms() -> u64 {
    crate::clock::since_anchor().as_millis() as u64 + 1
}

pub struct Upstream {
    pub addr: String,
    /// The address again, shared cheaply with every access-log record.
    pub name: Arc<str>,
    /// Parsed once when the address is an IP, so the hot path skips name resolution.
    socket: Option<SocketAddr>,
    pub weight: u32,
    idle: Mutex<Vec<Conn>>,
    /// Requests sent and not yet answered (least_conn, p2c).
    pub inflight: AtomicUsize,
    fails: AtomicU32,
    fail_window_start: AtomicU64,
    /// Passively out until this time (ms), 0 when in.
    down_until: AtomicU64,
    /// Out by active health check.
    active_down: AtomicBool,
    /// What was last logged, so each change is logged once.
    reported_down: AtomicBool,
    /// The latest failure's kind (written on failures only).
    last_fault: Mutex<Option<Kind>>,
    /// Since when (ms, `now_ms`) it has been out, and why; 0 while in.
    down_since: AtomicU64,
    down_why: Mutex<&'static str>,
    /// The last minute's answers, for the status page.
    pub window: super::window::Window,
    site: String,
    /// Request counters by status class (1xx..5xx), resolved once.
    requests: [[prometheus_client::metrics::counter::Counter; 5]; 3],
    /// `max_conns` slots, one per request in flight; `None` when unlimited.
    slots: Option<Arc<Semaphore>>,
    pub max_conns: usize,
    /// Open WebSocket tunnels, at most `max_tunnels` (`tunnel`).
    tunnels: Arc<Semaphore>,
    pub max_tunnels: usize,
}

/// A request's place at an upstream, held until its response is finished
/// (or the connection is handed to a WebSocket tunnel).
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .finish()
    }
}

impl Upstream {
    pub fn new(cfg: &config::Upstream, site: &str) -> Upstream {
        crate::metrics::METRICS
            .upstream_up
            .get_or_create(&crate::metrics::UpstreamLabels {
                site: site.to_string(),
                upstream: cfg.addr.clone(),
            })
            .set(1);
        Upstream {
            addr: cfg.addr.clone(),
            name: Arc::from(cfg.addr.as_str()),
            socket: cfg.addr.parse().ok(),
            weight: cfg.weight,
            idle: Mutex::new(Vec::new()),
            inflight: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            fail_window_start: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
            reported_down: AtomicBool::new(false),
            last_fault: Mutex::new(None),
            down_since: AtomicU64::new(0),
            down_why: Mutex::new(""),
            window: Default::default(),
            site: site.to_string(),
            slots: (cfg.max_conns > 0).then(|| Arc::new(Semaphore::new(cfg.max_conns))),
            tunnels: Arc::new(Semaphore::new(cfg.max_tunnels)),
            max_tunnels: cfg.max_tunnels,
            max_conns: cfg.max_conns,
            requests: PROTOCOLS.map(|proto| {
                crate::metrics::STATUS_CLASSES.map(|class| {
                    crate::metrics::METRICS
                        .requests
                        .get_or_create(&crate::metrics::RequestLabels {
                            site: site.to_string(),
                            class,
                            upstream: cfg.addr.clone(),
                            proto: proto.label(),
                        })
                        .clone()
                })
            }),
        }
    }

    /// Counts one answered request in the metrics.
    pub fn count(&self, status: u16, proto: Protocol) {
        self.requests[proto.index()][crate::metrics::class_index(status)].inc();
    }

    /// In rotation: neither failed passively nor by active check.
    /// Called for several upstreams per request, so the clock is read only
    /// when a passive hold is set (one read was 0.6% of HTTP/2 samples).
    pub fn available(&self) -> bool {
        if self.active_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    pub fn actively_down(&self) -> bool {
        self.active_down.load(Ordering::Relaxed)
    }

    /// Down for how long, and why (as the log said); `None` while up. Down
    /// lasts from the mark until a request or health check succeeds: a
    /// passive hold that ran out lets requests try it again, but it is not
    /// up until one does.
    pub fn down_for(&self) -> Option<(Duration, &'static str)> {
        if !self.reported_down.load(Ordering::Relaxed) {
            return None;
        }
        let since = self.down_since.load(Ordering::Relaxed);
        let why = *self.down_why.lock().unwrap_or_else(|p| p.into_inner());
        let why = if why.is_empty() { "failures" } else { why };
        Some((Duration::from_millis(now_ms().saturating_sub(since)), why))
    }

    /// The kind of the latest failure, if any.
    pub fn last_fault(&self) -> Option<Kind> {
        *self.last_fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connect error, timeout or failure before response headers, of
    /// this kind: counted by kind, kept as the latest, and against the
    /// upstream's passive health.
    pub fn record_failure(&self, kind: Kind, max_fails: u32, fail_timeout: Duration) {
        crate::metrics::METRICS
            .upstream_failures
            .get_or_create(&crate::metrics::FailureLabels {
                site: self.site.clone(),
                upstream: self.addr.clone(),
                kind: kind.label(),
            })
            .inc();
        *self.last_fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind);
        if max_fails == 0 {
            return;
        }
        let now = now_ms();
        let window = fail_timeout.as_millis() as u64;
        let start = self.fail_window_start.load(Ordering::Relaxed);
        if start == 0 || now.saturating_sub(start) > window {
            self.fail_window_start.store(now, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.fails.fetch_add(1, Ordering::Relaxed) + 1 >= max_fails {
            self.down_until.store(now + window, Ordering::Relaxed);
            self.report();
        }
    }

    /// On the hot path: plain loads when nothing changed (the usual case).
    pub fn record_success(&self) {
        let mut changed = false;
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
            changed = true;
        }
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
            changed = true;
        }
        if changed || self.reported_down.load(Ordering::Relaxed) {
            self.report();
        }
    }

    /// Active health check outcome.
    pub fn set_active(&self, up: bool) {
        self.active_down.store(!up, Ordering::Relaxed);
        self.report();
    }

    /// Logs a change of availability once, and keeps the metric in step.
    fn report(&self) {
        let down = !self.available();
        if self.reported_down.swap(down, Ordering::Relaxed) != down {
            if down {
                let why = match (self.actively_down(), self.last_fault()) {
                    (true, _) => "failed health check",
                    (false, Some(k)) => k.label(),
                    (false, None) => "failures",
                };
                self.down_since.store(now_ms(), Ordering::Relaxed);
                *self.down_why.lock().unwrap_or_else(|p| p.into_inner()) = why;
                tracing::warn!(site = %self.site, upstream = %self.addr, why, "upstream marked down");
            } else {
                self.down_since.store(0, Ordering::Relaxed);
                tracing::info!(site = %self.site, upstream = %self.addr, "upstream back up");
            }
            crate::metrics::METRICS
                .upstream_up
                .get_or_create(&crate::metrics::UpstreamLabels {
                    site: self.site.clone(),
                    upstream: self.addr.clone(),
                })
                .set(i64::from(!down));
        }
    }

    /// A slot now, or `None` when `max_conns` requests are already in flight.
    fn try_slot(&self) -> Option<Slot> {
        match &self.slots {
            None => Some(Slot(None)),
            Some(s) => s.clone().try_acquire_owned().ok().map(|p| Slot(Some(p))),
        }
    }

    /// A place for one more tunnel, or `None` at `max_tunnels`.
    pub fn tunnel_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.tunnels.clone().try_acquire_owned().ok()
    }

    /// Free slots, for choosing among full and not-full upstreams.
    fn free_slots(&self) -> usize {
        self.slots
            .as_ref()
            .map_or(usize::MAX, |s| s.available_permits())
    }

    /// The most recently used idle connection that is still open, if any;
    /// stale ones met on the way are closed. Newest first: a warm connection
    /// is the least likely to have been closed by the upstream's idle timeout.
    pub fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut c) = idle.pop() {
            if c.usable() {
                return Some(c);
            }
        }
        None
    }

    /// Puts a connection whose answer is complete back for the next request.
    pub fn recycle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(conn);
        }
    }

    pub async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, ConnectError> {
        let connect = async {
            match self.socket {
                Some(sa) => TcpStream::connect(sa).await,
                None => TcpStream::connect(self.addr.as_str()).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    pub async fn connect(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        Ok(Conn::new(self.connect_tcp(timeout).await?))
    }
}

/// Counts a request against its upstream, and holds its `max_conns` slot,
/// until the response is finished.
pub struct InflightGuard(Arc<Upstream>, #[allow(dead_code)] Slot);

impl InflightGuard {
    pub fn new(up: &Arc<Upstream>, slot: Slot) -> InflightGuard {
        up.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(up.clone(), slot)
    }

    pub fn upstream(&self) -> &Upstream {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A site's upstreams and the policy that picks among them.
#[derive(Debug)]
pub struct Pool {
    pub upstreams: Vec<Arc<Upstream>>,
    policy: Balance,
    current: Mutex<Vec<i64>>,
    /// ip_hash: sorted (point, upstream index).
    ring: Vec<(u64, usize)>,
}

/// The bit that marks upstream `i` as tried in a request's `tried` set.
pub fn tried_bit(i: usize) -> u64 {
    1u64 << i.min(63)
}

/// The 65th upstream and later share the 64th's bit, so they always count as untried.
fn untried(tried: u64, i: usize) -> bool {
    i >= 64 || tried & tried_bit(i) == 0
}

fn hash64(bytes: &[u8]) -> u64 {
    // FNV-1a, then a final mix: stable across runs and builds, which a
    // consistent-hash ring needs (std's SipHash keys are random per process).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h
}

impl Pool {
    pub fn new(cfg: &[config::Upstream], policy: Balance, site: &str) -> Pool {
        let upstreams: Vec<Arc<Upstream>> = cfg
            .iter()
            .map(|u| Arc::new(Upstream::new(u, site)))
            .collect();
        let mut ring = Vec::new();
        if policy == Balance::IpHash {
            for (i, u) in upstreams.iter().enumerate() {
                for p in 0..RING_POINTS * u.weight {
                    ring.push((hash64(format!("{}#{p}", u.addr).as_bytes()), i));
                }
            }
            ring.sort_unstable();
        }
        Pool {
            current: Mutex::new(vec![0; upstreams.len()]),
            upstreams,
            policy,
            ring,
        }
    }

    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// Picks the next upstream for a request from `client` that has not tried
    /// the ones in `tried` (a bit set). Upstreams out of rotation are skipped
    /// unless every untried one is out passively: then they are tried anyway,
    /// since a request that might succeed beats one certain to fail.
    pub fn pick(&self, tried: u64, client: IpAddr) -> Option<usize> {
        let candidates = |i: usize| untried(tried, i) && self.upstreams[i].available();
        let any = (0..self.len()).any(candidates);
        let eligible = |i: usize| {
            if any {
                candidates(i)
            } else {
                untried(tried, i) && !self.upstreams[i].actively_down()
            }
        };
        match self.policy {
            Balance::RoundRobin => self.round_robin(&eligible),
            Balance::LeastConn => self.least_loaded((0..self.len()).filter(|i| eligible(*i))),
            Balance::P2c => {
                let e: Vec<usize> = (0..self.len()).filter(|i| eligible(*i)).collect();
                match e.len() {
                    0 => None,
                    1 => Some(e[0]),
                    n => {
                        let mut rng = rand::rng();
                        let a = rng.random_range(0..n);
                        let mut b = rng.random_range(0..n - 1);
                        if b >= a {
                            b += 1;
                        }
                        self.least_loaded([e[a], e[b]].into_iter())
                    }
                }
            }
            Balance::IpHash => {
                if self.ring.is_empty() {
                    return None;
                }
                let key = match client {
                    IpAddr::V4(v4) => hash64(&v4.octets()),
                    IpAddr::V6(v6) => hash64(&v6.octets()),
                };
                let start = self.ring.partition_point(|(p, _)| *p < key);
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1)
                    .find(|i| eligible(*i))
            }
        }
    }

    /// A `max_conns` slot for a request given upstream `i`: at `i` when it has
    /// room; else at the untried upstream in rotation with the most room, as
    /// nginx passes over a server at its `max_conns`; else, every one being
    /// full, after a wait in `i`'s queue (first come, first served) of at most
    /// `timeout`. Returns the upstream the slot is at; `None` when the wait ran out.
    pub async fn slot(&self, i: usize, tried: u64, timeout: Duration) -> Option<(usize, Slot)> {
        if let Some(s) = self.upstreams[i].try_slot() {
            return Some((i, s));
        }
        let tried = tried | tried_bit(i);
        let roomiest = (0..self.len())
            .filter(|&j| untried(tried, j) && self.upstreams[j].available())
            .max_by_key(|&j| self.upstreams[j].free_slots());
        if let Some(j) = roomiest {
            if let Some(s) = self.upstreams[j].try_slot() {
                return Some((j, s));
            }
        }
        let s = self.upstreams[i].slots.as_ref()?;
        let permit = tokio::time::timeout(timeout, s.clone().acquire_owned()).await;
        Some((i, Slot(Some(permit.ok()?.ok()?))))
    }

    /// nginx's smooth weighted round robin over the eligible upstreams: with
    /// weights 5,1,1 this gives a a b a c a a, spreading the heavy one out.
    fn round_robin(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, up) in self.upstreams.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let w = up.weight as i64;
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            cur[b] -= total;
        }
        best
    }

    /// The one with the fewest in-flight requests per unit of weight; ties go
    /// to a random one so equal upstreams share the load.
    fn least_loaded(&self, it: impl Iterator<Item = usize>) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        let mut ties = 0u32;
        for i in it {
            let u = &self.upstreams[i];
            // Scaled load: inflight / weight, compared without floats.
            let load =
                (u.inflight.load(Ordering::Relaxed) as u64 + 1) * 1_000_000 / u.weight as u64;
            match best {
                Some((_, b)) if load > b => {}
                Some((_, b)) if load == b => {
                    ties += 1;
                    if rand::rng().random_range(0..=ties) == 0 {
                        best = Some((i, load));
                    }
                }
                _ => {
                    ties = 0;
                    best = Some((i, load));
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32], policy: Balance) -> Pool {
        let cfg: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| config::Upstream {
                addr: format!("127.0.0.1:{}", 5000 + i),
                weight: *w,
                max_conns: 2,
                max_tunnels: 2,
            })
            .collect();
        Pool::new(&cfg, policy, "t")
    }

    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn equal_weights_rotate() {
        let p = pool(&[1, 1, 1], Balance::RoundRobin);
        let seq: Vec<_> = (0..6).map(|_| p.pick(0, C).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_matches_nginx() {
        let p = pool(&[5, 1, 1], Balance::RoundRobin);
        let seq: Vec<_> = (0..7).map(|_| p.pick(0, C).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let p = pool(&[3, 1], Balance::RoundRobin);
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[p.pick(0, C).unwrap()] += 1;
        }
        assert_eq!(counts, [750, 250]);
    }

    #[test]
    fn skips_tried_and_down() {
        let p = pool(&[1, 1, 1], Balance::RoundRobin);
        assert_eq!(p.pick(0b011, C), Some(2));
        assert_eq!(p.pick(0b111, C), None);
        p.upstreams[1].record_failure(Kind::Refused, 1, Duration::from_secs(10));
        for _ in 0..6 {
            assert_ne!(p.pick(0, C), Some(1));
        }
        // Everything else tried: the passively-down one is still tried as a last resort.
        assert_eq!(p.pick(0b101, C), Some(1));
        p.upstreams[1].set_active(false);
        assert_eq!(p.pick(0b101, C), None);
    }

    #[test]
    fn ip_hash_is_sticky_and_moves_only_the_lost_upstreams_clients() {
        let p = pool(&[1, 1, 1], Balance::IpHash);
        let clients: Vec<IpAddr> = (0..600u32)
            .map(|i| IpAddr::V4((0x0a00_0000 + i * 7919).into()))
            .collect();
        let before: Vec<usize> = clients.iter().map(|c| p.pick(0, *c).unwrap()).collect();
        let again: Vec<usize> = clients.iter().map(|c| p.pick(0, *c).unwrap()).collect();
        assert_eq!(before, again, "not sticky");
        let mut counts = [0; 3];
        for b in &before {
            counts[*b] += 1;
        }
        assert!(counts.iter().all(|c| *c > 120), "uneven spread: {counts:?}");
        p.upstreams[1].set_active(false);
        for (c, b) in clients.iter().zip(&before) {
            let now = p.pick(0, *c).unwrap();
            if *b != 1 {
                assert_eq!(now, *b, "a client of a healthy upstream moved");
            } else {
                assert_ne!(now, 1);
            }
        }
    }

    #[test]
    fn least_conn_and_p2c_avoid_the_busy_one() {
        for policy in [Balance::LeastConn, Balance::P2c] {
            let p = pool(&[1, 1, 1], policy);
            p.upstreams[0].inflight.store(50, Ordering::Relaxed);
            let mut zero = 0;
            for _ in 0..300 {
                if p.pick(0, C) == Some(0) {
                    zero += 1;
                }
            }
            assert_eq!(zero, 0, "{policy:?} sent to the busy upstream");
        }
    }

    #[test]
    fn least_conn_honours_weights() {
        let p = pool(&[3, 1], Balance::LeastConn);
        p.upstreams[0].inflight.store(2, Ordering::Relaxed);
        p.upstreams[1].inflight.store(1, Ordering::Relaxed);
        // 3/3 = 1.0 beats 2/1 = 2.0
        assert_eq!(p.pick(0, C), Some(0));
    }
}
