//! Searching the audit log: the filters the admin API's `GET /v1/audit` and the `audit
//! search|tail|export` commands share, their cursors, and the shape an event is shown in.
//! Every value reaches the database as a bound parameter.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::store::{Column, StoredEvent};
use crate::base::duration::parse_whole;

/// The most events one page holds.
pub const MAX_LIMIT: i64 = 1000;
/// Events per page when no limit is asked for.
pub const DEFAULT_LIMIT: i64 = 100;

/// The most characters a text filter may have.
pub const FILTER_MAX_CHARS: usize = 2048;
/// The statuses a filter may name.
pub const FILTER_STATUSES: std::ops::RangeInclusive<i64> = 100..=599;

/// Whether `text` may be a text filter: at most [`FILTER_MAX_CHARS`] characters, none of
/// them a control character (nothing the gateway stores has one).
pub fn is_filter_text(text: &str) -> bool {
    text.chars().count() <= FILTER_MAX_CHARS && !text.chars().any(char::is_control)
}

/// What a cursor looks like: `TIME-CHAIN-SEQ`.
pub const CURSOR_PATTERN: &str = "^[0-9]{1,18}-[0-9a-f]{32}-[0-9]{1,18}$";

/// Which events a search wants; every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// At or after this time (Unix milliseconds, when the request started).
    pub since: Option<i64>,
    /// Before this time.
    pub until: Option<i64>,
    /// The caller's name.
    pub principal: Option<String>,
    /// The caller's tenant.
    pub tenant: Option<String>,
    /// The status sent.
    pub status: Option<i64>,
    /// The decision code, e.g. `auth_unknown`.
    pub decision: Option<String>,
    /// The route's prefix, exactly (`/api`).
    pub route: Option<String>,
    /// Paths starting with this.
    pub path_prefix: Option<String>,
    /// One request's events.
    pub request_id: Option<String>,
    /// The client's address, as the events write it (`203.0.113.9`, `2001:db8::1`).
    pub client_ip: Option<String>,
}

/// Which way a search walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Newest first, as the admin API and `audit search` show events.
    NewestFirst,
    /// Oldest first, as `audit export` writes them.
    OldestFirst,
}

/// Where a page ends, so that the next starts after it: the last event's time, chain and
/// sequence number, which order every event whatever its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The event's time.
    pub time_ms: i64,
    /// Its chain.
    pub chain_id: String,
    /// Its sequence number.
    pub seq: i64,
}

impl Cursor {
    /// The cursor just past `event`.
    pub fn after(event: &StoredEvent) -> Self {
        Self {
            time_ms: event.time_ms,
            chain_id: event.chain_id.clone(),
            seq: event.seq,
        }
    }

    /// The cursor as clients pass it back: `TIME-CHAIN-SEQ`.
    pub fn encode(&self) -> String {
        format!("{}-{}-{}", self.time_ms, self.chain_id, self.seq)
    }

    /// A cursor [`Self::encode`] wrote ([`CURSOR_PATTERN`]); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('-');
        let time_ms = digits(parts.next()?)?;
        let chain_id = parts.next()?;
        let seq = digits(parts.next()?)?;
        let chain_ok = chain_id.len() == 32
            && chain_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (parts.next().is_none() && chain_ok).then(|| Self {
            time_ms,
            chain_id: chain_id.to_owned(),
            seq,
        })
    }
}

/// A non-negative decimal number of at most 18 digits.
fn digits(text: &str) -> Option<i64> {
    ((1..=18).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// A time as a search takes it: RFC 3339 (`2026-11-27T10:00:00Z`,
/// `2026-11-27T11:00:00.5+01:00`), or a duration before `now` ([`WHOLE_PATTERN`](crate::base::duration::WHOLE_PATTERN): `15m`,
/// `1h`, `7d`). Unix milliseconds; times before 1970 are 0 (no event is older).
pub fn parse_time(text: &str, now: SystemTime) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        let millis = at.unix_timestamp_nanos() / 1_000_000;
        return Some(i64::try_from(millis.max(0)).unwrap_or(i64::MAX));
    }
    let ago = parse_whole(text, false)?;
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(millis(since_epoch.saturating_sub(ago)))
}

/// `Duration` in whole milliseconds, saturating.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A `SELECT` being written with numbered parameters (`$1`, which SQLite and PostgreSQL
/// both take), and the values to bind to them, in order.
#[derive(Debug, Default)]
pub struct Where {
    /// The conditions, joined with `AND`.
    pub sql: String,
    /// The values, in parameter order.
    pub values: Vec<Param>,
}

/// One bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A number.
    Int(i64),
    /// A string.
    Text(String),
}

impl Where {
    /// Adds `column OP $n`, bound to `value`.
    fn add(&mut self, column: &str, op: &str, value: Param) {
        self.values.push(value);
        let n = self.values.len();
        self.and(&format!("{column} {op} ${n}"));
    }

    fn and(&mut self, condition: &str) {
        self.sql.push_str(if self.sql.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        self.sql.push_str(condition);
    }

    /// The conditions of `filter`, and of a page starting past `after` in `order`.
    pub fn of(filter: &Filter, order: Order, after: Option<&Cursor>) -> Self {
        let mut conditions = Self::default();
        let text = |value: &Option<String>| value.clone().map(Param::Text);
        if let Some(since) = filter.since {
            conditions.add("time_ms", ">=", Param::Int(since));
        }
        if let Some(until) = filter.until {
            conditions.add("time_ms", "<", Param::Int(until));
        }
        for (column, value) in [
            ("principal", text(&filter.principal)),
            ("tenant", text(&filter.tenant)),
            ("status", filter.status.map(Param::Int)),
            ("decision", text(&filter.decision)),
            ("route", text(&filter.route)),
            ("request_id", text(&filter.request_id)),
            ("client_ip", text(&filter.client_ip)),
        ] {
            if let Some(value) = value {
                conditions.add(column, "=", value);
            }
        }
        if let Some(prefix) = &filter.path_prefix {
            // Compared as written, case and all, alike on SQLite and PostgreSQL (LIKE
            // ignores case on one and not the other).
            conditions.values.push(Param::Text(prefix.clone()));
            let n = conditions.values.len();
            conditions.and(&format!("substr(path, 1, length(${n})) = ${n}"));
        }
        if let Some(cursor) = after {
            let op = match order {
                Order::NewestFirst => "<",
                Order::OldestFirst => ">",
            };
            let base = conditions.values.len();
            conditions.values.extend([
                Param::Int(cursor.time_ms),
                Param::Text(cursor.chain_id.clone()),
                Param::Int(cursor.seq),
            ]);
            conditions.and(&format!(
                "(time_ms, chain_id, seq) {op} (${}, ${}, ${})",
                base + 1,
                base + 2,
                base + 3
            ));
        }
        conditions
    }
}

/// An event as searches show it: its fields (its columns and its payload's), with its
/// place in the chain. Fields with no value are left out.
pub fn shown(event: &StoredEvent) -> Value {
    let mut object = match serde_json::from_str::<Value>(&event.payload) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    // In events of earlier builds the payload repeats the columns.
    for (name, column) in event.columns() {
        let value = match column {
            Column::Text(text) => text.map(Value::from),
            Column::Number(number) => number.map(Value::from),
        };
        if let Some(value) = value {
            object.insert(name.to_owned(), value);
        }
    }
    object.insert("chain_id".to_owned(), Value::from(event.chain_id.clone()));
    object.insert("seq".to_owned(), Value::from(event.seq));
    Value::Object(object)
}

/// The columns of `audit export --format csv`, in order: keys of [`shown`].
pub const CSV_COLUMNS: [&str; 25] = [
    "time_ms",
    "chain_id",
    "seq",
    "kind",
    "request_id",
    "client_ip",
    "peer",
    "method",
    "route",
    "path",
    "query",
    "status",
    "decision",
    "principal",
    "principal_kind",
    "principal_id",
    "tenant",
    "upstream",
    "bytes_in",
    "bytes_out",
    "duration_us",
    "user_agent",
    // An admin action: what was done (`token_rotated`) to what, and into what.
    "action",
    "target",
    "successor",
];

/// One CSV record (RFC 4180 §2: fields with a comma, quote or line break quoted, quotes
/// doubled; CRLF at the end) of `event`'s [`CSV_COLUMNS`]. A text field that a spreadsheet
/// would run as a formula (starting `=`, `+`, `-`, `@`, tab or CR: a client chooses its
/// path and user agent) gets a leading `'`.
pub fn csv_record(event: &Value) -> String {
    let mut line = String::new();
    for (i, column) in CSV_COLUMNS.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let field = match &event[*column] {
            Value::Null => String::new(),
            Value::String(text) if text.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
                format!("'{text}")
            }
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if field.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&field);
        }
    }
    line.push_str("\r\n");
    line
}

/// The CSV header record.
pub fn csv_header() -> String {
    let mut line = CSV_COLUMNS.join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_nothing_else_parses() {
        let cursor = Cursor {
            time_ms: 1_795_184_538_007,
            chain_id: "0123456789abcdef0123456789abcdef".into(),
            seq: 42,
        };
        assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "1-2-3",
            "x-0123456789abcdef0123456789abcdef-1",
            "1-0123456789ABCDEF0123456789abcdef-1",
            "1-0123456789abcdef0123456789abcdef-1-2",
            "-1-0123456789abcdef0123456789abcdef-1",
            "1-0123456789abcdef0123456789abcdef-99999999999999999999",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_are_rfc_3339_or_a_duration_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time("1h", now), Some((1_000_000 - 3600) * 1000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z", now), Some(1000));
        assert_eq!(parse_time("1970-01-01T01:00:01.5+01:00", now), Some(1500));
        assert_eq!(parse_time("1900-01-01T00:00:00Z", now), Some(0));
        assert_eq!(parse_time("999999w", now), Some(0));
        for bad in [
            "yesterday",
            "",
            "1 h",
            "01h",
            "1000000h",
            "1.5h",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_time(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn filters_become_bound_conditions() {
        let filter = Filter {
            since: Some(5),
            decision: Some("auth_unknown".into()),
            path_prefix: Some("/a_b%".into()),
            ..Filter::default()
        };
        let cursor = Cursor {
            time_ms: 9,
            chain_id: "c".into(),
            seq: 3,
        };
        let conditions = Where::of(&filter, Order::NewestFirst, Some(&cursor));
        assert_eq!(
            conditions.sql,
            " WHERE time_ms >= $1 AND decision = $2 AND substr(path, 1, length($3)) = $3 \
             AND (time_ms, chain_id, seq) < ($4, $5, $6)"
        );
        assert_eq!(conditions.values[2], Param::Text("/a_b%".into()));
        assert_eq!(conditions.values.len(), 6);
    }

    /// RFC 4180 §2 quoting, and no formula a spreadsheet would run (the path and user agent
    /// are the client's choice).
    #[test]
    fn csv_records_are_quoted_and_defused() {
        let event = serde_json::json!({
            "time_ms": 7, "path": "/a,\"b\"", "user_agent": "=HYPERLINK(\"x\")",
            "status": null, "seq": 2,
        });
        let record = csv_record(&event);
        assert!(record.starts_with("7,,2,"), "{record}");
        assert!(record.contains(",\"/a,\"\"b\"\"\","), "{record}");
        assert!(record.contains(",\"'=HYPERLINK(\"\"x\"\")\","), "{record}");
        assert!(record.ends_with("\r\n"));
        // The separators, and the comma inside the quoted path.
        assert_eq!(record.matches(',').count(), CSV_COLUMNS.len());
        let action = serde_json::json!({"kind": "admin_action", "action": "token_revoked", "target": "tok_9"});
        assert!(csv_record(&action).ends_with(",token_revoked,tok_9,\r\n"));
        let rotated = serde_json::json!({"kind": "admin_action", "action": "token_rotated", "target": "tok_9", "successor": "tok_a"});
        assert!(csv_record(&rotated).ends_with(",token_rotated,tok_9,tok_a\r\n"));
    }
}
