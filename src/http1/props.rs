//! Property tests of the codec: random and mutated heads and chunked bodies.
//! What they hold to: nothing panics; what is consumed is exactly what was
//! framed (a head ends where it first becomes complete, a chunked body where
//! a strict reader, written here apart from the codec, says it ends); and
//! whatever the codec accepts, the strict reader accepts the same way, so no
//! other parser in front of or behind edge can see a message boundary edge
//! does not.
//!
//! The case count is fixed here (`PROPTEST_CASES` can raise it locally) so
//! the first tier stays quick; failures are not written to files.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::chunked::{Decoder, Step};
use super::framing::{self, Facts, Framing};
use super::head;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A change to valid input: a byte replaced, inserted or removed.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

/// Bytes a mutation writes: mostly the ones that matter to framing.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(&b"\r\n \t:;,0123456789abcdefABCDEF\x00\x0b\x7f\x80\xff\"-+xX"[..]),
        1 => any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), interesting_byte()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), interesting_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutate(mut v: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        if v.is_empty() {
            break;
        }
        match *m {
            Mutation::Set(i, b) => {
                let i = i % v.len();
                v[i] = b;
            }
            Mutation::Insert(i, b) => v.insert(i % (v.len() + 1), b),
            Mutation::Remove(i) => {
                v.remove(i % v.len());
            }
        }
    }
    v
}

/// Cuts `input` into pieces at these points (in any order, any size).
fn pieces(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.push(0);
    at.push(input.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| input[w[0]..w[1]].to_vec()).collect()
}

// ---------------------------------------------------------------- chunked

/// A chunked body as a sender could write it, and what it carries.
#[derive(Debug, Clone)]
struct ChunkedBody {
    wire: Vec<u8>,
    data: Vec<u8>,
}

fn token() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(&b"abcxyzABC019!#$%&'*+-.^_`|~"[..]),
        1..8,
    )
    .prop_map(|v| String::from_utf8(v).expect("ascii"))
}

fn chunked_body() -> impl Strategy<Value = ChunkedBody> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..200),
        0usize..4,
        any::<bool>(),
        prop::option::of((token(), prop::option::of(token()))),
    );
    let trailer = (token(), "[ -~]{0,20}");
    (
        prop::collection::vec(chunk, 0..6),
        prop::option::of(prop::collection::vec(trailer, 1..4)),
    )
        .prop_map(|(chunks, trailers)| {
            let mut wire = Vec::new();
            let mut data = Vec::new();
            for (bytes, zeros, upper, ext) in chunks {
                let size = if upper {
                    format!("{}{:X}", "0".repeat(zeros), bytes.len())
                } else {
                    format!("{}{:x}", "0".repeat(zeros), bytes.len())
                };
                wire.extend_from_slice(size.as_bytes());
                if let Some((name, value)) = ext {
                    wire.extend_from_slice(format!(";{name}").as_bytes());
                    if let Some(v) = value {
                        wire.extend_from_slice(format!("={v}").as_bytes());
                    }
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&bytes);
                wire.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            wire.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.unwrap_or_default() {
                wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            ChunkedBody { wire, data }
        })
}

/// How a decode ended.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// The body, and how many bytes of the input it took.
    Body(Vec<u8>, usize),
    /// The input ended before the body did.
    Short,
    Refused,
}

/// The codec, fed in these pieces.
fn decode(input: &[u8], cuts: &[usize]) -> Decoded {
    let mut d = Decoder::default();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut feed = pieces(input, cuts).into_iter();
    let mut fed = 0;
    loop {
        match d.step(&mut buf) {
            Err(_) => return Decoded::Refused,
            Ok(Step::Data(b)) => body.extend_from_slice(&b),
            Ok(Step::End(_)) => return Decoded::Body(body, fed - buf.len()),
            Ok(Step::More) => match feed.next() {
                Some(p) => {
                    fed += p.len();
                    buf.extend_from_slice(&p);
                }
                None => return Decoded::Short,
            },
        }
    }
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value bytes: visible, space, tab and obs-text; no other control.
fn value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// A strict chunked reader written from RFC 9112 §7.1 alone: CRLF only, at
/// most 16 hex digits, extensions without control bytes, trailer fields
/// `token ":" value`.
fn reference(input: &[u8]) -> Decoded {
    fn line(input: &[u8], at: usize) -> Option<Result<(&[u8], usize), ()>> {
        let rest = &input[at..];
        let end = rest.windows(2).position(|w| w == b"\r\n");
        let Some(end) = end else {
            // Incomplete, unless a bare CR or LF is already there.
            let bad = rest.contains(&b'\n')
                || rest
                    .iter()
                    .position(|&b| b == b'\r')
                    .is_some_and(|i| i + 1 < rest.len());
            return Some(Err(())).filter(|_| bad);
        };
        let l = &rest[..end];
        if l.contains(&b'\r') || l.contains(&b'\n') {
            return Some(Err(()));
        }
        Some(Ok((l, at + end + 2)))
    }
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let (l, next) = match line(input, at) {
            None => return Decoded::Short,
            Some(Err(())) => return Decoded::Refused,
            Some(Ok(x)) => x,
        };
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let rest = &l[digits..];
        let ws = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        let ext_ok = rest.is_empty()
            || (rest[ws..].first() == Some(&b';') && rest[ws..].iter().all(|&b| value_byte(b)));
        if digits == 0 || digits > 16 || !ext_ok {
            return Decoded::Refused;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&l[..digits]).expect("hex"), 16)
            .expect("16 digits fit");
        at = next;
        if size == 0 {
            break;
        }
        let size = size as usize;
        if input.len() < at + size {
            return Decoded::Short;
        }
        data.extend_from_slice(&input[at..at + size]);
        at += size;
        if input.len() < at + 2 {
            // A CR or LF where the CRLF belongs could still be right.
            return match &input[at..] {
                [] | [b'\r'] => Decoded::Short,
                _ => Decoded::Refused,
            };
        }
        if &input[at..at + 2] != b"\r\n" {
            return Decoded::Refused;
        }
        at += 2;
    }
    // Trailer fields, then an empty line.
    loop {
        let (l, next) = match line(input, at) {
            None => return Decoded::Short,
            Some(Err(())) => return Decoded::Refused,
            Some(Ok(x)) => x,
        };
        at = next;
        if l.is_empty() {
            return Decoded::Body(data, at);
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            return Decoded::Refused;
        };
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if name.is_empty()
            || !name.iter().all(|&b| tchar(b))
            || !value.iter().all(|&b| value_byte(b))
        {
            return Decoded::Refused;
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// A well-formed body, whatever comes after it and however it arrives:
    /// its data, and exactly its bytes consumed.
    #[test]
    fn a_chunked_body_is_read_to_its_end_and_no_further(
        body in chunked_body(),
        after in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut input = body.wire.clone();
        input.extend_from_slice(&after);
        prop_assert_eq!(decode(&input, &cuts), Decoded::Body(body.data, body.wire.len()));
    }

    /// A mutated body: the codec decides what the strict reader decides
    /// (the same data and the same end, or both refuse), or refuses what the
    /// strict reader would accept only when it is merely short input.
    #[test]
    fn a_mutated_chunked_body_is_read_as_a_strict_reader_reads_it(
        body in chunked_body(),
        after in prop::collection::vec(any::<u8>(), 0..16),
        ms in prop::collection::vec(mutation(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut input = body.wire.clone();
        input.extend_from_slice(&after);
        let input = mutate(input, &ms);
        let got = decode(&input, &cuts);
        let want = reference(&input);
        match (&got, &want) {
            // The codec may give up on a size line or trailers earlier than
            // the end of input (its caps); never the other way round.
            (Decoded::Refused, Decoded::Short) => {}
            _ => prop_assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(&input)),
        }
    }
}

// ---------------------------------------------------------------- heads

/// A request head as a client could write it.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "OPTIONS", "PURGE"]);
    let target = prop::sample::select(vec!["/", "/a/b?c=d", "*", "http://h.test/x", "/%7e;p"]);
    let field = (
        prop::sample::select(vec![
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
            "X-A",
            "te",
        ]),
        prop::sample::select(vec![
            "h.test",
            "5",
            "05",
            "5, 5",
            "chunked",
            "Chunked",
            "gzip, chunked",
            "close",
            "keep-alive",
            "100-continue",
            "",
            "a b\tc",
            "trailers",
        ]),
    );
    (
        method,
        target,
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::collection::vec(field, 0..8),
        any::<bool>(),
    )
        .prop_map(|(m, t, v, fields, bare_lf)| {
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let mut h = format!("{m} {t} {v}{eol}");
            for (k, val) in fields {
                h.push_str(&format!("{k}: {val}{eol}"));
            }
            h.push_str(eol);
            h.into_bytes()
        })
}

/// The answer head counterpart.
fn answer_head() -> impl Strategy<Value = Vec<u8>> {
    let field = (
        prop::sample::select(vec![
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "X-A",
        ]),
        prop::sample::select(vec!["2", "2, 2", "chunked", "close", "keep-alive", "", "v"]),
    );
    (
        prop::sample::select(vec!["100", "101", "200", "204", "304", "404", "502"]),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::collection::vec(field, 0..6),
    )
        .prop_map(|(s, v, fields)| {
            let mut h = format!("{v} {s} Reason\r\n");
            for (k, val) in fields {
                h.push_str(&format!("{k}: {val}\r\n"));
            }
            h.push_str("\r\n");
            h.into_bytes()
        })
}

/// What a parsed head must hold whatever its input: it ends where it first
/// became complete, and what edge keeps of it is clean enough for the
/// strictest reader to write out again.
fn check_request(input: &[u8]) -> Result<(), TestCaseError> {
    let mut fields = Vec::new();
    let max = 4096;
    let Ok(Some(h)) = head::request(input, max, &mut fields) else {
        return Ok(());
    };
    prop_assert!(h.len <= input.len() && h.len <= max);
    prop_assert_eq!(input[h.len - 1], b'\n');
    // Framed where it ends: the head alone parses the same, and no shorter
    // prefix is a complete head.
    let again = head::request(&input[..h.len], max, &mut Vec::new());
    prop_assert_eq!(again, Ok(Some(h.clone())));
    for cut in 0..h.len {
        prop_assert_eq!(head::request(&input[..cut], max, &mut Vec::new()), Ok(None));
    }
    prop_assert!(h.method.get(input).iter().all(|&b| tchar(b)));
    prop_assert!(h
        .target
        .get(input)
        .iter()
        .all(|&b| (0x21..0x7f).contains(&b)));
    for f in &fields {
        prop_assert!(f.name.at + f.name.len <= h.len && f.value.at + f.value.len <= h.len);
        let name = f.name.get(input);
        prop_assert!(!name.is_empty() && name.iter().all(|&b| tchar(b)));
        prop_assert!(f.value.get(input).iter().all(|&b| value_byte(b)));
    }
    // The framing decision never panics and never yields two framings.
    let mut facts = Facts::default();
    for f in &fields {
        facts.observe(f.name.get(input), f.value.get(input));
    }
    let method = http::Method::from_bytes(h.method.get(input)).expect("a token is a method");
    if let Ok(framing) = framing::request(&facts, &method, h.target.get(input), h.version) {
        prop_assert!(!matches!(framing, Framing::Close | Framing::Tunnel));
    }
    Ok(())
}

fn check_answer(input: &[u8]) -> Result<(), TestCaseError> {
    let mut fields = Vec::new();
    let Ok(Some(h)) = head::response(input, 4096, &mut fields) else {
        return Ok(());
    };
    prop_assert!(h.len <= input.len());
    prop_assert!((100..=999).contains(&h.status));
    let again = head::response(&input[..h.len], 4096, &mut Vec::new());
    prop_assert_eq!(again, Ok(Some(h.clone())));
    for cut in 0..h.len {
        prop_assert_eq!(
            head::response(&input[..cut], 4096, &mut Vec::new()),
            Ok(None)
        );
    }
    for f in &fields {
        prop_assert!(f.name.get(input).iter().all(|&b| tchar(b)));
        prop_assert!(f.value.get(input).iter().all(|&b| value_byte(b)));
    }
    let mut facts = Facts::default();
    for f in &fields {
        facts.observe(f.name.get(input), f.value.get(input));
    }
    for method in [http::Method::GET, http::Method::HEAD] {
        if let Ok((framing, persistent)) = framing::answer(&facts, h.status, h.version, &method) {
            // Only a length or chunking lets the connection carry another answer.
            if persistent {
                prop_assert!(matches!(
                    framing,
                    Framing::None | Framing::Length(_) | Framing::Chunked
                ));
            }
            if h.status != 101
                && (method == http::Method::HEAD || h.status == 204 || h.status == 304)
            {
                prop_assert_eq!(framing, Framing::None);
                prop_assert!(!(persistent && facts.declares_body()));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_as_a_request_head(input in prop::collection::vec(any::<u8>(), 0..200)) {
        check_request(&input)?;
    }

    #[test]
    fn mutated_request_heads(
        h in request_head(),
        after in prop::collection::vec(any::<u8>(), 0..20),
        ms in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut input = h;
        input.extend_from_slice(&after);
        check_request(&mutate(input, &ms))?;
    }

    #[test]
    fn mutated_answer_heads(
        h in answer_head(),
        after in prop::collection::vec(any::<u8>(), 0..20),
        ms in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut input = h;
        input.extend_from_slice(&after);
        check_answer(&mutate(input, &ms))?;
    }

    /// The request framing rules, against RFC 9112 §6.3 read directly.
    #[test]
    fn request_framing_follows_the_rules(
        fields in prop::collection::vec((
            prop::sample::select(vec!["Content-Length", "content-length", "Transfer-Encoding", "transfer-encoding"]),
            prop::sample::select(vec!["0", "5", "05", " 5 ", "+5", "5,5", "", "chunked", "CHUNKED", " chunked", "gzip", "chunked, gzip", "x"]),
        ), 0..4),
        http10 in any::<bool>(),
    ) {
        let version = if http10 { http::Version::HTTP_10 } else { http::Version::HTTP_11 };
        let mut facts = Facts::default();
        for (k, v) in &fields {
            facts.observe(k.as_bytes(), v.as_bytes());
        }
        let got = framing::request(&facts, &http::Method::POST, b"/", version)
            .map_err(|r| r.status.as_u16());
        let cl: Vec<&str> = fields.iter().filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| *v).collect();
        let te: Vec<&str> = fields.iter().filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding")).map(|(_, v)| *v).collect();
        let digits = |v: &str| {
            let v = v.trim();
            !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
        };
        let both = !cl.is_empty() && !te.is_empty();
        let want = if both || cl.len() > 1 || (cl.len() == 1 && !digits(cl[0])) {
            Err(400)
        } else if let [v] = cl[..] {
            Ok(Framing::Length(v.trim().parse().expect("digits")))
        } else if te.is_empty() {
            Ok(Framing::None)
        } else if http10 {
            Err(400)
        } else if te.len() == 1 && te[0].trim().eq_ignore_ascii_case("chunked") {
            Ok(Framing::Chunked)
        } else {
            Err(501)
        };
        prop_assert_eq!(got, want);
    }
}
