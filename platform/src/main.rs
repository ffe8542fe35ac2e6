//! zgsz-platform: thin CLI; the work is in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zgsz_platform::aggregate::{area, is_date, AreaInput, Combined};
use zgsz_platform::config::Config;
use zgsz_platform::gaps::{count, Accounting, Verdict};
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
    /// List the sealed windows with their verdicts.
    Windows {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Check { config } = &cli.command {
        // No database connection: `check` validates, it does not connect.
        let cfg = Config::load(config)?;
        println!(
            "{}: OK (database: {}; subscribing to {})",
            config.display(),
            cfg.database.backend().describe(),
            cfg.filters().join(", ")
        );
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(command(cli.command))
}

async fn command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { .. } => {}
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
            let mut listed = 0;
            for a in store.accounting().await? {
                let verdict = a.verdict();
                let worry = matches!(verdict, Verdict::Unexplained { .. } | Verdict::NoStatus);
                if unexplained && !worry {
                    continue;
                }
                listed += 1;
                print_accounting(&a, &verdict);
            }
            if listed == 0 {
                println!(
                    "{}",
                    if unexplained {
                        "nothing unexplained"
                    } else {
                        "no gateways"
                    }
                );
            }
            if unexplained && listed > 0 {
                std::process::exit(1);
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
            let input = store.area_input(&from, &to).await?;
            print_figures(&input, &from, &to);
            let rows = zgsz_platform::export::table(&input, &from, &to);
            if let Some(path) = csv {
                zgsz_platform::export::write_csv(&rows, &path)?;
                println!("wrote {}", path.display());
            }
            if let Some(path) = xlsx {
                zgsz_platform::export::write_xlsx(&rows, &format!("{from} – {to}"), &path)?;
                println!("wrote {}", path.display());
            }
        }
        Command::Quality { config } => {
            let (cfg, mut store) = open(&config).await?;
            let stale =
                i64::try_from(cfg.verify.stale_after_s.saturating_mul(1000)).unwrap_or(i64::MAX);
            let problems = store.quality(zgsz_platform::store::now_ms(), stale).await?;
            if problems.is_empty() {
                println!("nothing to review");
            }
            for p in problems {
                println!("{}\t{}\t{}", p.gateway_id(), p.kind(), p.detail());
            }
        }
        Command::Windows { config } => {
            let (_, mut store) = open(&config).await?;
            for w in store.windows().await? {
                println!(
                    "{} {} #{} {} {} {} {} {}",
                    w.gateway_id,
                    w.instance,
                    w.index,
                    w.kind,
                    w.start_ts,
                    w.verdict,
                    w.flags,
                    w.reason
                );
            }
        }
        Command::Run { config } => {
            let (cfg, store) = open(&config).await?;
            tracing::info!(database = %cfg.database.backend().describe(), "Database open");
            zgsz_platform::ingest::run(cfg, store, shutdown()).await?;
        }
    }
    Ok(())
}

/// A `YYYY-MM-DD` argument.
fn date(s: &str) -> Result<String, String> {
    if is_date(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?}: use YYYY-MM-DD, e.g. 2026-11-02"))
    }
}

/// The `figures` table: one row per district, then the city.
fn print_figures(input: &AreaInput, from: &str, to: &str) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    let both = |c: &Combined| {
        format!(
            "{} / {} ({}/{})",
            pct(c.mean_of_enterprises),
            pct(c.pooled.value),
            c.pooled.numerator,
            c.pooled.denominator
        )
    };
    println!("{from}..={to}; rates as mean of enterprises / pooled (numerator/denominator)");
    println!("area\tregistered\treporting\tat_or_above_65%\tcnc_verified\tcnc_declared\tnetworking\tnc_time_share\texcluded");
    let mut regions: Vec<&str> = input.registered.iter().map(|(_, r)| r.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    let rows = regions.into_iter().map(Some).chain([None]);
    for region in rows {
        let f = area(input, region, from, to);
        let excluded: Vec<String> = f
            .excluded
            .iter()
            .map(|(x, n)| format!("{n} {}", x.describe()))
            .collect();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            region.unwrap_or("city"),
            f.registered,
            f.reporting,
            f.at_target,
            both(&f.cnc_rate_verified),
            both(&f.cnc_rate_declared),
            both(&f.networking_rate),
            both(&f.nc_time_share),
            if excluded.is_empty() {
                "-".to_string()
            } else {
                excluded.join("; ")
            }
        );
    }
}

/// One block of `gaps`: the verdict, then what it rests on.
fn print_accounting(a: &Accounting, verdict: &Verdict) {
    let ranges = |r: &[(i64, i64)]| {
        r.iter()
            .map(|(x, y)| {
                if x == y {
                    x.to_string()
                } else {
                    format!("{x}..={y}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("{} {}: {verdict}", a.gateway_id, a.instance);
    if !a.missing_windows.is_empty() {
        println!(
            "  windows missing: {} (chain index {})",
            count(&a.missing_windows),
            ranges(&a.missing_windows)
        );
    }
    if !a.missing_transitions.is_empty() {
        println!(
            "  transitions missing: {} (id {})",
            count(&a.missing_transitions),
            ranges(&a.missing_transitions)
        );
    }
    if a.pending_windows > 0 {
        println!("  windows pending: {}", a.pending_windows);
    }
    match &a.counters {
        Some(c) => println!(
            "  gateway reports: {} unsent row(s), last seq {}, evicted {} metrics row(s), {} transition(s), {} row(s) in all",
            c.unsent_rows, c.last_seq, c.evicted_metrics, c.evicted_states, c.evicted_rows
        ),
        None => println!("  gateway reports: no status from this instance"),
    }
    if !a.seq_gaps.is_empty() {
        println!(
            "  seq gaps (other sinks' telemetry shares the sequence): {}",
            ranges(&a.seq_gaps)
        );
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
