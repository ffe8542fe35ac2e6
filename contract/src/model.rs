//! The vocabulary of the figures: industries, equipment kinds, states,
//! window kinds and ratios.

use serde::{Deserialize, Serialize};

/// Manufacturing type; it decides how the CNC rate is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Industry {
    Discrete,
    Process,
}

impl Industry {
    pub fn name(self) -> &'static str {
        match self {
            Industry::Discrete => "discrete",
            Industry::Process => "process",
        }
    }

    pub fn parse(s: &str) -> Option<Industry> {
        [Industry::Discrete, Industry::Process]
            .into_iter()
            .find(|i| i.name() == s)
    }
}

/// Equipment kinds; every kind but `manual` and `other` is NC-capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Cnc,
    Plc,
    Dcs,
    Robot,
    Manual,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Cnc,
        Kind::Plc,
        Kind::Dcs,
        Kind::Robot,
        Kind::Manual,
        Kind::Other,
    ];

    /// Under numerical or programmable control.
    pub fn nc_capable(self) -> bool {
        !matches!(self, Kind::Manual | Kind::Other)
    }

    /// A control system in the sense of the process-industry CNC rate.
    pub fn control_system(self) -> bool {
        matches!(self, Kind::Plc | Kind::Dcs)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Cnc => "cnc",
            Kind::Plc => "plc",
            Kind::Dcs => "dcs",
            Kind::Robot => "robot",
            Kind::Manual => "manual",
            Kind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// What an equipment is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No good data for longer than 3 poll intervals (or the agent was down).
    Offline,
    Idle,
    RunningManual,
    RunningNc,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Offline,
        State::Idle,
        State::RunningManual,
        State::RunningNc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Offline => "offline",
            State::Idle => "idle",
            State::RunningManual => "running_manual",
            State::RunningNc => "running_nc",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.name() == s)
    }

    pub fn running(self) -> bool {
        matches!(self, State::RunningManual | State::RunningNc)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Hour,
    Day,
    /// The current day so far.
    Snapshot,
}

impl WindowKind {
    pub fn name(self) -> &'static str {
        match self {
            WindowKind::Hour => "hour",
            WindowKind::Day => "day",
            WindowKind::Snapshot => "snapshot",
        }
    }
}

/// A ratio with its parts: a platform aggregates the parts, not the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub value: Option<f64>,
    pub numerator: u64,
    pub denominator: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Ratio {
    /// `numerator / denominator`; with a zero denominator the value is
    /// `None` with `why_empty` as the reason, never NaN and never 0.
    pub fn new(numerator: u64, denominator: u64, why_empty: &str) -> Ratio {
        if denominator == 0 {
            Ratio {
                value: None,
                numerator,
                denominator,
                reason: Some(why_empty.to_string()),
            }
        } else {
            Ratio {
                value: Some(numerator as f64 / denominator as f64),
                numerator,
                denominator,
                reason: None,
            }
        }
    }
}

/// Time spent in each state within a window, in ms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTimes {
    pub offline: u64,
    pub idle: u64,
    pub running_manual: u64,
    pub running_nc: u64,
}

impl StateTimes {
    pub fn add(&mut self, s: State, ms: u64) {
        match s {
            State::Offline => self.offline += ms,
            State::Idle => self.idle += ms,
            State::RunningManual => self.running_manual += ms,
            State::RunningNc => self.running_nc += ms,
        }
    }

    pub fn running(&self) -> u64 {
        self.running_manual + self.running_nc
    }
}
