//! `zgsz-agent browse`: the address space of an OPC UA server as a tree,
//! so a commissioning engineer can find the nodes to write as tags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use opcua::client::Session;
use opcua::types::{
    AttributeId, DataTypeId, NodeClass, NodeId, ObjectId, ReadValueId, TimestampsToReturn,
};

use crate::source::opcua::config::{
    check_endpoint, parse_node_id, Identity, NodeRef, OpcUaDevice, SecurityMode, SecurityPolicy,
};
use crate::source::opcua::{browse, session, value};

#[derive(Args, Debug)]
pub struct BrowseArgs {
    /// The server, e.g. opc.tcp://192.168.10.21:4840
    #[arg(long)]
    pub endpoint: String,
    /// Where to start: a node id (ns=3;s=Machine1) or a browse path from
    /// the Objects folder (Machines/DMG-01). Default: the Objects folder.
    #[arg(long)]
    pub node: Option<String>,
    /// How many levels to descend.
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    /// None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss.
    #[arg(long, default_value = "None")]
    pub security_policy: String,
    /// None, Sign or SignAndEncrypt (default: SignAndEncrypt with a policy).
    #[arg(long)]
    pub security_mode: Option<String>,
    /// Log in as this user (with --password-file).
    #[arg(long, requires = "password_file")]
    pub username: Option<String>,
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// Accept the server's certificate without it being in pki/trusted
    /// (for a first look; the agent itself should trust it explicitly).
    #[arg(long)]
    pub trust_server: bool,
    /// The agent's config: use its state directory's PKI (the gateway's
    /// own certificate and trust list) and gateway id.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// PKI directory when there is no --config (default: ./pki).
    #[arg(long, conflicts_with = "config")]
    pub pki: Option<PathBuf>,
    /// Print a ready-to-paste [[devices.tags]] entry for every variable.
    #[arg(long)]
    pub snippet: bool,
    /// Timeout of each request.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
}

fn parse_policy(s: &str) -> Result<SecurityPolicy, String> {
    Ok(match s {
        "None" => SecurityPolicy::None,
        "Basic256Sha256" => SecurityPolicy::Basic256Sha256,
        "Aes128_Sha256_RsaOaep" => SecurityPolicy::Aes128Sha256RsaOaep,
        "Aes256_Sha256_RsaPss" => SecurityPolicy::Aes256Sha256RsaPss,
        other => return Err(format!("--security-policy {other:?}: use None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")),
    })
}

fn parse_mode(s: &str) -> Result<SecurityMode, String> {
    Ok(match s {
        "None" => SecurityMode::None,
        "Sign" => SecurityMode::Sign,
        "SignAndEncrypt" => SecurityMode::SignAndEncrypt,
        other => {
            return Err(format!(
                "--security-mode {other:?}: use None, Sign or SignAndEncrypt"
            ))
        }
    })
}

fn type_name(id: &NodeId) -> String {
    if id.namespace == 0 {
        if let Some(n) = id.as_u32() {
            if let Ok(t) = DataTypeId::try_from(n) {
                return format!("{t:?}");
            }
        }
    }
    id.to_string()
}

/// One node of the printed tree.
struct Line {
    depth: usize,
    name: String,
    id: NodeId,
    class: NodeClass,
    data_type: Option<String>,
    value: Option<String>,
    /// Browse path from the start node, for the snippet.
    path: Vec<String>,
}

#[allow(
    clippy::too_many_lines,
    reason = "a CLI command read top to bottom: check the options, connect, browse, print; not split yet"
)]
pub async fn browse_cmd(a: BrowseArgs) -> anyhow::Result<ExitCode> {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        Ok(ExitCode::from(2))
    };
    if let Err(why) = check_endpoint(&a.endpoint) {
        return fail(format!("--endpoint {why}"));
    }
    let policy = match parse_policy(&a.security_policy) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mode = match a.security_mode.as_deref().map(parse_mode).transpose() {
        Ok(Some(m)) => m,
        Ok(None) if policy == SecurityPolicy::None => SecurityMode::None,
        Ok(None) => SecurityMode::SignAndEncrypt,
        Err(e) => return fail(e),
    };
    let Some(timeout) = crate::config::parse_duration(&a.timeout) else {
        return fail(format!(
            "--timeout {:?} is not a duration, e.g. 10s",
            a.timeout
        ));
    };
    let (pki, gateway_id) = match &a.config {
        Some(path) => {
            let (cfg, _) = crate::config::load(path)?;
            (
                cfg.agent.state_dir.join("pki"),
                cfg.agent.gateway_id.clone(),
            )
        }
        None => (
            a.pki.clone().unwrap_or_else(|| PathBuf::from("pki")),
            "browse".to_string(),
        ),
    };
    let identity = match (&a.username, &a.password_file) {
        (Some(user), Some(f)) => match std::fs::read_to_string(f) {
            Ok(s) => Identity::UserName {
                user: user.clone(),
                password: crate::config::Secret::new(s.trim_end_matches(['\r', '\n'])),
            },
            Err(e) => return fail(format!("--password-file {}: {e}", f.display())),
        },
        _ => Identity::Anonymous,
    };
    let start_ref = match a.node.as_deref() {
        None => None,
        Some(s) => match parse_node_id(s) {
            Some(id) if s.contains('=') => Some(NodeRef::Id(id)),
            _ => Some(NodeRef::Path(
                s.trim_matches('/').split('/').map(str::to_string).collect(),
            )),
        },
    };
    let dev = OpcUaDevice {
        endpoint: a.endpoint.clone(),
        policy,
        mode,
        identity,
        trust_unknown_server_certs: a.trust_server,
        root: None,
        profile: None,
        tags: Vec::new(),
        pki_dir: pki.clone(),
        gateway_id: gateway_id.clone(),
    };
    let mut client = session::client(&pki, &gateway_id, a.trust_server, timeout, Duration::ZERO)?;
    let conn = match session::connect(&mut client, &dev, &pki, timeout).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let s = &conn.session;
    let start = match &start_ref {
        None => ObjectId::ObjectsFolder.into(),
        Some(r) => match browse::resolve(s, None, r, timeout).await {
            Ok(id) => id,
            Err(code) => {
                conn.close(timeout).await;
                return fail(format!(
                    "--node {}: {}",
                    a.node.as_deref().unwrap_or_default(),
                    code.sub_code().name()
                ));
            }
        },
    };
    let mut lines = Vec::new();
    walk(s, &start, a.depth, timeout, &mut lines).await;
    conn.close(timeout).await;

    println!("{} ({})", a.node.as_deref().unwrap_or("Objects"), start);
    for l in &lines {
        let indent = "  ".repeat(l.depth);
        let class = match l.class {
            NodeClass::Variable => format!("Variable {}", l.data_type.as_deref().unwrap_or("?")),
            other => format!("{other:?}"),
        };
        let value = l
            .value
            .as_deref()
            .map(|v| format!(" = {v}"))
            .unwrap_or_default();
        println!("{indent}{}  [{class}]  {}{value}", l.name, l.id);
    }
    if a.snippet {
        println!();
        println!(
            "# Tags for [[devices]] with protocol = \"opcua\", endpoint = {:?}",
            a.endpoint
        );
        for l in lines.iter().filter(|l| l.class == NodeClass::Variable) {
            let name = tag_name(&l.path);
            println!("[[devices.tags]]");
            println!("name = {name:?}");
            println!("node = {:?}", l.id.to_string());
            println!("# path = {:?}", l.path.join("/"));
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A tag name from a browse path: lower case, `_` between words.
fn tag_name(path: &[String]) -> String {
    let last = path
        .iter()
        .rev()
        .take(2)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("_");
    let mut out = String::new();
    let mut prev_lower = false;
    for c in last.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_').to_string();
    match out.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => out,
        _ => format!("t_{out}"),
    }
}

async fn walk(
    s: &Arc<Session>,
    start: &NodeId,
    depth: usize,
    timeout: Duration,
    out: &mut Vec<Line>,
) {
    // Depth-first, iteratively: (node, depth, path).
    let mut stack: Vec<(NodeId, usize, Vec<String>)> = vec![(start.clone(), 0, Vec::new())];
    while let Some((node, d, path)) = stack.pop() {
        if d >= depth {
            continue;
        }
        let Ok(mut kids) = browse::children(s, &node, timeout).await else {
            continue;
        };
        kids.sort_by(|a, b| a.browse_name.name.as_ref().cmp(b.browse_name.name.as_ref()));
        let vars: Vec<ReadValueId> = kids
            .iter()
            .filter(|k| k.node_class == NodeClass::Variable)
            .flat_map(|k| {
                [AttributeId::DataType, AttributeId::Value].map(|attr| ReadValueId {
                    node_id: k.node_id.node_id.clone(),
                    attribute_id: attr as u32,
                    ..Default::default()
                })
            })
            .collect();
        let values = if vars.is_empty() {
            Vec::new()
        } else {
            match tokio::time::timeout(timeout, s.read(&vars, TimestampsToReturn::Neither, 0.0))
                .await
            {
                Ok(Ok(v)) => v,
                _ => Vec::new(),
            }
        };
        let mut vi = 0;
        let mut level = Vec::new();
        for k in &kids {
            let name = k.browse_name.name.as_ref().to_string();
            let mut p = path.clone();
            p.push(name.clone());
            let (mut data_type, mut val) = (None, None);
            if k.node_class == NodeClass::Variable {
                if let Some(opcua::types::Variant::NodeId(id)) =
                    values.get(vi).and_then(|dv| dv.value.as_ref())
                {
                    data_type = Some(type_name(id));
                }
                if let Some(dv) = values.get(vi + 1) {
                    let (v, q) = value::to_quality(dv);
                    val = Some(match (v, q) {
                        (Some(v), _) => v.to_string(),
                        (None, crate::reading::Quality::Bad(why)) => format!("({why})"),
                        (None, _) => "-".into(),
                    });
                }
                vi += 2;
            }
            level.push(Line {
                depth: d + 1,
                name,
                id: k.node_id.node_id.clone(),
                class: k.node_class,
                data_type,
                value: val,
                path: p,
            });
        }
        // Children go right after their parent's line; the parent's own
        // descendants are not listed yet (depth first), so order holds.
        let at = out
            .iter()
            .position(|l| l.id == node)
            .map(|i| i + 1)
            .unwrap_or(out.len());
        for l in &level {
            stack.push((l.id.clone(), l.depth, l.path.clone()));
        }
        out.splice(at..at, level);
    }
}
