//! The signed cookie store: expiry and re-issue over an injected clock, key rotation, tampering,
//! arbitrary input, and the key file.

use std::path::PathBuf;

use super::*;
use crate::config::Secret;
use crate::rng::SplitMix64;
use crate::sticky::memory::MemoryStore;
use crate::sticky::plausible_token;

const T: Duration = Duration::from_secs(60);
const KEY_A: &str = "aaaaaaaa-first-key-0123456789abcdef";
const KEY_B: &str = "bbbbbbbb-second-key-0123456789abcdef";
const KEY_C: &str = "cccccccc-third-key-0123456789abcdef";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn store(keys: &[&str]) -> CookieStore {
    CookieStore::new(keys.iter().map(|k| k.as_bytes().to_vec()).collect(), T).unwrap()
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
}

fn pinned(b: &str) -> Lookup {
    Lookup::Pinned(Arc::from(b))
}

#[test]
fn a_cookie_hits_until_expiry_and_every_hit_reissues_it() {
    let rt = rt();
    let store = store(&[KEY_A]);
    assert!(store.reissue_on_hit());
    assert!(
        !MemoryStore::new(T, 10).reissue_on_hit(),
        "memory slides in place"
    );
    assert_eq!(store.active(), None);

    let first = rt.block_on(store.pin(None, "web1", at(0))).unwrap();
    assert!(first.starts_with("v1."), "{first}");
    assert_eq!(plausible_token(first.as_bytes()), Some(first.as_str()));
    // without re-issue the value ends at 0 + 60 s, whatever happens to the session
    for (t, want) in [
        (0, pinned("web1")),
        (59, pinned("web1")),
        (60, Lookup::Miss),
        (61, Lookup::Miss),
    ] {
        assert_eq!(rt.block_on(store.lookup(&first, at(t))), want, "at {t} s");
    }

    // the pipeline's part: each hit sends pin(Some(token), backend, now), which slides
    let steps = [
        (30, pinned("web1")),  // re-issued: ends 90
        (89, pinned("web1")),  // ends 149
        (148, pinned("web1")), // ends 208
        (208, Lookup::Miss),   // exactly at expiry: gone
        (209, Lookup::Miss),
    ];
    let mut token = first.clone();
    for (t, want) in steps {
        let got = rt.block_on(store.lookup(&token, at(t)));
        assert_eq!(got, want, "at {t} s");
        if let Lookup::Pinned(b) = got {
            let next = rt.block_on(store.pin(Some(&token), &b, at(t))).unwrap();
            assert_ne!(next, token, "a re-issued value carries the new expiry");
            token = next;
        }
    }
    // a value is not tied to the previous one: re-pinning elsewhere just signs anew
    let moved = rt
        .block_on(store.pin(Some(&first), "web2", at(300)))
        .unwrap();
    assert_eq!(rt.block_on(store.lookup(&moved, at(301))), pinned("web2"));
    // a sub-second clock rounds the expiry up: the session lasts at least the timeout
    let half = at(0) + Duration::from_millis(500);
    let v = rt.block_on(store.pin(None, "web1", half)).unwrap();
    assert_eq!(rt.block_on(store.lookup(&v, half + T)), pinned("web1"));
    assert_eq!(rt.block_on(store.lookup(&v, at(61))), Lookup::Miss);
}

#[test]
fn the_first_key_signs_and_every_key_verifies() {
    let rt = rt();
    // (keys of the instance that signs, keys of the one that reads, hit?)
    let cases: &[(&[&str], &[&str], bool)] = &[
        (&[KEY_A], &[KEY_A], true),
        (&[KEY_A], &[KEY_B, KEY_A], true), // old key still accepted (rotation, step 2)
        (&[KEY_A], &[KEY_B, KEY_C, KEY_A], true),
        (&[KEY_A, KEY_B], &[KEY_A], true), // new key added second: still signs with A
        (&[KEY_B, KEY_A], &[KEY_A], false), // signing with B before the reader knows it
        (&[KEY_B, KEY_A], &[KEY_A, KEY_B], true),
        (&[KEY_A], &[KEY_B], false), // rotated out (step 3)
        (&[KEY_A], &[KEY_B, KEY_C], false),
    ];
    for (signer, reader, hit) in cases {
        let value = rt.block_on(store(signer).pin(None, "web1", at(0))).unwrap();
        let want = if *hit { pinned("web1") } else { Lookup::Miss };
        let got = rt.block_on(store(reader).lookup(&value, at(1)));
        assert_eq!(got, want, "signed with {signer:?}, read with {reader:?}");
    }
}

#[test]
fn tampering_with_any_character_truncating_or_extending_misses() {
    let rt = rt();
    let store = store(&[KEY_A]);
    let value = rt.block_on(store.pin(None, "web1", at(0))).unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=V";
    let mut tried = 0;
    rt.block_on(async {
        for i in 0..value.len() {
            for c in alphabet.chars() {
                let mut bad = value.clone().into_bytes();
                if bad[i] == c as u8 {
                    continue;
                }
                bad[i] = c as u8;
                let bad = String::from_utf8(bad).unwrap();
                assert_eq!(store.lookup(&bad, at(1)).await, Lookup::Miss, "{bad}");
                tried += 1;
            }
        }
        for n in 0..value.len() {
            assert_eq!(store.lookup(&value[..n], at(1)).await, Lookup::Miss, "{n}");
        }
        for tail in ["A", "AA", "AAA", "AAAA", "=", " ", "\0"] {
            let bad = format!("{value}{tail}");
            assert_eq!(store.lookup(&bad, at(1)).await, Lookup::Miss, "{bad}");
        }
        assert_eq!(store.lookup(&value, at(1)).await, pinned("web1"));
    });
    assert!(tried > 50 * value.len(), "{tried}");
}

#[test]
fn other_versions_ids_and_expiries_miss_even_when_signed() {
    let rt = rt();
    let store = store(&[KEY_A]);
    let good = store.seal(PREFIX, 1_000_100, b"web1");
    assert_eq!(rt.block_on(store.lookup(&good, at(1))), pinned("web1"));
    let renamed = format!("v2.{}", &good[PREFIX.len()..]);
    // each signed with the right key, yet not a session
    let cases = [
        ("another version's prefix", renamed),
        ("signed as version 2", store.seal("v2.", 1_000_100, b"web1")),
        (
            "the prefix outside the tag",
            format!("{PREFIX}{}", store.seal("", 1_000_100, b"web1")),
        ),
        (
            "an id that is not UTF-8",
            store.seal(PREFIX, 1_000_100, b"web\xff"),
        ),
        ("an empty id", store.seal(PREFIX, 1_000_100, b"")),
        ("expired long ago", store.seal(PREFIX, 0, b"web1")),
        (
            "beyond the clock's range",
            store.seal(PREFIX, u64::MAX, b"web1"),
        ),
    ];
    for (what, value) in cases {
        assert_eq!(
            rt.block_on(store.lookup(&value, at(1))),
            Lookup::Miss,
            "{what}"
        );
    }
}

#[test]
fn arbitrary_bytes_and_mutations_miss_without_panicking() {
    let rt = rt();
    let store = store(&[KEY_A, KEY_B]);
    let value = rt.block_on(store.pin(None, "web1", at(0))).unwrap();
    let rng = SplitMix64::new(0x5eed);
    let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut plausible = 0;
    rt.block_on(async {
        for round in 0..30_000u32 {
            let bytes: Vec<u8> = match round % 3 {
                // any bytes, any length up to beyond the limit
                0 => (0..rng.below(600)).map(|_| rng.next_u64() as u8).collect(),
                // well-formed base64url after the right prefix: reaches the MAC check
                1 => PREFIX
                    .bytes()
                    .chain((0..rng.below(520)).map(|_| b64[rng.below(64) as usize]))
                    .collect(),
                // the valid value with 1 to 4 bytes changed
                _ => {
                    let mut v = value.clone().into_bytes();
                    for _ in 0..=rng.below(4) {
                        let i = rng.below(v.len() as u64) as usize;
                        v[i] ^= 1 + rng.below(255) as u8;
                    }
                    v
                }
            };
            if let Some(token) = plausible_token(&bytes) {
                plausible += 1;
                assert_eq!(store.lookup(token, at(1)).await, Lookup::Miss, "{token}");
            }
            let lossy = String::from_utf8_lossy(&bytes);
            assert_eq!(store.lookup(&lossy, at(1)).await, Lookup::Miss, "{lossy}");
        }
    });
    assert!(
        plausible > 10_000,
        "the loop reached the decoder: {plausible}"
    );
}

#[test]
fn ids_up_to_255_bytes_fit_a_plausible_cookie() {
    let rt = rt();
    let store = store(&[KEY_A]);
    let longest = "b".repeat(MAX_BACKEND_LEN);
    let value = rt.block_on(store.pin(None, &longest, at(0))).unwrap();
    assert!(
        plausible_token(value.as_bytes()).is_some(),
        "{}",
        value.len()
    );
    assert_eq!(rt.block_on(store.lookup(&value, at(1))), pinned(&longest));
    assert_eq!(
        rt.block_on(store.pin(None, "web1", at(0))).unwrap().len(),
        62
    );
    for bad in [String::new(), "b".repeat(MAX_BACKEND_LEN + 1)] {
        assert!(
            rt.block_on(store.pin(None, &bad, at(0))).is_err(),
            "{}",
            bad.len()
        );
    }
}

#[test]
fn a_store_needs_long_keys_and_never_shows_them() {
    assert!(CookieStore::new(Vec::new(), T).is_err());
    let short = CookieStore::new(vec![KEY_A.into(), b"short".to_vec()], T).unwrap_err();
    assert!(short.0.contains("session key 2"), "{short}");
    let shown = format!("{:?}", store(&[KEY_A, KEY_B]));
    assert!(
        !shown.contains("first-key") && shown.contains("keys: 2"),
        "{shown}"
    );
}

/// A file under the temp dir, removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(name: &str, content: &[u8]) -> Self {
        let name = format!("fulcrum-session-keys-{}-{name}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, content).unwrap();
        Self(path)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn keys_come_from_the_secret_or_one_per_line_of_the_file() {
    let config = |secret: Option<&str>, file: Option<&KeyFile>| LoadBalancerConfig {
        session_store: "cookie".into(),
        session_secret: secret.map(Secret::from),
        session_secret_file: file.map(|f| f.0.clone()),
        ..LoadBalancerConfig::default()
    };
    let keys = |c: &LoadBalancerConfig| keys_from_config(c).unwrap();
    let bytes = |ks: &[&str]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();

    assert_eq!(keys(&config(Some(KEY_A), None)), bytes(&[KEY_A]));
    let text = format!("\n  {KEY_B}  \r\n\n\t{KEY_A}\n   \n{KEY_C}");
    let file = KeyFile::new("good", text.as_bytes());
    assert_eq!(
        keys(&config(None, Some(&file))),
        bytes(&[KEY_B, KEY_A, KEY_C])
    );

    let short = KeyFile::new("short", format!("{KEY_A}\n\nshort-key-7\n").as_bytes());
    let blank = KeyFile::new("blank", b"\n  \n\r\n");
    let mut big = format!("{KEY_A}\n").into_bytes();
    big.resize(64 * 1024 + 1, b'\n');
    let big = KeyFile::new("big", &big);
    let missing = KeyFile(std::env::temp_dir().join("fulcrum-no-such-key-file"));
    let shown = |f: &KeyFile| format!("session_secret_file: {}: ", f.0.display());
    // (config, what the one error says)
    let cases = [
        (
            config(Some("too-short-secret"), None),
            "session_secret: must be at least 32".into(),
        ),
        (
            config(None, None),
            "session_store: cookie needs session_secret".into(),
        ),
        (
            config(Some(KEY_A), Some(&file)),
            "session_secret: cannot be set together".into(),
        ),
        (
            config(None, Some(&short)),
            format!(
                "{}line 3: a key must be at least 32 characters, got 11",
                shown(&short)
            ),
        ),
        (
            config(None, Some(&blank)),
            format!("{}holds no key", shown(&blank)),
        ),
        (
            config(None, Some(&big)),
            format!("{}larger than 65536 bytes", shown(&big)),
        ),
        (
            config(None, Some(&missing)),
            format!("{}cannot read", shown(&missing)),
        ),
    ];
    for (config, want) in cases {
        let messages = keys_from_config(&config).unwrap_err().messages().to_vec();
        assert!(
            messages.len() == 1 && messages[0].starts_with(&want),
            "{want}: {messages:?}"
        );
        for secret in [KEY_A, KEY_B, KEY_C, "too-short-secret", "short-key-7"] {
            assert!(!messages[0].contains(secret), "{messages:?} shows a key");
        }
    }
}
