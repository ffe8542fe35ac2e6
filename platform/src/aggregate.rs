//! The programme's figures per enterprise, district and city, from the
//! verified day windows.
//!
//! **Enterprise, per day.** One USCC may run several gateways (one per
//! workshop). Their day windows are pooled into one headline with the
//! shared arithmetic ([`pooled_headline`]), as if one gateway had all the
//! equipment: numerators and denominators add up, and a process named by
//! several gateways counts once.
//!
//! **Over a period** (a week, a month, the year to date). The equipment
//! counts behind the CNC and networking rates do not add up across days
//! (a machine verified on eight days is one machine, not eight), so an
//! enterprise's rate for a period is the mean of its daily rates; the NC
//! time share is time, and pools (docs/mqtt.md, "Aggregating").
//!
//! **District and city.** Regional statistics are usually the mean of the
//! enterprise rates, which weighs every enterprise equally; the pooled
//! ratio (Σ numerators ÷ Σ denominators over every enterprise-day) weighs
//! every machine. They differ, and both are given, each labelled. A
//! `null` rate is never averaged in as 0: the enterprise is counted as
//! excluded, with the reason.

use std::collections::{BTreeMap, BTreeSet};

use zgsz_contract::payload::{pooled_headline, Metrics};
use zgsz_contract::{Industry, Ratio};

use crate::summary::DaySummary;

/// The programme's 2024 target for 重点企业关键工序数控化率.
pub const TARGET: f64 = 0.65;

/// One gateway's verified day window.
#[derive(Debug, Clone)]
pub struct GatewayDay {
    pub gateway_id: String,
    pub uscc: String,
    pub region_code: String,
    /// `YYYY-MM-DD` in the plant's offset (the window's `start`).
    pub date: String,
    pub body: Metrics,
}

impl GatewayDay {
    /// The day's date from its window's `start` (RFC 3339 in the plant's
    /// offset, whose first ten characters are the local date).
    pub fn date_of(body: &Metrics) -> Option<String> {
        let d = body.window.start.get(..10)?;
        is_date(d).then(|| d.to_string())
    }
}

/// `YYYY-MM-DD` in form (digits and dashes; the calendar is not checked,
/// because dates are only compared as text).
pub fn is_date(s: &str) -> bool {
    s.len() == 10
        && s.bytes().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// One gateway's verified day as the figures read it: from its payload
/// ([`GatewayDay`]) or from the store's summary of it ([`DaySummary`]).
pub trait Day {
    fn gateway_id(&self) -> &str;
    fn uscc(&self) -> &str;
    fn region_code(&self) -> &str;
    /// `YYYY-MM-DD` in the plant's offset.
    fn date(&self) -> &str;
    fn industry(&self) -> Industry;
    /// The figures of one enterprise's gateways on one date, pooled as if
    /// one gateway had all their equipment; `days` share the industry.
    fn pooled(industry: Industry, days: &[&Self]) -> DayFigures
    where
        Self: Sized;
    /// [`Day::pooled`] as counts only: what [`area`] adds up.
    fn pooled_counts(industry: Industry, days: &[&Self]) -> DayCounts
    where
        Self: Sized,
    {
        DayCounts::of(&Self::pooled(industry, days))
    }
}

impl Day for GatewayDay {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }
    fn uscc(&self) -> &str {
        &self.uscc
    }
    fn region_code(&self) -> &str {
        &self.region_code
    }
    fn date(&self) -> &str {
        &self.date
    }
    fn industry(&self) -> Industry {
        self.body.industry
    }
    fn pooled(industry: Industry, days: &[&Self]) -> DayFigures {
        let bodies: Vec<&Metrics> = days.iter().map(|d| &d.body).collect();
        let h = pooled_headline(industry, &bodies);
        DayFigures {
            cnc_rate_declared: h.cnc_rate_declared,
            cnc_rate_verified: h.cnc_rate_verified,
            networking_rate: h.networking_rate,
            nc_time_share: h.nc_time_share,
        }
    }
}

impl Day for DaySummary {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }
    fn uscc(&self) -> &str {
        &self.uscc
    }
    fn region_code(&self) -> &str {
        &self.region_code
    }
    fn date(&self) -> &str {
        &self.date
    }
    fn industry(&self) -> Industry {
        self.industry
    }
    fn pooled(industry: Industry, days: &[&Self]) -> DayFigures {
        crate::summary::pooled(industry, days)
    }
    fn pooled_counts(industry: Industry, days: &[&Self]) -> DayCounts {
        crate::summary::pooled_counts(industry, days)
    }
}

/// [`DayFigures`] as (numerator, denominator) pairs, without the text of a
/// null ratio's reason: a year of enterprise-days is added up without an
/// allocation per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DayCounts {
    pub cnc_rate_declared: (u64, u64),
    pub cnc_rate_verified: (u64, u64),
    pub networking_rate: (u64, u64),
    pub nc_time_share: (u64, u64),
}

impl DayCounts {
    pub fn of(f: &DayFigures) -> DayCounts {
        let parts = |r: &Ratio| (r.numerator, r.denominator);
        DayCounts {
            cnc_rate_declared: parts(&f.cnc_rate_declared),
            cnc_rate_verified: parts(&f.cnc_rate_verified),
            networking_rate: parts(&f.networking_rate),
            nc_time_share: parts(&f.nc_time_share),
        }
    }
}

/// A ratio's value as [`Ratio::new`] computes it.
fn value((n, d): (u64, u64)) -> Option<f64> {
    (d != 0).then(|| n as f64 / d as f64)
}

/// The ratios of a day's headline that the figures use.
#[derive(Debug, Clone, PartialEq)]
pub struct DayFigures {
    pub cnc_rate_declared: Ratio,
    pub cnc_rate_verified: Ratio,
    pub networking_rate: Ratio,
    pub nc_time_share: Ratio,
}

/// An enterprise's figures for one day, its gateways pooled.
#[derive(Debug, Clone)]
pub struct EnterpriseDay {
    pub uscc: String,
    pub region_code: String,
    pub date: String,
    pub industry: Industry,
    /// The gateways whose day windows were pooled.
    pub gateways: Vec<String>,
    pub figures: DayFigures,
}

/// Why an enterprise's figures are left out of a regional figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Registered, but no verified day in the period.
    NotReporting,
    /// A window of the period broke the chain or failed its checks: none
    /// of its figures count until that is resolved.
    RejectedData,
    /// Its gateways report different industries, so no one CNC-rate
    /// formula applies.
    MixedIndustry,
    /// No key process (or no equipment in one): the CNC rate has no
    /// denominator.
    NoKeyProcess,
}

impl Exclusion {
    pub fn describe(self) -> &'static str {
        match self {
            Exclusion::NotReporting => "未报送 no verified day in the period",
            Exclusion::RejectedData => "数据被拒 a window failed verification",
            Exclusion::MixedIndustry => "行业不一致 gateways report different industries",
            Exclusion::NoKeyProcess => "无关键工序 no key process: the CNC rate is null",
        }
    }
}

/// One enterprise over a period.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnterprisePeriod {
    pub uscc: String,
    pub region_code: String,
    /// Verified days in the period.
    pub days: usize,
    /// The mean of the daily values (`None`: no day had one).
    pub cnc_rate_declared: Option<f64>,
    pub cnc_rate_verified: Option<f64>,
    pub networking_rate: Option<f64>,
    /// Pooled over the days (time adds up).
    pub nc_time_share: Ratio,
    /// `None` when the enterprise counts in the regional figures.
    pub excluded: Option<Exclusion>,
}

/// A regional figure, both ways.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Combined {
    /// 企业平均: the mean of the counted enterprises' rates.
    pub mean_of_enterprises: Option<f64>,
    /// How many enterprise rates the mean is over.
    pub enterprises: usize,
    /// 合并比率: Σ numerators ÷ Σ denominators over the counted
    /// enterprises' days.
    pub pooled: Ratio,
}

/// A district's (or the city's) figures over a period.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AreaFigures {
    pub cnc_rate_declared: Combined,
    pub cnc_rate_verified: Combined,
    pub networking_rate: Combined,
    pub nc_time_share: Combined,
    /// Enterprises (USCCs) with an enrolled gateway in the area.
    pub registered: usize,
    /// Enterprises with at least one verified day in the period.
    pub reporting: usize,
    /// Counted enterprises whose verified CNC rate is at or above
    /// [`TARGET`].
    pub at_target: usize,
    /// Enterprises left out, and why.
    pub excluded: BTreeMap<Exclusion, usize>,
    pub enterprises: Vec<EnterprisePeriod>,
}

/// Pools each enterprise's gateways, day by day; sorted by USCC and date.
pub fn enterprise_days<D: Day>(days: &[D]) -> Vec<EnterpriseDay> {
    let refs: Vec<&D> = days.iter().collect();
    pool_days(&refs)
}

fn pool_days<D: Day>(days: &[&D]) -> Vec<EnterpriseDay> {
    let mut by: BTreeMap<(&str, &str), Vec<&D>> = BTreeMap::new();
    for d in days {
        by.entry((d.uscc(), d.date())).or_default().push(d);
    }
    by.into_iter()
        .filter_map(|((uscc, date), ds)| {
            let industry = ds.first()?.industry();
            if ds.iter().any(|d| d.industry() != industry) {
                return None;
            }
            Some(EnterpriseDay {
                uscc: uscc.to_string(),
                region_code: ds.first()?.region_code().to_string(),
                date: date.to_string(),
                industry,
                gateways: ds.iter().map(|d| d.gateway_id().to_string()).collect(),
                figures: D::pooled(industry, &ds),
            })
        })
        .collect()
}

/// What [`area`] works from: hand-built days ([`GatewayDay`]), or the
/// store's summaries ([`DaySummary`], from [`crate::store::Store::area_input`]).
#[derive(Debug, Clone)]
pub struct AreaInput<D = GatewayDay> {
    /// (USCC, region code) of every enterprise with an enrolled gateway.
    pub registered: Vec<(String, String)>,
    /// Every gateway's verified day windows (of the period and region
    /// asked for, when read from the store).
    pub days: Vec<D>,
    /// USCCs with a broken window in the period.
    pub rejected: BTreeSet<String>,
}

impl<D> Default for AreaInput<D> {
    fn default() -> Self {
        AreaInput {
            registered: Vec::new(),
            days: Vec::new(),
            rejected: BTreeSet::new(),
        }
    }
}

impl<D> AreaInput<D> {
    /// The region codes with an enrolled gateway, sorted, each once: the
    /// rows of every district table.
    pub fn regions(&self) -> Vec<&str> {
        let mut r: Vec<&str> = self.registered.iter().map(|(_, r)| r.as_str()).collect();
        r.sort_unstable();
        r.dedup();
        r
    }
}

/// The figures of `region` (a region code; `None`: the whole city) over
/// the days `from..=to` (`YYYY-MM-DD`).
pub fn area<D: Day>(
    input: &AreaInput<D>,
    region: Option<&str>,
    from: &str,
    to: &str,
) -> AreaFigures {
    let days: Vec<&D> = input.days.iter().collect();
    area_of(input, &days, region, from, to)
}

/// [`area`] over `days`, a part of `input.days` holding every day of the
/// period.
fn area_of<D: Day>(
    input: &AreaInput<D>,
    days: &[&D],
    region: Option<&str>,
    from: &str,
    to: &str,
) -> AreaFigures {
    let in_area = |r: &str| region.is_none_or(|x| x == r);
    let in_period = |d: &str| (from..=to).contains(&d);
    let registered: BTreeSet<&str> = input
        .registered
        .iter()
        .filter(|(_, r)| in_area(r))
        .map(|(u, _)| u.as_str())
        .collect();
    let mut chosen: Vec<&D> = days
        .iter()
        .filter(|d| in_area(d.region_code()) && in_period(d.date()))
        .copied()
        .collect();
    // By enterprise and date; stable, so a day's gateways keep their order
    // (and the store's days come sorted already).
    chosen.sort_by(|a, b| (a.uscc(), a.date()).cmp(&(b.uscc(), b.date())));
    // Enterprises whose gateways report different industries on some day;
    // and per enterprise, the region of its first day and its days pooled
    // (a day whose gateways disagree left out).
    let mut mixed: BTreeSet<&str> = BTreeSet::new();
    let mut per: BTreeMap<&str, (&str, Vec<DayCounts>)> = BTreeMap::new();
    for e in chosen.chunk_by(|a, b| a.uscc() == b.uscc()) {
        let Some(first) = e.first() else { continue };
        if e.iter().any(|d| d.industry() != first.industry()) {
            mixed.insert(first.uscc());
        }
        let mut region = None;
        let mut pooled = Vec::new();
        for ds in e.chunk_by(|a, b| a.date() == b.date()) {
            let Some(d0) = ds.first() else { continue };
            if ds.iter().any(|d| d.industry() != d0.industry()) {
                continue;
            }
            region.get_or_insert(d0.region_code());
            pooled.push(D::pooled_counts(d0.industry(), ds));
        }
        if let Some(region) = region {
            per.insert(first.uscc(), (region, pooled));
        }
    }
    let mut enterprises = Vec::new();
    let mut usccs: BTreeSet<&str> = registered.clone();
    usccs.extend(per.keys().copied());
    usccs.extend(mixed.iter().copied());
    for uscc in usccs {
        let (region, days) = per.get(uscc).map_or((None, &[][..]), |(r, d)| {
            (Some((*r).to_string()), d.as_slice())
        });
        let region_code = region
            .or_else(|| {
                input
                    .registered
                    .iter()
                    .find(|(u, _)| u == uscc)
                    .map(|(_, r)| r.clone())
            })
            .unwrap_or_default();
        enterprises.push(enterprise_period(
            uscc,
            region_code,
            days,
            input.rejected.contains(uscc),
            mixed.contains(uscc),
        ));
    }
    let counted: Vec<(&EnterprisePeriod, &[DayCounts])> = enterprises
        .iter()
        .filter(|e| e.excluded.is_none())
        .map(|e| {
            let days = per.get(e.uscc.as_str()).map_or(&[][..], |(_, d)| d);
            (e, days)
        })
        .collect();
    let combine = |rate: &dyn Fn(&EnterprisePeriod) -> Option<f64>,
                   ratio: &dyn Fn(&DayCounts) -> (u64, u64)| {
        let rates: Vec<f64> = counted.iter().filter_map(|(e, _)| rate(e)).collect();
        let (n, d) = counted
            .iter()
            .flat_map(|(_, ds)| ds.iter())
            .map(ratio)
            .fold((0, 0), |(n, d), (a, b)| (n + a, d + b));
        Combined {
            mean_of_enterprises: mean(&rates),
            enterprises: rates.len(),
            pooled: Ratio::new(n, d, "no enterprise counted"),
        }
    };
    let mut excluded = BTreeMap::new();
    for e in &enterprises {
        if let Some(x) = e.excluded {
            *excluded.entry(x).or_insert(0) += 1;
        }
    }
    AreaFigures {
        cnc_rate_declared: combine(&|e| e.cnc_rate_declared, &|h| h.cnc_rate_declared),
        cnc_rate_verified: combine(&|e| e.cnc_rate_verified, &|h| h.cnc_rate_verified),
        networking_rate: combine(&|e| e.networking_rate, &|h| h.networking_rate),
        nc_time_share: combine(&|e| e.nc_time_share.value, &|h| h.nc_time_share),
        registered: registered.len(),
        reporting: enterprises.iter().filter(|e| e.days > 0).count(),
        at_target: counted
            .iter()
            .filter(|(e, _)| e.cnc_rate_verified.is_some_and(|v| v >= TARGET))
            .count(),
        excluded,
        enterprises,
    }
}

/// The verified CNC rate (mean of enterprise rates) of `region` (`None`:
/// the city) on each day of `from..=to` that has any verified day window.
pub fn daily_trend<D: Day>(
    input: &AreaInput<D>,
    region: Option<&str>,
    from: &str,
    to: &str,
) -> Vec<(String, Option<f64>)> {
    // Each date's figures from that date's days only: one pass over the
    // days, not one per date.
    let mut by_date: BTreeMap<&str, Vec<&D>> = BTreeMap::new();
    for d in input
        .days
        .iter()
        .filter(|d| (from..=to).contains(&d.date()))
    {
        by_date.entry(d.date()).or_default().push(d);
    }
    by_date
        .into_iter()
        .map(|(d, days)| {
            let f = area_of(input, &days, region, d, d);
            (d.to_string(), f.cnc_rate_verified.mean_of_enterprises)
        })
        .collect()
}

fn enterprise_period(
    uscc: &str,
    region_code: String,
    days: &[DayCounts],
    rejected: bool,
    mixed: bool,
) -> EnterprisePeriod {
    let daily = |f: &dyn Fn(&DayCounts) -> (u64, u64)| {
        mean(&days.iter().filter_map(|d| value(f(d))).collect::<Vec<_>>())
    };
    let (n, d) = days.iter().fold((0, 0), |(n, d), day| {
        (n + day.nc_time_share.0, d + day.nc_time_share.1)
    });
    let cnc_rate_verified = daily(&|h| h.cnc_rate_verified);
    let excluded = if rejected {
        Some(Exclusion::RejectedData)
    } else if mixed {
        Some(Exclusion::MixedIndustry)
    } else if days.is_empty() {
        Some(Exclusion::NotReporting)
    } else if cnc_rate_verified.is_none() {
        Some(Exclusion::NoKeyProcess)
    } else {
        None
    };
    EnterprisePeriod {
        uscc: uscc.to_string(),
        region_code,
        days: days.len(),
        cnc_rate_declared: daily(&|h| h.cnc_rate_declared),
        cnc_rate_verified,
        networking_rate: daily(&|h| h.networking_rate),
        nc_time_share: Ratio::new(n, d, "no equipment ran in the period"),
        excluded,
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}
