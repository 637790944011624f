//! The admin API's OpenAPI document. It states what the handlers enforce (the patterns
//! below are the ones the checks are tested against), every status an operation can
//! answer, and the bearer scheme that guards `/v1` and `/metrics`.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, Ref, RefOr, Required, Response, Schema, Type,
};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use super::extract::{BODY_LIMIT, TOKEN_ID_PATTERN};
use crate::base::problem::{CONTENT_TYPE as PROBLEM_JSON, ProblemDocument};
use crate::credentials::{BUILTIN_SCOPES, LABEL_MAX_CHARS, LABEL_PATTERN};
use crate::ratelimit::Snapshot;

/// `expires_in`: a whole number of at most six digits, without a leading zero, and a unit.
pub const EXPIRES_IN_PATTERN: &str = crate::base::duration::WHOLE_PATTERN;
/// `overlap`: like `expires_in`, or zero.
pub const OVERLAP_PATTERN: &str = crate::base::duration::WHOLE_OR_ZERO_PATTERN;

/// The paths a bearer token with the `admin` scope guards.
fn is_protected(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/metrics"
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "portcullis admin API",
        description = "Manage the gateway's bearer tokens, read its rate-limit and upstream state and search its audit log. Every /v1 endpoint, and /metrics, needs a bearer token with the admin scope. Every error is application/problem+json (RFC 9457)."
    ),
    paths(
        super::create_token,
        super::list_tokens,
        super::show_token,
        super::revoke_token,
        super::rotate_token,
        super::rate_limits,
        super::audit::audit_events,
        super::upstreams::upstreams,
        super::metrics,
        super::openapi_json,
        super::docs_page,
    ),
    components(
        schemas(super::TokenView, super::MintedView, super::CreateRequest, super::RotateRequest, Snapshot, super::audit::AuditPage, super::upstreams::UpstreamsView, ProblemDocument),
        responses(BadRequest, NotFound, Conflict, TooLarge, NotJson, BadQuery, AuditOff),
    ),
    modifiers(&Protected, &OptionalRotateBody)
)]
struct ApiDoc;

/// The document, with `known_scopes` (the built-in ones and those routes name) as the
/// values a new token's scopes may take.
pub fn document(known_scopes: &[String]) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    if let Some(components) = document.components.as_mut() {
        components
            .schemas
            .insert(Scope::name().into_owned(), scope_schema(known_scopes));
    }
    document
}

fn scope_schema(known_scopes: &[String]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "A scope: read, write, admin (implies all), or one a route names",
        ))
        .enum_values(Some(known_scopes.iter().cloned()))
        .into()
}

/// A token's name or tenant ([`crate::credentials::is_valid_label`]).
pub struct Label;

impl PartialSchema for Label {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "1 to 100 characters, not only whitespace, without control characters",
            ))
            .min_length(Some(1))
            .max_length(Some(LABEL_MAX_CHARS))
            .pattern(Some(LABEL_PATTERN))
            .into()
    }
}

impl ToSchema for Label {}

/// A scope a new token may be given; [`document`] puts in the scopes this server knows.
pub struct Scope;

impl PartialSchema for Scope {
    fn schema() -> RefOr<Schema> {
        scope_schema(&BUILTIN_SCOPES.map(str::to_owned))
    }
}

impl ToSchema for Scope {}

/// How long a new token lives.
pub struct ExpiresIn;

impl PartialSchema for ExpiresIn {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A positive whole number and a unit: s, m, h, d or w (e.g. 30m, 12h, 90d)",
            ))
            .pattern(Some(EXPIRES_IN_PATTERN))
            .examples(["90d"])
            .into()
    }
}

impl ToSchema for ExpiresIn {}

/// How long a rotated token keeps working.
pub struct Overlap;

impl PartialSchema for Overlap {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A whole number and a unit: s, m, h, d or w (e.g. 0s, 30m, 24h)",
            ))
            .pattern(Some(OVERLAP_PATTERN))
            .examples(["24h"])
            .into()
    }
}

impl ToSchema for Overlap {}

/// The `{id}` path parameter.
pub struct TokenIdParam;

impl IntoParams for TokenIdParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<utoipa::openapi::path::Parameter> {
        vec![
            utoipa::openapi::path::ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(utoipa::openapi::Required::True)
                .description(Some("The token's id, e.g. tok_4fQ9zX1bK2mN0"))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(TOKEN_ID_PATTERN)),
                ))
                .build(),
        ]
    }
}

/// A problem+json response described by `description`.
fn problem_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ProblemDocument::name())))
            .build(),
    )
}

/// Declares a named problem+json response, for `response = ...` in the operations.
macro_rules! problem_responses {
    ($($(#[$doc:meta])* $name:ident => $description:expr;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), problem_response(&$description).build().into())
            }
        }
    )*};
}

problem_responses! {
    /// 400: a body or path parameter the handler cannot read.
    BadRequest => "The body does not match its schema, is not JSON, or a path parameter is not UTF-8";
    /// 404: an id no token has.
    NotFound => "No token has this id";
    /// 409: a name taken, or a token no longer live.
    Conflict => "A live token has this name, or the token is no longer live";
    /// 413: a body over the limit.
    TooLarge => format!("The body is larger than {BODY_LIMIT} bytes");
    /// 415: a body that is not JSON.
    NotJson => "A body was sent, but not as application/json";
    /// 400: a query parameter unknown, repeated or out of range.
    BadQuery => "A query parameter is unknown, repeated, malformed or out of range";
    /// 404: the audit log is off.
    AuditOff => "The audit log is off";
}

/// Requires the bearer scheme on every protected operation, with the 401, 403, 429 and 503
/// that `require_admin` answers.
struct Protected;

impl Modify for Protected {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A static token or a managed token with the admin scope",
                    ))
                    .build(),
            ),
        );
        let challenge = HeaderBuilder::new()
            .schema(String::schema())
            .description(Some("The RFC 6750 challenge"))
            .build();
        let retry_after = HeaderBuilder::new()
            .schema(String::schema())
            .description(Some("Seconds to wait before trying again"))
            .build();
        let responses = [
            (
                "401",
                problem_response("No bearer token, or one that is not accepted")
                    .header("WWW-Authenticate", challenge.clone())
                    .build(),
            ),
            (
                "403",
                problem_response("The token lacks the admin scope")
                    .header("WWW-Authenticate", challenge)
                    .build(),
            ),
            (
                "429",
                problem_response(
                    "The caller's address is banned after repeated failed authentications",
                )
                .header("Retry-After", retry_after.clone())
                .build(),
            ),
            (
                "503",
                problem_response(
                    "The credential store (or, for /v1/audit, the audit store) cannot be reached",
                )
                .header("Retry-After", retry_after)
                .build(),
            ),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !is_protected(path) {
                continue;
            }
            for operation in operations(item) {
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                for (status, response) in &responses {
                    operation
                        .responses
                        .responses
                        .insert((*status).to_owned(), response.clone().into());
                }
            }
        }
    }
}

/// The rotate body may be left out (utoipa marks every body it is given as required).
struct OptionalRotateBody;

impl Modify for OptionalRotateBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let body = openapi
            .paths
            .paths
            .get_mut("/v1/tokens/{id}/rotate")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut());
        if let Some(body) = body {
            body.required = Some(Required::False);
        }
    }
}

/// The document as JSON, with links from each 201 (a created or rotated token) to the
/// operations that take its id, so that a client, or a stateful fuzzer, can follow them.
/// They are added to the JSON because utoipa 5 writes a `Link`'s members in snake case.
pub fn to_json(document: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(document).unwrap_or_default();
    let links: serde_json::Map<String, serde_json::Value> = [
        ("ShowToken", "show_token"),
        ("RevokeToken", "revoke_token"),
        ("RotateToken", "rotate_token"),
    ]
    .into_iter()
    .map(|(name, operation_id)| {
        let link = serde_json::json!({
            "operationId": operation_id,
            "parameters": {"id": "$response.body#/record/id"},
        });
        (name.to_owned(), link)
    })
    .collect();
    for path in ["/v1/tokens", "/v1/tokens/{id}/rotate"] {
        if let Some(created) = json
            .pointer_mut(&format!(
                "/paths/{}/post/responses/201",
                path.replace('/', "~1")
            ))
            .and_then(serde_json::Value::as_object_mut)
        {
            created.insert("links".to_owned(), links.clone().into());
        }
    }
    json
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.patch.as_mut(),
        item.delete.as_mut(),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> serde_json::Value {
        to_json(&document(&[
            "read".into(),
            "write".into(),
            "admin".into(),
            "ops".into(),
        ]))
    }

    #[test]
    fn protected_operations_declare_bearer_and_their_refusals() {
        let doc = json();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let mut protected = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = &operation["responses"];
                if is_protected(path) {
                    protected += 1;
                    assert_eq!(operation["security"][0]["bearer"], serde_json::json!([]));
                    for status in ["401", "403", "429", "503"] {
                        assert_eq!(
                            responses[status]["content"][PROBLEM_JSON]["schema"]["$ref"],
                            "#/components/schemas/ProblemDetails",
                            "{method} {path} {status}"
                        );
                    }
                } else {
                    assert!(operation.get("security").is_none(), "{method} {path}");
                }
            }
        }
        assert_eq!(protected, 9);
        for path in ["/metrics", "/docs", "/openapi.json"] {
            assert!(doc["paths"][path]["get"].is_object(), "{path}");
        }
    }

    #[test]
    fn the_schemas_state_the_rules() {
        let doc = json();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Label"]["pattern"], LABEL_PATTERN);
        assert_eq!(schemas["Label"]["maxLength"], 100);
        assert_eq!(schemas["ExpiresIn"]["pattern"], EXPIRES_IN_PATTERN);
        assert_eq!(schemas["Overlap"]["pattern"], OVERLAP_PATTERN);
        assert_eq!(
            schemas["Scope"]["enum"],
            serde_json::json!(["read", "write", "admin", "ops"])
        );
        let create = &schemas["CreateRequest"];
        assert_eq!(create["additionalProperties"], false);
        assert_eq!(create["properties"]["scopes"]["minItems"], 1);
        assert_eq!(create["required"], serde_json::json!(["name", "scopes"]));
        assert_eq!(schemas["RotateRequest"]["additionalProperties"], false);
        let rotate = &doc["paths"]["/v1/tokens/{id}/rotate"]["post"];
        assert_eq!(rotate["requestBody"]["required"], false, "{rotate}");
        assert_eq!(
            rotate["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/RotateRequest"
        );
        for path in ["/v1/tokens", "/v1/tokens/{id}/rotate"] {
            let links = &doc["paths"][path]["post"]["responses"]["201"]["links"];
            assert_eq!(links["ShowToken"]["operationId"], "show_token", "{path}");
            assert_eq!(
                links["RotateToken"]["parameters"]["id"],
                "$response.body#/record/id"
            );
        }
        assert_eq!(
            rotate["parameters"][0]["schema"]["pattern"],
            TOKEN_ID_PATTERN
        );
    }
}
