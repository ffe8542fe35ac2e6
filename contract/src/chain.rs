//! The digest chain over closed windows: canonical lines and digests.
//!
//! Every closed hour and day window is sealed when its metrics row is
//! committed: its figures and the state transitions behind them are hashed
//! with SHA-256, together with the digest of the entry before it. The entry
//! is stored in the gateway's `chain` table in the same transaction as the metrics row,
//! and the row's payload carries the seal, so the platform holds the chain as
//! it receives it and a report edited later no longer matches it.
//!
//! What is hashed is not the JSON bytes (whose float formatting and member
//! order differ between JSON libraries) but canonical lines of the integers
//! and identifiers the figures are made of; every ratio's `value` is
//! `numerator / denominator`, so it is covered through its parts. The exact
//! format is in docs/report.md, so that a platform can recompute a digest
//! from a received payload in any language.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::State;

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain fields a closed window's metrics payload carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// 1 for the first entry of this gateway's database, then +1.
    pub index: u64,
    /// Digest of the entry before (GENESIS for the first).
    pub prev: String,
    /// SHA-256 over the four lines of this entry (see [`entry_digest`]).
    pub digest: String,
    /// SHA-256 of the canonical metrics lines.
    pub metrics_sha256: String,
    /// SHA-256 of the canonical transitions lines.
    pub transitions_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CanonError {
    #[error("{0} is missing or has the wrong type")]
    Field(String),
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn get<'a>(v: &'a Value, path: &str) -> Result<&'a Value, CanonError> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur
            .get(part)
            .ok_or_else(|| CanonError::Field(path.to_string()))?;
    }
    Ok(cur)
}

fn int(v: &Value, path: &str) -> Result<i64, CanonError> {
    get(v, path)?
        .as_i64()
        .ok_or_else(|| CanonError::Field(path.to_string()))
}

fn text<'a>(v: &'a Value, path: &str) -> Result<&'a str, CanonError> {
    get(v, path)?
        .as_str()
        .ok_or_else(|| CanonError::Field(path.to_string()))
}

fn flag(v: &Value, path: &str) -> Result<bool, CanonError> {
    get(v, path)?
        .as_bool()
        .ok_or_else(|| CanonError::Field(path.to_string()))
}

fn ratio(v: &Value, path: &str) -> Result<String, CanonError> {
    Ok(format!(
        "{}|{}",
        int(v, &format!("{path}.numerator"))?,
        int(v, &format!("{path}.denominator"))?
    ))
}

/// The indicators, in the order their lines appear.
pub const INDICATORS: [&str; 7] = [
    "cnc_rate_declared",
    "cnc_rate_verified",
    "nc_time_share",
    "nc_time_share_key",
    "networking_rate",
    "networking_rate_key",
    "completeness",
];

/// The canonical lines of a `zgsz.metrics/1` body (with or without the
/// envelope; members not named here are ignored).
pub fn metrics_lines(v: &Value) -> Result<String, CanonError> {
    let mut t = String::from("zgsz.metrics.canonical/1\n");
    let _ = writeln!(
        t,
        "window|{}|{}|{}",
        text(v, "window.kind")?,
        int(v, "window.start_ts")?,
        int(v, "window.end_ts")?
    );
    let _ = writeln!(t, "config_hash|{}", text(v, "config_hash")?);
    let _ = writeln!(t, "industry|{}", text(v, "industry")?);
    for name in INDICATORS {
        let _ = writeln!(
            t,
            "indicator|{name}|{}",
            ratio(v, &format!("indicators.{name}"))?
        );
    }
    let list = |name: &str| -> Result<&Vec<Value>, CanonError> {
        get(v, name)?
            .as_array()
            .ok_or_else(|| CanonError::Field(name.to_string()))
    };
    for (i, p) in list("processes")?.iter().enumerate() {
        let at = |f: &str| format!("processes[{i}].{f}");
        let f = |name: &str| int(p, name).map_err(|_| CanonError::Field(at(name)));
        let _ = writeln!(
            t,
            "process|{}|{}|{}|{}|{}|{}|{}|{}",
            text(p, "id").map_err(|_| CanonError::Field(at("id")))?,
            flag(p, "key").map_err(|_| CanonError::Field(at("key")))?,
            f("equipment")?,
            f("nc_capable")?,
            f("control_systems")?,
            f("verified_nc")?,
            ratio(p, "nc_time_share").map_err(|_| CanonError::Field(at("nc_time_share")))?,
            ratio(p, "utilisation").map_err(|_| CanonError::Field(at("utilisation")))?,
        );
    }
    for (i, e) in list("equipment")?.iter().enumerate() {
        let at = |f: &str| format!("equipment[{i}].{f}");
        let s = |name: &str| text(e, name).map_err(|_| CanonError::Field(at(name)));
        let b = |name: &str| flag(e, name).map_err(|_| CanonError::Field(at(name)));
        let n = |name: &str| int(e, name).map_err(|_| CanonError::Field(at(name)));
        let r = |name: &str| ratio(e, name).map_err(|_| CanonError::Field(at(name)));
        let _ = writeln!(
            t,
            "equipment|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            s("id")?,
            s("process")?,
            s("kind")?,
            b("nc_capable")?,
            s("device")?,
            n("time_ms.offline")?,
            n("time_ms.idle")?,
            n("time_ms.running_manual")?,
            n("time_ms.running_nc")?,
            b("networked")?,
            b("ran_nc")?,
            b("verified_nc")?,
            r("utilisation")?,
            r("nc_time_share")?,
            r("completeness")?,
        );
    }
    Ok(t)
}

/// The canonical lines of the state history behind a window: each
/// configured equipment's state at the start (in config order; `offline`
/// when `initial` has none), then every transition inside the window in
/// the order given (stored order on the gateway; `(ts, id)` order on the
/// platform).
pub fn transitions_lines<'a>(
    equipment: &[&str],
    start: i64,
    end: i64,
    initial: impl Fn(&str) -> Option<State>,
    transitions: impl IntoIterator<Item = (&'a str, i64, State)>,
) -> String {
    let mut t = String::from("zgsz.transitions.canonical/1\n");
    let _ = writeln!(t, "window|{start}|{end}");
    for id in equipment {
        let s = initial(id).unwrap_or(State::Offline);
        let _ = writeln!(t, "initial|{id}|{}", s.name());
    }
    for (id, ts, s) in transitions {
        let _ = writeln!(t, "transition|{id}|{ts}|{}", s.name());
    }
    t
}

/// The digest of one chain entry.
pub fn entry_digest(
    index: u64,
    prev: &str,
    metrics_sha256: &str,
    transitions_sha256: &str,
) -> String {
    let text = format!(
        "zgsz.chain/1\nindex|{index}\nprev|{prev}\nmetrics|{metrics_sha256}\ntransitions|{transitions_sha256}\n"
    );
    sha256_hex(text.as_bytes())
}

/// Seals a window given the previous entry (`None` for the first).
pub fn seal(head: Option<&(u64, String)>, metrics_lines: &str, transitions_lines: &str) -> Seal {
    let (index, prev) = match head {
        Some((i, d)) => (i + 1, d.clone()),
        None => (1, GENESIS.to_string()),
    };
    let metrics_sha256 = sha256_hex(metrics_lines.as_bytes());
    let transitions_sha256 = sha256_hex(transitions_lines.as_bytes());
    Seal {
        digest: entry_digest(index, &prev, &metrics_sha256, &transitions_sha256),
        index,
        prev,
        metrics_sha256,
        transitions_sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_of_the_documented_text() {
        // Recomputed by hand: printf 'zgsz.chain/1\nindex|1\nprev|000…\nmetrics|a\ntransitions|b\n' | sha256sum
        let d = entry_digest(1, GENESIS, "a", "b");
        let text = format!("zgsz.chain/1\nindex|1\nprev|{GENESIS}\nmetrics|a\ntransitions|b\n");
        assert_eq!(d, sha256_hex(text.as_bytes()));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let s1 = seal(None, "m", "t");
        assert_eq!((s1.index, s1.prev.as_str()), (1, GENESIS));
        let s2 = seal(Some(&(s1.index, s1.digest.clone())), "m", "t");
        assert_eq!(s2.prev, s1.digest);
        assert_ne!(s2.digest, s1.digest, "the index and prev are hashed");
    }

    #[test]
    fn transitions_lines_default_to_offline_and_keep_the_given_order() {
        let t = transitions_lines(
            &["a", "b"],
            0,
            10,
            |id| (id == "a").then_some(State::Idle),
            [("b", 5, State::RunningNc), ("a", 3, State::Offline)],
        );
        assert_eq!(
            t,
            "zgsz.transitions.canonical/1\nwindow|0|10\ninitial|a|idle\ninitial|b|offline\n\
             transition|b|5|running_nc\ntransition|a|3|offline\n"
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let e = metrics_lines(&serde_json::json!({"window": {"kind": "day"}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "window.start_ts is missing or has the wrong type"
        );
    }
}
