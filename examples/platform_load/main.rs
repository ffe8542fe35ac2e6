//! Scale benchmarks of the city's receiver (`zgsz-platform`): the agent's
//! own sealed streams, enveloped for many simulated gateways, through
//! mosquitto on a loopback port, into receiver processes on SQLite or
//! PostgreSQL. See BENCHMARKS.md ("City receiver") for the figures.
//!
//!     cargo build --release -p zgsz-platform
//!     cargo run --release --no-default-features --example platform_load -- \
//!         backlog --gateways 1000 --days 7 --db sqlite
//!     … backlog --gateways 1000 --days 7 --db postgres --receivers 2
//!     … steady --gateways 10000 --db postgres
//!
//! `--connections N` sets the receivers' `database.connections`;
//! `--pg-statements` loads pg_stat_statements into the PostgreSQL server
//! and prints the statements that took it longest at the end of a backlog.
//!
//! `backlog`: a district-wide outage ends. Every gateway's outbox holds
//! `days` of hourly windows (a states message and a sealed metrics message
//! each); they are published first, QoS 1, into the receivers' persistent
//! sessions, as the reconnecting gateways replay them while the receivers
//! are away (a broker restart, a deploy). The clock starts when the
//! receivers start, and stops when every window is verified.
//!
//! `steady`: gateways at their real rate: a status message each
//! `status_interval` (60 s, the agent's default), and at the top of the
//! hour every gateway's states and sealed metrics messages at once. The
//! receivers' CPU and memory are sampled from /proc.
//!
//! A quick check: `backlog --gateways 5 --days 1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring tool run by hand: a panic with its message is the right way to stop"
)]

mod gen;
#[allow(dead_code)]
#[path = "../../platform/tests/common/pg.rs"]
mod pg;
#[path = "../../platform/tests/common/session.rs"]
mod session;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use zgsz_agent::buffer::Row;
use zgsz_platform::config::Backend;
use zgsz_platform::store::{Gateway as Enrolled, Store};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Simulated gateways.
    #[arg(long, global = true, default_value_t = 1000)]
    gateways: usize,
    /// The database of the receivers.
    #[arg(long, global = true, value_enum, default_value_t = Db::Sqlite)]
    db: Db,
    /// Receiver processes on one shared subscription (PostgreSQL for
    /// more than one).
    #[arg(long, global = true, default_value_t = 1)]
    receivers: usize,
    /// CNC machines per gateway.
    #[arg(long, global = true, default_value_t = 5)]
    machines: usize,
    /// Distinct sealed streams, shared out over the gateways.
    #[arg(long, global = true, default_value_t = 8)]
    streams: usize,
    /// PostgreSQL connections of each receiver (`database.connections`).
    #[arg(long, global = true, default_value_t = 4)]
    connections: u32,
    /// Load pg_stat_statements into the PostgreSQL server and print, at the
    /// end of a backlog, the statements that took the server longest.
    #[arg(long, global = true)]
    pg_statements: bool,
    /// The receiver binary; by default `zgsz-platform` beside this example's
    /// target directory (`cargo build --release -p zgsz-platform`).
    #[arg(long, global = true)]
    receiver: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Mode {
    /// Catch-up after an outage: publish the backlog, then time the ingest.
    Backlog {
        /// Days of hourly windows per gateway.
        #[arg(long, default_value_t = 7)]
        days: usize,
    },
    /// Steady state: statuses each minute, one hour's windows at once.
    Steady {
        /// Seconds of statuses before the hour closes.
        #[arg(long, default_value_t = 120)]
        before_s: u64,
        /// Seconds of statuses after the hour's windows are verified.
        #[arg(long, default_value_t = 60)]
        after_s: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
}

const GROUP: &str = "city";
/// The agent's default `status_interval`.
const STATUS_INTERVAL: Duration = Duration::from_secs(60);
/// Publishing connections (the gateways are shared out over them).
const PUBLISHERS: usize = 4;

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async_main(cli));
}

async fn async_main(cli: Cli) {
    assert!(
        cli.receivers == 1 || cli.db == Db::Postgres,
        "several receivers share one PostgreSQL database: add --db postgres"
    );
    let receiver_bin = cli.receiver.clone().unwrap_or_else(default_receiver);
    assert!(
        receiver_bin.is_file(),
        "{} is missing: cargo build --release -p zgsz-platform",
        receiver_bin.display()
    );
    let work = tempfile::Builder::new()
        .prefix("zgsz-load-")
        .tempdir()
        .unwrap();
    let (backend, _cluster) = database(cli.db, work.path(), cli.pg_statements);
    let broker = Mosquitto::start(work.path());
    println!(
        "receiver: {}; {} on {}; mosquitto on 127.0.0.1:{}",
        receiver_bin.display(),
        cli.receivers,
        backend_name(cli.db),
        broker.port
    );
    let agent = gen::Agent::new(cli.machines);
    let gateways: Vec<gen::Gateway> = (0..cli.gateways).map(|n| agent.gateway(n)).collect();
    let t = Instant::now();
    enrol(&backend, &gateways).await;
    println!(
        "enrolled {} gateways in {:.1} s",
        gateways.len(),
        t.elapsed().as_secs_f64()
    );
    let ids: Vec<String> = (1..=cli.receivers).map(|i| format!("rx-{i}")).collect();
    for id in &ids {
        let filters: Vec<String> = ["metrics", "states", "status"]
            .iter()
            .map(|s| format!("$share/{GROUP}/{}/+/+/+/{s}", gen::PREFIX))
            .collect();
        session::persistent_session(broker.port, id, &filters).await;
    }
    match cli.mode {
        Mode::Backlog { days } => {
            backlog(
                &cli,
                &agent,
                &gateways,
                days,
                &backend,
                &broker,
                &ids,
                &receiver_bin,
                work.path(),
            )
            .await
        }
        Mode::Steady { before_s, after_s } => {
            steady(
                &cli,
                &agent,
                &gateways,
                &backend,
                &broker,
                &ids,
                &receiver_bin,
                work.path(),
                Duration::from_secs(before_s),
                Duration::from_secs(after_s),
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments, reason = "one run's whole setup")]
async fn backlog(
    cli: &Cli,
    agent: &gen::Agent,
    gateways: &[gen::Gateway],
    days: usize,
    backend: &Backend,
    broker: &Mosquitto,
    ids: &[String],
    receiver_bin: &Path,
    dir: &Path,
) {
    let hours = days * 24;
    let t = Instant::now();
    let streams: Vec<Vec<Row>> = (0..cli.streams.min(gateways.len()).max(1))
        .map(|s| agent.stream(hours, 1000 + s as u64))
        .collect();
    let per_gateway = streams[0].len();
    println!(
        "sealed {} streams of {hours} hourly windows ({per_gateway} messages each) in {:.1} s",
        streams.len(),
        t.elapsed().as_secs_f64()
    );
    // Hour by hour over all gateways, each gateway's messages in its seq
    // order: gateways replaying their outboxes side by side.
    let t = Instant::now();
    let streams = Arc::new(streams);
    let mut tasks = Vec::new();
    let gateways_per = gateways.len().div_ceil(PUBLISHERS);
    let mut bytes = 0usize;
    let mut batches: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); PUBLISHERS];
    for i in 0..per_gateway {
        for (n, g) in gateways.iter().enumerate() {
            let rows = &streams[n % streams.len()];
            let (topic, payload) = g.message(&rows[i]);
            bytes += payload.len();
            batches[n / gateways_per].push((topic.to_string(), payload));
        }
    }
    let messages: usize = batches.iter().map(Vec::len).sum();
    for (k, batch) in batches.into_iter().enumerate() {
        let port = broker.port;
        tasks.push(tokio::spawn(async move {
            publish(port, &format!("replay-{k}"), batch).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "published {messages} messages ({:.0} MB) in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let want = (gateways.len() * hours) as i64;
    if cli.pg_statements {
        if let Backend::Postgres { url } = backend {
            psql(url, "CREATE EXTENSION pg_stat_statements");
        }
    }
    let mut reader = Store::open(backend).await.unwrap();
    let mut receivers: Vec<Receiver> = ids
        .iter()
        .map(|id| Receiver::start(receiver_bin, dir, backend, broker.port, id, cli.connections))
        .collect();
    let started = receivers
        .iter()
        .map(|r| r.started)
        .min()
        .unwrap_or_else(Instant::now);
    let elapsed = wait_verified(
        &mut reader,
        gateways,
        hours as i64,
        Duration::from_secs(1800),
        &mut receivers,
        started,
    )
    .await;
    let cpu: Vec<f64> = receivers.iter().map(Receiver::cpu_s).collect();
    let rss: Vec<u64> = receivers.iter().map(Receiver::peak_rss_kib).collect();
    for r in &mut receivers {
        r.stop();
    }
    if cli.pg_statements {
        if let Backend::Postgres { url } = backend {
            psql(url, TOP_STATEMENTS);
        }
    }
    check_clean(&mut reader).await;
    let by = reader.stored_by().await.unwrap();
    println!(
        "RESULT backlog: {} gateways × {hours} h = {want} windows ({messages} messages) on {} with {} receiver(s): all verified in {:.1} s ({:.0} messages/s)",
        gateways.len(),
        backend_name(cli.db),
        receivers.len(),
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
    for ((id, c), r) in ids.iter().zip(&cpu).zip(&rss) {
        let stored = by.iter().find(|(b, _)| b == id).map_or(0, |(_, n)| *n);
        println!(
            "  {id}: stored {stored} messages, CPU {c:.1} s ({:.0}% of a core), peak RSS {:.1} MiB",
            100.0 * c / elapsed.as_secs_f64(),
            *r as f64 / 1024.0
        );
    }
}

#[allow(clippy::too_many_arguments, reason = "one run's whole setup")]
async fn steady(
    cli: &Cli,
    agent: &gen::Agent,
    gateways: &[gen::Gateway],
    backend: &Backend,
    broker: &Mosquitto,
    ids: &[String],
    receiver_bin: &Path,
    dir: &Path,
    before: Duration,
    after: Duration,
) {
    let streams: Vec<Vec<Row>> = (0..cli.streams.min(gateways.len()).max(1))
        .map(|s| agent.stream(1, 1000 + s as u64))
        .collect();
    // The hour's states and metrics message of every gateway.
    let hour: Vec<(String, Vec<u8>)> = gateways
        .iter()
        .enumerate()
        .flat_map(|(n, g)| {
            streams[n % streams.len()].iter().map(|row| {
                let (t, p) = g.message(row);
                (t.to_string(), p)
            })
        })
        .collect();
    let all = gateways;
    let gateways = Arc::new(
        all.iter()
            .map(|g| g.status())
            .map(|(t, p)| (t.to_string(), p))
            .collect::<Vec<_>>(),
    );
    let mut receivers: Vec<Receiver> = ids
        .iter()
        .map(|id| Receiver::start(receiver_bin, dir, backend, broker.port, id, cli.connections))
        .collect();
    let mut reader = Store::open(backend).await.unwrap();
    // Statuses: every gateway once a minute, spread evenly.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let status_task = tokio::spawn(statuses(broker.port, gateways.clone(), stop_rx));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let c0: f64 = receivers.iter().map(Receiver::cpu_s).sum();
    let t0 = Instant::now();
    tokio::time::sleep(before.saturating_sub(Duration::from_secs(10))).await;
    let c1: f64 = receivers.iter().map(Receiver::cpu_s).sum();
    let status_share = (c1 - c0) / t0.elapsed().as_secs_f64();
    // The hour closes: every gateway's states and metrics at once.
    let n = hour.len();
    let t1 = Instant::now();
    publish(broker.port, "top-of-hour", hour).await;
    let burst = wait_verified(
        &mut reader,
        all,
        1,
        Duration::from_secs(900),
        &mut receivers,
        t1,
    )
    .await;
    let c2: f64 = receivers.iter().map(Receiver::cpu_s).sum();
    let burst_cpu = (c2 - c1) - status_share * t1.elapsed().as_secs_f64();
    tokio::time::sleep(after).await;
    let _ = stop_tx.send(true);
    status_task.await.unwrap();
    let rss: u64 = receivers.iter().map(Receiver::peak_rss_kib).sum();
    let now_rss: u64 = receivers.iter().map(Receiver::rss_kib).sum();
    for r in &mut receivers {
        r.stop();
    }
    check_clean(&mut reader).await;
    let statuses = reader.verdicts().await.unwrap();
    println!(
        "RESULT steady: {} gateways on {} with {} receiver(s); statuses every {:?}: {:.1}% of a core",
        cli.gateways,
        backend_name(cli.db),
        receivers.len(),
        STATUS_INTERVAL,
        100.0 * status_share
    );
    println!(
        "  top of the hour: {n} messages published and every window verified in {:.1} s, {burst_cpu:.1} CPU s beyond the statuses",
        burst.as_secs_f64()
    );
    println!(
        "  averaged over the hour: {:.1}% of a core; RSS {:.1} MiB at the end, peak {:.1} MiB ({statuses:?})",
        100.0 * (status_share + burst_cpu / 3600.0),
        now_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
}

/// Publishes one status per gateway per [`STATUS_INTERVAL`], evenly spread,
/// until `stop`.
async fn statuses(
    port: u16,
    all: Arc<Vec<(String, Vec<u8>)>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (client, events) = client(port, "statuses");
    let pump = tokio::spawn(pump(events, usize::MAX));
    let tick = STATUS_INTERVAL / all.len().max(1) as u32;
    let mut every = tokio::time::interval(tick.max(Duration::from_micros(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0usize;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = every.tick() => {}
        }
        let (t, p) = &all[i % all.len()];
        client
            .publish(t.clone(), QoS::AtLeastOnce, true, p.clone())
            .await
            .unwrap();
        i += 1;
    }
    pump.abort();
}

fn client(port: u16, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(200);
    o.set_max_packet_size(16 << 20, 16 << 20);
    AsyncClient::new(o, 1000)
}

/// Polls until `acks` PUBACKs have come.
async fn pump(mut events: rumqttc::EventLoop, acks: usize) {
    let mut n = 0;
    while n < acks {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => n += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
}

/// Publishes `messages` at QoS 1 on one connection; returns when the broker
/// has acknowledged all of them.
async fn publish(port: u16, id: &str, messages: Vec<(String, Vec<u8>)>) {
    let (client, events) = client(port, id);
    let pump = tokio::spawn(pump(events, messages.len()));
    for (t, p) in messages {
        client.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
    }
    pump.await.unwrap();
    let _ = client.disconnect().await;
}

async fn enrol(backend: &Backend, gateways: &[gen::Gateway]) {
    let mut store = Store::open(backend).await.unwrap();
    for g in gateways {
        store
            .enrol(&Enrolled {
                gateway_id: g.id.clone(),
                uscc: g.uscc.clone(),
                region_code: g.region.clone(),
                public_key: "ab".repeat(32),
            })
            .await
            .unwrap();
    }
}

/// Polls until each gateway has `want` verified windows; the time since
/// `start`. Each poll reads one gateway's windows (the first not yet
/// done, in order) by key: polling the count of every window instead cost
/// the database server more CPU than any statement of the ingest (a full
/// scan, five times a second), on the same two cores as the receivers.
async fn wait_verified(
    reader: &mut Store,
    gateways: &[gen::Gateway],
    want: i64,
    limit: Duration,
    receivers: &mut [Receiver],
    start: Instant,
) -> Duration {
    let mut last_print = Instant::now();
    let mut done = 0;
    loop {
        while let Some(g) = gateways.get(done) {
            if reader.verified_windows(&g.id, &g.instance).await.unwrap() < want {
                break;
            }
            done += 1;
        }
        if done == gateways.len() {
            return start.elapsed();
        }
        for r in receivers.iter_mut() {
            r.check_alive();
        }
        if start.elapsed() > limit {
            let v = reader.verdicts().await.unwrap();
            panic!(
                "after {limit:?}: {done} of {} gateways have {want} verified windows; {v:?}",
                gateways.len()
            );
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            let g = &gateways[done];
            let first = reader.verified_windows(&g.id, &g.instance).await.unwrap();
            println!(
                "  {:>5.0} s: {done} of {} gateways done; {} has {first} of {want} windows verified",
                start.elapsed().as_secs_f64(),
                gateways.len(),
                g.id
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `--pg-statements` prints: the statements by the server's time.
const TOP_STATEMENTS: &str = "SELECT calls, round(total_exec_time) AS ms,
      round(mean_exec_time::numeric, 3) AS mean_ms, rows,
      round(wal_bytes / 1e6) AS wal_mb,
      left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS statement
    FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 20";

/// Runs `sql` with psql on the benchmark's database, printing its output.
fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .arg(url)
        .args(["-X", "-c", sql])
        .status()
        .expect("psql (PostgreSQL's client)");
    assert!(status.success(), "psql: {sql}");
}

/// Nothing rejected, nothing broken.
async fn check_clean(reader: &mut Store) {
    let rejected = reader.rejected().await.unwrap();
    assert!(
        rejected.is_empty(),
        "rejected: {:?}",
        &rejected[..rejected.len().min(5)]
    );
    let v = reader.verdicts().await.unwrap();
    assert!(v.iter().all(|(k, _)| k == "verified"), "verdicts: {v:?}");
}

fn backend_name(db: Db) -> &'static str {
    match db {
        Db::Sqlite => "SQLite",
        Db::Postgres => "PostgreSQL",
    }
}

/// `target/release/zgsz-platform` beside `target/release/examples/`.
fn default_receiver() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("zgsz-platform"))
        .unwrap()
}

/// The receivers' database: a SQLite file, or a throw-away PostgreSQL
/// cluster with `fsync` on (as a production server runs).
fn database(db: Db, dir: &Path, statements: bool) -> (Backend, Option<pg::PgCluster>) {
    match db {
        Db::Sqlite => (
            Backend::Sqlite {
                path: dir.join("platform.db"),
            },
            None,
        ),
        Db::Postgres => {
            let cluster = pg::PgCluster::start().expect("PostgreSQL (initdb, pg_ctl)");
            // A server set up for ingest: WAL up to 4 GB between checkpoints
            // (the default 1 GB checkpoints every few seconds of a catch-up).
            cluster.reconfigure(
                "fsync = on\nmax_connections = 20\nshared_buffers = 256MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 15min",
            );
            if statements {
                cluster.reconfigure(
                    "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all",
                );
            }
            let url = cluster.create_database();
            (Backend::Postgres { url }, Some(cluster))
        }
    }
}

/// A `zgsz-platform run` process.
struct Receiver {
    child: Child,
    started: Instant,
    /// Updated from /proc while it runs.
    peak_kib: u64,
}

impl Receiver {
    fn start(
        bin: &Path,
        dir: &Path,
        backend: &Backend,
        port: u16,
        id: &str,
        lanes: u32,
    ) -> Receiver {
        let database = match backend {
            Backend::Sqlite { path } => format!("path = \"{}\"", path.display()),
            Backend::Postgres { url } => format!("url = \"{url}\"\nconnections = {lanes}"),
        };
        let conf = dir.join(format!("{id}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[database]\n{database}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{id}\"\nshare_group = \"{GROUP}\"\ntopic_prefix = \"{}\"\n",
                gen::PREFIX
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Receiver {
            child,
            started: Instant::now(),
            peak_kib: 0,
        }
    }

    fn proc(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    /// User and system CPU seconds so far.
    fn cpu_s(&self) -> f64 {
        let stat = self.proc("stat");
        // The fields after the command's closing parenthesis; utime and
        // stime are the 12th and 13th of them.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz
    }

    fn status_kib(&self, key: &str) -> u64 {
        self.proc("status")
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:").max(self.peak_kib)
    }

    fn check_alive(&mut self) {
        self.peak_kib = self.peak_rss_kib();
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("a receiver exited: {status}");
        }
    }

    fn stop(&mut self) {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto on a free loopback port: in memory, no limit on the queues
/// of the receivers' sessions, and a window of 1000 unacknowledged
/// messages per session, so that a receiver can commit hundreds at once.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "log_dest stderr\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 1000\nmax_queued_messages 0\nmax_queued_bytes 0\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("Opening ipv4 listen socket") {
                break;
            }
            assert!(!line.contains("Error"), "mosquitto: {line}");
        }
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Mosquitto { child, port }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
