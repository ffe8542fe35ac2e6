//! `zgsz-agent verify DIR`: checks a report's signature, re-derives every
//! figure from the report's own detail, and checks the digest chain. Each
//! mismatch is reported in words: which figure, what the report says, and
//! what its detail gives.

use std::path::Path;

use serde_json::Value;

use super::{
    aggregate, config_history, day_start, day_view, explain, format_date, parse_date, DayView,
    EvidenceReport, HTML_FILE, JSON_FILE, SCHEMA, SIG_FILE,
};
use crate::chain::{entry_digest, metrics_lines, sha256_hex, Seal, INDICATORS};
use crate::metrics::Ratio;
use crate::signing;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Mismatches; empty when the report checks out.
    pub problems: Vec<String>,
    /// What was checked, for the operator.
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    fn bad(&mut self, s: impl Into<String>) {
        self.problems.push(s.into());
    }
}

/// Lists where two JSON values differ, as `path: report says A, detail gives B`.
fn diff(path: &str, have: &Value, want: &Value, out: &mut Vec<String>) {
    match (have, want) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => diff(&p, av, bv, out),
                    None => out.push(format!("{p} is missing from the report")),
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.push(format!("{path}.{k} should not be there"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!(
                    "{path} has {} entries, the detail gives {}",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), av, bv, out);
            }
        }
        (a, b) if a != b => out.push(format!(
            "{path} is {a} in the report, but the report's own detail gives {b}"
        )),
        _ => {}
    }
}

fn check_ratio(o: &mut Outcome, at: &str, r: &Ratio) {
    let want = if r.denominator == 0 {
        None
    } else {
        Some(r.numerator as f64 / r.denominator as f64)
    };
    if r.value != want {
        o.bad(format!(
            "{at}: value {} is not {}/{}",
            r.value.map(|v| v.to_string()).unwrap_or("null".into()),
            r.numerator,
            r.denominator
        ));
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "every check of one day's figures against its evidence, in order; not split yet"
)]
fn check_day(o: &mut Outcome, date: &str, v: &DayView) {
    let at = |s: &str| format!("day {date}: {s}");
    let len = (v.window.end_ts - v.window.start_ts).max(0) as u64;
    for (name, r) in &v.indicators {
        check_ratio(o, &at(&format!("indicator {name}")), r);
    }
    check_day_equipment(o, &at, v, len);
    check_day_processes(o, &at, v, len);
    check_day_indicators(o, &at, v);
}

/// A day's equipment rows: times add up to the day, ratios from times,
/// flags from kind and times.
fn check_day_equipment(o: &mut Outcome, at: &dyn Fn(&str) -> String, v: &DayView, len: u64) {
    for e in &v.equipment {
        let t = &e.time_ms;
        let sum = t.offline + t.idle + t.running_manual + t.running_nc;
        if sum != len {
            o.bad(at(&format!(
                "equipment {}: its state times add up to {sum} ms, but the day has {len} ms",
                e.id
            )));
        }
        for (name, r) in [
            ("utilisation", &e.utilisation),
            ("nc_time_share", &e.nc_time_share),
            ("completeness", &e.completeness),
        ] {
            check_ratio(o, &at(&format!("equipment {} {name}", e.id)), r);
        }
        if (e.utilisation.numerator, e.utilisation.denominator) != (t.running(), len) {
            o.bad(at(&format!(
                "equipment {} utilisation is {}/{}, but its running time is {} of {len} ms",
                e.id,
                e.utilisation.numerator,
                e.utilisation.denominator,
                t.running()
            )));
        }
        if (e.nc_time_share.numerator, e.nc_time_share.denominator) != (t.running_nc, t.running()) {
            o.bad(at(&format!(
                "equipment {} NC time share is {}/{}, but it ran {} ms under NC of {} ms running",
                e.id,
                e.nc_time_share.numerator,
                e.nc_time_share.denominator,
                t.running_nc,
                t.running()
            )));
        }
        if e.ran_nc != (t.running_nc > 0) {
            o.bad(at(&format!(
                "equipment {} ran_nc is {} but its NC running time is {} ms",
                e.id, e.ran_nc, t.running_nc
            )));
        }
        if crate::plant::Kind::parse(&e.kind).is_none() {
            o.bad(at(&format!(
                "equipment {} has an unknown kind {}",
                e.id, e.kind
            )));
        }
        let nc_capable = super::parse_kind(&e.kind).nc_capable();
        if e.nc_capable != nc_capable {
            o.bad(at(&format!(
                "equipment {} of kind {} is marked nc_capable {}",
                e.id, e.kind, e.nc_capable
            )));
        }
        if e.verified_nc != (e.nc_capable && e.networked && e.ran_nc) {
            o.bad(at(&format!(
                "equipment {} verified_nc is {}, but nc_capable {}, networked {}, ran_nc {}",
                e.id, e.verified_nc, e.nc_capable, e.networked, e.ran_nc
            )));
        }
    }
}

/// A day's process rows: counts and times from the process's equipment.
fn check_day_processes(o: &mut Outcome, at: &dyn Fn(&str) -> String, v: &DayView, len: u64) {
    for p in &v.processes {
        let members: Vec<_> = v.equipment.iter().filter(|e| e.process == p.id).collect();
        let count = |f: &dyn Fn(&&super::DayEquipment) -> bool| {
            members.iter().filter(|e| f(e)).count() as u64
        };
        let want = (
            members.len() as u64,
            count(&|e| e.nc_capable),
            count(&|e| super::parse_kind(&e.kind).control_system()),
            count(&|e| e.verified_nc),
        );
        let have = (p.equipment, p.nc_capable, p.control_systems, p.verified_nc);
        if have != want {
            o.bad(at(&format!(
                "process {} counts (equipment, NC-capable, control systems, verified) are {have:?}, its equipment gives {want:?}",
                p.id
            )));
        }
        let running: u64 = members.iter().map(|e| e.time_ms.running()).sum();
        let nc: u64 = members.iter().map(|e| e.time_ms.running_nc).sum();
        if (p.nc_time_share.numerator, p.nc_time_share.denominator) != (nc, running)
            || (p.utilisation.numerator, p.utilisation.denominator)
                != (running, len * members.len() as u64)
        {
            o.bad(at(&format!(
                "process {} times do not add up from its equipment",
                p.id
            )));
        }
        check_ratio(
            o,
            &at(&format!("process {} nc_time_share", p.id)),
            &p.nc_time_share,
        );
        check_ratio(
            o,
            &at(&format!("process {} utilisation", p.id)),
            &p.utilisation,
        );
    }
}

/// The day's indicators from the day's own equipment.
fn check_day_indicators(o: &mut Outcome, at: &dyn Fn(&str) -> String, v: &DayView) {
    let h = zgsz_contract::headline(
        super::parse_industry(&v.industry),
        &v.processes
            .iter()
            .map(|p| zgsz_contract::ProcessFigures {
                id: &p.id,
                key: p.key,
            })
            .collect::<Vec<_>>(),
        &v.equipment
            .iter()
            .map(|e| {
                zgsz_contract::EquipmentFigures::new(
                    &e.process,
                    super::parse_kind(&e.kind),
                    (e.networked, e.verified_nc),
                    &e.time_ms,
                    &e.completeness,
                )
            })
            .collect::<Vec<_>>(),
        zgsz_contract::Span::Window,
    );
    let parts = |r: &Ratio| (r.numerator, r.denominator);
    let want: [(&str, (u64, u64)); 7] = [
        ("cnc_rate_declared", parts(&h.cnc_rate_declared)),
        ("cnc_rate_verified", parts(&h.cnc_rate_verified)),
        ("nc_time_share", parts(&h.nc_time_share)),
        ("nc_time_share_key", parts(&h.nc_time_share_key)),
        ("networking_rate", parts(&h.networking_rate)),
        ("networking_rate_key", parts(&h.networking_rate_key)),
        ("completeness", parts(&h.completeness)),
    ];
    for (name, (wn, wd)) in want {
        match v.indicators.get(name) {
            Some(r) if (r.numerator, r.denominator) == (wn, wd) => {}
            Some(r) => o.bad(at(&format!(
                "{name} is {}/{}, but the day's equipment gives {wn}/{wd}",
                r.numerator, r.denominator
            ))),
            None => o.bad(at(&format!("{name} is missing"))),
        }
    }
    debug_assert_eq!(INDICATORS.len(), 7);
}

/// Verifies the report in `dir`. `pubkey`: the key the platform
/// registered; without it the key named in the report is used.
#[allow(
    clippy::too_many_lines,
    reason = "every check verify makes, in the order the report is read; not split yet"
)]
pub fn verify_dir(dir: &Path, pubkey: Option<[u8; 32]>) -> Outcome {
    let mut o = Outcome::default();
    let json = match std::fs::read(dir.join(JSON_FILE)) {
        Ok(b) => b,
        Err(e) => {
            o.bad(format!("{}: {e}", dir.join(JSON_FILE).display()));
            return o;
        }
    };
    let report: EvidenceReport = match serde_json::from_slice(&json) {
        Ok(r) => r,
        Err(e) => {
            o.bad(format!("{JSON_FILE} is not a {SCHEMA} report: {e}"));
            return o;
        }
    };

    check_signature(&mut o, &report, &json, dir, pubkey);
    check_period(&mut o, &report);
    check_days(&mut o, &report);
    check_chain(&mut o, &report);
    check_figures(&mut o, &report);
    check_timeline(&mut o, &report);
    check_html(&mut o, &report, dir);
    let chain = &report.chain.entries;
    if o.ok() {
        o.notes.push(format!(
            "{} day(s), {} chain entries, every figure re-derived from the daily detail",
            report.days.len(),
            chain.len()
        ));
    }
    o
}

/// 1. The signature, against `pubkey` or the key the report names, and the schema.
fn check_signature(
    o: &mut Outcome,
    report: &EvidenceReport,
    json: &[u8],
    dir: &Path,
    pubkey: Option<[u8; 32]>,
) {
    let named = signing::parse_public_key(&report.gateway.public_key);
    let key = match (pubkey, &named) {
        (Some(k), Ok(n)) => {
            if k != *n {
                o.bad(format!(
                    "the report names gateway key {}, but --pubkey is {}: not signed by the registered gateway",
                    report.gateway.public_key,
                    crate::chain::hex(&k)
                ));
            }
            Some(k)
        }
        (Some(k), Err(_)) => Some(k),
        (None, Ok(n)) => {
            o.notes.push(
                "signature checked against the key named in the report itself; pass --pubkey with the gateway's registered key to know who signed it".into(),
            );
            Some(*n)
        }
        (None, Err(e)) => {
            o.bad(format!("gateway.public_key: {e}"));
            None
        }
    };
    if let Ok(n) = &named {
        if signing::fingerprint(n) != report.gateway.fingerprint {
            o.bad("gateway.fingerprint is not the SHA-256 of gateway.public_key");
        }
    }
    match (std::fs::read(dir.join(SIG_FILE)), key) {
        (Ok(sig), Some(k)) => match signing::verify(&k, json, &sig) {
            Ok(()) => o.notes.push(format!(
                "signature valid (Ed25519, key fingerprint {})",
                signing::fingerprint(&k)
            )),
            Err(e) => o.bad(format!("{SIG_FILE}: {e}")),
        },
        (Err(e), _) => o.bad(format!("{SIG_FILE}: {e}")),
        (_, None) => {}
    }

    if report.schema != SCHEMA {
        o.bad(format!(
            "schema is {:?}, expected {SCHEMA:?}",
            report.schema
        ));
    }
}

/// 2. The period and its days: every day, once, in order.
fn check_period(o: &mut Outcome, report: &EvidenceReport) {
    let p = &report.period;
    let offset = time::UtcOffset::from_whole_seconds(p.utc_offset_s).ok();
    match (parse_date(&p.from), parse_date(&p.to), offset) {
        (Some(from), Some(to), Some(offset)) => {
            let end = to.next_day().map(|d| day_start(d, offset));
            if day_start(from, offset) != p.start_ts || end != Some(p.end_ts) {
                o.bad(format!(
                    "period: start_ts/end_ts do not match {} to {} at UTC{}",
                    p.from, p.to, p.utc_offset
                ));
            }
            if p.covered_end_ts > p.end_ts || p.covered_end_ts <= p.start_ts {
                o.bad("period: covered_end_ts lies outside the period");
            }
            let mut expected = Vec::new();
            let mut d = from;
            while d <= to && day_start(d, offset) < p.covered_end_ts {
                expected.push((format_date(d), day_start(d, offset)));
                match d.next_day() {
                    Some(n) => d = n,
                    None => break,
                }
            }
            for (i, day) in report.days.iter().enumerate() {
                match expected.get(i) {
                    Some((want, _)) if *want == day.date => {}
                    Some((want, _)) => {
                        o.bad(format!(
                            "days[{i}] is {}, expected {want}: a day is missing, duplicated or out of order",
                            day.date
                        ));
                        break;
                    }
                    None => {
                        o.bad(format!("days[{i}] ({}) lies outside the period", day.date));
                        break;
                    }
                }
            }
            if report.days.len() < expected.len() {
                let missing: Vec<&str> = expected[report.days.len()..]
                    .iter()
                    .map(|(d, _)| d.as_str())
                    .collect();
                o.bad(format!(
                    "the period {} to {} needs {} day(s), the report lists {} (missing at the end: {})",
                    p.from,
                    p.to,
                    expected.len(),
                    report.days.len(),
                    missing.join(", ")
                ));
            }
            for (day, (date, ds)) in report.days.iter().zip(&expected) {
                let Ok(v) = day_view(day) else { continue };
                let de = parse_date(date)
                    .and_then(|d| d.next_day())
                    .map(|d| day_start(d, offset))
                    .unwrap_or(ds + 86_400_000);
                let end_ok = match day.status.as_str() {
                    "partial" => v.window.end_ts <= de && v.window.kind == "snapshot",
                    _ => v.window.end_ts == de && v.window.kind == "day",
                };
                if v.window.start_ts != *ds || !end_ok {
                    o.bad(format!(
                        "day {date}: its window ({} {}..{}) is not that day",
                        v.window.kind, v.window.start_ts, v.window.end_ts
                    ));
                }
            }
        }
        _ => o.bad(format!(
            "period: cannot read from {:?}, to {:?} or offset {}",
            p.from, p.to, p.utc_offset_s
        )),
    }
}

/// 3. Each day on its own, and sealed days against their seal.
fn check_days(o: &mut Outcome, report: &EvidenceReport) {
    let chain = &report.chain.entries;
    for day in &report.days {
        match day_view(day) {
            Ok(v) => check_day(o, &day.date, &v),
            Err(e) => {
                o.bad(e.to_string());
                continue;
            }
        }
        if day.status == "sealed" {
            let seal: Option<Seal> = day
                .metrics
                .get("seal")
                .and_then(|s| serde_json::from_value(s.clone()).ok());
            let Some(seal) = seal else {
                o.bad(format!(
                    "day {}: marked sealed but carries no seal",
                    day.date
                ));
                continue;
            };
            match metrics_lines(&day.metrics) {
                Ok(lines) => {
                    if sha256_hex(lines.as_bytes()) != seal.metrics_sha256 {
                        o.bad(format!(
                            "day {}: its figures no longer match their seal #{} (metrics_sha256): they were edited after the window was sealed",
                            day.date, seal.index
                        ));
                    }
                }
                Err(e) => o.bad(format!("day {}: {e}", day.date)),
            }
            let start = day.metrics["window"]["start_ts"].as_i64();
            if !chain
                .iter()
                .any(|c| c.seal == seal && c.kind == "day" && Some(c.start_ts) == start)
            {
                o.bad(format!(
                    "day {}: its seal #{} is not in the report's chain",
                    day.date, seal.index
                ));
            }
        } else if day.metrics.get("seal").is_some() {
            o.bad(format!(
                "day {}: carries a seal but is marked {}",
                day.date, day.status
            ));
        }
    }
}

/// 4. The chain: every digest from its parts, every link to the one before; the days it seals; the config history.
fn check_chain(o: &mut Outcome, report: &EvidenceReport) {
    let p = &report.period;
    let chain = &report.chain.entries;
    for (i, c) in chain.iter().enumerate() {
        let s = &c.seal;
        if entry_digest(s.index, &s.prev, &s.metrics_sha256, &s.transitions_sha256) != s.digest {
            o.bad(format!(
                "chain entry #{} ({} window starting {}): its digest does not match its contents",
                s.index, c.kind, c.start_ts
            ));
        }
        if i > 0 {
            let before = &chain[i - 1].seal;
            if s.index != before.index + 1 {
                o.bad(format!(
                    "chain entry #{} follows #{}: entries are missing or out of order",
                    s.index, before.index
                ));
            }
            if s.prev != before.digest {
                o.bad(format!(
                    "chain entry #{}: prev does not match the digest of entry #{} (the chain is broken: an entry was removed, reordered or altered)",
                    s.index, before.index
                ));
            }
        }
        if c.end_ts <= c.start_ts {
            o.bad(format!(
                "chain entry #{}: window ends before it starts",
                s.index
            ));
        }
    }
    for c in chain.iter().filter(|c| c.kind == "day") {
        let in_period = c.start_ts >= p.start_ts && c.start_ts < p.covered_end_ts;
        let listed = report.days.iter().any(|d| {
            d.status == "sealed" && d.metrics["seal"]["digest"].as_str() == Some(&c.seal.digest)
        });
        if in_period && !listed {
            o.bad(format!(
                "chain entry #{} seals a day of the period that the report does not show as sealed",
                c.seal.index
            ));
        }
    }
    if config_history(chain) != report.config.history {
        o.bad("config.history does not match the config hashes of the chain entries");
    }
}

/// 5. Every period figure from the days.
fn check_figures(o: &mut Outcome, report: &EvidenceReport) {
    match aggregate(&report.plant, &report.enterprise.industry, &report.days) {
        Ok((processes, equipment, headline)) => {
            let mut out = Vec::new();
            let j = |v: &dyn erased::Ser| v.value();
            diff("headline", &j(&report.headline), &j(&headline), &mut out);
            diff("processes", &j(&report.processes), &j(&processes), &mut out);
            diff("equipment", &j(&report.equipment), &j(&equipment), &mut out);
            let comp = explain(
                &report.enterprise.industry,
                &headline,
                &equipment,
                &report.plant,
                report.days.len(),
            );
            diff("computation", &j(&report.computation), &j(&comp), &mut out);
            o.problems.extend(out);
        }
        Err(e) => o.bad(e.to_string()),
    }
}

/// 6. The timeline covers the period without holes.
fn check_timeline(o: &mut Outcome, report: &EvidenceReport) {
    let p = &report.period;
    for row in &report.timeline.equipment {
        let mut cur = p.start_ts;
        for (a, b, state) in &row.segments {
            if *a != cur || b <= a || crate::plant::State::parse(state).is_none() {
                o.bad(format!(
                    "timeline of {}: segment {a}..{b} {state} does not continue from {cur}",
                    row.id
                ));
                break;
            }
            cur = *b;
        }
    }
}

/// 7. The HTML is the rendering of this JSON.
fn check_html(o: &mut Outcome, report: &EvidenceReport, dir: &Path) {
    match std::fs::read(dir.join(HTML_FILE)) {
        Ok(html) => {
            if html != super::html::render(report).as_bytes() {
                o.bad(format!(
                    "{HTML_FILE} is not the rendering of {JSON_FILE}: one of them was edited"
                ));
            }
        }
        Err(_) => o
            .notes
            .push(format!("{HTML_FILE} not present; not compared")),
    }
}

/// Serialises anything Serialize into a JSON value for [`diff`].
mod erased {
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}
