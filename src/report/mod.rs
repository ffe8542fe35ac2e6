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

pub mod html;
pub mod verify;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{Date, UtcOffset};

use crate::chain::Seal;
use crate::config::Config;
use crate::metrics::{rfc3339, Ratio, StateTimes, Window, WindowKind};
use crate::plant::{Kind, State};
use crate::signing::GatewayKey;
use zgsz_contract::Industry;

pub const SCHEMA: &str = "zgsz.report/1";
/// The programme's target for 关键工序数控化率.
pub const TARGET: f64 = 0.65;
pub const JSON_FILE: &str = "report.json";
pub const SIG_FILE: &str = "report.json.sig";
pub const HTML_FILE: &str = "report.html";
/// At most this many days per report (13 months of retained evidence).
pub const MAX_DAYS: i64 = 400;
/// At most this many device outages are listed; the rest are counted.
const MAX_DEVICE_GAPS: usize = 500;

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Period(String),
    #[error("cannot read the evidence database: {0}")]
    Buffer(#[from] crate::buffer::BufferError),
    #[error("reading the evidence database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the stored metrics of the day starting {start} are unreadable: {why}")]
    StoredDay { start: String, why: String },
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
    pub processes: Vec<ProcessSummary>,
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
pub struct ProcessSummary {
    pub id: String,
    pub name: String,
    pub key: bool,
    pub equipment: u64,
    pub nc_capable: u64,
    pub control_systems: u64,
    pub verified_nc: u64,
    pub nc_time_share: Ratio,
    pub utilisation: Ratio,
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

// ---------------------------------------------------------------------------
// The figures of one day, as far as aggregation needs them.

#[derive(Debug, Deserialize)]
pub(crate) struct DayView {
    pub window: WindowView,
    pub processes: Vec<DayProcess>,
    pub equipment: Vec<DayEquipment>,
    pub indicators: BTreeMap<String, Ratio>,
    pub industry: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WindowView {
    pub kind: String,
    pub start_ts: i64,
    pub end_ts: i64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DayProcess {
    pub id: String,
    pub key: bool,
    pub equipment: u64,
    pub nc_capable: u64,
    pub control_systems: u64,
    pub verified_nc: u64,
    pub nc_time_share: Ratio,
    pub utilisation: Ratio,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DayEquipment {
    pub id: String,
    pub process: String,
    pub kind: String,
    pub nc_capable: bool,
    pub time_ms: StateTimes,
    pub networked: bool,
    pub ran_nc: bool,
    pub verified_nc: bool,
    pub utilisation: Ratio,
    pub nc_time_share: Ratio,
    pub completeness: Ratio,
}

pub(crate) fn day_view(d: &Day) -> Result<DayView, String> {
    serde_json::from_value(d.metrics.clone()).map_err(|e| {
        format!(
            "day {}: the metrics are not a zgsz.metrics/1 body: {e}",
            d.date
        )
    })
}

/// The report carries kinds and the industry as text (they are read back
/// from report.json); an unknown kind counts as `other`, as it always has.
pub(crate) fn parse_kind(kind: &str) -> Kind {
    Kind::parse(kind).unwrap_or(Kind::Other)
}

/// An industry other than `process` is computed as discrete.
pub(crate) fn parse_industry(industry: &str) -> Industry {
    if industry == Industry::Process.name() {
        Industry::Process
    } else {
        Industry::Discrete
    }
}

/// The period tables and the headline, from the days and the plant model.
#[allow(
    clippy::too_many_lines,
    reason = "src/report is being split in a change of its own; revisit there"
)]
pub fn aggregate(
    plant: &Plant,
    industry: &str,
    days: &[Day],
) -> Result<(Vec<ProcessSummary>, Vec<EquipmentSummary>, Headline), String> {
    let views: Vec<DayView> = days.iter().map(day_view).collect::<Result<_, _>>()?;
    let equipment: Vec<EquipmentSummary> = plant
        .equipment
        .iter()
        .map(|pe| {
            let mut times = StateTimes::default();
            let (mut networked, mut ran_nc, mut verified) = (false, false, false);
            let (mut days_verified, mut n_days, mut len) = (0u64, 0u64, 0u64);
            let (mut good, mut expected) = (0u64, 0u64);
            for v in &views {
                let Some(e) = v.equipment.iter().find(|e| e.id == pe.id) else {
                    continue;
                };
                n_days += 1;
                len += (v.window.end_ts - v.window.start_ts).max(0) as u64;
                times.offline += e.time_ms.offline;
                times.idle += e.time_ms.idle;
                times.running_manual += e.time_ms.running_manual;
                times.running_nc += e.time_ms.running_nc;
                networked |= e.networked;
                ran_nc |= e.ran_nc;
                verified |= e.verified_nc;
                days_verified += u64::from(e.verified_nc);
                good += e.completeness.numerator;
                expected += e.completeness.denominator;
            }
            EquipmentSummary {
                id: pe.id.clone(),
                name: pe.name.clone(),
                process: pe.process.clone(),
                kind: pe.kind.clone(),
                nc_capable: pe.nc_capable,
                networked,
                ran_nc,
                verified_nc: pe.nc_capable && verified,
                days_verified,
                days: n_days,
                utilisation: Ratio::new(
                    times.running(),
                    len,
                    "no day of the period has figures for this equipment",
                ),
                nc_time_share: Ratio::new(
                    times.running_nc,
                    times.running(),
                    "the equipment did not run in the period",
                ),
                completeness: Ratio::new(good, expected, "no samples were expected in the period"),
                time_ms: times,
            }
        })
        .collect();
    let kind_of = |id: &str| {
        plant
            .equipment
            .iter()
            .find(|e| e.id == id)
            .map_or(Kind::Other, |e| parse_kind(&e.kind))
    };
    let processes: Vec<ProcessSummary> = plant
        .processes
        .iter()
        .map(|p| {
            let members: Vec<&EquipmentSummary> =
                equipment.iter().filter(|e| e.process == p.id).collect();
            let running: u64 = members.iter().map(|e| e.time_ms.running()).sum();
            let running_nc: u64 = members.iter().map(|e| e.time_ms.running_nc).sum();
            let len: u64 = members.iter().map(|e| e.utilisation.denominator).sum();
            ProcessSummary {
                id: p.id.clone(),
                name: p.name.clone(),
                key: p.key,
                equipment: members.len() as u64,
                nc_capable: members.iter().filter(|e| e.nc_capable).count() as u64,
                control_systems: members
                    .iter()
                    .filter(|e| kind_of(&e.id).control_system())
                    .count() as u64,
                verified_nc: members.iter().filter(|e| e.verified_nc).count() as u64,
                nc_time_share: Ratio::new(
                    running_nc,
                    running,
                    "no equipment of this process ran in the period",
                ),
                utilisation: Ratio::new(running, len, "the process has no equipment with figures"),
            }
        })
        .collect();
    let h = zgsz_contract::headline(
        parse_industry(industry),
        &plant
            .processes
            .iter()
            .map(|p| zgsz_contract::ProcessFigures {
                id: &p.id,
                key: p.key,
            })
            .collect::<Vec<_>>(),
        &equipment
            .iter()
            .map(|e| zgsz_contract::EquipmentFigures {
                process: &e.process,
                kind: kind_of(&e.id),
                networked: e.networked,
                verified_nc: e.verified_nc,
                running_nc: e.time_ms.running_nc,
                running: e.time_ms.running(),
                samples_good: e.completeness.numerator,
                samples_expected: e.completeness.denominator,
            })
            .collect::<Vec<_>>(),
        zgsz_contract::Span::Period,
    );
    let headline = Headline {
        verified_meets_target: h.cnc_rate_verified.value.map(|v| v >= TARGET),
        cnc_rate_declared: h.cnc_rate_declared,
        cnc_rate_verified: h.cnc_rate_verified,
        networking_rate: h.networking_rate,
        networking_rate_key: h.networking_rate_key,
        nc_time_share: h.nc_time_share,
        nc_time_share_key: h.nc_time_share_key,
        completeness: h.completeness,
        target: TARGET,
    };
    Ok((processes, equipment, headline))
}

pub fn pct(r: &Ratio) -> String {
    match r.value {
        Some(v) => format!("{:.1}%", v * 100.0),
        None => "—".to_string(),
    }
}

fn hours(ms: u64) -> String {
    format!("{:.1} h", ms as f64 / 3_600_000.0)
}

/// "How each figure is computed", with this report's numbers.
pub fn explain(
    industry: &str,
    headline: &Headline,
    equipment: &[EquipmentSummary],
    plant: &Plant,
    days: usize,
) -> Vec<Computation> {
    let key_ids: Vec<&str> = plant
        .processes
        .iter()
        .filter(|p| p.key)
        .map(|p| p.id.as_str())
        .collect();
    let key_eq: Vec<&EquipmentSummary> = equipment
        .iter()
        .filter(|e| key_ids.contains(&e.process.as_str()))
        .collect();
    let names = |f: &dyn Fn(&EquipmentSummary) -> bool| {
        let v: Vec<&str> = key_eq
            .iter()
            .filter(|e| f(e))
            .map(|e| e.id.as_str())
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let h = headline;
    let frac = |r: &Ratio| format!("{} / {} = {}", r.numerator, r.denominator, pct(r));
    let mut out = Vec::new();
    if industry == "process" {
        out.push(Computation {
            figure: "cnc_rate_declared".into(),
            label_zh: "关键工序数控化率（申报）".into(),
            label_en: "Key-process CNC rate, declared".into(),
            formula_zh: "配有 PLC/DCS 的关键工序数 ÷ 关键工序数".into(),
            formula_en: "key processes with a PLC or DCS ÷ key processes".into(),
            substituted: frac(&h.cnc_rate_declared),
        });
        out.push(Computation {
            figure: "cnc_rate_verified".into(),
            label_zh: "关键工序数控化率（核验）".into(),
            label_en: "Key-process CNC rate, verified".into(),
            formula_zh: "其 PLC/DCS 在报告期内联网并在数控状态下运行过的关键工序数 ÷ 关键工序数".into(),
            formula_en: "key processes whose PLC or DCS was networked and ran under program control in the period ÷ key processes".into(),
            substituted: frac(&h.cnc_rate_verified),
        });
    } else {
        out.push(Computation {
            figure: "cnc_rate_declared".into(),
            label_zh: "关键工序数控化率（申报）".into(),
            label_en: "Key-process CNC rate, declared".into(),
            formula_zh: "关键工序中具备数控能力的设备数 ÷ 关键工序设备总数".into(),
            formula_en: "NC-capable equipment in key processes ÷ equipment in key processes".into(),
            substituted: format!(
                "{} (NC-capable: {})",
                frac(&h.cnc_rate_declared),
                names(&|e| e.nc_capable)
            ),
        });
        out.push(Computation {
            figure: "cnc_rate_verified".into(),
            label_zh: "关键工序数控化率（核验）".into(),
            label_en: "Key-process CNC rate, verified".into(),
            formula_zh: "关键工序中在报告期内至少一天联网且在数控状态下运行的设备数 ÷ 关键工序设备总数".into(),
            formula_en: "equipment in key processes verified NC (networked and running under NC) on at least one day of the period ÷ equipment in key processes".into(),
            substituted: format!(
                "{} (verified: {})",
                frac(&h.cnc_rate_verified),
                names(&|e| e.verified_nc)
            ),
        });
    }
    let run_all: u64 = equipment.iter().map(|e| e.time_ms.running()).sum();
    let nc_all: u64 = equipment.iter().map(|e| e.time_ms.running_nc).sum();
    out.push(Computation {
        figure: "networking_rate".into(),
        label_zh: "设备联网率".into(),
        label_en: "Networking rate".into(),
        formula_zh: "报告期内送出过有效数据的设备数 ÷ 设备总数".into(),
        formula_en: "equipment that delivered good data in the period ÷ all equipment".into(),
        substituted: frac(&h.networking_rate),
    });
    out.push(Computation {
        figure: "nc_time_share".into(),
        label_zh: "数控时间占比".into(),
        label_en: "NC time share".into(),
        formula_zh: "数控运行时间 ÷ 运行时间（手动 + 数控），全部设备".into(),
        formula_en: "time running under NC ÷ time running (manual + NC), all equipment".into(),
        substituted: format!(
            "{} ÷ {} = {} ({} / {} ms)",
            hours(nc_all),
            hours(run_all),
            pct(&h.nc_time_share),
            h.nc_time_share.numerator,
            h.nc_time_share.denominator
        ),
    });
    out.push(Computation {
        figure: "completeness".into(),
        label_zh: "数据完整率".into(),
        label_en: "Data completeness".into(),
        formula_zh: "有效的规则判定次数 ÷ 按采集周期应有的次数，全部设备、逐日求和".into(),
        formula_en: "good rule evaluations ÷ evaluations expected at the poll interval, summed over all equipment and days".into(),
        substituted: frac(&h.completeness),
    });
    out.push(Computation {
        figure: "target".into(),
        label_zh: "目标".into(),
        label_en: "Target".into(),
        formula_zh: "核验的关键工序数控化率 ≥ 65%".into(),
        formula_en: "verified key-process CNC rate ≥ 65%".into(),
        substituted: match h.verified_meets_target {
            Some(true) => format!(
                "{} ≥ 65%: met (达标), over {days} day(s)",
                pct(&h.cnc_rate_verified)
            ),
            Some(false) => format!(
                "{} < 65%: not met (未达标), over {days} day(s)",
                pct(&h.cnc_rate_verified)
            ),
            None => "no verified rate (无核验数据)".to_string(),
        },
    });
    out
}

// ---------------------------------------------------------------------------
// Building a report from the gateway's database.

fn gap(equipment: Option<&str>, start: i64, end: i64, offset: UtcOffset) -> Gap {
    Gap {
        equipment: equipment.map(str::to_string),
        start_ts: start,
        end_ts: end,
        start: rfc3339(start, offset),
        end: rfc3339(end, offset),
    }
}

/// Subtracts `cut` (sorted, disjoint) from [start, end).
fn subtract(start: i64, end: i64, cut: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut cur = start;
    for &(a, b) in cut {
        if b <= cur || a >= end {
            continue;
        }
        if a > cur {
            out.push((cur, a));
        }
        cur = cur.max(b);
    }
    if cur < end {
        out.push((cur, end));
    }
    out
}

/// Builds the report for days `from..=to` from the state directory of
/// `cfg`, as of `now_ms`.
#[allow(
    clippy::too_many_lines,
    reason = "src/report is being split in a change of its own; revisit there"
)]
pub fn build(
    cfg: &Config,
    key: &GatewayKey,
    from: Date,
    to: Date,
    now_ms: i64,
) -> Result<EvidenceReport, ReportError> {
    let offset = cfg.metrics.utc_offset;
    if to < from {
        return Err(ReportError::Period(format!(
            "--to {} is before --from {}",
            format_date(to),
            format_date(from)
        )));
    }
    let start = day_start(from, offset);
    let end = to
        .next_day()
        .map(|d| day_start(d, offset))
        .unwrap_or(start + DAY_MS);
    if (end - start) / DAY_MS > MAX_DAYS {
        return Err(ReportError::Period(format!(
            "the period has {} days; a report covers at most {MAX_DAYS}",
            (end - start) / DAY_MS
        )));
    }
    if start >= now_ms {
        return Err(ReportError::Period(format!(
            "the period starts {} which is in the future",
            rfc3339(start, offset)
        )));
    }
    let covered_end = end.min(now_ms);
    let conn = crate::buffer::open_read_only(&cfg.agent.state_dir)?;
    let entries = crate::buffer::chain_entries(&conn, start, end)?;
    let stored: BTreeMap<i64, &crate::chain::ChainEntry> = entries
        .iter()
        .filter(|e| e.kind == "day" && e.body.is_some())
        .map(|e| (e.start_ts, e))
        .collect();

    let mut days = Vec::new();
    let mut date = from;
    loop {
        let ds = day_start(date, offset);
        if ds >= covered_end {
            break;
        }
        let de = date
            .next_day()
            .map(|d| day_start(d, offset))
            .unwrap_or(ds + DAY_MS);
        let (status, metrics) = match stored.get(&ds).and_then(|e| e.body.as_ref()) {
            Some(body) => {
                let mut text = Vec::with_capacity(body.len() + 2);
                text.push(b'{');
                text.extend_from_slice(body);
                text.push(b'}');
                let v: Value =
                    serde_json::from_slice(&text).map_err(|e| ReportError::StoredDay {
                        start: rfc3339(ds, offset),
                        why: e.to_string(),
                    })?;
                ("sealed", v)
            }
            None => {
                let partial = de > now_ms;
                let w = Window {
                    kind: if partial {
                        WindowKind::Snapshot
                    } else {
                        WindowKind::Day
                    },
                    start: ds,
                    end: de.min(now_ms),
                };
                let data = crate::buffer::window_data(&conn, w.start, w.end)?;
                let r = crate::metrics::compute(
                    &cfg.plant,
                    &cfg.enterprise,
                    &cfg.hash(),
                    w,
                    offset,
                    &data,
                );
                (
                    if partial { "partial" } else { "recomputed" },
                    serde_json::to_value(&r)?,
                )
            }
        };
        days.push(Day {
            date: format_date(date),
            status: status.to_string(),
            metrics,
        });
        match date.next_day() {
            Some(d) if d <= to => date = d,
            _ => break,
        }
    }

    let plant = Plant {
        processes: cfg
            .plant
            .processes
            .iter()
            .map(|p| PlantProcess {
                id: p.id.clone(),
                name: p.name.clone(),
                key: p.key,
            })
            .collect(),
        equipment: cfg
            .plant
            .equipment
            .iter()
            .map(|e| PlantEquipment {
                id: e.id.to_string(),
                name: e.name.clone(),
                process: cfg.plant.processes[e.process].id.clone(),
                kind: serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                nc_capable: e.kind.nc_capable(),
                control_system: e.kind.control_system(),
                device: e.device.to_string(),
                device_address: cfg
                    .devices
                    .iter()
                    .find(|d| d.id == e.device)
                    .map(|d| d.address.clone())
                    .unwrap_or_default(),
                poll_interval_ms: e.poll_interval.as_millis() as u64,
                rules: format!(
                    "running: {} · NC: {}{}",
                    e.running.text,
                    e.nc_active.text,
                    e.profile
                        .as_deref()
                        .map(|p| format!(" (profile {p})"))
                        .unwrap_or_default()
                ),
            })
            .collect(),
    };
    let industry = match cfg.enterprise.industry {
        crate::config::Industry::Process => "process",
        crate::config::Industry::Discrete => "discrete",
    };
    let (processes, equipment, headline) =
        aggregate(&plant, industry, &days).map_err(|why| ReportError::StoredDay {
            start: rfc3339(start, offset),
            why,
        })?;
    let computation = explain(industry, &headline, &equipment, &plant, days.len());

    // The timeline and the outages, from the exact state history.
    let data = crate::buffer::window_data(&conn, start, covered_end)?;
    let exact = segments(&plant, start, covered_end, &data);
    let len = (covered_end - start).max(1);
    let resolution = ((len / 1440).max(60_000) + 59_999) / 60_000 * 60_000;
    let timeline = Timeline {
        resolution_ms: resolution,
        equipment: plant
            .equipment
            .iter()
            .zip(&exact)
            .map(|(e, segs)| TimelineRow {
                id: e.id.clone(),
                segments: coarsen(segs, start, covered_end, resolution),
            })
            .collect(),
    };
    let slowest = plant
        .equipment
        .iter()
        .map(|e| e.poll_interval_ms as i64)
        .max()
        .unwrap_or(1_000);
    let threshold = (3 * slowest).max(60_000) + 60_000;
    let minutes = crate::buffer::sample_minutes(&conn, start, covered_end)?;
    let mut down: Vec<(i64, i64)> = Vec::new();
    let mut last_seen = start - 60_000;
    for m in minutes.iter().copied().chain(std::iter::once(covered_end)) {
        let from_ts = (last_seen + 60_000).max(start);
        if m - last_seen > threshold && m > from_ts {
            down.push((from_ts, m));
        }
        last_seen = m;
    }
    let agent_down: Vec<Gap> = down.iter().map(|&(a, b)| gap(None, a, b, offset)).collect();
    let mut device_down = Vec::new();
    for (e, segs) in plant.equipment.iter().zip(&exact) {
        for &(a, b, s) in segs {
            if s != State::Offline {
                continue;
            }
            for (x, y) in subtract(a, b, &down) {
                if y - x >= threshold.min(3 * e.poll_interval_ms as i64).max(1) {
                    device_down.push(gap(Some(&e.id), x, y, offset));
                }
            }
        }
    }
    device_down.sort_by_key(|g| (g.start_ts, g.equipment.clone()));
    let omitted = device_down.len().saturating_sub(MAX_DEVICE_GAPS) as u64;
    device_down.truncate(MAX_DEVICE_GAPS);
    let stats = crate::buffer::read_stats(&cfg.agent.state_dir)?;
    // Uplink outages: from each recorded loss to the next connect, clipped
    // to the covered period.
    let mut uplink_down = Vec::new();
    let mut down_since: Option<i64> = None;
    for (ts, up, _) in crate::buffer::uplink_events(&conn, start, covered_end)? {
        match (up, down_since) {
            (false, None) => down_since = Some(ts.max(start)),
            (true, Some(since)) => {
                if ts > since {
                    uplink_down.push(gap(None, since, ts, offset));
                }
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(since) = down_since {
        if covered_end > since {
            uplink_down.push(gap(None, since, covered_end, offset));
        }
    }
    let uplink = UplinkRecord {
        down: uplink_down,
        note: "Every message stays in the outbox until the broker acknowledges it (PUBACK), so an uplink outage delays messages but loses none unless the outbox overflows; messages sent after an outage are marked historical. The counters below are since the outbox was created. 消息在收到确认前一直保存在本地缓存中，上行链路中断只会延迟、不会丢失数据（除非缓存溢出，见下方计数）；中断后补发的消息标记为历史数据。".into(),
        outbox_rows: stats.rows,
        oldest_unsent_ts: stats.oldest_unsent_ts,
        last_seq: stats.last_seq,
        last_ack_ts: stats.last_ack_ts,
        acked_rows: stats.acked_rows,
        evicted_rows: stats.evicted_rows,
        evicted_readings: stats.evicted_readings,
        evicted_metrics: stats.evicted_metrics,
    };

    let mut history: Vec<ConfigUse> = Vec::new();
    for e in &entries {
        match history.last_mut() {
            Some(h) if h.config_hash == e.config_hash => {
                h.last_end_ts = e.end_ts;
                h.windows += 1;
            }
            _ => history.push(ConfigUse {
                config_hash: e.config_hash.clone(),
                first_start_ts: e.start_ts,
                last_end_ts: e.end_ts,
                windows: 1,
            }),
        }
    }

    Ok(EvidenceReport {
        schema: SCHEMA.into(),
        generated_ts: now_ms,
        generated: rfc3339(now_ms, offset),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        enterprise: EnterpriseInfo {
            name: cfg.enterprise.name.clone(),
            uscc: cfg.enterprise.uscc.clone(),
            region_code: cfg.enterprise.region_code.clone(),
            industry: industry.into(),
            chain: cfg.enterprise.chain.clone(),
        },
        gateway: GatewayInfo {
            id: cfg.agent.gateway_id.clone(),
            public_key: key.public_hex(),
            fingerprint: key.fingerprint(),
        },
        period: Period {
            from: format_date(from),
            to: format_date(to),
            utc_offset: offset_text(offset),
            utc_offset_s: offset.whole_seconds(),
            start_ts: start,
            end_ts: end,
            covered_end_ts: covered_end,
        },
        config: ConfigInfo {
            current_hash: cfg.hash(),
            history,
        },
        plant,
        headline,
        days,
        processes,
        equipment,
        timeline,
        outages: Outages {
            agent_down,
            device_down,
            device_down_omitted: omitted,
            uplink,
        },
        chain: ChainSection {
            entries: entries
                .iter()
                .map(|e| ChainItem {
                    kind: e.kind.clone(),
                    start_ts: e.start_ts,
                    end_ts: e.end_ts,
                    config_hash: e.config_hash.clone(),
                    seal: e.seal.clone(),
                })
                .collect(),
        },
        computation,
    })
}

/// Exact state segments per plant equipment over [start, end).
fn segments(
    plant: &Plant,
    start: i64,
    end: i64,
    data: &crate::metrics::WindowData,
) -> Vec<Vec<(i64, i64, State)>> {
    plant
        .equipment
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            let mut state = data.initial.get(&e.id).copied().unwrap_or(State::Offline);
            let mut cursor = start;
            for (id, ts, s) in &data.transitions {
                if *id != e.id {
                    continue;
                }
                let ts = (*ts).clamp(start, end);
                if ts > cursor {
                    out.push((cursor, ts, state));
                    cursor = ts;
                }
                state = *s;
            }
            if end > cursor {
                out.push((cursor, end, state));
            }
            out
        })
        .collect()
}

/// The dominant state of every `resolution` slot, adjacent equal slots merged.
fn coarsen(
    exact: &[(i64, i64, State)],
    start: i64,
    end: i64,
    resolution: i64,
) -> Vec<(i64, i64, String)> {
    let slots = ((end - start + resolution - 1) / resolution).max(0) as usize;
    let mut acc = vec![[0i64; 4]; slots];
    for &(a, b, s) in exact {
        let si = State::ALL.iter().position(|x| *x == s).unwrap_or(0);
        let mut t = a;
        while t < b {
            let slot = ((t - start) / resolution) as usize;
            let slot_end = (start + (slot as i64 + 1) * resolution).min(b);
            if let Some(x) = acc.get_mut(slot) {
                x[si] += slot_end - t;
            }
            t = slot_end;
        }
    }
    let mut out: Vec<(i64, i64, String)> = Vec::new();
    for (i, a) in acc.iter().enumerate() {
        let s0 = start + i as i64 * resolution;
        let s1 = (s0 + resolution).min(end);
        let best = (0..4)
            .max_by_key(|&k| (a[k], std::cmp::Reverse(k)))
            .unwrap_or(0);
        let name = State::ALL[best].name();
        match out.last_mut() {
            Some(last) if last.2 == name => last.1 = s1,
            _ => out.push((s0, s1, name.to_string())),
        }
    }
    out
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

    #[test]
    fn agent_downtime_is_cut_out_of_device_outages() {
        assert_eq!(subtract(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(
            subtract(0, 100, &[(10, 20), (50, 60)]),
            vec![(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(subtract(10, 20, &[(0, 30)]), vec![]);
        assert_eq!(subtract(10, 40, &[(0, 15), (35, 50)]), vec![(15, 35)]);
    }

    #[test]
    fn the_timeline_shows_the_dominant_state_of_each_slot() {
        let exact = [
            (0, 70, State::Idle),
            (70, 100, State::RunningNc),
            (100, 260, State::Offline),
            (260, 300, State::RunningNc),
        ];
        assert_eq!(
            coarsen(&exact, 0, 300, 100),
            vec![
                (0, 100, "idle".to_string()),
                // 60 of 100 offline, 40 running: offline wins; merged.
                (100, 300, "offline".to_string()),
            ]
        );
        // A partial last slot, and equal slots merged.
        assert_eq!(
            coarsen(&[(0, 250, State::RunningManual)], 0, 250, 100),
            vec![(0, 250, "running_manual".to_string())]
        );
    }

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
