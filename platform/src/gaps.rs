//! Loss accounting: what of a gateway's evidence never arrived, and
//! whether the gateway's own eviction counters explain it.
//!
//! `seq` alone cannot tell a loss: telemetry shares the sequence and goes
//! to other sinks, so a platform that carries metrics and states sees seq
//! gaps on every gateway that also sends telemetry elsewhere. The evidence
//! has tighter sequences of its own, and those are what is counted here:
//!
//! * sealed windows carry the chain `index`, which has no holes on the
//!   gateway: a missing index is a missing sealed `metrics` message;
//! * transitions carry their `id`, which the gateway hands out one by one
//!   (`INTEGER PRIMARY KEY` of its history): a missing id is a transition
//!   of a `states` message that never arrived.
//!
//! The gateway counts what it evicts unsent (`status.outbox`:
//! `evicted_metrics` rows, `evicted_states` transitions), so a missing
//! window or transition is explained while the counters cover it. The
//! counters are an upper bound (a row evicted while in flight may still
//! arrive), so "explained" means "could all be eviction"; what exceeds
//! them was lost after the broker. While the gateway still holds unsent
//! rows, a hole may yet fill, and the verdict waits.

use std::collections::BTreeMap;

use crate::store::db::args;
use crate::store::{Store, StoreError};

/// The outbox counters of an instance's latest status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// The status's own timestamp (UTC ms).
    pub ts: i64,
    /// Rows the gateway had not yet delivered.
    pub unsent_rows: i64,
    /// The last seq the gateway had committed.
    pub last_seq: i64,
    /// Rows evicted unsent, of every kind (telemetry too).
    pub evicted_rows: i64,
    /// Sealed and unsealed metrics rows evicted unsent.
    pub evicted_metrics: i64,
    /// Transitions inside the states rows evicted unsent.
    pub evicted_states: i64,
}

/// What one (gateway, instance) is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    pub gateway_id: String,
    pub instance: String,
    /// Seq ranges never received between the lowest and highest received:
    /// candidates only (other sinks' telemetry shares the sequence).
    pub seq_gaps: Vec<(i64, i64)>,
    /// Chain index ranges missing between the lowest and highest stored.
    pub missing_windows: Vec<(i64, i64)>,
    /// Transition id ranges missing between the lowest and highest stored.
    pub missing_transitions: Vec<(i64, i64)>,
    /// Windows still `pending` (a neighbour or their states not arrived).
    pub pending_windows: i64,
    /// From the latest status of this instance, if one arrived.
    pub counters: Option<Counters>,
}

/// Whether the gateway's counters account for what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No window and no transition is missing.
    Complete,
    /// Something is missing, but the gateway still holds unsent rows: the
    /// holes may fill once it delivers them.
    Owed { unsent_rows: i64 },
    /// No status of this instance arrived, so nothing can be explained.
    NoStatus,
    /// The eviction counters cover every missing window and transition.
    Explained,
    /// More is missing than the gateway evicted: lost after the broker.
    Unexplained { windows: i64, transitions: i64 },
}

impl Accounting {
    pub fn verdict(&self) -> Verdict {
        let windows = count(&self.missing_windows);
        let transitions = count(&self.missing_transitions);
        if windows == 0 && transitions == 0 {
            return Verdict::Complete;
        }
        let Some(c) = &self.counters else {
            return Verdict::NoStatus;
        };
        if c.unsent_rows > 0 {
            return Verdict::Owed {
                unsent_rows: c.unsent_rows,
            };
        }
        let windows = (windows - c.evicted_metrics).max(0);
        let transitions = (transitions - c.evicted_states).max(0);
        if windows == 0 && transitions == 0 {
            Verdict::Explained
        } else {
            Verdict::Unexplained {
                windows,
                transitions,
            }
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Complete => write!(f, "complete"),
            Verdict::Owed { unsent_rows } => write!(
                f,
                "owed: the gateway still holds {unsent_rows} unsent row(s); the holes may fill"
            ),
            Verdict::NoStatus => write!(f, "unexplained: no status from this instance"),
            Verdict::Explained => write!(f, "explained by the gateway's evictions"),
            Verdict::Unexplained {
                windows,
                transitions,
            } => write!(
                f,
                "unexplained: {windows} window(s) and {transitions} transition(s) beyond what the gateway evicted"
            ),
        }
    }
}

/// The number of values in the ranges.
pub fn count(ranges: &[(i64, i64)]) -> i64 {
    ranges.iter().map(|(a, b)| b - a + 1).sum()
}

/// The ranges missing between the lowest and highest of `values`.
fn holes(values: &mut [i64]) -> Vec<(i64, i64)> {
    values.sort_unstable();
    values
        .windows(2)
        .filter(|w| w[1] > w[0] + 1)
        .map(|w| (w[0] + 1, w[1] - 1))
        .collect()
}

/// What the database holds of one (gateway, instance).
#[derive(Default)]
struct Gathered {
    seqs: Vec<i64>,
    windows: Vec<i64>,
    transition_ids: Vec<i64>,
    pending: i64,
    counters: Option<Counters>,
}

impl Store {
    /// The loss accounting of every (gateway, instance) that sent metrics,
    /// states or a status, by gateway and instance.
    pub async fn accounting(&mut self) -> Result<Vec<Accounting>, StoreError> {
        let mut tx = self.begin(false).await?;
        let seqs = tx
            .query("SELECT gateway_id, instance, seq FROM messages", args![])
            .await?;
        let windows = tx
            .query(
                "SELECT gateway_id, instance, chain_index, verdict FROM windows",
                args![],
            )
            .await?;
        let transitions = tx
            .query("SELECT gateway_id, instance, id FROM transitions", args![])
            .await?;
        let status = tx
            .query(
                "SELECT gateway_id, instance, ts, unsent_rows, last_seq, evicted_rows,
                   evicted_metrics, evicted_states FROM outbox_status",
                args![],
            )
            .await?;
        tx.commit().await?;
        let mut by: BTreeMap<(String, String), Gathered> = BTreeMap::new();
        for r in &seqs {
            by.entry((r.text(0)?, r.text(1)?))
                .or_default()
                .seqs
                .push(r.int(2)?);
        }
        for r in &windows {
            let e = by.entry((r.text(0)?, r.text(1)?)).or_default();
            e.windows.push(r.int(2)?);
            if r.text(3)? == "pending" {
                e.pending += 1;
            }
        }
        for r in &transitions {
            by.entry((r.text(0)?, r.text(1)?))
                .or_default()
                .transition_ids
                .push(r.int(2)?);
        }
        for r in &status {
            by.entry((r.text(0)?, r.text(1)?)).or_default().counters = Some(Counters {
                ts: r.int(2)?,
                unsent_rows: r.int(3)?,
                last_seq: r.int(4)?,
                evicted_rows: r.int(5)?,
                evicted_metrics: r.int(6)?,
                evicted_states: r.int(7)?,
            });
        }
        Ok(by
            .into_iter()
            .map(|((gateway_id, instance), mut g)| Accounting {
                gateway_id,
                instance,
                seq_gaps: holes(&mut g.seqs),
                missing_windows: holes(&mut g.windows),
                missing_transitions: holes(&mut g.transition_ids),
                pending_windows: g.pending,
                counters: g.counters,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(
        windows: Vec<(i64, i64)>,
        transitions: Vec<(i64, i64)>,
        c: Option<Counters>,
    ) -> Accounting {
        Accounting {
            gateway_id: "gw".into(),
            instance: "i".into(),
            seq_gaps: vec![],
            missing_windows: windows,
            missing_transitions: transitions,
            pending_windows: 0,
            counters: c,
        }
    }

    fn counters(unsent: i64, metrics: i64, states: i64) -> Option<Counters> {
        Some(Counters {
            ts: 1,
            unsent_rows: unsent,
            last_seq: 100,
            evicted_rows: metrics + 1,
            evicted_metrics: metrics,
            evicted_states: states,
        })
    }

    #[test]
    fn holes_are_the_ranges_between_lowest_and_highest() {
        assert_eq!(holes(&mut [9, 1, 2, 5]), vec![(3, 4), (6, 8)]);
        assert_eq!(holes(&mut [4]), vec![]);
        assert_eq!(count(&[(3, 4), (6, 8)]), 5);
    }

    #[test]
    fn the_verdict_weighs_what_is_missing_against_the_counters() {
        assert_eq!(acc(vec![], vec![], None).verdict(), Verdict::Complete);
        assert_eq!(acc(vec![(2, 3)], vec![], None).verdict(), Verdict::NoStatus);
        assert_eq!(
            acc(vec![(2, 3)], vec![], counters(7, 0, 0)).verdict(),
            Verdict::Owed { unsent_rows: 7 }
        );
        assert_eq!(
            acc(vec![(2, 3)], vec![(5, 5)], counters(0, 2, 1)).verdict(),
            Verdict::Explained
        );
        assert_eq!(
            acc(vec![(2, 3)], vec![(5, 8)], counters(0, 1, 1)).verdict(),
            Verdict::Unexplained {
                windows: 1,
                transitions: 3
            }
        );
    }
}
