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

use crate::store::db::{args, Arg, Row, Tx};
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

/// The entry after a window, read when the window is stored (see
/// [`flag_next_config_change`]); `?3` is the window's index + 1.
pub(crate) const NEXT_ENTRY: &str = "SELECT config_hash, flags FROM windows
     WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3";

/// Flags the entry after window `index` if it arrived first (a shared
/// subscription reorders) and its `config_hash` differs from this one's;
/// `next` is that entry's [`NEXT_ENTRY`] row.
pub(crate) async fn flag_next_config_change(
    tx: &mut Tx<'_>,
    (gateway, instance, index): (&str, &str, i64),
    config_hash: &str,
    next: Option<Row>,
) -> Result<(), StoreError> {
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

/// The (gateway, instance) pairs whose pending windows a transaction
/// re-examines before it commits ([`settle`]): every pair that got a
/// states or sealed metrics message in it.
pub(crate) type Touched = std::collections::BTreeSet<(String, String)>;

/// The windows still waiting for a neighbour or for states messages.
const PENDING: &str = "SELECT chain_index, kind FROM windows
     WHERE gateway_id = ?1 AND instance = ?2 AND verdict = 'pending'
     ORDER BY chain_index";

/// A pending window, to be examined.
struct Pending<'a> {
    gateway: &'a str,
    instance: &'a str,
    index: i64,
    day: bool,
}

/// Re-examines every pending window of the `touched` pairs, once per
/// transaction rather than once per message: a batch of a catch-up brings
/// hundreds of messages, and examining after each would repeat the work.
///
/// The windows are independent of each other's verdicts (a window's `prev`
/// is checked against the digest its predecessor carries, stored whatever
/// its verdict), so every read of every window is sent at once, in three
/// pipelined steps (see [`Tx::query_many`]): the pending windows, each
/// window with its predecessor's digest, and the transitions each covers.
pub(crate) async fn settle(tx: &mut Tx<'_>, touched: &Touched) -> Result<(), StoreError> {
    let keys: Vec<[Arg<'_>; 2]> = touched
        .iter()
        .map(|(g, i)| [Arg::from(g), Arg::from(i)])
        .collect();
    let statements: Vec<(&'static str, &[Arg<'_>])> =
        keys.iter().map(|a| (PENDING, &a[..])).collect();
    let mut pending = Vec::new();
    for ((gateway, instance), rows) in touched.iter().zip(tx.query_many(&statements).await?) {
        for row in rows {
            pending.push(Pending {
                gateway,
                instance,
                index: row.int(0)?,
                day: row.text(1)? == "day",
            });
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let verdicts = examine(tx, &pending).await?;
    let updates: Vec<[Arg<'_>; 5]> = pending
        .iter()
        .zip(&verdicts)
        .map(|(p, (verdict, reason))| {
            [
                Arg::from(*verdict),
                Arg::from(reason),
                Arg::from(p.gateway),
                Arg::from(p.instance),
                Arg::from(p.index),
            ]
        })
        .collect();
    let statements: Vec<(&'static str, &[Arg<'_>])> = updates
        .iter()
        .map(|a| {
            (
                "UPDATE windows SET verdict = ?1, reason = ?2
                 WHERE gateway_id = ?3 AND instance = ?4 AND chain_index = ?5",
                &a[..],
            )
        })
        .collect();
    tx.query_many(&statements).await?;
    // A day window's figures count from the moment it is verified.
    for (p, (verdict, _)) in pending.iter().zip(&verdicts) {
        if p.day && *verdict != "pending" {
            crate::store::days::set_verdict(tx, (p.gateway, p.instance, p.index), verdict).await?;
        }
    }
    Ok(())
}

/// What examining a window needs from its row: what its
/// `transitions_sha256` covers.
struct Covered {
    transitions_sha256: String,
    upto: i64,
    start: i64,
    end: i64,
    equipment: Vec<String>,
}

/// The verdicts of windows whose self-contained checks passed, in order.
///
/// Reads only what a window's `transitions_sha256` covers, by index: the
/// transitions inside it, and each equipment's last one at or before its
/// start (all with a seq up to `states_upto_seq`). Reading the whole
/// history up to the window instead made a week's backlog quadratic.
async fn examine(
    tx: &mut Tx<'_>,
    pending: &[Pending<'_>],
) -> Result<Vec<(&'static str, String)>, StoreError> {
    // Each window and its predecessor's digest.
    let keys: Vec<([Arg<'_>; 3], [Arg<'_>; 3])> = pending
        .iter()
        .map(|p| {
            let (g, i) = (Arg::from(p.gateway), Arg::from(p.instance));
            ([g, i, Arg::from(p.index)], [g, i, Arg::from(p.index - 1)])
        })
        .collect();
    let mut statements: Vec<(&'static str, &[Arg<'_>])> = Vec::with_capacity(2 * keys.len());
    for (this, before) in &keys {
        statements.push((
            "SELECT msg_id, prev, transitions_sha256, states_upto_seq, start_ts, end_ts, equipment
             FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
            &this[..],
        ));
        statements.push((
            "SELECT digest FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
            &before[..],
        ));
    }
    let mut answers = tx.query_many(&statements).await?.into_iter();
    let mut verdicts: Vec<Option<(&'static str, String)>> = Vec::with_capacity(pending.len());
    let mut covered: Vec<Option<Covered>> = Vec::with_capacity(pending.len());
    for p in pending {
        let w = answers.next().and_then(|rows| rows.into_iter().next());
        let before = answers.next().and_then(|rows| rows.into_iter().next());
        match chained(tx, p, w, before).await? {
            Ok(c) => {
                verdicts.push(None);
                covered.push(Some(c));
            }
            Err(v) => {
                verdicts.push(Some(v));
                covered.push(None);
            }
        }
    }
    // Going back from each window's start, the transitions before it
    // (enough, as a rule, to meet each machine's last one), and the
    // transitions inside it: two ranges of the transitions' own order.
    let reads: Vec<(usize, [Arg<'_>; 5], [Arg<'_>; 5])> = pending
        .iter()
        .zip(&covered)
        .enumerate()
        .filter_map(|(n, (p, c))| c.as_ref().map(|c| (n, p, c)))
        .map(|(n, p, c)| {
            let (g, i) = (Arg::from(p.gateway), Arg::from(p.instance));
            let (start, upto) = (Arg::from(c.start), Arg::from(c.upto));
            (
                n,
                [g, i, start, upto, Arg::from(c.back_limit())],
                [g, i, start, Arg::from(c.end), upto],
            )
        })
        .collect();
    let mut statements: Vec<(&'static str, &[Arg<'_>])> = Vec::with_capacity(2 * reads.len());
    for (_, back, inside) in &reads {
        statements.push((
            "SELECT equipment, state FROM transitions
             WHERE gateway_id = ?1 AND instance = ?2 AND ts <= ?3 AND seq <= ?4
             ORDER BY ts DESC, id DESC LIMIT ?5",
            &back[..],
        ));
        statements.push((
            "SELECT equipment, state, ts FROM transitions
             WHERE gateway_id = ?1 AND instance = ?2 AND ts > ?3 AND ts < ?4 AND seq <= ?5
             ORDER BY ts, id",
            &inside[..],
        ));
    }
    let mut answers = tx.query_many(&statements).await?.into_iter();
    let mut seen: Vec<Option<(Initial, Vec<Row>)>> = (0..pending.len()).map(|_| None).collect();
    for (n, _, _) in &reads {
        let (back, inside) = (
            answers.next().unwrap_or_default(),
            answers.next().unwrap_or_default(),
        );
        if let Some(c) = &covered[*n] {
            seen[*n] = Some((c.initial(&back)?, inside));
        }
    }
    idle_machines(tx, pending, &covered, &mut seen).await?;
    let mut out = Vec::with_capacity(pending.len());
    for ((v, c), s) in verdicts.into_iter().zip(covered).zip(seen) {
        out.push(match (v, c, s) {
            (Some(v), _, _) => v,
            (None, Some(c), Some((initial, inside))) => rebuilt(&c, &initial.states, &inside)?,
            _ => ("pending", "not examined".to_string()),
        });
    }
    Ok(out)
}

/// A machine idle for longer than the rows read back from a window's
/// start: its last transition on its own (rare, and a scan of the
/// gateway's history), into the window's initial states.
async fn idle_machines(
    tx: &mut Tx<'_>,
    pending: &[Pending<'_>],
    covered: &[Option<Covered>],
    seen: &mut [Option<(Initial, Vec<Row>)>],
) -> Result<(), StoreError> {
    let missing: Vec<(usize, String, [Arg<'_>; 5])> = pending
        .iter()
        .zip(covered)
        .zip(seen.iter())
        .enumerate()
        .filter_map(|(n, ((p, c), s))| Some((n, p, c.as_ref()?, s.as_ref()?)))
        .flat_map(|(n, p, c, (initial, _))| {
            c.equipment
                .iter()
                .filter(|id| initial.pending.contains(id.as_str()))
                .map(move |id| {
                    let (g, i) = (Arg::from(p.gateway), Arg::from(p.instance));
                    (
                        n,
                        id.clone(),
                        [g, i, Arg::from(id), Arg::from(c.start), Arg::from(c.upto)],
                    )
                })
        })
        .collect();
    if !missing.is_empty() {
        let statements: Vec<(&'static str, &[Arg<'_>])> = missing
            .iter()
            .map(|(_, _, a)| {
                (
                    "SELECT state FROM transitions
                     WHERE gateway_id = ?1 AND instance = ?2 AND equipment = ?3 AND ts <= ?4
                       AND seq <= ?5
                     ORDER BY ts DESC, id DESC LIMIT 1",
                    &a[..],
                )
            })
            .collect();
        let answers = tx.query_many(&statements).await?;
        for ((n, id, _), rows) in missing.iter().zip(answers) {
            if let (Some((initial, _)), Some(r)) = (&mut seen[*n], rows.first()) {
                initial.states.insert(id.clone(), state(&r.text(0)?));
            }
        }
    }
    Ok(())
}

fn state(s: &str) -> State {
    State::parse(s).unwrap_or(State::Offline)
}

/// Each machine's state at a window's start, as far as read back.
struct Initial {
    states: std::collections::HashMap<String, State>,
    /// Machines with no transition among the rows read back, when there
    /// may be older ones: to be read on their own.
    pending: std::collections::HashSet<String>,
}

impl Covered {
    /// How many transitions to read back from the start: eight per machine
    /// and eight more.
    fn back_limit(&self) -> i64 {
        8 * (self.equipment.len() as i64 + 1)
    }

    /// The first row of each machine among `back` (newest first) is its
    /// last transition at or before the start.
    fn initial(&self, back: &[Row]) -> Result<Initial, StoreError> {
        let mut states = std::collections::HashMap::new();
        for r in back {
            let id = r.text(0)?;
            if let std::collections::hash_map::Entry::Vacant(v) = states.entry(id) {
                v.insert(state(&r.text(1)?));
            }
        }
        let more = back.len() as i64 >= self.back_limit();
        let pending = if more {
            self.equipment
                .iter()
                .filter(|id| !states.contains_key(*id))
                .cloned()
                .collect()
        } else {
            Default::default()
        };
        Ok(Initial { states, pending })
    }
}

/// A window's chain step: what its transitions cover when `prev` holds,
/// or its verdict when it cannot be decided further (not stored, waiting
/// for its predecessor, or a real break).
async fn chained(
    tx: &mut Tx<'_>,
    p: &Pending<'_>,
    w: Option<Row>,
    before: Option<Row>,
) -> Result<Result<Covered, (&'static str, String)>, StoreError> {
    let Some(w) = w else {
        return Ok(Err((
            "pending",
            format!("chain index {} is not stored", p.index),
        )));
    };
    let (msg_id, prev) = (w.text(0)?, w.text(1)?);
    if p.index > 1 {
        match before {
            None => {
                return Ok(Err((
                    "pending",
                    format!("waiting for chain index {}", p.index - 1),
                )))
            }
            Some(d) if d.text(0)? != prev => {
                return Ok(Err((
                    "broken",
                    format!(
                        "prev does not match the digest of chain index {}",
                        p.index - 1
                    ),
                )))
            }
            Some(_) => {}
        }
    }
    let equipment = match serde_json::from_str::<Vec<String>>(&w.text(6)?) {
        Ok(ids) => ids,
        // Stored before the windows kept their equipment list.
        Err(_) => equipment_of_message(tx, p.gateway, &msg_id).await?,
    };
    Ok(Ok(Covered {
        transitions_sha256: w.text(2)?,
        upto: w.int(3)?,
        start: w.int(4)?,
        end: w.int(5)?,
        equipment,
    }))
}

/// The verdict from the transitions read for a window: verified when they
/// rebuild its `transitions_sha256`, else still waiting for states.
fn rebuilt(
    c: &Covered,
    initial: &std::collections::HashMap<String, State>,
    inside: &[Row],
) -> Result<(&'static str, String), StoreError> {
    let rows: Vec<(String, String, i64)> = inside
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?, r.int(2)?)))
        .collect::<Result<_, StoreError>>()?;
    let inside = rows.iter().map(|(eq, s, ts)| (eq.as_str(), *ts, state(s)));
    let ids: Vec<&str> = c.equipment.iter().map(String::as_str).collect();
    let lines = transitions_lines(&ids, c.start, c.end, |id| initial.get(id).copied(), inside);
    if sha256_hex(lines.as_bytes()) != c.transitions_sha256 {
        return Ok((
            "pending",
            format!("waiting for the states messages up to seq {}", c.upto),
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
