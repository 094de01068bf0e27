//! [`CookieStore`]: sessions kept by the clients, in a signed cookie (`session_store: cookie`).
//!
//! The store holds no state: the cookie value carries the backend id and the session's expiry,
//! authenticated with HMAC-SHA256 under a key every instance shares (`session_secret`, or the
//! keys of `session_secret_file`). Any instance holding the key agrees on the pin, so this is
//! the store for several Fulcrum instances without Redis. The value is signed, not encrypted:
//! a client can read its backend's id (never its address), but not change it or the expiry.
//!
//! # Format (version 1)
//!
//! ```text
//! v1.<base64url, no padding, of: expiry ‖ backend id ‖ tag>
//!   expiry      8 bytes, big-endian Unix seconds: the session ends at that second
//!   backend id  1 to 255 bytes of UTF-8 (the backend's `id`)
//!   tag         32 bytes, HMAC-SHA256(key, "v1." ‖ expiry ‖ backend id)
//! ```
//!
//! The tag covers the version prefix, so a later `v2.` format cannot be confused with this
//! one. Decoding is strict (canonical base64url only), so changing any character of a value
//! changes the bytes the tag covers. A value for a 4-byte id is 62 characters; the longest
//! (255-byte id) is 397, under the 512 that [`plausible_token`](super::plausible_token)
//! accepts.
//!
//! A value is a hit when its tag verifies under one of the keys (ring's constant-time
//! comparison) and its expiry is later than now; anything else (wrong key, tampered,
//! truncated, bad base64, another version, expired, an id that is not UTF-8: any bytes at all)
//! is a [`Lookup::Miss`]. The expiry is absolute, so instances must keep their clocks in sync
//! (NTP); a skew of a few seconds only moves the end of an idle session by as much.
//!
//! # Sliding expiry
//!
//! [`SessionStore::lookup`] cannot extend a cookie the client holds, so the store answers
//! `true` to [`SessionStore::reissue_on_hit`]: on every hit the pipeline calls
//! [`SessionStore::pin`] for the same backend and sends the new value. Verifying and re-signing
//! cost about 0.3 µs each (`cargo bench --bench sessions`), a round-robin pick about as much.
//! A client idle for `session_timeout` presents an expired value and is balanced afresh; a
//! revoked key ends every session it signed at once.
//!
//! # Keys and rotation
//!
//! [`keys_from_config`] reads the keys: `session_secret` (one key), or `session_secret_file`
//! (one key per line; blank lines and the whitespace around a key are ignored; each at least
//! [`MIN_SESSION_SECRET_LEN`] bytes; the file at most 64 KiB). The file is read when the
//! settings are built, so each step below takes effect when an instance re-reads it (a
//! restart, or a reload that rebuilds the store). The **first key signs, every key verifies**.
//! To rotate without losing a session:
//!
//! 1. Add the new key as the *second* line of the file on every instance and reload them:
//!    each accepts cookies signed with it, but still signs with the old key.
//! 2. When every instance has it, move the new key to the first line and reload: new cookies
//!    (and every re-issued one) are signed with it; the old key still verifies.
//! 3. After `session_timeout` (every live session has since been re-issued under the new key),
//!    delete the old key's line and reload.
//!
//! Signing with the new key before every instance knows it (step 2 before step 1 is done
//! everywhere) would make the instances without it treat those cookies as forged, moving their
//! clients. A leaked key is removed at once instead: the sessions it signed are balanced afresh
//! and re-pinned under the remaining key.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

use super::{Lookup, SessionStore, StoreError};
use crate::config::{ConfigError, LoadBalancerConfig, MIN_SESSION_SECRET_LEN};

/// The version prefix of the current format (covered by the tag).
const PREFIX: &str = "v1.";
/// Bytes of the expiry.
const EXPIRES_LEN: usize = 8;
/// Longest backend id a cookie carries (backend ids are at most 128 bytes).
pub const MAX_BACKEND_LEN: usize = 255;
/// Bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Longest decoded value: what the 512 characters of a plausible token can hold.
const MAX_DECODED: usize = 512 / 4 * 3;
/// Largest `session_secret_file` read.
const MAX_SECRET_FILE_SIZE: u64 = 64 * 1024;

/// Sessions in signed cookies (see the module docs).
pub struct CookieStore {
    /// Signs new values (the first key).
    signer: hmac::Key,
    /// Verify values: every key, the signer first.
    keys: Vec<hmac::Key>,
    timeout: Duration,
}

impl std::fmt::Debug for CookieStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieStore")
            .field("keys", &self.keys.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CookieStore {
    /// A store whose sessions live `timeout` past their last use, signing with the first of
    /// `keys` and accepting cookies signed with any of them. Errors when `keys` is empty or
    /// a key is shorter than [`MIN_SESSION_SECRET_LEN`] bytes (the error names no key).
    pub fn new(keys: Vec<Vec<u8>>, timeout: Duration) -> Result<Self, StoreError> {
        if let Some(i) = keys.iter().position(|k| k.len() < MIN_SESSION_SECRET_LEN) {
            return Err(StoreError(format!(
                "session key {} is shorter than {MIN_SESSION_SECRET_LEN} bytes",
                i + 1
            )));
        }
        let keys: Vec<hmac::Key> = keys
            .iter()
            .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k))
            .collect();
        let Some(signer) = keys.first().cloned() else {
            return Err(StoreError("the cookie store needs at least one key".into()));
        };
        Ok(Self {
            signer,
            keys,
            timeout,
        })
    }

    /// The cookie value for `backend` until Unix second `expires`, tagged over `prefix` with
    /// the signing key (`prefix` is a parameter so tests can forge other versions).
    fn seal(&self, prefix: &str, expires: u64, backend: &[u8]) -> String {
        let mut buf = [0u8; EXPIRES_LEN + MAX_BACKEND_LEN + TAG_LEN];
        let backend = &backend[..backend.len().min(MAX_BACKEND_LEN)];
        let end = EXPIRES_LEN + backend.len();
        buf[..EXPIRES_LEN].copy_from_slice(&expires.to_be_bytes());
        buf[EXPIRES_LEN..end].copy_from_slice(backend);
        let mut ctx = hmac::Context::with_key(&self.signer);
        ctx.update(prefix.as_bytes());
        ctx.update(&buf[..end]);
        let tag = ctx.sign();
        buf[end..end + TAG_LEN].copy_from_slice(tag.as_ref());
        let body = &buf[..end + TAG_LEN];
        let mut value = String::with_capacity(prefix.len() + body.len().div_ceil(3) * 4);
        value.push_str(prefix);
        URL_SAFE_NO_PAD.encode_string(body, &mut value);
        value
    }

    /// The backend of a live, authentic value; `None` for anything else.
    fn open(&self, token: &str, now: SystemTime) -> Option<Arc<str>> {
        let body = token.strip_prefix(PREFIX)?;
        if body.len() > 512 {
            return None;
        }
        // "v1." ‖ expiry ‖ backend ‖ tag, so the signed part is one slice
        let mut buf = [0u8; PREFIX.len() + MAX_DECODED];
        buf[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        let n = URL_SAFE_NO_PAD
            .decode_slice(body, &mut buf[PREFIX.len()..])
            .ok()?;
        if n < EXPIRES_LEN + 1 + TAG_LEN {
            return None;
        }
        let (signed, tag) = buf[..PREFIX.len() + n].split_at(PREFIX.len() + n - TAG_LEN);
        if !self
            .keys
            .iter()
            .any(|k| hmac::verify(k, signed, tag).is_ok())
        {
            return None;
        }
        let (expires, backend) = signed[PREFIX.len()..].split_at(EXPIRES_LEN);
        let expires = u64::from_be_bytes(expires.try_into().ok()?);
        if UNIX_EPOCH.checked_add(Duration::from_secs(expires))? <= now {
            return None;
        }
        std::str::from_utf8(backend).ok().map(Arc::from)
    }
}

/// `now + timeout` in Unix seconds, rounded up (so a session lasts at least `timeout`).
fn expiry(now: SystemTime, timeout: Duration) -> Option<u64> {
    let end = now.duration_since(UNIX_EPOCH).ok()?.checked_add(timeout)?;
    Some(end.as_secs() + u64::from(end.subsec_nanos() > 0))
}

#[async_trait]
impl SessionStore for CookieStore {
    fn kind(&self) -> &'static str {
        "cookie"
    }

    async fn lookup(&self, token: &str, now: SystemTime) -> Lookup {
        match self.open(token, now) {
            Some(backend) => Lookup::Pinned(backend),
            None => Lookup::Miss,
        }
    }

    fn reissue_on_hit(&self) -> bool {
        true
    }

    /// Signs a new value (stateless: `previous` is not needed).
    async fn pin(
        &self,
        _previous: Option<&str>,
        backend: &str,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        if backend.is_empty() || backend.len() > MAX_BACKEND_LEN {
            return Err(StoreError(format!(
                "a backend id of {} bytes does not fit a session cookie (1 to {MAX_BACKEND_LEN})",
                backend.len()
            )));
        }
        let expires = expiry(now, self.timeout)
            .ok_or_else(|| StoreError("the clock is outside the cookie's range".into()))?;
        Ok(self.seal(PREFIX, expires, backend.as_bytes()))
    }

    fn active(&self) -> Option<u64> {
        None
    }
}

/// The cookie store's keys from the configuration, signing key first: `session_secret`, or
/// the keys of `session_secret_file` (read now; see the module docs for the file's format).
/// Errors name the key (`session_secret_file: PATH: line 3: ...`) and never contain a key.
pub fn keys_from_config(config: &LoadBalancerConfig) -> Result<Vec<Vec<u8>>, ConfigError> {
    match (&config.session_secret, &config.session_secret_file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "session_secret: cannot be set together with session_secret_file; set only one",
        )),
        (Some(secret), None) => {
            let key = secret.expose().trim().as_bytes();
            if key.len() < MIN_SESSION_SECRET_LEN {
                return Err(ConfigError::new(format!(
                    "session_secret: must be at least {MIN_SESSION_SECRET_LEN} characters"
                )));
            }
            Ok(vec![key.to_vec()])
        }
        (None, Some(path)) => read_key_file(path)
            .map_err(|e| ConfigError::new(format!("session_secret_file: {}: {e}", path.display()))),
        (None, None) => Err(ConfigError::new(
            "session_store: cookie needs session_secret or session_secret_file (every instance \
             must share the key)",
        )),
    }
}

/// The keys of a key file; the error leaves out key and path.
fn read_key_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE_SIZE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_SIZE {
        return Err(format!(
            "larger than {MAX_SECRET_FILE_SIZE} bytes; it must hold only keys, one per line"
        ));
    }
    let mut keys = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let key = line.trim_ascii();
        if key.is_empty() {
            continue;
        }
        if key.len() < MIN_SESSION_SECRET_LEN {
            return Err(format!(
                "line {}: a key must be at least {MIN_SESSION_SECRET_LEN} characters, got {}",
                i + 1,
                key.len()
            ));
        }
        keys.push(key.to_vec());
    }
    if keys.is_empty() {
        return Err("holds no key (one per line, the first signs)".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;
