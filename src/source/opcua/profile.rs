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

/// The tags profile `name` adds. `channels` names the machine's channel
/// objects (their browse names under Monitoring); without it, the first
/// channel found is used, which is right for the usual one-channel machine.
pub fn tags(
    name: &str,
    channels: Option<&[String]>,
    poll: Duration,
) -> Result<Vec<OpcUaTag>, String> {
    if name != "opcua-machine-tool" {
        return Err(format!(
            "unknown profile {name:?} for an opcua device; use \"opcua-machine-tool\" (OPC 40501), or list the tags"
        ));
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
        Some([]) => {
            return Err(
                "channels is empty; list the channel objects under Monitoring, e.g. [\"Channel1\", \"Channel2\"], or remove it".into(),
            )
        }
        Some(list) => {
            for (i, ch) in list.iter().enumerate() {
                if ch.is_empty() || ch.contains('/') {
                    return Err(format!(
                        "channels[{i}] = {ch:?} must be one browse name, e.g. \"Channel1\""
                    ));
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
