//! `edge status` for a person: the snapshot as plain text, problems last.

use std::fmt::Write;

use super::Snapshot;
use crate::store::cluster::{lock_text, stored_by_text};

/// `1h 5m`, `2d 3h`, `40s`: the two largest units.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A bar of `width` cells for `part` of `whole`.
pub fn bar(part: f64, whole: f64, width: usize) -> String {
    let filled = if whole > 0.0 {
        ((part / whole).clamp(0.0, 1.0) * width as f64).round() as usize
    } else {
        0
    };
    format!("{}{}", "#".repeat(filled), ".".repeat(width - filled))
}

/// A latency in milliseconds, `-` when there is none.
pub(crate) fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "edge {}, up {}, {} connection(s) open",
        s.version,
        duration(s.uptime_secs as f64),
        s.open_connections
    );
    if let Some(f) = &s.fleet {
        let store = match &f.store_down_why {
            None => "following etcd".to_string(),
            Some(why) => format!("NOT following etcd ({why}); serving this node's copy"),
        };
        let _ = writeln!(o, "fleet node {}, {store}", f.node);
    }
    let _ = writeln!(o, "\nListeners");
    for l in &s.listeners {
        let _ = writeln!(o, "  {:<20} {}", l.name, l.addr);
    }
    let _ = writeln!(o, "\nCertificates");
    for c in &s.certificates {
        let _ = writeln!(o, "  {}", c.names.join(" "));
        match &c.lineage {
            Some(l) => {
                let _ = writeln!(o, "    lineage      {l}");
            }
            None => {
                let _ = writeln!(o, "    lineage      - (self-signed placeholder)");
            }
        }
        let _ = writeln!(o, "    serial       {}", c.serial);
        let _ = writeln!(o, "    issuer       {}", c.issuer);
        if c.lineage.is_some() {
            let _ = writeln!(
                o,
                "    expires      {} [{}] {:.1} of {:.0} days left",
                c.not_after,
                bar(c.days_left, c.lifetime_days, 20),
                c.days_left,
                c.lifetime_days
            );
        }
        let _ = writeln!(
            o,
            "    next renewal {} ({})",
            c.next_renewal.as_deref().unwrap_or("-"),
            c.next_reason
        );
        let last = match (&c.last_outcome, &c.last_attempt) {
            (Some(out), Some(at)) => format!("{out} at {at}"),
            _ => "no attempt yet".into(),
        };
        let _ = writeln!(o, "    last renewal {last}");
        if let Some(e) = &c.last_error {
            let _ = writeln!(
                o,
                "    last error   {e} ({} failure(s) in a row)",
                c.failures
            );
        }
        let _ = writeln!(
            o,
            "    profile      {}",
            c.profile.as_deref().unwrap_or("the CA's default")
        );
        let _ = writeln!(o, "    dns provider {}", c.provider);
        if s.fleet.is_some() && c.lineage.is_some() {
            let by = stored_by_text(c.renewed_by.as_deref());
            let _ = writeln!(o, "    renewed by   {by}");
            let lock = lock_text(c.lock_holder.as_deref());
            let _ = writeln!(o, "    lock         {lock}");
        }
    }
    let _ = writeln!(o, "\nUpstreams (last minute)");
    for site in &s.sites {
        let _ = writeln!(o, "  {} ({})", site.name, site.balance);
        for u in &site.upstreams {
            let state = match (&u.down_secs, &u.down_why) {
                (Some(d), why) => format!(
                    "DOWN for {} ({})",
                    duration(*d),
                    why.as_deref().unwrap_or("failures")
                ),
                _ => "up".into(),
            };
            let _ = writeln!(
                o,
                "    {:<24} {:<36} {} in flight, {:.1} req/s, p50 {}, p99 {}",
                u.addr,
                state,
                u.inflight,
                u.per_second,
                opt_ms(u.p50_ms),
                opt_ms(u.p99_ms)
            );
        }
    }
    let _ = writeln!(o, "\nLimits reached since start");
    for l in &s.limits_hit {
        let _ = writeln!(o, "  {:<32} {}", l.limit, l.count);
    }
    let problems = s.problems();
    if problems.is_empty() {
        let _ = writeln!(o, "\nAll is well.");
    } else {
        let _ = writeln!(o, "\nNeeds a person:");
        for p in problems {
            let _ = writeln!(o, "  - {p}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_bars_read_at_a_glance() {
        assert_eq!(duration(40.0), "40s");
        assert_eq!(duration(100.0), "1m 40s");
        assert_eq!(duration(3900.0), "1h 5m");
        assert_eq!(duration(2.0 * 86400.0 + 3.0 * 3600.0), "2d 3h");
        assert_eq!(bar(45.0, 90.0, 10), "#####.....");
        assert_eq!(bar(-1.0, 90.0, 4), "....");
    }
}
