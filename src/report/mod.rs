//! The 数字画像 (digital portrait) evidence report.
//!
//! # Design
//!
//! A report covers whole days `[from, to]` in the plant's UTC offset. Its
//! unit of evidence is the **day**: each day's figures are the `zgsz.metrics/1`
//! body of that day's window, taken from the digest chain when the day was
//! sealed (exactly the figures the platform received), or recomputed from
//! the state history in SQLite when it was not (a day before the chain, or
//! the day still running). Everything above the days (period tables,
//! headline, the "how it is computed" texts) is a pure function of the
//! days and the plant model ([`aggregate`], [`explain`]), so `verify` can
//! re-derive every figure from the report's own detail and compare.
//!
//! `report.json` is the report; `report.html` is rendered from it alone
//! (so `verify` can re-render it and compare), and `report.json.sig` is a
//! detached Ed25519 signature over the exact bytes of `report.json`.
//! The format is documented in docs/report.md and docs/schema/report.json.

mod build;
mod figures;
pub mod html;
pub mod verify;

pub use build::build;
pub use figures::{aggregate, config_history, explain, pct};
pub(crate) use figures::{day_view, parse_industry, parse_kind, DayEquipment, DayView};

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{Date, UtcOffset};

use crate::chain::Seal;
use crate::metrics::{Ratio, StateTimes};
use crate::signing::GatewayKey;
use zgsz_contract::payload::ProcessMetrics;

pub const SCHEMA: &str = "zgsz.report/1";
/// The programme's target for 关键工序数控化率.
pub const TARGET: f64 = 0.65;
pub const JSON_FILE: &str = "report.json";
pub const SIG_FILE: &str = "report.json.sig";
pub const HTML_FILE: &str = "report.html";
/// At most this many days per report (13 months of retained evidence).
pub const MAX_DAYS: i64 = 400;
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Period(String),
    #[error("cannot read the evidence database: {0}")]
    Buffer(#[from] crate::buffer::BufferError),
    #[error("reading the evidence database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the stored metrics of the day starting {start} are unreadable: {why}")]
    StoredDay {
        start: String,
        #[source]
        why: serde_json::Error,
    },
    #[error("the period from {start} has unreadable days: {why}")]
    PeriodDays {
        start: String,
        #[source]
        why: figures::DayError,
    },
    #[error("{path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("encoding the report: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceReport {
    pub schema: String,
    pub generated_ts: i64,
    pub generated: String,
    pub agent_version: String,
    pub enterprise: EnterpriseInfo,
    pub gateway: GatewayInfo,
    pub period: Period,
    pub config: ConfigInfo,
    pub plant: Plant,
    pub headline: Headline,
    pub days: Vec<Day>,
    pub processes: Vec<ProcessMetrics>,
    pub equipment: Vec<EquipmentSummary>,
    pub timeline: Timeline,
    pub outages: Outages,
    pub chain: ChainSection,
    pub computation: Vec<Computation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnterpriseInfo {
    pub name: String,
    pub uscc: String,
    pub region_code: String,
    pub industry: String,
    /// 产业链
    pub chain: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayInfo {
    pub id: String,
    /// Ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// SHA-256 of the public key bytes, hex.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// Last day, `YYYY-MM-DD`.
    pub to: String,
    /// e.g. `+08:00`.
    pub utc_offset: String,
    pub utc_offset_s: i32,
    pub start_ts: i64,
    pub end_ts: i64,
    /// The evidence ends here: `end_ts`, or the generation time when the
    /// period had not ended yet.
    pub covered_end_ts: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigInfo {
    pub current_hash: String,
    /// Config hashes behind the sealed windows of the period, in order.
    pub history: Vec<ConfigUse>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUse {
    pub config_hash: String,
    pub first_start_ts: i64,
    pub last_end_ts: i64,
    pub windows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plant {
    pub processes: Vec<PlantProcess>,
    pub equipment: Vec<PlantEquipment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantProcess {
    pub id: String,
    pub name: String,
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantEquipment {
    pub id: String,
    pub name: String,
    pub process: String,
    pub kind: String,
    pub nc_capable: bool,
    pub control_system: bool,
    pub device: String,
    pub device_address: String,
    pub poll_interval_ms: u64,
    pub rules: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headline {
    pub cnc_rate_declared: Ratio,
    pub cnc_rate_verified: Ratio,
    pub networking_rate: Ratio,
    pub networking_rate_key: Ratio,
    pub nc_time_share: Ratio,
    pub nc_time_share_key: Ratio,
    pub completeness: Ratio,
    pub target: f64,
    /// verified ≥ target; null when the verified rate is null.
    pub verified_meets_target: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Day {
    /// `YYYY-MM-DD` in the plant's offset.
    pub date: String,
    /// `sealed`: from the digest chain, as sent; `recomputed`: not on the
    /// chain, computed from the state history; `partial`: the day so far.
    pub status: String,
    /// The `zgsz.metrics/1` body of the day (no envelope).
    pub metrics: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EquipmentSummary {
    pub id: String,
    pub name: String,
    pub process: String,
    pub kind: String,
    pub nc_capable: bool,
    pub time_ms: StateTimes,
    pub networked: bool,
    pub ran_nc: bool,
    pub verified_nc: bool,
    /// Days on which the equipment was verified NC / days with figures.
    pub days_verified: u64,
    pub days: u64,
    pub utilisation: Ratio,
    pub nc_time_share: Ratio,
    pub completeness: Ratio,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    /// Each slot of this length shows the state the equipment spent most of
    /// it in; adjacent equal slots are merged.
    pub resolution_ms: i64,
    pub equipment: Vec<TimelineRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineRow {
    pub id: String,
    /// `[start_ts, end_ts, state]`, contiguous.
    pub segments: Vec<(i64, i64, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    /// Equipment id; absent for agent downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equipment: Option<String>,
    pub start_ts: i64,
    pub end_ts: i64,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outages {
    /// No equipment was evaluated at all: the agent (or the gateway) was
    /// not running. Derived from the per-minute sample counts.
    pub agent_down: Vec<Gap>,
    /// An equipment was offline while the agent ran: device, cable or PLC.
    pub device_down: Vec<Gap>,
    /// Device outages beyond the listed ones.
    pub device_down_omitted: u64,
    pub uplink: UplinkRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkRecord {
    /// What the gateway records about its uplink, in words.
    pub note: String,
    /// When the MQTT connection was down within the period (from the
    /// gateway's record of every connect and loss).
    pub down: Vec<Gap>,
    pub outbox_rows: u64,
    pub oldest_unsent_ts: Option<i64>,
    pub last_seq: i64,
    pub last_ack_ts: Option<i64>,
    pub acked_rows: u64,
    pub evicted_rows: u64,
    pub evicted_readings: u64,
    pub evicted_metrics: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainItem {
    pub kind: String,
    pub start_ts: i64,
    pub end_ts: i64,
    pub config_hash: String,
    #[serde(flatten)]
    pub seal: Seal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSection {
    /// Every chain entry from the first to the last window of the period,
    /// hours and days, in chain order.
    pub entries: Vec<ChainItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Computation {
    pub figure: String,
    pub label_zh: String,
    pub label_en: String,
    pub formula_zh: String,
    pub formula_en: String,
    /// The formula with this report's numbers.
    pub substituted: String,
}

// ---------------------------------------------------------------------------
// Dates.

pub fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()
}

pub fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

pub fn day_start(d: Date, offset: UtcOffset) -> i64 {
    let t = time::PrimitiveDateTime::new(d, time::Time::MIDNIGHT).assume_offset(offset);
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn offset_text(offset: UtcOffset) -> String {
    let s = offset.whole_seconds();
    let sign = if s < 0 { '-' } else { '+' };
    let a = s.abs();
    format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
}

/// Writes report.json, its signature and report.html into `dir`.
pub fn write(dir: &Path, report: &EvidenceReport, key: &GatewayKey) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    let sig = key.sign(&json);
    let html = html::render(report);
    for (name, bytes) in [
        (JSON_FILE, json.as_slice()),
        (SIG_FILE, sig.as_slice()),
        (HTML_FILE, html.as_bytes()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ReportError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::rfc3339;

    #[test]
    fn dates_and_offsets() {
        let off = UtcOffset::from_hms(8, 0, 0).unwrap();
        let d = parse_date("2026-11-01").unwrap();
        assert_eq!(format_date(d), "2026-11-01");
        assert_eq!(rfc3339(day_start(d, off), off), "2026-11-01T00:00:00+08:00");
        assert_eq!(offset_text(off), "+08:00");
        assert_eq!(
            offset_text(UtcOffset::from_hms(-3, -30, 0).unwrap()),
            "-03:30"
        );
        assert!(parse_date("2026-13-01").is_none());
    }
}
