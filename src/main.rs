//! The command line: parse, set up logging and the runtime, call the library.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

use edge::config::{self, AccessLog, Config};

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nTLS: rustls 0.23 (aws-lc-rs), TLS 1.2 and 1.3, ALPN h2 and http/1.1",
    "\nACME: instant-acme 0.8, DNS-01; default directory \"letsencrypt\" = https://acme-v02.api.letsencrypt.org/directory",
    "\nconfig: --config, else $EDGE_CONFIG, else config/edge.toml, else /etc/edge/edge.toml"
);

#[derive(Parser)]
#[command(
    name = "edge",
    version,
    long_version = LONG_VERSION,
    about = "Automatic HTTPS in front of web applications: ACME DNS-01 certificates, renewal, and a load-balancing HTTPS proxy",
    after_help = concat!(
        "Examples:\n",
        "  edge obtain --domain flask.ashna.online      # first certificate (DNS-01)\n",
        "  edge serve --config /etc/edge/edge.toml      # the daemon (systemd runs this)\n",
        "  edge renew                                   # renew what is due (from a timer)\n",
        "  edge certs                                   # what is stored, when it renews\n",
        "  edge status                                  # ask the running daemon how it is\n\n",
        "Exit status: 0 success; 1 failure (bad config, failed order or renewal, problems found by check); 2 usage error."
    )
)]
struct Cli {
    /// Config file [default: config/edge.toml, then /etc/edge/edge.toml]
    #[arg(long, global = true, env = "EDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: HTTPS proxy, HTTP redirect, certificate renewal
    #[command(
        after_help = "Example:\n  edge serve --config config/local.toml\n\nSIGHUP reloads config and certificates; SIGTERM drains and exits 0."
    )]
    Serve,
    /// Validate config, certificates and upstream reachability; exit 1 on problems
    #[command(
        after_help = "Example:\n  edge check --config /etc/edge/edge.toml && systemctl reload edge"
    )]
    Check,
    /// Obtain one certificate now for the given names (DNS-01)
    #[command(
        after_help = "Example:\n  edge obtain --domain flask.ashna.online\n  edge obtain --domain example.org --domain '*.example.org'"
    )]
    Obtain {
        /// A name for the certificate; repeat for more; '*.example.org' for a wildcard
        #[arg(long = "domain", short = 'd', required = true)]
        domains: Vec<String>,
    },
    /// Renew the stored certificates that are due, then exit
    #[command(
        after_help = "Examples:\n  edge renew                                # what is due\n  edge renew --force --domain flask.ashna.online\n\nWith edge serve running, the daemon does the work and serves the result at once."
    )]
    Renew {
        /// Renew even if not due (and ignore a failure backoff)
        #[arg(long)]
        force: bool,
        /// Only the certificate with this name (lineage or a name it covers)
        #[arg(long = "domain", short = 'd')]
        domain: Option<String>,
    },
    /// List stored certificates: names, expiry, issuer, next renewal
    #[command(after_help = "Example:\n  edge certs --config /etc/edge/edge.toml")]
    Certs,
    /// Ask the running daemon how it is: certificates served, renewals, upstreams, limits
    #[command(
        after_help = "Examples:\n  edge status\n  edge status --json | jq '.certificates[].days_left'\n\nExit status: 0 all is well; 1 something needs a person (a certificate within 7 days of expiry or still a placeholder, an upstream down for 10 x its fail_timeout); 3 the daemon could not be asked."
    )]
    Status {
        /// Print the snapshot as JSON, for scripts
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions
    #[command(after_help = "Example:\n  edge completions bash > /etc/bash_completion.d/edge")]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "edge", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // One crypto library for every TLS client and server in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let path = match config::locate(cli.config.as_deref()) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_logging(&cfg);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    // One worker gets tokio's single-threaded scheduler: the same one thread for
    // the listeners and every connection, without the work-stealing machinery
    // (atomics on every wake and task release) that only pays with several.
    let mut builder = if cfg.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.workers);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Serve => match edge::daemon::serve(cfg).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            },
            Command::Check => check(&cfg).await,
            Command::Obtain { domains } => commands::obtain(&cfg, &domains).await,
            Command::Renew { force, domain } => {
                commands::renew(&cfg, force, domain.as_deref()).await
            }
            Command::Certs => commands::certs(&cfg).await,
            Command::Status { json } => commands::status(&cfg, json).await,
            Command::Completions { .. } => ExitCode::SUCCESS,
        }
    });
    // Nothing may keep the process alive after the command is done.
    rt.shutdown_background();
    code
}

async fn check(cfg: &Config) -> ExitCode {
    let report = edge::check::run(cfg).await;
    println!("{}: config is valid", cfg.path.display());
    for n in &report.notes {
        println!("  ok: {n}");
    }
    for p in &report.problems {
        println!("  problem: {p}");
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("{} problem(s) found", report.problems.len());
        ExitCode::FAILURE
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(edge::log_limit::filter(&cfg.log.level))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cfg.log.access == AccessLog::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_target(false).init();
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("edge: error: {e}");
    ExitCode::FAILURE
}
