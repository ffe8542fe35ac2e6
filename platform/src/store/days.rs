//! The `day_figures` table (migration 6): every day window's
//! [`DaySummary`], written at ingest beside the window, carrying the
//! window's verdict, and read by the pages instead of the payloads.
//!
//! A window's verdict only ever moves from `pending` to `verified` or
//! `broken` (see `verify::settle`), and a window is never rewritten: its
//! chain index, once held, rejects any other message. So a row is written
//! once, with the verdict the window is stored with, and its verdict is
//! updated where the window's is; only `verified` rows are read.
//!
//! Windows also keep their local date (`windows.local_date`), so that the
//! broken windows of a period are found by index rather than by parsing
//! every broken payload ever stored.

use std::collections::{BTreeSet, HashMap};

use zgsz_contract::payload::{Metrics, MetricsMessage};
use zgsz_contract::Industry;

use super::db::{args, Row, Tx};
use super::{Store, StoreError};
use crate::aggregate::{AreaInput, GatewayDay};
use crate::summary::{DaySummary, ProcessCounts};

/// A day read, with its window's instance and chain index (to find its
/// process counts if it is pooled).
type Loaded = (DaySummary, String, i64);

/// Which days [`Store::area_input_of`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The whole city.
    City,
    /// The gateways enrolled in this region code.
    Region(&'a str),
    /// The gateways of this USCC.
    Enterprise(&'a str),
}

fn int(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("figure {v} out of range")))
}

fn count(r: &Row, i: usize) -> Result<u64, StoreError> {
    let v = r.int(i)?;
    u64::try_from(v).map_err(|_| StoreError::Decode(format!("column {i}: negative count {v}")))
}

/// Writes the summary of a day window `(gateway, instance, index)` just
/// stored with `verdict`, whose body is `body`. A body without a local
/// date (a `start` that is not RFC 3339) has no row: the figures never
/// counted it.
pub(crate) async fn record(
    tx: &mut Tx<'_>,
    (gateway, instance, index): (&str, &str, i64),
    verdict: &str,
    uscc: &str,
    region: &str,
    body: &Metrics,
) -> Result<(), StoreError> {
    let Some(date) = GatewayDay::date_of(body) else {
        return Ok(());
    };
    let s = DaySummary::of(gateway, uscc, region, &date, body);
    let processes = serde_json::to_string(&s.processes)
        .map_err(|e| StoreError::Invalid(format!("process counts: {e}")))?;
    tx.execute(
        "INSERT INTO day_figures (gateway_id, instance, chain_index, verdict, local_date, uscc,
           region_code, industry, any_key, cnc_declared_n, cnc_declared_d, cnc_verified_n,
           cnc_verified_d, networked_n, networked_d, nc_time_n, nc_time_d, processes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         ON CONFLICT (gateway_id, instance, chain_index) DO NOTHING",
        args![
            gateway,
            instance,
            index,
            verdict,
            &date,
            uscc,
            region,
            s.industry.name(),
            i64::from(s.any_key),
            int(s.cnc_rate_declared.0)?,
            int(s.cnc_rate_declared.1)?,
            int(s.cnc_rate_verified.0)?,
            int(s.cnc_rate_verified.1)?,
            int(s.networking_rate.0)?,
            int(s.networking_rate.1)?,
            int(s.nc_time_share.0)?,
            int(s.nc_time_share.1)?,
            &processes
        ],
    )
    .await?;
    Ok(())
}

/// Gives a day window's row the verdict the window was just given.
pub(crate) async fn set_verdict(
    tx: &mut Tx<'_>,
    (gateway, instance, index): (&str, &str, i64),
    verdict: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE day_figures SET verdict = ?1
         WHERE gateway_id = ?2 AND instance = ?3 AND chain_index = ?4",
        args![verdict, gateway, instance, index],
    )
    .await?;
    Ok(())
}

/// Migration 6's data: the row of every day window stored before it, and
/// the local date of every window that is not (or not yet) verified, from
/// the payloads, one gateway at a time. A verified hour window keeps no
/// date: only a broken window's date is ever read, and a verified one
/// never breaks.
pub(crate) async fn backfill(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    let gateways = tx
        .query(
            "SELECT gateway_id, uscc, region_code FROM gateways",
            args![],
        )
        .await?;
    for g in gateways {
        let (gateway, uscc, region) = (g.text(0)?, g.text(1)?, g.text(2)?);
        let windows = tx
            .query(
                "SELECT w.instance, w.chain_index, w.kind, w.verdict, m.payload
                 FROM windows w
                 JOIN messages m ON m.gateway_id = w.gateway_id AND m.msg_id = w.msg_id
                 WHERE w.gateway_id = ?1 AND (w.kind = 'day' OR w.verdict <> 'verified')",
                args![&gateway],
            )
            .await?;
        for w in windows {
            let (instance, index, kind, verdict) = (w.text(0)?, w.int(1)?, w.text(2)?, w.text(3)?);
            // A stored payload parsed once already; one that no longer
            // parses (a newer schema) is left out, as the figures did.
            let Ok(m) = serde_json::from_str::<MetricsMessage>(&w.text(4)?) else {
                continue;
            };
            let Some(date) = GatewayDay::date_of(&m.body) else {
                continue;
            };
            tx.execute(
                "UPDATE windows SET local_date = ?1
                 WHERE gateway_id = ?2 AND instance = ?3 AND chain_index = ?4",
                args![&date, &gateway, &instance, index],
            )
            .await?;
            if kind == "day" {
                let key = (gateway.as_str(), instance.as_str(), index);
                record(tx, key, &verdict, &uscc, &region, &m.body).await?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// [`Store::area_input_of`] the whole city.
    pub async fn area_input(
        &mut self,
        from: &str,
        to: &str,
    ) -> Result<AreaInput<DaySummary>, StoreError> {
        self.area_input_of(from, to, Scope::City).await
    }

    /// What [`crate::aggregate::area`] needs, from the database: the
    /// registered enterprises (all of them), the verified days of `scope`
    /// whose local date falls in `from..=to`, and the USCCs with a broken
    /// window in that period (in any region).
    pub async fn area_input_of(
        &mut self,
        from: &str,
        to: &str,
        scope: Scope<'_>,
    ) -> Result<AreaInput<DaySummary>, StoreError> {
        let mut tx = self.begin(false).await?;
        let registered = tx
            .query("SELECT DISTINCT uscc, region_code FROM gateways", args![])
            .await?;
        let broken = tx
            .query(
                "SELECT DISTINCT g.uscc FROM windows w
                 JOIN gateways g ON g.gateway_id = w.gateway_id
                 WHERE w.verdict = 'broken' AND w.local_date >= ?1 AND w.local_date <= ?2",
                args![from, to],
            )
            .await?;
        // By USCC as they arrive (in date order, by the index), then the
        // USCCs in order: the days grouped by enterprise and date without
        // sorting a year of rows by text.
        let mut by: HashMap<String, Vec<Loaded>> = HashMap::new();
        let mut each = |mut r: Row| {
            let d = summary(&mut r)?;
            let key = (r.take_text(1)?, r.int(2)?);
            match by.get_mut(&d.uscc) {
                Some(v) => v.push((d, key.0, key.1)),
                None => {
                    by.insert(d.uscc.clone(), vec![(d, key.0, key.1)]);
                }
            }
            Ok(())
        };
        match scope {
            Scope::City => {
                tx.query_each(
                    "SELECT gateway_id, instance, chain_index, uscc, region_code, local_date,
                       industry, any_key, cnc_declared_n, cnc_declared_d, cnc_verified_n,
                       cnc_verified_d, networked_n, networked_d, nc_time_n, nc_time_d
                     FROM day_figures
                     WHERE verdict = 'verified' AND local_date >= ?1 AND local_date <= ?2",
                    args![from, to],
                    &mut each,
                )
                .await?;
            }
            Scope::Region(r) => {
                tx.query_each(
                    "SELECT gateway_id, instance, chain_index, uscc, region_code, local_date,
                       industry, any_key, cnc_declared_n, cnc_declared_d, cnc_verified_n,
                       cnc_verified_d, networked_n, networked_d, nc_time_n, nc_time_d
                     FROM day_figures
                     WHERE verdict = 'verified' AND region_code = ?3
                       AND local_date >= ?1 AND local_date <= ?2",
                    args![from, to, r],
                    &mut each,
                )
                .await?;
            }
            Scope::Enterprise(u) => {
                tx.query_each(
                    "SELECT gateway_id, instance, chain_index, uscc, region_code, local_date,
                       industry, any_key, cnc_declared_n, cnc_declared_d, cnc_verified_n,
                       cnc_verified_d, networked_n, networked_d, nc_time_n, nc_time_d
                     FROM day_figures
                     WHERE verdict = 'verified' AND uscc = ?3
                       AND local_date >= ?1 AND local_date <= ?2",
                    args![from, to, u],
                    &mut each,
                )
                .await?;
            }
        }
        let mut reg = registered
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        reg.sort();
        let rejected = broken
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<BTreeSet<_>, StoreError>>()?;
        let mut usccs: Vec<(String, Vec<Loaded>)> = by.into_iter().collect();
        usccs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut days = Vec::new();
        for (_, mut mine) in usccs {
            // The order the gateways of a day are listed in, the same on
            // both backends; nearly sorted already, so nearly free.
            mine.sort_by(|a, b| (&a.0.date, &a.0.gateway_id).cmp(&(&b.0.date, &b.0.gateway_id)));
            with_processes(&mut tx, &mut mine, from, to).await?;
            days.extend(mine.into_iter().map(|(d, _, _)| d));
        }
        tx.commit().await?;
        Ok(AreaInput {
            registered: reg,
            days,
            rejected,
        })
    }

    /// The first verified day on or after `from` and the last on or before
    /// `to` (each `None` when there is none): the period a page shows when
    /// it is not given one.
    pub async fn day_span(
        &mut self,
        from: &str,
        to: &str,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        let mut tx = self.begin(false).await?;
        let mut answers = tx
            .query_many(&[
                (
                    "SELECT local_date FROM day_figures
                     WHERE verdict = 'verified' AND local_date >= ?1
                     ORDER BY local_date LIMIT 1",
                    args![from],
                ),
                (
                    "SELECT local_date FROM day_figures
                     WHERE verdict = 'verified' AND local_date <= ?1
                     ORDER BY local_date DESC LIMIT 1",
                    args![to],
                ),
            ])
            .await?
            .into_iter()
            .map(|rows| rows.into_iter().next());
        let first = answers.next().flatten().map(|r| r.text(0)).transpose()?;
        let last = answers.next().flatten().map(|r| r.text(0)).transpose()?;
        tx.commit().await?;
        Ok((first, last))
    }
}

/// A row of [`Store::area_input_of`]'s query, without its process counts.
fn summary(r: &mut Row) -> Result<DaySummary, StoreError> {
    let industry = r.take_text(6)?;
    Ok(DaySummary {
        gateway_id: r.take_text(0)?,
        uscc: r.take_text(3)?,
        region_code: r.take_text(4)?,
        date: r.take_text(5)?,
        industry: Industry::parse(&industry)
            .ok_or_else(|| StoreError::Decode(format!("industry {industry:?}")))?,
        any_key: r.int(7)? != 0,
        cnc_rate_declared: (count(r, 8)?, count(r, 9)?),
        cnc_rate_verified: (count(r, 10)?, count(r, 11)?),
        networking_rate: (count(r, 12)?, count(r, 13)?),
        nc_time_share: (count(r, 14)?, count(r, 15)?),
        processes: Vec::new(),
    })
}

/// Reads the process counts of one enterprise's days (sorted by date)
/// when some date has more than one gateway's: only then are they pooled.
async fn with_processes(
    tx: &mut Tx<'_>,
    days: &mut [Loaded],
    from: &str,
    to: &str,
) -> Result<(), StoreError> {
    let pooled = days.windows(2).any(|w| match w {
        [a, b] => a.0.date == b.0.date,
        _ => false,
    });
    let Some(uscc) = days.first().map(|d| d.0.uscc.clone()).filter(|_| pooled) else {
        return Ok(());
    };
    let mut counts: HashMap<(String, String, i64), Vec<ProcessCounts>> = HashMap::new();
    let rows = tx
        .query(
            "SELECT gateway_id, instance, chain_index, processes FROM day_figures
             WHERE verdict = 'verified' AND uscc = ?1
               AND local_date >= ?2 AND local_date <= ?3",
            args![&uscc, from, to],
        )
        .await?;
    for r in rows {
        let p = serde_json::from_str(&r.text(3)?)
            .map_err(|e| StoreError::Decode(format!("process counts: {e}")))?;
        counts.insert((r.text(0)?, r.text(1)?, r.int(2)?), p);
    }
    for (d, instance, index) in days.iter_mut() {
        let key = (
            std::mem::take(&mut d.gateway_id),
            std::mem::take(instance),
            *index,
        );
        if let Some(p) = counts.remove(&key) {
            d.processes = p;
        }
        d.gateway_id = key.0;
    }
    Ok(())
}
