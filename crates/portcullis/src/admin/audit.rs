//! `GET /v1/audit`: the audit log's events, newest first, filtered and paged by cursor.

use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{KnownFormat, OneOfBuilder, SchemaFormat};
use utoipa::openapi::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};

use super::AdminState;
use super::extract::{RequestId, problem};
use crate::audit::query::{
    CURSOR_PATTERN, Cursor, DEFAULT_LIMIT, FILTER_MAX_CHARS, FILTER_STATUSES, Filter, MAX_LIMIT,
    Order, Where, is_filter_text, parse_time, shown,
};
use crate::base::duration::WHOLE_PATTERN;
use crate::base::problem::{Problem, ProblemKind};

/// The schema of `since` and `until`: an RFC 3339 time, or a duration ago.
fn time_schema() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(WHOLE_PATTERN)),
        )
        .into()
}

/// The schema of a text filter: no control characters, at most [`FILTER_MAX_CHARS`].
fn text_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(FILTER_MAX_CHARS))
        .pattern(Some("^[^\\u0000-\\u001F\\u007F-\\u009F]*$"))
        .into()
}

/// The schema of `cursor`.
fn cursor_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(CURSOR_PATTERN))
        .into()
}

/// The filters and the page asked for; every filter given must hold.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// Events of requests that started at or after this: RFC 3339 (`2026-11-27T10:00:00Z`)
    /// or a duration ago (`15m`, `1h`, `7d`).
    #[param(schema_with = time_schema)]
    since: Option<String>,
    /// Events of requests that started before this, in the same forms.
    #[param(schema_with = time_schema)]
    until: Option<String>,
    /// The caller's name (a token's name, or `static`).
    #[param(schema_with = text_schema)]
    principal: Option<String>,
    /// The caller's tenant.
    #[param(schema_with = text_schema)]
    tenant: Option<String>,
    /// The status sent.
    #[param(value_type = Option<u16>, minimum = 100, maximum = 599)]
    status: Option<String>,
    /// The decision code, e.g. `auth_unknown`.
    #[param(schema_with = text_schema)]
    decision: Option<String>,
    /// The route's prefix, exactly, e.g. `/api`.
    #[param(schema_with = text_schema)]
    route: Option<String>,
    /// Paths that start with this.
    #[param(schema_with = text_schema)]
    path_prefix: Option<String>,
    /// One request's events.
    #[param(schema_with = text_schema)]
    request_id: Option<String>,
    /// The client's address.
    #[param(schema_with = text_schema)]
    client_ip: Option<String>,
    /// `next_cursor` of the page before.
    #[param(schema_with = cursor_schema)]
    cursor: Option<String>,
    /// Events per page: 1 to 1000, 100 by default.
    #[param(value_type = Option<u16>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditPage {
    /// The events, newest first: each event's content (request id, client, method, route,
    /// path, status, decision, principal, bytes, times...) with its `chain_id` and `seq`.
    #[schema(value_type = Vec<Object>)]
    events: Vec<serde_json::Value>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// A 400 saying what was wrong with the query.
fn bad_query(detail: &str) -> Problem {
    Problem::new(ProblemKind::BadRequest).with_detail(detail.to_owned())
}

impl AuditParams {
    /// The search these parameters ask for, or the 400 for the first that is wrong.
    fn search(self, now: SystemTime) -> Result<(Filter, Option<Cursor>, i64), Problem> {
        let time = |value: Option<String>, name: &str| {
            value
                .map(|text| {
                    parse_time(&text, now).ok_or_else(|| {
                        bad_query(&format!(
                            "{name} is an RFC 3339 time (2026-11-27T10:00:00Z) or a duration ago (15m, 1h, 7d)"
                        ))
                    })
                })
                .transpose()
        };
        let number = |value: Option<String>, name: &str, range: std::ops::RangeInclusive<i64>| {
            value
                .map(|text| {
                    text.parse::<i64>()
                        .ok()
                        .filter(|n| range.contains(n))
                        .ok_or_else(|| {
                            bad_query(&format!(
                                "{name} is a whole number from {} to {}",
                                range.start(),
                                range.end()
                            ))
                        })
                })
                .transpose()
        };
        let text = |value: Option<String>, name: &str| {
            value
                .map(|text| {
                    if is_filter_text(&text) {
                        Ok(text)
                    } else {
                        Err(bad_query(&format!(
                            "{name} is at most {FILTER_MAX_CHARS} characters, none of them control characters"
                        )))
                    }
                })
                .transpose()
        };
        let filter = Filter {
            since: time(self.since, "since")?,
            until: time(self.until, "until")?,
            principal: text(self.principal, "principal")?,
            tenant: text(self.tenant, "tenant")?,
            status: number(self.status, "status", FILTER_STATUSES)?,
            decision: text(self.decision, "decision")?,
            route: text(self.route, "route")?,
            path_prefix: text(self.path_prefix, "path_prefix")?,
            request_id: text(self.request_id, "request_id")?,
            client_ip: text(self.client_ip, "client_ip")?,
        };
        let cursor = self
            .cursor
            .map(|text| {
                Cursor::parse(&text)
                    .ok_or_else(|| bad_query("cursor is not a next_cursor this API returned"))
            })
            .transpose()?;
        let limit = number(self.limit, "limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
        Ok((filter, cursor, limit))
    }
}

/// Audit events, newest first, filtered by the query's parameters and paged by cursor.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses(
        (status = 200, description = "A page of events", body = AuditPage),
        (status = 400, response = super::openapi::BadQuery),
        (status = 404, response = super::openapi::AuditOff),
    ))]
pub(super) async fn audit_events(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Response {
    let Some(store) = &state.audit else {
        return problem(
            Problem::new(ProblemKind::NotFound).with_detail("the audit log is off"),
            &id,
        );
    };
    // The deserializer's message would quote the client's input: not sent back.
    let Ok(Query(params)) = params else {
        return problem(
            bad_query("the query has an unknown or repeated parameter"),
            &id,
        );
    };
    let (filter, cursor, limit) = match params.search(SystemTime::now()) {
        Ok(search) => search,
        Err(refusal) => return problem(refusal, &id),
    };
    let conditions = Where::of(&filter, Order::NewestFirst, cursor.as_ref());
    // One more than asked for tells whether another page follows.
    match store
        .search(&conditions, Order::NewestFirst, limit + 1)
        .await
    {
        Ok(mut events) => {
            let more = events.len() > usize::try_from(limit).unwrap_or(usize::MAX);
            events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            let next_cursor = more
                .then(|| events.last().map(|last| Cursor::after(last).encode()))
                .flatten();
            Json(AuditPage {
                events: events.iter().map(shown).collect(),
                next_cursor,
            })
            .into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "admin API: the audit store failed");
            problem(
                Problem::new(ProblemKind::StoreUnavailable)
                    .with_detail("the audit store cannot be reached")
                    .with_retry_after(std::time::Duration::from_secs(5)),
                &id,
            )
        }
    }
}
