//! Northbound: delivery of outbox rows to the platform.

pub mod mqtt;
pub mod tls;
