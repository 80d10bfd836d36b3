//! Every default of the config file, in one place. The README's configuration
//! reference and its "Limits and timeouts" table give the reason for each; a
//! DNS provider's own keys have their defaults in the provider's file, beside
//! the keys they belong to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::model::{AccessLog, Balance, KeyType};

const fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const STATE_DIR: &str = "acme-state";

// [listen]
pub const HTTP: SocketAddr = any(80);
pub const HTTPS: SocketAddr = any(443);
/// 308 keeps the method and body; 301 is nginx's `permanent`.
pub const REDIRECT: u16 = 308;
pub const HANDSHAKE_TIMEOUT: Duration = secs(10);
/// HTTP/3 on by default, as Caddy serves it: browsers move to it when the
/// TCP answers say where (Alt-Svc).
pub const HTTP3: bool = true;

// [acme]
pub const DIRECTORY: &str = "letsencrypt";
/// P-256: the cheapest handshake.
pub const KEY_TYPE: KeyType = KeyType::EcdsaP256;

// [dns]
pub const DNS_PROVIDER: &str = "manual";
pub const PROPAGATION_TIMEOUT: Duration = secs(600);
pub const PROPAGATION_DELAY: Duration = Duration::ZERO;

// [cluster]
pub const CLUSTER_PREFIX: &str = "/edge/";
/// Long enough that a GC pause or a slow disk does not cost a lock, short
/// enough that a renewal a dead node held resumes within a quarter minute.
pub const CLUSTER_LEASE: Duration = secs(15);

// [log]
pub const ACCESS_LOG: AccessLog = AccessLog::Text;
pub const LOG_LEVEL: &str = "info";

// [limits]
pub const HEADER_READ_TIMEOUT: Duration = secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = secs(75);
pub const SEND_TIMEOUT: Duration = secs(60);
pub const BODY_IDLE_TIMEOUT: Duration = secs(60);
pub const MAX_HEADER_BYTES: u64 = 32 * 1024;
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 250;
pub const H2_MAX_PENDING_RESETS: usize = 100;
pub const MAX_CONNECTIONS: usize = 10_000;
/// Per client address: above what a carrier-grade NAT puts behind one address
/// (a few hundred subscribers, a browser opening 6 connections per host each)
/// and what a layer-4 balancer without PROXY protocol passes on, below
/// `MAX_CONNECTIONS`, so one address still cannot take every slot.
pub const MAX_CONNECTIONS_PER_IP: usize = 4096;
pub const SHUTDOWN_GRACE: Duration = secs(30);

// [[site]]
pub const BALANCE: Balance = Balance::RoundRobin;
pub const WEIGHT: u32 = 1;
/// Requests in flight to one upstream before more wait in edge's queue.
/// Each upstream HTTP/1.1 connection costs a socket and an 8 KiB read
/// buffer, and a Flask backend gains nothing from hundreds of requests at
/// once: a full upstream is passed over for one with room, and when all are
/// full requests queue in edge, as HAProxy's `maxconn` does. In bench/run's
/// HTTP/2 test (500 streams) 64 cost no CPU against no limit and cut peak RSS
/// by about 7 MiB; 32 cost a third more CPU per request (smaller batches).
pub const MAX_CONNS: usize = 64;
/// WebSocket tunnels open to one upstream at once. A tunnel holds a socket
/// on each side for as long as it lives; a browser tab keeps one. Past it a
/// handshake gets 503 and never reaches the upstream.
pub const MAX_TUNNELS: usize = 256;
/// nginx's `max_fails` and `fail_timeout`.
pub const MAX_FAILS: u32 = 1;
pub const FAIL_TIMEOUT: Duration = secs(10);
/// 0: every upstream.
pub const MAX_TRIES: usize = 0;
/// nginx's `proxy_connect_timeout` and `proxy_read_timeout`.
pub const CONNECT_TIMEOUT: Duration = secs(60);
pub const RESPONSE_TIMEOUT: Duration = secs(60);

// [[site]] health_check
pub const HEALTH_PATH: &str = "/";
pub const HEALTH_INTERVAL: Duration = secs(5);
pub const HEALTH_TIMEOUT: Duration = secs(2);
pub const HEALTH_STATUS: u16 = 200;
pub const HEALTH_RISE: u32 = 2;
pub const HEALTH_FALL: u32 = 3;
