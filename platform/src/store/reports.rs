//! The evidence reports taken in (table `reports`, migration 3), and the
//! stored seals a report is compared with.

use super::db::args;
use super::{Store, StoreError};

/// One intake as recorded, without the report and signature themselves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportRecord {
    /// `<received_ts>-<report_sha256>`.
    pub id: String,
    pub received_ts: i64,
    /// As the report names it; empty when it names none.
    pub gateway_id: String,
    pub period_from: String,
    pub period_to: String,
    /// SHA-256 of the exact bytes of report.json, hex.
    pub report_sha256: String,
    /// `accepted` or `refused`.
    pub verdict: String,
    /// JSON array of `{"code", "text"}`, as the intake answered.
    pub reasons: String,
    pub entries: i64,
    pub matched: i64,
    pub not_received: i64,
    pub mismatched: i64,
}

/// A stored seal of a gateway, as a report entry is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDigest {
    pub instance: String,
    pub chain_index: i64,
    pub start_ts: i64,
    pub digest: String,
}

impl Store {
    /// Records an intake with the report's text and the signature (hex).
    /// Two intakes of the same report in the same millisecond get
    /// consecutive `received_ts`, so every intake keeps its own row.
    /// Returns the record's id.
    pub async fn record_report(
        &mut self,
        r: &ReportRecord,
        report: &str,
        signature_hex: &str,
    ) -> Result<String, StoreError> {
        let mut tx = self.begin(true).await?;
        let mut received_ts = r.received_ts;
        let id = loop {
            let id = format!("{received_ts}-{}", r.report_sha256);
            let n = tx
                .execute(
                    "INSERT INTO reports (id, received_ts, gateway_id, period_from, period_to,
                       report_sha256, verdict, reasons, entries, matched, not_received,
                       mismatched, report, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (id) DO NOTHING",
                    args![
                        &id,
                        received_ts,
                        &r.gateway_id,
                        &r.period_from,
                        &r.period_to,
                        &r.report_sha256,
                        &r.verdict,
                        &r.reasons,
                        r.entries,
                        r.matched,
                        r.not_received,
                        r.mismatched,
                        report,
                        signature_hex
                    ],
                )
                .await?;
            if n == 1 {
                break id;
            }
            received_ts += 1;
        };
        tx.commit().await?;
        Ok(id)
    }

    /// Every intake, newest first, without the bodies.
    pub async fn reports(&mut self) -> Result<Vec<ReportRecord>, StoreError> {
        self.reports_of(None).await
    }

    /// The intakes of reports naming `gateway_id` (every intake with
    /// `None`), newest first, without the bodies.
    pub async fn reports_of(
        &mut self,
        gateway_id: Option<&str>,
    ) -> Result<Vec<ReportRecord>, StoreError> {
        let mut tx = self.begin(false).await?;
        let rows = tx
            .query(
                "SELECT id, received_ts, gateway_id, period_from, period_to, report_sha256,
                   verdict, reasons, entries, matched, not_received, mismatched FROM reports
                 WHERE ?1 = '' OR gateway_id = ?1",
                args![gateway_id.unwrap_or_default()],
            )
            .await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(ReportRecord {
                    id: r.text(0)?,
                    received_ts: r.int(1)?,
                    gateway_id: r.text(2)?,
                    period_from: r.text(3)?,
                    period_to: r.text(4)?,
                    report_sha256: r.text(5)?,
                    verdict: r.text(6)?,
                    reasons: r.text(7)?,
                    entries: r.int(8)?,
                    matched: r.int(9)?,
                    not_received: r.int(10)?,
                    mismatched: r.int(11)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| (b.received_ts, &b.id).cmp(&(a.received_ts, &a.id)));
        Ok(out)
    }

    /// The stored seals of `gateway_id` (every instance) whose window
    /// starts in `[from, to]`: one query for a whole report, not one per
    /// entry (a year of hours is some 9,000 entries).
    pub async fn digests_between(
        &mut self,
        gateway_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<StoredDigest>, StoreError> {
        let mut tx = self.begin(false).await?;
        let rows = tx
            .query(
                "SELECT instance, chain_index, start_ts, digest FROM windows
                 WHERE gateway_id = ?1 AND start_ts >= ?2 AND start_ts <= ?3",
                args![gateway_id, from, to],
            )
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(StoredDigest {
                    instance: r.text(0)?,
                    chain_index: r.int(1)?,
                    start_ts: r.int(2)?,
                    digest: r.text(3)?,
                })
            })
            .collect()
    }
}
