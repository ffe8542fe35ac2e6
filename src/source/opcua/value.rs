//! From OPC UA data values to readings: value, quality and timestamp.
//!
//! Values map to the same types Modbus readings use: integers stay
//! integers, enumerations arrive as their Int32 value, text (String,
//! LocalizedText, QualifiedName) becomes a string. Anything without a
//! scalar meaning (arrays, structures, byte strings) is `decode`.
//!
//! Quality: a Good status code is good; Uncertain and Bad are bad, with the
//! status name (e.g. `BadNodeIdUnknown`) as the reason, because the
//! indicators are evidence and must rest on values the server vouches for.
//!
//! Timestamp rule (docs/opcua.md): the server's SourceTimestamp is kept
//! when it is present and plausible, i.e. not more than [`MAX_AHEAD_MS`]
//! ahead of the gateway's clock and not older than the tag's own
//! `max_age_ms` (how late a notification or read can legitimately be);
//! otherwise the reading carries the time it was received. An unchanged
//! value read an hour after it last changed therefore says "seen now", not
//! "an hour ago", just as a Modbus reading does.

use opcua::types::{DataValue, StatusCode, Variant};

use crate::reading::{BadReason, Quality, Value};

/// Clock skew allowed between server and gateway.
pub const MAX_AHEAD_MS: i64 = 5_000;

/// Turns a variant into a reading value; `None` if it has no scalar form.
pub fn to_value(v: &Variant) -> Option<Value> {
    Some(match v {
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(x) => Value::Int(i64::from(*x)),
        Variant::Int16(x) => Value::Int(i64::from(*x)),
        Variant::Int32(x) => Value::Int(i64::from(*x)),
        Variant::Int64(x) => Value::Int(*x),
        Variant::Byte(x) => Value::UInt(u64::from(*x)),
        Variant::UInt16(x) => Value::UInt(u64::from(*x)),
        Variant::UInt32(x) => Value::UInt(u64::from(*x)),
        Variant::UInt64(x) => Value::UInt(*x),
        Variant::Float(x) if x.is_finite() => Value::Float(f64::from(*x)),
        Variant::Double(x) if x.is_finite() => Value::Float(*x),
        Variant::String(s) => Value::Str(s.as_ref().to_string()),
        Variant::LocalizedText(t) => Value::Str(t.text.as_ref().to_string()),
        Variant::QualifiedName(q) => Value::Str(q.name.as_ref().to_string()),
        Variant::DateTime(d) => Value::Int(d.as_chrono().timestamp_millis()),
        Variant::StatusCode(c) => Value::UInt(u64::from(c.bits())),
        Variant::Variant(inner) => return to_value(inner),
        _ => return None,
    })
}

/// The reason a status code gives for a bad reading.
pub fn status_reason(code: StatusCode) -> BadReason {
    BadReason::Status(code.sub_code().name())
}

/// Value and quality of a data value.
pub fn to_quality(dv: &DataValue) -> (Option<Value>, Quality) {
    let status = dv.status.unwrap_or(StatusCode::Good);
    if !status.is_good() {
        return (None, Quality::Bad(status_reason(status)));
    }
    match dv.value.as_ref().map(to_value) {
        Some(Some(v)) => (Some(v), Quality::Good),
        _ => (None, Quality::Bad(BadReason::Decode)),
    }
}

/// The timestamp a reading gets; see the module note.
pub fn timestamp(dv: &DataValue, received_ms: i64, max_age_ms: i64) -> i64 {
    let source = dv
        .source_timestamp
        .filter(|t| !t.is_null())
        .map(|t| t.as_chrono().timestamp_millis());
    match source {
        Some(ts) if ts <= received_ms + MAX_AHEAD_MS && ts >= received_ms - max_age_ms => ts,
        _ => received_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{DateTime, LocalizedText};

    #[test]
    fn scalars_keep_their_kind() {
        assert_eq!(to_value(&Variant::Int32(3)), Some(Value::Int(3)));
        assert_eq!(to_value(&Variant::UInt32(7)), Some(Value::UInt(7)));
        assert_eq!(to_value(&Variant::Boolean(true)), Some(Value::Bool(true)));
        assert_eq!(to_value(&Variant::Double(1.5)), Some(Value::Float(1.5)));
        assert_eq!(to_value(&Variant::Double(f64::NAN)), None);
        assert_eq!(
            to_value(&Variant::LocalizedText(Box::new(LocalizedText::new(
                "en", "Running"
            )))),
            Some(Value::Str("Running".into()))
        );
        assert_eq!(to_value(&Variant::Empty), None);
    }

    #[test]
    fn status_maps_to_quality() {
        let mut dv = DataValue::new_now(Variant::Int32(1));
        assert_eq!(to_quality(&dv), (Some(Value::Int(1)), Quality::Good));
        dv.status = Some(StatusCode::BadNodeIdUnknown);
        assert_eq!(
            to_quality(&dv),
            (None, Quality::Bad(BadReason::Status("BadNodeIdUnknown")))
        );
        dv.status = Some(StatusCode::UncertainLastUsableValue);
        assert!(!to_quality(&dv).1.is_good());
        // Info bits (here: overflow) do not make a good value bad.
        dv.status = Some(StatusCode::Good.set_overflow(true));
        assert!(to_quality(&dv).1.is_good());
    }

    #[test]
    fn source_timestamp_only_when_plausible() {
        let now = DateTime::now();
        let now_ms = now.as_chrono().timestamp_millis();
        let mut dv = DataValue::new_now(Variant::Int32(1));
        dv.source_timestamp = Some(now);
        assert_eq!(timestamp(&dv, now_ms + 200, 1_000), now_ms);
        // Far in the future: the server's clock is wrong.
        assert_eq!(timestamp(&dv, now_ms - 60_000, 1_000), now_ms - 60_000);
        // Old: the value last changed long ago; it was seen now.
        assert_eq!(timestamp(&dv, now_ms + 60_000, 1_000), now_ms + 60_000);
        dv.source_timestamp = None;
        assert_eq!(timestamp(&dv, now_ms, 1_000), now_ms);
    }
}
