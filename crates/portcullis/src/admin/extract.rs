//! The admin API's extractors. Each refuses with a problem+json response of its own, never
//! with axum's plain-text rejections, and never with a deserializer's message (it can quote
//! the client's input back).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::base::context::request_id;
use crate::base::problem::{Problem, ProblemKind};

/// The most bytes an admin request body may have: the largest real one is well under 1 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The request's id: the client's `X-Request-ID` when well-formed, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// The id the `respond` middleware gave the request, or one from its headers.
    fn of(extensions: &Extensions, headers: &HeaderMap) -> HeaderValue {
        extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_else(|| request_id(headers))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(Self::of(&parts.extensions, &parts.headers)))
    }
}

/// `problem` as the admin API's response for the request `id`, carrying its decision for
/// the request's record.
pub fn problem(problem: Problem, id: &HeaderValue) -> Response {
    let decision = problem.decision();
    let mut response = problem.into_response(id).map(Body::new);
    response.extensions_mut().insert(decision);
    response
}

/// A token id from the path. Non-UTF-8 percent-encoding is a 400 problem; an id that cannot
/// be one the store made (ids are `tok_` and 13 letters or digits) is a 404 without asking
/// the store (PostgreSQL, for one, refuses a NUL in text).
#[derive(Debug)]
pub struct TokenId(pub String);

/// The shape every token id has, as the OpenAPI document states it.
pub const TOKEN_ID_PATTERN: &str = "^[A-Za-z0-9_]{1,64}$";

impl<S: Send + Sync> FromRequestParts<S> for TokenId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let id = RequestId::of(&parts.extensions, &parts.headers);
        let Ok(Path(token_id)) = Path::<String>::from_request_parts(parts, state).await else {
            return Err(problem(
                Problem::new(ProblemKind::BadRequest)
                    .with_detail("the token id in the path is not valid percent-encoded UTF-8"),
                &id,
            ));
        };
        if is_token_id(&token_id) {
            Ok(Self(token_id))
        } else {
            Err(problem(not_found(), &id))
        }
    }
}

/// Whether `text` matches [`TOKEN_ID_PATTERN`].
fn is_token_id(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The 404 for an id no token has.
pub fn not_found() -> Problem {
    Problem::new(ProblemKind::NotFound).with_detail("no token has this id")
}

/// A JSON request body, required.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let id = RequestId::of(request.extensions(), request.headers());
        match read_json(request, state).await {
            Ok(Some(value)) => Ok(Self(value)),
            Ok(None) => Err(problem(
                Problem::new(ProblemKind::BadRequest).with_detail("a JSON body is required"),
                &id,
            )),
            Err(refusal) => Err(problem(refusal, &id)),
        }
    }
}

/// A JSON request body that may be left out: no body, or an empty one, is `None`. A body
/// that is present must be JSON of the right shape, like a [`JsonBody`].
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let id = RequestId::of(request.extensions(), request.headers());
        read_json(request, state)
            .await
            .map(Self)
            .map_err(|refusal| problem(refusal, &id))
    }
}

/// Reads the body (within [`BODY_LIMIT`], which the router sets) and, unless it is empty,
/// parses it as JSON sent as JSON.
async fn read_json<S: Send + Sync, T: DeserializeOwned>(
    request: Request,
    state: &S,
) -> Result<Option<T>, Problem> {
    let json_declared = is_json(request.headers());
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(ProblemKind::BodyTooLarge)
                    .with_detail(format!("the body may have at most {BODY_LIMIT} bytes"))
            } else {
                Problem::new(ProblemKind::BadRequest).with_detail("the body could not be read")
            }
        })?;
    if bytes.is_empty() {
        return Ok(None);
    }
    if !json_declared {
        return Err(Problem::new(ProblemKind::UnsupportedMediaType)
            .with_detail("the body must be sent as Content-Type: application/json"));
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|error| {
        // The position helps; serde's message would quote the client's input.
        let what = if error.is_data() {
            "the body does not match the request schema"
        } else {
            "the body is not valid JSON"
        };
        Problem::new(ProblemKind::BadRequest).with_detail(format!(
            "{what} (line {}, column {})",
            error.line(),
            error.column()
        ))
    })
}

/// Whether `Content-Type` is `application/json` or `application/<something>+json`.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json") && !subtype.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!with("text/json"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn token_ids() {
        assert!(is_token_id("tok_4fQ9zX1bK2mN0"));
        for bad in ["", "tok-1", "tok_é", "a\0b", "../x", &"a".repeat(65)] {
            assert!(!is_token_id(bad), "{bad:?}");
        }
    }
}
