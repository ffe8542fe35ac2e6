//! Verifying the digest chain, one sealed window at a time.
//!
//! What a payload proves by itself is checked when it arrives: its
//! `metrics_sha256` against its own figures, its indicators against its own
//! equipment (the shared headline arithmetic), and its `digest` against
//! its index, prev and the two hashes. A failure there is a real break.
//!
//! What needs other messages waits for them, because a shared subscription
//! and the gateway's resends reorder messages: `prev` is checked once the
//! entry before has arrived, and `transitions_sha256` once the `states`
//! messages up to `states_upto_seq` rebuild it. Until then the window is
//! `pending`, re-examined after every message of its gateway's instance.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::Value;
use zgsz_contract::chain::{entry_digest, metrics_lines, sha256_hex, transitions_lines, GENESIS};
use zgsz_contract::payload::Metrics;
use zgsz_contract::{Ratio, State};

/// Checks what the payload proves by itself; `Some(reason)` is a break.
pub fn self_contained(value: &Value, body: &Metrics) -> Option<String> {
    let seal = body.seal.as_ref()?;
    match metrics_lines(value) {
        Ok(lines) if sha256_hex(lines.as_bytes()) == seal.metrics_sha256 => {}
        Ok(_) => return Some("metrics_sha256 does not match the payload's figures".into()),
        Err(e) => return Some(format!("the figures cannot be put in canonical lines: {e}")),
    }
    let h = body.recompute_headline();
    let i = &body.indicators;
    for (name, have, want) in [
        (
            "cnc_rate_declared",
            &i.cnc_rate_declared,
            &h.cnc_rate_declared,
        ),
        (
            "cnc_rate_verified",
            &i.cnc_rate_verified,
            &h.cnc_rate_verified,
        ),
        ("nc_time_share", &i.nc_time_share, &h.nc_time_share),
        (
            "nc_time_share_key",
            &i.nc_time_share_key,
            &h.nc_time_share_key,
        ),
        ("networking_rate", &i.networking_rate, &h.networking_rate),
        (
            "networking_rate_key",
            &i.networking_rate_key,
            &h.networking_rate_key,
        ),
        ("completeness", &i.completeness, &h.completeness),
    ] {
        if (have.numerator, have.denominator) != (want.numerator, want.denominator) {
            return Some(format!(
                "{name} is {}/{}, but the payload's equipment gives {}/{}",
                have.numerator, have.denominator, want.numerator, want.denominator
            ));
        }
        if have.value != value_of(have) {
            return Some(format!("{name}: value is not numerator / denominator"));
        }
    }
    let digest = entry_digest(
        seal.index,
        &seal.prev,
        &seal.metrics_sha256,
        &seal.transitions_sha256,
    );
    if digest != seal.digest {
        return Some("digest does not match index, prev and the two hashes (a forged seal)".into());
    }
    if seal.index == 1 && seal.prev != GENESIS {
        return Some("index 1 must have the genesis prev".into());
    }
    None
}

fn value_of(r: &Ratio) -> Option<f64> {
    (r.denominator != 0).then(|| r.numerator as f64 / r.denominator as f64)
}

/// Flags that do not break the chain but a reviewer must see.
pub fn flags(
    body: &Metrics,
    prev_config_hash: Option<&str>,
    clock_sync: Option<&str>,
    max_gap: f64,
) -> String {
    let mut f = Vec::new();
    if prev_config_hash.is_some_and(|p| p != body.config_hash) {
        f.push("config_hash_changed");
    }
    if clock_sync == Some("unsynchronized") {
        f.push("clock_unsynchronized");
    }
    if let (Some(d), Some(v)) = (
        body.indicators.cnc_rate_declared.value,
        body.indicators.cnc_rate_verified.value,
    ) {
        if d - v > max_gap {
            f.push("declared_verified_gap");
        }
    }
    f.join(",")
}

/// Re-examines every pending window of (gateway, instance).
pub(crate) fn settle(tx: &Transaction, gateway: &str, instance: &str) -> rusqlite::Result<()> {
    let pending: Vec<i64> = {
        let mut stmt = tx.prepare(
            "SELECT chain_index FROM windows
             WHERE gateway_id = ?1 AND instance = ?2 AND verdict = 'pending'
             ORDER BY chain_index",
        )?;
        let rows = stmt.query_map([gateway, instance], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for index in pending {
        let (verdict, reason) = examine(tx, gateway, instance, index)?;
        tx.execute(
            "UPDATE windows SET verdict = ?1, reason = ?2
             WHERE gateway_id = ?3 AND instance = ?4 AND chain_index = ?5",
            params![verdict, reason, gateway, instance, index],
        )?;
    }
    Ok(())
}

/// The verdict of one window whose self-contained checks passed.
fn examine(
    tx: &Transaction,
    gateway: &str,
    instance: &str,
    index: i64,
) -> rusqlite::Result<(&'static str, String)> {
    let (msg_id, prev, transitions_sha256, upto, start, end): (
        String,
        String,
        String,
        i64,
        i64,
        i64,
    ) = tx.query_row(
        "SELECT msg_id, prev, transitions_sha256, states_upto_seq, start_ts, end_ts FROM windows
             WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
        params![gateway, instance, index],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )?;
    if index > 1 {
        let before: Option<String> = tx
            .query_row(
                "SELECT digest FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                params![gateway, instance, index - 1],
                |r| r.get(0),
            )
            .optional()?;
        match before {
            None => return Ok(("pending", format!("waiting for chain index {}", index - 1))),
            Some(d) if d != prev => {
                return Ok((
                    "broken",
                    format!(
                        "prev does not match the digest of chain index {}",
                        index - 1
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    // The equipment list, in the payload's order.
    let payload: String = tx.query_row(
        "SELECT payload FROM messages WHERE gateway_id = ?1 AND msg_id = ?2",
        params![gateway, msg_id],
        |r| r.get(0),
    )?;
    let equipment: Vec<String> = serde_json::from_str::<Value>(&payload)
        .ok()
        .and_then(|v| {
            v.get("equipment")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|e| e.get("id")?.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default();
    let mut stmt = tx.prepare(
        "SELECT equipment, state, ts FROM transitions
         WHERE gateway_id = ?1 AND instance = ?2 AND seq <= ?3 AND ts < ?4
         ORDER BY ts, id",
    )?;
    let rows: Vec<(String, String, i64)> = stmt
        .query_map(params![gateway, instance, upto, end], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let state = |s: &str| State::parse(s).unwrap_or(State::Offline);
    let initial = |id: &str| {
        rows.iter()
            .rfind(|(eq, _, ts)| eq == id && *ts <= start)
            .map(|(_, s, _)| state(s))
    };
    let inside = rows
        .iter()
        .filter(|(_, _, ts)| *ts > start && *ts < end)
        .map(|(eq, s, ts)| (eq.as_str(), *ts, state(s)));
    let ids: Vec<&str> = equipment.iter().map(String::as_str).collect();
    let lines = transitions_lines(&ids, start, end, initial, inside);
    if sha256_hex(lines.as_bytes()) != transitions_sha256 {
        return Ok((
            "pending",
            format!("waiting for the states messages up to seq {upto}"),
        ));
    }
    Ok(("verified", String::new()))
}
