//! Redaction: what a record may show of a request's query and of values that look like
//! secrets. One module, used by every sink (the access log and the audit log, which keeps
//! bodies too), so that no sink can be less careful than another.

use std::borrow::Cow;

use secrecy::{ExposeSecret, SecretString};

use crate::base::exchange::{BodySample, USER_AGENT_MAX};

/// Query parameter names whose values are never shown, compared without regard to case
/// and to `-`, `.` or a space versus `_` (`api.key` and `pass word` are `api_key` and
/// `pass_word` to PHP), and each part of a bracketed name on its own (`login[pwd]`).
pub const SENSITIVE_PARAMS: [&str; 40] = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "private_key",
    "key",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "session",
    "session_id",
    "sessionid",
    "cookie",
    "signature",
    "sig",
    "cert_sha256",
    "certsha256",
    "access_url",
    "accessurl",
    "api_url",
    "apiurl",
    "otp",
    "pin",
    "ssn",
    "passphrase",
    "x_api_key",
    "jwt",
    "code",
    "state",
    "nonce",
    "x_amz_signature",
];

/// Parts of a name that make it sensitive wherever they appear in it, once lowercased with
/// `-`, `.`, spaces and `_` removed: `newPassword`, `current_password`, `accessToken`,
/// `X-Session-Id`, `pass.word`.
pub const SENSITIVE_PARTS: [&str; 12] = [
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "session",
    "cookie",
    "signature",
];

/// Short words that make a name sensitive when they end it, trailing digits aside:
/// `subscription-key`, `X-Auth-Key`, `user_pass`, `loginPin`, `pwd1`, `login[pwd]`. (Inside a
/// word they are too common: `monkey`, `bypass`.)
pub const SENSITIVE_LAST_WORDS: [&str; 6] = ["key", "pass", "passwd", "pwd", "pin", "otp"];

/// The shortest secret the gateway holds that it masks wherever it appears in a kept body:
/// shorter ones would mask ordinary words.
pub const KNOWN_SECRET_MIN: usize = 8;

/// What stands in for a hidden value.
pub const MASK: &str = "***";

/// Hides what must not be shown: values of sensitive query parameters (the built-in list
/// and the operator's own names), anything that looks like a secret, and the secrets the
/// gateway itself holds for its upstreams.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Extra sensitive parameter names, normalised as [`normalise`] does.
    extra: Vec<String>,
    /// Secrets the gateway holds (upstreams' keys and secret paths), masked wherever a kept
    /// body holds them: an upstream that echoes its request, or its own path in an error.
    known: Vec<SecretString>,
}

impl Redactor {
    /// A redactor that also hides the parameters named in `extra`.
    pub fn new(extra: &[String]) -> Self {
        Self {
            extra: extra.iter().map(|name| normalise(name)).collect(),
            known: Vec::new(),
        }
    }

    /// The same redactor, also masking each of `secrets` (those of at least
    /// [`KNOWN_SECRET_MIN`] bytes) wherever a kept body holds it. A secret path is masked
    /// without its outer slashes, so that it is found however it is quoted (`SECRET/x`).
    pub fn knowing(mut self, secrets: impl IntoIterator<Item = SecretString>) -> Self {
        self.known.extend(secrets.into_iter().filter_map(|secret| {
            let text = secret.expose_secret().trim_matches('/');
            (text.len() >= KNOWN_SECRET_MIN).then(|| SecretString::from(text.to_owned()))
        }));
        self
    }

    /// `path` with every segment that looks like a secret, percent-encoded or not, masked:
    /// a capability sent to a route that does not take one, a token put in a path, and any
    /// part of one of the gateway's own secrets a client wrote into it. (A capability
    /// route's own segment is masked by the route, whatever it looks like.)
    pub fn path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        // Decoded as a path is (RFC 3986: `+` is a plus there, not a space as in a form).
        let known = self.known_in(path, path_decoded);
        let secret = |segment: &str| {
            if segment.is_empty() {
                return false;
            }
            looks_secret(&percent_decoded(segment))
                || (!known.is_empty() && {
                    let decoded = path_decoded(segment);
                    known.iter().any(|known| {
                        [segment, &*decoded]
                            .iter()
                            .any(|form| known.contains(form) || form.contains(known))
                    })
                })
        };
        if !path.split('/').any(secret) {
            return Cow::Borrowed(path);
        }
        let segments: Vec<&str> = path
            .split('/')
            .map(|segment| if secret(segment) { MASK } else { segment })
            .collect();
        Cow::Owned(segments.join("/"))
    }

    /// `query` with the value of every sensitive parameter, and every value that looks
    /// like a secret or holds one of the gateway's own, replaced by [`MASK`]; names stay,
    /// so the shape of the request shows.
    pub fn query(&self, query: &str) -> String {
        let hides_secret = |text: &str| {
            self.hides_secret(&percent_decoded(text))
                || !self.known_in(text, percent_decoded).is_empty()
        };
        let mut out = String::with_capacity(query.len());
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                // A name that carries a value itself (`token%3Dabc=1`).
                Some((name, _)) if hides_secret(name) => out.push_str(MASK),
                Some((name, value)) => {
                    out.push_str(name);
                    out.push('=');
                    if self.is_sensitive(name) || hides_secret(value) {
                        out.push_str(MASK);
                    } else {
                        out.push_str(value);
                    }
                }
                None if hides_secret(pair) => out.push_str(MASK),
                None => out.push_str(pair),
            }
        }
        out
    }

    /// What the audit log may keep of a body's first bytes: JSON with the value of every
    /// sensitive key (at any depth) and every secret-looking string masked; a form with
    /// its sensitive fields masked, as a query is; plain text (or a body of no declared
    /// type) only when nothing in it looks like a secret, the queries of URLs in it
    /// redacted. Anything else (JSON cut short, which cannot be read whole, XML, multipart,
    /// binary data, text holding a secret) is [`MASK`]. `None` for an empty body.
    pub fn body(&self, sample: &BodySample) -> Option<String> {
        let mut kept = self.body_kept(sample)?;
        for secret in &self.known {
            let secret = secret.expose_secret();
            if kept.contains(secret) {
                kept = kept.replace(secret, MASK);
            }
        }
        Some(kept)
    }

    /// The gateway's own secrets that `text` holds, as it is or percent-decoded (a secret
    /// of several segments is found in the whole path, not in one segment).
    fn known_in(&self, text: &str, decode: fn(&str) -> Cow<'_, str>) -> Vec<&str> {
        if self.known.is_empty() {
            return Vec::new();
        }
        let decoded = decode(text);
        let decoded = match &decoded {
            Cow::Owned(decoded) => Some(decoded.as_str()),
            Cow::Borrowed(_) => None,
        };
        self.known
            .iter()
            .map(|secret| secret.expose_secret())
            .filter(|secret| text.contains(secret) || decoded.is_some_and(|d| d.contains(secret)))
            .collect()
    }

    /// What [`Self::body`] keeps, before the gateway's own secrets are masked.
    fn body_kept(&self, sample: &BodySample) -> Option<String> {
        if sample.total == 0 {
            return None;
        }
        let content_type = sample
            .content_type
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        // A sample cut inside a character keeps the characters before it.
        let text = match std::str::from_utf8(&sample.bytes) {
            Ok(text) => text,
            Err(error) if error.error_len().is_none() && !sample.is_whole() => {
                std::str::from_utf8(&sample.bytes[..error.valid_up_to()]).unwrap_or_default()
            }
            Err(_) => return Some(MASK.to_owned()),
        };
        let trimmed = text.trim_start();
        if content_type.contains("json") || trimmed.starts_with('{') || trimmed.starts_with('[') {
            let parsed = sample
                .is_whole()
                .then(|| serde_json::from_str::<serde_json::Value>(text).ok())
                .flatten();
            return Some(match parsed {
                Some(mut value) => {
                    self.json(&mut value);
                    value.to_string()
                }
                None => MASK.to_owned(),
            });
        }
        if content_type.starts_with("application/x-www-form-urlencoded") {
            return Some(self.query(text));
        }
        // Other structured bodies (XML, multipart, ...) name their secrets in ways this
        // module does not read: withheld.
        let plain = content_type.is_empty() || content_type.starts_with("text/plain");
        if !plain || contains_secret(text) {
            return Some(MASK.to_owned());
        }
        let kept = self.queries_in(text);
        Some(if self.hides_secret(&kept) {
            MASK.to_owned()
        } else {
            kept
        })
    }

    /// Whether a value, read whole, hides a secret: it looks like one, gives a
    /// sensitive name a value (`https://x/?token=y` as a parameter's value), or is a JSON
    /// document with something to mask; also once or twice more percent-decoded (a return
    /// URL carrying its own encoded query).
    fn hides_secret(&self, value: &str) -> bool {
        let mut text = Cow::Borrowed(value);
        for _ in 0..3 {
            if looks_secret(&text) || self.assigns_sensitive(&text) || self.json_hides_secret(&text)
            {
                return true;
            }
            if !text.contains('%') {
                break;
            }
            text = Cow::Owned(percent_decoded(&text).into_owned());
        }
        false
    }

    /// Whether `text` is a JSON document in which [`Self::json`] masks something (its keys
    /// read with their escapes undone: `{"\u0070assword":"x"}`).
    fn json_hides_secret(&self, text: &str) -> bool {
        embedded_json(text).is_some_and(|document| {
            let mut redacted = document.clone();
            self.json(&mut redacted);
            redacted != document
        })
    }

    /// Whether `text` gives a sensitive name a value other than [`MASK`]: `password: x`,
    /// `"token" = "x"`, `login(password: "x")`, `{"apiKey":"x"}`, as text quoting a form, a
    /// config file, a GraphQL call or a JSON document does. (A GraphQL variable, an
    /// unquoted `$pw`, is no value.) Names common in prose and search syntax
    /// ([`PROSE_NAMES`]) count only before `=`.
    fn assigns_sensitive(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        let skip = |at: usize, what: &dyn Fn(u8) -> bool| skip_while(bytes, at, what);
        let mut at = 0;
        while at < bytes.len() {
            if !is_name(bytes[at]) {
                at += 1;
                continue;
            }
            let start = at;
            at = skip(at, &is_name);
            // The name's closing quote, then spaces, then `:` or `=`.
            let mut next = skip(at, &|b| b == b'"' || b == b'\'' || b == b'\\');
            next = skip(next, &|b| b == b' ' || b == b'\t');
            if !matches!(bytes.get(next), Some(b':' | b'=')) {
                if self.option_given(text, start, at) {
                    return true;
                }
                continue;
            }
            let spaced = skip(next + 1, &|b| b == b' ' || b == b'\t');
            let quoted = matches!(bytes.get(spaced), Some(b'"' | b'\'' | b'\\'));
            let value = skip(spaced, &|b| {
                matches!(b, b' ' | b'\t' | b'"' | b'\'' | b'\\' | b':' | b'=')
            });
            let given = match bytes.get(value) {
                None => false,
                // `password: $pw` names a GraphQL variable; `password=$pw` is a value.
                Some(b'$') if !quoted && bytes[next] == b':' => !bytes
                    .get(value + 1)
                    .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_'),
                Some(_) => !is_mask(&bytes[value..]),
            };
            // Prose and search syntax write `state: open`, `code: 500`, `key:asc`; a URL's
            // query writes `code=...`, which counts.
            let prose = bytes[next] == b':';
            if given && self.names_secret(&text[start..at], prose) {
                return true;
            }
        }
        false
    }

    /// Whether the word at `start..end` of `text` is a command line's long option naming a
    /// secret, followed by its value after a space (`--password x`, `--api-key "x"`; the
    /// `--password=x` form is an assignment). A value that is another long option, or
    /// masked, is none; one that starts with a single `-` counts (a short option cannot be
    /// told from a password that starts so).
    fn option_given(&self, text: &str, start: usize, end: usize) -> bool {
        let bytes = text.as_bytes();
        let Some(name) = text[start..end].strip_prefix("--") else {
            return false;
        };
        if !matches!(bytes.get(end), Some(b' ' | b'\t')) {
            return false;
        }
        let value = skip_while(bytes, end, &|b| matches!(b, b' ' | b'\t' | b'"' | b'\''));
        let rest = &bytes[value..];
        match rest.first() {
            None | Some(b'\n' | b'\r') => false,
            Some(_) => !rest.starts_with(b"--") && !is_mask(rest) && self.names_secret(name, false),
        }
    }

    /// Whether a bare word (ASCII letters, digits, `-`, `_`) is a sensitive name in free
    /// text: as [`Self::is_sensitive`] reads names, but for [`PROSE_NAMES`] when `prose`
    /// (the name is followed by `:`), and compared in place (every query value is looked
    /// at).
    fn names_secret(&self, word: &str, prose: bool) -> bool {
        let same = |name: &str| {
            word.len() == name.len() && word.bytes().zip(name.bytes()).all(|(a, b)| folded(a) == b)
        };
        let common = prose && PROSE_NAMES.iter().any(|name| same(name));
        if (!common && SENSITIVE_PARAMS.iter().any(|name| same(name)))
            || self.extra.iter().any(|name| same(name))
        {
            return true;
        }
        // Lowercased without `-` and `_`, on the stack unless the word is long.
        let mut short = [0u8; 64];
        let mut long = Vec::new();
        let letters = word
            .bytes()
            .filter(|b| *b != b'-' && *b != b'_')
            .map(|b| b.to_ascii_lowercase());
        let squashed: &[u8] = if word.len() <= short.len() {
            let mut length = 0;
            for (slot, b) in short.iter_mut().zip(letters) {
                *slot = b;
                length += 1;
            }
            &short[..length]
        } else {
            long.extend(letters);
            &long
        };
        SENSITIVE_PARTS.iter().any(|part| {
            squashed
                .windows(part.len())
                .any(|window| window == part.as_bytes())
        }) || (!prose && ends_with_sensitive_word(word))
    }

    /// `text` with the query of every URL in it (and every `name=value` word) redacted as
    /// [`Self::query`] does: bodies quote URLs (an upstream echoing the request's, a link
    /// with a token in it).
    pub fn queries_in(&self, text: &str) -> String {
        if !text.contains('=') {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        for piece in text.split_inclusive(char::is_whitespace) {
            let word = piece.trim_end_matches(char::is_whitespace);
            // A query, or a fragment carrying parameters (`#access_token=...`).
            match word.find(['?', '#']) {
                Some(at) => {
                    out.push_str(&word[..=at]);
                    out.push_str(&self.query(&word[at + 1..]));
                }
                None if word.contains('=') => out.push_str(&self.query(word)),
                None => out.push_str(word),
            }
            out.push_str(&piece[word.len()..]);
        }
        out
    }

    /// Masks, in place, the value of every sensitive key and every string that looks like
    /// or holds a secret, at every depth.
    pub fn json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::Object(object) => {
                // `{"name": "password", "value": "x"}`: a field naming a secret makes the
                // value beside it one.
                // In any case: `{"Name": "DB_PASSWORD", "Value": "x"}`, as AWS writes it.
                let names_secret = object.iter().any(|(field, value)| {
                    ["name", "key", "field", "header"]
                        .iter()
                        .any(|naming| field.eq_ignore_ascii_case(naming))
                        && value.as_str().is_some_and(|name| self.is_sensitive(name))
                });
                for (key, value) in object.iter_mut() {
                    let beside = names_secret
                        && (key.eq_ignore_ascii_case("value")
                            || key.eq_ignore_ascii_case("values"));
                    if beside || self.is_sensitive(key) {
                        *value = Value::from(MASK);
                    } else {
                        self.json(value);
                    }
                }
            }
            Value::Array(items) => {
                // `["X-Api-Key", "k"]`: a pair whose first names a secret.
                if let [Value::String(name), value] = items.as_mut_slice()
                    && self.is_sensitive(name)
                {
                    *value = Value::from(MASK);
                }
                items.iter_mut().for_each(|item| self.json(item));
            }
            Value::String(text) => {
                if let Some(mut inner) = embedded_json(text) {
                    // A JSON document sent as a string: redacted as one.
                    self.json(&mut inner);
                    *text = inner.to_string();
                    return;
                }
                if contains_secret(text) || looks_secret(text) {
                    *value = Value::from(MASK);
                    return;
                }
                if text.contains('=') {
                    *text = self.queries_in(text);
                }
                if self.hides_secret(text) {
                    *value = Value::from(MASK);
                }
            }
            _ => {}
        }
    }

    /// Whether a parameter named `name` (as sent, percent-encoded or not) is sensitive.
    fn is_sensitive(&self, name: &str) -> bool {
        let decoded = percent_decoded(name);
        let name = normalise(&decoded);
        let listed = |name: &str| {
            SENSITIVE_PARAMS.contains(&name) || self.extra.iter().any(|extra| extra == name)
        };
        // `login[pwd]`, `pwd[]`: each part of a bracketed name, as frameworks read it.
        if listed(&name)
            || name
                .split(['[', ']'])
                .any(|part| !part.is_empty() && listed(part))
        {
            return true;
        }
        let squashed = name.replace('_', "");
        SENSITIVE_PARTS.iter().any(|part| squashed.contains(part))
            || ends_with_sensitive_word(&decoded)
    }
}

/// Names of [`SENSITIVE_PARAMS`] too common in prose and search syntax (`state:open`,
/// `error code: 500`, `sort=key:asc`) to mark a secret in free text. A query parameter so
/// named is still masked.
const PROSE_NAMES: [&str; 7] = ["code", "state", "nonce", "key", "pass", "auth", "sig"];

/// `b` lowercased, with `-` as `_`, as [`normalise`] writes names.
fn folded(b: u8) -> u8 {
    if b == b'-' {
        b'_'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether `rest` starts with [`MASK`] as a whole value (`***`, not `***x`).
fn is_mask(rest: &[u8]) -> bool {
    rest.starts_with(MASK.as_bytes())
        && !rest
            .get(MASK.len())
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*'))
}

/// The JSON object or array `text` holds whole, if it is one.
fn embedded_json(text: &str) -> Option<serde_json::Value> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') && !trimmed.starts_with('[') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// `name` in lowercase with `-`, `.` and spaces as `_`, so `X-Api-Key`, `x_api_key`,
/// `X_API_KEY` and `api.key` match.
fn normalise(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            '-' | '.' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether the last word of `name` is one of [`SENSITIVE_LAST_WORDS`]: the letters after
/// its last character that is not one (or its last change from lower to upper case), with
/// trailing digits and punctuation (`pwd2`, `pwd[]`) left out.
fn ends_with_sensitive_word(name: &str) -> bool {
    let name = name
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .trim_end_matches(|c: char| c.is_ascii_digit());
    let bytes = name.as_bytes();
    let mut start = bytes.len();
    while start > 0 && bytes[start - 1].is_ascii_alphabetic() {
        start -= 1;
        if bytes[start].is_ascii_uppercase() && start > 0 && bytes[start - 1].is_ascii_lowercase() {
            break;
        }
    }
    let word = &name[start..];
    SENSITIVE_LAST_WORDS
        .iter()
        .any(|last| word.eq_ignore_ascii_case(last))
}

/// Whether `value` looks like a credential wherever it appears: a bearer credential, one
/// of this gateway's tokens, a JWT or JWE, an Outline access key (`ss://`), a URL with a
/// password in it, a PEM private key, or a well-known cloud or service key format.
pub fn looks_secret(value: &str) -> bool {
    let trimmed = value.trim().trim_matches(QUOTING).trim();
    starts_with_ignoring_case(trimmed, "bearer ")
        || starts_with_ignoring_case(trimmed, "basic ")
        || trimmed.contains("pcl_")
        || contains_ignoring_case(trimmed, "ss://")
        || trimmed.contains("PRIVATE KEY")
        || is_jwt(trimmed)
        || has_key_prefix(trimmed)
        || has_url_password(trimmed)
}

/// Whether `text` holds a URL whose user information has a password (RFC 3986 §3.2.1:
/// `postgres://app:pw@db/x`, `https://user:pw@host`).
fn has_url_password(text: &str) -> bool {
    text.match_indices("://").any(|(at, _)| {
        let authority = text[at + 3..]
            .split(['/', '?', '#', '"', '\'', '\\', '<', '>'])
            .next()
            .unwrap_or_default();
        let authority = authority
            .split(char::is_whitespace)
            .next()
            .unwrap_or_default();
        authority.rsplit_once('@').is_some_and(|(user_info, _)| {
            user_info
                .split_once(':')
                .is_some_and(|(_, password)| !password.is_empty() && password != MASK)
        })
    })
}

/// Whether `text` starts with `prefix`, ASCII letters in either case. (Compared in place:
/// every user agent and query value is looked at, and a lowercased copy of each cost
/// more than the rest of the look.)
fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Whether `text` contains `needle`, ASCII letters in either case.
fn contains_ignoring_case(text: &str, needle: &str) -> bool {
    needle.is_empty()
        || text
            .as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether free text (a user agent, say) holds a credential anywhere: a word that looks
/// like one, or a `Bearer` or `Basic` scheme with something after it.
pub fn contains_secret(text: &str) -> bool {
    let mut words = text
        .split_whitespace()
        .map(|word| word.trim_matches(QUOTING))
        .filter(|word| !word.is_empty());
    while let Some(word) = words.next() {
        // `Bearer x`, `"Bearer x"`, `Authorization:Bearer x`.
        let last = word
            .rsplit([':', '='])
            .next()
            .unwrap_or(word)
            .trim_matches(QUOTING);
        let scheme = last.eq_ignore_ascii_case("bearer") || last.eq_ignore_ascii_case("basic");
        if (scheme && words.clone().next().is_some()) || looks_secret(word) {
            return true;
        }
    }
    false
}

/// What text puts around a value: quotes, brackets, separators.
const QUOTING: [char; 14] = [
    '"', '\'', '`', '(', ')', '[', ']', '{', '}', '<', '>', ',', ';', '.',
];

/// A `User-Agent` as a record shows it: its first [`USER_AGENT_MAX`] characters, or
/// [`MASK`] when it holds a credential anywhere (a client that puts its token there, or
/// `token=...` in it).
/// Checked whole, before the cut, so that no key's start is left behind. Borrowed from the
/// header unless it was not UTF-8.
pub fn user_agent(value: &http::HeaderValue) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(value.as_bytes());
    if contains_secret(&text) || Redactor::default().assigns_sensitive(&text) {
        return Cow::Borrowed(MASK);
    }
    match text.char_indices().nth(USER_AGENT_MAX) {
        None => text,
        Some((end, _)) => match text {
            Cow::Borrowed(text) => Cow::Borrowed(&text[..end]),
            Cow::Owned(mut text) => {
                text.truncate(end);
                Cow::Owned(text)
            }
        },
    }
}

/// A JWS (three base64url parts) or a JWE (five, the second empty when the key is agreed
/// directly: RFC 7516 §7.1), the first a JSON object (`eyJ`).
fn is_jwt(value: &str) -> bool {
    let mut parts = 0;
    value.starts_with("eyJ")
        && value.split('.').all(|part| {
            parts += 1;
            (!part.is_empty() || parts == 2)
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && (parts == 5 || parts == 3 && !value.contains(".."))
}

/// Key formats whose prefix names them: AWS access keys, GitHub, Slack, Stripe and
/// Google API keys.
fn has_key_prefix(value: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "AKIA",
        "ASIA",
        "ghp_",
        "gho_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
        "sk_live_",
        "AIza",
    ];
    value.len() >= 16
        && PREFIXES.iter().any(|prefix| value.starts_with(prefix))
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// `text` as a form decoder reads it: `+` as a space, `%XX` escapes decoded (bad ones
/// kept), as UTF-8, lossily.
/// `text` percent-decoded as a path is: `+` stays a plus.
fn path_decoded(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    percent_encoding::percent_decode_str(text).decode_utf8_lossy()
}

fn percent_decoded(text: &str) -> Cow<'_, str> {
    // Most names and values hold neither: borrowed, nothing allocated on the request path.
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let spaced = text.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The first position from `at` in `bytes` whose byte is not `what` (the end, when all are).
fn skip_while(bytes: &[u8], mut at: usize, what: &dyn Fn(u8) -> bool) -> usize {
    while bytes.get(at).copied().is_some_and(what) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_agent_is_cut_on_a_character_boundary_or_masked_whole() {
        let shown =
            |bytes: &[u8]| user_agent(&http::HeaderValue::from_bytes(bytes).unwrap()).into_owned();
        assert_eq!(shown(b"curl/8.5.0"), "curl/8.5.0");
        assert_eq!(shown(b""), "");
        // Exactly the most kept, then one more; borrowed from the header either way.
        let most = "a".repeat(USER_AGENT_MAX);
        assert_eq!(shown(most.as_bytes()), most);
        assert_eq!(shown(format!("{most}b").as_bytes()), most);
        let header = http::HeaderValue::from_str(&format!("{most}b")).unwrap();
        assert!(matches!(user_agent(&header), Cow::Borrowed(_)));
        // 2-byte characters: the cut counts characters, not bytes.
        let long = "é".repeat(USER_AGENT_MAX + 5);
        assert_eq!(shown(long.as_bytes()), "é".repeat(USER_AGENT_MAX));
        // Not UTF-8: replaced, then cut alike.
        let mut lossy = b"\xff".to_vec();
        lossy.extend(b"a".repeat(USER_AGENT_MAX + 5));
        assert_eq!(
            shown(&lossy),
            format!("\u{fffd}{}", "a".repeat(USER_AGENT_MAX - 1))
        );
        // A credential past the cut still masks the whole value.
        let mut hidden = "a".repeat(USER_AGENT_MAX + 5);
        hidden.push_str(" Bearer abc");
        assert_eq!(shown(hidden.as_bytes()), MASK);
    }

    #[test]
    fn secrets_are_found_anywhere_in_free_text() {
        assert!(contains_secret("tool/1 Bearer abc"));
        assert!(contains_secret("curl/8 (pcl_0123456789abcdef)"));
        assert!(contains_secret("x ghp_0123456789abcdefghij y"));
        assert!(!contains_secret(
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
        ));
        assert!(!contains_secret("bearer-agent/1.0"));
    }

    #[test]
    fn schemes_and_access_keys_are_found_in_any_case_and_a_jwt_has_three_parts() {
        for secret in [
            "BEARER abc",
            "bAsIc dXNlcjpw",
            "SS://Y2hhY2hh@203.0.113.5:443",
            "x Ss://y",
            "é ss://x",
        ] {
            assert!(looks_secret(secret), "{secret}");
        }
        assert!(looks_secret("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"));
        for not_secret in [
            "bearer",
            "ss:/",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln.more",
            "eyJhbGciOiJIUzI1NiJ9..c2ln",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2l+",
            "béarer x",
            "",
            "SS:/ /",
        ] {
            assert!(!looks_secret(not_secret), "{not_secret}");
        }
    }

    #[test]
    fn sensitive_parameters_are_masked_in_any_spelling() {
        let redactor = Redactor::new(&["tracking-id".to_owned()]);
        assert_eq!(
            redactor.query("page=2&API_KEY=abc&X-Api-Key=def&Password=p&q=shoes&tracking_id=7"),
            "page=2&API_KEY=***&X-Api-Key=***&Password=***&q=shoes&tracking_id=***"
        );
        assert_eq!(redactor.query("%74oken=abc"), "%74oken=***");
        assert_eq!(redactor.query("flag&x="), "flag&x=");
    }

    fn sample(content_type: Option<&str>, body: &[u8], limit: usize) -> BodySample {
        let mut sample = BodySample::new(
            limit,
            content_type.map(|value| http::HeaderValue::from_str(value).unwrap()),
        );
        sample.take(body);
        sample
    }

    /// JSON is redacted by key at every depth and by value anywhere; cut short, it cannot
    /// be read whole and is withheld.
    #[test]
    fn json_bodies_are_redacted_by_key_at_every_depth() {
        let redactor = Redactor::new(&["card-number".to_owned()]);
        let body = br#"{"user":"ann","newPassword":"n1","accessToken":"opaque","Password":"hunter2","profile":{"api_key":7,"tags":["a","Bearer xyz"]},"items":[{"card_number":"4111"}],"url":"ss://Y2hh@203.0.113.5:443","uri":"/a?token=t&x=1"}"#;
        let kept = redactor
            .body(&sample(Some("application/json"), body, 4096))
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&kept).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"user":"ann","newPassword":"***","accessToken":"***","Password":"***","profile":{"api_key":"***","tags":["a","***"]},"items":[{"card_number":"***"}],"url":"***","uri":"/a?token=***&x=1"})
        );
        assert_eq!(
            redactor.body(&sample(None, body, 20)).as_deref(),
            Some(MASK),
            "cut short"
        );
    }

    #[test]
    fn other_bodies_are_kept_only_without_a_secret() {
        let redactor = Redactor::default();
        let form = sample(
            Some("application/x-www-form-urlencoded"),
            b"user=ann&password=hunter2",
            4096,
        );
        assert_eq!(
            redactor.body(&form).as_deref(),
            Some("user=ann&password=***")
        );
        let text = sample(Some("text/plain"), b"hello there", 4096);
        assert_eq!(redactor.body(&text).as_deref(), Some("hello there"));
        // URLs quoted in a body keep their shape, not their sensitive values.
        let quoted = sample(
            Some("text/plain"),
            b"see https://x.example/a?password=p1&page=2 and token=t2, a = b\n",
            4096,
        );
        assert_eq!(
            redactor.body(&quoted).as_deref(),
            Some("see https://x.example/a?password=***&page=2 and token=*** a = b\n")
        );
        let secret = sample(
            Some("text/plain"),
            b"key: ghp_0123456789abcdefghijklmnop",
            4096,
        );
        assert_eq!(redactor.body(&secret).as_deref(), Some(MASK));
        let xml = sample(
            Some("application/xml"),
            b"<password>hunter2</password>",
            4096,
        );
        assert_eq!(redactor.body(&xml).as_deref(), Some(MASK));
        let fragment = sample(None, b"go to /cb#access_token=abc&x=1", 4096);
        assert_eq!(
            redactor.body(&fragment).as_deref(),
            Some("go to /cb#access_token=***&x=1")
        );
        let binary = sample(Some("application/octet-stream"), &[0xff, 0xfe, 0], 4096);
        assert_eq!(redactor.body(&binary).as_deref(), Some(MASK));
        // Cut inside a character: the characters before it.
        let cut = sample(Some("text/plain"), "héllo".as_bytes(), 2);
        assert_eq!(redactor.body(&cut).as_deref(), Some("h"));
        assert_eq!(redactor.body(&sample(None, b"", 10)), None);
    }

    /// Secrets under no sensitive key of their own: a JSON document sent as a string, a
    /// GraphQL call's literal arguments, `name: value` text, a quoted credential.
    #[test]
    fn secrets_named_inside_strings_and_text_are_masked() {
        let redactor = Redactor::default();
        let kept = |content_type: Option<&str>, body: &str| {
            redactor
                .body(&sample(content_type, body.as_bytes(), 4096))
                .unwrap()
        };
        let json = |body: &str| -> serde_json::Value {
            serde_json::from_str(&kept(Some("application/json"), body)).unwrap()
        };
        // Redacted as the document it is, and kept as a string.
        assert_eq!(
            json(r#"{"payload":"{\"password\":\"x1\",\"user\":\"ann\"}"}"#),
            serde_json::json!({"payload": r#"{"password":"***","user":"ann"}"#})
        );
        assert_eq!(
            json(r#"{"query":"mutation { login(user: \"ann\", password: \"x2\") { token } }"}"#),
            serde_json::json!({"query": MASK})
        );
        // Variables are redacted by key; a query that only names them is kept.
        let graphql = r#"{"query":"mutation($pw: String!) { login(password: $pw) { token } }","variables":{"pw":"x3","password":"x4"}}"#;
        assert_eq!(
            json(graphql),
            serde_json::json!({"query":"mutation($pw: String!) { login(password: $pw) { token } }","variables":{"pw":"x3","password":MASK}})
        );
        assert_eq!(
            json(r#"{"note":"sent with \"Bearer x5\"","header":"Authorization:Bearer x6"}"#),
            serde_json::json!({"note": MASK, "header": MASK})
        );
        for text in [
            "password: x7",
            "user = ann\napi_key = x8\n",
            "config {\"secret\": \"x9\"}",
            "curl -H \"Bearer x10\"",
            "curl -H 'Authorization: Bearer x11'",
            "deploy --password x12 --verbose",
            "login --api-key \"x13\"",
            "login --password -x14",
            // A value cannot be told from a word: prose naming the option is masked too.
            "the --password flag",
        ] {
            assert_eq!(kept(Some("text/plain"), text), MASK, "{text}");
        }
        // A name with no value, a masked one, a name common in prose, or a GraphQL variable.
        for text in [
            "the password: ",
            "password=***",
            "status: ok, page=2",
            "status code: 404",
            "login(password: $pw)",
            "run --password --verbose",
            "reset --password ***",
        ] {
            assert_eq!(kept(Some("text/plain"), text), text, "{text}");
        }
        // Values that only look masked or like a variable, and a value sent encoded.
        for text in [
            "password: ***real",
            "login(password: \"$ecr3t\")",
            "password = $abc1",
            "password%3Dx15",
            "X-Forwarded-Auth:\"Bearer x16\"",
        ] {
            assert_eq!(kept(Some("text/plain"), text), MASK, "{text}");
        }
        // Name and value apart: an object that names its value, a pair.
        assert_eq!(
            json(
                r#"{"fields":[{"name":"Password","value":"x21"},{"name":"user","value":"ann"}],"headers":[["X-Api-Key","x22"],["Accept","*/*"]]}"#
            ),
            serde_json::json!({"fields":[{"name":"Password","value":MASK},{"name":"user","value":"ann"}],"headers":[["X-Api-Key",MASK],["Accept","*/*"]]})
        );
        assert_eq!(
            json(r#"{"next":"%2Fcb%3Ftoken%3Dx17","error":"Error code: 500"}"#),
            serde_json::json!({"next": MASK, "error": "Error code: 500"})
        );
        // Query values that carry one: a URL with a token (encoded once or twice), a quoted
        // credential, JSON (its keys escaped or not); a name that carries a value itself.
        assert_eq!(
            redactor.query("next=https%3A%2F%2Fx.example%2F%3Ftoken%3Dx12&q=%22Bearer%20x13%22&f=%7B%22password%22%3A%22x14%22%7D&page=2"),
            "next=***&q=***&f=***&page=2"
        );
        assert_eq!(
            redactor.query("return_to=%2Flogin%3Fnext%3D%252Fcb%253Ftoken%253Dx18&f=%7B%22%5Cu0070assword%22%3A%22x19%22%7D&token%3Dx20=1"),
            "return_to=***&f=***&***"
        );
        // Names common in prose count in a URL's query, encoded or not.
        assert_eq!(
            redactor.query("return_to=%2Fcb%3Fcode%3Dx23%26state%3Dxyz&u=https%3A%2F%2Fb.example%2Fa%3Fsig%3Dx24&key%3Dx25=1"),
            "return_to=***&u=***&***"
        );
        // Search syntax is not a secret.
        assert_eq!(
            redactor.query("q=repo:x+state:open&sort=key:asc"),
            "q=repo:x+state:open&sort=key:asc"
        );
    }

    /// Names as frameworks read them (PHP turns `.` and spaces into `_`; PHP and Rails read
    /// `login[pwd]` as the field `pwd`), and names whose last word is a secret's.
    #[test]
    fn sensitive_names_are_found_as_frameworks_read_them() {
        let redactor = Redactor::default();
        assert_eq!(
            redactor.query(
                "api.key=s1&pass.word=s2&pass+word=s3&login%5Bpwd%5D=s4&user[pin]=s5&api%20key=s6\
                 &pwd[]=s7&subscription-key=s8&x-auth-key=s9&pwd1=s10&user_pass=s11&loginPin=s12\
                 &monkey=m&bypass=b&page=2"
            ),
            "api.key=***&pass.word=***&pass+word=***&login%5Bpwd%5D=***&user[pin]=***\
             &api%20key=***&pwd[]=***&subscription-key=***&x-auth-key=***&pwd1=***\
             &user_pass=***&loginPin=***&monkey=m&bypass=b&page=2"
        );
        // In free text, as an assignment; not in prose (`primary key: id`).
        assert!(redactor.assigns_sensitive("auth_key=s13"));
        assert!(!redactor.assigns_sensitive("sort by primary_key: id"));
    }

    #[test]
    fn json_names_beside_values_passwords_in_urls_and_jwes_are_masked() {
        let redactor = Redactor::default();
        let mut value = serde_json::json!({
            "Parameters": [{"Name": "DB_PASSWORD", "Value": "s1"}, {"Name": "region", "Value": "eu"}],
            "auth_key": "s2",
            "dsn": "postgres://app:s3@db/x",
            "link": "https://user@example.com/a",
            "t": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aXY.Y2lwaGVy.dGFn",
            "pwd1": "s4",
            "user_pass": "s5",
        });
        redactor.json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "Parameters": [{"Name": "DB_PASSWORD", "Value": MASK}, {"Name": "region", "Value": "eu"}],
                "auth_key": MASK,
                "dsn": MASK,
                "link": "https://user@example.com/a",
                "t": MASK,
                "pwd1": MASK,
                "user_pass": MASK,
            })
        );
        assert!(looks_secret("https://u:p@h"));
        assert!(!looks_secret("https://u:@h"), "no password");
        assert!(
            !looks_secret("see https://h/a?b=c:d@e"),
            "not in the authority"
        );
        let text = sample(Some("text/plain"), b"db_url=postgres://u:s6@h/d", 4096);
        assert_eq!(redactor.body(&text).as_deref(), Some(MASK));
    }

    #[test]
    fn a_user_agent_that_names_a_credential_is_masked() {
        let shown =
            |text: &str| user_agent(&http::HeaderValue::from_str(text).unwrap()).into_owned();
        assert_eq!(shown("myapp/1.0 token=s1"), MASK);
        assert_eq!(shown("myapp/1.0 (api_key: s2)"), MASK);
        let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
        assert_eq!(shown(browser), browser);
    }

    #[test]
    fn path_segments_that_look_like_secrets_are_masked() {
        let redactor = Redactor::default();
        assert_eq!(
            redactor.path("/outlines/pcl_0123456789abcdefghij/server"),
            "/outlines/***/server"
        );
        assert_eq!(
            redactor.path("/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln/x%2Fpcl%5Fabc"),
            "/reset/***/***"
        );
        assert!(matches!(
            redactor.path("/v1/users/42"),
            Cow::Borrowed("/v1/users/42")
        ));
    }

    /// The gateway's own secrets (an upstream's secret path, its keys) in a kept body, as an
    /// upstream's error page quoting its path has them.
    #[test]
    fn the_gateways_own_secrets_are_masked_in_kept_bodies() {
        let redactor = Redactor::default().knowing([
            SecretString::from("/OUTLINE-OWN-SECRET-PATH"),
            SecretString::from("short"),
        ]);
        let body = sample(
            Some("application/json"),
            br#"{"message":"/OUTLINE-OWN-SECRET-PATH/server does not exist","short":"short"}"#,
            4096,
        );
        assert_eq!(
            redactor.body(&body).as_deref(),
            Some(r#"{"message":"/***/server does not exist","short":"short"}"#)
        );
        let text = sample(
            None,
            b"GET /OUTLINE-OWN-SECRET-PATH/x from OUTLINE-OWN-SECRET-PATH",
            4096,
        );
        assert_eq!(redactor.body(&text).as_deref(), Some("GET /***/x from ***"));
    }

    /// A client that writes one of the gateway's secrets into its path or query (it may
    /// know it; the logs' readers may not): masked there too, percent-encoded or not.
    #[test]
    fn the_gateways_own_secrets_are_masked_in_paths_and_queries() {
        let redactor = Redactor::default().knowing([
            SecretString::from("/OUTLINE-OWN-SECRET-PATH"),
            SecretString::from("/v1/accounts/KEY-0123456789"),
            SecretString::from("Zm9vYmFy+cXV4YmF6"),
        ]);
        assert_eq!(
            redactor.path("/x/Zm9vYmFy+cXV4YmF6"),
            "/x/***",
            "a plus in a path is a plus"
        );
        assert_eq!(
            redactor.path("/x/Zm9vYmFy+cXV4%59mF6"),
            "/x/***",
            "a plus beside an escape"
        );
        assert_eq!(
            redactor.path("/outline/OUTLINE-OWN-SECRET-PATH/server"),
            "/outline/***/server"
        );
        assert_eq!(
            redactor.path("/x/%4FUTLINE-OWN-SECRET-PATH"),
            "/x/***",
            "percent-encoded"
        );
        assert_eq!(
            redactor.path("/proxy/v1/accounts/KEY-0123456789/x"),
            "/proxy/***/***/***/x",
            "a secret of several segments"
        );
        assert_eq!(
            redactor.query("loc=/OUTLINE-OWN-SECRET-PATH/x&page=2"),
            "loc=***&page=2"
        );
        assert_eq!(redactor.query("loc=%2FOUTLINE-OWN-SECRET-PATH"), "loc=***");
        assert!(matches!(
            redactor.path("/v1/accounts/42"),
            Cow::Borrowed("/v1/accounts/42")
        ));
    }

    #[test]
    fn values_that_look_like_secrets_are_masked_under_any_name() {
        let redactor = Redactor::default();
        for value in [
            "Bearer%20abc",
            "pcl_0123456789abcdefghij",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "ss%3A%2F%2FY2hhY2hhMjA%40203.0.113.5%3A443",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            "-----BEGIN%20PRIVATE%20KEY-----",
        ] {
            assert_eq!(redactor.query(&format!("v={value}")), "v=***", "{value}");
        }
        assert_eq!(redactor.query("v=AKIA"), "v=AKIA", "too short to be a key");
        assert_eq!(redactor.query("sort=desc&limit=10"), "sort=desc&limit=10");
    }
}
