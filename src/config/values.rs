//! Wire types for config values that have a text form: durations, sizes and
//! socket addresses. Each parses in its `Deserialize`, so a bad value fails
//! where serde reads it, with the key's path and the line (see `mod.rs`), and
//! names what was expected.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// `"500ms"`, `"10s"`, `"5m"`, `"1h"` (humantime's syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        humantime::parse_duration(&v).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "{v:?} is not a duration ({e}); expected e.g. \"10s\", \"5m\", \"1h\""
            ))
        })
    }
}

/// A byte count: an integer (`65536`) or `"64k"`, `"16m"`, `"1g"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

const SIZE_EXPECTED: &str = "expected bytes (65536) or \"64k\", \"16m\", \"1g\"";

impl Size {
    pub fn parse(text: &str) -> Option<u64> {
        let t = text.trim().to_ascii_lowercase();
        let (num, mult) = match t.chars().last() {
            Some('k') => (&t[..t.len() - 1], 1024),
            Some('m') => (&t[..t.len() - 1], 1024 * 1024),
            Some('g') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
            _ => (t.as_str(), 1),
        };
        num.trim().parse::<u64>().ok()?.checked_mul(mult)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{n} is not a size; {SIZE_EXPECTED}")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                Size::parse(s)
                    .map(Size)
                    .ok_or_else(|| E::custom(format!("{s:?} is not a size; {SIZE_EXPECTED}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"IP:PORT"`, e.g. `"0.0.0.0:443"` or `"[::]:443"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        v.parse().map(Addr).map_err(|_| {
            de::Error::custom(format!(
                "{v:?} is not an address; expected IP:PORT such as \"0.0.0.0:443\" or \"[::]:443\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_integers_and_suffixes() {
        assert_eq!(Size::parse("64k"), Some(65536));
        assert_eq!(Size::parse(" 16M "), Some(16 << 20));
        assert_eq!(Size::parse("1g"), Some(1 << 30));
        assert_eq!(Size::parse("12"), Some(12));
        assert_eq!(Size::parse("k"), None);
        assert_eq!(Size::parse("-1k"), None);
        assert_eq!(Size::parse("99999999999999999999g"), None);
        assert_eq!(Size::parse("18446744073709551615g"), None, "overflow");
    }
}
