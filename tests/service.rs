//! The agent as systemd runs it, as a child process on loopback:
//! readiness and watchdog notifications over a NOTIFY_SOCKET we own,
//! SIGHUP reloads (a changed device restarts, an unchanged one keeps its
//! connection, a bad file changes nothing), and SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::net::{TcpListener, TcpStream, UnixDatagram};
use tokio::sync::mpsc;
use zgsz_agent::sim::{Bank, SimDevice};

const BIN: &str = env!("CARGO_BIN_EXE_zgsz-agent");

/// A port nothing listens on: the uplink keeps backing off.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn config_text(state: &Path, mqtt_port: u16, devices: &[(&str, String, &str)]) -> String {
    let mut t = format!(
        r#"
[agent]
gateway_id = "gw-service"
state_dir = "{}"

[enterprise]
name = "测试企业"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
tls = false
"#,
        state.display()
    );
    for (id, addr, interval) in devices {
        t.push_str(&format!(
            "\n[[devices]]\nid = \"{id}\"\naddress = \"{addr}\"\npoll_interval = \"{interval}\"\ntimeout = \"5s\"\n\
             [[devices.tags]]\nname = \"count\"\narea = \"holding_register\"\naddress = 0\ntype = \"u16\"\n"
        ));
    }
    t
}

async fn sim() -> SimDevice {
    let mut bank = Bank::new(16);
    bank.holding[0] = 7;
    SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(bank)))]))
        .await
        .unwrap()
}

/// A TCP relay in front of a device that counts the connections it accepts.
async fn counting_relay(upstream: std::net::SocketAddr) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, count)
}

/// The child, with its stderr lines forwarded to a channel.
struct Agent {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Agent {
    fn start(config: &Path, env: &[(&str, String)]) -> Agent {
        Agent::start_with_args(config, env, &[])
    }

    /// `zgsz-agent ARGS... run --config CONFIG`.
    fn start_with_args(config: &Path, env: &[(&str, String)], args: &[&str]) -> Agent {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start zgsz-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `what` and returns it.
    async fn wait_log(&mut self, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "agent exited before logging {what:?}:\n{}",
                    self.seen.join("\n")
                ),
                Err(_) => panic!("no log line {what:?} within 20s:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit code.
    async fn stop(self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        tokio::task::spawn_blocking(move || {
            let mut agent = self;
            agent.child.wait().map(|s| s.code())
        })
        .await
        .unwrap()
        .unwrap()
    }
}

/// A failing test must not leave its agent running.
impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `status --json` of the agent's state directory.
fn status(config: &Path) -> Option<Json> {
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn good(status: &Json, device: &str) -> u64 {
    status["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == device))
        .and_then(|d| d["good"].as_u64())
        .unwrap_or(0)
}

/// Waits until `device` has more than `above` good readings in the outbox.
async fn wait_good(config: &Path, device: &str, above: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = status(config) {
            let n = good(&s, device);
            if n > above {
                return n;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{device} did not get past {above} good readings"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ready_then_watchdog_pings_while_the_broker_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sim().await;
    let config = dir.path().join("agent.toml");
    let text = config_text(
        &dir.path().join("state"),
        closed_port().await,
        &[("a", dev.addr.to_string(), "200ms")],
    );
    std::fs::write(&config, text).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut agent = Agent::start(
        &config,
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "4000000".into()),
        ],
    );
    let mut buf = vec![0u8; 4096];
    let mut recv = async || {
        let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
            .await
            .expect("a notification within 20s")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv().await;
    assert!(first.contains("READY=1"), "{first}");
    // READY comes after the outbox is open and the sources started.
    assert!(dir
        .path()
        .join("state")
        .read_dir()
        .unwrap()
        .next()
        .is_some());
    // The broker never answers, yet both loops progress: pings keep coming.
    let mut pings = 0;
    while pings < 3 {
        let m = recv().await;
        assert!(!m.contains("STOPPING"), "{m}");
        if m.contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    agent.signal(libc::SIGHUP);
    let mut reloaded = String::new();
    while !reloaded.contains("READY=1") {
        reloaded = recv().await;
    }
    agent.wait_log("nothing changed").await;
    agent.signal(libc::SIGTERM);
    let mut last = String::new();
    while !last.contains("STOPPING=1") {
        last = recv().await;
    }
    assert_eq!(agent.stop().await, Some(0));
}

#[tokio::test]
async fn sighup_restarts_changed_devices_only_and_refuses_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let (dev_a, dev_b) = (sim().await, sim().await);
    let (addr_a, connects_a) = counting_relay(dev_a.addr).await;
    let (addr_b, connects_b) = counting_relay(dev_b.addr).await;
    let state = dir.path().join("state");
    let port = closed_port().await;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        config_text(
            &state,
            port,
            &[
                ("a", addr_a.clone(), "100ms"),
                ("b", addr_b.clone(), "100ms"),
            ],
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&config, &[]);
    wait_good(&config, "a", 0).await;
    wait_good(&config, "b", 0).await;
    assert_eq!(connects_a.load(Ordering::SeqCst), 1);
    assert_eq!(connects_b.load(Ordering::SeqCst), 1);

    // b changes (poll interval), a does not, c is added.
    let dev_c = sim().await;
    std::fs::write(
        &config,
        config_text(
            &state,
            port,
            &[
                ("a", addr_a.clone(), "100ms"),
                ("b", addr_b.clone(), "150ms"),
                ("c", dev_c.addr.to_string(), "100ms"),
            ],
        ),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    let line = agent.wait_log("Config reloaded").await;
    assert!(line.contains(" changed=b "), "{line}");
    assert!(line.contains("unchanged=a"), "{line}");
    assert!(line.contains("added=c"), "{line}");
    let s = status(&config).expect("status");
    wait_good(&config, "c", 0).await;
    wait_good(&config, "a", good(&s, "a")).await;
    wait_good(&config, "b", good(&s, "b")).await;
    assert_eq!(
        connects_a.load(Ordering::SeqCst),
        1,
        "the unchanged device kept its connection"
    );
    // The restarted device opens a new connection on its first poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while connects_b.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed device did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connects_b.load(Ordering::SeqCst), 2);

    // A bad file: logged as an ERROR, the running config stays.
    std::fs::write(
        &config,
        "[agent]\ngateway_id = \"gw\"\nnot valid toml = = \n",
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    let line = agent.wait_log("Config reload refused").await;
    assert!(line.contains("ERROR"), "{line}");
    // The old config is still running: restore the file for `status` and
    // watch a, b and c keep polling.
    std::fs::write(
        &config,
        config_text(
            &state,
            port,
            &[
                ("a", addr_a, "100ms"),
                ("b", addr_b, "150ms"),
                ("c", dev_c.addr.to_string(), "100ms"),
            ],
        ),
    )
    .unwrap();
    let s = status(&config).expect("status");
    for d in ["a", "b", "c"] {
        wait_good(&config, d, good(&s, d)).await;
    }
    assert!(agent.alive());
    assert_eq!(connects_a.load(Ordering::SeqCst), 1);
    assert_eq!(agent.stop().await, Some(0));
}

#[tokio::test]
async fn status_reports_clock_sync() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sim().await;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        config_text(
            &dir.path().join("state"),
            closed_port().await,
            &[("a", dev.addr.to_string(), "100ms")],
        ),
    )
    .unwrap();
    // As the unit runs it: journald format, syslog priority prefixes.
    let mut agent = Agent::start_with_args(&config, &[], &["--log-format", "journald"]);
    let line = agent.wait_log("Starting").await;
    assert!(line.starts_with("<6>"), "{line}");
    let line = agent.wait_log("NTP-synchronised").await;
    assert!(line.starts_with("<4>") || line.starts_with("<6>"), "{line}");
    assert!(!line.contains('\u{1b}'), "no colour codes: {line}");
    wait_good(&config, "a", 0).await;
    let s = status(&config).expect("status --json");
    let sync = s["clock_sync"]
        .as_str()
        .expect("clock_sync in status --json");
    assert!(["synchronized", "unsynchronized", "unknown"].contains(&sync));
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("clock             {sync}")),
        "{text}"
    );
    assert_eq!(agent.stop().await, Some(0));
}
