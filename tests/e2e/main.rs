//! The end-to-end tier: the edge binary against real Pebble and
//! pebble-challtestsrv, Knot, Unbound, Flask backends, curl, openssl, dig and
//! systemd-analyze, each a child process on free loopback ports, stopped
//! again when its test ends. Selected explicitly, as it needs those tools:
//! `cargo test --features e2e --test e2e` (`scripts/test` installs them and
//! runs this after the first tier).

mod common;

mod acme;
mod balance;
mod challenges;
mod daemon;
mod fleet;
mod h2spec;
mod hostile;
mod http3;
mod persist;
mod profiles;
mod providers;
mod redirect;
mod reload;
mod serve;
mod ship;
mod watch;
