//! edge: automatic HTTPS in front of web applications, in one process.
#![forbid(unsafe_code)]

pub mod acme; // account, orders, renewal policy, challenge solvers
pub mod certinfo; // what a PEM certificate says: names, expiry, serial, issuer
pub mod certs; // the certificate manager: schedule, publication, control socket, watcher
pub mod check; // `edge check`: the I/O checks beyond config validation
pub mod clock; // the wall clock for certificate decisions, moved by tokio's paused time
pub mod config; // wire format -> validated model; defaults in one place
pub mod daemon; // `edge serve`: listeners, signals, reload, shutdown
pub mod dns; // TXT publishers behind one trait, propagation check
pub mod http1; // the one HTTP/1 implementation: heads, framing, bodies, both roles
pub mod http2; // the HTTP/2 session: hyper's server, streams in the connection's task
pub mod http3; // the HTTP/3 session: QUIC (quinn) on the HTTPS port's UDP twin, h3 framing
pub mod log_limit; // peer-caused log lines: one per kind and key per minute, with a count
pub mod metrics; // Prometheus metrics (served by status::listener)
pub mod names; // domain-name rules shared by config, CLI and store
pub mod proxy; // the HTTPS request path, upstream pool, redirect listener
pub mod sdnotify; // systemd Type=notify readiness and watchdog
pub mod status; // what the running daemon says about itself: page, `edge status`, JSON; the metrics listener
pub mod store; // the storage interface and its file backend; certbot layout
pub mod tls; // rustls config and the hot-swappable SNI resolver
pub mod ui; // steps and spinners for a person at a terminal
