//! The digest chain over closed windows, as the gateway stores it.
//!
//! The canonical lines and digests are shared with the platform and live in
//! the `zgsz-contract` crate (re-exported here); this module adds what only
//! the gateway needs: the entry as stored in SQLite, and the transition
//! lines of a window read from the outbox.

pub use zgsz_contract::chain::*;

use crate::plant::WindowData;

/// A chain entry as stored in SQLite.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub seal: Seal,
    /// `hour` or `day`.
    pub kind: String,
    pub start_ts: i64,
    pub end_ts: i64,
    pub config_hash: String,
    /// The metrics body as committed; kept for day windows (the report's
    /// daily detail), not for hours, to keep the database small.
    pub body: Option<Vec<u8>>,
}

/// The canonical lines of the state history behind a window: each
/// configured equipment's state at the start (in config order), then every
/// transition inside the window in stored order.
pub fn transitions_lines(equipment: &[&str], start: i64, end: i64, data: &WindowData) -> String {
    zgsz_contract::chain::transitions_lines(
        equipment,
        start,
        end,
        |id| data.initial.get(id).copied(),
        data.transitions
            .iter()
            .map(|(id, ts, s)| (id.as_str(), *ts, *s)),
    )
}
