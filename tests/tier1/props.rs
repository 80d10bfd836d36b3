//! Property tests through the whole of edge: random pipelined requests (with
//! and without bodies, lengths and chunks, extensions and trailers) written
//! in random pieces on one connection. Well-formed, the upstream receives
//! exactly those requests, in order, each one clean, and the client one
//! answer for each: what edge consumed is what was framed. Mutated, edge may
//! refuse, but whatever reaches the upstream is one clean request each time
//! and every answer parses.
//!
//! Cases come from proptest's deterministic runner (fixed count, no
//! shrinking: the failing case is printed whole).

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tokio::io::AsyncWriteExt;

use crate::harness::strict;
use crate::harness::*;

const HOST: &str = "app.example.test";
const CASES: usize = 64;

#[derive(Debug, Clone)]
enum BodyKind {
    None,
    Length(Vec<u8>),
    /// Chunks (as split), an extension on each, and trailer fields.
    Chunked(Vec<Vec<u8>>, bool, Vec<(String, String)>),
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    target: String,
    fields: Vec<&'static str>,
    body: BodyKind,
}

impl Req {
    fn data(&self) -> Vec<u8> {
        match &self.body {
            BodyKind::None => Vec::new(),
            BodyKind::Length(b) => b.clone(),
            BodyKind::Chunked(c, _, _) => c.concat(),
        }
    }

    fn wire(&self) -> Vec<u8> {
        let mut w = format!(
            "{} {} HTTP/1.1\r\nHost: {HOST}\r\n",
            self.method, self.target
        );
        for f in &self.fields {
            w.push_str(f);
            w.push_str("\r\n");
        }
        let mut w = w.into_bytes();
        match &self.body {
            BodyKind::None => w.extend_from_slice(b"\r\n"),
            BodyKind::Length(b) => {
                w.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                w.extend_from_slice(b);
            }
            BodyKind::Chunked(chunks, ext, trailers) => {
                w.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    let e = if *ext { ";x=\"y\"" } else { "" };
                    w.extend_from_slice(format!("{:x}{e}\r\n", c.len()).as_bytes());
                    w.extend_from_slice(c);
                    w.extend_from_slice(b"\r\n");
                }
                w.extend_from_slice(b"0\r\n");
                for (k, v) in trailers {
                    w.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                }
                w.extend_from_slice(b"\r\n");
            }
        }
        w
    }
}

fn req() -> impl Strategy<Value = Req> {
    let body = prop_oneof![
        Just(BodyKind::None),
        prop::collection::vec(any::<u8>(), 0..3000).prop_map(BodyKind::Length),
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 0..5),
            any::<bool>(),
            prop::collection::vec(("X-[a-z]{1,6}", "[a-z0-9 ]{0,12}"), 0..3),
        )
            .prop_map(|(c, e, t)| BodyKind::Chunked(c, e, t)),
    ];
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
        "/[a-z0-9]{1,10}(\\?[a-z=&]{0,10})?",
        prop::sample::subsequence(
            vec![
                "Accept: */*",
                "X-A: 1",
                "Connection: keep-alive",
                "User-Agent: p/1",
            ],
            0..3,
        ),
        any::<bool>(),
        body,
    )
        .prop_map(|(method, target, mut fields, expect, body)| {
            if expect && !matches!(body, BodyKind::None) {
                fields.push("Expect: 100-continue");
            }
            Req {
                method,
                target,
                fields,
                body,
            }
        })
}

/// Requests, where to cut their bytes, and the pause before each piece.
fn stream() -> impl Strategy<Value = (Vec<Req>, Vec<usize>, Vec<u8>)> {
    (
        prop::collection::vec(req(), 1..6),
        prop::collection::vec(any::<usize>(), 0..6),
        prop::collection::vec(0u8..30, 8),
    )
}

fn cut(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.extend([0, input.len()]);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| input[w[0]..w[1]].to_vec()).collect()
}

async fn send_in_pieces(conn: &mut Tls, input: &[u8], cuts: &[usize], pauses: &[u8]) {
    for (i, piece) in cut(input, cuts).iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(pauses[i % pauses.len()].into())).await;
        if conn.write_all(piece).await.is_err() {
            return;
        }
    }
}

fn sample<S: Strategy>(s: &S, runner: &mut TestRunner) -> S::Value {
    s.new_tree(runner).expect("a case").current()
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_in_random_pieces_reach_the_upstream_exactly() {
    let up = Upstream::start(|s| ok(&s.target)).await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "max_fails = 0")).await;
    let mut runner = TestRunner::deterministic();
    let strategy = stream();
    for n in 0..CASES {
        let (reqs, cuts, pauses) = sample(&strategy, &mut runner);
        let what = format!("case {n}: {reqs:?} cut at {cuts:?}");
        let before = up.count();
        let input: Vec<u8> = reqs.iter().flat_map(Req::wire).collect();
        let mut conn = tls(edge.https(), HOST).await;
        send_in_pieces(&mut conn, &input, &cuts, &pauses).await;
        let mut buf = Vec::new();
        for r in &reqs {
            let a = within(secs(60), &what, read_answer(&mut conn, &mut buf, false))
                .await
                .unwrap_or_else(|| panic!("{what}: closed before the answer to {}", r.target));
            assert_eq!((a.status, a.text()), (200, r.target.clone()), "{what}");
        }
        let seen = up.seen();
        let new = &seen[before..];
        assert_eq!(new.len(), reqs.len(), "{what}");
        for (r, s) in reqs.iter().zip(new) {
            let m = strict::request(&s.raw).unwrap_or_else(|e| {
                panic!(
                    "{what}: the upstream got no clean request ({e}): {:?}",
                    String::from_utf8_lossy(&s.raw)
                )
            });
            assert_eq!(m.start, format!("{} {}", r.method, r.target), "{what}");
            assert_eq!(m.body, r.data(), "{what}: the body of {}", r.target);
            assert!(m.field("expect").is_none(), "{what}: Expect passed on");
        }
    }
}

/// A change to a well-formed stream: a byte replaced, inserted or removed.
fn mutations() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    let byte = prop_oneof![
        3 => prop::sample::select(&b"\r\n :;0123456789abcdef\x00\x0b\"-"[..]),
        1 => any::<u8>(),
    ];
    prop::collection::vec((0u8..3, any::<usize>(), byte), 1..4)
}

fn mutate(mut v: Vec<u8>, ms: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, at, b) in ms {
        match kind {
            0 => {
                let i = at % v.len();
                v[i] = b;
            }
            1 => v.insert(at % (v.len() + 1), b),
            _ => {
                v.remove(at % v.len());
            }
        }
    }
    v
}

#[tokio::test(start_paused = true)]
async fn mutated_pipelines_reach_the_upstream_only_as_clean_requests() {
    let up = Upstream::start(|s| ok(&s.target)).await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "max_fails = 0")).await;
    let mut runner = TestRunner::deterministic();
    let strategy = (stream(), mutations());
    for n in 0..CASES {
        let ((reqs, cuts, pauses), ms) = sample(&strategy, &mut runner);
        let input: Vec<u8> = reqs.iter().flat_map(Req::wire).collect();
        let input = mutate(input, &ms);
        let what = format!(
            "case {n}: {:?} cut at {cuts:?}",
            String::from_utf8_lossy(&input)
        );
        let before = up.count();
        let mut conn = tls(edge.https(), HOST).await;
        send_in_pieces(&mut conn, &input, &cuts, &pauses).await;
        // Whatever edge answers parses, one answer after another, until it
        // closes or has nothing more to say.
        let mut buf = Vec::new();
        let mut answers = 0;
        while answers <= reqs.len() {
            match tokio::time::timeout(secs(120), read_answer(&mut conn, &mut buf, false)).await {
                Ok(Some(_)) => answers += 1,
                Ok(None) | Err(_) => break,
            }
        }
        drop(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = up.seen();
        let new = &seen[before..];
        assert!(
            new.len() <= reqs.len() + 1,
            "{what}: {} requests upstream",
            new.len()
        );
        for s in new {
            if let Err(e) = strict::request(&s.raw) {
                panic!(
                    "{what}: the upstream got no clean request ({e}): {:?}",
                    String::from_utf8_lossy(&s.raw)
                );
            }
        }
    }
    // And edge still serves.
    assert_eq!(get(edge.https(), HOST, "/after").await.status, 200);
}
