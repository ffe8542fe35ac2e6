//! The indicators, per window, computed from persisted state transitions
//! and sample counts.
//!
//! Everything here is a pure function of (model, window, data from SQLite),
//! so a figure can be recomputed later from the same evidence and tested
//! without a clock. Every ratio carries its numerator and denominator;
//! with a zero denominator the value is `null` with a reason, never NaN
//! and never 0, so the platform can aggregate both as a mean of rates and
//! as a pooled ratio.

use std::collections::HashMap;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::config::{Declared, Enterprise};
use crate::plant::{PlantModel, State};

pub use zgsz_contract::WindowKind;

/// A half-open interval [start, end) in UTC ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kind: WindowKind,
    pub start: i64,
    pub end: i64,
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

impl Window {
    /// The hour or day (aligned to `offset`) containing `ts`.
    pub fn containing(kind: WindowKind, ts: i64, offset: UtcOffset) -> Window {
        let off = i64::from(offset.whole_seconds()) * 1000;
        let len = match kind {
            WindowKind::Hour => HOUR,
            _ => DAY,
        };
        let start = (ts + off).div_euclid(len) * len - off;
        let end = if kind == WindowKind::Snapshot {
            ts
        } else {
            start + len
        };
        Window { kind, start, end }
    }

    /// The window after this one (hour and day only).
    pub fn next(self) -> Window {
        let len = self.end - self.start;
        Window {
            kind: self.kind,
            start: self.end,
            end: self.end + len,
        }
    }

    pub fn len_ms(&self) -> i64 {
        self.end - self.start
    }
}

/// RFC 3339 with the plant's offset, e.g. `2026-11-28T08:00:00+08:00`.
pub fn rfc3339(ts: i64, offset: UtcOffset) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts) * 1_000_000)
        .map(|t| t.to_offset(offset))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ts.to_string())
}

pub use crate::plant::WindowData;

/// The payload types are the contract with the platform.
pub use zgsz_contract::payload::{
    DeclaredIndicator, DeclaredIndicators, EquipmentMetrics, Indicators, Metrics as Report,
    ProcessMetrics, WindowInfo,
};
pub use zgsz_contract::{Ratio, StateTimes};

/// Computes every indicator for one window.
pub fn compute(
    model: &PlantModel,
    enterprise: &Enterprise,
    config_hash: &str,
    window: Window,
    offset: UtcOffset,
    data: &WindowData,
) -> Report {
    let len = window.len_ms().max(0) as u64;
    let mut by_eq: HashMap<&str, Vec<(i64, State)>> = HashMap::new();
    for (id, ts, s) in &data.transitions {
        by_eq.entry(id.as_str()).or_default().push((*ts, *s));
    }
    let equipment: Vec<EquipmentMetrics> = model
        .equipment
        .iter()
        .map(|e| {
            let transitions = by_eq.get(&*e.id).map_or(&[][..], Vec::as_slice);
            equipment_metrics(model, e, window, data, transitions)
        })
        .collect();

    let processes: Vec<ProcessMetrics> = model
        .processes
        .iter()
        .map(|p| {
            let members: Vec<(&EquipmentMetrics, crate::plant::Kind)> = equipment
                .iter()
                .zip(&model.equipment)
                .filter(|(m, _)| m.process == p.id)
                .map(|(m, e)| (m, e.kind))
                .collect();
            let running_nc: u64 = members.iter().map(|(m, _)| m.time_ms.running_nc).sum();
            let running: u64 = members.iter().map(|(m, _)| m.time_ms.running()).sum();
            ProcessMetrics {
                id: p.id.clone(),
                name: p.name.clone(),
                key: p.key,
                equipment: members.len() as u64,
                nc_capable: members.iter().filter(|(_, k)| k.nc_capable()).count() as u64,
                control_systems: members.iter().filter(|(_, k)| k.control_system()).count() as u64,
                verified_nc: members.iter().filter(|(m, _)| m.verified_nc).count() as u64,
                nc_time_share: Ratio::new(
                    running_nc,
                    running,
                    "no equipment of this process ran in this window",
                ),
                utilisation: Ratio::new(
                    running,
                    len * members.len() as u64,
                    "the process has no equipment",
                ),
            }
        })
        .collect();

    let indicators = zgsz_contract::headline(
        enterprise.industry,
        &model
            .processes
            .iter()
            .map(|p| zgsz_contract::ProcessFigures {
                id: &p.id,
                key: p.key,
            })
            .collect::<Vec<_>>(),
        &equipment
            .iter()
            .map(|m| {
                zgsz_contract::EquipmentFigures::new(
                    &m.process,
                    m.kind,
                    (m.networked, m.verified_nc),
                    &m.time_ms,
                    &m.completeness,
                )
            })
            .collect::<Vec<_>>(),
        zgsz_contract::Span::Window,
    )
    .into();
    let declared = declared_indicators(&enterprise.declared);
    Report {
        industry: enterprise.industry,
        chain: enterprise.chain.clone(),
        enterprise_name: enterprise.name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: config_hash.to_string(),
        window: WindowInfo {
            kind: window.kind,
            start: rfc3339(window.start, offset),
            end: rfc3339(window.end, offset),
            start_ts: window.start,
            end_ts: window.end,
        },
        indicators,
        declared,
        processes,
        equipment,
        seal: None,
        states_upto_seq: None,
    }
}

/// One equipment's figures for `window`, from its state before the window
/// (`data.initial`) and its `transitions` inside it.
fn equipment_metrics(
    model: &PlantModel,
    e: &crate::plant::Equipment,
    window: Window,
    data: &WindowData,
    transitions: &[(i64, State)],
) -> EquipmentMetrics {
    let len = window.len_ms().max(0) as u64;
    let mut times = StateTimes::default();
    let mut state = data.initial.get(&*e.id).copied().unwrap_or(State::Offline);
    let mut cursor = window.start;
    let mut ran_nc = state == State::RunningNc;
    for &(ts, s) in transitions {
        let ts = ts.clamp(window.start, window.end);
        times.add(state, (ts - cursor).max(0) as u64);
        state = s;
        cursor = ts;
        ran_nc |= s == State::RunningNc && ts < window.end;
    }
    times.add(state, (window.end - cursor).max(0) as u64);
    let ran_nc = ran_nc && times.running_nc > 0;
    let (good, _total) = data.samples.get(&*e.id).copied().unwrap_or((0, 0));
    let networked = good > 0 || times.offline < len;
    let interval = e.poll_interval.as_millis().max(1) as u64;
    let expected = (len + interval / 2) / interval;
    EquipmentMetrics {
        id: e.id.to_string(),
        name: e.name.clone(),
        process: model.processes[e.process].id.clone(),
        kind: e.kind,
        nc_capable: e.kind.nc_capable(),
        device: e.device.to_string(),
        networked,
        ran_nc,
        verified_nc: e.kind.nc_capable() && networked && ran_nc,
        utilisation: Ratio::new(times.running(), len, "the window has no length"),
        nc_time_share: Ratio::new(
            times.running_nc,
            times.running(),
            "the equipment did not run in this window",
        ),
        completeness: Ratio::new(good, expected, "no samples were expected in this window"),
        time_ms: times,
    }
}

/// Why a closed window could not be sealed into the digest chain.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot encode the report: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot write the report's canonical lines: {0}")]
    Canonical(#[from] crate::chain::CanonError),
}

/// Why the scheduler could not publish a window's metrics.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
}

/// Computes a window and builds its outbox row. A closed window (hour,
/// day) is sealed onto the digest chain after `head` (the last entry's
/// index and digest); the returned entry must be committed with the row.
pub fn seal_window(
    model: &PlantModel,
    enterprise: &Enterprise,
    config_hash: &str,
    window: Window,
    offset: UtcOffset,
    data: &WindowData,
    head: Option<&(u64, String)>,
) -> Result<
    (
        Report,
        crate::buffer::NewRow,
        Option<crate::chain::ChainEntry>,
    ),
    SealError,
> {
    let mut report = compute(model, enterprise, config_hash, window, offset, data);
    let mut entry = None;
    if window.kind != WindowKind::Snapshot {
        let value = serde_json::to_value(&report)?;
        let lines = crate::chain::metrics_lines(&value)?;
        let ids: Vec<&str> = model.equipment.iter().map(|e| &*e.id).collect();
        let history = crate::chain::transitions_lines(&ids, window.start, window.end, data);
        let seal = crate::chain::seal(head, &lines, &history);
        report.seal = Some(seal.clone());
        report.states_upto_seq = Some(data.upto_seq);
        entry = Some(crate::chain::ChainEntry {
            seal,
            kind: window.kind.name().to_string(),
            start_ts: window.start,
            end_ts: window.end,
            config_hash: config_hash.to_string(),
            body: None,
        });
    }
    let row = crate::buffer::NewRow::new(
        crate::buffer::Kind::Metrics,
        report.equipment.len() as u32,
        body(&report),
    );
    if let Some(e) = entry.as_mut() {
        if window.kind == WindowKind::Day {
            e.body = Some(row.body.clone());
        }
    }
    Ok((report, row, entry))
}

/// A window's figures recomputed from the outbox database, as `metrics`
/// shows them.
#[derive(Debug)]
pub struct Recomputed {
    /// The figures, with the window's seal when the chain holds the same.
    pub report: Report,
    /// The window had not ended: these are the figures so far.
    pub partial: bool,
    /// The window was sealed on the digest chain with other figures (the
    /// evidence changed since): the index of that chain entry.
    pub differs_from_seal: Option<u64>,
}

/// Why a window could not be recomputed.
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    #[error("reading the state history: {0}")]
    History(#[source] rusqlite::Error),
    #[error("reading the digest chain: {0}")]
    Chain(#[source] rusqlite::Error),
    #[error("encoding the figures: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the canonical lines of the figures: {0}")]
    Canon(#[from] crate::chain::CanonError),
}

/// Recomputes the `kind` window containing `at_ms` from the state history
/// in `conn`, as of `now_ms`: a window not yet ended is cut at `now_ms`; a
/// closed window the agent sealed gets its seal when the figures
/// recomputed now are the ones that were sealed.
pub fn recompute(
    c: &crate::config::Config,
    conn: &rusqlite::Connection,
    kind: WindowKind,
    at_ms: i64,
    now_ms: i64,
) -> Result<Recomputed, RecomputeError> {
    let offset = c.metrics.utc_offset;
    let mut w = Window::containing(kind, at_ms, offset);
    let partial = w.end > now_ms;
    if partial {
        w.end = now_ms.max(w.start);
    }
    let data = crate::buffer::window_data(conn, w.start, w.end).map_err(RecomputeError::History)?;
    let mut report = compute(&c.plant, &c.enterprise, &c.hash(), w, offset, &data);
    let mut differs_from_seal = None;
    if !partial {
        let sealed = crate::buffer::chain_entries(conn, w.start, w.start + 1)
            .map_err(RecomputeError::Chain)?
            .into_iter()
            .find(|e| e.kind == kind.name() && e.start_ts == w.start);
        if let Some(e) = sealed {
            let lines = crate::chain::metrics_lines(&serde_json::to_value(&report)?)?;
            if crate::chain::sha256_hex(lines.as_bytes()) == e.seal.metrics_sha256 {
                report.seal = Some(e.seal);
            } else {
                differs_from_seal = Some(e.seal.index);
            }
        }
    }
    Ok(Recomputed {
        report,
        partial,
        differs_from_seal,
    })
}

fn declared_indicators(d: &Declared) -> DeclaredIndicators {
    DeclaredIndicators {
        management: DeclaredIndicator {
            source: "declared".to_string(),
            items: d.management.clone(),
        },
        design_tools: DeclaredIndicator {
            source: "declared".to_string(),
            items: d.design_tools.clone(),
        },
    }
}

/// The report as outbox row body: JSON object members without the braces
/// (the uplink wraps them in the envelope).
pub fn body(report: &Report) -> Vec<u8> {
    let mut v = serde_json::to_vec(report).unwrap_or_else(|_| b"{}".to_vec());
    // `{...}` → `...`
    if v.len() >= 2 {
        v.pop();
        v.remove(0);
    }
    v
}

/// Closed windows are computed this long after they end (plus four poll
/// intervals of the slowest device), so that the readings of the window's
/// last cycles are committed, and an "offline" that is back-dated to three
/// silent poll intervals is already known, before the window is published.
pub const CLOSE_GRACE_MS: i64 = 30_000;
/// After a long outage, windows older than this are not back-filled.
const MAX_CATCH_UP_MS: i64 = 7 * DAY;

/// What the scheduler needs besides the outbox.
pub struct Scheduler {
    pub model: std::sync::Arc<PlantModel>,
    pub enterprise: Enterprise,
    pub config_hash: String,
    pub offset: UtcOffset,
    pub snapshot_interval: std::time::Duration,
    pub buffer: crate::buffer::BufferClient,
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
}

impl Scheduler {
    async fn publish(
        &self,
        window: Window,
        meta: Vec<(String, i64)>,
        head: &mut Option<(u64, String)>,
    ) -> Result<(), PublishError> {
        let data = self.buffer.window_data(window.start, window.end).await?;
        let (report, row, entry) = seal_window(
            &self.model,
            &self.enterprise,
            &self.config_hash,
            window,
            self.offset,
            &data,
            head.as_ref(),
        )?;
        tracing::info!(
            window = window.kind.name(), start = %report.window.start,
            cnc_declared = ?report.indicators.cnc_rate_declared.value,
            cnc_verified = ?report.indicators.cnc_rate_verified.value,
            networking = ?report.indicators.networking_rate.value,
            "Metrics computed"
        );
        match entry {
            Some(entry) => {
                let next = (entry.seal.index, entry.seal.digest.clone());
                self.buffer.append_sealed(row, meta, entry).await?;
                *head = Some(next);
                Ok(())
            }
            None => Ok(self.buffer.append(row, meta).await?),
        }
    }

    /// Closes hourly and daily windows as they end and publishes a snapshot
    /// of the current day every `snapshot_interval`, until shutdown.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.model.equipment.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let mut closed = Vec::new();
        for kind in [WindowKind::Hour, WindowKind::Day] {
            let key = format!("closed_{}_end", kind.name());
            let end = match self.buffer.meta(&key).await {
                Ok(Some(end)) => {
                    // After a change of utc_offset the old boundaries no
                    // longer align: resume at the next aligned boundary.
                    let aligned = Window::containing(kind, end, self.offset);
                    if aligned.start == end {
                        end
                    } else {
                        tracing::warn!(
                            window = kind.name(),
                            "utc_offset changed; windows realign at the next boundary"
                        );
                        aligned.end
                    }
                }
                // First run: no window before this one is claimed.
                Ok(None) => Window::containing(kind, now, self.offset).start,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read the metrics state; no windows will be published");
                    return;
                }
            };
            closed.push((kind, key, end));
        }
        let slowest = self
            .model
            .equipment
            .iter()
            .map(|e| e.poll_interval.as_millis() as i64)
            .max()
            .unwrap_or(0);
        let grace = CLOSE_GRACE_MS + 4 * slowest;
        let mut head = match self.buffer.chain_head().await {
            Ok(h) => h,
            Err(_) => return,
        };
        let mut next_snapshot = now;
        loop {
            let now = self.clock.now_ms();
            for (kind, key, end) in closed.iter_mut() {
                let len = if *kind == WindowKind::Hour { HOUR } else { DAY };
                while *end + len + grace <= now {
                    let w = Window {
                        kind: *kind,
                        start: *end,
                        end: *end + len,
                    };
                    if now - w.end > MAX_CATCH_UP_MS {
                        // Skip the whole stretch at once, with one line.
                        let skip_to = now - MAX_CATCH_UP_MS;
                        let next = Window::containing(*kind, skip_to, self.offset).end;
                        tracing::warn!(
                            window = kind.name(), from = %rfc3339(w.start, self.offset), to = %rfc3339(next, self.offset),
                            "Not back-filling windows older than 7 days"
                        );
                        *end = next;
                        continue;
                    } else if let Err(e) =
                        self.publish(w, vec![(key.clone(), w.end)], &mut head).await
                    {
                        tracing::debug!(error = %e, "Metrics stopped");
                        return;
                    }
                    *end = w.end;
                }
            }
            // `next_snapshot - now > interval` means the clock went back.
            if now >= next_snapshot
                || next_snapshot - now > self.snapshot_interval.as_millis() as i64
            {
                let w = Window::containing(WindowKind::Snapshot, now, self.offset);
                if self.publish(w, Vec::new(), &mut head).await.is_err() {
                    return;
                }
                next_snapshot = now + self.snapshot_interval.as_millis() as i64;
            }
            let next_close = closed
                .iter()
                .map(|(k, _, end)| end + if *k == WindowKind::Hour { HOUR } else { DAY } + grace)
                .min()
                .unwrap_or(i64::MAX);
            // The wait is in clock time; a time-compressed clock waits less.
            let wait = (next_close.min(next_snapshot) - self.clock.now_ms()).max(0) as u64;
            let wait = self
                .clock
                .to_real(std::time::Duration::from_millis(wait))
                .clamp(
                    std::time::Duration::from_millis(10),
                    std::time::Duration::from_secs(60),
                );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
