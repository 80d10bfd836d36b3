//! What a person at a terminal sees while a certificate is obtained.
//!
//! On a terminal: one line per step and a spinner with elapsed time while
//! waiting. Without one (systemd, CI, pipes): the same lines, no spinner. In the
//! daemon: nothing on stdout, everything goes to the log.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Ui {
    tty: bool,
    enabled: bool,
}

impl Ui {
    pub fn detect() -> Ui {
        Ui {
            tty: std::io::stdout().is_terminal(),
            enabled: true,
        }
    }

    /// For the daemon: steps go to the log only.
    pub fn log_only() -> Ui {
        Ui {
            tty: false,
            enabled: false,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.tty
    }

    pub fn say(&self, text: &str) {
        if self.enabled {
            println!("{text}");
        } else {
            tracing::info!("{text}");
        }
    }

    pub fn step(&self, text: &str) {
        if self.enabled {
            println!("- {text}");
        } else {
            tracing::info!("{text}");
        }
    }

    pub fn spinner(&self, text: &str) -> Option<ProgressBar> {
        if !self.tty || !self.enabled {
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
