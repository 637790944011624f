//! The audit events, as they are stored: each field once, either in a column of its own
//! (what searches filter by) or in the payload (JSON of the rest), and the hash over both
//! ([`link`]). Requests (and the admission that a strict-mode request waits for), admin
//! actions, retention's trimming, and spool records lost at replay each make one.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::SPOOL_LOSS;
use super::chain::ChainKey;
use super::now_ms;
use super::retention::Trimmed;
use super::store::{Column, StoredEvent};
use crate::base::exchange::Exchange;
use crate::json_line::Line;
use crate::redact::{self, Redactor};

/// An event's fields: those searches filter by become its columns, the rest its payload,
/// written in a fixed order ([`Payload::encode`]).
struct Payload<'a> {
    kind: &'static str,
    time_ms: i64,
    request_id: &'a str,
    client_ip: Option<IpAddr>,
    peer: IpAddr,
    method: Option<&'a str>,
    route: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    status: Option<u16>,
    decision: &'static str,
    principal: Option<&'a str>,
    principal_kind: Option<&'static str>,
    principal_id: Option<&'a str>,
    tenant: Option<&'a str>,
    upstream: Option<&'a str>,
    bytes_in: u64,
    bytes_out: u64,
    head_us: u64,
    duration_us: u64,
    protocol: &'static str,
    /// As [`redact::user_agent`] shows it.
    user_agent: Option<Cow<'a, str>>,
    admin: bool,
    action: Option<&'static str>,
    target: Option<&'a str>,
    successor: Option<&'a str>,
    /// What may be kept of the bodies, on routes that keep them.
    bodies: Option<KeptBodies>,
}

/// What an event keeps of a request's and its response's bodies: redacted first bytes
/// ([`Redactor::body`]) and whole lengths.
struct KeptBodies {
    request: Option<String>,
    request_bytes: u64,
    response: Option<String>,
    response_bytes: u64,
}

impl KeptBodies {
    fn of(exchange: &Exchange, redactor: &Redactor) -> Option<Self> {
        let samples = exchange.samples.as_ref()?;
        let request = samples.request.lock().ok()?;
        Some(Self {
            request: redactor.body(&request),
            request_bytes: request.total,
            response: redactor.body(&samples.response),
            response_bytes: samples.response.total,
        })
    }
}

impl<'a> Payload<'a> {
    fn of(exchange: &'a Exchange) -> Self {
        let caller = exchange.caller.as_ref();
        Self {
            kind: "request",
            time_ms: now_ms(exchange.started),
            request_id: exchange.request_id(),
            client_ip: exchange.client_ip,
            peer: exchange.peer,
            method: exchange.method.as_ref().map(http::Method::as_str),
            route: exchange.route.as_deref(),
            path: &exchange.path,
            query: exchange.query.as_deref(),
            status: Some(exchange.status),
            decision: exchange.decision.as_str(),
            principal: caller.map(|c| c.name.as_ref()),
            principal_kind: caller.map(|c| c.kind),
            principal_id: caller.and_then(|c| c.id.as_deref()),
            tenant: caller.and_then(|c| c.tenant.as_deref()),
            upstream: exchange.upstream.as_deref(),
            bytes_in: exchange.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out: exchange.bytes_out,
            head_us: micros(exchange.to_head),
            duration_us: micros(exchange.duration),
            protocol: exchange.protocol,
            user_agent: exchange.user_agent.as_ref().map(redact::user_agent),
            admin: exchange.admin,
            action: None,
            target: None,
            successor: None,
            bodies: None,
        }
    }

    /// The event, not yet linked: its columns, and the rest of its fields as its payload.
    fn event(&self) -> StoredEvent {
        StoredEvent {
            time_ms: self.time_ms,
            kind: self.kind.to_owned(),
            request_id: Some(self.request_id.to_owned()),
            principal: self.principal.map(str::to_owned),
            tenant: self.tenant.map(str::to_owned),
            status: self.status.map(i64::from),
            decision: Some(self.decision.to_owned()),
            route: self.route.map(str::to_owned),
            path: Some(self.path.to_owned()),
            client_ip: self.client_ip.map(crate::json_line::ip_text),
            payload: self.encode(),
            ..StoredEvent::default()
        }
    }

    /// The fields that have no column of their own. Fields with no value are left out (a
    /// reader takes a missing field as `null`).
    fn encode(&self) -> String {
        let mut out = Vec::with_capacity(512);
        let mut line = Line::start_sparse(&mut out);
        // Tokens (what the gateway made itself, and methods) need no escape scan.
        line.address("peer", Some(self.peer));
        line.token("method", self.method);
        line.text("query", self.query);
        line.token("principal_kind", self.principal_kind);
        line.text("principal_id", self.principal_id);
        line.text("upstream", self.upstream);
        line.number("bytes_in", self.bytes_in);
        line.number("bytes_out", self.bytes_out);
        line.number("head_us", self.head_us);
        line.number("duration_us", self.duration_us);
        line.token("protocol", Some(self.protocol));
        line.text("user_agent", self.user_agent.as_deref());
        line.flag("admin", self.admin);
        line.token("action", self.action);
        line.text("target", self.target);
        line.text("successor", self.successor);
        if let Some(bodies) = &self.bodies {
            line.text("request_body", bodies.request.as_deref());
            line.number("request_body_bytes", bodies.request_bytes);
            line.text("response_body", bodies.response.as_deref());
            line.number("response_body_bytes", bodies.response_bytes);
        }
        line.close();
        // Only whole UTF-8 strings went in.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The event of a finished request, its kept bodies redacted by `redactor`.
pub(super) fn request(exchange: &Exchange, redactor: &Redactor) -> StoredEvent {
    let mut payload = Payload::of(exchange);
    payload.bodies = KeptBodies::of(exchange, redactor);
    payload.event()
}

/// The admin action an admin request carried out, as an event of its own.
pub(super) fn admin_action(exchange: &Exchange) -> Option<StoredEvent> {
    let action = exchange.action.as_ref()?;
    let mut payload = Payload::of(exchange);
    payload.kind = "admin_action";
    payload.action = Some(action.action);
    payload.target = Some(&action.target);
    payload.successor = action.successor.as_deref();
    Some(payload.event())
}

/// The admission event of a request held in strict mode: the record so far, before it is
/// forwarded.
pub(super) fn admission(exchange: &Exchange) -> StoredEvent {
    let mut payload = Payload::of(exchange);
    payload.kind = "admission";
    // Not answered yet: the request event that completes it carries the status.
    payload.status = None;
    payload.event()
}

/// The event that records a corrupted spool record, at `offset` in the spool, skipped at
/// replay.
pub(super) fn spool_loss(offset: u64) -> StoredEvent {
    let time_ms = now_ms(SystemTime::now());
    let mut out = Vec::with_capacity(64);
    let mut line = Line::start(&mut out);
    line.number("spool_offset", offset);
    line.close();
    StoredEvent {
        time_ms,
        kind: SPOOL_LOSS.to_owned(),
        payload: String::from_utf8(out).unwrap_or_default(),
        ..StoredEvent::default()
    }
}

/// The event that records a chain trimmed by retention (the anchor, in its own table, is
/// what `audit verify` relies on; this is for whoever reads the log).
pub(super) fn retention(trimmed: &Trimmed) -> StoredEvent {
    let time_ms = now_ms(SystemTime::now());
    let mut out = Vec::with_capacity(256);
    let mut line = Line::start(&mut out);
    line.text("target_chain", Some(&trimmed.chain));
    line.number("through_seq", trimmed.through_seq.unsigned_abs());
    line.number("events", trimmed.events);
    line.number("cutoff_ms", trimmed.cutoff_ms.unsigned_abs());
    line.close();
    StoredEvent {
        time_ms,
        kind: "retention".to_owned(),
        payload: String::from_utf8(out).unwrap_or_default(),
        ..StoredEvent::default()
    }
}

/// How an event's hash covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// Its columns and its payload, each field stored once ([`link`]).
    Fields,
    /// Its payload alone, which repeats every column: events of earlier builds
    /// ([`ChainKey::link_payload`]), whose columns [`super::verify`] checks against it.
    Payload,
}

/// The hash of `event` as event `seq` of `chain` after `prev`, under `key`: over each of
/// its columns, then its payload.
pub(super) fn link(
    key: &ChainKey,
    chain: &str,
    seq: i64,
    prev: &str,
    event: &StoredEvent,
) -> String {
    let mut link = key.link(chain, seq, prev);
    for (_, column) in event.columns() {
        match column {
            Column::Text(text) => link.field(text.map(str::as_bytes)),
            Column::Number(number) => {
                let bytes = number.map(i64::to_be_bytes);
                link.field(bytes.as_ref().map(|bytes| bytes.as_slice()));
            }
        }
    }
    link.field(Some(event.payload.as_bytes()));
    link.finish()
}

/// Which form's link `event`'s hash is, at the place in its chain it says it has, if
/// either's.
pub(super) fn form(key: &ChainKey, event: &StoredEvent) -> Option<Form> {
    let (chain, seq, prev) = (&event.chain_id, event.seq, &event.prev_hash);
    if event.hash == link(key, chain, seq, prev, event) {
        Some(Form::Fields)
    } else if event.hash == key.link_payload(chain, seq, prev, &event.payload) {
        Some(Form::Payload)
    } else {
        None
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;
    use crate::base::exchange::{AdminAction, Caller, Decision};

    fn exchange() -> Exchange {
        Exchange {
            client_ip: Some("2001:db8::7".parse().unwrap()),
            method: Some(http::Method::DELETE),
            route: Some(Arc::from("/api")),
            path: "/api/v1/items/\"7\"".to_owned(),
            query: Some("page=2&api_key=***".to_owned()),
            caller: Some(Caller {
                kind: "token",
                id: Some("tok_1".to_owned()),
                name: Cow::Borrowed("billing"),
                tenant: Some("acme".to_owned()),
            }),
            upstream: Some(Arc::from("items")),
            status: 204,
            decision: Decision::Allowed,
            user_agent: Some(http::HeaderValue::from_static("curl/8.5.0")),
            ..Exchange::begin(
                http::HeaderValue::from_static("req-1"),
                IpAddr::from([10, 0, 0, 1]),
                "HTTP/2",
            )
        }
    }

    fn payload(event: &StoredEvent) -> Value {
        serde_json::from_str(&event.payload).unwrap()
    }

    fn assert_stored_once(event: &StoredEvent) {
        let payload = payload(event);
        for (column, _) in event.columns() {
            assert!(payload.get(column).is_none(), "{column} in {payload}");
        }
    }

    #[test]
    fn each_field_of_a_request_is_stored_once() {
        let event = request(&exchange(), &Redactor::default());
        assert_eq!(event.kind, "request");
        assert_eq!(event.request_id.as_deref(), Some("req-1"));
        assert_eq!(event.principal.as_deref(), Some("billing"));
        assert_eq!(event.tenant.as_deref(), Some("acme"));
        assert_eq!(event.status, Some(204));
        assert_eq!(event.decision.as_deref(), Some("allowed"));
        assert_eq!(event.route.as_deref(), Some("/api"));
        assert_eq!(event.path.as_deref(), Some("/api/v1/items/\"7\""));
        assert_eq!(event.client_ip.as_deref(), Some("2001:db8::7"));
        assert_stored_once(&event);
        let payload = payload(&event);
        assert_eq!(payload["method"], "DELETE");
        assert_eq!(payload["peer"], "10.0.0.1");
        assert_eq!(payload["query"], "page=2&api_key=***");
        assert_eq!(payload["principal_kind"], "token");
        assert_eq!(payload["principal_id"], "tok_1");
        assert_eq!(payload["upstream"], "items");
        assert_eq!(payload["protocol"], "HTTP/2");
        assert_eq!(payload["user_agent"], "curl/8.5.0");
        // Fields with no value are left out, not written as null.
        assert!(payload.get("action").is_none() && payload.get("request_body").is_none());
    }

    /// The hash covers every column and the payload: a change to any of them, a column
    /// emptied or one filled that was empty, breaks the link.
    #[test]
    fn the_hash_covers_every_column_and_the_payload() {
        let key = ChainKey::new(secrecy::SecretString::from("k".repeat(32)));
        let mut event = request(&exchange(), &Redactor::default());
        event.chain_id = "c1".to_owned();
        event.seq = 2;
        event.prev_hash = "ab".repeat(32);
        event.hash = link(&key, "c1", 2, &event.prev_hash, &event);
        assert_eq!(form(&key, &event), Some(Form::Fields));
        type Edit = fn(&mut StoredEvent);
        let edits: [(&str, Edit); 14] = [
            ("kind", |e| e.kind = "admission".to_owned()),
            ("time_ms", |e| e.time_ms += 1),
            ("request_id", |e| e.request_id = None),
            ("principal", |e| e.principal = Some("admin".to_owned())),
            ("tenant", |e| e.tenant = Some(String::new())),
            ("status", |e| e.status = Some(200)),
            ("decision", |e| e.decision = Some("scope".to_owned())),
            ("route", |e| e.route = None),
            ("path", |e| e.path = Some("/api/v1/other".to_owned())),
            ("client_ip", |e| e.client_ip = Some("10.0.0.9".to_owned())),
            ("payload", |e| {
                e.payload = e.payload.replace("DELETE", "GET")
            }),
            ("chain", |e| e.chain_id = "c2".to_owned()),
            ("seq", |e| e.seq = 3),
            ("previous hash", |e| e.prev_hash = "cd".repeat(32)),
        ];
        for (what, edit) in edits {
            let mut edited = event.clone();
            edit(&mut edited);
            assert_eq!(form(&key, &edited), None, "{what}");
        }
        // An event of an earlier build: the hash over the payload alone.
        let mut earlier = event.clone();
        earlier.hash = key.link_payload("c1", 2, &earlier.prev_hash, &earlier.payload);
        assert_eq!(form(&key, &earlier), Some(Form::Payload));
    }

    #[test]
    fn an_admission_has_no_status_yet_and_an_admin_action_names_its_target() {
        let admission = admission(&exchange());
        assert_eq!(admission.kind, "admission");
        assert_eq!(admission.status, None);
        assert_stored_once(&admission);

        assert!(admin_action(&exchange()).is_none());
        let mut revoked = exchange();
        revoked.admin = true;
        revoked.action = Some(AdminAction::on("token_revoked", "tok_9".to_owned()));
        let action = admin_action(&revoked).unwrap();
        let payload = payload(&action);
        assert_eq!(action.kind, "admin_action");
        assert_stored_once(&action);
        assert_eq!(payload["action"], "token_revoked");
        assert_eq!(payload["target"], "tok_9");
        assert!(payload.get("successor").is_none());
        assert_eq!(payload["admin"], true);

        let mut rotated = exchange();
        rotated.admin = true;
        rotated.action = Some(AdminAction::rotated("tok_9".to_owned(), "tok_a".to_owned()));
        let rotation = self::payload(&admin_action(&rotated).unwrap());
        assert_eq!(rotation["action"], "token_rotated");
        assert_eq!(rotation["target"], "tok_9");
        assert_eq!(rotation["successor"], "tok_a");
    }

    #[test]
    fn the_log_s_own_events_say_what_happened() {
        let loss = spool_loss(4096);
        assert_eq!(loss.kind, SPOOL_LOSS);
        assert_eq!(payload(&loss)["spool_offset"], 4096);
        let trimmed = retention(&Trimmed {
            chain: "c1".to_owned(),
            through_seq: 10_000,
            events: 9_999,
            cutoff_ms: 1_700_000_000_000,
        });
        let fields = payload(&trimmed);
        assert_eq!(trimmed.kind, "retention");
        assert_eq!(fields["target_chain"], "c1");
        assert_eq!(fields["through_seq"], 10_000);
        assert_eq!(fields["events"], 9_999);
        assert_eq!(fields["cutoff_ms"], 1_700_000_000_000_i64);
        assert_stored_once(&trimmed);
        assert_stored_once(&loss);
    }
}
