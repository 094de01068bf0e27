//! Serde helpers for fields whose YAML form is not their derived one: an empty value as the
//! default (`backends:`, `pingora:`), ports with a range message, `hash_key` as its string
//! form, and `trusted_proxies` as a list of CIDR strings. Errors raised inside visitors get
//! serde_yaml's key path and position (`trusted_proxies[1]: ... at line 4 column 5`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::balance::HashKey;
use crate::client::Cidr;

/// An empty value (`key:` with nothing after it) is the type's default.
pub(super) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A port number, with a message giving the range.
pub(super) fn deserialize_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct PortVisitor;
    impl Visitor<'_> for PortVisitor {
        type Value = u16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number 0-65535")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| {
                E::custom(format!("invalid value {v}: expected a port number 0-65535"))
            })
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| {
                E::custom(format!("invalid value {v}: expected a port number 0-65535"))
            })
        }
    }
    d.deserialize_any(PortVisitor)
}

/// `hash_key` as its string form (`client_ip`, `header:X-User-Id`, ...).
pub(super) mod hash_key_serde {
    use super::*;

    pub fn serialize<S: serde::Serializer>(key: &HashKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashKey, D::Error> {
        // Errors raised inside the visitor get serde_yaml's key path and position.
        struct HashKeyVisitor;
        impl Visitor<'_> for HashKeyVisitor {
            type Value = HashKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client_ip, path, header:NAME or cookie:NAME")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HashKey, E> {
                HashKey::from_str(v).map_err(E::custom)
            }
        }
        d.deserialize_str(HashKeyVisitor)
    }
}

/// `trusted_proxies` as a list of strings (`10.0.0.0/8`, `::1`); an empty value is no entries.
/// Each entry is parsed on its own, so a bad one is reported as `trusted_proxies[i]`.
pub(super) mod cidr_list_serde {
    use super::*;

    pub fn serialize<S: serde::Serializer>(list: &[Cidr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(Cidr::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
        let list: Vec<Entry> = null_as_default(d)?;
        Ok(list.into_iter().map(|e| e.0).collect())
    }

    struct Entry(Cidr);

    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct CidrVisitor;
            impl Visitor<'_> for CidrVisitor {
                type Value = Entry;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an IP address or CIDR network such as 10.0.0.0/8")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Entry, E> {
                    Cidr::from_str(v).map(Entry).map_err(E::custom)
                }
            }
            d.deserialize_str(CidrVisitor)
        }
    }
}
