//! The first tier: edge started inside the test, against scripted upstreams
//! and a scripted ACME CA, every timeout and limit under tokio's paused time.
//! Needs no external tool. (The end-to-end tier with real Pebble, Knot,
//! Flask, curl and openssl is `tests/e2e`, behind the `e2e` feature.)

mod harness;

mod certs;
mod challenges;
mod corpus;
mod hostile;
mod http3;
mod kx;
mod lifecycle;
mod limits;
mod props;
mod proxy;
mod push;
mod redirect;
mod watch;
