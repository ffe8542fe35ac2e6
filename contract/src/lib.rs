//! What a gateway (zgsz-agent) and the city platform (zgsz-platform) must
//! agree on, in one place so that neither side re-implements it from prose:
//!
//! * [`payload`]: the `zgsz.metrics/1`, `zgsz.states/1` and `zgsz.status/1`
//!   messages, serialised by the agent and parsed by the platform;
//! * [`chain`]: the canonical lines and digests of the digest chain;
//! * [`headline`]: the headline arithmetic (CNC rate declared and verified,
//!   networking rate, NC time share) per industry;
//! * [`signature`]: the Ed25519 check of an evidence report's signature.
//!
//! No I/O and no runtime here: only serde, serde_json, sha2, ed25519-dalek
//! and thiserror.

pub mod chain;
pub mod headline;
pub mod model;
pub mod payload;
pub mod signature;

pub use headline::{headline, EquipmentFigures, Headline, ProcessFigures, Span};
pub use model::{Industry, Kind, Ratio, State, StateTimes, WindowKind};
