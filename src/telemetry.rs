//! `[telemetry]`: which readings of a poll cycle are published, every
//! cycle or by exception.
//!
//! The plant stage sees every cycle whatever is chosen here, so the
//! metrics never change with it; only what the sinks publish is thinned.
//! By exception ("change"), a value is published when it moved past its
//! deadband since the value last published, when its quality or bad reason
//! changed, and at least every `max_interval` (a heartbeat, so that a
//! consumer knows a quiet value is still current). OPC UA devices report
//! by exception unless the config says otherwise: their servers already
//! report on change, and the agent re-states unchanged values each cycle
//! only for the plant model.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::buffer::Publish;
use crate::config::{duration, Config, Problems};
use crate::reading::{Quality, Reading, Value};

/// How a tag is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Report {
    /// Every poll cycle.
    Cycle,
    /// By exception: on change past the deadband, plus the heartbeat.
    Change,
}

/// `[telemetry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Default: "cycle" for Modbus devices, "change" for OPC UA devices.
    report: Option<Report>,
    /// Publish when the value moved by more than this; default 0.
    deadband_absolute: Option<f64>,
    /// ...or by more than this percent of the value last published; default 0.
    deadband_percent: Option<f64>,
    /// Heartbeat: a quiet value is published again after this; default "60s".
    max_interval: Option<String>,
    /// Overrides for some devices or tags; later rules win.
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// The reporting keys, wherever they were written.
struct RawPolicy {
    /// Default: "cycle" for Modbus devices, "change" for OPC UA devices.
    report: Option<Report>,
    /// Publish when the value moved by more than this; default 0.
    deadband_absolute: Option<f64>,
    /// ...or by more than this percent of the value last published; default 0.
    deadband_percent: Option<f64>,
    /// Heartbeat: a quiet value is published again after this; default "60s".
    max_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Devices the rule applies to; default all.
    devices: Option<Vec<String>>,
    /// Tags the rule applies to; default all.
    tags: Option<Vec<String>>,
    report: Option<Report>,
    deadband_absolute: Option<f64>,
    deadband_percent: Option<f64>,
    max_interval: Option<String>,
}

/// One tag's reporting, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub report: Report,
    pub deadband_absolute: f64,
    pub deadband_percent: f64,
    pub max_interval_ms: i64,
}

/// A validated `[telemetry]` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryConfig {
    default: PolicyPatch,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct PolicyPatch {
    report: Option<Report>,
    deadband_absolute: Option<f64>,
    deadband_percent: Option<f64>,
    max_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    devices: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    patch: PolicyPatch,
}

const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(60);

fn patch(raw: RawPolicy, key: &str, p: &mut Problems) -> PolicyPatch {
    for (k, v) in [
        ("deadband_absolute", raw.deadband_absolute),
        ("deadband_percent", raw.deadband_percent),
    ] {
        if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
            p.error(
                format!("{key}.{k}"),
                "must be a number of at least 0 (0 publishes every change)",
            );
        }
    }
    PolicyPatch {
        report: raw.report,
        deadband_absolute: raw.deadband_absolute,
        deadband_percent: raw.deadband_percent,
        max_interval: raw.max_interval.map(|m| {
            duration(
                p,
                &format!("{key}.max_interval"),
                &m,
                Duration::from_secs(1),
            )
        }),
    }
}

/// Validates `[telemetry]`; `devices` are the configured device ids.
pub(crate) fn validate(raw: RawTelemetry, devices: &[&str], p: &mut Problems) -> TelemetryConfig {
    let default = patch(
        RawPolicy {
            report: raw.report,
            deadband_absolute: raw.deadband_absolute,
            deadband_percent: raw.deadband_percent,
            max_interval: raw.max_interval,
        },
        "telemetry",
        p,
    );
    let rules = raw
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = format!("telemetry.rules[{i}]");
            for d in r.devices.iter().flatten() {
                if !devices.contains(&d.as_str()) {
                    p.error(
                        format!("{key}.devices"),
                        format!("{d:?} is not a configured device id"),
                    );
                }
            }
            Rule {
                devices: r.devices,
                tags: r.tags,
                patch: patch(
                    RawPolicy {
                        report: r.report,
                        deadband_absolute: r.deadband_absolute,
                        deadband_percent: r.deadband_percent,
                        max_interval: r.max_interval,
                    },
                    &key,
                    p,
                ),
            }
        })
        .collect();
    TelemetryConfig { default, rules }
}

impl TelemetryConfig {
    /// The policy of `tag` on `device`; `opcua` gives the default report.
    pub fn policy(&self, device: &str, tag: &str, opcua: bool) -> Policy {
        let mut p = Policy {
            report: if opcua { Report::Change } else { Report::Cycle },
            deadband_absolute: 0.0,
            deadband_percent: 0.0,
            max_interval_ms: DEFAULT_MAX_INTERVAL.as_millis() as i64,
        };
        let apply = |p: &mut Policy, x: &PolicyPatch| {
            if let Some(r) = x.report {
                p.report = r;
            }
            if let Some(v) = x.deadband_absolute {
                p.deadband_absolute = v;
            }
            if let Some(v) = x.deadband_percent {
                p.deadband_percent = v;
            }
            if let Some(v) = x.max_interval {
                p.max_interval_ms = v.as_millis() as i64;
            }
        };
        apply(&mut p, &self.default);
        for r in &self.rules {
            let dev = r
                .devices
                .as_ref()
                .is_none_or(|l| l.iter().any(|d| d == device));
            let t = r.tags.as_ref().is_none_or(|l| l.iter().any(|x| x == tag));
            if dev && t {
                apply(&mut p, &r.patch);
            }
        }
        p
    }
}

/// What was last published of one tag.
struct Last {
    value: Option<Value>,
    quality: Quality,
    ts: i64,
}

/// The per-tag state of report by exception.
pub struct Exceptions {
    /// No sink carries telemetry: nothing is published at all.
    off: bool,
    config: TelemetryConfig,
    /// The OPC UA device ids (their default is "change").
    opcua: Vec<Arc<str>>,
    policies: HashMap<(Arc<str>, Arc<str>), Policy>,
    last: HashMap<(Arc<str>, Arc<str>), Last>,
    /// Every tag reports every cycle: no per-tag state needed.
    all_cycle: bool,
}

impl Exceptions {
    pub fn new(config: &Config) -> Exceptions {
        let opcua: Vec<Arc<str>> = config
            .devices
            .iter()
            .filter(|d| d.opcua().is_some())
            .map(|d| d.id.clone())
            .collect();
        let t = &config.telemetry;
        let all_cycle = opcua.is_empty()
            && t.default.report != Some(Report::Change)
            && t.rules
                .iter()
                .all(|r| r.patch.report != Some(Report::Change));
        Exceptions {
            off: config.sinks.iter().all(|s| s.carries.telemetry.is_none()),
            config: t.clone(),
            opcua,
            policies: HashMap::new(),
            last: HashMap::new(),
            all_cycle,
        }
    }

    /// Which readings of a cycle to publish.
    pub fn select(&mut self, readings: &[Reading]) -> Publish {
        if self.off {
            return Publish::None;
        }
        if self.all_cycle {
            return Publish::All;
        }
        let flags: Vec<bool> = readings.iter().map(|r| self.decide(r)).collect();
        if flags.iter().all(|f| *f) {
            Publish::All
        } else {
            Publish::Only(flags)
        }
    }

    fn decide(&mut self, r: &Reading) -> bool {
        let key = (r.device.clone(), r.tag.clone());
        let policy = match self.policies.get(&key) {
            Some(p) => *p,
            None => {
                let opcua = self.opcua.contains(&r.device);
                let p = self.config.policy(&r.device, &r.tag, opcua);
                self.policies.insert(key.clone(), p);
                p
            }
        };
        if policy.report == Report::Cycle {
            return true;
        }
        let publish = match self.last.get(&key) {
            None => true,
            Some(last) => {
                r.ts - last.ts >= policy.max_interval_ms
                    || r.quality != last.quality
                    || moved(&policy, last.value.as_ref(), r.value.as_ref())
            }
        };
        if publish {
            self.last.insert(
                key,
                Last {
                    value: r.value.clone(),
                    quality: r.quality.clone(),
                    ts: r.ts,
                },
            );
        }
        publish
    }
}

/// Whether a value moved past its deadband since the one last published.
fn moved(p: &Policy, last: Option<&Value>, now: Option<&Value>) -> bool {
    match (last, now) {
        (Some(a), Some(b)) => match (a, b) {
            (Value::Bool(_), _) | (Value::Str(_), _) | (_, Value::Bool(_)) | (_, Value::Str(_)) => {
                a != b
            }
            _ => {
                let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
                    return a != b;
                };
                let d = (y - x).abs();
                if p.deadband_absolute == 0.0 && p.deadband_percent == 0.0 {
                    return a != b;
                }
                (p.deadband_absolute > 0.0 && d > p.deadband_absolute)
                    || (p.deadband_percent > 0.0 && d > p.deadband_percent / 100.0 * x.abs())
            }
        },
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(abs: f64, pct: f64) -> Policy {
        Policy {
            report: Report::Change,
            deadband_absolute: abs,
            deadband_percent: pct,
            max_interval_ms: 60_000,
        }
    }

    #[test]
    fn deadbands_compare_with_the_value_last_published() {
        let f = |v: f64| Some(Value::Float(v));
        let p = policy(10.0, 0.0);
        assert!(
            !moved(&p, f(100.0).as_ref(), f(110.0).as_ref()),
            "exactly the deadband"
        );
        assert!(moved(&p, f(100.0).as_ref(), f(110.5).as_ref()));
        let p = policy(0.0, 5.0);
        assert!(!moved(&p, f(1000.0).as_ref(), f(1049.0).as_ref()));
        assert!(moved(&p, f(1000.0).as_ref(), f(949.0).as_ref()));
        let p = policy(0.0, 0.0);
        assert!(
            moved(&p, f(1.0).as_ref(), f(1.000001).as_ref()),
            "no deadband: any change"
        );
        assert!(!moved(&p, f(1.0).as_ref(), f(1.0).as_ref()));
        let s = |t: &str| Some(Value::Str(t.into()));
        assert!(
            moved(&policy(1e9, 0.0), s("O1").as_ref(), s("O2").as_ref()),
            "text has no deadband"
        );
        assert!(moved(&p, None, f(1.0).as_ref()), "bad to good");
    }
}
