//! The TLS client configuration of one upstream: whom it trusts (Mozilla's roots, a CA file
//! of its own, or pinned certificates), and the client certificate it presents.
//!
//! A pin names the certificate itself: the SHA-256 of the leaf's DER (`pin_sha256`, the
//! `certSha256` Outline prints) or of its SubjectPublicKeyInfo (`pin_spki_sha256`, as
//! Envoy's `verify_certificate_spki`). With pins, the presented leaf must match one of them
//! and nothing else is asked of it (no chain, no name: an Outline server's self-signed
//! certificate names an IP address, or nothing useful); the handshake's signature is still
//! checked against the leaf's key, so only the holder of the pinned key gets through. A
//! mismatch fails the handshake before any request byte is written.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A SHA-256 digest, as pins hold them.
pub type Sha256Digest = [u8; 32];

/// How an upstream's TLS is set up, its values parsed.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// SHA-256 digests of accepted leaf certificates (DER).
    pub cert_pins: Vec<Sha256Digest>,
    /// SHA-256 digests of accepted leaf SubjectPublicKeyInfos (DER).
    pub spki_pins: Vec<Sha256Digest>,
    /// A PEM file of CA certificates trusted instead of Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain and key presented to the upstream (mutual TLS).
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// Why an upstream's TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {path:?}: {reason}")]
    File {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not fit its certificate...).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The handshake was refused because the upstream's certificate matches no pin. Found in
/// a failed request's error chain; the fingerprint is the certificate's, not a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the upstream's certificate (sha256 {cert}, spki sha256 {spki}) matches no pin")]
pub struct PinMismatch {
    /// The presented leaf's SHA-256, in hex (the `pin_sha256` form).
    pub cert: String,
    /// The presented leaf's SPKI SHA-256, in base64 (the `pin_spki_sha256` form).
    pub spki: String,
}

/// When the last certificate an upstream presented, and the gateway accepted, expires.
#[derive(Debug, Default)]
pub struct CertificateSeen {
    /// Seconds since the Unix epoch; 0 before any.
    not_after: AtomicU64,
}

impl CertificateSeen {
    fn saw(&self, der: &[u8]) {
        if let Some(seconds) = certificate_expiry(der)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map(|since| since.as_secs())
        {
            self.not_after.store(seconds, Ordering::Relaxed);
        }
    }

    /// When it expires; none before the first handshake.
    pub fn expires(&self) -> Option<SystemTime> {
        match self.not_after.load(Ordering::Relaxed) {
            0 => None,
            seconds => Some(UNIX_EPOCH + Duration::from_secs(seconds)),
        }
    }
}

/// When the DER certificate `der` stops being valid; none when it cannot be read.
pub fn certificate_expiry(der: &[u8]) -> Option<SystemTime> {
    use x509_cert::der::Decode;
    let certificate = x509_cert::Certificate::from_der(der).ok()?;
    let after = certificate
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration();
    Some(UNIX_EPOCH + after)
}

impl UpstreamTls {
    /// Whether the upstream is trusted by pins rather than by a chain to a root.
    pub fn is_pinned(&self) -> bool {
        !self.cert_pins.is_empty() || !self.spki_pins.is_empty()
    }

    /// The rustls client configuration: TLS 1.2 and 1.3 (the connector sets ALPN); the
    /// leaf each accepted handshake presents is noted in `seen`.
    pub fn client_config(
        &self,
        seen: Arc<CertificateSeen>,
    ) -> Result<rustls::ClientConfig, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.is_pinned() {
            Arc::new(PinnedVerifier {
                cert_pins: self.cert_pins.clone(),
                spki_pins: self.spki_pins.clone(),
                provider,
            })
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider)
                .build()
                .map_err(|error| TlsSetupError::Rustls(rustls::Error::General(error.to_string())))?
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NotingVerifier { verifier, seen }));
        let config = match &self.client_identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs("client_cert", cert)?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|error| TlsSetupError::File {
                        what: "client_key",
                        path: key.clone(),
                        reason: error.to_string(),
                    })?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        Ok(config)
    }

    fn roots(&self) -> Result<RootCertStore, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                for cert in read_certs("ca_file", path)? {
                    roots.add(cert).map_err(|error| TlsSetupError::File {
                        what: "ca_file",
                        path: path.clone(),
                        reason: error.to_string(),
                    })?;
                }
            }
        }
        Ok(roots)
    }
}

/// Every certificate in the PEM file at `path`; at least one.
fn read_certs(
    what: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    pem_certificates(path).map_err(|reason| TlsSetupError::File {
        what,
        path: path.to_owned(),
        reason,
    })
}

/// Every certificate in the PEM file at `path`, or why there is none to use.
pub fn pem_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| error.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".to_owned());
    }
    Ok(certs)
}

/// Accepts exactly the leaf certificates its pins name.
#[derive(Debug)]
struct PinnedVerifier {
    cert_pins: Vec<Sha256Digest>,
    spki_pins: Vec<Sha256Digest>,
    provider: Arc<CryptoProvider>,
}

/// A verifier (the pins, or rustls's own: chain, name, dates) that notes the leaf it
/// accepts.
#[derive(Debug)]
struct NotingVerifier {
    verifier: Arc<dyn ServerCertVerifier>,
    seen: Arc<CertificateSeen>,
}

impl ServerCertVerifier for NotingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.seen.saw(end_entity);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert: Sha256Digest = Sha256::digest(end_entity).into();
        let spki: Sha256Digest = match webpki::EndEntityCert::try_from(end_entity) {
            Ok(parsed) => Sha256::digest(&*parsed.subject_public_key_info()).into(),
            Err(_) => return Err(CertificateError::BadEncoding.into()),
        };
        if self.cert_pins.contains(&cert) || self.spki_pins.contains(&spki) {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            cert: crate::base::hex::encode(&cert).to_ascii_uppercase(),
            spki: base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, spki),
        };
        Err(CertificateError::Other(OtherError(Arc::new(mismatch))).into())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A `pin_sha256` value: 64 hex digits, colons and case ignored (`9F:86:D0...`, as
/// OpenSSL prints it, or Outline's `certSha256`).
pub fn parse_cert_pin(text: &str) -> Option<Sha256Digest> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bytes = crate::base::hex::decode(&digits)?;
    bytes.try_into().ok()
}

/// A `pin_spki_sha256` value: the base64 of 32 bytes (standard alphabet, padded).
pub fn parse_spki_pin(text: &str) -> Option<Sha256Digest> {
    use base64::engine::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_pins_ignore_colons_and_case() {
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let pin = parse_cert_pin(hex).unwrap();
        assert_eq!(parse_cert_pin(&hex.to_ascii_lowercase()), Some(pin));
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect();
        assert_eq!(parse_cert_pin(&colons.join(":")), Some(pin));
        assert_eq!(parse_cert_pin(&hex[..62]), None, "31 bytes");
        assert_eq!(parse_cert_pin("zz"), None);
    }

    #[test]
    fn spki_pins_are_base64_of_32_bytes() {
        let pin = parse_spki_pin("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").unwrap();
        assert_eq!(pin[0], 0xe3);
        assert_eq!(parse_spki_pin("AAAA"), None, "3 bytes");
        assert_eq!(parse_spki_pin("not base64!"), None);
    }
}
