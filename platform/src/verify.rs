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
use zgsz_contract::{Ratio, State, WindowKind};

use crate::store::db::{args, Arg, Tx};
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
    // Judged by the day, and only on a day something ran: an hour of the
    // night, or a closed Sunday, verifies no machine, and flagging those
    // would bury the enterprise whose "CNC" machines run by hand.
    let ran = body.indicators.nc_time_share.denominator > 0;
    if let (WindowKind::Day, true, Some(d), Some(v)) = (
        body.window.kind,
        ran,
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
            "SELECT chain_index, kind FROM windows
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
        // A day window's figures count from the moment it is verified.
        if verdict != "pending" && row.text(1)? == "day" {
            crate::store::days::set_verdict(tx, (gateway, instance, index), verdict).await?;
        }
    }
    Ok(())
}

/// The verdict of one window whose self-contained checks passed.
///
/// Reads only what the window's `transitions_sha256` covers, by index:
/// the transitions inside it, and each equipment's last one at or before
/// its start (all with a seq up to `states_upto_seq`). Reading the whole
/// history up to the window instead made a week's backlog quadratic.
async fn examine(
    tx: &mut Tx<'_>,
    gateway: &str,
    instance: &str,
    index: i64,
) -> Result<(&'static str, String), StoreError> {
    // The window and its predecessor's digest, at once.
    let mut reads = tx
        .query_many(&[
            (
                "SELECT msg_id, prev, transitions_sha256, states_upto_seq, start_ts, end_ts, equipment
                 FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                args![gateway, instance, index],
            ),
            (
                "SELECT digest FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                args![gateway, instance, index - 1],
            ),
        ])
        .await?
        .into_iter()
        .map(|rows| rows.into_iter().next());
    let (Some(w), before) = (reads.next().flatten(), reads.next().flatten()) else {
        return Ok(("pending", format!("chain index {index} is not stored")));
    };
    let (msg_id, prev, transitions_sha256) = (w.text(0)?, w.text(1)?, w.text(2)?);
    let (upto, start, end) = (w.int(3)?, w.int(4)?, w.int(5)?);
    if index > 1 {
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
    let equipment = match serde_json::from_str::<Vec<String>>(&w.text(6)?) {
        Ok(ids) => ids,
        // Stored before the windows kept their equipment list.
        Err(_) => equipment_of_message(tx, gateway, &msg_id).await?,
    };
    // Each equipment's last transition at or before the start, and the
    // transitions inside, at once; the last statement is the inside.
    let per_equipment: Vec<[Arg<'_>; 5]> = equipment
        .iter()
        .map(|id| {
            [
                Arg::from(gateway),
                Arg::from(instance),
                Arg::from(id),
                Arg::from(start),
                Arg::from(upto),
            ]
        })
        .collect();
    let inside_args = [
        Arg::from(gateway),
        Arg::from(instance),
        Arg::from(start),
        Arg::from(end),
        Arg::from(upto),
    ];
    let mut statements: Vec<(&'static str, &[Arg<'_>])> = per_equipment
        .iter()
        .map(|a| {
            (
                "SELECT state FROM transitions
                 WHERE gateway_id = ?1 AND instance = ?2 AND equipment = ?3 AND ts <= ?4
                   AND seq <= ?5
                 ORDER BY ts DESC, id DESC LIMIT 1",
                &a[..],
            )
        })
        .collect();
    statements.push((
        "SELECT equipment, state, ts FROM transitions
         WHERE gateway_id = ?1 AND instance = ?2 AND ts > ?3 AND ts < ?4 AND seq <= ?5
         ORDER BY ts, id",
        &inside_args[..],
    ));
    let mut answers = tx.query_many(&statements).await?;
    let rows = answers.pop().unwrap_or_default();
    let state = |s: &str| State::parse(s).unwrap_or(State::Offline);
    let mut initial = std::collections::HashMap::new();
    for (id, last) in equipment.iter().zip(&answers) {
        if let Some(r) = last.first() {
            initial.insert(id.as_str(), state(&r.text(0)?));
        }
    }
    let rows: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?, r.int(2)?)))
        .collect::<Result<_, StoreError>>()?;
    let inside = rows.iter().map(|(eq, s, ts)| (eq.as_str(), *ts, state(s)));
    let ids: Vec<&str> = equipment.iter().map(String::as_str).collect();
    let lines = transitions_lines(&ids, start, end, |id| initial.get(id).copied(), inside);
    if sha256_hex(lines.as_bytes()) != transitions_sha256 {
        return Ok((
            "pending",
            format!("waiting for the states messages up to seq {upto}"),
        ));
    }
    Ok(("verified", String::new()))
}

/// The equipment ids of a metrics payload, in its order.
pub fn equipment_ids(value: &Value) -> Vec<String> {
    value
        .get("equipment")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("id")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The equipment list of a stored metrics message (a window stored before
/// migration 4 has none of its own).
async fn equipment_of_message(
    tx: &mut Tx<'_>,
    gateway: &str,
    msg_id: &str,
) -> Result<Vec<String>, StoreError> {
    let payload = tx
        .query_opt(
            "SELECT payload FROM messages WHERE gateway_id = ?1 AND msg_id = ?2",
            args![gateway, msg_id],
        )
        .await?;
    let Some(r) = payload else {
        return Ok(Vec::new());
    };
    Ok(serde_json::from_str::<Value>(&r.text(0)?)
        .map(|v| equipment_ids(&v))
        .unwrap_or_default())
}
