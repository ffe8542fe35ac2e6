//! A gateway's verified day, reduced to the counts the regional figures
//! need, so that a page over a year reads rows of integers instead of
//! parsing a year of payloads.
//!
//! The four ratios the figures use (both CNC rates, the networking rate
//! and the NC time share) are kept as numerators and denominators. Those
//! of the networking rate and the NC time share add up over several
//! gateways of one enterprise; the CNC rates do not, because pooling
//! (see [`zgsz_contract::payload::pooled_headline`]) takes a process
//! named by several gateways once, key if any of them says so. For that
//! case a day also keeps, per process id, what its equipment counts
//! there ([`ProcessCounts`]); it is read only when an enterprise has more
//! than one gateway on a date.

use serde::{Deserialize, Serialize};
use zgsz_contract::payload::Metrics;
use zgsz_contract::{Industry, Ratio};

use crate::aggregate::{DayCounts, DayFigures};

/// What one gateway's day has in one process id (declared by the gateway
/// or named by its equipment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCounts {
    pub id: String,
    /// Declared a key process by this gateway.
    pub key: bool,
    /// Its equipment: all, NC-capable by kind, `verified_nc`.
    pub equipment: u64,
    pub nc_capable: u64,
    pub verified_nc: u64,
    /// Some equipment of it is a control system (PLC, DCS); and one that
    /// is `verified_nc`: the process-industry CNC rate counts processes.
    pub control: bool,
    pub control_verified: bool,
}

/// One gateway's verified day window, as the `day_figures` table keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct DaySummary {
    pub gateway_id: String,
    pub uscc: String,
    pub region_code: String,
    /// `YYYY-MM-DD` in the plant's offset.
    pub date: String,
    pub industry: Industry,
    /// (numerator, denominator) of the day's own ratios.
    pub cnc_rate_declared: (u64, u64),
    pub cnc_rate_verified: (u64, u64),
    pub networking_rate: (u64, u64),
    pub nc_time_share: (u64, u64),
    /// Some process is key: which of two reasons a null discrete CNC rate
    /// gives.
    pub any_key: bool,
    /// Per process id. Filled when the day is pooled with another gateway's
    /// (the store reads it only then); empty otherwise.
    pub processes: Vec<ProcessCounts>,
}

impl DaySummary {
    /// The summary of a day window's body, with every field filled.
    pub fn of(gateway_id: &str, uscc: &str, region_code: &str, date: &str, body: &Metrics) -> Self {
        let h = body.recompute_headline();
        let parts = |r: &Ratio| (r.numerator, r.denominator);
        let mut processes: Vec<ProcessCounts> = Vec::new();
        fn entry<'a>(ps: &'a mut Vec<ProcessCounts>, id: &str) -> &'a mut ProcessCounts {
            let i = match ps.iter().position(|p| p.id == id) {
                Some(i) => i,
                None => {
                    ps.push(ProcessCounts {
                        id: id.to_string(),
                        key: false,
                        equipment: 0,
                        nc_capable: 0,
                        verified_nc: 0,
                        control: false,
                        control_verified: false,
                    });
                    ps.len() - 1
                }
            };
            &mut ps[i]
        }
        for p in &body.processes {
            entry(&mut processes, &p.id).key |= p.key;
        }
        for e in &body.equipment {
            let p = entry(&mut processes, &e.process);
            p.equipment += 1;
            p.nc_capable += u64::from(e.kind.nc_capable());
            p.verified_nc += u64::from(e.verified_nc);
            p.control |= e.kind.control_system();
            p.control_verified |= e.kind.control_system() && e.verified_nc;
        }
        DaySummary {
            gateway_id: gateway_id.to_string(),
            uscc: uscc.to_string(),
            region_code: region_code.to_string(),
            date: date.to_string(),
            industry: body.industry,
            cnc_rate_declared: parts(&h.cnc_rate_declared),
            cnc_rate_verified: parts(&h.cnc_rate_verified),
            networking_rate: parts(&h.networking_rate),
            nc_time_share: parts(&h.nc_time_share),
            any_key: body.processes.iter().any(|p| p.key),
            processes,
        }
    }
}

/// The reasons [`zgsz_contract::headline`] gives a null ratio of a window.
fn no_key(industry: Industry, any_key: bool) -> &'static str {
    match industry {
        Industry::Discrete if any_key => "no equipment in key processes",
        _ => "no key process is configured",
    }
}

/// The figures of one enterprise's gateways on one date, as
/// [`zgsz_contract::payload::pooled_headline`] computes them from the
/// bodies: the days must share `industry`.
pub fn pooled(industry: Industry, days: &[&DaySummary]) -> DayFigures {
    let c = pooled_counts(industry, days);
    let why = no_key(industry, days.iter().any(|d| d.any_key));
    let ratio = |(n, d): (u64, u64), why: &str| Ratio::new(n, d, why);
    DayFigures {
        cnc_rate_declared: ratio(c.cnc_rate_declared, why),
        cnc_rate_verified: ratio(c.cnc_rate_verified, why),
        networking_rate: ratio(c.networking_rate, "no equipment is configured"),
        nc_time_share: ratio(c.nc_time_share, "no equipment ran in this window"),
    }
}

/// [`pooled`] as counts.
pub fn pooled_counts(industry: Industry, days: &[&DaySummary]) -> DayCounts {
    let add = |f: &dyn Fn(&DaySummary) -> (u64, u64)| {
        days.iter()
            .map(|d| f(d))
            .fold((0, 0), |(n, d), (a, b)| (n + a, d + b))
    };
    let (declared, verified) = match days {
        [one] => (one.cnc_rate_declared, one.cnc_rate_verified),
        _ => pooled_cnc(industry, days),
    };
    DayCounts {
        cnc_rate_declared: declared,
        cnc_rate_verified: verified,
        networking_rate: add(&|d| d.networking_rate),
        nc_time_share: add(&|d| d.nc_time_share),
    }
}

/// Both CNC rates of several gateways' days, a process id counted once
/// and key if any gateway declares it key.
fn pooled_cnc(industry: Industry, days: &[&DaySummary]) -> ((u64, u64), (u64, u64)) {
    let all = || days.iter().flat_map(|d| &d.processes);
    let mut key: Vec<&str> = all().filter(|p| p.key).map(|p| p.id.as_str()).collect();
    key.sort_unstable();
    key.dedup();
    let is_key = |id: &str| key.binary_search(&id).is_ok();
    match industry {
        Industry::Discrete => {
            let (mut n, mut c, mut v) = (0, 0, 0);
            for p in all().filter(|p| is_key(&p.id)) {
                n += p.equipment;
                c += p.nc_capable;
                v += p.verified_nc;
            }
            ((c, n), (v, n))
        }
        Industry::Process => {
            let with = |f: &dyn Fn(&ProcessCounts) -> bool| {
                key.iter()
                    .filter(|k| all().any(|p| p.id == **k && f(p)))
                    .count() as u64
            };
            let n = key.len() as u64;
            (
                (with(&|p| p.control), n),
                (with(&|p| p.control_verified), n),
            )
        }
    }
}
