//! zgsz-agent: an industrial IoT edge agent for Yangzhou's 智改数转 programme.
//!
//! Data flows one way: [`source`] → [`reading::Reading`] → [`buffer`]
//! (SQLite outbox) → [`uplink`] (MQTT). See ARCHITECTURE.md.
//!
//! The simulated shop floor (`sim`), the embedded broker (`broker`) and
//! `demo` come with the `demo` feature, on by default; gateway builds
//! (`--no-default-features`) leave them out.

pub mod agent;
pub mod backoff;
#[cfg(feature = "demo")]
pub mod broker;
pub mod buffer;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod clocksync;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod expr;
pub mod http;
pub mod identity;
pub mod logfmt;
pub mod loglimit;
pub mod metrics;
pub mod plant;
pub mod reading;
pub mod reload;
pub mod report;
pub mod signing;
#[cfg(feature = "demo")]
pub mod sim;
pub mod source;
pub mod telemetry;
pub mod uplink;
pub mod watchdog;
