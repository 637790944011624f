//! The TLS listener's configuration: rustls, TLS 1.2 and 1.3 only, HTTP/2 offered by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or not PEM.
    #[error("cannot read TLS certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no private key.
    #[error("cannot read TLS private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Rejected(#[from] rustls::Error),
}

/// Loads a PEM certificate chain and private key into a server configuration that speaks
/// TLS 1.2 and 1.3 and offers `h2` and `http/1.1`.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    load_with_alpn(cert, key, &[b"h2", b"http/1.1"])
}

/// When the first certificate in the PEM file `cert` expires; none when it cannot be read.
pub fn certificate_expiry(cert: &Path) -> Option<std::time::SystemTime> {
    let first = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    crate::upstream::certificate_expiry(&first)
}

/// Like [`load`], offering only the protocols in `alpn`.
pub fn load_with_alpn(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert.to_owned(),
        reason,
    };
    let chain = crate::upstream::pem_certificates(cert).map_err(cert_error)?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
