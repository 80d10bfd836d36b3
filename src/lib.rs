//! edge: automatic HTTPS in front of web applications, in one process.
#![forbid(unsafe_code)]

pub mod acme; // account, DNS-01 orders, renewal policy
pub mod certinfo; // what a PEM certificate says: names, expiry, serial, issuer
pub mod check; // `edge check`: the I/O checks beyond config validation
pub mod config; // TOML wire format -> validated Config
pub mod control; // the daemon's control socket for edge obtain / renew
pub mod daemon; // `edge serve`: listeners, signals, reload, shutdown
pub mod dns; // TXT publishers behind one trait, propagation check
pub mod metrics; // Prometheus metrics and their endpoint
pub mod names; // domain-name rules shared by config, CLI and store
pub mod proxy; // the HTTPS request path, upstream pool, redirect listener
pub mod renewer; // certificate upkeep inside edge serve
pub mod sdnotify; // systemd Type=notify readiness and watchdog
pub mod store; // state_dir: atomic writes, locks, certbot layout
pub mod tls; // rustls config and the hot-swappable SNI resolver
pub mod ui; // steps and spinners for a person at a terminal
pub mod watch; // picks up certificates written into live/ by others
