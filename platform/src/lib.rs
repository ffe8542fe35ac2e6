//! zgsz-platform: the city platform's receiver for zgsz gateways.
//!
//! Data flows one way: [`ingest`] (MQTT, a shared subscription) →
//! [`store`] (SQLite or PostgreSQL: registry, de-duplicated messages, the
//! digest chain and its verdicts) → the `gaps` report. Beside it, [`report`]
//! takes in a gateway's signed evidence report and compares it with what
//! the store received, from the CLI or over [`http`]. The payload types,
//! canonical lines, headline arithmetic and the signature check come from
//! `zgsz-contract`, the crate the gateway uses too.

pub mod config;
pub mod http;
pub mod ingest;
pub mod report;
pub mod store;
pub mod topic;
pub mod verify;
