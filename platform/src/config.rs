//! The receiver's TOML config. Every key is checked by `check`, which runs
//! exactly what `run` runs before it connects; an error names the file, the
//! key and the fix.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: Database,
    pub mqtt: Mqtt,
    #[serde(default)]
    pub verify: Verify,
    /// The evidence-report endpoint; served by `run` only when the section
    /// is present.
    #[serde(default)]
    pub http: Option<Http>,
}

/// `[http]`: where `run` serves the pages (behind their login) and
/// `POST /api/v1/reports`, which has no login; so the default is
/// loopback, and anywhere else belongs behind a reverse proxy that
/// authenticates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// `address:port`. Default `127.0.0.1:8088`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Who may log in to the pages; none by default (nobody can).
    #[serde(default)]
    pub users: Vec<HttpUser>,
}

/// `[[http.users]]`: one login of the pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUser {
    pub name: String,
    /// The argon2id PHC string `zgsz-platform hash-password` prints; never
    /// the password.
    pub password_hash: String,
}

impl Http {
    /// The address; [`Config::parse`] has checked that it parses.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 8088)))
    }
}

/// Exactly one of `path` and `url`: the key set is the backend chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// SQLite: the database file; a relative path is relative to the
    /// config file. For one instance (or several on one host).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PostgreSQL: a connection URL, e.g.
    /// `postgresql://zgsz@/zgsz?host=/run/postgresql`. For several
    /// instances sharing the load.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL: connections one instance ingests on at once, each
    /// taking its share of the gateways. Default 4; SQLite writes on one.
    #[serde(default = "default_connections")]
    pub connections: usize,
}

fn default_connections() -> usize {
    4
}

/// The storage backend `[database]` selects, as the store opens it.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite { path: PathBuf },
    Postgres { url: String },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Backend {
    /// For `check` and logs: the backend and where, without a password.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite { path } => format!("SQLite {}", path.display()),
            Backend::Postgres { url } => match url.parse::<tokio_postgres::Config>() {
                Ok(c) => {
                    let hosts: Vec<String> = c
                        .get_hosts()
                        .iter()
                        .map(|h| match h {
                            tokio_postgres::config::Host::Tcp(h) => h.clone(),
                            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                        })
                        .collect();
                    format!(
                        "PostgreSQL database {} on {} as {}",
                        c.get_dbname().unwrap_or("(the user's name)"),
                        if hosts.is_empty() {
                            "(no host)".into()
                        } else {
                            hosts.join(", ")
                        },
                        c.get_user().unwrap_or("(the OS user)")
                    )
                }
                Err(_) => "PostgreSQL (an invalid url)".into(),
            },
        }
    }
}

impl Database {
    /// The backend; [`Config::parse`] has checked that exactly one key is
    /// set.
    pub fn backend(&self) -> Backend {
        match (&self.path, &self.url) {
            (_, Some(url)) => Backend::Postgres { url: url.clone() },
            (Some(path), None) => Backend::Sqlite { path: path.clone() },
            (None, None) => Backend::Sqlite {
                path: PathBuf::new(),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    pub host: String,
    /// Default 1883.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Must be stable across restarts: the broker keeps this instance's
    /// persistent session (and its queued share) under it.
    pub client_id: String,
    /// The shared-subscription group; every instance of one receiver uses
    /// the same group, so the broker splits the messages between them.
    #[serde(default = "default_group")]
    pub share_group: String,
    /// The gateways' `topic_prefix`. Default `zgsz`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Default 30 s.
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// A window whose declared CNC rate exceeds the verified one by more
    /// than this (0..1) is flagged. Default 0.2.
    #[serde(default = "default_gap")]
    pub max_declared_verified_gap: f64,
    /// A gateway silent (no message, no status) for longer than this is
    /// listed by `quality` as stale. Default 7200 s: a gateway sends a
    /// sealed window every hour, so two missed hours.
    #[serde(default = "default_stale")]
    pub stale_after_s: u64,
}

impl Default for Verify {
    fn default() -> Verify {
        Verify {
            max_declared_verified_gap: default_gap(),
            stale_after_s: default_stale(),
        }
    }
}

fn default_port() -> u16 {
    1883
}
fn default_group() -> String {
    "zgsz-platform".into()
}
fn default_prefix() -> String {
    "zgsz".into()
}
fn default_keepalive() -> u64 {
    30
}
fn default_gap() -> f64 {
    0.2
}
fn default_stale() -> u64 {
    7200
}
fn default_listen() -> String {
    "127.0.0.1:8088".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read it: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {problem}")]
    Invalid {
        file: String,
        /// The key path, e.g. `mqtt.share_group`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: name.clone(),
            source,
        })?;
        let mut cfg = Config::parse(&name, &text)?;
        if let Some(path) = &mut cfg.database.path {
            if path.is_relative() {
                if let Some(dir) = file.parent() {
                    *path = dir.join(&*path);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
            file: file.into(),
            key: "(syntax)".into(),
            problem: format!("{}; fix the TOML syntax", e.message()),
        })?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                file: file.into(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                problem: format!(
                    "{}; see docs/platform.md for the keys and their types",
                    e.inner().message()
                ),
            }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                file: file.into(),
                key: key.into(),
                problem,
            })
        };
        let m = &self.mqtt;
        if m.host.trim().is_empty() {
            return bad(
                "mqtt.host",
                "is empty; set the broker's host name or address".into(),
            );
        }
        if m.port == 0 {
            return bad("mqtt.port", "is 0; set the broker's port, e.g. 1883".into());
        }
        if m.client_id.is_empty() || m.client_id.len() > 64 {
            return bad(
                "mqtt.client_id",
                "must be 1 to 64 characters, unique per instance and stable across restarts, e.g. \"zgsz-platform-1\"".into(),
            );
        }
        if m.share_group.is_empty() || m.share_group.contains(['/', '+', '#']) {
            return bad(
                "mqtt.share_group",
                format!(
                    "{:?} must be non-empty without '/', '+' or '#'; use e.g. \"zgsz-platform\"",
                    m.share_group
                ),
            );
        }
        let p = &m.topic_prefix;
        if p.is_empty() || p.contains(['+', '#']) || p.starts_with('/') || p.ends_with('/') {
            return bad(
                "mqtt.topic_prefix",
                format!(
                    "{p:?} must be the gateways' topic_prefix: non-empty, no '+'/'#', no leading or trailing '/'"
                ),
            );
        }
        if m.username.is_some() != m.password.is_some() {
            return bad(
                "mqtt.password",
                "username and password go together; set both or neither".into(),
            );
        }
        if m.keepalive_s < 5 || m.keepalive_s > 3600 {
            return bad("mqtt.keepalive_s", "must be 5 to 3600 seconds".into());
        }
        let g = self.verify.max_declared_verified_gap;
        if !(0.0..=1.0).contains(&g) {
            return bad(
                "verify.max_declared_verified_gap",
                format!("{g} is not a fraction; use a value from 0 to 1, e.g. 0.2"),
            );
        }
        if self.verify.stale_after_s < 60 {
            return bad(
                "verify.stale_after_s",
                format!(
                    "{} s is shorter than a gateway's status interval; use at least 60, e.g. 7200",
                    self.verify.stale_after_s
                ),
            );
        }
        if let Some(h) = &self.http {
            for u in &h.users {
                if let Err(e) = crate::auth::check_hash(&u.password_hash) {
                    return bad(
                        "http.users.password_hash",
                        format!(
                            "user {:?}: {e}; make one with `zgsz-platform hash-password`",
                            u.name
                        ),
                    );
                }
            }
            if h.listen.parse::<std::net::SocketAddr>().is_err() {
                return bad(
                    "http.listen",
                    format!(
                        "{:?} is not an address:port; use e.g. \"127.0.0.1:8088\" (the endpoint has no login: keep it on loopback or behind a reverse proxy)",
                        h.listen
                    ),
                );
            }
        }
        self.validate_database(file)
    }

    fn validate_database(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                file: file.into(),
                key: key.into(),
                problem,
            })
        };
        if !(1..=64).contains(&self.database.connections) {
            return bad(
                "database.connections",
                format!(
                    "is {}; set 1 to 64 (default 4, for PostgreSQL; SQLite writes on one)",
                    self.database.connections
                ),
            );
        }
        match (&self.database.path, &self.database.url) {
            (Some(_), Some(_)) => bad(
                "database.url",
                "and database.path are both set; keep path for SQLite or url for PostgreSQL, not both".into(),
            ),
            (None, None) => bad(
                "database",
                "sets no backend; set path = \"platform.db\" (SQLite) or url = \"postgresql://zgsz@/zgsz?host=/run/postgresql\" (PostgreSQL)".into(),
            ),
            (Some(path), None) if path.as_os_str().is_empty() => {
                bad("database.path", "is empty; name the SQLite file".into())
            }
            (Some(_), None) => Ok(()),
            (None, Some(url)) => {
                if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
                    return bad(
                        "database.url",
                        "must be a postgresql:// URL, e.g. \"postgresql://zgsz@/zgsz?host=/run/postgresql\" (for SQLite, set path instead)".into(),
                    );
                }
                match url.parse::<tokio_postgres::Config>() {
                    Ok(c) if c.get_hosts().is_empty() => bad(
                        "database.url",
                        "names no host; add one, e.g. postgresql://zgsz@db.example/zgsz, or a socket directory: postgresql://zgsz@/zgsz?host=/run/postgresql".into(),
                    ),
                    Ok(c) if c.get_ssl_mode() == tokio_postgres::config::SslMode::Require => bad(
                        "database.url",
                        "asks for sslmode=require, but the receiver has no TLS to PostgreSQL yet; drop sslmode and keep the connection on a trusted network or a Unix socket".into(),
                    ),
                    Ok(_) => Ok(()),
                    Err(e) => bad(
                        "database.url",
                        format!("{e}; use e.g. \"postgresql://zgsz@/zgsz?host=/run/postgresql\""),
                    ),
                }
            }
        }
    }

    /// The shared-subscription filters of the three streams.
    ///
    /// An empty `share_group` (refused in a config file; the demo sets
    /// it) subscribes without a shared subscription, for a single
    /// instance on a broker whose shared subscriptions keep one filter per
    /// group, as the demo's embedded broker does.
    pub fn filters(&self) -> Vec<String> {
        ["metrics", "states", "status"]
            .iter()
            .map(|s| {
                let filter = format!("{}/+/+/+/{s}", self.mqtt.topic_prefix);
                if self.mqtt.share_group.is_empty() {
                    filter
                } else {
                    format!("$share/{}/{filter}", self.mqtt.share_group)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[database]
path = "platform.db"
[mqtt]
host = "127.0.0.1"
client_id = "zgsz-platform-1"
"#;

    fn err(text: &str) -> String {
        Config::parse("p.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_filters() {
        let c = Config::parse("p.toml", GOOD).unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.database.connections, 4);
        assert_eq!(
            c.filters()[0],
            "$share/zgsz-platform/zgsz/+/+/+/metrics".to_string()
        );
        assert_eq!(c.verify.max_declared_verified_gap, 0.2);
        assert!(c.http.is_none(), "no [http]: no endpoint");
        let c = Config::parse("p.toml", &format!("{GOOD}[http]\n")).unwrap();
        assert_eq!(
            c.http.map(|h| h.addr()),
            Some(([127, 0, 0, 1], 8088).into())
        );
        assert_eq!(
            c.database.backend(),
            Backend::Sqlite {
                path: "platform.db".into()
            }
        );
    }

    #[test]
    fn the_url_key_selects_postgresql() {
        let c = Config::parse(
            "p.toml",
            &GOOD.replace(
                "path = \"platform.db\"",
                "url = \"postgresql://zgsz:secret@/zgsz?host=/run/postgresql\"",
            ),
        )
        .unwrap();
        let b = c.database.backend();
        assert!(matches!(b, Backend::Postgres { .. }), "{b:?}");
        assert_eq!(
            b.describe(),
            "PostgreSQL database zgsz on /run/postgresql as zgsz",
            "no password"
        );
    }

    #[test]
    fn errors_name_file_key_and_fix() {
        let e = err(&format!("{GOOD}colour = 1\n"));
        assert!(
            e.starts_with("p.toml: mqtt.colour: unknown field `colour`"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "client_id = \"zgsz-platform-1\"",
            "client_id = \"x\"\nshare_group = \"a/b\"",
        ));
        assert!(
            e.starts_with("p.toml: mqtt.share_group: \"a/b\" must be"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "path = \"platform.db\"",
            "path = \"platform.db\"\nconnections = 0",
        ));
        assert!(
            e.starts_with("p.toml: database.connections: is 0; set 1 to 64"),
            "{e}"
        );
        let e = err(&GOOD.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = \"x\""));
        assert!(e.starts_with("p.toml: mqtt.port: invalid type"), "{e}");
        let e = err(&format!(
            "{GOOD}[verify]\nmax_declared_verified_gap = 2.0\n"
        ));
        assert!(
            e.contains("verify.max_declared_verified_gap: 2 is not a fraction"),
            "{e}"
        );
        let e = err(&GOOD.replace("path = \"platform.db\"", ""));
        assert!(
            e.starts_with("p.toml: database: sets no backend; set path"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "path = \"platform.db\"",
            "path = \"p.db\"\nurl = \"postgresql:///zgsz\"",
        ));
        assert!(
            e.starts_with("p.toml: database.url: and database.path are both set"),
            "{e}"
        );
        let e = err(&GOOD.replace("path = \"platform.db\"", "url = \"mysql://x/y\""));
        assert!(
            e.starts_with("p.toml: database.url: must be a postgresql:// URL"),
            "{e}"
        );
        let e = err(&GOOD.replace("path = \"platform.db\"", "url = \"postgresql:///zgsz\""));
        assert!(e.starts_with("p.toml: database.url: names no host"), "{e}");
        let e = err(&GOOD.replace(
            "path = \"platform.db\"",
            "url = \"postgresql://db.example/zgsz?sslmode=require\"",
        ));
        assert!(e.contains("sslmode=require"), "{e}");
        let e = err(&format!("{GOOD}[http]\nlisten = \"localhost\"\n"));
        assert!(
            e.starts_with("p.toml: http.listen: \"localhost\" is not an address:port"),
            "{e}"
        );
        let e = err(&format!("{GOOD}[http]\nport = 80\n"));
        assert!(e.starts_with("p.toml: http.port: unknown field"), "{e}");
        let e = err(&format!("{GOOD}username = \"u\"\n"));
        assert!(
            e.contains("mqtt.password: username and password go together"),
            "{e}"
        );
    }
}
