//! One enterprise as the platform knows it: its gateways and when each
//! last spoke, how far each chain is verified, its model changes, and the
//! equipment states of its last day, from the `states` stream.

use std::collections::BTreeMap;

use crate::store::db::{args, Tx};
use crate::store::{ReportRecord, Store, StoreError};

/// How far one gateway instance's chain is verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainStatus {
    pub instance: String,
    /// Every window up to this index is verified (0: not even the first).
    pub verified_to: i64,
    /// Windows stored.
    pub windows: i64,
    /// Chain indexes whose window is `broken`.
    pub broken: Vec<i64>,
    /// Windows still `pending`.
    pub pending: i64,
    /// (first chain index, its start, config_hash) of each model in use,
    /// oldest first.
    pub config_hashes: Vec<(i64, i64, String)>,
}

/// One gateway of the enterprise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewayView {
    pub gateway_id: String,
    pub region_code: String,
    /// The latest message or status received (ms since the epoch).
    pub last_contact_ts: Option<i64>,
    pub chains: Vec<ChainStatus>,
}

/// One machine's states over the timeline: the state it was in at
/// `from`, then each change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MachineTimeline {
    pub gateway_id: String,
    pub equipment: String,
    /// (ts, state), the first at or before the timeline's start.
    pub changes: Vec<(i64, String)>,
    /// Where the gateway's evidence ends, when that is more than an hour
    /// before the timeline's end: the newest message it created or
    /// transition it sent. After
    /// it nothing is known (a gateway that went down), so nothing is drawn.
    pub until: Option<i64>,
}

/// What the enterprise page shows, apart from the figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnterpriseView {
    pub uscc: String,
    /// The registered name, as its gateways' latest figures give it
    /// (empty before any arrived).
    pub name: String,
    pub gateways: Vec<GatewayView>,
    /// `[from, to)` of the timeline: the day before the newest transition.
    pub timeline_span: Option<(i64, i64)>,
    pub timeline: Vec<MachineTimeline>,
    /// The evidence reports taken in for its gateways, newest first.
    pub reports: Vec<ReportRecord>,
}

const DAY_MS: i64 = 86_400_000;

impl Store {
    /// The enterprise `uscc`; `None` when no gateway of it is enrolled.
    pub async fn enterprise(&mut self, uscc: &str) -> Result<Option<EnterpriseView>, StoreError> {
        let mut tx = self.begin(false).await?;
        let gws = tx
            .query(
                "SELECT gateway_id, region_code FROM gateways WHERE uscc = ?1",
                args![uscc],
            )
            .await?;
        if gws.is_empty() {
            tx.commit().await?;
            return Ok(None);
        }
        let mut gateways = Vec::new();
        let mut newest: Option<i64> = None;
        let mut name = String::new();
        for g in &gws {
            let id = g.text(0)?;
            let contact = tx
                .query_opt(
                    "SELECT COALESCE((SELECT MAX(received_ts) FROM messages WHERE gateway_id = ?1), 0),
                       COALESCE((SELECT received_ts FROM status WHERE gateway_id = ?1), 0),
                       COALESCE((SELECT MAX(ts) FROM transitions WHERE gateway_id = ?1), 0)",
                    args![&id],
                )
                .await?;
            let (last, last_transition) = match contact {
                Some(r) => (r.int(0)?.max(r.int(1)?), r.int(2)?),
                None => (0, 0),
            };
            if last_transition > 0 {
                newest = Some(newest.map_or(last_transition, |n| n.max(last_transition)));
            }
            if name.is_empty() {
                let latest = tx
                    .query_opt(
                        "SELECT payload FROM messages WHERE gateway_id = ?1 AND stream = 'metrics'
                         ORDER BY received_ts DESC LIMIT 1",
                        args![&id],
                    )
                    .await?;
                if let Some(r) = latest {
                    let v: serde_json::Value =
                        serde_json::from_str(&r.text(0)?).unwrap_or_default();
                    name = v["enterprise_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
            }
            let windows = tx
                .query(
                    "SELECT instance, chain_index, verdict, config_hash, start_ts FROM windows WHERE gateway_id = ?1",
                    args![&id],
                )
                .await?;
            let mut by: BTreeMap<String, Vec<(i64, String, String, i64)>> = BTreeMap::new();
            for w in &windows {
                by.entry(w.text(0)?).or_default().push((
                    w.int(1)?,
                    w.text(2)?,
                    w.text(3)?,
                    w.int(4)?,
                ));
            }
            gateways.push(GatewayView {
                gateway_id: id,
                region_code: g.text(1)?,
                last_contact_ts: (last > 0).then_some(last),
                chains: by.into_iter().map(|(i, w)| chain_status(i, w)).collect(),
            });
        }
        let span = newest.map(|n| (n - DAY_MS, n + 1));
        let mut timeline = Vec::new();
        if let Some((from, to)) = span {
            for g in &gateways {
                timeline.extend(machines(&mut tx, &g.gateway_id, from, to).await?);
            }
        }
        tx.commit().await?;
        gateways.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
        let mut reports = Vec::new();
        for g in &gateways {
            reports.extend(self.reports_of(Some(&g.gateway_id)).await?);
        }
        reports.sort_by(|a, b| (b.received_ts, &b.id).cmp(&(a.received_ts, &a.id)));
        timeline.sort_by(|a, b| (&a.gateway_id, &a.equipment).cmp(&(&b.gateway_id, &b.equipment)));
        Ok(Some(EnterpriseView {
            uscc: uscc.to_string(),
            name,
            gateways,
            timeline_span: span,
            timeline,
            reports,
        }))
    }
}

/// The machines of `gateway_id` over `[from, to)`, each with the state it
/// was in at `from` and every change after.
async fn machines(
    tx: &mut Tx<'_>,
    gateway_id: &str,
    from: i64,
    to: i64,
) -> Result<Vec<MachineTimeline>, StoreError> {
    let mut out = Vec::new();
    let until = tx
        .query_opt(
            "SELECT COALESCE(MAX(x), 0) FROM (
               SELECT MAX(created_ts) AS x FROM messages WHERE gateway_id = ?1
               UNION ALL SELECT MAX(ts) FROM transitions WHERE gateway_id = ?1) AS newest",
            args![gateway_id],
        )
        .await?
        .map(|r| r.int(0))
        .transpose()?
        // A gateway that still reports has created a message
        // within the last hourly window.
        .filter(|t| *t + DAY_MS / 24 < to);
    let rows = tx
        .query(
            "SELECT equipment, state, ts FROM transitions
             WHERE gateway_id = ?1 AND ts >= ?2 AND ts < ?3",
            args![gateway_id, from, to],
        )
        .await?;
    let equipment = tx
        .query(
            "SELECT DISTINCT equipment FROM transitions WHERE gateway_id = ?1",
            args![gateway_id],
        )
        .await?;
    for e in &equipment {
        let eq = e.text(0)?;
        let before = tx
            .query_opt(
                "SELECT state, ts FROM transitions
                 WHERE gateway_id = ?1 AND equipment = ?2 AND ts < ?3
                 ORDER BY ts DESC, id DESC LIMIT 1",
                args![gateway_id, &eq, from],
            )
            .await?;
        let mut changes = Vec::new();
        if let Some(b) = before {
            changes.push((b.int(1)?, b.text(0)?));
        }
        for r in &rows {
            if r.text(0)? == eq {
                changes.push((r.int(2)?, r.text(1)?));
            }
        }
        changes.sort();
        out.push(MachineTimeline {
            gateway_id: gateway_id.to_string(),
            equipment: eq,
            changes,
            until,
        });
    }
    Ok(out)
}

/// The status of one instance's windows (index, verdict, config_hash,
/// start).
fn chain_status(instance: String, mut w: Vec<(i64, String, String, i64)>) -> ChainStatus {
    w.sort();
    let mut verified_to = 0;
    for (index, verdict, _, _) in &w {
        if *index == verified_to + 1 && verdict == "verified" {
            verified_to = *index;
        } else {
            break;
        }
    }
    let mut config_hashes: Vec<(i64, i64, String)> = Vec::new();
    for (index, _, hash, start) in &w {
        if config_hashes.last().is_none_or(|(_, _, h)| h != hash) {
            config_hashes.push((*index, *start, hash.clone()));
        }
    }
    ChainStatus {
        instance,
        verified_to,
        windows: w.len() as i64,
        broken: w
            .iter()
            .filter(|(_, v, _, _)| v == "broken")
            .map(|(i, _, _, _)| *i)
            .collect(),
        pending: w.iter().filter(|(_, v, _, _)| v == "pending").count() as i64,
        config_hashes,
    }
}
