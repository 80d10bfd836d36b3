//! The request path: routing, forwarding headers, balancing, failover.

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn a_get_reaches_the_upstream_with_the_forwarding_headers() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&["app.example.test"], &[&up.addr()], "")).await;
    let a = get(edge.https(), "app.example.test", "/hello?x=1").await;
    assert_eq!((a.status, a.text().as_str()), (200, "v1"));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.target, "/hello?x=1");
    assert_eq!(r.header("host"), Some("app.example.test"));
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));
    edge.shutdown().await;
}
