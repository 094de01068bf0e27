//! One certificate order (RFC 8555 §7.4) through `instant-acme`: the account (stored, or
//! created), a new order for the domains, an HTTP-01 answer per pending authorization, then
//! finalization with a fresh key (ECDSA P-256, made by rcgen) and the chain's download.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::http::AcmeHttp;
use super::storage::Storage;
use super::{AcmeSettings, Challenges};

/// How long the CA may take to validate and to issue, each.
const POLL_LIMIT: Duration = Duration::from_secs(90);

/// A certificate just obtained, in PEM.
pub(super) struct Obtained {
    /// The chain, leaf first.
    pub(super) chain_pem: String,
    /// Its private key.
    pub(super) key_pem: String,
}

/// Why an order failed.
#[derive(Debug)]
pub(super) enum OrderError {
    /// The HTTPS client could not be built (roots).
    Client(String),
    /// The CA or the protocol failed (with the step).
    Acme(&'static str, instant_acme::Error),
    /// The CA did not validate a name.
    Invalid(String),
    /// The account could not be stored.
    Storage(std::io::Error),
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(e) => write!(f, "{e}"),
            Self::Acme(step, e) => write!(f, "{step}: {}", with_sources(e)),
            Self::Invalid(e) => write!(f, "{e}"),
            Self::Storage(e) => write!(f, "cannot store the account: {e}"),
        }
    }
}

impl StdError for OrderError {}

/// An error and its sources, `a: b: c` (hyper's errors say little on their own).
fn with_sources(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// A step's error, named.
fn at(step: &'static str) -> impl Fn(instant_acme::Error) -> OrderError {
    move |e| OrderError::Acme(step, e)
}

/// Removes the tokens it holds from [`Challenges`] when dropped, however the order ends.
struct Answering<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove(t);
        }
    }
}

/// Orders a certificate for `settings.domains`, answering HTTP-01 through `challenges`.
pub(super) async fn obtain(
    settings: &AcmeSettings,
    storage: &Storage,
    challenges: &Challenges,
) -> Result<Obtained, OrderError> {
    let http = AcmeHttp::new(settings.ca.as_deref()).map_err(OrderError::Client)?;
    let account = account(settings, storage, http).await?;
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
        Ok(order) => order,
        Err(e) => {
            if is_problem(&e, "accountDoesNotExist") || is_problem(&e, "unauthorized") {
                log::warn!(
                    "acme: the CA does not know the stored account; the next attempt creates one"
                );
                storage.forget_account();
            }
            return Err(OrderError::Acme("new order", e));
        }
    };
    log::info!(
        "acme: order {} for {:?} created",
        order.url(),
        settings.domains
    );

    let mut answering = Answering {
        challenges,
        tokens: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(at("authorization"))?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Valid => {
                log::info!("acme: {name} is already authorized");
                continue;
            }
            AuthorizationStatus::Pending => {}
            other => {
                return Err(OrderError::Invalid(format!(
                    "the authorization of {name} is {other:?}"
                )))
            }
        }
        let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
            OrderError::Invalid(format!("the CA offers no HTTP-01 challenge for {name}"))
        })?;
        let token = challenge.token.clone();
        challenges.insert(&token, challenge.key_authorization().as_str());
        answering.tokens.push(token.clone());
        log::info!("acme: answering HTTP-01 for {name} at /.well-known/acme-challenge/{token}");
        challenge.set_ready().await.map_err(at("challenge ready"))?;
    }

    let retry = RetryPolicy::new().timeout(POLL_LIMIT);
    let status = order.poll_ready(&retry).await.map_err(at("validation"))?;
    if status != OrderStatus::Ready {
        return Err(OrderError::Invalid(format!(
            "the CA did not validate the order ({status:?}): {}",
            failed_challenges(&mut order).await
        )));
    }
    drop(answering);
    log::info!("acme: {:?} validated; finalizing", settings.domains);
    let key_pem = order.finalize().await.map_err(at("finalize"))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(at("certificate download"))?;
    Ok(Obtained { chain_pem, key_pem })
}

/// The stored account for the directory, or a new one (then stored).
async fn account(
    settings: &AcmeSettings,
    storage: &Storage,
    http: AcmeHttp,
) -> Result<Account, OrderError> {
    let url = &settings.directory_url;
    if let Some(credentials) = storage.account(url) {
        let account = Account::builder_with_http(Box::new(http))
            .from_credentials(credentials)
            .await
            .map_err(at("directory"))?;
        log::info!("acme: using the stored account {}", account.id());
        return Ok(account);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = Account::builder_with_http(Box::new(http))
        .create(&new, url.clone(), None)
        .await
        .map_err(at("new account"))?;
    log::info!("acme: created the account {} at {url}", account.id());
    storage
        .store_account(url, credentials)
        .map_err(OrderError::Storage)?;
    Ok(account)
}

/// Whether `e` is the CA's problem `urn:ietf:params:acme:error:<kind>`.
fn is_problem(e: &instant_acme::Error, kind: &str) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref().is_some_and(|t| t.rsplit(':').next() == Some(kind)))
}

/// What the CA said about each failed challenge, for the log.
async fn failed_challenges(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if authz.refresh().await.is_err() {
            continue;
        }
        for c in &authz.challenges {
            if let Some(e) = &c.error {
                out.push(format!("{name}: {e}"));
            }
        }
    }
    if out.is_empty() {
        "no detail".into()
    } else {
        out.join("; ")
    }
}
