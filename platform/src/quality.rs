//! Data quality: everything about the received figures a reviewer must
//! look at before trusting them (the programme's 评分细则 forbid falsified
//! figures; this is where they would show).
//!
//! Nothing here changes a verdict; it gathers what ingest, verification
//! and the loss accounting found, plus what only time shows (a gateway
//! gone quiet), into one list.

use crate::gaps::Verdict;
use crate::store::db::args;
use crate::store::{Store, StoreError};
use crate::verify::CONFIG_HASH_CHANGED;

/// One thing to review, about one gateway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// A window broke the chain or failed its own checks; its figures do
    /// not count.
    ChainBreak {
        gateway_id: String,
        instance: String,
        index: i64,
        reason: String,
    },
    /// Evidence missing beyond what the gateway says it evicted.
    UnexplainedGap {
        gateway_id: String,
        instance: String,
        verdict: String,
    },
    /// No message and no status for longer than `verify.stale_after_s`
    /// (`None`: never heard from since enrolment).
    Stale {
        gateway_id: String,
        last_contact_ts: Option<i64>,
    },
    /// The gateway's latest status says its clock is not synchronised, so
    /// its window boundaries may be off.
    ClockUnsynchronized { gateway_id: String, status_ts: i64 },
    /// Windows whose declared CNC rate exceeds the verified one by more
    /// than `verify.max_declared_verified_gap`.
    DeclaredVerifiedGap {
        gateway_id: String,
        windows: i64,
        latest_index: i64,
    },
    /// The figures' model changed (`config_hash`) at this window.
    ConfigChanged {
        gateway_id: String,
        instance: String,
        index: i64,
    },
}

impl Problem {
    pub fn gateway_id(&self) -> &str {
        match self {
            Problem::ChainBreak { gateway_id, .. }
            | Problem::UnexplainedGap { gateway_id, .. }
            | Problem::Stale { gateway_id, .. }
            | Problem::ClockUnsynchronized { gateway_id, .. }
            | Problem::DeclaredVerifiedGap { gateway_id, .. }
            | Problem::ConfigChanged { gateway_id, .. } => gateway_id,
        }
    }

    /// A short bilingual name of the kind of problem.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::ChainBreak { .. } => "链断裂 chain break",
            Problem::UnexplainedGap { .. } => "无法解释的缺失 unexplained gap",
            Problem::Stale { .. } => "失联 stale gateway",
            Problem::ClockUnsynchronized { .. } => "时钟未同步 clock unsynchronised",
            Problem::DeclaredVerifiedGap { .. } => "申报与核验差距大 declared–verified gap",
            Problem::ConfigChanged { .. } => "配置变更 config changed",
        }
    }

    /// What exactly, in English, with the numbers.
    pub fn detail(&self) -> String {
        match self {
            Problem::ChainBreak {
                instance,
                index,
                reason,
                ..
            } => format!("instance {instance}, chain index {index}: {reason}"),
            Problem::UnexplainedGap {
                instance, verdict, ..
            } => format!("instance {instance}: {verdict}"),
            Problem::Stale {
                last_contact_ts: Some(ts),
                ..
            } => format!("last contact {}", crate::pages::when(*ts)),
            Problem::Stale { .. } => "never heard from since enrolment".to_string(),
            Problem::ClockUnsynchronized { status_ts, .. } => {
                format!(
                    "reported in the status of {}",
                    crate::pages::when(*status_ts)
                )
            }
            Problem::DeclaredVerifiedGap {
                windows,
                latest_index,
                ..
            } => format!("{windows} window(s), the latest at chain index {latest_index}"),
            Problem::ConfigChanged {
                instance, index, ..
            } => format!("instance {instance}, from chain index {index}"),
        }
    }
}

impl Store {
    /// Every problem, by gateway (the order of [`Problem`]'s variants
    /// within one gateway). `stale_after_ms`: how long a gateway may be
    /// silent before it is listed.
    pub async fn quality(
        &mut self,
        now_ms: i64,
        stale_after_ms: i64,
    ) -> Result<Vec<Problem>, StoreError> {
        let mut tx = self.begin(false).await?;
        let broken = tx
            .query(
                "SELECT gateway_id, instance, chain_index, reason FROM windows WHERE verdict = 'broken'",
                args![],
            )
            .await?;
        let flagged = tx
            .query(
                "SELECT gateway_id, instance, chain_index, flags FROM windows WHERE flags <> ''",
                args![],
            )
            .await?;
        let contact = tx
            .query(
                "SELECT g.gateway_id,
                   COALESCE((SELECT MAX(m.received_ts) FROM messages m WHERE m.gateway_id = g.gateway_id), 0),
                   COALESCE((SELECT s.received_ts FROM status s WHERE s.gateway_id = g.gateway_id), 0)
                 FROM gateways g",
                args![],
            )
            .await?;
        let clocks = tx
            .query(
                "SELECT gateway_id, received_ts FROM status WHERE clock_sync = 'unsynchronized'",
                args![],
            )
            .await?;
        tx.commit().await?;
        let mut problems = Vec::new();
        for r in &broken {
            problems.push(Problem::ChainBreak {
                gateway_id: r.text(0)?,
                instance: r.text(1)?,
                index: r.int(2)?,
                reason: r.text(3)?,
            });
        }
        for a in self.accounting().await? {
            let verdict = a.verdict();
            if matches!(verdict, Verdict::Unexplained { .. } | Verdict::NoStatus) {
                problems.push(Problem::UnexplainedGap {
                    gateway_id: a.gateway_id,
                    instance: a.instance,
                    verdict: verdict.to_string(),
                });
            }
        }
        for r in &contact {
            let last = r.int(1)?.max(r.int(2)?);
            if now_ms - last > stale_after_ms {
                problems.push(Problem::Stale {
                    gateway_id: r.text(0)?,
                    last_contact_ts: (last > 0).then_some(last),
                });
            }
        }
        for r in &clocks {
            problems.push(Problem::ClockUnsynchronized {
                gateway_id: r.text(0)?,
                status_ts: r.int(1)?,
            });
        }
        let mut gaps: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for r in &flagged {
            let flags = r.text(3)?;
            let (gateway_id, index) = (r.text(0)?, r.int(2)?);
            if flags.split(',').any(|f| f == CONFIG_HASH_CHANGED) {
                problems.push(Problem::ConfigChanged {
                    gateway_id: gateway_id.clone(),
                    instance: r.text(1)?,
                    index,
                });
            }
            if flags
                .split(',')
                .any(|f| f == crate::verify::DECLARED_VERIFIED_GAP)
            {
                let e = gaps.entry(gateway_id).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(index);
            }
        }
        for (gateway_id, (windows, latest_index)) in gaps {
            problems.push(Problem::DeclaredVerifiedGap {
                gateway_id,
                windows,
                latest_index,
            });
        }
        let rank = |p: &Problem| match p {
            Problem::ChainBreak { index, .. } => (0, *index),
            Problem::UnexplainedGap { .. } => (1, 0),
            Problem::Stale { .. } => (2, 0),
            Problem::ClockUnsynchronized { .. } => (3, 0),
            Problem::DeclaredVerifiedGap { .. } => (4, 0),
            Problem::ConfigChanged { index, .. } => (5, *index),
        };
        problems.sort_by(|a, b| (a.gateway_id(), rank(a)).cmp(&(b.gateway_id(), rank(b))));
        Ok(problems)
    }
}

/// What the district page says of one enterprise beside its figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EnterpriseNotes {
    /// As its gateways' day figures last gave it; empty before any arrived.
    pub name: String,
    /// Windows of the period with each flag (`config_hash_changed`,
    /// `clock_unsynchronized`, `declared_verified_gap`), and `broken`
    /// windows, by that name.
    pub flags: std::collections::BTreeMap<String, usize>,
}

impl Store {
    /// The name and the window flags of every enterprise registered in
    /// `region`, over the local dates `from..=to`. Reads the flagged and
    /// broken windows of the period by index, not the period's windows.
    pub async fn region_notes(
        &mut self,
        region: &str,
        from: &str,
        to: &str,
    ) -> Result<std::collections::BTreeMap<String, EnterpriseNotes>, StoreError> {
        let mut tx = self.begin(false).await?;
        let rows = tx
            .query_many(&[
                (
                    "SELECT uscc, MAX(enterprise_name) FROM gateways WHERE region_code = ?1
                     GROUP BY uscc",
                    args![region],
                ),
                (
                    "SELECT g.uscc, w.flags FROM windows w
                     JOIN gateways g ON g.gateway_id = w.gateway_id
                     WHERE w.flags <> '' AND w.local_date >= ?2 AND w.local_date <= ?3
                       AND g.region_code = ?1",
                    args![region, from, to],
                ),
                (
                    "SELECT g.uscc FROM windows w
                     JOIN gateways g ON g.gateway_id = w.gateway_id
                     WHERE w.verdict = 'broken' AND w.local_date >= ?2 AND w.local_date <= ?3
                       AND g.region_code = ?1",
                    args![region, from, to],
                ),
            ])
            .await?;
        tx.commit().await?;
        let mut out: std::collections::BTreeMap<String, EnterpriseNotes> = Default::default();
        let [names, flagged, broken] = rows.as_slice() else {
            return Err(StoreError::Invalid("three answers expected".into()));
        };
        for r in names {
            out.entry(r.text(0)?).or_default().name = r.text(1)?;
        }
        for r in flagged {
            let notes = out.entry(r.text(0)?).or_default();
            for flag in r.text(1)?.split(',').filter(|f| !f.is_empty()) {
                *notes.flags.entry(flag.to_string()).or_default() += 1;
            }
        }
        for r in broken {
            *out.entry(r.text(0)?)
                .or_default()
                .flags
                .entry("broken".to_string())
                .or_default() += 1;
        }
        Ok(out)
    }
}

/// A window flag's bilingual name, for the pages.
pub fn flag_name(flag: &str) -> &str {
    match flag {
        "broken" => "链断裂 chain break",
        CONFIG_HASH_CHANGED => "配置变更 config changed",
        "clock_unsynchronized" => "时钟未同步 clock unsynchronised",
        crate::verify::DECLARED_VERIFIED_GAP => "申报与核验差距大 declared–verified gap",
        other => other,
    }
}
