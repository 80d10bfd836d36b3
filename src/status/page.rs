//! The status page: one HTML document, no script, refreshing itself every
//! ten seconds; tables and text bars, so a terminal browser (lynx, w3m)
//! shows the same as a graphical one. Every value from outside (names,
//! errors) is escaped.

use std::fmt::Write;

use super::text::{duration, opt_ms};
use super::Snapshot;
use crate::store::cluster::{lock_text, stored_by_text};

/// Seconds between the page's own refreshes.
const REFRESH: u32 = 10;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// Days left as a bar of block characters, green, amber under a third of
/// the lifetime, red under a week.
fn days_bar(left: f64, lifetime: f64) -> String {
    const WIDTH: usize = 30;
    let filled = if lifetime > 0.0 {
        ((left / lifetime).clamp(0.0, 1.0) * WIDTH as f64).round() as usize
    } else {
        0
    };
    let class = if left < super::EXPIRY_WARNING_DAYS {
        "bad"
    } else if left < lifetime / 3.0 {
        "warn"
    } else {
        "ok"
    };
    format!(
        "<span class=\"bar {class}\">{}</span><span class=\"bar rest\">{}</span>",
        "\u{2588}".repeat(filled),
        "\u{2591}".repeat(WIDTH - filled)
    )
}

pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>edge status</title><style>\
         body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}\
         h1{{font-size:1.4em}}h2{{font-size:1.15em;margin-top:1.6em}}\
         table{{border-collapse:collapse;margin:.4em 0}}\
         th,td{{text-align:left;padding:.25em .8em .25em 0;vertical-align:top}}\
         th{{border-bottom:1px solid #999}}\
         .bar{{font-family:monospace;letter-spacing:-1px}}.ok{{color:#2a7}}.warn{{color:#c80}}\
         .bad{{color:#c22;font-weight:bold}}.rest{{color:#ccc}}.down{{color:#c22;font-weight:bold}}\
         .up{{color:#2a7}}.err{{color:#c22}}.muted{{color:#777}}\
         </style></head><body>\n"
    );
    let _ = writeln!(
        o,
        "<h1>edge {}</h1>\n<p>Up {}, {} connection(s) open. Taken {}; this page refreshes every {REFRESH} s.</p>",
        esc(&s.version),
        duration(s.uptime_secs as f64),
        s.open_connections,
        esc(&s.at)
    );
    if let Some(f) = &s.fleet {
        let store = match &f.store_down_why {
            None => "<span class=\"ok\">following etcd</span>".to_string(),
            Some(why) => format!(
                "<span class=\"bad\">not following etcd ({}); serving this node's copy</span>",
                esc(why)
            ),
        };
        let _ = writeln!(o, "<p>Fleet node {}, {store}.</p>", esc(&f.node));
    }
    let problems = s.problems();
    if problems.is_empty() {
        let _ = writeln!(o, "<p class=\"ok\">All is well.</p>");
    } else {
        let _ = writeln!(o, "<h2 class=\"bad\">Needs a person</h2>\n<ul>");
        for p in &problems {
            let _ = writeln!(o, "<li class=\"bad\">{}</li>", esc(p));
        }
        let _ = writeln!(o, "</ul>");
    }

    let _ = writeln!(
        o,
        "<h2>Certificates</h2>\n<table>\n<tr><th>Names</th><th>Serving now</th><th>Days left</th>\
         <th>Next renewal</th><th>Last renewal</th><th>DNS provider</th></tr>"
    );
    for c in &s.certificates {
        let serving = match &c.lineage {
            Some(_) => format!(
                "serial {}<br><span class=\"muted\">{}<br>profile {}</span>",
                esc(&c.serial),
                esc(&c.issuer),
                esc(c.profile.as_deref().unwrap_or("(the CA's default)"))
            ),
            None => "<span class=\"bad\">self-signed placeholder</span>".into(),
        };
        let mut last = match (&c.last_outcome, &c.last_attempt) {
            (Some(out), Some(at)) => format!("{} at {}", esc(out), esc(at)),
            _ => "no attempt yet".into(),
        };
        if s.fleet.is_some() && c.lineage.is_some() {
            let by = stored_by_text(c.renewed_by.as_deref());
            let lock = lock_text(c.lock_holder.as_deref());
            let _ = write!(
                last,
                "<br><span class=\"muted\">stored by {}; lock {}</span>",
                esc(by),
                esc(&lock)
            );
        }
        let err = c
            .last_error
            .as_deref()
            .map(|e| {
                format!(
                    "<br><span class=\"err\">{} ({} failure(s) in a row)</span>",
                    esc(e),
                    c.failures
                )
            })
            .unwrap_or_default();
        let left = match &c.lineage {
            Some(_) => format!(
                "{}<br>{:.1} of {:.0} days, until {}",
                days_bar(c.days_left, c.lifetime_days),
                c.days_left,
                c.lifetime_days,
                esc(&c.not_after)
            ),
            None => "-".into(),
        };
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{serving}</td><td>{left}</td>\
             <td>{}<br><span class=\"muted\">{}</span></td><td>{last}{err}</td><td>{}</td></tr>",
            c.names
                .iter()
                .map(|n| esc(n))
                .collect::<Vec<_>>()
                .join("<br>"),
            esc(c.next_renewal.as_deref().unwrap_or("-")),
            esc(&c.next_reason),
            esc(&c.provider)
        );
    }
    let _ = writeln!(o, "</table>");

    let _ = writeln!(o, "<h2>Upstreams</h2>");
    for site in &s.sites {
        let _ = writeln!(
            o,
            "<h3>{} <span class=\"muted\">({})</span></h3>\n<table>\n<tr><th>Upstream</th><th>State</th>\
             <th>In flight</th><th>Requests/s</th><th>p50</th><th>p99</th></tr>",
            esc(&site.name),
            esc(&site.balance)
        );
        for u in &site.upstreams {
            let state = match &u.down_secs {
                Some(d) => format!(
                    "<span class=\"down\">DOWN</span> for {} ({})",
                    duration(*d),
                    esc(u.down_why.as_deref().unwrap_or("failures"))
                ),
                None => "<span class=\"up\">up</span>".into(),
            };
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{state}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                esc(&u.addr),
                u.inflight,
                u.per_second,
                opt_ms(u.p50_ms),
                opt_ms(u.p99_ms)
            );
        }
        let _ = writeln!(o, "</table>");
    }
    let _ = writeln!(
        o,
        "<p class=\"muted\">Requests per second and p50/p99 (time to the answer's head) are over the last minute.</p>"
    );

    let _ = writeln!(
        o,
        "<h2>Listeners</h2>\n<table>\n<tr><th>Listener</th><th>Address</th></tr>"
    );
    for l in &s.listeners {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&l.name),
            esc(&l.addr)
        );
    }
    let _ = writeln!(
        o,
        "</table>\n<h2>Limits reached since start</h2>\n<table>\n<tr><th>Limit</th><th>Times</th></tr>"
    );
    for l in &s.limits_hit {
        let _ = writeln!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(&l.limit), l.count);
    }
    let _ = writeln!(
        o,
        "</table>\n<p class=\"muted\">Also: <a href=\"/metrics\">/metrics</a> (Prometheus), \
         <a href=\"/status.json\">/status.json</a>, <code>edge status</code>.</p>\n</body></html>"
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_errors_are_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
        assert_eq!(esc("a\nb"), "a b");
    }
}
