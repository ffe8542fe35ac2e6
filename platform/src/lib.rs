//! zgsz-platform: the city platform's receiver for zgsz gateways.
//!
//! Data flows one way: [`ingest`] (MQTT, a shared subscription) →
//! [`store`] (SQLite or PostgreSQL: registry, de-duplicated messages, the
//! digest chain and its verdicts) → [`gaps`], the loss accounting; and
//! [`aggregate`], the figures per district and city. Beside it, [`report`]
//! takes in a gateway's signed evidence report and compares it with what
//! the store received, from the CLI or over [`http`]; [`retire`] takes
//! over the queued share of an instance removed for good. The payload
//! types, canonical lines, headline arithmetic and the signature check
//! come from `zgsz-contract`, the crate the gateway uses too.

pub mod aggregate;
pub mod auth;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod enterprise;
pub mod export;
pub mod gaps;
pub mod http;
pub mod ingest;
pub mod pages;
pub mod quality;
pub mod report;
pub mod retire;
pub mod store;
pub mod summary;
pub mod topic;
pub mod verify;
pub mod web;
