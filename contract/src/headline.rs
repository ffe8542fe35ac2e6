//! The headline arithmetic: the seven indicators of a window or a period,
//! from the per-equipment figures and the key processes.
//!
//! One function serves the gateway's metrics, its evidence report, the
//! report's `verify`, and the platform, so the CNC rate has one definition
//! (docs/mqtt.md, "Indicators"). It works on counts and milliseconds only;
//! how those were obtained (a window's state history, the sum of a period's
//! days) is the caller's business.

use crate::model::{Industry, Kind, Ratio, StateTimes};

/// A process, as far as the headline needs it.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFigures<'a> {
    pub id: &'a str,
    /// 关键工序
    pub key: bool,
}

/// One equipment's figures over the window or period.
#[derive(Debug, Clone, Copy)]
pub struct EquipmentFigures<'a> {
    /// Its process id.
    pub process: &'a str,
    pub kind: Kind,
    pub networked: bool,
    pub verified_nc: bool,
    /// ms in `running_nc`.
    pub running_nc: u64,
    /// ms in `running_manual` + `running_nc`.
    pub running: u64,
    /// Good rule evaluations.
    pub samples_good: u64,
    /// Expected rule evaluations.
    pub samples_expected: u64,
}

impl<'a> EquipmentFigures<'a> {
    /// From the figures every equipment row carries: the gateway's window,
    /// a report's day and period, and a verifier all read them alike.
    pub fn new(
        process: &'a str,
        kind: Kind,
        (networked, verified_nc): (bool, bool),
        time_ms: &StateTimes,
        completeness: &Ratio,
    ) -> EquipmentFigures<'a> {
        EquipmentFigures {
            process,
            kind,
            networked,
            verified_nc,
            running_nc: time_ms.running_nc,
            running: time_ms.running(),
            samples_good: completeness.numerator,
            samples_expected: completeness.denominator,
        }
    }
}

/// What the figures cover; only the wording of a `null` ratio's reason
/// depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// One hour, day or snapshot (the metrics messages).
    Window,
    /// Several days (the evidence report).
    Period,
}

impl Span {
    fn words(self) -> &'static str {
        match self {
            Span::Window => "in this window",
            Span::Period => "in the period",
        }
    }
}

/// The headline indicators.
#[derive(Debug, Clone, PartialEq)]
pub struct Headline {
    /// 关键工序数控化率, from the configured model.
    pub cnc_rate_declared: Ratio,
    /// 关键工序数控化率, from machine evidence.
    pub cnc_rate_verified: Ratio,
    /// Time in running_nc ÷ time running, all equipment.
    pub nc_time_share: Ratio,
    /// The same, equipment in key processes.
    pub nc_time_share_key: Ratio,
    /// 设备联网率: networked equipment ÷ all equipment.
    pub networking_rate: Ratio,
    pub networking_rate_key: Ratio,
    /// Good samples ÷ expected samples, all equipment.
    pub completeness: Ratio,
}

/// Computes the headline indicators.
///
/// Discrete industry: the CNC rates count NC-capable (declared) and
/// `verified_nc` (verified) equipment of key processes. Process industry:
/// they count key processes with at least one PLC/DCS (declared), and with
/// at least one PLC/DCS that is `verified_nc` (verified).
pub fn headline(
    industry: Industry,
    processes: &[ProcessFigures<'_>],
    equipment: &[EquipmentFigures<'_>],
    span: Span,
) -> Headline {
    let is_key = |process: &str| processes.iter().any(|p| p.key && p.id == process);
    let key_eq: Vec<&EquipmentFigures> = equipment.iter().filter(|e| is_key(e.process)).collect();
    let all: Vec<&EquipmentFigures> = equipment.iter().collect();
    let any_key = processes.iter().any(|p| p.key);
    let no_key = if any_key {
        "no equipment in key processes"
    } else {
        "no key process is configured"
    };
    let count = |it: &[&EquipmentFigures], f: &dyn Fn(&EquipmentFigures) -> bool| {
        it.iter().filter(|e| f(e)).count() as u64
    };
    let sum = |it: &[&EquipmentFigures], f: &dyn Fn(&EquipmentFigures) -> u64| -> u64 {
        it.iter().map(|e| f(e)).sum()
    };
    let (cnc_rate_declared, cnc_rate_verified) = match industry {
        Industry::Discrete => (
            Ratio::new(
                count(&key_eq, &|e| e.kind.nc_capable()),
                key_eq.len() as u64,
                no_key,
            ),
            Ratio::new(
                count(&key_eq, &|e| e.verified_nc),
                key_eq.len() as u64,
                no_key,
            ),
        ),
        Industry::Process => {
            let key: Vec<&ProcessFigures> = processes.iter().filter(|p| p.key).collect();
            let with = |f: &dyn Fn(&EquipmentFigures) -> bool| {
                key.iter()
                    .filter(|p| {
                        equipment
                            .iter()
                            .any(|e| e.process == p.id && e.kind.control_system() && f(e))
                    })
                    .count() as u64
            };
            let why = "no key process is configured";
            (
                Ratio::new(with(&|_| true), key.len() as u64, why),
                Ratio::new(with(&|e| e.verified_nc), key.len() as u64, why),
            )
        }
    };
    let words = span.words();
    Headline {
        cnc_rate_declared,
        cnc_rate_verified,
        nc_time_share: Ratio::new(
            sum(&all, &|e| e.running_nc),
            sum(&all, &|e| e.running),
            &format!("no equipment ran {words}"),
        ),
        nc_time_share_key: Ratio::new(
            sum(&key_eq, &|e| e.running_nc),
            sum(&key_eq, &|e| e.running),
            &format!("no equipment in key processes ran {words}"),
        ),
        networking_rate: Ratio::new(
            count(&all, &|e| e.networked),
            all.len() as u64,
            "no equipment is configured",
        ),
        networking_rate_key: Ratio::new(
            count(&key_eq, &|e| e.networked),
            key_eq.len() as u64,
            no_key,
        ),
        completeness: Ratio::new(
            sum(&all, &|e| e.samples_good),
            sum(&all, &|e| e.samples_expected),
            &format!("no samples were expected {words}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(process: &str, kind: Kind, verified_nc: bool) -> EquipmentFigures<'_> {
        EquipmentFigures {
            process,
            kind,
            networked: true,
            verified_nc,
            running_nc: if verified_nc { 600 } else { 0 },
            running: 1000,
            samples_good: 9,
            samples_expected: 10,
        }
    }

    fn parts(r: &Ratio) -> (u64, u64) {
        (r.numerator, r.denominator)
    }

    /// A plant with two key processes and one other: a CNC lathe (ran NC)
    /// and a manual bench in "turning" (key), a PLC that did not run NC and
    /// a robot that did in "mixing" (key), a CNC in "packing" (not key).
    fn plant() -> (Vec<ProcessFigures<'static>>, Vec<EquipmentFigures<'static>>) {
        let processes = vec![
            ProcessFigures {
                id: "turning",
                key: true,
            },
            ProcessFigures {
                id: "mixing",
                key: true,
            },
            ProcessFigures {
                id: "packing",
                key: false,
            },
        ];
        let mut robot = eq("mixing", Kind::Robot, true);
        robot.networked = false;
        let equipment = vec![
            eq("turning", Kind::Cnc, true),
            eq("turning", Kind::Manual, false),
            eq("mixing", Kind::Plc, false),
            robot,
            eq("packing", Kind::Cnc, true),
        ];
        (processes, equipment)
    }

    #[test]
    fn discrete_counts_equipment_of_key_processes() {
        let (p, e) = plant();
        let h = headline(Industry::Discrete, &p, &e, Span::Window);
        // K = lathe, bench, PLC, robot: 3 NC-capable, 2 verified.
        assert_eq!(parts(&h.cnc_rate_declared), (3, 4));
        assert_eq!(parts(&h.cnc_rate_verified), (2, 4));
        assert_eq!(parts(&h.networking_rate), (4, 5));
        assert_eq!(parts(&h.networking_rate_key), (3, 4));
        assert_eq!(parts(&h.nc_time_share), (1800, 5000));
        assert_eq!(parts(&h.nc_time_share_key), (1200, 4000));
        assert_eq!(parts(&h.completeness), (45, 50));
        assert_eq!(h.cnc_rate_verified.value, Some(0.5));
    }

    #[test]
    fn process_counts_key_processes_with_a_control_system() {
        let (p, mut e) = plant();
        let h = headline(Industry::Process, &p, &e, Span::Window);
        // Only "mixing" has a PLC; it did not run NC (the robot does not count).
        assert_eq!(parts(&h.cnc_rate_declared), (1, 2));
        assert_eq!(parts(&h.cnc_rate_verified), (0, 2));
        e[2].verified_nc = true;
        let h = headline(Industry::Process, &p, &e, Span::Window);
        assert_eq!(parts(&h.cnc_rate_verified), (1, 2));
        // A DCS outside key processes changes nothing.
        e.push(eq("packing", Kind::Dcs, true));
        let h = headline(Industry::Process, &p, &e, Span::Window);
        assert_eq!(parts(&h.cnc_rate_declared), (1, 2));
        assert_eq!(parts(&h.cnc_rate_verified), (1, 2));
        // The other indicators do not depend on the industry.
        let d = headline(Industry::Discrete, &p, &e, Span::Window);
        assert_eq!(h.networking_rate, d.networking_rate);
        assert_eq!(h.nc_time_share_key, d.nc_time_share_key);
    }

    #[test]
    fn empty_denominators_give_null_with_a_reason() {
        let e = [eq("a", Kind::Cnc, false)];
        let none: [ProcessFigures; 1] = [ProcessFigures {
            id: "a",
            key: false,
        }];
        let h = headline(Industry::Discrete, &none, &e, Span::Period);
        assert_eq!(h.cnc_rate_verified.value, None);
        assert_eq!(
            h.cnc_rate_verified.reason.as_deref(),
            Some("no key process is configured")
        );
        let key = [ProcessFigures { id: "b", key: true }];
        let h = headline(Industry::Discrete, &key, &e, Span::Window);
        assert_eq!(
            h.cnc_rate_declared.reason.as_deref(),
            Some("no equipment in key processes")
        );
        assert_eq!(
            h.nc_time_share_key.reason.as_deref(),
            Some("no equipment in key processes ran in this window")
        );
        let h = headline(Industry::Process, &key, &e, Span::Window);
        assert_eq!(parts(&h.cnc_rate_declared), (0, 1));
        let h = headline(Industry::Process, &[], &[], Span::Period);
        assert_eq!(
            h.nc_time_share.reason.as_deref(),
            Some("no equipment ran in the period")
        );
        assert_eq!(
            h.completeness.reason.as_deref(),
            Some("no samples were expected in the period")
        );
    }
}
