//! The plant model (processes, equipment, signal rules) and the equipment
//! state tracker.
//!
//! Every equipment is, at every instant, in exactly one [`State`]. The
//! tracker turns each poll cycle of its device into that state and emits a
//! [`Transition`] only when it changes. Transitions are committed in the
//! same SQLite transaction as the readings that caused them, so the state
//! history can never disagree with the evidence, and windows are computed
//! from what SQLite holds: a restart or crash mid-window loses nothing.

mod build;
pub(crate) use build::{build, RawEquipment, RawProcess};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::expr::Expr;
use crate::reading::{Reading, Value};

/// Equipment kinds and states are part of the contract with the platform.
pub use zgsz_contract::{Kind, State};

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub id: String,
    pub name: String,
    /// 关键工序
    pub key: bool,
}

#[derive(Debug, Clone)]
pub struct Equipment {
    pub id: Arc<str>,
    pub name: String,
    /// Index into [`PlantModel::processes`].
    pub process: usize,
    pub kind: Kind,
    pub device: Arc<str>,
    /// The device's poll interval: expected sample spacing, and a third of
    /// the silence after which the equipment counts as offline.
    pub poll_interval: Duration,
    /// Running under NC / automatic control.
    pub nc_active: Expr,
    /// Producing.
    pub running: Expr,
    /// Optional part counter tag.
    pub parts: Option<String>,
    /// The built-in profile the rules came from, if any.
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PlantModel {
    pub processes: Vec<Process>,
    pub equipment: Vec<Equipment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub equipment: Arc<str>,
    pub ts: i64,
    pub state: State,
}

/// One evaluation of an equipment's rules, for data completeness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub equipment: Arc<str>,
    /// Start of the UTC minute the sample fell in, in ms.
    pub minute: i64,
    pub good: bool,
}

/// Why a built-in profile's rules cannot be used on a device.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {profile:?} needs a tag named {tag:?} on the device")]
    MissingTag { profile: String, tag: &'static str },
    #[error("profile {0:?} needs at least one tag named channel_state or channel_state_<n>")]
    NoChannel(String),
    #[error("unknown profile {0:?}; use opcua-machine-tool, opcua-machinery or mtconnect-like")]
    Unknown(String),
}

/// Built-in rules for standard machines, so they need no hand-written
/// expressions. Returns (nc_active, running) rule texts over the device's
/// tag names; see docs/plant.md for the register/node encodings.
pub fn profile_rules(profile: &str, tags: &[&str]) -> Result<(String, String), ProfileError> {
    let need = |tag: &'static str| {
        if tags.contains(&tag) {
            Ok(())
        } else {
            Err(ProfileError::MissingTag {
                profile: profile.to_string(),
                tag,
            })
        }
    };
    match profile {
        // OPC 40501 MachineTool: OperationMode Automatic(1) or
        // AutoWithManualIntervention(3), and some channel Active(0).
        "opcua-machine-tool" => {
            need("operation_mode")?;
            let channels: Vec<&str> = tags
                .iter()
                .copied()
                .filter(|t| {
                    *t == "channel_state"
                        || t.strip_prefix("channel_state_")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect();
            if channels.is_empty() {
                return Err(ProfileError::NoChannel(profile.to_string()));
            }
            let running = channels
                .iter()
                .map(|c| format!("{c} == 0"))
                .collect::<Vec<_>>()
                .join(" || ");
            Ok((format!("operation_mode in [1, 3] && ({running})"), running))
        }
        // OPC 40001 Machinery: MachineryItemState Executing(3). The item
        // state says nothing about manual control, so by default an
        // executing machine counts as under program control; override
        // with an explicit nc_active rule when the machine can tell.
        "opcua-machinery" => {
            need("machinery_item_state")?;
            let running = "machinery_item_state == 3".to_string();
            Ok((running.clone(), running))
        }
        // MTConnect-like registers: ControllerMode (0 MANUAL, 1 AUTOMATIC,
        // 2 SEMI_AUTOMATIC, 3 EDIT, 4 MANUAL_DATA_INPUT) and Execution
        // (0 READY, 1 ACTIVE, 2 INTERRUPTED, 3 FEED_HOLD, 4 STOPPED,
        // 5 OPTIONAL_STOP, 6 PROGRAM_STOPPED, 7 PROGRAM_COMPLETED).
        "mtconnect-like" => {
            need("controller_mode")?;
            need("execution")?;
            Ok((
                "controller_mode == 1 && execution == 1".into(),
                "execution == 1".into(),
            ))
        }
        other => Err(ProfileError::Unknown(other.to_string())),
    }
}

/// Turns poll cycles into equipment states.
pub struct Tracker {
    model: Arc<PlantModel>,
    /// Equipment indexes per device id.
    by_device: HashMap<Arc<str>, Vec<usize>>,
    /// Current state and since when, per equipment.
    current: Vec<(State, i64)>,
    /// Last time each equipment's rules had an answer.
    last_good: Vec<Option<i64>>,
    /// Latest good value of every tag, per device.
    values: HashMap<Arc<str>, HashMap<Arc<str>, Value>>,
}

impl Tracker {
    /// Starts from the last persisted states. Equipment that was not
    /// offline when the agent was last alive becomes offline from that
    /// moment: nobody saw it in between, so nothing may be claimed.
    pub fn new(
        model: Arc<PlantModel>,
        restored: &HashMap<String, (State, i64)>,
        last_alive: Option<i64>,
    ) -> (Tracker, Vec<Transition>) {
        let mut by_device: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        let mut current = Vec::new();
        let mut closing = Vec::new();
        for (i, e) in model.equipment.iter().enumerate() {
            by_device.entry(e.device.clone()).or_default().push(i);
            match restored.get(&*e.id) {
                Some(&(state, since)) if state != State::Offline => {
                    let at = last_alive.unwrap_or(since).max(since);
                    closing.push(Transition {
                        equipment: e.id.clone(),
                        ts: at,
                        state: State::Offline,
                    });
                    current.push((State::Offline, at));
                }
                Some(&(state, since)) => current.push((state, since)),
                None => current.push((State::Offline, i64::MIN)),
            }
        }
        let n = model.equipment.len();
        (
            Tracker {
                model,
                by_device,
                current,
                last_good: vec![None; n],
                values: HashMap::new(),
            },
            closing,
        )
    }

    /// Feeds one poll cycle of one device.
    pub fn observe(
        &mut self,
        readings: &[Reading],
        transitions: &mut Vec<Transition>,
        samples: &mut Vec<Sample>,
    ) {
        let Some(first) = readings.first() else {
            return;
        };
        let device = first.device.clone();
        let Some(equipment) = self.by_device.get(&device) else {
            return;
        };
        let values = self.values.entry(device).or_default();
        let mut ts = i64::MIN;
        for r in readings {
            ts = ts.max(r.ts);
            match &r.value {
                Some(v) if r.quality.is_good() => {
                    values.insert(r.tag.clone(), v.clone());
                }
                _ => {
                    values.remove(&r.tag);
                }
            }
        }
        let view: HashMap<&str, &Value> = values.iter().map(|(k, v)| (&**k, v)).collect();
        for &i in equipment {
            let e = &self.model.equipment[i];
            let state = match e.running.eval(&view) {
                Some(false) => Some(State::Idle),
                Some(true) => match e.nc_active.eval(&view) {
                    Some(true) => Some(State::RunningNc),
                    Some(false) => Some(State::RunningManual),
                    None => None,
                },
                None => None,
            };
            samples.push(Sample {
                equipment: e.id.clone(),
                minute: ts - ts.rem_euclid(60_000),
                good: state.is_some(),
            });
            let (cur, since) = self.current[i];
            match state {
                Some(s) => {
                    self.last_good[i] = Some(ts);
                    if s != cur {
                        let at = ts.max(since);
                        transitions.push(Transition {
                            equipment: e.id.clone(),
                            ts: at,
                            state: s,
                        });
                        self.current[i] = (s, at);
                    }
                }
                None => {
                    let limit = 3 * e.poll_interval.as_millis() as i64;
                    let silent_since = self.last_good[i].unwrap_or(since);
                    if cur != State::Offline && ts - silent_since > limit {
                        let at = (silent_since + limit).max(since);
                        transitions.push(Transition {
                            equipment: e.id.clone(),
                            ts: at,
                            state: State::Offline,
                        });
                        self.current[i] = (State::Offline, at);
                    }
                }
            }
        }
    }
}

/// The plant stage between the sources and the outbox: every poll cycle
/// goes through the tracker, and leaves with its transitions and samples.
pub async fn run(
    mut tracker: Tracker,
    mut publish: crate::telemetry::Exceptions,
    mut rx: tokio::sync::mpsc::Receiver<Vec<Reading>>,
    tx: tokio::sync::mpsc::Sender<crate::buffer::Batch>,
) {
    while let Some(readings) = rx.recv().await {
        let mut batch = crate::buffer::Batch {
            publish: publish.select(&readings),
            ..Default::default()
        };
        tracker.observe(&readings, &mut batch.transitions, &mut batch.samples);
        for t in &batch.transitions {
            tracing::debug!(equipment = %t.equipment, state = t.state.name(), ts = t.ts, "Equipment state changed");
        }
        batch.readings = readings;
        if tx.send(batch).await.is_err() {
            break;
        }
    }
}

/// The state history behind one window, as the outbox holds it: what the
/// metrics are computed from and the digest chain hashes.
#[derive(Debug, Clone, Default)]
pub struct WindowData {
    /// Each equipment's state at the window's start: its last transition at
    /// or before `start`. A transition exactly on a boundary belongs to the
    /// window it starts.
    pub initial: HashMap<String, State>,
    /// Transitions with start < ts < end, ordered by ts.
    pub transitions: Vec<(String, i64, State)>,
    /// (good, total) rule evaluations per equipment within the window.
    pub samples: HashMap<String, (u64, u64)>,
    /// The outbox's last seq when this was read: every transition read
    /// here was committed with a states row at or below it, every later
    /// one above it.
    pub upto_seq: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Type;
    use crate::reading::{BadReason, Quality};

    fn model() -> Arc<PlantModel> {
        let types = |t: &str| matches!(t, "controller_mode" | "execution").then_some(Type::Num);
        let (nc, run) = profile_rules("mtconnect-like", &["controller_mode", "execution"]).unwrap();
        Arc::new(PlantModel {
            processes: vec![Process {
                id: "p".into(),
                name: "车削".into(),
                key: true,
            }],
            equipment: vec![Equipment {
                id: "m1".into(),
                name: "m1".into(),
                process: 0,
                kind: Kind::Cnc,
                device: "d1".into(),
                poll_interval: Duration::from_secs(1),
                nc_active: Expr::parse(&nc, &types).unwrap(),
                running: Expr::parse(&run, &types).unwrap(),
                parts: None,
                profile: Some("mtconnect-like".into()),
            }],
        })
    }

    fn cycle(ts: i64, mode: i64, exec: i64) -> Vec<Reading> {
        ["controller_mode", "execution"]
            .iter()
            .zip([mode, exec])
            .map(|(t, v)| Reading {
                device: "d1".into(),
                tag: (*t).into(),
                value: Some(Value::Int(v)),
                quality: Quality::Good,
                ts,
            })
            .collect()
    }

    fn bad(ts: i64) -> Vec<Reading> {
        ["controller_mode", "execution"]
            .iter()
            .map(|t| Reading {
                device: "d1".into(),
                tag: (*t).into(),
                value: None,
                quality: Quality::Bad(BadReason::Timeout),
                ts,
            })
            .collect()
    }

    #[test]
    fn states_follow_the_rules_and_only_changes_are_emitted() {
        let (mut t, closing) = Tracker::new(model(), &HashMap::new(), None);
        assert!(closing.is_empty());
        let (mut tr, mut s) = (Vec::new(), Vec::new());
        t.observe(&cycle(1_000, 1, 0), &mut tr, &mut s);
        t.observe(&cycle(2_000, 1, 1), &mut tr, &mut s);
        t.observe(&cycle(3_000, 1, 1), &mut tr, &mut s);
        t.observe(&cycle(4_000, 0, 1), &mut tr, &mut s);
        let got: Vec<(i64, State)> = tr.iter().map(|t| (t.ts, t.state)).collect();
        assert_eq!(
            got,
            vec![
                (1_000, State::Idle),
                (2_000, State::RunningNc),
                (4_000, State::RunningManual)
            ]
        );
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|s| s.good && s.minute == 0));
    }

    #[test]
    fn offline_after_three_silent_intervals_dated_when_it_became_true() {
        let (mut t, _) = Tracker::new(model(), &HashMap::new(), None);
        let (mut tr, mut s) = (Vec::new(), Vec::new());
        t.observe(&cycle(10_000, 1, 1), &mut tr, &mut s);
        t.observe(&bad(11_000), &mut tr, &mut s);
        t.observe(&bad(13_000), &mut tr, &mut s);
        assert_eq!(tr.len(), 1, "2 s of silence is not yet offline");
        t.observe(&bad(14_500), &mut tr, &mut s);
        assert_eq!(
            tr.last().map(|t| (t.ts, t.state)),
            Some((13_000, State::Offline))
        );
        assert_eq!(s.iter().filter(|s| !s.good).count(), 3);
    }

    #[test]
    fn restart_closes_the_unobserved_gap_as_offline() {
        let restored = HashMap::from([("m1".to_string(), (State::RunningNc, 5_000))]);
        let (_, closing) = Tracker::new(model(), &restored, Some(9_000));
        assert_eq!(
            closing,
            vec![Transition {
                equipment: "m1".into(),
                ts: 9_000,
                state: State::Offline
            }]
        );
    }

    #[test]
    fn profiles_need_their_tags() {
        assert_eq!(
            profile_rules("mtconnect-like", &["execution"]),
            Err(ProfileError::MissingTag {
                profile: "mtconnect-like".into(),
                tag: "controller_mode"
            })
        );
        let (nc, run) = profile_rules(
            "opcua-machine-tool",
            &["operation_mode", "channel_state", "channel_state_2"],
        )
        .unwrap();
        assert_eq!(run, "channel_state == 0 || channel_state_2 == 0");
        assert_eq!(
            nc,
            "operation_mode in [1, 3] && (channel_state == 0 || channel_state_2 == 0)"
        );
        assert!(profile_rules("fanuc", &[]).is_err());
    }
}
