//! The daemon's control socket, `state_dir/control.sock` (0600, owner only).
//!
//! While `edge serve` runs it is the one process that holds the ACME state and
//! the renewal timers: `edge obtain` and `edge renew` send their request here and
//! print what comes back, so the new certificate is swapped in the moment it is
//! stored. Without a daemon they do the work themselves. The protocol is one
//! JSON request line, then JSON lines `{"out": ...}` and a final `{"exit": N}`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use super::Manager;
use crate::acme::{order, renew};
use crate::certinfo::rfc3339;
use crate::names;
use crate::ui::Ui;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Renew {
        force: bool,
        domain: Option<String>,
    },
    Obtain {
        domains: Vec<String>,
    },
    /// The daemon's status snapshot (`edge status`), as one JSON line.
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Reply {
    Out { out: String },
    Exit { exit: i32 },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Binds the socket; refuses when another daemon already answers on it.
pub async fn bind(state_dir: &Path) -> Result<UnixListener, String> {
    let path = socket_path(state_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(format!(
                "{}: another `edge serve` is running with this state_dir; stop it first (one process owns the certificates)",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(&path);
    }
    let l = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(l)
}

pub(super) async fn serve(listener: UnixListener, m: Manager, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(e) => { tracing::warn!("control socket: {e}"); continue; } },
            _ = stop.changed() => break,
        };
        let m = m.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, m).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn handle(stream: UnixStream, m: Manager) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            send(
                &mut w,
                &Reply::Out {
                    out: format!("bad request: {e}"),
                },
            )
            .await?;
            return send(&mut w, &Reply::Exit { exit: 2 }).await;
        }
    };
    if matches!(req, Request::Status) {
        // Asked every minute by a monitoring check: not worth a line.
        let out = match m.status() {
            Some(src) => serde_json::to_string(&src.snapshot(&m).await).unwrap_or_default(),
            None => String::new(),
        };
        send(&mut w, &Reply::Out { out }).await?;
        return send(&mut w, &Reply::Exit { exit: 0 }).await;
    }
    tracing::info!(request = ?req, "request over the control socket");
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let ui = Ui::remote(tx.clone());
    let work = tokio::spawn(run(req, m, ui, tx));
    while let Some(out) = rx.recv().await {
        send(&mut w, &Reply::Out { out }).await?;
    }
    let exit = work.await.unwrap_or(1);
    send(&mut w, &Reply::Exit { exit }).await
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Reply) -> std::io::Result<()> {
    let mut s = serde_json::to_string(r).unwrap_or_default();
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

async fn run(req: Request, m: Manager, ui: Ui, tx: mpsc::UnboundedSender<String>) -> i32 {
    let cfg = m.config();
    let store = m.store();
    let solvers = m.solvers();
    let say = |s: String| {
        let _ = tx.send(s);
    };
    let code = match req {
        Request::Status => 0,
        Request::Renew { force, domain } => match renew::select(store, domain.as_deref()).await {
            Err(e) => {
                say(format!("edge: error: {e}"));
                1
            }
            Ok(lineages) => {
                let (lines, failed, renewed) =
                    renew::renew_many(&cfg, store, &solvers, &lineages, force, &ui).await;
                if !renewed.is_empty() {
                    m.publish().await;
                    for o in &renewed {
                        tracing::info!(lineage = %o.lineage, new_serial = %o.info.serial, new_expiry = %rfc3339(o.info.not_after), "renewal succeeded; new certificate is being served");
                    }
                }
                say(String::new());
                for l in lines {
                    say(l);
                }
                i32::from(failed > 0)
            }
        },
        Request::Obtain { domains } => match order::clean_names(&domains) {
            Err(e) => {
                say(format!("edge: error: {e}"));
                1
            }
            Ok(names_) => {
                let lineage = names::lineage_name(&names_);
                let solver = solvers.for_names(&names_);
                let result = match store.lock(&lineage).await {
                    Ok(lock) => {
                        order::obtain(
                            &cfg,
                            store,
                            solver.as_ref(),
                            &lock,
                            &lineage,
                            &names_,
                            None,
                            &ui,
                        )
                        .await
                    }
                    Err(e) => Err(e.into()),
                };
                match result {
                    Ok(o) => {
                        m.publish().await;
                        say(format!("\nSuccessfully received certificate; edge serve is serving it now.\nCertificate is saved at: {}\nKey is saved at:         {}\nThis certificate expires on {}.", o.fullchain.display(), o.privkey.display(), rfc3339(o.info.not_after)));
                        0
                    }
                    Err(e) => {
                        say(format!("edge: error: {e}"));
                        1
                    }
                }
            }
        },
    };
    m.inner.wake.notify_one();
    code
}

/// Sends the request to a running daemon and prints its answer. `None` when no
/// daemon listens, so the caller does the work itself.
pub async fn delegate(state_dir: &Path, req: &Request) -> Option<i32> {
    let stream = UnixStream::connect(socket_path(state_dir)).await.ok()?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req).ok()?;
    line.push('\n');
    w.write_all(line.as_bytes()).await.ok()?;
    println!("(edge serve is running: it does this and swaps the certificate in)");
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        match serde_json::from_str::<Reply>(&l) {
            Ok(Reply::Out { out }) => println!("{out}"),
            Ok(Reply::Exit { exit }) => return Some(exit),
            Err(_) => println!("{l}"),
        }
    }
    eprintln!("edge: error: the daemon closed the control socket before answering; see its log (journalctl -u edge)");
    Some(1)
}

/// Asks a running daemon for its status snapshot.
pub async fn status(state_dir: &Path) -> Result<crate::status::Snapshot, String> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        format!(
            "cannot reach edge serve at {}: {e}; is it running with this config (state_dir)?",
            path.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(&Request::Status).map_err(|e| e.to_string())?;
    line.push('\n');
    w.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = BufReader::new(r).lines();
    match lines.next_line().await {
        Ok(Some(l)) => match serde_json::from_str::<Reply>(&l) {
            Ok(Reply::Out { out }) => serde_json::from_str(&out).map_err(|e| {
                format!("the daemon's answer is not a status this edge reads ({e}); is it another version?")
            }),
            _ => Err(format!(
                "the daemon answered {l:?}, not a status; is it another version?"
            )),
        },
        _ => Err("the daemon closed the control socket before answering; see its log (journalctl -u edge)".into()),
    }
}
