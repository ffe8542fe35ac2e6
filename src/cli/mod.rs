//! Command line: `run`, `check`, `demo`, `read`, `scan`, `probe`, `metrics`,
//! `status`, `report`, `verify`, `identity`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, ConfigError, DeviceProtocol};
use crate::source::modbus::{AnyLink, Poller};

mod browse;
mod commission;

#[derive(Parser, Debug)]
#[command(
    name = "zgsz-agent",
    version,
    about = "Industrial IoT edge agent: Modbus to a SQLite outbox to MQTT"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WindowArg {
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
    /// Text with syslog priority prefixes for the systemd journal.
    Journald,
}

/// `demo`'s options. The same in every build, so that a gateway build
/// parses a demo command line and then says how to run it.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Stop after this long, e.g. 20s (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<String>,
    /// Time compression: 720 simulates a day in two minutes. Windows,
    /// metrics and the digest chain follow the simulated clock.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Write an evidence report of the run into this directory at the end.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Serve the simulated shop floor and the broker only, for an agent
    /// run elsewhere (another build, another machine on loopback): writes
    /// DIR/agent.toml pointing at them, with its state in DIR/state.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["speed", "report"])]
    pub serve: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; exits 2 if it has errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the agent against a simulated shop floor and an embedded broker
    /// (the default build; a gateway build says how to get it).
    Demo(DemoArgs),
    /// Write the signed evidence report (report.html, report.json,
    /// report.json.sig) for whole days from the local database.
    Report {
        #[arg(long, short)]
        config: PathBuf,
        /// First day, e.g. 2026-11-01 (in metrics.utc_offset).
        #[arg(long)]
        from: String,
        /// Last day, inclusive, e.g. 2026-11-30.
        #[arg(long)]
        to: String,
        /// Output directory (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a report: signature, every figure against its detail, the
    /// digest chain. Exits 1 with a list of what does not match.
    Verify {
        /// The directory holding report.json and report.json.sig.
        dir: PathBuf,
        /// The gateway's registered public key (64 hex characters, or a
        /// file holding them, e.g. gateway.pub).
        #[arg(long)]
        pubkey: Option<String>,
    },
    /// Print the gateway's public key and fingerprint (creates the key
    /// pair in the state directory on first use).
    Identity {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Poll one device once and print its decoded tags.
    Read {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        device: String,
    },
    /// List the unit ids that answer on a serial bus or behind a gateway,
    /// with the time each took.
    Scan(commission::ScanArgs),
    /// Read registers once and decode them as every type in every word and
    /// byte order; prints a ready-to-paste tag for the right one.
    Probe(commission::ProbeArgs),
    /// List an OPC UA server's address space as a tree (node ids, data
    /// types, current values); --snippet prints ready-to-paste tags.
    Browse(browse::BrowseArgs),
    /// The indicators (CNC rate, networking rate, ...) of one window, from
    /// the local database.
    Metrics {
        #[arg(long, short)]
        config: PathBuf,
        /// Window length.
        #[arg(long, value_enum, default_value_t = WindowArg::Day)]
        window: WindowArg,
        /// A moment inside the window: 2026-11-28 or 2026-11-28T14:30, in
        /// the configured UTC offset (default: now).
        #[arg(long)]
        at: Option<String>,
        /// Print JSON (the zgsz.metrics/1 body) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Outbox depth, oldest unsent, last ack, evictions, device health.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,rumqttd=off,rumqttc=warn,opcua_server=warn,opcua_client=error,opcua_core=warn",
        )
    });
    // Colours only on a terminal: under systemd, stderr is the journal,
    // which would store the escape codes verbatim.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Journald => builder
            .with_ansi(false)
            .event_format(crate::logfmt::Journald(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
    };
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // One worker, not one per core. The network side of the agent is a few
    // hundred short wake-ups a second; with a second worker most of them
    // also wake the idle sibling (a futex and a context switch, the largest
    // cost at plant load on a small gateway), while the heavy lifting (SQLite,
    // JSON) runs on the outbox thread anyway. `TOKIO_WORKER_THREADS`, which
    // tokio reads when no count is set here, overrides it.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads a config, printing warnings; config errors exit with code 2.
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    match config::load(path) {
        Ok((c, warnings)) => {
            for w in warnings {
                eprintln!("{}", w.display(path));
            }
            Ok(c)
        }
        Err(e) => {
            eprintln!("{e}");
            if let ConfigError::Invalid { problems, .. } = &e {
                let n = problems.iter().filter(|p| !p.warning).count();
                eprintln!("{}: {n} error(s); nothing was started", path.display());
            }
            Err(ExitCode::from(2))
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check { config } => Ok(match load_config(&config) {
            Ok(c) => {
                let tags: usize = c.devices.iter().map(|d| d.tag_names().len()).sum();
                println!(
                    "{}: OK ({} device(s), {} tag(s))",
                    config.display(),
                    c.devices.len(),
                    tags
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }),
        Command::Run { config } => {
            let c = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            crate::agent::daemon::run(c).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo(args).await,
        Command::Report {
            config,
            from,
            to,
            out,
        } => {
            let c = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            report(&c, &from, &to, &out, SystemClock.now_ms())
        }
        Command::Verify { dir, pubkey } => verify(&dir, pubkey.as_deref()),
        Command::Identity { config } => {
            let c = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            identity(&c)
        }
        Command::Read { config, device } => {
            let c = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            read(&c, &device).await
        }
        Command::Scan(args) => commission::scan(args).await,
        Command::Probe(args) => commission::probe(args).await,
        Command::Browse(args) => browse::browse_cmd(args).await,
        Command::Metrics {
            config,
            window,
            at,
            json,
        } => {
            let c = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            metrics(&c, window, at.as_deref(), json)
        }
        Command::Status { config, json } => {
            let c = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            status(&c, json)
        }
    }
}

#[cfg(feature = "demo")]
async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let duration = match &args.duration {
        Some(d) => Some(
            config::parse_duration(d)
                .with_context(|| format!("--duration {d:?}: write e.g. 20s or 5m"))?,
        ),
        None => None,
    };
    if let Some(dir) = &args.serve {
        crate::demo::serve(dir, duration).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let speed = args.speed;
    if !(1.0..=100_000.0).contains(&speed) {
        anyhow::bail!("--speed {speed}: use a factor from 1 to 100000, e.g. 720");
    }
    crate::demo::run(duration, speed, args.report).await?;
    Ok(ExitCode::SUCCESS)
}

/// A gateway build has no simulator and no broker: rather than run half a
/// demo, say where the whole one is.
#[cfg(not(feature = "demo"))]
async fn demo(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    eprintln!(
        "error: this is a gateway build of zgsz-agent (built with --no-default-features): \
         it has no simulated shop floor and no embedded broker, so it cannot run the demo.\n\
         The full demo needs the default build: `cargo run --release -- demo`.\n\
         To try this build against the simulated plant, run `zgsz-agent demo --serve DIR` \
         from a default build, then `zgsz-agent run --config DIR/agent.toml` with this one."
    );
    Ok(ExitCode::FAILURE)
}

async fn read(c: &Config, device: &str) -> anyhow::Result<ExitCode> {
    let Some(dev) = c.devices.iter().find(|d| &*d.id == device) else {
        let ids: Vec<&str> = c.devices.iter().map(|d| &*d.id).collect();
        eprintln!(
            "error: {}: no device {device:?}; devices are: {}",
            c.path.display(),
            ids.join(", ")
        );
        return Ok(ExitCode::from(2));
    };
    let modbus = match &dev.protocol {
        DeviceProtocol::OpcUa(_) => return read_opcua(dev).await,
        DeviceProtocol::S7(_) => return commission::read_s7(dev).await,
        DeviceProtocol::ModbusTcp(m)
        | DeviceProtocol::RtuOverTcp(m)
        | DeviceProtocol::Rtu { modbus: m, .. } => m,
    };
    // The same poll cycle `run` does, over the link the protocol calls for.
    let mut link = AnyLink::for_device(dev);
    let mut d = Poller::new(dev.clone(), Arc::new(SystemClock));
    let readings = d.poll(&mut link).await;
    println!(
        "{} ({} {}, unit {}): {} requests",
        dev.id,
        dev.protocol.name(),
        dev.address,
        modbus.unit_id,
        d.last_requests()
    );
    println!(
        "{:<24} {:<18} {:>14} {:<8} quality",
        "tag", "address", "value", "unit"
    );
    for (r, t) in readings.iter().zip(modbus.tags.iter()) {
        let value = r
            .value
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let quality = match &r.quality {
            crate::reading::Quality::Good => "good".to_string(),
            crate::reading::Quality::Bad(why) => format!("bad ({why})"),
        };
        let addr = format!("{}:{} {}", t.area.name(), t.address, t.ty.name());
        println!(
            "{:<24} {:<18} {:>14} {:<8} {}",
            t.name,
            addr,
            value,
            t.unit.as_deref().unwrap_or(""),
            quality
        );
    }
    let bad = readings.iter().filter(|r| !r.quality.is_good()).count();
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn read_opcua(dev: &crate::config::DeviceConfig) -> anyhow::Result<ExitCode> {
    let rows = match crate::source::opcua::read_once(dev, Arc::new(SystemClock)).await {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: {}: {e}", dev.id);
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("{} (opcua {})", dev.id, dev.address);
    println!("{:<20} {:>16} {:<24} node", "tag", "value", "quality");
    for r in &rows {
        let value = r
            .reading
            .value
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let quality = match &r.reading.quality {
            crate::reading::Quality::Good => "good".to_string(),
            crate::reading::Quality::Bad(why) => format!("bad ({why})"),
        };
        println!("{:<20} {:>16} {:<24} {}", r.tag, value, quality, r.node);
    }
    let bad = rows.iter().filter(|r| !r.reading.quality.is_good()).count();
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status(c: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let s = crate::buffer::read_stats(&c.agent.state_dir).with_context(|| {
        format!(
            "no outbox in {} yet; has the agent run with this config?",
            c.agent.state_dir.display()
        )
    })?;
    let clock_sync = crate::clocksync::check();
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("clock_sync".into(), serde_json::to_value(clock_sync)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now_ms();
    let age = |t: Option<i64>| match t {
        Some(t) => format!(
            "{} ago",
            human(Duration::from_millis((now - t).max(0) as u64))
        ),
        None => "never".into(),
    };
    println!(
        "outbox            {} rows, {} bytes (instance {})",
        s.rows, s.bytes, s.instance
    );
    println!(
        "oldest unsent     {}",
        if s.rows == 0 {
            "none".into()
        } else {
            age(s.oldest_unsent_ts)
        }
    );
    println!("last seq          {}", s.last_seq);
    println!(
        "clock             {}{}",
        clock_sync.name(),
        if clock_sync == crate::clocksync::ClockSync::Synchronized {
            ""
        } else {
            " (timestamps are evidence: enable NTP on this gateway)"
        }
    );
    println!("last PUBACK       {}", age(s.last_ack_ts));
    println!("acked messages    {}", s.acked_rows);
    println!(
        "evicted           {} rows ({} readings, {} metrics messages)",
        s.evicted_rows, s.evicted_readings, s.evicted_metrics
    );
    println!(
        "disk full         {}",
        match s.disk_full_ts {
            None => "never".to_string(),
            Some(t) if s.disk_full => format!(
                "YES, a write failed {}: the outbox evicts its oldest telemetry to make room; free space on the file system of {} or lower buffer.max_bytes",
                age(Some(t)),
                c.agent.state_dir.display()
            ),
            Some(t) => format!("no (last {})", age(Some(t))),
        }
    );
    println!(
        "{:<20} {:>10} {:>10} {:<14} {:<14} last error",
        "device", "good", "bad", "last good", "last bad"
    );
    for d in &s.devices {
        println!(
            "{:<20} {:>10} {:>10} {:<14} {:<14} {}",
            d.id,
            d.good,
            d.bad,
            age(d.last_good_ts),
            age(d.last_bad_ts),
            d.last_bad_reason.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Parses `2026-11-28` or `2026-11-28T14:30` in `offset` to UTC ms.
fn parse_at(s: &str, offset: time::UtcOffset) -> Option<i64> {
    use time::macros::format_description;
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let date = time::Date::parse(date, format_description!("[year]-[month]-[day]")).ok()?;
    let time = match time {
        Some(t) => time::Time::parse(t, format_description!("[hour]:[minute]")).ok()?,
        None => time::Time::MIDNIGHT,
    };
    let t = time::PrimitiveDateTime::new(date, time).assume_offset(offset);
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn pct(r: &crate::metrics::Ratio) -> String {
    match r.value {
        Some(v) => format!("{:>6.1}% ({}/{})", v * 100.0, r.numerator, r.denominator),
        None => format!("   n/a  ({})", r.reason.as_deref().unwrap_or("")),
    }
}

/// `metrics`: one window's figures, recomputed from the outbox database.
fn metrics(
    c: &Config,
    window: WindowArg,
    at: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::metrics::WindowKind;
    let now = SystemClock.now_ms();
    let at_ms = match at {
        Some(a) => match parse_at(a, c.metrics.utc_offset) {
            Some(t) => t,
            None => {
                eprintln!("error: --at {a:?}: write a date like 2026-11-28 or a time like 2026-11-28T14:30");
                return Ok(ExitCode::from(2));
            }
        },
        None => now,
    };
    let kind = match window {
        WindowArg::Hour => WindowKind::Hour,
        WindowArg::Day => WindowKind::Day,
    };
    let conn = crate::buffer::open_read_only(&c.agent.state_dir).with_context(|| {
        format!(
            "no outbox in {} yet; has the agent run with this config?",
            c.agent.state_dir.display()
        )
    })?;
    let r = crate::metrics::recompute(c, &conn, kind, at_ms, now)?;
    if let Some(index) = r.differs_from_seal {
        eprintln!(
            "note: these figures differ from the ones sealed on the digest chain (entry #{index}); the evidence changed since"
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r.report)?);
    } else {
        print_metrics(kind, &r.report, r.partial);
    }
    Ok(ExitCode::SUCCESS)
}

/// The indicators, then a table of processes and one of equipment.
fn print_metrics(kind: crate::metrics::WindowKind, report: &crate::metrics::Report, partial: bool) {
    let i = &report.indicators;
    println!(
        "{} window {} .. {}{}",
        kind.name(),
        report.window.start,
        report.window.end,
        if partial { " (so far)" } else { "" }
    );
    println!(
        "关键工序数控化率 CNC rate, declared  {}",
        pct(&i.cnc_rate_declared)
    );
    println!(
        "关键工序数控化率 CNC rate, verified  {}",
        pct(&i.cnc_rate_verified)
    );
    println!(
        "NC time share (all / key)          {} / {}",
        pct(&i.nc_time_share),
        pct(&i.nc_time_share_key)
    );
    println!(
        "设备联网率 networking (all / key)    {} / {}",
        pct(&i.networking_rate),
        pct(&i.networking_rate_key)
    );
    println!(
        "data completeness                  {}",
        pct(&i.completeness)
    );
    println!();
    println!(
        "{:<14} {:<4} {:>4} {:>4} {:>8}  {:<22} utilisation",
        "process", "key", "eq", "nc", "verified", "NC time share"
    );
    for p in &report.processes {
        println!(
            "{:<14} {:<4} {:>4} {:>4} {:>8}  {:<22} {}",
            p.id,
            if p.key { "yes" } else { "no" },
            p.equipment,
            p.nc_capable,
            p.verified_nc,
            pct(&p.nc_time_share),
            pct(&p.utilisation)
        );
    }
    println!();
    print_equipment(&report.equipment);
}

/// The equipment table of `metrics`: minutes in each state and the ratios.
fn print_equipment(equipment: &[crate::metrics::EquipmentMetrics]) {
    println!(
        "{:<12} {:<10} {:<7} {:>9} {:>9} {:>9} {:>9}  {:<22} {:<22} completeness",
        "equipment",
        "process",
        "kind",
        "offline",
        "idle",
        "manual",
        "nc",
        "utilisation",
        "NC time share"
    );
    let mins = |ms: u64| format!("{:.1}m", ms as f64 / 60_000.0);
    for e in equipment {
        println!(
            "{:<12} {:<10} {:<7} {:>9} {:>9} {:>9} {:>9}  {:<22} {:<22} {}{}",
            e.id,
            e.process,
            format!("{:?}", e.kind).to_lowercase(),
            mins(e.time_ms.offline),
            mins(e.time_ms.idle),
            mins(e.time_ms.running_manual),
            mins(e.time_ms.running_nc),
            pct(&e.utilisation),
            pct(&e.nc_time_share),
            pct(&e.completeness),
            if e.verified_nc {
                "  ✓ verified NC"
            } else {
                ""
            }
        );
    }
}

/// Writes the signed report for `from..=to` into `out`; prints a summary.
pub fn report(
    c: &Config,
    from: &str,
    to: &str,
    out: &Path,
    now_ms: i64,
) -> anyhow::Result<ExitCode> {
    let (Some(f), Some(t)) = (
        crate::report::parse_date(from),
        crate::report::parse_date(to),
    ) else {
        eprintln!("error: --from {from:?} --to {to:?}: write days like 2026-11-01");
        return Ok(ExitCode::from(2));
    };
    let (key, _) = crate::signing::GatewayKey::load_or_create(&c.agent.state_dir)
        .context("loading the gateway key")?;
    let r = crate::report::build(c, &key, f, t, now_ms)
        .with_context(|| format!("building the report from {}", c.agent.state_dir.display()))?;
    crate::report::write(out, &r, &key)?;
    let h = &r.headline;
    println!(
        "{}: {} day(s), {} sealed; 关键工序数控化率 CNC rate declared {} verified {}; 设备联网率 networking {}",
        out.display(),
        r.days.len(),
        r.days.iter().filter(|d| d.status == "sealed").count(),
        pct(&h.cnc_rate_declared).trim(),
        pct(&h.cnc_rate_verified).trim(),
        pct(&h.networking_rate).trim(),
    );
    println!(
        "  report.html, report.json, report.json.sig (key fingerprint {})",
        key.fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path, pubkey: Option<&str>) -> anyhow::Result<ExitCode> {
    let key = match pubkey {
        None => None,
        Some(k) => {
            let text = if Path::new(k).is_file() {
                std::fs::read_to_string(k).with_context(|| format!("reading --pubkey {k}"))?
            } else {
                k.to_string()
            };
            Some(crate::signing::parse_public_key(&text)?)
        }
    };
    let outcome = crate::report::verify::verify_dir(dir, key);
    for n in &outcome.notes {
        println!("note: {n}");
    }
    if outcome.ok() {
        println!("{}: OK", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    for p in &outcome.problems {
        println!("MISMATCH: {p}");
    }
    println!(
        "{}: FAILED ({} problem(s))",
        dir.display(),
        outcome.problems.len()
    );
    Ok(ExitCode::FAILURE)
}

fn identity(c: &Config) -> anyhow::Result<ExitCode> {
    let (key, created) = crate::signing::GatewayKey::load_or_create(&c.agent.state_dir)
        .context("loading or creating the gateway key")?;
    let pk = crate::signing::parse_public_key(&key.public_hex())?;
    if created {
        eprintln!("created a new key pair in {}", c.agent.state_dir.display());
    }
    println!("gateway      {}", c.agent.gateway_id);
    println!("public key   {}", key.public_hex());
    println!("fingerprint  SHA256:{}", key.fingerprint());
    print!("{}", crate::signing::public_pem(&pk));
    Ok(ExitCode::SUCCESS)
}
