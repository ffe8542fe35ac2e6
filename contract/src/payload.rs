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
    /// Tells the platform how to parse the rest: `zgsz.metrics/1`, `zgsz.states/1`, ...
    pub schema: String,
    /// `<instance>:<seq>`: the one key a platform de-duplicates resends by.
    pub msg_id: String,
    /// The outbox row's number, increasing per `instance`, so that a platform can see gaps.
    pub seq: i64,
    /// When the row was committed to the outbox (UTC ms); kept on a resend.
    pub created_ts: i64,
    /// The row was committed before this connection came up (queued, replayed or resent), so it is
    /// back-fill, not a live value.
    pub historical: bool,
    /// Which gateway sent it (`agent.gateway_id`), also in the topic.
    pub gateway_id: String,
    /// The enterprise's 统一社会信用代码, so a message identifies its enterprise without the topic.
    pub uscc: String,
    /// The enterprise's six-digit region code, so the city can sort by district.
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
    /// The members every outbox message starts with.
    #[serde(flatten)]
    pub envelope: Envelope,
    /// The figures of one window.
    #[serde(flatten)]
    pub body: Metrics,
}

/// A `zgsz.states/1` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatesMessage {
    /// The members every outbox message starts with.
    #[serde(flatten)]
    pub envelope: Envelope,
    /// The state changes committed in one outbox row, in order; the evidence behind the figures and
    /// their seal.
    pub transitions: Vec<StateTransition>,
}

/// One equipment state change on the `states` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateTransition {
    /// Increasing per outbox database; orders transitions that share a `ts`.
    pub id: i64,
    /// The `[[equipment]]` id whose state changed.
    pub equipment: String,
    /// The state it entered.
    pub state: State,
    /// When the state began (UTC ms); `offline` is dated back, so it can be earlier than the
    /// envelope's `created_ts`.
    pub ts: i64,
}

/// A `zgsz.status/1` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// Always `zgsz.status/1`, so the platform knows how to parse it.
    pub schema: String,
    /// `online` or `offline` (the Last Will), so the platform knows whether the gateway is up.
    pub state: String,
    /// Which gateway this is about (`agent.gateway_id`).
    pub gateway_id: String,
    /// The enterprise's 统一社会信用代码, to identify the gateway's owner without the topic.
    pub uscc: String,
    /// The enterprise's six-digit region code.
    pub region_code: String,
    /// The agent's version, so the platform sees which gateways need an update.
    pub agent_version: String,
    /// When the status was written (UTC ms).
    pub ts: i64,
    /// The outbox figures that explain `seq` gaps; present when online, absent by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
    /// Whether the gateway's clock is NTP-synchronised (`synchronized`, `unsynchronized`,
    /// `unknown`), since every timestamp depends on it; present when online, absent by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_sync: Option<String>,
}

/// The outbox figures of an online status, as far as a platform needs them
/// to explain `seq` gaps (other members are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// The outbox's random id, the first part of every `msg_id`; a new one starts a new `seq`
    /// sequence.
    pub instance: String,
    /// Rows still waiting for a PUBACK, so the platform sees a backlog.
    pub rows: u64,
    /// The last `seq` committed, so the platform knows what it should have received.
    pub last_seq: i64,
    /// Rows dropped unsent because the outbox was full: explains `seq` gaps that never fill.
    pub evicted_rows: u64,
    /// Of `evicted_rows`, the metrics rows; default 0 (agents that do not send it).
    #[serde(default)]
    pub evicted_metrics: u64,
    /// Of `evicted_rows`, the states rows; default 0 (agents that do not send it).
    #[serde(default)]
    pub evicted_states: u64,
}

/// The body of a `zgsz.metrics/1` message (the uplink adds the envelope).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    /// `enterprise.industry`: decides the CNC-rate formula (discrete or process).
    pub industry: Industry,
    /// `enterprise.chain` (产业链), so the city can group enterprises; `""` when not set.
    pub chain: String,
    /// `enterprise.name`, for people reading the platform's records.
    pub enterprise_name: String,
    /// The agent's version that computed the figures.
    pub agent_version: String,
    /// SHA-256 of what in the config shapes the figures: figures with different hashes come from
    /// different models.
    pub config_hash: String,
    /// The interval the figures cover.
    pub window: WindowInfo,
    /// The headline figures of the window.
    pub indicators: Indicators,
    /// The enterprise's own statements from the config, never measured, kept apart from the
    /// evidence.
    pub declared: DeclaredIndicators,
    /// One row per `[[processes]]`, in config order, so the headline can be checked per process.
    pub processes: Vec<ProcessMetrics>,
    /// One row per `[[equipment]]`, in config order: the detail every figure is summed from.
    pub equipment: Vec<EquipmentMetrics>,
    /// The window's digest-chain entry, so the figures can be proven unchanged; closed (hour, day)
    /// windows only, absent by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
    /// Closed windows: the outbox's last seq when the state history was read.
    /// The seal covers exactly the transitions of the `states` messages up to this seq, so a
    /// platform can rebuild it even when a late (back-dated) transition of the window is committed
    /// after it. Absent by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states_upto_seq: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowInfo {
    /// `hour`, `day` or `snapshot` (the open day so far), so hours and days are not summed
    /// together.
    pub kind: WindowKind,
    /// The start in RFC 3339 with the plant's UTC offset, for people; inclusive.
    pub start: String,
    /// The end in RFC 3339 with the plant's UTC offset, for people; exclusive.
    pub end: String,
    /// The same instant as `start` in UTC ms, for machines.
    pub start_ts: i64,
    /// The same instant as `end` in UTC ms; for a snapshot, when it was computed.
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
    /// 设备联网率 of the equipment in key processes, the part the programme's targets look at.
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
    /// The strings of the config's `enterprise.declared` list (e.g. `ERP`); default empty.
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
    /// The `[[processes]]` id, which equipment rows name as their `process`.
    pub id: String,
    /// The process's name, for people.
    pub name: String,
    /// A key process (关键工序): only these count in the CNC rate.
    pub key: bool,
    /// Equipment in the process: the denominator of the discrete CNC rate.
    pub equipment: u64,
    /// Of which NC-capable (kind not `manual` or `other`): the declared rate's numerator.
    pub nc_capable: u64,
    /// Of which control systems (kind `plc` or `dcs`): what the process-industry rate counts.
    pub control_systems: u64,
    /// Of which verified NC in the window: the verified rate's numerator.
    pub verified_nc: u64,
    /// Time running under NC ÷ time running, of its equipment.
    pub nc_time_share: Ratio,
    /// Time running ÷ (window length × equipment): how busy the process was.
    pub utilisation: Ratio,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EquipmentMetrics {
    /// The `[[equipment]]` id, as in the `states` stream.
    pub id: String,
    /// The equipment's name, for people.
    pub name: String,
    /// The `[[processes]]` id it belongs to, to sum it into its process.
    pub process: String,
    /// `cnc`, `plc`, `dcs`, `robot`, `manual` or `other`: decides whether it is NC-capable and a
    /// control system.
    pub kind: Kind,
    /// `kind` is not `manual` or `other`: it counts in the declared CNC rate.
    pub nc_capable: bool,
    /// The device whose tags its rules read, to trace a figure to its data source.
    pub device: String,
    /// Milliseconds in each state within the window; they add up to the window length.
    pub time_ms: StateTimes,
    /// Delivered good data in the window: counts in the networking rate.
    pub networked: bool,
    /// Was in `running_nc` at some point in the window: the evidence the verified rate needs.
    pub ran_nc: bool,
    /// `nc_capable && networked && ran_nc`: counts in the numerator of the verified CNC rate.
    pub verified_nc: bool,
    /// Time running ÷ window length.
    pub utilisation: Ratio,
    /// Time running under NC ÷ time running.
    pub nc_time_share: Ratio,
    /// Good rule evaluations ÷ those expected at the poll interval: how far the other figures can
    /// be trusted.
    pub completeness: Ratio,
}

impl Metrics {
    /// The headline recomputed from this body's own processes and
    /// equipment, e.g. for a platform to check the `indicators` it received.
    pub fn recompute_headline(&self) -> crate::headline::Headline {
        pooled_headline(self.industry, &[self])
    }
}

/// The headline of several windows of one span, as if one gateway had all
/// their equipment: how an enterprise with a gateway per workshop is
/// counted (docs/mqtt.md, "Aggregating"). A process that several of them
/// name is one process, key if any of them says so, so that the
/// process-industry CNC rate does not count a shared process twice.
pub fn pooled_headline(
    industry: crate::Industry,
    bodies: &[&Metrics],
) -> crate::headline::Headline {
    let mut processes: Vec<crate::ProcessFigures> = Vec::new();
    for p in bodies.iter().flat_map(|b| &b.processes) {
        match processes.iter_mut().find(|q| q.id == p.id) {
            Some(q) => q.key |= p.key,
            None => processes.push(crate::ProcessFigures {
                id: &p.id,
                key: p.key,
            }),
        }
    }
    let equipment: Vec<crate::EquipmentFigures> = bodies
        .iter()
        .flat_map(|b| &b.equipment)
        .map(|e| {
            crate::EquipmentFigures::new(
                &e.process,
                e.kind,
                (e.networked, e.verified_nc),
                &e.time_ms,
                &e.completeness,
            )
        })
        .collect();
    crate::headline(industry, &processes, &equipment, crate::Span::Window)
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
