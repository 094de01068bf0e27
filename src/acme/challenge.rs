//! HTTP-01 answers: the key authorizations of the challenges in progress, by token, and the
//! response the pipeline writes for `GET /.well-known/acme-challenge/<token>`.
//!
//! The order task inserts a token just before telling the CA it is ready, and removes it when
//! the order is done. Reading is one `ArcSwap` load and a map lookup, and only for paths under
//! [`CHALLENGE_PATH`]; a token Fulcrum does not know is not answered here (the request goes on
//! through the pipeline, so a backend can keep answering its own challenges).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Where HTTP-01 challenges are fetched (RFC 8555 §8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The key authorizations of the HTTP-01 challenges in progress, by token.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: ArcSwap<HashMap<String, Arc<str>>>,
}

impl Challenges {
    /// Answers `token` with `key_authorization` from now on.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        let answer: Arc<str> = key_authorization.into();
        self.tokens.rcu(|tokens| {
            let mut next = HashMap::clone(tokens);
            next.insert(token.to_string(), answer.clone());
            next
        });
    }

    /// Stops answering `token`.
    pub fn remove(&self, token: &str) {
        self.tokens.rcu(|tokens| {
            let mut next = HashMap::clone(tokens);
            next.remove(token);
            next
        });
    }

    /// The key authorization for a request `path`, if it asks for a token in progress.
    pub fn lookup(&self, path: &str) -> Option<Arc<str>> {
        let token = path.strip_prefix(CHALLENGE_PATH)?;
        self.tokens.load().get(token).cloned()
    }

    /// Answers the request when it is a `GET` (or `HEAD`) for a token in progress: `200` with
    /// the key authorization. Returns whether it answered.
    pub async fn answer(&self, session: &mut Session) -> pingora::Result<bool> {
        let head = session.req_header();
        if !matches!(head.method, Method::GET | Method::HEAD) {
            return Ok(false);
        }
        let Some(answer) = self.lookup(head.uri.path()) else {
            return Ok(false);
        };
        log::info!(
            "acme: answered the HTTP-01 challenge {} for {}",
            head.uri.path(),
            session
                .client_addr()
                .map_or_else(String::new, |a| a.to_string())
        );
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/octet-stream")?;
        resp.insert_header(http::header::CONTENT_LENGTH, answer.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::copy_from_slice(answer.as_bytes())), true)
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_in_progress_are_answered() {
        let c = Challenges::default();
        assert!(c.lookup("/.well-known/acme-challenge/abc").is_none());
        c.insert("abc", "abc.thumb");
        c.insert("def", "def.thumb");
        assert_eq!(
            c.lookup("/.well-known/acme-challenge/abc").as_deref(),
            Some("abc.thumb")
        );
        for other in [
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/abcd",
            "/.well-known/acme-challenge/abc/x",
            "/abc",
            "/x/.well-known/acme-challenge/abc",
        ] {
            assert!(c.lookup(other).is_none(), "{other}");
        }
        c.remove("abc");
        assert!(c.lookup("/.well-known/acme-challenge/abc").is_none());
        assert!(c.lookup("/.well-known/acme-challenge/def").is_some());
    }
}
