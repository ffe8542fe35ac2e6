//! zgsz-platform: the city platform's receiver for zgsz gateways.
//!
//! Data flows one way: [`ingest`] (MQTT, a shared subscription) →
//! [`store`] (SQLite or PostgreSQL: registry, de-duplicated messages, the
//! digest chain and its verdicts) → [`gaps`], the loss accounting. The payload types, canonical lines and
//! headline arithmetic come from `zgsz-contract`, the crate the gateway
//! uses too. [`retire`] takes over the queued share of an instance removed
//! for good.

pub mod aggregate;
pub mod auth;
pub mod config;
pub mod enterprise;
pub mod export;
pub mod gaps;
pub mod ingest;
pub mod pages;
pub mod quality;
pub mod retire;
pub mod store;
pub mod topic;
pub mod verify;
