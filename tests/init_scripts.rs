//! The init scripts for systems without systemd: both pass shellcheck;
//! the sysvinit/busybox script starts, restarts, reloads and stops the
//! real agent under busybox's own `start-stop-daemon`; the procd script
//! asks procd for what it should (stubbed procd functions: procd itself
//! only runs on OpenWrt).
//!
//! The agent talks only to closed loopback ports here. `logger` is a stand-in
//! that appends its arguments to a file, so the test sees exactly what
//! would reach syslog.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_zgsz-agent");
const SYSVINIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sysvinit/zgsz-agent");
const PROCD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/procd/zgsz-agent");

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

fn config_text(state: &Path) -> String {
    format!(
        r#"
[agent]
gateway_id = "gw-init"
state_dir = "{}"

[enterprise]
name = "测试企业"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"

[mqtt]
host = "127.0.0.1"
port = {}
tls = false

[[devices]]
id = "lathe-01"
address = "127.0.0.1:{}"
poll_interval = "1s"
timeout = "1s"
[[devices.tags]]
name = "count"
area = "holding_register"
address = 0
type = "u16"
"#,
        state.display(),
        closed_port(),
        closed_port()
    )
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

fn user_id(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The real uid of a running process, from /proc.
fn process_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Polls `f` every 50 ms until it returns Some, or panics after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sandbox for the sysvinit script: the agent binary, a config, a
/// defaults file pointing the script at them, and a PATH whose
/// `start-stop-daemon` is busybox's and whose `logger` writes to a file.
struct Sandbox {
    dir: tempfile::TempDir,
    path: String,
}

impl Sandbox {
    fn new(busybox: &Path) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        // The agent may run as another user: it must reach these files.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        let bin = root.join("bin");
        fs::create_dir(&bin).expect("bin dir");
        symlink(busybox, bin.join("start-stop-daemon")).expect("symlink start-stop-daemon");
        let syslog = root.join("syslog");
        fs::write(&syslog, "").expect("syslog file");
        fs::set_permissions(&syslog, fs::Permissions::from_mode(0o666)).expect("chmod syslog");
        let logger = bin.join("logger");
        fs::write(
            &logger,
            format!("#!/bin/sh\necho \"$*\" >>'{}'\n", syslog.display()),
        )
        .expect("logger stand-in");
        fs::set_permissions(logger, fs::Permissions::from_mode(0o755)).expect("chmod logger");
        // Copies, so that the agent's user can reach them wherever the
        // checkout is.
        fs::copy(BIN, root.join("zgsz-agent")).expect("copy the agent");
        fs::copy(SYSVINIT, root.join("zgsz-agent.init")).expect("copy the script");
        let state = root.join("state");
        fs::write(root.join("agent.toml"), config_text(&state)).expect("config");
        fs::set_permissions(root.join("agent.toml"), fs::Permissions::from_mode(0o644))
            .expect("chmod config");
        fs::write(
            root.join("defaults"),
            format!(
                "DAEMON={root}/zgsz-agent\nCONFIG={root}/agent.toml\nSTATE_DIR={state}\n\
                 RUN_DIR={root}/run\nAGENT_USER=nobody\nRESTART_DELAY=1\nSTOP_TIMEOUT=20\n",
                root = root.display(),
                state = state.display()
            ),
        )
        .expect("defaults file");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Sandbox { dir, path }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn script(&self, action: &str) -> Output {
        Command::new(self.root().join("zgsz-agent.init"))
            .arg(action)
            .env("PATH", &self.path)
            .env("ZGSZ_AGENT_DEFAULTS", self.root().join("defaults"))
            .output()
            .expect("run the init script")
    }

    fn syslog(&self) -> String {
        fs::read_to_string(self.root().join("syslog")).unwrap_or_default()
    }

    fn supervisor_pid(&self) -> Option<u32> {
        read_pid(&self.root().join("run/zgsz-agent.pid"))
    }

    fn agent_pid(&self) -> Option<u32> {
        read_pid(&self.root().join("run/agent.pid")).filter(|&p| alive(p))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A failed assertion must not leave the agent running.
        let pids = [self.agent_pid(), self.supervisor_pid()];
        let _ = self.script("stop");
        for pid in pids.into_iter().flatten() {
            if alive(pid) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs busybox and shellcheck; .ci/run installs them"]
fn init_scripts_pass_shellcheck() {
    for script in [SYSVINIT, PROCD] {
        let out = Command::new("shellcheck")
            .arg(script)
            .output()
            .expect("shellcheck is installed");
        assert!(
            out.status.success(),
            "shellcheck {script}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
#[ignore = "needs busybox and shellcheck; .ci/run installs them"]
fn sysvinit_script_runs_the_agent_under_busybox_start_stop_daemon() {
    let busybox = which("busybox").expect("busybox is installed");
    let sb = Sandbox::new(&busybox);

    ok(&sb.script("start"), "start");
    let supervisor = sb.supervisor_pid().expect("start wrote the pidfile");
    assert!(alive(supervisor), "the supervisor runs");
    let first = wait_for("the agent to start", Duration::from_secs(10), || {
        sb.agent_pid()
    });
    let cmdline = fs::read(format!("/proc/{first}/cmdline")).expect("agent cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("run"),
        "the agent runs `run`"
    );
    if is_root() {
        let nobody = user_id("nobody").expect("the user nobody exists");
        assert_eq!(process_uid(first), Some(nobody), "the agent runs as nobody");
        assert_eq!(
            process_uid(supervisor),
            Some(nobody),
            "so does its supervisor"
        );
    }
    ok(&sb.script("status"), "status");
    // Its log reaches syslog, tagged, at its own priority, without the
    // priority prefix.
    wait_for("the agent's log in syslog", Duration::from_secs(10), || {
        sb.syslog()
            .lines()
            .any(|l| l.starts_with("-t zgsz-agent -p daemon.info -- ") && l.contains("Outbox open"))
            .then_some(())
    });
    assert!(
        !sb.syslog().contains("<6>"),
        "priority prefixes are stripped"
    );

    // Killed, it comes back, and the supervisor says why in syslog.
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let second = wait_for("the agent to be restarted", Duration::from_secs(15), || {
        sb.agent_pid().filter(|&p| p != first)
    });
    assert!(alive(second));
    assert!(!alive(first), "the killed agent is gone, not a zombie");
    assert!(
        sb.syslog()
            .contains("-p daemon.warning -- zgsz-agent exited with status 137"),
        "the restart is logged: {}",
        sb.syslog()
    );

    // reload is SIGHUP to the agent, not a restart.
    ok(&sb.script("reload"), "reload");
    wait_for("the reload in syslog", Duration::from_secs(10), || {
        sb.syslog()
            .contains("Config reloaded; nothing changed")
            .then_some(())
    });
    assert_eq!(sb.agent_pid(), Some(second), "reload keeps the process");

    ok(&sb.script("stop"), "stop");
    assert!(!alive(second), "stop ends the agent");
    assert!(!alive(supervisor), "stop ends the supervisor");
    assert!(
        !sb.root().join("run/zgsz-agent.pid").exists(),
        "pidfile removed"
    );
    assert!(
        sb.syslog().contains("Agent stopped; outbox flushed"),
        "the agent shut down cleanly: {}",
        sb.syslog()
    );
    let status = sb.script("status");
    assert_eq!(status.status.code(), Some(3), "status after stop");
}

#[test]
#[ignore = "needs busybox and shellcheck; .ci/run installs them"]
fn sysvinit_script_refuses_a_config_with_errors() {
    let busybox = which("busybox").expect("busybox is installed");
    let sb = Sandbox::new(&busybox);
    fs::write(sb.root().join("agent.toml"), "[agent]\nno_such_key = 1\n").expect("bad config");
    let out = sb.script("start");
    assert_eq!(out.status.code(), Some(6), "start on a bad config");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("has errors"),
        "start says why"
    );
    assert_eq!(sb.supervisor_pid(), None, "nothing was started");
}

/// Sources the procd script with stand-ins for procd's shell functions
/// and calls `start_service`; returns its exit status and what it asked.
fn procd_start(agent_user: &str, config: &Path, state: &Path) -> (bool, String) {
    let harness = r#"
procd_open_instance() { echo "open"; }
procd_set_param() { echo "param $*"; }
procd_close_instance() { echo "close"; }
. "$1"
PROG=$2 CONFIG=$3 STATE_DIR=$4 AGENT_USER=$5
start_service
"#;
    let out = Command::new("sh")
        .args(["-c", harness, "sh", PROCD, BIN])
        .arg(config)
        .arg(state)
        .arg(agent_user)
        .output()
        .expect("run sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn procd_script_asks_for_respawn_syslog_and_the_agents_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let config = dir.path().join("agent.toml");
    fs::write(&config, config_text(&state)).expect("config");

    let (ok, asked) = procd_start("no-such-user-zgsz", &config, &state);
    assert!(ok, "start_service: {asked}");
    for want in [
        "param respawn 3600 5 0",
        "param stdout 1",
        "param stderr 1",
        "param term_timeout 30",
    ] {
        assert!(
            asked.lines().any(|l| l == want),
            "missing `{want}` in:\n{asked}"
        );
    }
    let command = asked
        .lines()
        .find(|l| l.starts_with("param command "))
        .expect("a command");
    assert!(command.ends_with(&format!("run --config {}", config.display())));
    assert!(
        !asked.contains("param user"),
        "root when the user does not exist"
    );
    assert!(state.is_dir(), "the state directory is created");

    if is_root() {
        let (ok, asked) = procd_start("nobody", &config, &state);
        assert!(ok, "start_service: {asked}");
        assert!(asked.lines().any(|l| l == "param user nobody"), "{asked}");
    }

    fs::write(&config, "[agent]\nno_such_key = 1\n").expect("bad config");
    let (ok, asked) = procd_start("nobody", &config, &state);
    assert!(!ok, "start_service refuses a config with errors");
    assert!(!asked.contains("open"), "no instance for a bad config");
}
