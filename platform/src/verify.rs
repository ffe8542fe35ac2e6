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

use serde_json::Value;
use zgsz_contract::chain::{entry_digest, metrics_lines, sha256_hex, transitions_lines, GENESIS};
use zgsz_contract::payload::Metrics;
use zgsz_contract::{Ratio, State};

use crate::store::db::{args, Tx};
use crate::store::StoreError;

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

/// The flag of a window whose `config_hash` differs from the entry
/// before it: its figures come from another plant model.
pub const CONFIG_HASH_CHANGED: &str = "config_hash_changed";

/// The flag of a window whose declared CNC rate exceeds the verified one
/// by more than `verify.max_declared_verified_gap`.
pub const DECLARED_VERIFIED_GAP: &str = "declared_verified_gap";

/// `flags` (comma-separated) with `flag` added once.
pub fn with_flag(flags: &str, flag: &str) -> String {
    if flags.split(',').any(|f| f == flag) {
        flags.to_string()
    } else if flags.is_empty() {
        flag.to_string()
    } else {
        format!("{flags},{flag}")
    }
}

/// Flags the entry after `index` if it arrived first (a shared
/// subscription reorders) and its `config_hash` differs from this one's.
pub(crate) async fn flag_next_config_change(
    tx: &mut Tx<'_>,
    gateway: &str,
    instance: &str,
    index: i64,
    config_hash: &str,
) -> Result<(), StoreError> {
    let next = tx
        .query_opt(
            "SELECT config_hash, flags FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
            args![gateway, instance, index + 1],
        )
        .await?;
    if let Some(next) = next {
        let (hash, flags) = (next.text(0)?, next.text(1)?);
        if hash != config_hash {
            tx.execute(
                "UPDATE windows SET flags = ?1 WHERE gateway_id = ?2 AND instance = ?3 AND chain_index = ?4",
                args![
                    &with_flag(&flags, CONFIG_HASH_CHANGED),
                    gateway,
                    instance,
                    index + 1
                ],
            )
            .await?;
        }
    }
    Ok(())
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
        f.push(CONFIG_HASH_CHANGED);
    }
    if clock_sync == Some("unsynchronized") {
        f.push("clock_unsynchronized");
    }
    if let (Some(d), Some(v)) = (
        body.indicators.cnc_rate_declared.value,
        body.indicators.cnc_rate_verified.value,
    ) {
        if d - v > max_gap {
            f.push(DECLARED_VERIFIED_GAP);
        }
    }
    f.join(",")
}

/// Re-examines every pending window of (gateway, instance).
pub(crate) async fn settle(
    tx: &mut Tx<'_>,
    gateway: &str,
    instance: &str,
) -> Result<(), StoreError> {
    let pending = tx
        .query(
            "SELECT chain_index FROM windows
             WHERE gateway_id = ?1 AND instance = ?2 AND verdict = 'pending'
             ORDER BY chain_index",
            args![gateway, instance],
        )
        .await?;
    for row in pending {
        let index = row.int(0)?;
        let (verdict, reason) = examine(tx, gateway, instance, index).await?;
        tx.execute(
            "UPDATE windows SET verdict = ?1, reason = ?2
             WHERE gateway_id = ?3 AND instance = ?4 AND chain_index = ?5",
            args![verdict, &reason, gateway, instance, index],
        )
        .await?;
    }
    Ok(())
}

/// The verdict of one window whose self-contained checks passed.
async fn examine(
    tx: &mut Tx<'_>,
    gateway: &str,
    instance: &str,
    index: i64,
) -> Result<(&'static str, String), StoreError> {
    let Some(w) = tx
        .query_opt(
            "SELECT msg_id, prev, transitions_sha256, states_upto_seq, start_ts, end_ts FROM windows
             WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
            args![gateway, instance, index],
        )
        .await?
    else {
        return Ok(("pending", format!("chain index {index} is not stored")));
    };
    let (msg_id, prev, transitions_sha256) = (w.text(0)?, w.text(1)?, w.text(2)?);
    let (upto, start, end) = (w.int(3)?, w.int(4)?, w.int(5)?);
    if index > 1 {
        let before = tx
            .query_opt(
                "SELECT digest FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                args![gateway, instance, index - 1],
            )
            .await?;
        match before {
            None => return Ok(("pending", format!("waiting for chain index {}", index - 1))),
            Some(d) if d.text(0)? != prev => {
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
    let payload = match tx
        .query_opt(
            "SELECT payload FROM messages WHERE gateway_id = ?1 AND msg_id = ?2",
            args![gateway, &msg_id],
        )
        .await?
    {
        Some(r) => r.text(0)?,
        None => String::new(),
    };
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
    let rows = tx
        .query(
            "SELECT equipment, state, ts FROM transitions
             WHERE gateway_id = ?1 AND instance = ?2 AND seq <= ?3 AND ts < ?4
             ORDER BY ts, id",
            args![gateway, instance, upto, end],
        )
        .await?;
    let rows: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?, r.int(2)?)))
        .collect::<Result<_, StoreError>>()?;
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
