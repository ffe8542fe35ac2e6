//! Tags that a companion specification fixes, so that a standard machine
//! needs only its endpoint and root node.
//!
//! `opcua-machine-tool` follows OPC 40501-1 (Machine Tools): under the
//! machine's root, `Monitoring/MachineTool/OperationMode`, one object per
//! NC channel under `Monitoring` holding `ChannelState` and `ChannelMode`,
//! and optionally `Production/ActiveProgram/State`. The tag names are the
//! ones the plant profile of the same name reads (see plant.rs), so the
//! equipment's rules follow without being written.

use std::time::Duration;

use crate::source::opcua::config::{NodeRef, OpcUaTag, TagMode, ValueKind};

fn tag(name: &str, path: &[&str], kind: ValueKind, poll: Duration, optional: bool) -> OpcUaTag {
    OpcUaTag {
        name: name.into(),
        node: NodeRef::Path(path.iter().map(|s| s.to_string()).collect()),
        mode: TagMode::Subscribe,
        sampling_interval: poll,
        publishing_interval: poll,
        queue_size: 10,
        deadband: None,
        kind,
        optional,
    }
}

/// A profile an opcua device cannot use as written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {0:?} for an opcua device; use \"opcua-machine-tool\" (OPC 40501), or list the tags")]
    Unknown(String),
    #[error("channels is empty; list the channel objects under Monitoring, e.g. [\"Channel1\", \"Channel2\"], or remove it")]
    NoChannels,
    #[error("channels[{index}] = {name:?} must be one browse name, e.g. \"Channel1\"")]
    Channel { index: usize, name: String },
}

/// The tags profile `name` adds. `channels` names the machine's channel
/// objects (their browse names under Monitoring); without it, the first
/// channel found is used, which is right for the usual one-channel machine.
pub fn tags(
    name: &str,
    channels: Option<&[String]>,
    poll: Duration,
) -> Result<Vec<OpcUaTag>, ProfileError> {
    if name != "opcua-machine-tool" {
        return Err(ProfileError::Unknown(name.to_string()));
    }
    let mut out = vec![tag(
        "operation_mode",
        &["Monitoring", "MachineTool", "OperationMode"],
        ValueKind::Num,
        poll,
        false,
    )];
    match channels {
        None => {
            out.push(tag(
                "channel_state",
                &["Monitoring", "*", "ChannelState"],
                ValueKind::Num,
                poll,
                false,
            ));
            out.push(tag(
                "channel_mode",
                &["Monitoring", "*", "ChannelMode"],
                ValueKind::Num,
                poll,
                true,
            ));
        }
        Some([]) => return Err(ProfileError::NoChannels),
        Some(list) => {
            for (i, ch) in list.iter().enumerate() {
                if ch.is_empty() || ch.contains('/') {
                    return Err(ProfileError::Channel {
                        index: i,
                        name: ch.clone(),
                    });
                }
                let n = i + 1;
                out.push(tag(
                    &format!("channel_state_{n}"),
                    &["Monitoring", ch, "ChannelState"],
                    ValueKind::Num,
                    poll,
                    false,
                ));
                out.push(tag(
                    &format!("channel_mode_{n}"),
                    &["Monitoring", ch, "ChannelMode"],
                    ValueKind::Num,
                    poll,
                    true,
                ));
            }
        }
    }
    out.push(tag(
        "program_state",
        &["Production", "ActiveProgram", "State"],
        ValueKind::Str,
        poll,
        true,
    ));
    Ok(out)
}
