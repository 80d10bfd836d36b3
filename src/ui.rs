//! What a person sees while a certificate is obtained.
//!
//! On a terminal: one line per step and a spinner with elapsed time while
//! waiting. Without one (systemd, CI, pipes): the same lines, no spinner. In the
//! daemon: the log. For `edge renew` served by the daemon: the lines go back
//! over the control socket to the waiting command.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone)]
enum Sink {
    Stdout { tty: bool },
    Log,
    Remote(UnboundedSender<String>),
}

#[derive(Debug, Clone)]
pub struct Ui {
    sink: Sink,
}

impl Ui {
    pub fn detect() -> Ui {
        Ui {
            sink: Sink::Stdout {
                tty: std::io::stdout().is_terminal(),
            },
        }
    }

    /// For the daemon: steps go to the log only.
    pub fn log_only() -> Ui {
        Ui { sink: Sink::Log }
    }

    /// Lines go to a control-socket client (and the daemon's log).
    pub fn remote(tx: UnboundedSender<String>) -> Ui {
        Ui {
            sink: Sink::Remote(tx),
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.sink, Sink::Stdout { tty: true })
    }

    /// Whether a person can answer on this process's stdin.
    pub fn is_interactive(&self) -> bool {
        matches!(self.sink, Sink::Stdout { .. })
    }

    pub fn say(&self, text: &str) {
        match &self.sink {
            Sink::Stdout { .. } => println!("{text}"),
            Sink::Log => tracing::info!("{text}"),
            Sink::Remote(tx) => {
                tracing::info!("{text}");
                let _ = tx.send(text.to_string());
            }
        }
    }

    pub fn step(&self, text: &str) {
        match &self.sink {
            Sink::Stdout { .. } => println!("- {text}"),
            _ => self.say(&format!("- {text}")),
        }
    }

    pub fn spinner(&self, text: &str) -> Option<ProgressBar> {
        if !self.is_terminal() {
            self.step(&format!("{text}..."));
            return None;
        }
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(text.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        Some(pb)
    }
}
