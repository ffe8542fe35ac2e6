//! The messages a gateway publishes to the platform, in both directions:
//! the agent serialises the metrics body with these types, the platform
//! parses every stream with them. The member order of the types is the wire
//! order (docs/mqtt.md); do not reorder fields.

use serde::{Deserialize, Serialize};

use crate::chain::Seal;
use crate::model::{Industry, Kind, Ratio, State, StateTimes, WindowKind};

/// The members every outbox message (telemetry, states, metrics) starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `zgsz.metrics/1`, `zgsz.states/1`, ...
    pub schema: String,
    /// `<instance>:<seq>`: the de-duplication key.
    pub msg_id: String,
    pub seq: i64,
    pub created_ts: i64,
    pub historical: bool,
    pub gateway_id: String,
    pub uscc: String,
    pub region_code: String,
}

impl Envelope {
    /// The outbox `instance` part of `msg_id` (16 hex characters), or
    /// `None` when `msg_id` is not `<instance>:<seq>` with this `seq`.
    pub fn instance(&self) -> Option<&str> {
        let (instance, seq) = self.msg_id.split_once(':')?;
        (seq.parse::<i64>().ok() == Some(self.seq) && !instance.is_empty()).then_some(instance)
    }
}

/// A `zgsz.metrics/1` message: the envelope, then the body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsMessage {
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(flatten)]
    pub body: Metrics,
}

/// A `zgsz.states/1` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatesMessage {
    #[serde(flatten)]
    pub envelope: Envelope,
    pub transitions: Vec<StateTransition>,
}

/// One equipment state change on the `states` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateTransition {
    /// Increasing per outbox database; orders transitions that share a `ts`.
    pub id: i64,
    pub equipment: String,
    pub state: State,
    pub ts: i64,
}

/// A `zgsz.status/1` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    pub schema: String,
    /// `online` or `offline`.
    pub state: String,
    pub gateway_id: String,
    pub uscc: String,
    pub region_code: String,
    pub agent_version: String,
    pub ts: i64,
    /// Present when online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
    /// `synchronized`, `unsynchronized` or `unknown`; present when online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_sync: Option<String>,
}

/// The outbox figures of an online status, as far as a platform needs them
/// to explain `seq` gaps (other members are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub instance: String,
    pub rows: u64,
    pub last_seq: i64,
    pub evicted_rows: u64,
    #[serde(default)]
    pub evicted_metrics: u64,
    #[serde(default)]
    pub evicted_states: u64,
}

/// The body of a `zgsz.metrics/1` message (the uplink adds the envelope).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub industry: Industry,
    pub chain: String,
    pub enterprise_name: String,
    pub agent_version: String,
    pub config_hash: String,
    pub window: WindowInfo,
    pub indicators: Indicators,
    pub declared: DeclaredIndicators,
    pub processes: Vec<ProcessMetrics>,
    pub equipment: Vec<EquipmentMetrics>,
    /// The window's digest-chain entry: closed (hour, day) windows only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
    /// Closed windows: the outbox's last seq when the state history was
    /// read. The seal covers exactly the transitions of the `states`
    /// messages up to this seq, so a platform can rebuild it even when a
    /// late (back-dated) transition of the window is committed after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states_upto_seq: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowInfo {
    pub kind: WindowKind,
    pub start: String,
    pub end: String,
    pub start_ts: i64,
    pub end_ts: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Indicators {
    /// 关键工序数控化率, from the configured model.
    pub cnc_rate_declared: Ratio,
    /// 关键工序数控化率, from machine evidence.
    pub cnc_rate_verified: Ratio,
    /// Time in running_nc ÷ time running, all equipment.
    pub nc_time_share: Ratio,
    /// Time in running_nc ÷ time running, equipment in key processes.
    pub nc_time_share_key: Ratio,
    /// 设备联网率: equipment with good data ÷ all equipment.
    pub networking_rate: Ratio,
    pub networking_rate_key: Ratio,
    /// Good samples ÷ expected samples, all equipment.
    pub completeness: Ratio,
}

impl From<crate::headline::Headline> for Indicators {
    fn from(h: crate::headline::Headline) -> Indicators {
        Indicators {
            cnc_rate_declared: h.cnc_rate_declared,
            cnc_rate_verified: h.cnc_rate_verified,
            nc_time_share: h.nc_time_share,
            nc_time_share_key: h.nc_time_share_key,
            networking_rate: h.networking_rate,
            networking_rate_key: h.networking_rate_key,
            completeness: h.completeness,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredIndicator {
    /// Always `declared`: the enterprise's own statement, not evidence.
    pub source: String,
    pub items: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredIndicators {
    /// 经营管理数字化
    pub management: DeclaredIndicator,
    /// 数字化研发设计工具
    pub design_tools: DeclaredIndicator,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessMetrics {
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
pub struct EquipmentMetrics {
    pub id: String,
    pub name: String,
    pub process: String,
    pub kind: Kind,
    pub nc_capable: bool,
    pub device: String,
    pub time_ms: StateTimes,
    /// Delivered good data in the window.
    pub networked: bool,
    /// Was in `running_nc` at some point in the window.
    pub ran_nc: bool,
    /// Counts in the numerator of the verified CNC rate.
    pub verified_nc: bool,
    pub utilisation: Ratio,
    pub nc_time_share: Ratio,
    pub completeness: Ratio,
}

impl Metrics {
    /// The headline recomputed from this body's own processes and
    /// equipment, e.g. for a platform to check the `indicators` it received.
    pub fn recompute_headline(&self) -> crate::headline::Headline {
        let processes: Vec<crate::ProcessFigures> = self
            .processes
            .iter()
            .map(|p| crate::ProcessFigures {
                id: &p.id,
                key: p.key,
            })
            .collect();
        let equipment: Vec<crate::EquipmentFigures> = self
            .equipment
            .iter()
            .map(|e| crate::EquipmentFigures {
                process: &e.process,
                kind: e.kind,
                networked: e.networked,
                verified_nc: e.verified_nc,
                running_nc: e.time_ms.running_nc,
                running: e.time_ms.running(),
                samples_good: e.completeness.numerator,
                samples_expected: e.completeness.denominator,
            })
            .collect();
        crate::headline(self.industry, &processes, &equipment, crate::Span::Window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_name_their_instance() {
        let s: StatesMessage = serde_json::from_str(
            r#"{"schema":"zgsz.states/1","msg_id":"3f9c2a7be41d0c58:1043","seq":1043,"created_ts":1,"historical":false,"gateway_id":"gw","uscc":"U","region_code":"321003","transitions":[{"id":311,"equipment":"lathe-01","state":"running_nc","ts":1732780800087}]}"#,
        )
        .unwrap();
        assert_eq!(s.envelope.instance(), Some("3f9c2a7be41d0c58"));
        assert_eq!(s.transitions[0].state, State::RunningNc);
        let mut bad = s.envelope.clone();
        bad.seq = 1044;
        assert_eq!(bad.instance(), None, "msg_id and seq disagree");
        let st: StatusMessage = serde_json::from_str(
            r#"{"schema":"zgsz.status/1","state":"offline","gateway_id":"gw","uscc":"U","region_code":"321003","agent_version":"0.1.0","ts":5}"#,
        )
        .unwrap();
        assert_eq!(st.outbox, None);
        assert!(serde_json::from_str::<StatesMessage>(r#"{"schema":1}"#).is_err());
    }
}
