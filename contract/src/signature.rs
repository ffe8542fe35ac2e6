//! The detached Ed25519 signature of an evidence report (`report.json.sig`,
//! 64 raw bytes over the exact bytes of `report.json`): one check, used by
//! the gateway's `verify` and by the platform's report intake, so that the
//! two cannot disagree about what a valid signature is.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::chain::hex;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("public key {0:?}: expected 64 hex characters (as printed by `zgsz-agent identity`)")]
    BadPublicKey(String),
    #[error("the signature file must hold exactly 64 bytes, found {0}")]
    BadLength(usize),
    #[error("the signature does not match: the file was changed after signing, or signed by another key")]
    Mismatch,
}

/// A public key as `zgsz-agent identity` prints it and the platform
/// registers it: 64 hex characters (surrounding whitespace ignored).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], SignatureError> {
    let t = text.trim();
    let bad = || SignatureError::BadPublicKey(t.to_string());
    if t.len() != 64 || !t.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Checks a detached signature over `bytes`.
///
/// Strict verification (RFC 8032 with the canonical-encoding checks): a
/// signature made by `zgsz-agent` or OpenSSL passes, while a weak key or a
/// malleated signature, which would let one signed report pass as
/// another's, does not.
pub fn verify(public_key: &[u8; 32], bytes: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| SignatureError::BadLength(signature.len()))?;
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|_| SignatureError::BadPublicKey(hex(public_key)))?;
    key.verify_strict(bytes, &Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn a_signature_verifies_only_for_its_bytes_and_key() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let public = key.verifying_key().to_bytes();
        let sig = key.sign(b"report").to_bytes();
        assert_eq!(verify(&public, b"report", &sig), Ok(()));
        assert_eq!(
            verify(&public, b"report!", &sig),
            Err(SignatureError::Mismatch)
        );
        let theirs = other.sign(b"report").to_bytes();
        assert_eq!(
            verify(&public, b"report", &theirs),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&public, b"report", &sig[..10]),
            Err(SignatureError::BadLength(10))
        );
        assert_eq!(
            parse_public_key(&format!(" {}\n", hex(&public))),
            Ok(public)
        );
        assert!(matches!(
            parse_public_key("zz"),
            Err(SignatureError::BadPublicKey(_))
        ));
    }
}
