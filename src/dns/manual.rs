//! `provider = "manual"`: a person sets the record, as with `certbot --manual`.
//!
//! Presenting only prints; the order flow then waits for the record to show up in
//! DNS or for Enter on standard input, whichever comes first.

use super::{BoxFuture, DnsError, Publisher, TxtRecord};
use crate::ui::Ui;

pub struct Manual {
    pub ui: Ui,
}

/// The TTL we suggest: short, so a wrong value can be corrected quickly.
pub const SUGGESTED_TTL: u32 = 60;

impl Publisher for Manual {
    fn present<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let mut text = String::new();
            text.push_str(
                "- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -\n",
            );
            if records.len() == 1 {
                text.push_str("Please deploy a DNS TXT record under the name:\n\n");
            } else {
                text.push_str(&format!(
                    "Please deploy these {} DNS TXT records:\n\n",
                    records.len()
                ));
            }
            for r in records {
                text.push_str(&format!(
                    "{}.  {}  IN  TXT  \"{}\"\n",
                    r.fqdn, SUGGESTED_TTL, r.value
                ));
            }
            text.push_str("\n(name with its trailing dot, TTL in seconds, value in quotes; records on one name are added side by side)\n");
            text.push_str("edge continues by itself as soon as the records are visible in DNS,\nor press Enter once you have set them.\n");
            text.push_str(
                "- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -",
            );
            self.ui.say(&text);
            Ok(())
        })
    }

    fn cleanup<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let names: Vec<_> = records.iter().map(|r| format!("{}.", r.fqdn)).collect();
            self.ui.say(&format!(
                "You may now remove the TXT record(s) at {}",
                names.join(", ")
            ));
            Ok(())
        })
    }
}
