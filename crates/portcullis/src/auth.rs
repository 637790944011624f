//! Authentication: who is calling, proven by a bearer token.
//!
//! Presented tokens are hashed with SHA-256 and compared, in constant time, against the
//! digest of every configured token, without stopping at the first match: how long a check
//! takes depends neither on how much of a token was right nor on which token matched.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tracing::warn;

use crate::base::exchange::Decision;
use crate::base::problem::{Problem, ProblemKind};
use crate::credentials::{CredentialKind, Invalid, TokenRecord, TokenVerifier, Verdict, token};

/// The longest `Authorization` value considered; longer ones are refused unread.
pub const MAX_AUTHORIZATION_LEN: usize = 4096;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(Caller);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    /// A static token from `PORTCULLIS_API_TOKENS`.
    Static,
    /// A managed token or capability (shared with the verifier's cache, so
    /// authenticating copies nothing).
    Managed(Arc<TokenRecord>),
}

impl Principal {
    /// The principal every static token (`PORTCULLIS_API_TOKENS`) authenticates as; it
    /// holds every scope.
    pub fn static_token() -> Self {
        Self(Caller::Static)
    }

    /// The principal a managed credential authenticates as.
    pub fn managed(record: Arc<TokenRecord>) -> Self {
        Self(Caller::Managed(record))
    }

    /// The name audit events and rate limits know this caller by.
    pub fn name(&self) -> &str {
        match &self.0 {
            Caller::Static => "static",
            Caller::Managed(record) => &record.name,
        }
    }

    /// The managed credential's id; `None` for the static principal.
    pub fn managed_id(&self) -> Option<&str> {
        match &self.0 {
            Caller::Static => None,
            Caller::Managed(record) => Some(&record.id),
        }
    }

    /// The managed credential's name; `None` for the static principal, so that a managed
    /// token that happens to be named `static` is still a caller of its own.
    pub fn managed_name(&self) -> Option<&str> {
        match &self.0 {
            Caller::Static => None,
            Caller::Managed(record) => Some(&record.name),
        }
    }

    /// The caller as records keep it: kind, id, name and tenant, never the token.
    pub fn caller(&self) -> crate::base::exchange::Caller {
        match &self.0 {
            Caller::Static => crate::base::exchange::Caller {
                kind: "static",
                id: None,
                name: std::borrow::Cow::Borrowed("static"),
                tenant: None,
            },
            Caller::Managed(record) => crate::base::exchange::Caller {
                kind: record.kind.as_str(),
                id: Some(record.id.clone()),
                name: std::borrow::Cow::Owned(record.name.clone()),
                tenant: record.tenant.clone(),
            },
        }
    }

    /// Whether the caller may act with `scope` (`admin` implies every scope).
    pub fn has_scope(&self, scope: &str) -> bool {
        match &self.0 {
            Caller::Static => true,
            Caller::Managed(record) => record.has_scope(scope),
        }
    }
}

/// Why an `Authorization` header did not yield a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No `Authorization` header.
    #[error("a bearer token is required")]
    Missing,
    /// More than one `Authorization` header.
    #[error("exactly one Authorization header is accepted")]
    Duplicated,
    /// The value is longer than [`MAX_AUTHORIZATION_LEN`].
    #[error("the Authorization header is too long")]
    TooLong,
    /// The value has bytes outside visible ASCII.
    #[error("the Authorization header is not ASCII")]
    NotAscii,
    /// A scheme other than `Bearer`.
    #[error("only the Bearer scheme is accepted")]
    WrongScheme,
    /// `Bearer` with an empty or malformed token.
    #[error("the bearer token is malformed")]
    Malformed,
    /// A well-formed token that no credential matches.
    #[error("the bearer token is not valid")]
    Invalid,
}

/// The bearer token in `headers`, checked for shape but not yet for validity.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, CredentialError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(CredentialError::Missing)?;
    if values.next().is_some() {
        return Err(CredentialError::Duplicated);
    }
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(CredentialError::TooLong);
    }
    let text = value.to_str().map_err(|_| CredentialError::NotAscii)?;
    let (scheme, token) = text.split_once(' ').ok_or_else(|| {
        if text.eq_ignore_ascii_case("bearer") {
            CredentialError::Malformed
        } else {
            CredentialError::WrongScheme
        }
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(CredentialError::WrongScheme);
    }
    let token = token.trim_start_matches(' ');
    if is_token68(token) {
        Ok(token)
    } else {
        Err(CredentialError::Malformed)
    }
}

/// Whether `token` has the `b64token` syntax of RFC 6750: `[A-Za-z0-9-._~+/]+ =*`.
pub fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The static tokens from `PORTCULLIS_API_TOKENS`, held only as SHA-256 digests.
#[derive(Clone)]
pub struct StaticTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokens")
            .field("count", &self.digests.len())
            .finish()
    }
}

impl StaticTokens {
    /// Digests `tokens`; every one of them is valid, which is how rotation works.
    pub fn new(tokens: &[SecretString]) -> Self {
        Self {
            digests: tokens.iter().map(|t| digest(t.expose_secret())).collect(),
        }
    }

    /// Whether `token` is one of the configured tokens.
    pub fn verify(&self, token: &str) -> bool {
        let presented = digest(token);
        let matched = self.digests.iter().fold(Choice::from(0), |found, known| {
            found | known.ct_eq(&presented)
        });
        matched.into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The authentication stage: turns a request's credential into a [`Principal`].
#[derive(Debug, Clone)]
pub struct Authenticator {
    static_tokens: StaticTokens,
    managed: Option<Arc<TokenVerifier>>,
}

impl Authenticator {
    /// Authenticates against `static_tokens` and, when there is a store, managed tokens.
    pub fn new(static_tokens: StaticTokens, managed: Option<Arc<TokenVerifier>>) -> Self {
        Self {
            static_tokens,
            managed,
        }
    }

    /// The managed credentials' verifier, when there is a store.
    pub fn verifier(&self) -> Option<&Arc<TokenVerifier>> {
        self.managed.as_ref()
    }

    /// The caller behind `headers`, or a problem: 401 that does not say which check failed
    /// beyond what the client already knows (whether it sent a credential at all), or 503
    /// when the credential store cannot be asked (never an allow).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        let token = bearer_token(headers).map_err(|error| {
            let decision = match error {
                CredentialError::Missing => Decision::AuthMissing,
                _ => Decision::AuthMalformed,
            };
            unauthorized(error).with_decision(decision)
        })?;
        // A token with the managed prefix is verified first (the verifier checks its format
        // and checksum); only if that fails is it compared with the static tokens, so each
        // kind pays for one check in the common case.
        let mut refused = Decision::AuthUnknown;
        if let Some(managed) = self
            .managed
            .as_ref()
            .filter(|_| token.starts_with(token::PREFIX))
        {
            match managed.verify(token).await {
                Ok(Verdict::Valid(record)) if record.kind == CredentialKind::Token => {
                    return Ok(Principal::managed(record));
                }
                Ok(Verdict::Invalid(Invalid::Expired)) => refused = Decision::AuthExpired,
                Ok(Verdict::Invalid(Invalid::Revoked)) => refused = Decision::AuthRevoked,
                Ok(_) => {}
                Err(error) => return Err(store_unavailable(&error)),
            }
        }
        if self.static_tokens.verify(token) {
            Ok(Principal::static_token())
        } else {
            Err(unauthorized(CredentialError::Invalid).with_decision(refused))
        }
    }

    /// The caller behind a capability `secret` (the path segment below a capability
    /// route). Anything but a live capability gets the 404 an unrouted path gets, so the
    /// route is not revealed; 503 when the store cannot be asked.
    pub async fn authenticate_capability(
        &self,
        secret: Option<&str>,
    ) -> Result<Principal, Problem> {
        let not_found =
            || Problem::new(ProblemKind::NotFound).with_decision(Decision::CapabilityUnknown);
        let (Some(secret), Some(managed)) = (secret, &self.managed) else {
            return Err(not_found());
        };
        match managed.verify(secret).await {
            Ok(Verdict::Valid(record)) if record.kind == CredentialKind::Capability => {
                Ok(Principal::managed(record))
            }
            Ok(_) => Err(not_found()),
            Err(error) => Err(store_unavailable(&error)),
        }
    }
}

fn store_unavailable(error: &crate::credentials::CredentialError) -> Problem {
    // While the store is taken to be down, requests are refused without a line each: the
    // verifier logs when it goes down and when it answers again.
    if !matches!(error, crate::credentials::CredentialError::StoreDown) {
        warn!(%error, "cannot verify a credential: the credential store is unreachable");
    }
    Problem::new(ProblemKind::StoreUnavailable)
        .with_detail("credentials cannot be verified right now")
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
}

/// The 403 sent when the caller lacks `scope`, naming it (RFC 6750 `insufficient_scope`).
pub fn insufficient_scope(scope: &str) -> Problem {
    let challenge =
        format!(r#"Bearer realm="portcullis", error="insufficient_scope", scope="{scope}""#);
    let problem = Problem::new(ProblemKind::InsufficientScope)
        .with_detail(format!("this request needs the scope \"{scope}\""));
    match HeaderValue::from_str(&challenge) {
        Ok(value) => problem.with_header(header::WWW_AUTHENTICATE, value),
        Err(_) => problem,
    }
}

/// The 401 sent for `error`, with the `WWW-Authenticate` challenge of RFC 6750. A request
/// with no credential, or one in another scheme (`Basic`, an empty header), gets the
/// challenge without an error code (§3.1: it "lacks any authentication information").
pub fn unauthorized(error: CredentialError) -> Problem {
    let (challenge, detail) = match error {
        CredentialError::Missing | CredentialError::WrongScheme => {
            (r#"Bearer realm="portcullis""#, "a bearer token is required")
        }
        _ => (
            r#"Bearer realm="portcullis", error="invalid_token""#,
            "the credentials were not accepted",
        ),
    };
    Problem::new(ProblemKind::Unauthorized)
        .with_detail(detail)
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn tokens(list: &[&str]) -> StaticTokens {
        StaticTokens::new(
            &list
                .iter()
                .map(|t| SecretString::from(t.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn parses_bearer_tokens() {
        assert_eq!(bearer_token(&headers(&[b"Bearer abc"])), Ok("abc"));
        assert_eq!(
            bearer_token(&headers(&[b"bearer  a.b-c_d~e+f/g=="])),
            Ok("a.b-c_d~e+f/g==")
        );
    }

    #[test]
    fn refuses_every_malformed_header() {
        let cases: [(&[&[u8]], CredentialError); 9] = [
            (&[], CredentialError::Missing),
            (&[b"Bearer a", b"Bearer b"], CredentialError::Duplicated),
            (&[b"Basic dXNlcjpwYXNz"], CredentialError::WrongScheme),
            (&[b"abc"], CredentialError::WrongScheme),
            (&[b"Bearer"], CredentialError::Malformed),
            (&[b"Bearer "], CredentialError::Malformed),
            (&[b"Bearer a b"], CredentialError::Malformed),
            (&[b"Bearer \xc3\xa9t\xc3\xa9"], CredentialError::NotAscii),
            (&[b"Bearer =="], CredentialError::Malformed),
        ];
        for (values, expected) in cases {
            assert_eq!(bearer_token(&headers(values)), Err(expected), "{values:?}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN));
        assert_eq!(
            bearer_token(&headers(&[long.as_bytes()])),
            Err(CredentialError::TooLong)
        );
    }

    #[test]
    fn every_listed_token_is_valid_and_nothing_else() {
        let store = tokens(&["old-token", "new-token"]);
        assert!(store.verify("old-token"));
        assert!(store.verify("new-token"));
        assert!(!store.verify("new-toke"));
        assert!(!store.verify("new-tokenx"));
        assert!(!store.verify(""));
    }

    #[test]
    fn scopes() {
        assert!(Principal::static_token().has_scope("anything"));
        let mut record = TokenRecord {
            id: "tok_1".into(),
            name: "n".into(),
            public_prefix: "pcl_x".into(),
            scopes: vec!["read".into()],
            kind: crate::credentials::CredentialKind::Token,
            tenant: None,
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            superseded_by: None,
        };
        let reader = Principal::managed(Arc::new(record.clone()));
        assert!(reader.has_scope("read") && !reader.has_scope("write"));
        assert_eq!(reader.name(), "n");
        record.scopes = vec!["admin".into()];
        assert!(Principal::managed(Arc::new(record)).has_scope("write"));
    }

    #[test]
    fn debug_does_not_show_tokens_or_digests() {
        let text = format!("{:?}", tokens(&["sekrit-value"]));
        assert!(!text.contains("sekrit"));
        assert_eq!(text, "StaticTokens { count: 1 }");
    }

    #[tokio::test]
    async fn refusals_are_401_with_a_bearer_challenge() {
        let auth = Authenticator::new(tokens(&["good"]), None);
        let missing = auth.authenticate(&headers(&[])).await.unwrap_err();
        assert_eq!(missing.kind(), ProblemKind::Unauthorized);
        let wrong = auth
            .authenticate(&headers(&[b"Bearer bad"]))
            .await
            .unwrap_err();
        let response = wrong.into_response(&HeaderValue::from_static("r"));
        assert_eq!(response.status(), 401);
        assert!(
            response.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer ")
        );
        assert_eq!(
            auth.authenticate(&headers(&[b"Bearer good"]))
                .await
                .unwrap(),
            Principal::static_token()
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut map = HeaderMap::new();
                map.insert(header::AUTHORIZATION, value);
                let _ = bearer_token(&map);
            }
        }

        #[test]
        fn any_token68_round_trips(token in "[A-Za-z0-9._~+/-]{1,40}={0,2}") {
            let value = format!("Bearer {token}");
            let map = headers(&[value.as_bytes()]);
            prop_assert_eq!(bearer_token(&map), Ok(token.as_str()));
        }
    }
}
