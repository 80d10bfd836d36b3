//! bench/run's full-handshake client with a chosen key exchange: C loops,
//! each a new TCP connection, a full TLS 1.3 handshake (no resumption) and
//! one `Connection: close` request, for S seconds; prints how many completed
//! and how many failed. `tls_handshake PORT HOST SECONDS CONNS pq|classic`:
//! `pq` offers X25519MLKEM768 (what browsers offer first now), `classic`
//! X25519 only. (wrk's OpenSSL 3.0 has no ML-KEM.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "any_cert.rs"]
mod any_cert;
use any_cert::AnyCert;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: tls_handshake PORT HOST SECONDS CONNS pq|classic");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("PORT");
    let host = args[2].clone();
    let seconds: u64 = args[3].parse().expect("SECONDS");
    let conns: usize = args[4].parse().expect("CONNS");
    let mut provider = default_provider();
    provider.kx_groups = match args[5].as_str() {
        "pq" => vec![kx_group::X25519MLKEM768],
        "classic" => vec![kx_group::X25519],
        other => panic!("{other}: expected pq or classic"),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + Duration::from_secs(seconds);
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (connector, done, failed, host, request) = (
            connector.clone(),
            done.clone(),
            failed.clone(),
            host.clone(),
            request.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let name = rustls::pki_types::ServerName::try_from(host).expect("SNI");
            let mut buf = vec![0u8; 16 * 1024];
            while Instant::now() < end {
                let one = async {
                    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    tcp.set_nodelay(true)?;
                    let mut tls = connector.connect(name.clone(), tcp).await?;
                    tls.write_all(request.as_bytes()).await?;
                    let mut got = 0;
                    loop {
                        let n = tls.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    Ok::<_, std::io::Error>(got)
                };
                match one.await {
                    Ok(n) if n > 0 => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{} {}",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
