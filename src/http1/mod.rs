//! The one HTTP/1 implementation, both roles: one head reader (`head`,
//! httparse underneath), one framing rule set for requests and answers
//! (`framing`), one chunked codec (`chunked`), the upstream client
//! (`client`). Models: Pingora's `protocols/http/v1/`, hyper's
//! `proto/h1/role.rs`.

pub mod chunked;
pub mod client;
pub mod framing;
pub mod head;
pub mod server;

#[cfg(test)]
mod props;
