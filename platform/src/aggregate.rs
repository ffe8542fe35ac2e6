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

use zgsz_contract::payload::{pooled_headline, Metrics, MetricsMessage};
use zgsz_contract::{Headline, Industry, Ratio};

use crate::store::db::args;
use crate::store::StoreError;

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

/// An enterprise's figures for one day, its gateways pooled.
#[derive(Debug, Clone)]
pub struct EnterpriseDay {
    pub uscc: String,
    pub region_code: String,
    pub date: String,
    pub industry: Industry,
    /// The gateways whose day windows were pooled.
    pub gateways: Vec<String>,
    pub figures: Headline,
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
pub fn enterprise_days(days: &[GatewayDay]) -> Vec<EnterpriseDay> {
    let mut by: BTreeMap<(&str, &str), Vec<&GatewayDay>> = BTreeMap::new();
    for d in days {
        by.entry((d.uscc.as_str(), d.date.as_str()))
            .or_default()
            .push(d);
    }
    by.into_iter()
        .filter_map(|((uscc, date), ds)| {
            let industry = ds.first()?.body.industry;
            if ds.iter().any(|d| d.body.industry != industry) {
                return None;
            }
            let bodies: Vec<&Metrics> = ds.iter().map(|d| &d.body).collect();
            Some(EnterpriseDay {
                uscc: uscc.to_string(),
                region_code: ds.first()?.region_code.clone(),
                date: date.to_string(),
                industry,
                gateways: ds.iter().map(|d| d.gateway_id.clone()).collect(),
                figures: pooled_headline(industry, &bodies),
            })
        })
        .collect()
}

/// What [`area`] works from.
#[derive(Debug, Clone, Default)]
pub struct AreaInput {
    /// (USCC, region code) of every enterprise with an enrolled gateway.
    pub registered: Vec<(String, String)>,
    /// Every gateway's verified day windows.
    pub days: Vec<GatewayDay>,
    /// USCCs with a broken window in the period.
    pub rejected: BTreeSet<String>,
}

impl AreaInput {
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
pub fn area(input: &AreaInput, region: Option<&str>, from: &str, to: &str) -> AreaFigures {
    let in_area = |r: &str| region.is_none_or(|x| x == r);
    let in_period = |d: &str| (from..=to).contains(&d);
    let registered: BTreeSet<&str> = input
        .registered
        .iter()
        .filter(|(_, r)| in_area(r))
        .map(|(u, _)| u.as_str())
        .collect();
    let chosen: Vec<GatewayDay> = input
        .days
        .iter()
        .filter(|d| in_area(&d.region_code) && in_period(&d.date))
        .cloned()
        .collect();
    let mixed: BTreeSet<&str> = mixed_industry(&chosen);
    let pooled_days: Vec<EnterpriseDay> = enterprise_days(&chosen);
    let mut per: BTreeMap<&str, Vec<&EnterpriseDay>> = BTreeMap::new();
    for d in &pooled_days {
        per.entry(d.uscc.as_str()).or_default().push(d);
    }
    let mut enterprises = Vec::new();
    let mut usccs: BTreeSet<&str> = registered.clone();
    usccs.extend(per.keys().copied());
    usccs.extend(mixed.iter().copied());
    for uscc in usccs {
        let days = per.get(uscc).map_or(&[][..], Vec::as_slice);
        let region_code = days
            .first()
            .map(|d| d.region_code.clone())
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
    let counted: Vec<(&EnterprisePeriod, Vec<&EnterpriseDay>)> = enterprises
        .iter()
        .filter(|e| e.excluded.is_none())
        .map(|e| (e, per.get(e.uscc.as_str()).cloned().unwrap_or_default()))
        .collect();
    let combine = |rate: &dyn Fn(&EnterprisePeriod) -> Option<f64>,
                   ratio: &dyn Fn(&Headline) -> &Ratio| {
        let rates: Vec<f64> = counted.iter().filter_map(|(e, _)| rate(e)).collect();
        let (n, d) = counted
            .iter()
            .flat_map(|(_, ds)| ds.iter())
            .map(|d| ratio(&d.figures))
            .fold((0, 0), |(n, d), r| (n + r.numerator, d + r.denominator));
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
        cnc_rate_declared: combine(&|e| e.cnc_rate_declared, &|h| &h.cnc_rate_declared),
        cnc_rate_verified: combine(&|e| e.cnc_rate_verified, &|h| &h.cnc_rate_verified),
        networking_rate: combine(&|e| e.networking_rate, &|h| &h.networking_rate),
        nc_time_share: combine(&|e| e.nc_time_share.value, &|h| &h.nc_time_share),
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
pub fn daily_trend(
    input: &AreaInput,
    region: Option<&str>,
    from: &str,
    to: &str,
) -> Vec<(String, Option<f64>)> {
    let dates: BTreeSet<&str> = input
        .days
        .iter()
        .map(|d| d.date.as_str())
        .filter(|d| (from..=to).contains(d))
        .collect();
    dates
        .into_iter()
        .map(|d| {
            let f = area(input, region, d, d);
            (d.to_string(), f.cnc_rate_verified.mean_of_enterprises)
        })
        .collect()
}

/// USCCs whose gateways report different industries on some day.
fn mixed_industry(days: &[GatewayDay]) -> BTreeSet<&str> {
    let mut seen: BTreeMap<&str, Industry> = BTreeMap::new();
    let mut mixed = BTreeSet::new();
    for d in days {
        if *seen.entry(&d.uscc).or_insert(d.body.industry) != d.body.industry {
            mixed.insert(d.uscc.as_str());
        }
    }
    mixed
}

fn enterprise_period(
    uscc: &str,
    region_code: String,
    days: &[&EnterpriseDay],
    rejected: bool,
    mixed: bool,
) -> EnterprisePeriod {
    let daily = |f: &dyn Fn(&Headline) -> &Ratio| {
        mean(
            &days
                .iter()
                .filter_map(|d| f(&d.figures).value)
                .collect::<Vec<_>>(),
        )
    };
    let (n, d) = days.iter().fold((0, 0), |(n, d), day| {
        (
            n + day.figures.nc_time_share.numerator,
            d + day.figures.nc_time_share.denominator,
        )
    });
    let cnc_rate_verified = daily(&|h| &h.cnc_rate_verified);
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
        cnc_rate_declared: daily(&|h| &h.cnc_rate_declared),
        cnc_rate_verified,
        networking_rate: daily(&|h| &h.networking_rate),
        nc_time_share: Ratio::new(n, d, "no equipment ran in the period"),
        excluded,
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

impl crate::store::Store {
    /// What [`area`] needs, from the database: the registered enterprises,
    /// every verified day window, and the USCCs with a broken window whose
    /// local date falls in `from..=to`.
    pub async fn area_input(&mut self, from: &str, to: &str) -> Result<AreaInput, StoreError> {
        let mut tx = self.begin(false).await?;
        let registered = tx
            .query("SELECT DISTINCT uscc, region_code FROM gateways", args![])
            .await?;
        let windows = tx
            .query(
                "SELECT w.gateway_id, g.uscc, g.region_code, w.kind, w.verdict, m.payload
                 FROM windows w
                 JOIN gateways g ON g.gateway_id = w.gateway_id
                 JOIN messages m ON m.gateway_id = w.gateway_id AND m.msg_id = w.msg_id
                 WHERE (w.kind = 'day' AND w.verdict = 'verified') OR w.verdict = 'broken'",
                args![],
            )
            .await?;
        tx.commit().await?;
        let mut reg = registered
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        reg.sort();
        let mut days = Vec::new();
        let mut rejected = BTreeSet::new();
        for r in &windows {
            // A stored payload parsed once already; one that no longer
            // parses (a newer schema) is left out rather than guessed at.
            let Ok(m) = serde_json::from_str::<MetricsMessage>(&r.text(5)?) else {
                continue;
            };
            let Some(date) = GatewayDay::date_of(&m.body) else {
                continue;
            };
            if r.text(4)? == "broken" {
                if (from..=to).contains(&date.as_str()) {
                    rejected.insert(r.text(1)?);
                }
                continue;
            }
            days.push(GatewayDay {
                gateway_id: r.text(0)?,
                uscc: r.text(1)?,
                region_code: r.text(2)?,
                date,
                body: m.body,
            });
        }
        Ok(AreaInput {
            registered: reg,
            days,
            rejected,
        })
    }
}
