//! Building a report from the gateway's database: the days (sealed from
//! the digest chain, or recomputed from the state history), the plant as
//! configured, the timeline and the outages.

use std::collections::BTreeMap;

use serde_json::Value;
use time::{Date, UtcOffset};

use super::{
    aggregate, config_history, day_start, explain, format_date, offset_text, ChainItem,
    ChainSection, ConfigInfo, Day, EnterpriseInfo, EvidenceReport, Gap, GatewayInfo, Outages,
    Period, Plant, PlantEquipment, PlantProcess, ReportError, Timeline, TimelineRow, UplinkRecord,
    MAX_DAYS, SCHEMA,
};
use crate::config::Config;
use crate::metrics::{rfc3339, Window, WindowKind};
use crate::plant::State;
use crate::signing::GatewayKey;

/// At most this many device outages are listed; the rest are counted.
const MAX_DEVICE_GAPS: usize = 500;

const DAY_MS: i64 = 86_400_000;

fn gap(equipment: Option<&str>, start: i64, end: i64, offset: UtcOffset) -> Gap {
    Gap {
        equipment: equipment.map(str::to_string),
        start_ts: start,
        end_ts: end,
        start: rfc3339(start, offset),
        end: rfc3339(end, offset),
    }
}

/// Subtracts `cut` (sorted, disjoint) from [start, end).
fn subtract(start: i64, end: i64, cut: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut cur = start;
    for &(a, b) in cut {
        if b <= cur || a >= end {
            continue;
        }
        if a > cur {
            out.push((cur, a));
        }
        cur = cur.max(b);
    }
    if cur < end {
        out.push((cur, end));
    }
    out
}

/// The period `[start, end)` of days `from..=to`, checked: in order, not
/// too long, not in the future.
fn period_bounds(
    from: Date,
    to: Date,
    offset: UtcOffset,
    now_ms: i64,
) -> Result<(i64, i64), ReportError> {
    if to < from {
        return Err(ReportError::Period(format!(
            "--to {} is before --from {}",
            format_date(to),
            format_date(from)
        )));
    }
    let start = day_start(from, offset);
    let end = to
        .next_day()
        .map(|d| day_start(d, offset))
        .unwrap_or(start + DAY_MS);
    if (end - start) / DAY_MS > MAX_DAYS {
        return Err(ReportError::Period(format!(
            "the period has {} days; a report covers at most {MAX_DAYS}",
            (end - start) / DAY_MS
        )));
    }
    if start >= now_ms {
        return Err(ReportError::Period(format!(
            "the period starts {} which is in the future",
            rfc3339(start, offset)
        )));
    }
    Ok((start, end))
}

/// Builds the report for days `from..=to` from the state directory of
/// `cfg`, as of `now_ms`.
pub fn build(
    cfg: &Config,
    key: &GatewayKey,
    from: Date,
    to: Date,
    now_ms: i64,
) -> Result<EvidenceReport, ReportError> {
    let offset = cfg.metrics.utc_offset;
    let (start, end) = period_bounds(from, to, offset, now_ms)?;
    let covered_end = end.min(now_ms);
    let conn = crate::buffer::open_read_only(&cfg.agent.state_dir)?;
    let entries = crate::buffer::chain_entries(&conn, start, end)?;
    let days = days(cfg, &conn, &entries, (from, to), covered_end, now_ms)?;

    let plant = plant(cfg);
    let industry = match cfg.enterprise.industry {
        crate::config::Industry::Process => "process",
        crate::config::Industry::Discrete => "discrete",
    };
    let (processes, equipment, headline) =
        aggregate(&plant, industry, &days).map_err(|why| ReportError::PeriodDays {
            start: rfc3339(start, offset),
            why,
        })?;
    let computation = explain(industry, &headline, &equipment, &plant, days.len());

    // The timeline and the outages, from the exact state history.
    let data = crate::buffer::window_data(&conn, start, covered_end)?;
    let exact = segments(&plant, start, covered_end, &data);
    let timeline = timeline(&plant, &exact, start, covered_end);
    let uplink = uplink_record(cfg, &conn, start, covered_end, offset)?;
    let outages = outages(&conn, &plant, &exact, (start, covered_end), offset, uplink)?;
    let chain = ChainSection {
        entries: entries
            .iter()
            .map(|e| ChainItem {
                kind: e.kind.clone(),
                start_ts: e.start_ts,
                end_ts: e.end_ts,
                config_hash: e.config_hash.clone(),
                seal: e.seal.clone(),
            })
            .collect(),
    };

    Ok(EvidenceReport {
        schema: SCHEMA.into(),
        generated_ts: now_ms,
        generated: rfc3339(now_ms, offset),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        enterprise: EnterpriseInfo {
            name: cfg.enterprise.name.clone(),
            uscc: cfg.enterprise.uscc.clone(),
            region_code: cfg.enterprise.region_code.clone(),
            industry: industry.into(),
            chain: cfg.enterprise.chain.clone(),
        },
        gateway: GatewayInfo {
            id: cfg.agent.gateway_id.clone(),
            public_key: key.public_hex(),
            fingerprint: key.fingerprint(),
        },
        period: Period {
            from: format_date(from),
            to: format_date(to),
            utc_offset: offset_text(offset),
            utc_offset_s: offset.whole_seconds(),
            start_ts: start,
            end_ts: end,
            covered_end_ts: covered_end,
        },
        config: ConfigInfo {
            current_hash: cfg.hash(),
            history: config_history(&chain.entries),
        },
        plant,
        headline,
        days,
        processes,
        equipment,
        timeline,
        outages,
        chain,
        computation,
    })
}

/// Every day of `from..=to` up to `now_ms`: sealed from the chain when the
/// day was sealed, recomputed from the state history when it was not.
fn days(
    cfg: &Config,
    conn: &rusqlite::Connection,
    entries: &[crate::chain::ChainEntry],
    (from, to): (Date, Date),
    covered_end: i64,
    now_ms: i64,
) -> Result<Vec<Day>, ReportError> {
    let offset = cfg.metrics.utc_offset;
    let stored: BTreeMap<i64, &crate::chain::ChainEntry> = entries
        .iter()
        .filter(|e| e.kind == "day" && e.body.is_some())
        .map(|e| (e.start_ts, e))
        .collect();
    let mut days = Vec::new();
    let mut date = from;
    loop {
        let ds = day_start(date, offset);
        if ds >= covered_end {
            break;
        }
        let de = date
            .next_day()
            .map(|d| day_start(d, offset))
            .unwrap_or(ds + DAY_MS);
        let (status, metrics) = match stored.get(&ds).and_then(|e| e.body.as_ref()) {
            Some(body) => ("sealed", sealed_day(body, ds, offset)?),
            None => recomputed_day(cfg, conn, ds, de, now_ms)?,
        };
        days.push(Day {
            date: format_date(date),
            status: status.to_string(),
            metrics,
        });
        match date.next_day() {
            Some(d) if d <= to => date = d,
            _ => break,
        }
    }
    Ok(days)
}

/// A sealed day's metrics, as stored with its chain entry (the body
/// without its braces).
fn sealed_day(body: &[u8], ds: i64, offset: UtcOffset) -> Result<Value, ReportError> {
    let mut text = Vec::with_capacity(body.len() + 2);
    text.push(b'{');
    text.extend_from_slice(body);
    text.push(b'}');
    serde_json::from_slice(&text).map_err(|why| ReportError::StoredDay {
        start: rfc3339(ds, offset),
        why,
    })
}

/// A day not on the chain, computed from the state history: `recomputed`,
/// or `partial` when it has not ended yet.
fn recomputed_day(
    cfg: &Config,
    conn: &rusqlite::Connection,
    ds: i64,
    de: i64,
    now_ms: i64,
) -> Result<(&'static str, Value), ReportError> {
    let partial = de > now_ms;
    let w = Window {
        kind: if partial {
            WindowKind::Snapshot
        } else {
            WindowKind::Day
        },
        start: ds,
        end: de.min(now_ms),
    };
    let data = crate::buffer::window_data(conn, w.start, w.end)?;
    let r = crate::metrics::compute(
        &cfg.plant,
        &cfg.enterprise,
        &cfg.hash(),
        w,
        cfg.metrics.utc_offset,
        &data,
    );
    Ok((
        if partial { "partial" } else { "recomputed" },
        serde_json::to_value(&r)?,
    ))
}

/// The plant model as the report shows it.
fn plant(cfg: &Config) -> Plant {
    Plant {
        processes: cfg
            .plant
            .processes
            .iter()
            .map(|p| PlantProcess {
                id: p.id.clone(),
                name: p.name.clone(),
                key: p.key,
            })
            .collect(),
        equipment: cfg
            .plant
            .equipment
            .iter()
            .map(|e| PlantEquipment {
                id: e.id.to_string(),
                name: e.name.clone(),
                process: cfg.plant.processes[e.process].id.clone(),
                kind: serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                nc_capable: e.kind.nc_capable(),
                control_system: e.kind.control_system(),
                device: e.device.to_string(),
                device_address: cfg
                    .devices
                    .iter()
                    .find(|d| d.id == e.device)
                    .map(|d| d.address.clone())
                    .unwrap_or_default(),
                poll_interval_ms: e.poll_interval.as_millis() as u64,
                rules: format!(
                    "running: {} · NC: {}{}",
                    e.running.text,
                    e.nc_active.text,
                    e.profile
                        .as_deref()
                        .map(|p| format!(" (profile {p})"))
                        .unwrap_or_default()
                ),
            })
            .collect(),
    }
}

/// The timeline: at most about 1,440 slots over the covered period, each
/// a whole number of minutes.
fn timeline(
    plant: &Plant,
    exact: &[Vec<(i64, i64, State)>],
    start: i64,
    covered_end: i64,
) -> Timeline {
    let len = (covered_end - start).max(1);
    let resolution = ((len / 1440).max(60_000) + 59_999) / 60_000 * 60_000;
    Timeline {
        resolution_ms: resolution,
        equipment: plant
            .equipment
            .iter()
            .zip(exact)
            .map(|(e, segs)| TimelineRow {
                id: e.id.clone(),
                segments: coarsen(segs, start, covered_end, resolution),
            })
            .collect(),
    }
}

/// Agent downtime (minutes without samples) and device outages (offline
/// while the agent ran), with the uplink's record.
fn outages(
    conn: &rusqlite::Connection,
    plant: &Plant,
    exact: &[Vec<(i64, i64, State)>],
    (start, covered_end): (i64, i64),
    offset: UtcOffset,
    uplink: UplinkRecord,
) -> Result<Outages, ReportError> {
    let slowest = plant
        .equipment
        .iter()
        .map(|e| e.poll_interval_ms as i64)
        .max()
        .unwrap_or(1_000);
    let threshold = (3 * slowest).max(60_000) + 60_000;
    let minutes = crate::buffer::sample_minutes(conn, start, covered_end)?;
    let mut down: Vec<(i64, i64)> = Vec::new();
    let mut last_seen = start - 60_000;
    for m in minutes.iter().copied().chain(std::iter::once(covered_end)) {
        let from_ts = (last_seen + 60_000).max(start);
        if m - last_seen > threshold && m > from_ts {
            down.push((from_ts, m));
        }
        last_seen = m;
    }
    let agent_down: Vec<Gap> = down.iter().map(|&(a, b)| gap(None, a, b, offset)).collect();
    let mut device_down = Vec::new();
    for (e, segs) in plant.equipment.iter().zip(exact) {
        for &(a, b, s) in segs {
            if s != State::Offline {
                continue;
            }
            for (x, y) in subtract(a, b, &down) {
                if y - x >= threshold.min(3 * e.poll_interval_ms as i64).max(1) {
                    device_down.push(gap(Some(&e.id), x, y, offset));
                }
            }
        }
    }
    device_down.sort_by_key(|g| (g.start_ts, g.equipment.clone()));
    let omitted = device_down.len().saturating_sub(MAX_DEVICE_GAPS) as u64;
    device_down.truncate(MAX_DEVICE_GAPS);
    Ok(Outages {
        agent_down,
        device_down,
        device_down_omitted: omitted,
        uplink,
    })
}

/// What the gateway recorded about its uplink: the outages within the
/// covered period and the outbox counters.
fn uplink_record(
    cfg: &Config,
    conn: &rusqlite::Connection,
    start: i64,
    covered_end: i64,
    offset: UtcOffset,
) -> Result<UplinkRecord, ReportError> {
    let stats = crate::buffer::read_stats(&cfg.agent.state_dir)?;
    // Uplink outages: from each recorded loss to the next connect, clipped
    // to the covered period.
    let mut uplink_down = Vec::new();
    let mut down_since: Option<i64> = None;
    for (ts, up, _) in crate::buffer::uplink_events(conn, start, covered_end)? {
        match (up, down_since) {
            (false, None) => down_since = Some(ts.max(start)),
            (true, Some(since)) => {
                if ts > since {
                    uplink_down.push(gap(None, since, ts, offset));
                }
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(since) = down_since {
        if covered_end > since {
            uplink_down.push(gap(None, since, covered_end, offset));
        }
    }
    Ok(UplinkRecord {
        down: uplink_down,
        note: "Every message stays in the outbox until the broker acknowledges it (PUBACK), so an uplink outage delays messages but loses none unless the outbox overflows; messages sent after an outage are marked historical. The counters below are since the outbox was created. 消息在收到确认前一直保存在本地缓存中，上行链路中断只会延迟、不会丢失数据（除非缓存溢出，见下方计数）；中断后补发的消息标记为历史数据。".into(),
        outbox_rows: stats.rows,
        oldest_unsent_ts: stats.oldest_unsent_ts,
        last_seq: stats.last_seq,
        last_ack_ts: stats.last_ack_ts,
        acked_rows: stats.acked_rows,
        evicted_rows: stats.evicted_rows,
        evicted_readings: stats.evicted_readings,
        evicted_metrics: stats.evicted_metrics,
    })
}

/// Exact state segments per plant equipment over [start, end).
fn segments(
    plant: &Plant,
    start: i64,
    end: i64,
    data: &crate::metrics::WindowData,
) -> Vec<Vec<(i64, i64, State)>> {
    plant
        .equipment
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            let mut state = data.initial.get(&e.id).copied().unwrap_or(State::Offline);
            let mut cursor = start;
            for (id, ts, s) in &data.transitions {
                if *id != e.id {
                    continue;
                }
                let ts = (*ts).clamp(start, end);
                if ts > cursor {
                    out.push((cursor, ts, state));
                    cursor = ts;
                }
                state = *s;
            }
            if end > cursor {
                out.push((cursor, end, state));
            }
            out
        })
        .collect()
}

/// The dominant state of every `resolution` slot, adjacent equal slots merged.
fn coarsen(
    exact: &[(i64, i64, State)],
    start: i64,
    end: i64,
    resolution: i64,
) -> Vec<(i64, i64, String)> {
    let slots = ((end - start + resolution - 1) / resolution).max(0) as usize;
    let mut acc = vec![[0i64; 4]; slots];
    for &(a, b, s) in exact {
        let si = State::ALL.iter().position(|x| *x == s).unwrap_or(0);
        let mut t = a;
        while t < b {
            let slot = ((t - start) / resolution) as usize;
            let slot_end = (start + (slot as i64 + 1) * resolution).min(b);
            if let Some(x) = acc.get_mut(slot) {
                x[si] += slot_end - t;
            }
            t = slot_end;
        }
    }
    let mut out: Vec<(i64, i64, String)> = Vec::new();
    for (i, a) in acc.iter().enumerate() {
        let s0 = start + i as i64 * resolution;
        let s1 = (s0 + resolution).min(end);
        let best = (0..4)
            .max_by_key(|&k| (a[k], std::cmp::Reverse(k)))
            .unwrap_or(0);
        let name = State::ALL[best].name();
        match out.last_mut() {
            Some(last) if last.2 == name => last.1 = s1,
            _ => out.push((s0, s1, name.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_downtime_is_cut_out_of_device_outages() {
        assert_eq!(subtract(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(
            subtract(0, 100, &[(10, 20), (50, 60)]),
            vec![(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(subtract(10, 20, &[(0, 30)]), vec![]);
        assert_eq!(subtract(10, 40, &[(0, 15), (35, 50)]), vec![(15, 35)]);
    }

    #[test]
    fn the_timeline_shows_the_dominant_state_of_each_slot() {
        let exact = [
            (0, 70, State::Idle),
            (70, 100, State::RunningNc),
            (100, 260, State::Offline),
            (260, 300, State::RunningNc),
        ];
        assert_eq!(
            coarsen(&exact, 0, 300, 100),
            vec![
                (0, 100, "idle".to_string()),
                // 60 of 100 offline, 40 running: offline wins; merged.
                (100, 300, "offline".to_string()),
            ]
        );
        // A partial last slot, and equal slots merged.
        assert_eq!(
            coarsen(&[(0, 250, State::RunningManual)], 0, 250, 100),
            vec![(0, 250, "running_manual".to_string())]
        );
    }
}
