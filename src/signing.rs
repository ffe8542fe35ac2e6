//! The gateway's Ed25519 key pair, which signs evidence reports.
//!
//! The secret key is created on first use in the state directory
//! (`gateway.key`, mode 0600, the 32-byte seed as hex) from the operating
//! system's random source; the public key is written beside it
//! (`gateway.pub`, hex) for convenience. The platform or the diagnostician
//! registers the public key (`zgsz-agent identity` prints it with its
//! fingerprint) and checks reports against it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
pub use zgsz_contract::signature::SignatureError;

use crate::chain::{hex, sha256_hex};

pub const KEY_FILE: &str = "gateway.key";
pub const PUB_FILE: &str = "gateway.pub";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a key written by zgsz-agent (expected 64 hex characters)")]
    Malformed { path: PathBuf },
    /// A malformed public key or signature, or one that does not match.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// The gateway's signing key.
pub struct GatewayKey {
    key: SigningKey,
}

/// The seed in `gateway.key` has the form of a public key: 64 hex.
fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    zgsz_contract::signature::parse_public_key(text).ok()
}

impl GatewayKey {
    /// Loads the key from `state_dir`, creating it (mode 0600) if absent.
    /// Returns the key and whether it was created now.
    pub fn load_or_create(state_dir: &Path) -> Result<(GatewayKey, bool), KeyError> {
        let path = state_dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let seed =
                    parse_hex32(&text).ok_or_else(|| KeyError::Malformed { path: path.clone() })?;
                if let Ok(m) = std::fs::metadata(&path) {
                    if m.permissions().mode() & 0o077 != 0 {
                        tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "Gateway key is readable by others; chmod 600 it");
                    }
                }
                Ok((
                    GatewayKey {
                        key: SigningKey::from_bytes(&seed),
                    },
                    false,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir).map_err(|source| KeyError::Io {
                    path: state_dir.to_path_buf(),
                    source,
                })?;
                let key = SigningKey::generate(&mut rand_core::OsRng);
                // create_new: two processes starting at once cannot both
                // write a key; the loser reads the winner's.
                let mut f = match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Self::load_or_create(state_dir)
                    }
                    Err(e) => return Err(io(e)),
                };
                f.write_all(format!("{}\n", hex(&key.to_bytes())).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(io)?;
                let gk = GatewayKey { key };
                let pub_path = state_dir.join(PUB_FILE);
                std::fs::write(&pub_path, format!("{}\n", gk.public_hex())).map_err(|source| {
                    KeyError::Io {
                        path: pub_path,
                        source,
                    }
                })?;
                tracing::info!(path = %path.display(), fingerprint = %gk.fingerprint(), "Gateway key pair created");
                Ok((gk, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public key, 64 lowercase hex characters.
    pub fn public_hex(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// SHA-256 of the 32 public-key bytes, lowercase hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.key.verifying_key().as_bytes())
    }

    /// A detached signature over `bytes` (64 raw bytes).
    pub fn sign(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(bytes).to_bytes()
    }
}

pub fn fingerprint(public_key: &[u8; 32]) -> String {
    sha256_hex(public_key)
}

/// Parses a public key as printed by `identity` (64 hex characters).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], KeyError> {
    Ok(zgsz_contract::signature::parse_public_key(text)?)
}

/// The public key in PEM (SubjectPublicKeyInfo), for tools such as
/// `openssl pkeyutl -verify -rawin`.
pub fn public_pem(public_key: &[u8; 32]) -> String {
    // DER: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING { key } }
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(public_key);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64(&der)
    )
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Checks a detached signature: the contract's check, the one the
/// platform's report intake runs too.
pub fn verify(public_key: &[u8; 32], bytes: &[u8], signature: &[u8]) -> Result<(), KeyError> {
    Ok(zgsz_contract::signature::verify(
        public_key, bytes, signature,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let (k, created) = GatewayKey::load_or_create(dir.path()).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = GatewayKey::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(k.public_hex(), again.public_hex());
        let pk = parse_public_key(&k.public_hex()).unwrap();
        let sig = k.sign(b"report");
        verify(&pk, b"report", &sig).unwrap();
        assert!(matches!(
            verify(&pk, b"report!", &sig),
            Err(KeyError::Signature(SignatureError::Mismatch))
        ));
        assert!(public_pem(&pk).starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
