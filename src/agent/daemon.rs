//! The daemon behind `run`: starts the agent, reloads it on SIGHUP, stops
//! it on SIGTERM or SIGINT, and keeps systemd told (readiness, watchdog,
//! reloading, stopping).

use std::path::PathBuf;
use std::sync::Arc;

use super::{RunningAgent, StartError};
use crate::buffer::BufferError;
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config};
use crate::watchdog::{self, Progress};

/// Why the daemon could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot install the SIGHUP handler")]
    Signal(#[source] std::io::Error),
    #[error("cannot open the outbox in {} (agent.state_dir in {})", state_dir.display(), config.display())]
    Outbox {
        state_dir: PathBuf,
        config: PathBuf,
        #[source]
        source: Box<BufferError>,
    },
    #[error("cannot start the HTTP endpoint ([http] in {})", config.display())]
    Http {
        config: PathBuf,
        #[source]
        source: Box<crate::http::HttpError>,
    },
}

/// Runs the agent on `c` until SIGTERM or SIGINT, reloading on SIGHUP.
pub async fn run(c: Config) -> Result<(), DaemonError> {
    let stop = stop_signal();
    tokio::pin!(stop);
    // Installed before anything starts, so an early SIGHUP is not fatal.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(DaemonError::Signal)?;
    tracing::info!(config = %c.path.display(), gateway = %c.agent.gateway_id, devices = c.devices.len(), "Starting");
    crate::clocksync::warn_if_unsynchronized();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let progress = Progress::new();
    let mut agent = start_agent(&c, &clock, &progress)?;
    let mut raw = crate::reload::read_raw(&c.path);
    let mut current = c;
    watchdog::ready(&format!("Running, {} device(s)", current.devices.len()));
    let (watchdog_stop, watchdog_rx) = tokio::sync::watch::channel(false);
    let watchdog_task = watchdog::period()
        .map(|period| tokio::spawn(watchdog::run(progress.clone(), period, watchdog_rx)));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => {
                watchdog::reloading();
                let new_raw = crate::reload::read_raw(&current.path);
                match reload(agent, &current, raw.as_ref(), new_raw.as_ref(), &clock, &progress).await {
                    Ok((a, Some(new))) => {
                        agent = a;
                        current = new;
                        raw = new_raw;
                    }
                    Ok((a, None)) => agent = a,
                    Err(e) => {
                        watchdog::stopping();
                        return Err(e);
                    }
                }
                watchdog::ready(&format!("Running, {} device(s)", current.devices.len()));
            }
        }
    }
    watchdog::stopping();
    tracing::info!("Stopping: flushing readings to the outbox");
    let _ = watchdog_stop.send(true);
    if let Some(t) = watchdog_task {
        let _ = t.await;
    }
    agent.stop().await;
    Ok(())
}

fn start_agent(
    c: &Config,
    clock: &Arc<dyn Clock>,
    progress: &Arc<Progress>,
) -> Result<RunningAgent, DaemonError> {
    super::start_with(c, clock.clone(), progress.clone()).map_err(|e| match e {
        StartError::Buffer(e) => DaemonError::Outbox {
            state_dir: c.agent.state_dir.clone(),
            config: c.path.clone(),
            source: Box::new(e),
        },
        StartError::Http(e) => DaemonError::Http {
            config: c.path.clone(),
            source: Box::new(e),
        },
    })
}

/// An error and its causes on one line, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// SIGHUP: validates the file again and applies it (see `reload.rs`).
/// Returns the new config if it was applied, `None` if the old one stays;
/// an error only if neither the new nor the old config could be started.
async fn reload(
    mut agent: RunningAgent,
    current: &Config,
    raw: Option<&toml::Table>,
    new_raw: Option<&toml::Table>,
    clock: &Arc<dyn Clock>,
    progress: &Arc<Progress>,
) -> Result<(RunningAgent, Option<Config>), DaemonError> {
    use crate::reload::Plan;
    let path = &current.path;
    let new = match config::load(path) {
        Ok((new, warnings)) => {
            for w in warnings {
                tracing::warn!("{}", w.display(path));
            }
            new
        }
        Err(e) => {
            // One line, so the journal keeps every problem at ERROR.
            let problems = e.to_string().replace('\n', "; ");
            tracing::error!(config = %path.display(), "Config reload refused, still running the previous config: {problems}");
            return Ok((agent, None));
        }
    };
    match crate::reload::plan(raw, new_raw, current, &new) {
        Plan::Unchanged => {
            tracing::info!(config = %path.display(), "Config reloaded; nothing changed");
        }
        Plan::Devices => {
            let ch = agent.reload_devices(&new).await;
            tracing::info!(
                config = %path.display(),
                added = %ch.added.join(","), removed = %ch.removed.join(","),
                changed = %ch.changed.join(","), unchanged = %ch.unchanged.join(","),
                "Config reloaded; changed devices restarted, unchanged devices kept polling"
            );
        }
        Plan::Restart(why) => {
            tracing::warn!(config = %path.display(), "Config reloaded: {why}; restarting the agent in-process");
            agent.stop().await;
            agent = match start_agent(&new, clock, progress) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %chain(&e), "Cannot start with the new config; going back to the previous one");
                    let a = start_agent(current, clock, progress)?;
                    return Ok((a, None));
                }
            };
        }
    }
    Ok((agent, Some(new)))
}

/// SIGTERM (systemd) or SIGINT (Ctrl-C). The handlers are installed when
/// this is called, not when the future is first polled, so a signal that
/// arrives while the agent is still starting is not lost (and does not
/// kill the process with the default action).
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
