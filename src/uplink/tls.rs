//! The rustls client setup of a sink's MQTT connection: the trusted roots
//! (the sink's `ca_file`, else the system's CA certificates) and, for
//! mutual TLS, the client certificate and key.
//!
//! The config keeps only the paths ([`TlsSettings`]); `check` and `run`
//! both build the client config through [`client_config`], so a certificate
//! that `run` would refuse is already a `check` error. Each error names the
//! key it comes from ([`TlsError::key`]) and says what to fix.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;

/// Why a sink's TLS client config cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}; point it at the platform's CA certificate (PEM)", path.display())]
    CaUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no usable PEM certificate; it must contain -----BEGIN CERTIFICATE-----", path.display())]
    CaEmpty { path: PathBuf },
    #[error("is not set and the system has no CA certificates; set it to the platform's CA certificate (PEM)")]
    NoSystemCa,
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
    #[error("cannot read {}: {source}", path.display())]
    CertUnreadable {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    CertEmpty { path: PathBuf },
    #[error("cannot read a PEM private key from {}: {source}", path.display())]
    KeyUnreadable {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("does not match client_cert_file: {0}")]
    KeyMismatch(rustls::Error),
}

impl TlsError {
    /// The sink key the error is about (`ca_file`, `client_key_file`, ...).
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::CaUnreadable { .. } | TlsError::CaEmpty { .. } | TlsError::NoSystemCa => {
                "ca_file"
            }
            TlsError::Setup(_) => "tls",
            TlsError::CertUnreadable { .. } | TlsError::CertEmpty { .. } => "client_cert_file",
            TlsError::KeyUnreadable { .. } | TlsError::KeyMismatch(_) => "client_key_file",
        }
    }
}

/// The rustls client config of a sink (ring as the crypto provider, safe
/// default protocol versions).
pub fn client_config(s: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(s.ca_file.as_ref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    let Some(auth) = &s.client_auth else {
        return Ok(Arc::new(builder.with_no_client_auth()));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&auth.cert_file)
        .map_err(|source| TlsError::CertUnreadable {
            path: auth.cert_file.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::CertEmpty {
            path: auth.cert_file.clone(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_file(&auth.key_file).map_err(|source| TlsError::KeyUnreadable {
            path: auth.key_file.clone(),
            source,
        })?;
    builder
        .with_client_auth_cert(certs, key)
        .map(Arc::new)
        .map_err(TlsError::KeyMismatch)
}

/// The trusted roots: the certificates in `ca_file`, or the system's.
fn roots(ca_file: Option<&PathBuf>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            let bytes = std::fs::read(ca).map_err(|source| TlsError::CaUnreadable {
                path: ca.clone(),
                source,
            })?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::CaEmpty { path: ca.clone() });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemCa);
            }
        }
    }
    Ok(roots)
}
