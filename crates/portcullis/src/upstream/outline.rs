//! What an Outline server's installer prints, or keeps in `access.txt`: the management
//! API's URL, whose path is a secret, and the SHA-256 of the server's self-signed
//! certificate. One file gives an upstream its address, its secret path prefix and its pin.

use secrecy::SecretString;

use super::tls::{Sha256Digest, parse_cert_pin};

/// An Outline server's management access, read from what its installer wrote.
pub struct OutlineAccess {
    /// `https://HOST:PORT`, the URL without its secret path.
    pub origin: String,
    /// The URL's path: the secret that grants full control of the server.
    pub secret_path: SecretString,
    /// The certificate's SHA-256.
    pub pin: Sha256Digest,
}

/// Why an Outline access file cannot be used. Never quotes the file: it holds the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutlineAccessError {
    /// No `apiUrl`.
    #[error("no apiUrl in it")]
    NoApiUrl,
    /// No `certSha256`.
    #[error("no certSha256 in it")]
    NoCertSha256,
    /// The `apiUrl` is not `https://host:port/secret`.
    #[error("its apiUrl is not an https:// URL with a secret path")]
    BadApiUrl,
    /// The `certSha256` is not 64 hex digits.
    #[error("its certSha256 is not 64 hex digits")]
    BadCertSha256,
}

impl OutlineAccess {
    /// Reads the installer's JSON line (`{"apiUrl":"...","certSha256":"..."}`, with or
    /// without the terminal colour codes around it) or `access.txt`'s `apiUrl:` and
    /// `certSha256:` lines.
    pub fn parse(text: &str) -> Result<Self, OutlineAccessError> {
        let text = strip_ansi(text);
        let (api_url, cert) = match json_fields(&text) {
            Some(fields) => fields,
            None => (line_field(&text, "apiUrl"), line_field(&text, "certSha256")),
        };
        let api_url = api_url.ok_or(OutlineAccessError::NoApiUrl)?;
        let cert = cert.ok_or(OutlineAccessError::NoCertSha256)?;
        let pin = parse_cert_pin(&cert).ok_or(OutlineAccessError::BadCertSha256)?;
        let rest = api_url
            .strip_prefix("https://")
            .ok_or(OutlineAccessError::BadApiUrl)?;
        let (host, path) = rest.split_once('/').ok_or(OutlineAccessError::BadApiUrl)?;
        let path = path.trim_end_matches('/');
        if host.is_empty() || path.is_empty() || host.contains('@') {
            return Err(OutlineAccessError::BadApiUrl);
        }
        Ok(Self {
            origin: format!("https://{host}"),
            secret_path: SecretString::from(path.to_owned()),
            pin,
        })
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: parameters up to a final letter.
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `apiUrl` and `certSha256` from the first JSON object in `text` that has either.
fn json_fields(text: &str) -> Option<(Option<String>, Option<String>)> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let object: serde_json::Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    let field = |name: &str| object.get(name)?.as_str().map(str::to_owned);
    Some((field("apiUrl"), field("certSha256")))
}

/// The value of a `name:value` line.
fn line_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const PIN: &str = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";

    #[test]
    fn reads_the_installers_coloured_json_line() {
        let printed = format!(
            "\u{1b}[1;32m{{\"apiUrl\":\"https://203.0.113.5:41234/XyZ-secret_1\",\"certSha256\":\"{PIN}\"}}\u{1b}[0m\n"
        );
        let access = OutlineAccess::parse(&printed).unwrap();
        assert_eq!(access.origin, "https://203.0.113.5:41234");
        assert_eq!(access.secret_path.expose_secret(), "XyZ-secret_1");
        assert_eq!(access.pin, parse_cert_pin(PIN).unwrap());
    }

    #[test]
    fn reads_access_txt() {
        let file = format!("certSha256:{PIN}\napiUrl:https://[2001:db8::5]:8081/s3cr3t/\n");
        let access = OutlineAccess::parse(&file).unwrap();
        assert_eq!(access.origin, "https://[2001:db8::5]:8081");
        assert_eq!(access.secret_path.expose_secret(), "s3cr3t");
    }

    #[test]
    fn refuses_what_it_cannot_use_without_quoting_it() {
        let cases = [
            (format!("certSha256:{PIN}\n"), OutlineAccessError::NoApiUrl),
            (
                "apiUrl:https://h:1/s\n".to_owned(),
                OutlineAccessError::NoCertSha256,
            ),
            (
                format!("apiUrl:http://h:1/s\ncertSha256:{PIN}\n"),
                OutlineAccessError::BadApiUrl,
            ),
            (
                format!("apiUrl:https://h:1/\ncertSha256:{PIN}\n"),
                OutlineAccessError::BadApiUrl,
            ),
            (
                "apiUrl:https://h:1/s\ncertSha256:ABCD\n".to_owned(),
                OutlineAccessError::BadCertSha256,
            ),
        ];
        for (text, expected) in cases {
            let error = OutlineAccess::parse(&text).err().unwrap();
            assert_eq!(error, expected, "{text}");
            assert!(!error.to_string().contains("h:1"));
        }
    }
}
