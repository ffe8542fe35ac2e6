//! Is the system clock NTP-synchronised? Timestamps are evidence, so the
//! agent warns at start when it is not, and says so in every status.
//!
//! The kernel knows: NTP daemons (systemd-timesyncd, chrony, ntpd) clear
//! `STA_UNSYNC` once they discipline the clock, and `timedatectl`'s
//! `NTPSynchronized` is computed from the same flag. We ask the kernel with
//! a read-only `adjtimex` (modes = 0), and fall back to `timedatectl` if the
//! call is refused (e.g. a seccomp filter without `adjtimex`).

use std::process::{Command, Stdio};

/// Clock-sync state, as it appears in `status` and the MQTT status message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSync {
    Synchronized,
    Unsynchronized,
    /// Neither the kernel nor timedatectl would say.
    Unknown,
}

impl ClockSync {
    pub fn name(self) -> &'static str {
        match self {
            ClockSync::Synchronized => "synchronized",
            ClockSync::Unsynchronized => "unsynchronized",
            ClockSync::Unknown => "unknown",
        }
    }
}

/// The current state; cheap (one system call) on the usual path.
pub fn check() -> ClockSync {
    match kernel() {
        Some(s) => s,
        None => timedatectl().unwrap_or(ClockSync::Unknown),
    }
}

/// Read-only `adjtimex`: `None` if the call fails.
fn kernel() -> Option<ClockSync> {
    // SAFETY: timex is plain old data; all zeros (modes = 0) asks for the
    // current state without changing anything.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, exclusively borrowed timex for the duration of the call.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(from_kernel(state, tx.status))
}

/// `state` is adjtimex's return value, `status` the `STA_*` flags.
fn from_kernel(state: libc::c_int, status: libc::c_int) -> ClockSync {
    if state == libc::TIME_ERROR || status & libc::STA_UNSYNC != 0 {
        ClockSync::Unsynchronized
    } else {
        ClockSync::Synchronized
    }
}

fn timedatectl() -> Option<ClockSync> {
    let out = Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    from_timedatectl(&String::from_utf8_lossy(&out.stdout))
}

fn from_timedatectl(out: &str) -> Option<ClockSync> {
    match out.trim() {
        "yes" => Some(ClockSync::Synchronized),
        "no" => Some(ClockSync::Unsynchronized),
        _ => None,
    }
}

/// Logs a WARN if the clock is not known to be synchronised; at start.
pub fn warn_if_unsynchronized() -> ClockSync {
    let s = check();
    match s {
        ClockSync::Synchronized => tracing::info!("System clock is NTP-synchronised"),
        ClockSync::Unsynchronized => tracing::warn!(
            clock_sync = s.name(),
            "System clock is not NTP-synchronised; readings are stamped with it and are evidence: enable NTP on this gateway (timedatectl set-ntp true)"
        ),
        ClockSync::Unknown => tracing::warn!(
            clock_sync = s.name(),
            "Cannot tell whether the system clock is NTP-synchronised; check NTP on this gateway"
        ),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_flags() {
        assert_eq!(from_kernel(libc::TIME_OK, 0), ClockSync::Synchronized);
        assert_eq!(
            from_kernel(libc::TIME_OK, libc::STA_UNSYNC),
            ClockSync::Unsynchronized
        );
        assert_eq!(from_kernel(libc::TIME_ERROR, 0), ClockSync::Unsynchronized);
    }

    #[test]
    fn timedatectl_output() {
        assert_eq!(from_timedatectl("yes\n"), Some(ClockSync::Synchronized));
        assert_eq!(from_timedatectl("no\n"), Some(ClockSync::Unsynchronized));
        assert_eq!(from_timedatectl(""), None);
    }

    #[test]
    fn check_answers_on_this_machine() {
        // Whatever the state, asking must not fail or block.
        let s = check();
        assert!(["synchronized", "unsynchronized", "unknown"].contains(&s.name()));
    }
}
