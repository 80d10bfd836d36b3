//! `edge obtain`, `edge renew` and `edge certs`: what they print and their exit codes.

use std::process::ExitCode;

use edge::acme::order::{self, Obtained};
use edge::acme::renew;
use edge::acme::solver::Solvers;
use edge::certinfo::rfc3339;
use edge::certs::{delegate, socket_path, Request};
use edge::config::Config;
use edge::names;
use edge::store::cluster::{lock_text, stored_by_text, Written};
use edge::store::Store;
use edge::ui::Ui;

async fn open_store(cfg: &Config) -> Result<Store, ExitCode> {
    Store::open_for(cfg).await.map_err(|e| {
        if cfg.cluster.is_some() {
            eprintln!("edge: error: {e}");
        } else {
            eprintln!("edge: error: state_dir: {e}");
        }
        ExitCode::FAILURE
    })
}

pub async fn obtain(cfg: &Config, domains: &[String]) -> ExitCode {
    let names = match order::clean_names(domains) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("edge: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let req = Request::Obtain {
        domains: names.clone(),
    };
    if let Some(code) = delegate(&cfg.state_dir, &req).await {
        return exit(code);
    }
    let store = match open_store(cfg).await {
        Ok(s) => s,
        Err(c) => return c,
    };
    let ui = Ui::detect();
    let lineage = names::lineage_name(&names);
    // This command's solvers: a responder it starts answers until it exits.
    let solvers = Solvers::new(cfg);
    let solver = solvers.for_names(&names);
    let lock = match store.lock(&lineage).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("edge: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match order::obtain(
        cfg,
        &store,
        solver.as_ref(),
        &lock,
        &lineage,
        &names,
        None,
        &ui,
    )
    .await
    {
        Ok(o) => {
            print_saved(&o);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge: error: {e}");
            ExitCode::FAILURE
        }
    };
    drop(lock);
    store.backend().close().await;
    code
}

fn print_saved(o: &Obtained) {
    println!();
    println!("Successfully received certificate.");
    println!("Certificate is saved at: {}", o.fullchain.display());
    println!("Key is saved at:         {}", o.privkey.display());
    println!("This certificate expires on {}.", rfc3339(o.info.not_after));
    println!(
        "Names: {}; serial {}; issuer {}",
        o.info.names.join(", "),
        o.info.serial,
        o.info.issuer
    );
    println!("These files will be updated when the certificate renews (edge serve renews on its own; edge renew from a timer).");
    println!("Done in {:.2}s.", o.elapsed.as_secs_f64());
}

pub async fn renew(cfg: &Config, force: bool, domain: Option<&str>) -> ExitCode {
    let req = Request::Renew {
        force,
        domain: domain.map(str::to_string),
    };
    if let Some(code) = delegate(&cfg.state_dir, &req).await {
        return exit(code);
    }
    let store = match open_store(cfg).await {
        Ok(s) => s,
        Err(c) => return c,
    };
    let lineages = match renew::select(&store, domain).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("edge: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if lineages.is_empty() {
        println!(
            "No certificates stored in {}; nothing to renew.",
            store.live_root().display()
        );
        return ExitCode::SUCCESS;
    }
    let solvers = Solvers::new(cfg);
    let (lines, failed, _) =
        renew::renew_many(cfg, &store, &solvers, &lineages, force, &Ui::detect()).await;
    store.backend().close().await;
    println!();
    for l in &lines {
        println!("{l}");
    }
    if failed > 0 {
        println!(
            "{failed} of {} renewal(s) failed; the previous certificates stay in place.",
            lineages.len()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub async fn certs(cfg: &Config) -> ExitCode {
    let store = match open_store(cfg).await {
        Ok(s) => s,
        Err(c) => return c,
    };
    let lineages = match store.lineages().await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("edge: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if lineages.is_empty() {
        println!("No certificates stored in {}.", store.live_root().display());
        return ExitCode::SUCCESS;
    }
    let now = edge::clock::now();
    let mut bad = false;
    if tokio::net::UnixStream::connect(socket_path(&cfg.state_dir))
        .await
        .is_ok()
    {
        println!("edge serve is running on this state_dir: it renews these on its own.\n");
    }
    let fleet = store.backend().cluster();
    if let Some(c) = fleet {
        match c.health() {
            Ok(()) => println!("Fleet: node {:?}, following etcd.\n", c.node()),
            Err(e) => println!(
                "Fleet: node {:?}; etcd cannot be read now ({e}); showing this node's copy.\n",
                c.node()
            ),
        }
    }
    for l in lineages {
        println!("Certificate Name: {l}");
        match store.load_live(&l).await {
            Ok(c) => {
                let state = store.renewal_state(&l).await;
                let left = c
                    .info
                    .not_after
                    .duration_since(now)
                    .map(|d| format!("VALID: {} days", d.as_secs() / 86400))
                    .unwrap_or_else(|_| "EXPIRED".into());
                println!("  Domains: {}", c.info.names.join(" "));
                println!("  Expiry Date: {} ({left})", rfc3339(c.info.not_after));
                println!("  Issuer: {}", c.info.issuer);
                println!("  Serial: {}", c.info.serial);
                println!(
                    "  Profile: {}",
                    state.profile.as_deref().unwrap_or("the CA's default")
                );
                println!(
                    "  Next renewal: {}",
                    match renew::decide(&c.info, &state, now, false) {
                        renew::Decision::Due(why) => format!("now ({why})"),
                        renew::Decision::NotYet(t) => rfc3339(t),
                        renew::Decision::BackingOff(t) => format!(
                            "{} (backing off after {} failure(s))",
                            rfc3339(t),
                            state.failures
                        ),
                    }
                );
                if let Some(e) = &state.last_error {
                    println!("  Last error: {e}");
                }
                println!(
                    "  Certificate Path: {}",
                    store.live_path(&l, "fullchain.pem").display()
                );
                println!(
                    "  Private Key Path: {}",
                    store.live_path(&l, "privkey.pem").display()
                );
                if let Some(c) = fleet {
                    let f = c.facts(&l);
                    let by = f.written.as_ref().map(Written::describe);
                    println!("  Renewed by: {}", stored_by_text(by.as_deref()));
                    println!("  Lock: {}", lock_text(f.lock_holder.as_deref()));
                }
            }
            Err(e) => {
                bad = true;
                println!("  problem: {e}");
            }
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn exit(code: i32) -> ExitCode {
    if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `edge status`: the running daemon's snapshot, as text or JSON; exit 1
/// when something needs a person, 3 when the daemon cannot be asked.
pub async fn status(cfg: &Config, json: bool) -> ExitCode {
    match edge::certs::status(&cfg.state_dir).await {
        Err(e) => {
            eprintln!("edge: error: {e}");
            ExitCode::from(3)
        }
        Ok(snap) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&snap).unwrap_or_default()
                );
            } else {
                print!("{}", edge::status::text::render(&snap));
            }
            if snap.problems().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
