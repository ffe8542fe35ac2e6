//! Who may read the pages: users from the config, each with an argon2id
//! password hash, and the login sessions they open.
//!
//! The pages show enterprise figures, so nothing is served without a
//! session. Passwords are never stored: the config holds PHC strings
//! (`$argon2id$v=19$…`) made by `zgsz-platform hash-password`, and a
//! session is a random 256-bit token kept in memory, lost on restart
//! (everyone logs in again), and dropped after its idle time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error("hashing the password: {0}")]
    Hash(String),
    #[error("not an argon2 PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash): {0}")]
    BadHash(String),
}

/// A user of the pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The argon2id PHC string.
    pub password_hash: String,
}

/// The PHC string of `password`, with a fresh random salt and the crate's
/// default argon2id parameters (19 MiB, 2 passes, 1 lane: OWASP's
/// minimum, a few tens of milliseconds per login).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a PHC string's form (when the config is loaded, so a typo is
/// an error at start, not a login that can never succeed).
pub fn check_hash(phc: &str) -> Result<(), AuthError> {
    let h = PasswordHash::new(phc).map_err(|e| AuthError::BadHash(e.to_string()))?;
    if h.algorithm.as_str() != "argon2id" {
        return Err(AuthError::BadHash(format!(
            "algorithm {} (use argon2id)",
            h.algorithm
        )));
    }
    Ok(())
}

/// Whether `password` matches the PHC string.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// 32 random bytes from the OS, as hex: a session token or a login link's
/// secret.
pub fn random_hex() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The open login sessions.
pub struct Sessions {
    users: Vec<User>,
    idle: Duration,
    open: HashMap<String, (String, Instant)>,
}

impl Sessions {
    /// `idle`: a session unused this long is closed.
    pub fn new(users: Vec<User>, idle: Duration) -> Sessions {
        Sessions {
            users,
            idle,
            open: HashMap::new(),
        }
    }

    /// A new session token for `name`, or `None` when the name or the
    /// password is wrong (the two are not told apart). An unknown name
    /// still costs one hash, so timing does not tell them apart either.
    pub fn login(&mut self, name: &str, password: &str) -> Result<Option<String>, AuthError> {
        let user = self.users.iter().find(|u| u.name == name);
        let ok = match user {
            Some(u) => verify_password(&u.password_hash, password),
            None => {
                let _ = hash_password(password)?;
                false
            }
        };
        if !ok {
            return Ok(None);
        }
        self.open_for(name).map(Some)
    }

    /// A new session token for `name`, who has proved who they are some
    /// other way (the demo's login link).
    pub fn open_for(&mut self, name: &str) -> Result<String, AuthError> {
        let token = random_hex()?;
        self.open
            .insert(token.clone(), (name.to_string(), Instant::now()));
        Ok(token)
    }

    /// The user of an open session, which counts as a use of it.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let idle = self.idle;
        self.open
            .retain(|_, (_, last)| now.duration_since(*last) < idle);
        let (user, last) = self.open.get_mut(token)?;
        *last = now;
        Some(user.clone())
    }

    /// Closes a session.
    pub fn logout(&mut self, token: &str) {
        self.open.remove(token);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test: a panic is a failure")]
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_sessions_expire() {
        let phc = hash_password("秘密 secret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        check_hash(&phc).unwrap();
        assert!(verify_password(&phc, "秘密 secret"));
        assert!(!verify_password(&phc, "secret"));
        assert!(check_hash("$2b$12$notargon").is_err());
        let mut s = Sessions::new(
            vec![User {
                name: "gxj".into(),
                password_hash: phc,
            }],
            Duration::from_secs(60),
        );
        assert_eq!(s.login("gxj", "wrong").unwrap(), None);
        assert_eq!(s.login("nobody", "秘密 secret").unwrap(), None);
        let token = s.login("gxj", "秘密 secret").unwrap().unwrap();
        assert_eq!(token.len(), 64);
        let now = Instant::now();
        assert_eq!(s.user(&token, now), Some("gxj".into()));
        assert_eq!(s.user("f".repeat(64).as_str(), now), None);
        assert_eq!(s.user(&token, now + Duration::from_secs(61)), None);
        let again = s.login("gxj", "秘密 secret").unwrap().unwrap();
        s.logout(&again);
        assert_eq!(s.user(&again, Instant::now()), None);
    }
}
