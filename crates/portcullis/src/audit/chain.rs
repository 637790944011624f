//! The hash chain that makes tampering show. Each process writes a chain of its own (an id
//! per start); each event carries its sequence number and the previous event's hash, and
//! its own hash is HMAC-SHA256, under a key the database does not hold, over `chain id,
//! sequence, previous hash`, then each of its columns and its payload, so whoever can
//! write to the database alone can neither edit, insert, delete nor reorder events without
//! breaking a link.
//! Checkpoints sign a chain's head; logged, they let `audit verify` prove that nothing up to
//! them was cut off.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::base::hex;

/// The previous hash of a chain's first event.
pub const GENESIS: &str = "";

/// The key of every chain's links, kept as the HMAC state it sets up (cloned for each MAC
/// rather than set up again).
#[derive(Clone)]
pub struct ChainKey(Hmac<Sha256>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(***)")
    }
}

impl ChainKey {
    /// A key from its text.
    pub fn new(key: SecretString) -> Self {
        // HMAC takes a key of any length, so the fallback is never used.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret().as_bytes())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        Self(mac)
    }

    /// The key's state after `parts`, each length-prefixed, so no two sequences of parts
    /// hash alike.
    fn keyed(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        hex::encode(&self.keyed(parts).finalize().into_bytes())
    }

    /// Begins the hash of the event `seq` of `chain`, after `prev`; its fields follow
    /// ([`Link::field`]): each of its columns, then its payload.
    pub fn link(&self, chain: &str, seq: i64, prev: &str) -> Link {
        Link(self.keyed(&[
            b"event-fields",
            chain.as_bytes(),
            &seq.to_be_bytes(),
            prev.as_bytes(),
        ]))
    }

    /// The hash of an event as builds before 2026-11-29 wrote it: over its payload alone,
    /// which then repeated every column ([`super::verify`] checks that they agree).
    pub fn link_payload(&self, chain: &str, seq: i64, prev: &str, payload: &str) -> String {
        self.mac(&[
            b"event",
            chain.as_bytes(),
            &seq.to_be_bytes(),
            prev.as_bytes(),
            payload.as_bytes(),
        ])
    }

    /// The MAC of a checkpoint.
    pub fn seal(&self, checkpoint: &Checkpoint) -> String {
        self.mac(&[
            b"checkpoint",
            checkpoint.chain.as_bytes(),
            &checkpoint.seq.to_be_bytes(),
            checkpoint.head.as_bytes(),
            &checkpoint.time_ms.to_be_bytes(),
        ])
    }
}

impl ChainKey {
    /// The MAC of a retention anchor: a [`Checkpoint`]-shaped record saying that the events
    /// of its chain up to its `seq` (whose hash was its `head`) were deleted by retention.
    /// Sealed apart from checkpoints, so that no checkpoint passes for an anchor (which
    /// would excuse deleting a chain's start up to any checkpoint).
    pub fn seal_anchor(&self, anchor: &Checkpoint) -> String {
        self.mac(&[
            b"retention",
            anchor.chain.as_bytes(),
            &anchor.seq.to_be_bytes(),
            anchor.head.as_bytes(),
            &anchor.time_ms.to_be_bytes(),
        ])
    }
}

/// An event's hash under way ([`ChainKey::link`]).
pub struct Link(Hmac<Sha256>);

impl Link {
    /// Adds a field, present or absent (a length no field has marks an absent one, so
    /// that none and empty differ).
    pub fn field(&mut self, field: Option<&[u8]>) {
        let (length, bytes) =
            field.map_or((u64::MAX, &[][..]), |bytes| (bytes.len() as u64, bytes));
        self.0.update(&length.to_be_bytes());
        self.0.update(bytes);
    }

    /// The hash.
    pub fn finish(self) -> String {
        hex::encode(&self.0.finalize().into_bytes())
    }
}

/// A chain's head, signed: its last sequence number and hash at a moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The chain.
    pub chain: String,
    /// Its last event's sequence number.
    pub seq: i64,
    /// Its last event's hash.
    pub head: String,
    /// When, in Unix milliseconds.
    pub time_ms: i64,
    /// [`ChainKey::seal`] of the rest.
    pub mac: String,
}

/// The message of a checkpoint's log line.
pub const CHECKPOINT_MESSAGE: &str = "audit checkpoint";

/// A log line written as a checkpoint that cannot be read as one: a field missing or
/// altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "an audit checkpoint line that cannot be read (its chain, seq, head, time_ms or mac is missing or altered)"
)]
pub struct UnreadableCheckpoint;

impl Checkpoint {
    /// The checkpoint in a line of the operational log, as the gateway printed it: text
    /// (the message, then `key=value` pairs) or JSON (the message and the fields at the
    /// top level); also after a prefix log shipping adds (syslog's or journald's
    /// `Nov 29 20:36:00 host portcullis[123]: `), or as the string Docker's `json-file`
    /// (`log`) or journald's JSON export (`MESSAGE`) wraps it in. `None` for any other
    /// line, such as an access-log line whose user agent says `audit checkpoint`.
    pub fn from_log_line(line: &str) -> Result<Option<Self>, UnreadableCheckpoint> {
        use serde_json::Value;
        let json = line
            .find('{')
            .and_then(|start| serde_json::from_str::<Value>(line[start..].trim()).ok())
            .filter(Value::is_object);
        if let Some(json) = json {
            if let Some(wrapped) = ["log", "MESSAGE"].iter().find_map(|key| json[key].as_str()) {
                return Self::from_log_line(wrapped);
            }
            if json["message"] != CHECKPOINT_MESSAGE {
                return Ok(None);
            }
            return Self::from_fields(|name| match &json[name] {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            })
            .map(Some);
        }
        // Text: the message, and the fields right after it.
        let marker = format!("{CHECKPOINT_MESSAGE} chain=");
        let Some(at) = line.find(&marker) else {
            return Ok(None);
        };
        let fields = &line[at + CHECKPOINT_MESSAGE.len()..];
        Self::from_fields(|name| {
            let needle = format!("{name}=");
            fields
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(&needle))
                .map(|value| value.trim_matches('"').to_owned())
        })
        .map(Some)
    }

    /// The checkpoint of the fields `field` reads, each as text.
    fn from_fields(field: impl Fn(&str) -> Option<String>) -> Result<Self, UnreadableCheckpoint> {
        let read = || {
            Some(Self {
                chain: field("chain")?,
                seq: field("seq")?.parse().ok()?,
                head: field("head")?,
                time_ms: field("time_ms")?.parse().ok()?,
                mac: field("mac")?,
            })
        };
        read().ok_or(UnreadableCheckpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ChainKey {
        ChainKey::new(SecretString::from("k".repeat(32)))
    }

    /// The hash of `fields` as event `seq` of `chain` after `prev`.
    fn link(key: &ChainKey, chain: &str, seq: i64, prev: &str, fields: &[Option<&[u8]>]) -> String {
        let mut link = key.link(chain, seq, prev);
        for field in fields {
            link.field(*field);
        }
        link.finish()
    }

    #[test]
    fn a_link_depends_on_every_part() {
        let fields: [Option<&[u8]>; 2] = [Some(b"request"), None];
        let base = link(&key(), "c", 1, GENESIS, &fields);
        assert_eq!(base.len(), 64);
        assert_ne!(base, link(&key(), "c", 2, GENESIS, &fields));
        assert_ne!(base, link(&key(), "d", 1, GENESIS, &fields));
        assert_ne!(base, link(&key(), "c", 1, "x", &fields));
        assert_ne!(
            base,
            link(&key(), "c", 1, GENESIS, &[Some(b"request "), None])
        );
        // An absent field is not an empty one.
        assert_ne!(
            base,
            link(&key(), "c", 1, GENESIS, &[Some(b"request"), Some(b"")])
        );
        // The parts and fields are length-prefixed: moving a byte between them changes
        // the hash.
        assert_ne!(
            link(&key(), "ab", 1, "c", &fields),
            link(&key(), "a", 1, "bc", &fields)
        );
        assert_ne!(
            base,
            link(&key(), "c", 1, GENESIS, &[Some(b"reques"), Some(b"t")])
        );
        let other = ChainKey::new(SecretString::from("j".repeat(32)));
        assert_ne!(base, link(&other, "c", 1, GENESIS, &fields));
    }

    /// Events of earlier builds: the hash over the payload alone, which is not the hash over
    /// fields, whatever they hold.
    #[test]
    fn a_payload_link_depends_on_every_part_and_is_no_fields_link() {
        let base = key().link_payload("c", 1, GENESIS, "{}");
        assert_ne!(base, key().link_payload("c", 2, GENESIS, "{}"));
        assert_ne!(base, key().link_payload("c", 1, "x", "{}"));
        assert_ne!(base, key().link_payload("c", 1, GENESIS, "{ }"));
        assert_ne!(
            key().link_payload("ab", 1, "c", "{}"),
            key().link_payload("a", 1, "bc", "{}")
        );
        assert_ne!(base, link(&key(), "c", 1, GENESIS, &[Some(b"{}")]));
    }

    #[test]
    fn checkpoints_read_back_from_either_log_format() {
        let mut checkpoint = Checkpoint {
            chain: "c1".into(),
            seq: 42,
            head: "ab".repeat(32),
            time_ms: 1_800_000_000_000,
            mac: String::new(),
        };
        checkpoint.mac = key().seal(&checkpoint);
        let text = format!(
            "2026-11-27T16:00:00Z  INFO portcullis::checkpoint: audit checkpoint chain={} seq={} head={} time_ms={} mac={}",
            checkpoint.chain, checkpoint.seq, checkpoint.head, checkpoint.time_ms, checkpoint.mac
        );
        let read = |line: &str| Checkpoint::from_log_line(line);
        assert_eq!(read(&text), Ok(Some(checkpoint.clone())));
        let json = format!(
            r#"{{"timestamp":"x","level":"INFO","message":"audit checkpoint","chain":"c1","seq":42,"head":"{}","time_ms":1800000000000,"mac":"{}"}}"#,
            checkpoint.head, checkpoint.mac
        );
        assert_eq!(read(&json), Ok(Some(checkpoint.clone())));
        // As log shipping may pass them on: after a syslog or journald prefix, or wrapped
        // in Docker's json-file record.
        for line in [&text, &json] {
            let shipped = format!("Nov 29 20:36:00 host portcullis[123]: {line}");
            assert_eq!(read(&shipped), Ok(Some(checkpoint.clone())));
            let docker = serde_json::json!({"log": format!("{line}\n"), "stream": "stderr"});
            assert_eq!(read(&docker.to_string()), Ok(Some(checkpoint.clone())));
        }
        // Other lines are none, whatever they say; a checkpoint line altered is unreadable.
        assert_eq!(read("nothing here"), Ok(None));
        let access = r#"{"request_id":"r","user_agent":"audit checkpoint chain=x"}"#;
        assert_eq!(read(access), Ok(None));
        assert_eq!(
            read(&text.replace("seq=42", "seq=42x")),
            Err(UnreadableCheckpoint)
        );
        assert_eq!(
            read(&json.replace("\"mac\"", "\"mic\"")),
            Err(UnreadableCheckpoint)
        );
    }

    #[test]
    fn an_anchor_is_not_a_checkpoint() {
        let checkpoint = Checkpoint {
            chain: "c1".into(),
            seq: 7,
            head: "ab".repeat(32),
            time_ms: 1,
            mac: String::new(),
        };
        assert_ne!(key().seal(&checkpoint), key().seal_anchor(&checkpoint));
    }

    #[test]
    fn the_key_never_shows() {
        assert_eq!(format!("{:?}", key()), "ChainKey(***)");
    }
}
