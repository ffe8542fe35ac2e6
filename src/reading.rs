//! The one value type that crosses from sources to the buffer.
//!
//! Every protocol (Modbus, OPC UA) decodes into [`Reading`], so
//! the buffer, the uplink and the metrics never see protocol details.

use serde::Serialize;

/// A decoded tag value. Integers keep their integer type so that a counter
/// never arrives at the platform as a lossy float.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
}

impl Value {
    /// Numeric view used by expressions and metrics; strings have none.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Str(_) => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Why a reading carries no value. Kept apart because "the device said no"
/// (an exception) and "the link broke" are different facts for the plant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadReason {
    /// No answer within the device's timeout.
    Timeout,
    /// The device answered with a Modbus exception code.
    Exception(u8),
    /// No connection to the device (refused, reset, backing off).
    Disconnected,
    /// The answer arrived but could not be turned into a value
    /// (short frame, NaN float, invalid UTF-8).
    Decode,
    /// An OPC UA status code other than Good, by its name in the
    /// specification (`BadNodeIdUnknown`, `UncertainLastUsableValue`, ...).
    Status(&'static str),
}

impl std::fmt::Display for BadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadReason::Timeout => f.write_str("timeout"),
            BadReason::Exception(code) => write!(f, "exception:{code}"),
            BadReason::Disconnected => f.write_str("disconnected"),
            BadReason::Decode => f.write_str("decode"),
            BadReason::Status(name) => f.write_str(name),
        }
    }
}

/// Good, or bad with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quality {
    Good,
    Bad(BadReason),
}

impl Quality {
    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }
}

/// One tag's value at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Device id from the config; together with `tag` it names the signal.
    pub device: std::sync::Arc<str>,
    /// Tag name from the config.
    pub tag: std::sync::Arc<str>,
    /// `None` exactly when the quality is bad.
    pub value: Option<Value>,
    pub quality: Quality,
    /// UTC milliseconds when the response arrived (not when it was sent),
    /// so a slow device does not make its data look older than it is.
    pub ts: i64,
}

/// Wire form of a reading inside a telemetry message; see docs/mqtt.md.
#[derive(Serialize)]
struct WireReading<'a> {
    device: &'a str,
    tag: &'a str,
    value: &'a Option<Value>,
    quality: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    ts: i64,
}

impl Reading {
    /// Appends this reading as one JSON object to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let (quality, reason) = match &self.quality {
            Quality::Good => ("good", None),
            Quality::Bad(r) => ("bad", Some(r.to_string())),
        };
        let wire = WireReading {
            device: &self.device,
            tag: &self.tag,
            value: &self.value,
            quality,
            reason,
            ts: self.ts,
        };
        #[allow(
            clippy::expect_used,
            reason = "serialising plain strings and numbers into a Vec cannot fail"
        )]
        serde_json::to_writer(out, &wire).expect("serialising a reading into memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_reading_serialises_null_value_and_reason() {
        let r = Reading {
            device: "d".into(),
            tag: "t".into(),
            value: None,
            quality: Quality::Bad(BadReason::Exception(2)),
            ts: 5,
        };
        let mut out = Vec::new();
        r.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"device":"d","tag":"t","value":null,"quality":"bad","reason":"exception:2","ts":5}"#
        );
    }
}
