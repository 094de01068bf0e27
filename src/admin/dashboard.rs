//! The live dashboard: one self-contained page (inline CSS and JS, no CDN, no web fonts),
//! embedded in the binary and served at `GET /` on the admin listener.
//!
//! The page polls `metrics?format=json` (relative, so it also works behind a path prefix) every
//! second and computes rates and a five-minute history in the browser, so the server keeps no
//! per-viewer state.
//!
//! Its Content-Security-Policy allows nothing but the page's own inline `<script>` and `<style>`
//! (by SHA-256 hash, computed once from the embedded page) and `connect-src 'self'` for the
//! polling: an injected script or a stray external reference is refused by the browser.

use std::sync::OnceLock;

use http::{HeaderValue, Response};

/// The page, inline CSS and JS included.
const PAGE: &str = include_str!("dashboard.html");

/// The dashboard page.
pub fn page() -> Response<Vec<u8>> {
    let mut resp = Response::new(PAGE.as_bytes().to_vec());
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(http::header::CONTENT_SECURITY_POLICY, csp().clone());
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    resp
}

/// The page's Content-Security-Policy, computed once.
fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        // Hashes are base64, so the policy is always a valid header; the unit tests check it.
        HeaderValue::from_str(&policy_for(PAGE))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}

/// The policy for `page`: its one inline script and one inline style, by hash; polling of the
/// same origin; `data:` images (the empty favicon); nothing else.
fn policy_for(page: &str) -> String {
    let source = |tag| inline_element(page, tag).map_or_else(|| "'none'".to_string(), hash_source);
    let (script, style) = (source("script"), source("style"));
    format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The text of the first `<tag>...</tag>` (no attributes), exactly as the browser hashes it.
fn inline_element<'a>(page: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = page.find(&open)? + open.len();
    let len = page[start..].find(&format!("</{tag}>"))?;
    Some(&page[start..start + len])
}

/// `'sha256-<base64>'` for a CSP source list.
fn hash_source(text: &str) -> String {
    format!("'sha256-{}'", base64(&sha256(text.as_bytes())))
}

/// SHA-256 (FIPS 180-4). Only for the CSP hashes of the embedded page, so no crypto crate.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (wi, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (k, wi) in K.iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(*k)
                .wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_matches_the_standard_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // 1,000 bytes: many blocks, padding into an extra block.
        assert_eq!(
            hex(&sha256(&[b'a'; 1000])),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn served_as_html_with_a_strict_policy() {
        let resp = page();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(resp.body().as_slice(), PAGE.as_bytes());
        let csp = resp.headers()[http::header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(
            csp.contains("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        let script = hash_source(inline_element(PAGE, "script").unwrap());
        let style = hash_source(inline_element(PAGE, "style").unwrap());
        assert!(csp.contains(&format!("script-src {script};")), "{csp}");
        assert!(csp.contains(&format!("style-src {style};")), "{csp}");
    }

    #[test]
    fn one_inline_script_and_style_and_nothing_external() {
        // The CSP hashes exactly one of each; a second would be refused by the browser.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        let lower = PAGE.to_ascii_lowercase();
        for banned in [
            "http://", "https://", "src=", "@import", "url(", "//cdn", "<iframe", "<object",
        ] {
            assert!(
                !lower.contains(banned),
                "dashboard.html contains {banned:?}"
            );
        }
        for href in lower.match_indices("href=").map(|(i, _)| &lower[i..]) {
            assert!(
                href.starts_with("href=\"data:"),
                "external href: {href:.60}"
            );
        }
        // Polls its own origin with a relative URL.
        assert!(PAGE.contains("'metrics?format=json'"));
    }

    #[test]
    fn has_the_hooks_the_end_to_end_test_uses() {
        for hook in [
            "id=\"total-requests\"",
            "id=\"requests-per-second\"",
            "id=\"success-rate\"",
            "id=\"avg-response-time\"",
            "id=\"active-connections\"",
            "id=\"breaker-trips\"",
            "id=\"retries\"",
            "id=\"rate-limited\"",
            "id=\"strategy\"",
            "id=\"version\"",
            "id=\"uptime\"",
            "id=\"conn-status\"",
            "id=\"status-message\"",
            "id=\"backends\"",
            "id=\"rate-chart\"",
            "data-backend=",
            "row.dataset.backend = id",
            "data-field=\"health\"",
            "data-field=\"breaker\"",
            "data-spark=\"rate\"",
            "data-spark=\"latency\"",
        ] {
            assert!(PAGE.contains(hook), "dashboard.html lacks {hook}");
        }
    }
}
