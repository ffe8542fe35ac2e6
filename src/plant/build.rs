//! Building the plant model from the config file's `[[processes]]` and
//! `[[equipment]]` tables, checked against the configured devices.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::{profile_rules, Equipment, PlantModel, Process};
use crate::config::{is_id, DeviceConfig, Problems};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProcess {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) key: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEquipment {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) process: String,
    pub(crate) kind: super::Kind,
    pub(crate) device: String,
    pub(crate) profile: Option<String>,
    pub(crate) nc_active: Option<String>,
    pub(crate) running: Option<String>,
    pub(crate) parts: Option<String>,
}

/// Builds the plant model from `[[processes]]` and `[[equipment]]`:
/// profiles expanded, rules parsed and type-checked against the tags of
/// the equipment's device. Every problem is added to `p`.
#[allow(
    clippy::too_many_lines,
    reason = "one pass in file order (processes, then equipment with their rules), so problems come out in the order of the file; the parts share the id indexes built along the way"
)]
pub(crate) fn build(
    processes: Vec<RawProcess>,
    equipment: Vec<RawEquipment>,
    devices: &[Arc<DeviceConfig>],
    p: &mut Problems,
) -> PlantModel {
    use crate::expr::{Expr, Type};

    let mut model = PlantModel::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, r) in processes.into_iter().enumerate() {
        let key = format!("processes[{i}]");
        if !is_id(&r.id) {
            p.error(
                format!("{key}.id"),
                format!("{:?} must be 1 to 64 letters, digits, '-' or '_'", r.id),
            );
        }
        if r.name.trim().is_empty() {
            p.error(
                format!("{key}.name"),
                "is empty; write the process name, e.g. \"数控车削\"",
            );
        }
        let first = *index.entry(r.id.clone()).or_insert(i);
        if first != i {
            p.error(
                format!("{key}.id"),
                format!("{:?} is already used by processes[{first}]", r.id),
            );
            continue;
        }
        model.processes.push(Process {
            id: r.id,
            name: r.name,
            key: r.key,
        });
    }
    let mut used = vec![false; model.processes.len()];
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, r) in equipment.into_iter().enumerate() {
        let key = format!("equipment[{i}]");
        if !is_id(&r.id) {
            p.error(
                format!("{key}.id"),
                format!("{:?} must be 1 to 64 letters, digits, '-' or '_'", r.id),
            );
        }
        let first = *ids.entry(r.id.clone()).or_insert(i);
        if first != i {
            p.error(
                format!("{key}.id"),
                format!("{:?} is already used by equipment[{first}]", r.id),
            );
        }
        let process = model.processes.iter().position(|pr| pr.id == r.process);
        if process.is_none() {
            let known: Vec<&str> = model.processes.iter().map(|pr| pr.id.as_str()).collect();
            p.error(
                format!("{key}.process"),
                format!(
                    "unknown process {:?}; processes are: {}",
                    r.process,
                    known.join(", ")
                ),
            );
        }
        let Some(dev) = devices.iter().find(|d| *d.id == r.device) else {
            let known: Vec<&str> = devices.iter().map(|d| &*d.id).collect();
            p.error(
                format!("{key}.device"),
                format!(
                    "unknown device {:?}; devices are: {}",
                    r.device,
                    known.join(", ")
                ),
            );
            continue;
        };
        let types = |name: &str| dev.tag_type(name);
        let tag_names = dev.tag_names();
        let (mut nc_text, mut run_text) = (None, None);
        // An OPC UA device's profile also sets its equipment's rules.
        let profile = r
            .profile
            .clone()
            .or_else(|| dev.opcua().and_then(|u| u.profile.clone()));
        if let Some(profile) = &profile {
            match profile_rules(profile, &tag_names) {
                Ok((nc, run)) => {
                    nc_text = Some(nc);
                    run_text = Some(run);
                }
                Err(why) => p.error(format!("{key}.profile"), why.to_string()),
            }
        }
        let nc_active_given = r.nc_active.is_some();
        if let Some(t) = r.nc_active {
            nc_text = Some(t);
        }
        if let Some(t) = r.running {
            run_text = Some(t);
        }
        if !r.kind.nc_capable() {
            // Manual stations never run under NC, whatever a profile says.
            if nc_active_given {
                p.error(
                    format!("{key}.nc_active"),
                    format!("a {} equipment never runs under NC; remove nc_active, or set kind to cnc, plc, dcs or robot", format!("{:?}", r.kind).to_lowercase()),
                );
            }
            nc_text = Some("false".into());
        }
        let mut rule = |field: &str, text: Option<String>| -> Option<Expr> {
            let Some(text) = text else {
                if profile.is_none() {
                    p.error(format!("{key}.{field}"), format!("is missing; write a rule over {}'s tags, e.g. \"execution == 1\", or set profile", dev.id));
                }
                return None;
            };
            match Expr::parse(&text, &types) {
                Ok(e) => Some(e),
                Err(e) => {
                    p.error(
                        format!("{key}.{field}"),
                        format!("{e}; tags of {} are: {}", dev.id, tag_names.join(", ")),
                    );
                    None
                }
            }
        };
        let nc_active = rule("nc_active", nc_text);
        let running = rule("running", run_text);
        if let Some(parts) = &r.parts {
            if types(parts) != Some(Type::Num) {
                p.error(
                    format!("{key}.parts"),
                    format!("{parts:?} must be a numeric tag of {}", dev.id),
                );
            }
        }
        if let (Some(process), Some(nc_active), Some(running)) = (process, nc_active, running) {
            used[process] = true;
            model.equipment.push(Equipment {
                id: r.id.as_str().into(),
                name: r.name,
                process,
                kind: r.kind,
                device: dev.id.clone(),
                poll_interval: dev.poll_interval,
                nc_active,
                running,
                parts: r.parts,
                profile,
            });
        }
    }
    if !p.has_errors() {
        for (i, pr) in model.processes.iter().enumerate() {
            if !used[i] {
                p.error(format!("processes[{i}]"), format!("process {:?} has no equipment; add [[equipment]] with process = {:?} or remove it", pr.id, pr.id));
            }
        }
        if !model.processes.is_empty() && !model.processes.iter().any(|pr| pr.key) {
            p.warn("processes", "no process has key = true, so the key-process CNC rate (关键工序数控化率) has no denominator and is published as null");
        }
    }
    model
}
