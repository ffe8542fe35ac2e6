//! The listing commands: what they print, from what the library gives.

use std::path::Path;

use zgsz_platform::aggregate::{area, AreaInput, Combined, Day};
use zgsz_platform::config::Config;
use zgsz_platform::export;
use zgsz_platform::gaps::{count, Accounting, Verdict};
use zgsz_platform::store::{now_ms, Store};

/// `gaps`; `false` when `--unexplained` listed something (exit 1).
pub async fn gaps(store: &mut Store, unexplained: bool) -> anyhow::Result<bool> {
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
    Ok(!(unexplained && listed > 0))
}

/// `figures`, and its exports.
pub async fn figures(
    store: &mut Store,
    from: &str,
    to: &str,
    csv: Option<&Path>,
    xlsx: Option<&Path>,
) -> anyhow::Result<()> {
    let input = store.area_input(from, to).await?;
    print_figures(&input, from, to);
    let rows = export::table(&input, from, to);
    if let Some(path) = csv {
        export::write_csv(&rows, path)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = xlsx {
        export::write_xlsx(&rows, &format!("{from} – {to}"), path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `quality`.
pub async fn quality(cfg: &Config, store: &mut Store) -> anyhow::Result<()> {
    let stale = i64::try_from(cfg.verify.stale_after_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let problems = store.quality(now_ms(), stale).await?;
    if problems.is_empty() {
        println!("nothing to review");
    }
    for p in problems {
        println!("{}\t{}\t{}", p.gateway_id(), p.kind(), p.detail());
    }
    Ok(())
}

/// `windows`.
pub async fn windows(store: &mut Store) -> anyhow::Result<()> {
    for w in store.windows().await? {
        println!(
            "{} {} #{} {} {} {} {} {}",
            w.gateway_id, w.instance, w.index, w.kind, w.start_ts, w.verdict, w.flags, w.reason
        );
    }
    Ok(())
}

/// The `figures` table: one row per district, then the city.
fn print_figures<D: Day>(input: &AreaInput<D>, from: &str, to: &str) {
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
    let rows = input.regions().into_iter().map(Some).chain([None]);
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

/// `demo`: starts the city, prints where to look, and how far the
/// receiver has got every few seconds, until `stop`.
#[cfg(feature = "demo")]
pub async fn demo(
    opts: &zgsz_platform::demo::Options,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let city = zgsz_platform::demo::City::start(opts)
        .await
        .context("starting the demo city")?;
    println!("zgsz-platform demo: a city on this machine");
    println!(
        "  {} enterprises, {} gateways running the real agent against simulated machines",
        city.enterprises, city.gateways
    );
    println!("  embedded MQTT broker:  {}", city.broker);
    println!("  receiver database:     {}", city.database.display());
    println!(
        "  history: {} days, made in about {} s; then the city runs live",
        opts.days,
        opts.speed
            .map_or(zgsz_platform::demo::CATCH_UP.as_secs(), |s| {
                (f64::from(opts.days) * 86_400.0 / s) as u64
            })
    );
    println!("  pages (this link logs you in):");
    println!("    {}", city.link);
    println!("  stop with Ctrl-C");
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut live = false;
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {}
        }
        let p = city.progress().await?;
        println!(
            "[{}] {} windows stored, {} verified ({} days){}",
            zgsz_platform::pages::when(p.now_ms),
            p.windows,
            p.verified,
            p.days,
            if p.caught_up { "" } else { "; making history" }
        );
        if p.caught_up && !live {
            live = true;
            println!("  the history is in; the city now runs live: {}", city.link);
            // What a diagnostic service provider would upload.
            for (gateway, verdict) in city.upload_reports().await? {
                println!("  evidence report of {gateway} uploaded: {verdict}");
            }
        }
    }
    city.stop().await.context("stopping the demo city")?;
    Ok(())
}
