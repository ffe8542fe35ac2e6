//! A throw-away mosquitto on a free loopback port, the receiver binary as a
//! process around it, and a publisher standing in for the gateways.
//!
//! Like the agent's `tests/common/mod.rs` launcher: mosquitto runs from a
//! config in a temporary directory and counts as started once it logs that
//! it listens on its port (so a connect cannot reach another process that
//! took the port). Its log is kept, so a test can wait for the broker to
//! have processed a subscribe or a disconnect. Tests that need it are
//! `#[ignore = "needs mosquitto …"]`; without mosquitto they fail when `CI`
//! is set and skip with a notice on stderr otherwise.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use zgsz_platform::config::Backend;

/// The receivers' shared-subscription group.
pub const GROUP: &str = "city";

pub struct Mosquitto {
    pub port: u16,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto; `None` (after a notice) when it is not installed
    /// outside CI.
    pub fn start() -> Option<Mosquitto> {
        let Some(bin) = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists()) else {
            unavailable("mosquitto is not installed (apt-get install mosquitto)");
            return None;
        };
        // A free port can be taken by another process before mosquitto
        // binds it; try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if let Some(m) = Self::try_start_on(bin, port) {
                return Some(m);
            }
        }
        panic!("mosquitto could not start on any of 5 free ports");
    }

    /// `None` if mosquitto exited instead of listening (port taken).
    ///
    /// No persistence: the broker is never restarted in these tests, and
    /// sessions live in its memory. No limit on queued messages: a
    /// receiver's session holds thousands while it is down (mosquitto's
    /// default of 1,000 would drop the rest). Inflight stays at the default.
    fn try_start_on(bin: &str, port: u16) -> Option<Mosquitto> {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\nlog_type unsubscribe\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
            ),
        )
        .unwrap();
        #[allow(clippy::zombie_processes)] // killed and waited for in Drop, or here
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mosquitto");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("piped stderr");
        // Keeps draining the log, so mosquitto never blocks on the pipe.
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            }
        });
        let wanted = format!("listen socket on port {port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(&wanted) => {
                    return Some(Mosquitto {
                        port,
                        child,
                        log,
                        _dir: dir,
                    })
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// How many lines of the broker's log contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Waits until `text` occurs in `n` lines of the broker's log.
    pub async fn wait_log(&self, text: &str, n: usize) {
        let limit = Duration::from_secs(20);
        let deadline = tokio::time::Instant::now() + limit;
        while self.log_count(text) < n {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no {n} broker log lines with {text:?} in {limit:?}:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the broker has processed the `n`th subscription of
    /// receiver `client_id` (its last filter, `status`): from then on a
    /// message published is routed to its session too.
    pub async fn wait_subscribed(&self, client_id: &str, n: usize) {
        let line = format!("{client_id} 1 $share/{GROUP}/zgsz/+/+/+/status");
        self.wait_log(&line, n).await;
    }

    /// Waits until the broker has seen receiver `client_id` go (its `n`th
    /// disconnect).
    pub async fn wait_gone(&self, client_id: &str, n: usize) {
        // "Client city-b closed its connection." or "Client city-b disconnected."
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let text = format!("Client {client_id} ");
        let gone = |l: &String| {
            l.contains(&text) && (l.contains("closed its connection") || l.contains("disconnected"))
        };
        while self.log.lock().unwrap().iter().filter(|l| gone(l)).count() < n {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "the broker did not see {client_id} go:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto is missing: a failure in CI, a visible skip elsewhere.
fn unavailable(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why}; CI must run the mosquitto tests (.ci/run installs mosquitto)");
    }
    eprintln!("NOTICE: skipping a mosquitto test: {why}");
}

/// Writes the config of receiver instance `client_id` (group [`GROUP`])
/// into `dir`; its path.
pub fn receiver_config(dir: &Path, backend: &Backend, port: u16, client_id: &str) -> PathBuf {
    let database = match backend {
        Backend::Sqlite { path } => format!("path = \"{}\"", path.display()),
        Backend::Postgres { url } => format!("url = \"{url}\""),
    };
    let path = dir.join(format!("{client_id}.toml"));
    std::fs::write(
        &path,
        format!(
            "[database]\n{database}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{client_id}\"\nshare_group = \"{GROUP}\"\nkeepalive_s = 5\n"
        ),
    )
    .unwrap();
    path
}

/// `zgsz-platform <args>` with its log (info, no colours) appended to
/// `log`.
pub fn platform(args: &[&str], config: &Path, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_zgsz-platform"));
    c.args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(log);
    c
}

/// A `zgsz-platform` process, killed (SIGKILL) when dropped, so a failed
/// test leaves none behind.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut command: Command) -> Proc {
        Proc(command.spawn().expect("starting zgsz-platform"))
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, as systemd stops the receiver.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {}", self.0.id());
    }

    /// Waits (with a deadline; then kills it) for the process to exit; its
    /// status and what it printed on stdout.
    pub async fn wait(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut out = String::new();
                if let Some(mut stdout) = self.0.stdout.take() {
                    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
                }
                return (status, out);
            }
            if tokio::time::Instant::now() > deadline {
                self.kill();
                panic!("the process did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `zgsz-platform run` on `config`.
pub fn spawn_receiver(config: &Path, log: &Path) -> Proc {
    let mut c = platform(&["run"], config, log);
    c.stdout(Stdio::null());
    Proc::spawn(c)
}

/// Publishes every (topic, payload) at QoS 1, in order, and returns once
/// the broker has acknowledged each (PUBACK): from then on each is in the
/// subscribers' sessions.
pub async fn publish_all(port: u16, messages: Vec<(String, String)>) {
    let mut opts = MqttOptions::new(
        format!("gateways-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (t, p) in messages {
            client
                .publish(t, QoS::AtLeastOnce, false, p.into_bytes())
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    let drive = async {
        while acked < total {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), drive)
        .await
        .expect("every message acknowledged by the broker within 60 s");
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
}

/// Connects as `client_id` with clean session off and returns whether the
/// broker still held a session for it (CONNACK's session present).
pub async fn session_present(port: u16, client_id: &str) -> bool {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 8);
    let present = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return ack.session_present,
                Ok(_) => {}
                Err(e) => panic!("connecting as {client_id}: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK within 10 s");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    present
}
