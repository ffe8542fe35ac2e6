//! The period figures: the tables and the headline of a report, and the
//! "how it is computed" texts, as pure functions of the days and the plant
//! model. `build` uses them to write a report, `verify` to re-derive one.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    ChainItem, Computation, ConfigUse, Day, EquipmentSummary, Headline, Plant, PlantEquipment,
    PlantProcess, TARGET,
};
use crate::metrics::{Ratio, StateTimes};
use crate::plant::Kind;
use zgsz_contract::payload::ProcessMetrics;
use zgsz_contract::Industry;

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

/// A day whose stored metrics do not read as a metrics body: the report
/// (or the database it was built from) was damaged or edited.
#[derive(Debug, thiserror::Error)]
#[error("day {date}: the metrics are not a zgsz.metrics/1 body: {source}")]
pub struct DayError {
    date: String,
    source: serde_json::Error,
}

pub(crate) fn day_view(d: &Day) -> Result<DayView, DayError> {
    serde_json::from_value(d.metrics.clone()).map_err(|source| DayError {
        date: d.date.clone(),
        source,
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
pub fn aggregate(
    plant: &Plant,
    industry: &str,
    days: &[Day],
) -> Result<(Vec<ProcessMetrics>, Vec<EquipmentSummary>, Headline), DayError> {
    let views: Vec<DayView> = days.iter().map(day_view).collect::<Result<_, _>>()?;
    let equipment: Vec<EquipmentSummary> = plant
        .equipment
        .iter()
        .map(|pe| equipment_summary(pe, &views))
        .collect();
    let kind_of = |id: &str| {
        plant
            .equipment
            .iter()
            .find(|e| e.id == id)
            .map_or(Kind::Other, |e| parse_kind(&e.kind))
    };
    let processes: Vec<ProcessMetrics> = plant
        .processes
        .iter()
        .map(|p| process_summary(p, &equipment, &kind_of))
        .collect();
    let headline = headline(plant, industry, &equipment, &kind_of);
    Ok((processes, equipment, headline))
}

/// One equipment's figures over the period: its days summed.
fn equipment_summary(pe: &PlantEquipment, views: &[DayView]) -> EquipmentSummary {
    let mut times = StateTimes::default();
    let (mut networked, mut ran_nc, mut verified) = (false, false, false);
    let (mut days_verified, mut n_days, mut len) = (0u64, 0u64, 0u64);
    let (mut good, mut expected) = (0u64, 0u64);
    for v in views {
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
}

/// One process's row over the period, from its equipment's period figures.
fn process_summary(
    p: &PlantProcess,
    equipment: &[EquipmentSummary],
    kind_of: &dyn Fn(&str) -> Kind,
) -> ProcessMetrics {
    let members: Vec<&EquipmentSummary> = equipment.iter().filter(|e| e.process == p.id).collect();
    let running: u64 = members.iter().map(|e| e.time_ms.running()).sum();
    let running_nc: u64 = members.iter().map(|e| e.time_ms.running_nc).sum();
    let len: u64 = members.iter().map(|e| e.utilisation.denominator).sum();
    ProcessMetrics {
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
}

/// The period's headline: the contract's arithmetic over the period
/// figures, and the target.
fn headline(
    plant: &Plant,
    industry: &str,
    equipment: &[EquipmentSummary],
    kind_of: &dyn Fn(&str) -> Kind,
) -> Headline {
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
            .map(|e| {
                zgsz_contract::EquipmentFigures::new(
                    &e.process,
                    kind_of(&e.id),
                    (e.networked, e.verified_nc),
                    &e.time_ms,
                    &e.completeness,
                )
            })
            .collect::<Vec<_>>(),
        zgsz_contract::Span::Period,
    );
    Headline {
        verified_meets_target: h.cnc_rate_verified.value.map(|v| v >= TARGET),
        cnc_rate_declared: h.cnc_rate_declared,
        cnc_rate_verified: h.cnc_rate_verified,
        networking_rate: h.networking_rate,
        networking_rate_key: h.networking_rate_key,
        nc_time_share: h.nc_time_share,
        nc_time_share_key: h.nc_time_share_key,
        completeness: h.completeness,
        target: TARGET,
    }
}

pub fn pct(r: &Ratio) -> String {
    match r.value {
        Some(v) => format!("{:.1}%", v * 100.0),
        None => "—".to_string(),
    }
}

/// A ratio as `numerator / denominator = percent`.
fn frac(r: &Ratio) -> String {
    format!("{} / {} = {}", r.numerator, r.denominator, pct(r))
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
    let h = headline;
    let mut out = cnc_rate_computations(industry, h, &key_eq);
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

/// The declared and verified CNC rate: what they count depends on the
/// industry (key processes with a control system, or NC-capable equipment).
fn cnc_rate_computations(
    industry: &str,
    h: &Headline,
    key_eq: &[&EquipmentSummary],
) -> Vec<Computation> {
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
                names(key_eq, |e| e.nc_capable)
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
                names(key_eq, |e| e.verified_nc)
            ),
        });
    }
    out
}

/// The ids of the key-process equipment that `f` picks, or "none".
fn names(key_eq: &[&EquipmentSummary], f: impl Fn(&EquipmentSummary) -> bool) -> String {
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
}

/// The config hashes behind the chain entries, each run of equal hashes
/// as one use.
pub fn config_history(chain: &[ChainItem]) -> Vec<ConfigUse> {
    let mut history: Vec<ConfigUse> = Vec::new();
    for e in chain {
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
    history
}
