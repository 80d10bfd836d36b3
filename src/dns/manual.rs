//! `provider = "manual"`: a person sets the record, as with `certbot --manual`.
//!
//! Presenting only prints; the order flow then waits for the record to show up in
//! DNS or for Enter on standard input, whichever comes first.

use std::sync::Arc;

use super::{BoxFuture, DnsError, DnsProvider, ProviderSpec, Publisher, TxtRecord};
use crate::check::Report;
use crate::config::Site;
use crate::ui::Ui;

pub static PROVIDER: ProviderSpec = ProviderSpec {
    name: "manual",
    keys: &[],
    parse: |_| Ok(Arc::new(Settings)),
};

#[derive(Debug)]
struct Settings;

impl DnsProvider for Settings {
    fn name(&self) -> &'static str {
        PROVIDER.name
    }

    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError> {
        Ok(Box::new(Manual))
    }

    fn needs_person(&self) -> bool {
        true
    }

    fn check(&self, sites: &[Site], report: &mut Report) {
        // Only dns-01 needs the provider at every renewal (dns-persist-01
        // once; http-01 and tls-alpn-01 never).
        let per_order = sites
            .iter()
            .any(|s| s.challenge == crate::config::Challenge::Dns01);
        if per_order {
            report.notes.push("dns.provider = \"manual\": renewals need a person to set the TXT record; choose exec, rfc2136, builtin or an API provider for unattended renewal, or a challenge that needs no DNS change per order (dns-persist-01, http-01, tls-alpn-01)".into());
        }
    }
}

pub struct Manual;

/// The TTL we suggest: short, so a wrong value can be corrected quickly.
pub const SUGGESTED_TTL: u32 = 60;

impl Publisher for Manual {
    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
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
            ui.say(&text);
            Ok(())
        })
    }

    fn cleanup<'a>(
        &'a self,
        records: &'a [TxtRecord],
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(async move {
            let names: Vec<_> = records.iter().map(|r| format!("{}.", r.fqdn)).collect();
            ui.say(&format!(
                "You may now remove the TXT record(s) at {}",
                names.join(", ")
            ));
            Ok(())
        })
    }
}
