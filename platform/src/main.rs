//! zgsz-platform: thin CLI; the work is in the library.

// mimalloc instead of glibc's malloc: in a catch-up, with the backlog's
// messages held in memory, glibc's malloc and free (chunk consolidation
// above all) took over a third of the receiver's CPU. BENCHMARKS.md, "City
// receiver".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cli;
use zgsz_platform::aggregate::is_date;
use zgsz_platform::config::Config;
use zgsz_platform::store::{Gateway, Store};

#[derive(Parser)]
#[command(version, about = "The city platform's receiver for zgsz gateways")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Subscribe and ingest until SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the config (everything `run` checks before it connects) and
    /// name the storage backend it selects.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Register a gateway.
    Enrol {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        gateway_id: String,
        /// 统一社会信用代码 (enterprise.uscc).
        #[arg(long)]
        uscc: String,
        /// GB/T 2260 region code (enterprise.region_code).
        #[arg(long)]
        region_code: String,
        /// The `public key` line of `zgsz-agent identity` (64 hex).
        #[arg(long)]
        public_key: String,
    },
    /// Remove this instance for good: take over the messages the broker
    /// queued in its session, then have the broker delete the session.
    Retire {
        /// The retired instance's config (its `mqtt.client_id`).
        #[arg(long)]
        config: PathBuf,
        /// Stop when nothing has arrived for this many seconds after the
        /// broker acknowledged the unsubscribe.
        #[arg(long, default_value_t = 5)]
        quiet_s: u64,
    },
    /// Account, per gateway and instance, for the windows and transitions
    /// that never arrived, against the gateway's eviction counters.
    Gaps {
        #[arg(long)]
        config: PathBuf,
        /// List only what the counters do not explain, and exit 1 if
        /// anything is listed (for a monitoring check).
        #[arg(long)]
        unexplained: bool,
    },
    /// The key-process CNC rate and its companions per district and for
    /// the city, from the verified day windows of `--from..=--to`.
    Figures {
        #[arg(long)]
        config: PathBuf,
        /// First day, YYYY-MM-DD (the plants' local date).
        #[arg(long, value_parser = date)]
        from: String,
        /// Last day, YYYY-MM-DD; default: `--from`.
        #[arg(long, value_parser = date)]
        to: Option<String>,
        /// Also write the table as CSV (UTF-8, Chinese headers).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Also write the table as .xlsx (Chinese headers).
        #[arg(long)]
        xlsx: Option<PathBuf>,
    },
    /// List what a reviewer must look at: chain breaks, unexplained gaps,
    /// stale gateways, unsynchronised clocks, large declared–verified gaps
    /// and model changes.
    Quality {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read a password on stdin and print its argon2id hash, for a user
    /// of the pages in the config.
    HashPassword,
    /// A city on this machine: the real agent for twenty simulated
    /// enterprises across Yangzhou's region codes, an embedded broker,
    /// this receiver, and its pages on loopback. A week of figures exists
    /// within a minute; then the city runs live until Ctrl-C.
    #[cfg(feature = "demo")]
    Demo {
        /// Days of history made before the city goes live.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
        days: u32,
        /// Time compression while the history is made (default: the
        /// history takes about 50 s).
        #[arg(long)]
        speed: Option<f64>,
        /// Where the pages are served (loopback).
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: std::net::SocketAddr,
        /// Keep the receiver's database and the gateways' state here
        /// (default: a temporary directory, removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Stop after this long, e.g. 90s or 10m (default: at Ctrl-C).
        #[arg(long, value_parser = duration)]
        duration: Option<Duration>,
    },
    /// List the sealed windows with their verdicts.
    Windows {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a gateway's evidence report against the registry and the
    /// seals received, and record the intake. Exit 0 accepted, 1 refused.
    VerifyReport {
        #[arg(long)]
        config: PathBuf,
        /// The directory holding report.json and report.json.sig.
        #[arg(required_unless_present_all = ["report", "signature"], conflicts_with_all = ["report", "signature"])]
        dir: Option<PathBuf>,
        /// report.json, when not in DIR.
        #[arg(long, requires = "signature")]
        report: Option<PathBuf>,
        /// report.json.sig, when not in DIR.
        #[arg(long, requires = "report")]
        signature: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The demo runs twenty agents and a broker in this process: their
    // routine logs would bury the link it prints. RUST_LOG still rules.
    #[cfg(feature = "demo")]
    let quiet = matches!(cli.command, Command::Demo { .. });
    #[cfg(not(feature = "demo"))]
    let quiet = false;
    let default = if quiet {
        "warn,rumqttd=off,zgsz_agent=error"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::HashPassword = &cli.command {
        let mut password = String::new();
        std::io::stdin()
            .read_line(&mut password)
            .context("reading the password from stdin")?;
        let password = password.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(
            !password.is_empty(),
            "an empty password: type one, then Enter"
        );
        println!("{}", zgsz_platform::auth::hash_password(password)?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Check { config } = &cli.command {
        // No database connection: `check` validates, it does not connect.
        let cfg = Config::load(config)?;
        println!(
            "{}: OK (database: {}; subscribing to {})",
            config.display(),
            cfg.database.backend().describe(),
            cfg.filters().join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(command(cli.command))
}

async fn command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { .. } | Command::HashPassword => {}
        Command::Enrol {
            config,
            gateway_id,
            uscc,
            region_code,
            public_key,
        } => {
            let (_, mut store) = open(&config).await?;
            store
                .enrol(&Gateway {
                    gateway_id: gateway_id.clone(),
                    uscc,
                    region_code,
                    public_key: public_key.trim().to_ascii_lowercase(),
                })
                .await?;
            println!("enrolled {gateway_id}");
        }
        Command::Gaps {
            config,
            unexplained,
        } => {
            let (_, mut store) = open(&config).await?;
            if !cli::gaps(&mut store, unexplained).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Figures {
            config,
            from,
            to,
            csv,
            xlsx,
        } => {
            let (_, mut store) = open(&config).await?;
            let to = to.unwrap_or_else(|| from.clone());
            cli::figures(&mut store, &from, &to, csv.as_deref(), xlsx.as_deref()).await?;
        }
        Command::Quality { config } => {
            let (cfg, mut store) = open(&config).await?;
            cli::quality(&cfg, &mut store).await?;
        }
        Command::Windows { config } => {
            let (_, mut store) = open(&config).await?;
            cli::windows(&mut store).await?;
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            days,
            speed,
            listen,
            dir,
            duration,
        } => {
            let opts = zgsz_platform::demo::Options {
                days,
                speed,
                listen,
                dir,
            };
            let stop = async move {
                match duration {
                    Some(d) => tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = shutdown() => {}
                    },
                    None => shutdown().await,
                }
            };
            cli::demo(&opts, stop).await?;
        }
        Command::Retire { config, quiet_s } => {
            let (cfg, mut store) = open(&config).await?;
            let r = zgsz_platform::retire::retire(&cfg, &mut store, Duration::from_secs(quiet_s))
                .await?;
            if !r.session_present {
                println!(
                    "{}: the broker held no session for this client id",
                    cfg.mqtt.client_id
                );
            }
            println!(
                "{}: took over {} messages ({} stored, {} duplicates, {} rejected); session ended",
                cfg.mqtt.client_id, r.taken_over, r.stored, r.duplicates, r.rejected
            );
        }
        Command::Run { config } => run(&config).await?,
        Command::VerifyReport {
            config,
            dir,
            report,
            signature,
        } => {
            let (report, signature) = match (dir, report, signature) {
                (Some(d), _, _) => (d.join("report.json"), d.join("report.json.sig")),
                (None, Some(r), Some(s)) => (r, s),
                _ => anyhow::bail!("name DIR, or both --report and --signature"),
            };
            let json =
                std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?;
            let sig = std::fs::read(&signature)
                .with_context(|| format!("reading {}", signature.display()))?;
            let (_, mut store) = open(&config).await?;
            let outcome = zgsz_platform::report::intake(&mut store, &json, &sig).await?;
            print!("{}", outcome.summary());
            if outcome.verdict != zgsz_platform::report::Verdict::Accepted {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ingest, and beside it the report endpoint when `[http]` is set, on a
/// connection of its own; both stop at SIGINT/SIGTERM, and the endpoint
/// also when ingest stops on an error.
///
/// Ingest runs on a thread of its own, on a single-threaded runtime: its
/// MQTT session, its batches and its database connections hand each
/// message on without waking another thread. On the default multi-threaded
/// runtime, a catch-up spent about 40 % of the receiver's CPU on those
/// wake-ups (futex and epoll calls); see BENCHMARKS.md. The endpoint keeps
/// the main runtime, so that a page is served while a batch commits.
async fn run(config: &std::path::Path) -> anyhow::Result<()> {
    // Validates the config and migrates the database before anything
    // starts; the endpoint then uses this connection.
    let (cfg, store) = open(config).await?;
    tracing::info!(database = %cfg.database.backend().describe(), "Database open");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = match &cfg.http {
        Some(h) => {
            let listener = zgsz_platform::http::bind(h)
                .await
                .with_context(|| format!("{}: http.listen {}", config.display(), h.listen))?;
            let mut stopped = stopped.clone();
            Some(tokio::spawn(zgsz_platform::http::serve(
                listener,
                store,
                zgsz_platform::http::Site::of(&cfg),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown().await;
        let _ = signal.send(true);
    });
    let ingested = ingest_thread(cfg, stopped).await;
    let _ = stop.send(true);
    if let Some(task) = http {
        task.await.context("the report endpoint")??;
    }
    ingested
}

/// Runs `ingest::run` on a new thread's single-threaded runtime, with
/// connections of its own (a PostgreSQL connection's task runs on the
/// runtime that opened it), until `stopped` turns true.
async fn ingest_thread(
    cfg: Config,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            let ingest = async {
                let backend = cfg.database.backend();
                let store = Store::open(&backend)
                    .await
                    .with_context(|| format!("opening {}", backend.describe()))?;
                let stopping = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                Ok(zgsz_platform::ingest::run(cfg, store, stopping).await?)
            };
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the ingest runtime")
                .and_then(|rt| rt.block_on(ingest));
            let _ = done.send(outcome);
        })
        .context("starting the ingest thread")?;
    result
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the ingest thread ended without a result")))
}

/// A duration argument: `90s`, `10m`, `1h`.
#[cfg(feature = "demo")]
fn duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: write e.g. 90s, 10m or 1h"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: write e.g. 90s, 10m or 1h")),
    }
}

/// A `YYYY-MM-DD` argument.
fn date(s: &str) -> Result<String, String> {
    if is_date(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?}: use YYYY-MM-DD, e.g. 2026-11-02"))
    }
}

async fn open(config: &std::path::Path) -> anyhow::Result<(Config, Store)> {
    let cfg = Config::load(config)?;
    let backend = cfg.database.backend();
    let store = Store::open(&backend)
        .await
        .with_context(|| format!("opening {}", backend.describe()))?;
    Ok((cfg, store))
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
