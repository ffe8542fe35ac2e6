//! Connecting to an OPC UA server: the gateway's application certificate,
//! the trust list, endpoint choice, login, and errors an engineer can act on.
//!
//! Every connection is a fresh session with the crate's own reconnection
//! switched off: the device task owns reconnecting (with our backoff) and
//! recreating subscriptions, so a lost session can never leave monitored
//! items behind on our side, and the task always knows whether it is
//! connected (readings are bad while it is not).
//!
//! PKI layout under `<state_dir>/pki`: `own/cert.der` and
//! `private/private.pem` (created on first use), `trusted/` and `rejected/`.
//! A server certificate is trusted only when it is in `trusted/`, under any
//! file name: the crate looks certificates up by a canonical name
//! (`<CN> [<thumbprint>].der`), so files dropped in by hand (DER or PEM,
//! any extension) are copied to that name before each connect.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use opcua::client::{
    Client, ClientBuilder, IdentityToken, Session, SessionPollResult, SubscriptionActivity,
};
use opcua::crypto::{CertificateStore, SecurityPolicy as CryptoPolicy, X509};
use opcua::types::{EndpointDescription, MessageSecurityMode, StatusCode};
use tokio::sync::watch;

use crate::source::opcua::config::{Identity, OpcUaDevice, SecurityMode, SecurityPolicy};

/// Why a connection could not be made; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no answer from {endpoint} within {timeout:?}; check that the server runs and the address and port are right")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("cannot reach {endpoint}: {status}")]
    Unreachable { endpoint: String, status: String },
    #[error("{endpoint} offers no endpoint with security {policy}/{mode:?}; it offers: {offered}. Set security_policy and security_mode to one of these")]
    NoEndpoint {
        endpoint: String,
        policy: &'static str,
        mode: SecurityMode,
        offered: String,
    },
    #[error("the server certificate of {endpoint} is not trusted; it was saved as {rejected}. If it is the machine's certificate, trust it with: mv '{rejected}' '{trusted}/'")]
    Untrusted {
        endpoint: String,
        rejected: String,
        trusted: String,
    },
    #[error("{endpoint} refused the login as {who} ({status}); check {fix}")]
    Login {
        endpoint: String,
        who: String,
        status: &'static str,
        fix: &'static str,
    },
    #[error("{endpoint} rejected the gateway's application certificate ({status}); the server's administrator must trust {own} (the gateway's certificate)")]
    ClientRejected {
        endpoint: String,
        status: &'static str,
        own: String,
    },
    #[error("{0}")]
    Setup(String),
}

impl ConnectError {
    /// Problems an operator must fix; retrying alone will not help.
    pub fn needs_operator(&self) -> bool {
        !matches!(
            self,
            ConnectError::Timeout { .. } | ConnectError::Unreachable { .. }
        )
    }
}

/// The live side of a connection: whether the session still stands.
pub struct Connection {
    pub session: Arc<Session>,
    /// `Some(reason)` once the session is lost.
    pub lost: watch::Receiver<Option<String>>,
    /// Milliseconds after `opened` of the last Publish response (data or
    /// keep-alive): a subscription that falls silent is dead, even when
    /// the session still answers.
    last_publish: Arc<AtomicU64>,
    opened: tokio::time::Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Closes the session (bounded by `timeout`) and stops its event loop.
    pub async fn close(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.session.disconnect()).await;
        self.task.abort();
    }

    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Starts the silence clock now: the subscriptions exist from here on.
    pub fn publish_expected(&self) {
        self.last_publish
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long ago the server last answered a Publish request (or the
    /// subscriptions were created).
    pub fn publish_silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_publish.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn crypto_policy(p: SecurityPolicy) -> CryptoPolicy {
    match p {
        SecurityPolicy::None => CryptoPolicy::None,
        SecurityPolicy::Basic256Sha256 => CryptoPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep => CryptoPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss => CryptoPolicy::Aes256Sha256RsaPss,
    }
}

fn ua_mode(m: SecurityMode) -> MessageSecurityMode {
    match m {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// The gateway's OPC UA application URI; it is written into the
/// certificate created on first run.
pub fn application_uri(gateway_id: &str) -> String {
    format!("urn:zgsz-agent:{gateway_id}")
}

/// A client with the gateway's identity and PKI. Creates the application
/// certificate if there is none yet.
pub fn client(
    pki: &Path,
    gateway_id: &str,
    trust_any: bool,
    timeout: Duration,
    longest_publish: Duration,
) -> Result<Client, ConnectError> {
    for d in ["trusted", "rejected", "own", "private"] {
        std::fs::create_dir_all(pki.join(d)).map_err(|e| {
            ConnectError::Setup(format!(
                "cannot create {}: {e}; the PKI lives under the agent's state_dir, which must be writable",
                pki.join(d).display()
            ))
        })?;
    }
    adopt_trusted(pki);
    ClientBuilder::new()
        .application_name("zgsz-agent")
        .application_uri(application_uri(gateway_id))
        .product_uri("urn:zgsz-agent")
        .pki_dir(pki)
        .create_sample_keypair(true)
        .trust_server_certs(false)
        .verify_server_certs(!trust_any)
        .session_retry_limit(0)
        .request_timeout(timeout)
        // Longer than the keep-alive period of our subscriptions (~10 s,
        // or the publishing interval when that is longer), so a quiet
        // subscription's publish is answered before it times out.
        .publish_timeout(
            timeout
                .max(Duration::from_secs(30))
                .max(longest_publish + timeout),
        )
        .keep_alive_interval(timeout.clamp(Duration::from_secs(1), Duration::from_secs(10)))
        .max_failed_keep_alive_count(2)
        .session_timeout(60_000)
        .client()
        .map_err(|errs| ConnectError::Setup(format!("OPC UA client: {}", errs.join("; "))))
}

/// Copies certificates placed in `trusted/` under any name to the name the
/// certificate store looks for.
fn adopt_trusted(pki: &Path) {
    let dir = pki.join("trusted");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(cert) = read_any_cert(&path) else {
            continue;
        };
        let name = CertificateStore::cert_file_name(&cert);
        let canonical = dir.join(&name);
        if canonical != path && !canonical.exists() {
            if let Ok(der) = cert.to_der() {
                let _ = std::fs::write(&canonical, der);
            }
        }
        // The store checks rejected/ first; an explicit trust wins.
        let _ = std::fs::remove_file(pki.join("rejected").join(&name));
    }
}

/// A certificate file as HMIs export them: DER or PEM, whatever the
/// extension (.der, .pem, .crt, .cer).
pub fn read_any_cert(path: &Path) -> Option<X509> {
    let bytes = std::fs::read(path).ok()?;
    X509::from_der(&bytes)
        .ok()
        .or_else(|| X509::from_pem(&bytes).ok())
}

/// Picks the server endpoint for the configured security, keeping the
/// host and port we were given (servers often advertise a host name the
/// gateway cannot resolve).
fn choose(
    endpoints: &[EndpointDescription],
    url: &str,
    policy: SecurityPolicy,
    mode: SecurityMode,
) -> Option<EndpointDescription> {
    let want = crypto_policy(policy);
    let mut ep = endpoints
        .iter()
        .find(|e| {
            e.security_mode == ua_mode(mode)
                && CryptoPolicy::from_uri(e.security_policy_uri.as_ref()) == want
        })
        .cloned()?;
    ep.endpoint_url = url.into();
    Some(ep)
}

fn offered(endpoints: &[EndpointDescription]) -> String {
    let mut list: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let policy = CryptoPolicy::from_uri(e.security_policy_uri.as_ref());
            format!("{}/{:?}", policy.to_str(), e.security_mode)
        })
        .collect();
    list.dedup();
    list.join(", ")
}

fn identity_token(id: &Identity) -> Result<IdentityToken, ConnectError> {
    Ok(match id {
        Identity::Anonymous => IdentityToken::Anonymous,
        Identity::UserName { user, password } => {
            IdentityToken::UserName(user.clone(), password.expose().into())
        }
        Identity::Certificate { cert, key } => {
            let c = read_any_cert(cert).ok_or_else(|| {
                ConnectError::Setup(format!(
                    "cannot read the user certificate {} as DER or PEM",
                    cert.display()
                ))
            })?;
            let k = CertificateStore::read_pkey(key).map_err(|e| {
                ConnectError::Setup(format!(
                    "cannot read the user private key {}: {e}",
                    key.display()
                ))
            })?;
            IdentityToken::X509(Box::new(c), Box::new(k))
        }
    })
}

fn who(id: &Identity) -> String {
    match id {
        Identity::Anonymous => "anonymous".into(),
        Identity::UserName { user, .. } => format!("user {user:?}"),
        Identity::Certificate { cert, .. } => format!("certificate {}", cert.display()),
    }
}

/// The canonical file name the store gives a certificate, for messages.
fn rejected_path(pki: &Path, der: &[u8]) -> Option<PathBuf> {
    let cert = X509::from_der(der).ok()?;
    Some(
        pki.join("rejected")
            .join(CertificateStore::cert_file_name(&cert)),
    )
}

/// Opens a session on `dev`'s server, everything bounded by `timeout`.
pub async fn connect(
    client: &mut Client,
    dev: &OpcUaDevice,
    pki: &Path,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let url = dev.endpoint.as_str();
    adopt_trusted(pki);
    let endpoints =
        match tokio::time::timeout(timeout, client.get_server_endpoints_from_url(url)).await {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    endpoint: url.into(),
                    timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(ConnectError::Unreachable {
                    endpoint: url.into(),
                    status: e.status().sub_code().name().to_string(),
                })
            }
            Ok(Ok(eps)) => eps,
        };
    let Some(ep) = choose(&endpoints, url, dev.policy, dev.mode) else {
        return Err(ConnectError::NoEndpoint {
            endpoint: url.into(),
            policy: dev.policy.name(),
            mode: dev.mode,
            offered: offered(&endpoints),
        });
    };
    let server_cert = ep.server_certificate.value.clone().unwrap_or_default();
    let token = identity_token(&dev.identity)?;
    let (session, event_loop) = client
        .session_builder()
        .connect_to_endpoint_directly(ep)
        .and_then(|b| {
            b.user_identity_token(token)
                .build(client.certificate_store().clone())
        })
        .map_err(|e| ConnectError::Setup(format!("{url}: {e}")))?;
    session.disable_reconnects();

    let (state_tx, mut state_rx) = watch::channel(State::Connecting);
    let (lost_tx, lost_rx) = watch::channel(None);
    let opened = tokio::time::Instant::now();
    let last_publish = Arc::new(AtomicU64::new(0));
    let published = last_publish.clone();
    let task = tokio::spawn(async move {
        let events = event_loop.enter();
        tokio::pin!(events);
        let mut up = false;
        loop {
            match events.next().await {
                Some(Ok(SessionPollResult::Reconnected(_))) => {
                    up = true;
                    let _ = state_tx.send(State::Up);
                }
                Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                    let _ = lost_tx.send(Some(code.sub_code().name().to_string()));
                }
                Some(Ok(SessionPollResult::Subscription(SubscriptionActivity::Publish))) => {
                    published.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                // A failed Publish (BadNoSubscription included: a Publish
                // can overtake the CreateSubscription that triggered it) is
                // not the end by itself; a subscription that is really gone
                // falls silent, which the device task notices.
                Some(Ok(_)) => {}
                Some(Err(code)) => {
                    if up {
                        let _ = lost_tx.send(Some(code.sub_code().name().to_string()));
                    } else {
                        let _ = state_tx.send(State::Failed(code));
                    }
                    break;
                }
                None => {
                    let _ = lost_tx.send(Some("closed".into()));
                    if !up {
                        let _ = state_tx.send(State::Failed(StatusCode::BadConnectionClosed));
                    }
                    break;
                }
            }
        }
    });
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            let s = state_rx.borrow_and_update().clone();
            match s {
                State::Connecting => {}
                other => return other,
            }
            if state_rx.changed().await.is_err() {
                return State::Failed(StatusCode::BadConnectionClosed);
            }
        }
    })
    .await;
    let conn = Connection {
        session,
        lost: lost_rx,
        last_publish,
        opened,
        task,
    };
    match outcome {
        Ok(State::Up) => Ok(conn),
        Err(_) => Err(ConnectError::Timeout {
            endpoint: url.into(),
            timeout,
        }),
        Ok(State::Failed(code)) => Err(classify(code, url, dev, pki, &server_cert)),
        Ok(State::Connecting) => Err(ConnectError::Timeout {
            endpoint: url.into(),
            timeout,
        }),
    }
}

#[derive(Debug, Clone)]
enum State {
    Connecting,
    Up,
    Failed(StatusCode),
}

fn classify(
    code: StatusCode,
    url: &str,
    dev: &OpcUaDevice,
    pki: &Path,
    server_cert: &[u8],
) -> ConnectError {
    let name = code.sub_code().name();
    let sub = code.sub_code();
    use opcua::types::SubStatusCode as S;
    match sub {
        S::BadCertificateUntrusted | S::BadSecurityChecksFailed
            if dev.policy != SecurityPolicy::None =>
        {
            match rejected_path(pki, server_cert) {
                Some(rejected) if rejected.exists() => ConnectError::Untrusted {
                    endpoint: url.into(),
                    rejected: rejected.display().to_string(),
                    trusted: pki.join("trusted").display().to_string(),
                },
                _ => ConnectError::ClientRejected {
                    endpoint: url.into(),
                    status: name,
                    own: pki.join("own/cert.der").display().to_string(),
                },
            }
        }
        S::BadIdentityTokenRejected
        | S::BadIdentityTokenInvalid
        | S::BadUserAccessDenied
        | S::BadUserSignatureInvalid => ConnectError::Login {
            endpoint: url.into(),
            who: who(&dev.identity),
            status: name,
            fix: match dev.identity {
                Identity::Anonymous => "whether the server allows anonymous access; if not, set identity = \"username\"",
                Identity::UserName { .. } => "username and the password in password_file",
                Identity::Certificate { .. } => "that the server's administrator registered the user certificate",
            },
        },
        S::BadCertificateInvalid
        | S::BadCertificateUriInvalid
        | S::BadCertificateUseNotAllowed
        | S::BadCertificateTimeInvalid
        | S::BadCertificateRevocationUnknown
        | S::BadSecurityPolicyRejected => ConnectError::ClientRejected {
            endpoint: url.into(),
            status: name,
            own: pki.join("own/cert.der").display().to_string(),
        },
        _ => ConnectError::Unreachable {
            endpoint: url.into(),
            status: name.to_string(),
        },
    }
}
