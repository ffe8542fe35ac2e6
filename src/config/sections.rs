//! The sections every config has: `[agent]`, `[enterprise]`, `[buffer]`,
//! `[metrics]` and `[http]`, each validated into its typed value.

use std::path::Path;
use std::time::Duration;

use super::{
    duration, is_id, resolve, AgentConfig, Enterprise, HttpConfig, MetricsConfig, Problems,
    RawAgent, RawBuffer, RawEnterprise, RawHttp, RawMetrics, MAX_COMMIT_WINDOW,
};
use crate::identity::{self, UsccCheck};

/// `[agent]`.
pub(super) fn agent(raw: RawAgent, base: &Path, p: &mut Problems) -> AgentConfig {
    if !is_id(&raw.gateway_id) {
        p.error(
            "agent.gateway_id",
            format!(
                "{:?} must be 1 to 64 letters, digits, '-' or '_' (it becomes part of MQTT topics)",
                raw.gateway_id
            ),
        );
    }
    let agent = AgentConfig {
        gateway_id: raw.gateway_id,
        state_dir: resolve(base, &raw.state_dir),
    };
    if let Err(why) = check_state_dir(&agent.state_dir) {
        p.error(
            "agent.state_dir",
            format!("{}: {why}", agent.state_dir.display()),
        );
    }

    agent
}

/// `[enterprise]`: the name, the USCC and the region code are checked.
pub(super) fn enterprise(e: RawEnterprise, p: &mut Problems) -> Enterprise {
    if e.name.trim().is_empty() {
        p.error(
            "enterprise.name",
            "is empty; write the registered enterprise name",
        );
    }
    match identity::check_uscc(&e.uscc) {
        Ok(UsccCheck::Valid) => {}
        Ok(UsccCheck::BadCheckChar { expected, found }) => p.warn(
            "enterprise.uscc",
            format!(
                "check character is {found:?} but GB 32100-2015 gives {expected:?}; \
                 some early-issued codes fail this check, so confirm it against the business licence"
            ),
        ),
        Err(why) => p.error(
            "enterprise.uscc",
            format!("{:?} is not a 统一社会信用代码: {why}; copy the 18-character code from the business licence", e.uscc),
        ),
    }
    if e.region_code.len() != 6 || !e.region_code.bytes().all(|b| b.is_ascii_digit()) {
        p.error(
            "enterprise.region_code",
            format!(
                "{:?} must be a 6-digit GB/T 2260 code, e.g. \"321003\" for 邗江区",
                e.region_code
            ),
        );
    } else if identity::yangzhou_region_name(&e.region_code).is_none() {
        p.warn(
            "enterprise.region_code",
            format!("{} is not a Yangzhou code (321000, 321002, 321003, 321012, 321023, 321081, 321084)", e.region_code),
        );
    }
    Enterprise {
        name: e.name,
        uscc: e.uscc,
        region_code: e.region_code,
        industry: e.industry,
        chain: e.chain,
        declared: e.declared,
    }
}

/// `[buffer]`: the outbox's size cap and commit window (the message size
/// comes from the sinks).
pub(super) fn buffer(b: &RawBuffer, p: &mut Problems) -> (u64, Duration) {
    let max_bytes = match b.max_bytes.bytes() {
        Some(b) if b >= 1 << 20 => b,
        Some(_) => {
            p.error(
                "buffer.max_bytes",
                "is below 1MiB; give the outbox room for at least a few minutes of data",
            );
            1 << 20
        }
        None => {
            p.error(
                "buffer.max_bytes",
                "is not a size; write e.g. 268435456 or \"256MiB\"",
            );
            1 << 20
        }
    };
    if b.max_rows == Some(0) {
        p.error("buffer.max_rows", "is 0; remove the key for no row limit");
    }
    let commit_window = {
        let w = duration(p, "buffer.commit_window", &b.commit_window, Duration::ZERO);
        // Readings in an open window are lost to a crash, and the window
        // adds to every reading's latency: it is meant to be short.
        if w > MAX_COMMIT_WINDOW {
            p.error(
                "buffer.commit_window",
                format!(
                    "{:?} is too long; use at most {}ms (\"100ms\" is the default, \"0ms\" commits at once)",
                    b.commit_window,
                    MAX_COMMIT_WINDOW.as_millis()
                ),
            );
        }
        w
    };

    (max_bytes, commit_window)
}

/// `[metrics]`: window alignment and snapshot cadence.
pub(super) fn metrics(m: &RawMetrics, p: &mut Problems) -> MetricsConfig {
    let utc_offset = match time::UtcOffset::parse(
        &m.utc_offset,
        time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]"),
    ) {
        Ok(o) => o,
        Err(_) => {
            p.error(
                "metrics.utc_offset",
                format!(
                    "{:?} is not a UTC offset; write e.g. \"+08:00\"",
                    m.utc_offset
                ),
            );
            time::UtcOffset::UTC
        }
    };
    MetricsConfig {
        utc_offset,
        snapshot_interval: duration(
            p,
            "metrics.snapshot_interval",
            &m.snapshot_interval,
            Duration::from_secs(1),
        ),
    }
}

/// `[http]`: loopback unless remote access is asked for explicitly.
pub(super) fn http(h: RawHttp, p: &mut Problems) -> Option<HttpConfig> {
    let listen: std::net::SocketAddr = match h.listen.parse() {
        Ok(a) => a,
        Err(_) => {
            p.error(
                "http.listen",
                format!(
                    "{:?} is not an IP address with a port; write e.g. \"127.0.0.1:9187\"",
                    h.listen
                ),
            );
            return None;
        }
    };
    if listen.ip().is_loopback() {
        return Some(HttpConfig { listen });
    }
    if !h.allow_remote {
        p.error(
            "http.listen",
            format!(
                "{listen} is not a loopback address, and /metrics and /healthz have no authentication; \
                 listen on 127.0.0.1:{port}, or set http.allow_remote = true and firewall the port",
                port = listen.port()
            ),
        );
        return None;
    }
    p.warn(
        "http.allow_remote",
        format!("/metrics and /healthz are reachable from the network on {listen} without authentication; firewall the port"),
    );
    Some(HttpConfig { listen })
}

/// The outbox must be able to live here: if the directory exists, it must
/// be a directory we can write to. A directory that does not exist yet is
/// fine (systemd's StateDirectory= creates it; otherwise `run` says
/// clearly that it cannot). Checked without creating anything, so `check`
/// has no side effects.
fn check_state_dir(dir: &Path) -> Result<(), StateDirProblem> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(StateDirProblem::NotADirectory),
        Ok(_) if !writable(dir) => Err(StateDirProblem::NotWritable),
        _ => Ok(()),
    }
}

/// Why the outbox cannot live in `agent.state_dir`.
#[derive(Debug, thiserror::Error)]
enum StateDirProblem {
    #[error("is not a directory; point state_dir at a directory")]
    NotADirectory,
    #[error("is not writable by this user; the outbox lives here, so give the agent's user write access")]
    NotWritable,
}

/// access(2) with W_OK: honours the effective user, groups and read-only mounts.
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}
