//! An OPC UA server with simulated machine tools in the shape of OPC 40501
//! ("Machine Tools"), for the demo and for the tests of the agent's OPC UA
//! client. It runs in-process on 127.0.0.1 on async-opcua's server.
//!
//! # Address space
//!
//! Every instance node lives in the simulator's namespace [`SIM_NS`] with a
//! string node id equal to its path below the Objects folder, e.g.
//! `ns=<sim>;s=Machines/lathe-04/Monitoring/MachineTool/OperationMode`.
//!
//! | path below `Machines/<name>/`                | DataType      | meaning |
//! |----------------------------------------------|---------------|---------|
//! | `Identification/Manufacturer`, `.../Model`, `.../SerialNumber` | String | nameplate |
//! | `Monitoring/MachineTool/OperationMode`       | Int32         | MachineOperationMode: 0 Manual, 1 Automatic, 2 Setup, 3 AutoWithManualIntervention, 4 Service, 5 Other |
//! | `Monitoring/Channel<k>/ChannelState`         | Int32         | ChannelState: 0 Active, 1 Interrupted, 2 Reset |
//! | `Monitoring/Channel<k>/ChannelMode`          | Int32         | ChannelMode: 0 Automatic, 1 MdaMdi, 2 JogManual, 3 JogIncrement, 4 Teachin, 5 RefPoint, 6 Other |
//! | `Monitoring/Channel<k>/FeedOverride`         | Double        | percent; moves a little on every tick (for deadbands) |
//! | `Monitoring/Spindle/Override`                | Double        | percent |
//! | `Monitoring/Spindle/IsRotating`              | Boolean       | |
//! | `Production/ActiveProgram/Name`              | String        | program name |
//! | `Production/ActiveProgram/State`             | LocalizedText | "Running", "Ready" or "Interrupted" |
//! | `Production/ActiveProgram/PartsProduced`     | UInt32        | parts counter |
//!
//! Channels are numbered from 1. The enumerations are served as Int32 with
//! DataType Int32: their enum DataTypes belong to the MachineTool
//! nodeset, which async-opcua does not ship.
//!
//! Browse names carry the namespace of the companion specification that
//! defines them, as on a real 40501 server, because clients match them by
//! name and namespace URI rather than by index:
//! - `Machines`: Machinery ([`MACHINERY_NS`]);
//! - `Identification`, `Manufacturer`, `Model`, `SerialNumber`: DI ([`DI_NS`]);
//! - `Monitoring`, `MachineTool`, `OperationMode`, `ChannelState`,
//!   `ChannelMode`, `FeedOverride`, `Override`, `IsRotating`, `Production`,
//!   `ActiveProgram`, `Name`, `State`: MachineTool ([`MACHINE_TOOL_NS`]);
//! - instance names (`<name>`, `Channel<k>`, `Spindle`) and the
//!   non-standard `PartsProduced`: the simulator's [`SIM_NS`].
//!
//! Type definitions are the generic base types (FolderType,
//! BaseObjectType, BaseDataVariableType, PropertyType): the companion
//! types are not loaded. `Machines` is organised by Objects, a machine by
//! `Machines`; everything below is HasComponent, and the nameplate
//! HasProperty. A real server's `ActiveProgram/State` is a state machine
//! with a `CurrentState`; here it is a plain LocalizedText variable.
//!
//! # Moving values
//!
//! A ticker (200 ms) moves each machine along the same schedule as the
//! Modbus machines ([`super::schedule`], or [`super::plant_day`] under a
//! plant-day clock) and writes only the values that changed, each with a
//! fresh SourceTimestamp, so subscriptions see real changes. A test pins a
//! machine with [`OpcUaSim::hold`] and then writes with [`OpcUaSim::set`].

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opcua::crypto::{CertificateStore, SecurityPolicy, X509};
use opcua::server::address_space::{
    add_namespaces, AddressSpace, NodeType, ObjectBuilder, VariableBuilder,
};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{
    InMemoryNodeManager, InMemoryNodeManagerBuilder, InMemoryNodeManagerImpl,
};
use opcua::server::node_manager::{MonitoredItemRef, RequestContext, ServerContext};
use opcua::server::{
    CreateMonitoredItem, MonitoredItemHandle, ServerBuilder, ServerEndpoint, ServerHandle,
    ServerUserToken, ANONYMOUS_USER_TOKEN_ID,
};
use opcua::sync::RwLock;
use opcua::types::{
    DataEncoding, DataTypeId, DataValue, LocalizedText, MessageSecurityMode, NodeId, NumericRange,
    ObjectTypeId, QualifiedName, StatusCode, TimestampsToReturn, VariableId, VariableTypeId,
    Variant,
};
use tokio::net::TcpListener;

use super::{plant_day, program_name, schedule, MachineKind, ModeOverride, Moment, PlantDay};

/// OPC 10000-100 Devices (DI).
pub const DI_NS: &str = "http://opcfoundation.org/UA/DI/";
/// OPC 40001-1 Machinery.
pub const MACHINERY_NS: &str = "http://opcfoundation.org/UA/Machinery/";
/// OPC 40501-1 Machine Tools.
pub const MACHINE_TOOL_NS: &str = "http://opcfoundation.org/UA/MachineTool/";
/// The simulator's own instance namespace.
pub const SIM_NS: &str = "urn:zgsz-agent:sim";
/// The server's ApplicationUri; it is also in its certificate.
pub const APPLICATION_URI: &str = "urn:zgsz-agent:sim:server";

/// How often the schedule moves the machines on.
const TICK: Duration = Duration::from_millis(200);
/// Upper bound for [`OpcUaSim::stop`]: the server closes every connection
/// before it lets go of its port, and a stuck connection must not hang a
/// test.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The secured endpoints offered besides None/None when
/// [`OpcUaSimOptions::secure_endpoints`] is set.
const SECURE_ENDPOINTS: &[(SecurityPolicy, MessageSecurityMode)] = &[
    (SecurityPolicy::Basic256Sha256, MessageSecurityMode::Sign),
    (
        SecurityPolicy::Basic256Sha256,
        MessageSecurityMode::SignAndEncrypt,
    ),
    (
        SecurityPolicy::Aes128Sha256RsaOaep,
        MessageSecurityMode::Sign,
    ),
    (
        SecurityPolicy::Aes128Sha256RsaOaep,
        MessageSecurityMode::SignAndEncrypt,
    ),
    (
        SecurityPolicy::Aes256Sha256RsaPss,
        MessageSecurityMode::Sign,
    ),
    (
        SecurityPolicy::Aes256Sha256RsaPss,
        MessageSecurityMode::SignAndEncrypt,
    ),
];

/// One simulated machine tool.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Browse name and path segment, e.g. `lathe-04`.
    pub name: String,
    /// A [`MachineKind::Manual`] machine stays in Manual mode and runs no
    /// program; lathes and mills run their schedule in Automatic.
    pub kind: MachineKind,
    /// CNC channels, `Channel1..=ChannelN` (at least one is built).
    pub channels: u8,
    /// Length of a machining cycle, seconds (minutes on the plant day).
    pub cycle_s: u64,
    /// Pause between cycles, seconds (minutes on the plant day).
    pub idle_s: u64,
}

/// What to start; see [`OpcUaSim::start`].
pub struct OpcUaSimOptions {
    /// 0 picks a free loopback port; a fixed port lets a test restart the
    /// server on the same endpoint.
    pub port: u16,
    /// The server's own PKI directory (`own/cert.der`,
    /// `private/private.pem`, `trusted/`, `rejected/`); the application
    /// certificate and key are created there if missing.
    pub pki_dir: PathBuf,
    /// Accept any client certificate, for tests that are not about client
    /// trust. Otherwise an unknown client certificate is stored in
    /// `rejected/` and the secure channel is refused until the
    /// certificate is put in `trusted/` (see [`trust_certificate`]).
    pub trust_client_certs: bool,
    pub allow_anonymous: bool,
    /// Username/password pairs accepted on every endpoint.
    pub users: Vec<(String, String)>,
    /// Users who log in with an X.509 user certificate: (name, the
    /// certificate's DER or PEM file).
    pub user_certificates: Vec<(String, PathBuf)>,
    /// Besides None/None, offer Basic256Sha256, Aes128_Sha256_RsaOaep and
    /// Aes256_Sha256_RsaPss, each with Sign and SignAndEncrypt.
    pub secure_endpoints: bool,
    pub machines: Vec<MachineSpec>,
    /// Follow a plant day on this clock instead of running the schedule
    /// from the moment the server starts.
    pub plant_day: Option<PlantDay>,
}

/// The node manager behind the simulator's namespaces: async-opcua's
/// in-memory one plus a tally of the monitored items on its nodes, which
/// the server keeps private.
struct SimNodes {
    namespaces: Vec<NamespaceMetadata>,
    /// Live monitored items on the simulator's nodes; a monitored item
    /// leaves when it is deleted, when its subscription is deleted (also
    /// by CloseSession with deleteSubscriptions) or when it expires.
    monitored: Mutex<HashSet<MonitoredItemHandle>>,
}

type SimNodeManager = InMemoryNodeManager<SimNodes>;

#[async_trait::async_trait]
impl InMemoryNodeManagerImpl for SimNodes {
    async fn init(&self, _address_space: &mut AddressSpace, _context: ServerContext) {}

    fn name(&self) -> &str {
        "zgsz-sim"
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        self.namespaces.clone()
    }

    async fn create_value_monitored_items(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        items: &mut [&mut &mut CreateMonitoredItem],
    ) {
        let values: Vec<DataValue> = {
            let space = address_space.read();
            items
                .iter()
                .map(|item| {
                    space.read(
                        context,
                        item.item_to_monitor(),
                        0.0,
                        TimestampsToReturn::Both,
                    )
                })
                .collect()
        };
        let mut monitored = self.monitored.lock().unwrap_or_else(|e| e.into_inner());
        for (value, item) in values.into_iter().zip(items.iter_mut()) {
            // A real server refuses to monitor a node that is not there;
            // async-opcua's default would accept it with a bad first value.
            if value.status() == StatusCode::BadNodeIdUnknown {
                item.set_status(StatusCode::BadNodeIdUnknown);
                continue;
            }
            if value.status() != StatusCode::BadAttributeIdInvalid {
                item.set_initial_value(value);
            }
            item.set_status(StatusCode::Good);
            monitored.insert(item.handle());
        }
    }

    async fn delete_monitored_items(&self, _context: &RequestContext, items: &[&MonitoredItemRef]) {
        let mut monitored = self.monitored.lock().unwrap_or_else(|e| e.into_inner());
        for item in items {
            monitored.remove(&item.handle());
        }
    }
}

/// Namespace indexes as this server assigned them.
#[derive(Debug, Clone, Copy)]
struct Ns {
    di: u16,
    machinery: u16,
    tool: u16,
    sim: u16,
}

/// A running simulated OPC UA server.
pub struct OpcUaSim {
    port: u16,
    pki_dir: PathBuf,
    /// The application certificate, read once: tests copy it into a
    /// client's `trusted/` directory.
    certificate_der: Vec<u8>,
    shared: Arc<Shared>,
    /// The server's run loop; it returns once every connection is closed
    /// and the listener is dropped.
    server: Option<tokio::task::JoinHandle<Result<(), String>>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// What the ticker and the test switches share.
struct Shared {
    handle: ServerHandle,
    nodes: Arc<SimNodeManager>,
    ns: Ns,
    machines: Vec<SimMachineTool>,
}

struct SimMachineTool {
    spec: MachineSpec,
    /// Phase index for the schedule, so machines do not run in step.
    index: u64,
    /// Set by [`OpcUaSim::hold`]: the ticker leaves this machine alone.
    held: AtomicBool,
}

impl OpcUaSim {
    /// Starts the server on 127.0.0.1. The listener is bound before this
    /// returns, so a client can connect at once (a connection made before
    /// the run loop reaches `accept` waits in the backlog).
    #[allow(
        clippy::too_many_lines,
        reason = "the simulator's server setup in start order (test and demo code); not split yet"
    )]
    pub async fn start(opts: OpcUaSimOptions) -> io::Result<OpcUaSim> {
        std::fs::create_dir_all(&opts.pki_dir)?;
        // Binding first, rather than letting the server bind its
        // configured port, gives port 0 without a find-then-bind race;
        // the endpoint descriptions still need the real port.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, opts.port)).await?;
        let port = listener.local_addr()?.port();
        let endpoint = endpoint_url(port);

        let mut token_ids = Vec::new();
        if opts.allow_anonymous {
            token_ids.push(ANONYMOUS_USER_TOKEN_ID.to_string());
        }
        let mut builder = ServerBuilder::new()
            .application_name("zgsz-agent simulated machine tools")
            .application_uri(APPLICATION_URI)
            .product_uri("urn:zgsz-agent:sim")
            .create_sample_keypair(true)
            .pki_dir(opts.pki_dir.clone())
            .host("127.0.0.1")
            .port(port)
            .discovery_urls(vec![endpoint.clone()])
            .trust_client_certs(opts.trust_client_certs)
            // Keeps the current session count for `session_count`.
            .diagnostics_enabled(true);
        for (k, (user, pass)) in opts.users.iter().enumerate() {
            let id = format!("user-{k}");
            builder = builder.add_user_token(&id, ServerUserToken::user_pass(user.as_str(), pass));
            token_ids.push(id);
        }
        for (k, (user, cert)) in opts.user_certificates.iter().enumerate() {
            let id = format!("x509-{k}");
            builder = builder.add_user_token(&id, ServerUserToken::x509(user.as_str(), cert));
            token_ids.push(id);
        }
        builder = builder.add_endpoint("none", ServerEndpoint::new_none("/", &token_ids));
        if opts.secure_endpoints {
            for &(policy, mode) in SECURE_ENDPOINTS {
                builder = builder.add_endpoint(
                    format!("{policy}-{mode}"),
                    ServerEndpoint::new("/", policy, mode, &token_ids),
                );
            }
        }
        let specs = opts.machines.clone();
        builder = builder.with_node_manager(InMemoryNodeManagerBuilder::new(
            move |context: ServerContext, space: &mut AddressSpace| {
                let idx = add_namespaces(
                    &context,
                    space,
                    &[DI_NS, MACHINERY_NS, MACHINE_TOOL_NS, SIM_NS],
                );
                let ns = Ns {
                    di: idx[0],
                    machinery: idx[1],
                    tool: idx[2],
                    sim: idx[3],
                };
                build_address_space(space, ns, &specs);
                SimNodes {
                    namespaces: [DI_NS, MACHINERY_NS, MACHINE_TOOL_NS, SIM_NS]
                        .iter()
                        .zip(idx)
                        .map(|(uri, index)| NamespaceMetadata {
                            namespace_uri: uri.to_string(),
                            namespace_index: index,
                            is_namespace_subset: Some(false),
                            ..Default::default()
                        })
                        .collect(),
                    monitored: Mutex::new(HashSet::new()),
                }
            },
        ));
        let (server, handle) = builder
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let certificate_der = handle
            .info()
            .server_certificate
            .as_ref()
            .and_then(|c| c.to_der().ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "no application certificate in {}",
                    opts.pki_dir.display()
                ))
            })?;
        let nodes = handle
            .node_managers()
            .get_of_type::<SimNodeManager>()
            .ok_or_else(|| io::Error::other("the simulator's node manager is missing"))?;
        let ns = Ns {
            di: namespace_index(&handle, DI_NS)?,
            machinery: namespace_index(&handle, MACHINERY_NS)?,
            tool: namespace_index(&handle, MACHINE_TOOL_NS)?,
            sim: namespace_index(&handle, SIM_NS)?,
        };
        let phase_base = super::DEMO_MACHINES.len() as u64;
        let shared = Arc::new(Shared {
            handle,
            nodes,
            ns,
            machines: opts
                .machines
                .into_iter()
                .enumerate()
                .map(|(k, spec)| SimMachineTool {
                    spec,
                    index: phase_base + k as u64,
                    held: AtomicBool::new(false),
                })
                .collect(),
        });

        let started = tokio::time::Instant::now();
        let day = opts.plant_day;
        shared.advance(day.as_ref(), 0.0);
        let server = tokio::spawn(server.run_with(listener));
        let ticker = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    shared.advance(day.as_ref(), started.elapsed().as_secs_f64());
                }
            })
        };
        Ok(OpcUaSim {
            port,
            pki_dir: opts.pki_dir,
            certificate_der,
            shared,
            server: Some(server),
            ticker: Some(ticker),
        })
    }

    /// `opc.tcp://127.0.0.1:<port>/`
    pub fn endpoint(&self) -> String {
        endpoint_url(self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's application certificate (DER). To trust it, put it in
    /// a client's PKI with [`trust_certificate`].
    pub fn server_certificate_der(&self) -> Vec<u8> {
        self.certificate_der.clone()
    }

    /// The server's PKI directory: a client certificate the server refused
    /// is in its `rejected/`.
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// Namespace index of `uri` on this server.
    pub fn namespace_index(&self, uri: &str) -> Option<u16> {
        self.shared.handle.get_namespace_index(uri)
    }

    /// Writes `value` to `Machines/<machine>/<path>` (e.g.
    /// `"Monitoring/Channel1/ChannelState"`) with a fresh SourceTimestamp
    /// and notifies subscriptions. The variant must match the node's
    /// DataType (i32 for the enumerations). Unless the machine is held, its
    /// schedule overwrites values it drives on the next tick.
    pub fn set(
        &self,
        machine: &str,
        path: &str,
        value: impl Into<Variant>,
    ) -> Result<(), StatusCode> {
        if !self.shared.machines.iter().any(|m| m.spec.name == machine) {
            return Err(StatusCode::BadNodeIdUnknown);
        }
        let id = NodeId::new(self.shared.ns.sim, format!("Machines/{machine}/{path}"));
        self.shared.nodes.set_value(
            self.shared.handle.subscriptions(),
            &id,
            None,
            DataValue::new_now(value.into()),
        )
    }

    /// Stops (or resumes) the schedule of one machine, so values a test
    /// [`set`](Self::set) stay.
    pub fn hold(&self, machine: &str, held: bool) {
        for m in self
            .shared
            .machines
            .iter()
            .filter(|m| m.spec.name == machine)
        {
            m.held.store(held, Ordering::SeqCst);
        }
    }

    /// Monitored items on the simulator's nodes, across all sessions and
    /// subscriptions. Items on the server's own nodes (e.g.
    /// `Server/ServerStatus`) are not counted.
    pub fn monitored_item_count(&self) -> usize {
        self.shared
            .nodes
            .inner()
            .monitored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Sessions the server holds. A session stays after its connection
    /// drops, until the client closes it or its timeout expires.
    pub fn session_count(&self) -> usize {
        let id = VariableId::Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSessionCount;
        match self
            .shared
            .handle
            .info()
            .diagnostics
            .get(id)
            .and_then(|v| v.value)
        {
            Some(Variant::UInt32(n)) => n as usize,
            _ => 0,
        }
    }

    /// Closes every connection and frees the port, so a new server can
    /// start on it at once. Sessions and subscriptions are gone with the
    /// server: a client must create new ones.
    pub async fn stop(mut self) {
        self.shared.handle.cancel();
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(STOP_TIMEOUT, &mut server)
                .await
                .is_err()
            {
                // Dropping the run loop drops the listener with it.
                server.abort();
                let _ = server.await;
            }
        }
    }
}

impl Drop for OpcUaSim {
    fn drop(&mut self) {
        self.shared.handle.cancel();
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
    }
}

/// Puts `der` into the `trusted/` directory of the PKI at `pki_dir` under
/// the file name async-opcua looks it up by (`<CN> [<thumbprint>].der`),
/// and removes it from `rejected/`, which is checked first. Works for a
/// client's PKI (trusting this server) and for the server's (trusting a
/// client); both read the directory on every handshake.
pub fn trust_certificate(pki_dir: &Path, der: &[u8]) -> io::Result<PathBuf> {
    let cert = X509::from_der(der)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let name = CertificateStore::cert_file_name(&cert);
    let trusted = pki_dir.join("trusted");
    std::fs::create_dir_all(&trusted)?;
    let path = trusted.join(&name);
    std::fs::write(&path, der)?;
    match std::fs::remove_file(pki_dir.join("rejected").join(&name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(path)
}

fn endpoint_url(port: u16) -> String {
    format!("opc.tcp://127.0.0.1:{port}/")
}

fn namespace_index(handle: &ServerHandle, uri: &str) -> io::Result<u16> {
    handle
        .get_namespace_index(uri)
        .ok_or_else(|| io::Error::other(format!("namespace {uri} is not registered")))
}

impl Shared {
    /// Moves every machine that is not held to where its schedule is at
    /// `t` seconds since start (or on the plant day) and writes the
    /// values that changed.
    fn advance(&self, day: Option<&PlantDay>, t: f64) {
        let mut changed = Vec::new();
        {
            let space = self.nodes.address_space().read();
            for m in &self.machines {
                if m.held.load(Ordering::SeqCst) {
                    continue;
                }
                let s = &m.spec;
                let moment = match day {
                    Some(day) => plant_day(
                        &s.name,
                        m.index,
                        s.kind,
                        s.cycle_s,
                        s.idle_s,
                        ModeOverride::Auto,
                        day.local_ms(),
                    ),
                    None => schedule(m.index, s.kind, s.cycle_s, s.idle_s, ModeOverride::Auto, t),
                };
                for (path, value) in machine_values(s, m.index, &moment) {
                    let id = NodeId::new(self.ns.sim, format!("Machines/{}/{path}", s.name));
                    let current = match space.find(&id) {
                        Some(NodeType::Variable(v)) => {
                            v.value(
                                TimestampsToReturn::Neither,
                                &NumericRange::None,
                                &DataEncoding::Binary,
                                0.0,
                            )
                            .value
                        }
                        _ => continue,
                    };
                    if current.as_ref() != Some(&value) {
                        changed.push((id, DataValue::new_now(value)));
                    }
                }
            }
        }
        if changed.is_empty() {
            return;
        }
        // The ids were just found, so this cannot fail on an unknown node.
        let _ = self.nodes.set_values(
            self.handle.subscriptions(),
            changed.iter().map(|(id, v)| (id, None, v.clone())),
        );
    }
}

/// The values a machine's schedule drives, by path below the machine.
fn machine_values(spec: &MachineSpec, i: u64, m: &Moment) -> Vec<(String, Variant)> {
    let manual = m.manual || spec.kind == MachineKind::Manual;
    let mut out = vec![(
        "Monitoring/MachineTool/OperationMode".to_string(),
        Variant::Int32(if manual { 0 } else { 1 }),
    )];
    for k in 1..=spec.channels.max(1) {
        let ch = format!("Monitoring/Channel{k}");
        out.push((
            format!("{ch}/ChannelState"),
            Variant::Int32(if m.running { 0 } else { 2 }),
        ));
        out.push((
            format!("{ch}/ChannelMode"),
            Variant::Int32(if manual { 2 } else { 0 }),
        ));
        // An operator's hand on the knob: never quite still.
        let feed = 95.0 + 10.0 * (m.t * 0.5 + i as f64 + f64::from(k)).sin();
        out.push((format!("{ch}/FeedOverride"), Variant::Double(feed)));
    }
    out.push((
        "Monitoring/Spindle/IsRotating".to_string(),
        Variant::Boolean(m.running),
    ));
    let state = if m.running { "Running" } else { "Ready" };
    out.push((
        "Production/ActiveProgram/State".to_string(),
        Variant::LocalizedText(Box::new(LocalizedText::new("en", state))),
    ));
    out.push((
        "Production/ActiveProgram/PartsProduced".to_string(),
        Variant::UInt32(m.cycles_done),
    ));
    out
}

/// Builds `Objects/Machines/<name>/...` for every machine.
#[allow(
    clippy::too_many_lines,
    reason = "declares the simulated machine's node tree node by node (test and demo code)"
)]
fn build_address_space(space: &mut AddressSpace, ns: Ns, machines: &[MachineSpec]) {
    let id = |path: &str| NodeId::new(ns.sim, path.to_string());
    let machines_id = id("Machines");
    ObjectBuilder::new(
        &machines_id,
        QualifiedName::new(ns.machinery, "Machines"),
        "Machines",
    )
    .is_folder()
    .organized_by(NodeId::objects_folder_id())
    .insert(space);
    for spec in machines {
        let base = format!("Machines/{}", spec.name);
        ObjectBuilder::new(
            &id(&base),
            QualifiedName::new(ns.sim, spec.name.as_str()),
            spec.name.as_str(),
        )
        .has_type_definition(ObjectTypeId::BaseObjectType)
        .organized_by(machines_id.clone())
        .insert(space);
        let mut b = Nodes {
            space,
            ns,
            base: &base,
        };
        b.object("", "Identification", ns.di);
        let (maker, model) = match spec.kind {
            MachineKind::Lathe => ("Simulated Machine Works", "SL-200 turning centre"),
            MachineKind::Mill => ("Simulated Machine Works", "5X-650 machining centre"),
            MachineKind::Manual => ("Simulated Machine Works", "manual bench"),
        };
        b.property(
            "Identification",
            "Manufacturer",
            ns.di,
            DataTypeId::String,
            maker.into(),
        );
        b.property(
            "Identification",
            "Model",
            ns.di,
            DataTypeId::String,
            model.into(),
        );
        b.property(
            "Identification",
            "SerialNumber",
            ns.di,
            DataTypeId::String,
            format!("SIM-{}", spec.name).into(),
        );
        b.object("", "Monitoring", ns.tool);
        b.object("Monitoring", "MachineTool", ns.tool);
        b.variable(
            "Monitoring/MachineTool",
            "OperationMode",
            ns.tool,
            DataTypeId::Int32,
            Variant::Int32(1),
        );
        for k in 1..=spec.channels.max(1) {
            let ch = format!("Channel{k}");
            b.object("Monitoring", &ch, ns.sim);
            let ch = format!("Monitoring/{ch}");
            b.variable(
                &ch,
                "ChannelState",
                ns.tool,
                DataTypeId::Int32,
                Variant::Int32(2),
            );
            b.variable(
                &ch,
                "ChannelMode",
                ns.tool,
                DataTypeId::Int32,
                Variant::Int32(0),
            );
            b.variable(
                &ch,
                "FeedOverride",
                ns.tool,
                DataTypeId::Double,
                Variant::Double(100.0),
            );
        }
        b.object("Monitoring", "Spindle", ns.sim);
        b.variable(
            "Monitoring/Spindle",
            "Override",
            ns.tool,
            DataTypeId::Double,
            Variant::Double(100.0),
        );
        b.variable(
            "Monitoring/Spindle",
            "IsRotating",
            ns.tool,
            DataTypeId::Boolean,
            Variant::Boolean(false),
        );
        b.object("", "Production", ns.tool);
        b.object("Production", "ActiveProgram", ns.tool);
        let program = "Production/ActiveProgram";
        b.variable(
            program,
            "Name",
            ns.tool,
            DataTypeId::String,
            program_name(spec.kind).into(),
        );
        b.variable(
            program,
            "State",
            ns.tool,
            DataTypeId::LocalizedText,
            Variant::LocalizedText(Box::new(LocalizedText::new("en", "Ready"))),
        );
        b.variable(
            program,
            "PartsProduced",
            ns.sim,
            DataTypeId::UInt32,
            Variant::UInt32(0),
        );
    }
}

/// Adds the nodes of one machine, by path below it.
struct Nodes<'a> {
    space: &'a mut AddressSpace,
    ns: Ns,
    base: &'a str,
}

impl Nodes<'_> {
    fn path(&self, parent: &str, name: &str) -> (NodeId, NodeId) {
        let parent = if parent.is_empty() {
            self.base.to_string()
        } else {
            format!("{}/{parent}", self.base)
        };
        let id = NodeId::new(self.ns.sim, format!("{parent}/{name}"));
        (NodeId::new(self.ns.sim, parent), id)
    }

    fn object(&mut self, parent: &str, name: &str, ns: u16) {
        let (parent, id) = self.path(parent, name);
        ObjectBuilder::new(&id, QualifiedName::new(ns, name), name)
            .has_type_definition(ObjectTypeId::BaseObjectType)
            .component_of(parent)
            .insert(self.space);
    }

    /// A data variable (HasComponent), as the companion specs make most
    /// of a machine's values.
    fn variable(
        &mut self,
        parent: &str,
        name: &str,
        ns: u16,
        data_type: DataTypeId,
        value: Variant,
    ) {
        self.add_variable(parent, name, ns, data_type, value, false);
    }

    /// A property (HasProperty), as the nameplate values are.
    fn property(
        &mut self,
        parent: &str,
        name: &str,
        ns: u16,
        data_type: DataTypeId,
        value: Variant,
    ) {
        self.add_variable(parent, name, ns, data_type, value, true);
    }

    fn add_variable(
        &mut self,
        parent: &str,
        name: &str,
        ns: u16,
        data_type: DataTypeId,
        value: Variant,
        property: bool,
    ) {
        let (parent, id) = self.path(parent, name);
        let builder =
            VariableBuilder::new(&id, QualifiedName::new(ns, name), name).data_type(data_type);
        let builder = if property {
            builder
                .has_type_definition(VariableTypeId::PropertyType)
                .property_of(parent)
        } else {
            builder
                .has_type_definition(VariableTypeId::BaseDataVariableType)
                .component_of(parent)
        };
        builder.insert(self.space);
        self.stamp(&id, value);
    }

    /// Every value carries a SourceTimestamp, the first one included.
    fn stamp(&mut self, id: &NodeId, value: Variant) {
        if let Some(NodeType::Variable(v)) = self.space.find_mut(id) {
            v.set_data_value(DataValue::new_now(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken, Session};
    use opcua::types::{
        AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask,
        MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, ReadValueId,
        ReferenceDescription, ReferenceTypeId,
    };
    use tokio::task::JoinHandle;

    /// Generous bound on connecting: key generation in a debug build is slow.
    const CONNECT: Duration = Duration::from_secs(30);

    fn options(dir: &Path) -> OpcUaSimOptions {
        OpcUaSimOptions {
            port: 0,
            pki_dir: dir.join("server"),
            trust_client_certs: true,
            allow_anonymous: true,
            users: vec![("operator".to_string(), "s3cret".to_string())],
            user_certificates: Vec::new(),
            secure_endpoints: false,
            machines: vec![
                MachineSpec {
                    name: "lathe-04".to_string(),
                    kind: MachineKind::Lathe,
                    channels: 1,
                    cycle_s: 45,
                    idle_s: 12,
                },
                MachineSpec {
                    name: "dmg-01".to_string(),
                    kind: MachineKind::Mill,
                    channels: 2,
                    cycle_s: 80,
                    idle_s: 15,
                },
            ],
            plant_day: None,
        }
    }

    /// Connects and waits until the session is active; on refusal, the
    /// status the client's event loop ended with.
    async fn connect(
        sim: &OpcUaSim,
        client_pki: &Path,
        identity: IdentityToken,
        policy: SecurityPolicy,
        mode: MessageSecurityMode,
    ) -> Result<(Arc<Session>, JoinHandle<StatusCode>), StatusCode> {
        let mut client = ClientBuilder::new()
            .application_name("zgsz-agent sim test client")
            .application_uri("urn:zgsz-agent:sim-test-client")
            .product_uri("urn:zgsz-agent:sim-test-client")
            .pki_dir(client_pki)
            .create_sample_keypair(policy != SecurityPolicy::None)
            .trust_server_certs(true)
            .session_retry_limit(0)
            .client()
            .unwrap();
        let attempt = async {
            let (session, event_loop) = client
                .connect_to_matching_endpoint(
                    (sim.endpoint().as_str(), policy.to_str(), mode),
                    identity,
                )
                .await
                .map_err(|e| e.status())?;
            let mut event_loop = event_loop.spawn();
            tokio::select! {
                _ = session.wait_for_connection() => Ok((session, event_loop)),
                ended = &mut event_loop => Err(ended.unwrap()),
            }
        };
        tokio::time::timeout(CONNECT, attempt).await.unwrap()
    }

    async fn anonymous(
        sim: &OpcUaSim,
        client_pki: &Path,
    ) -> (Arc<Session>, JoinHandle<StatusCode>) {
        connect(
            sim,
            client_pki,
            IdentityToken::Anonymous,
            SecurityPolicy::None,
            MessageSecurityMode::None,
        )
        .await
        .unwrap()
    }

    async fn child(session: &Session, parent: &NodeId, name: &str) -> ReferenceDescription {
        let results = session
            .browse(
                &[BrowseDescription {
                    node_id: parent.clone(),
                    browse_direction: BrowseDirection::Forward,
                    reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
                    include_subtypes: true,
                    node_class_mask: 0,
                    result_mask: BrowseResultMask::All as u32,
                }],
                0,
                None,
            )
            .await
            .unwrap();
        results[0]
            .references
            .iter()
            .flatten()
            .find(|r| r.browse_name.name.as_ref() == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not below {parent}"))
    }

    async fn read(session: &Session, id: &NodeId, attribute: AttributeId) -> DataValue {
        let mut values = session
            .read(
                &[ReadValueId {
                    node_id: id.clone(),
                    attribute_id: attribute as u32,
                    ..Default::default()
                }],
                TimestampsToReturn::Both,
                0.0,
            )
            .await
            .unwrap();
        values.remove(0)
    }

    fn sim_id(sim: &OpcUaSim, path: &str) -> NodeId {
        NodeId::new(sim.namespace_index(SIM_NS).unwrap(), path.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anonymous_client_browses_from_objects_to_the_operation_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sim = OpcUaSim::start(options(dir.path())).await.unwrap();
        let (session, _event_loop) = anonymous(&sim, &dir.path().join("client")).await;

        let machines = child(&session, &NodeId::objects_folder_id(), "Machines").await;
        assert_eq!(
            Some(machines.browse_name.namespace_index),
            sim.namespace_index(MACHINERY_NS)
        );
        let lathe = child(&session, &machines.node_id.node_id, "lathe-04").await;
        let monitoring = child(&session, &lathe.node_id.node_id, "Monitoring").await;
        assert_eq!(
            Some(monitoring.browse_name.namespace_index),
            sim.namespace_index(MACHINE_TOOL_NS)
        );
        let tool = child(&session, &monitoring.node_id.node_id, "MachineTool").await;
        let mode = child(&session, &tool.node_id.node_id, "OperationMode").await;
        let id = mode.node_id.node_id;
        assert_eq!(
            id,
            sim_id(
                &sim,
                "Machines/lathe-04/Monitoring/MachineTool/OperationMode"
            )
        );
        let ident = child(&session, &lathe.node_id.node_id, "Identification").await;
        assert_eq!(
            Some(ident.browse_name.namespace_index),
            sim.namespace_index(DI_NS)
        );

        let value = read(&session, &id, AttributeId::Value).await;
        assert_eq!(
            value.value,
            Some(Variant::Int32(1)),
            "a lathe runs in Automatic"
        );
        assert!(value.source_timestamp.is_some());
        let data_type = read(&session, &id, AttributeId::DataType).await;
        assert_eq!(
            data_type.value,
            Some(Variant::NodeId(Box::new(DataTypeId::Int32.into())))
        );
        assert_eq!(sim.session_count(), 1);

        session.disconnect().await.unwrap();
        assert_eq!(sim.session_count(), 0);
        sim.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_values_read_back_and_reach_subscriptions() {
        let dir = tempfile::tempdir().unwrap();
        let sim = OpcUaSim::start(options(dir.path())).await.unwrap();
        let (session, _event_loop) = anonymous(&sim, &dir.path().join("client")).await;
        let state = sim_id(&sim, "Machines/dmg-01/Monitoring/Channel2/ChannelState");

        sim.hold("dmg-01", true);
        sim.set("dmg-01", "Monitoring/Channel2/ChannelState", 1i32)
            .unwrap();
        let value = read(&session, &state, AttributeId::Value).await;
        assert_eq!(value.value, Some(Variant::Int32(1)));
        assert_eq!(
            sim.set("dmg-99", "Monitoring/Channel1/ChannelState", 1i32),
            Err(StatusCode::BadNodeIdUnknown)
        );
        assert_eq!(
            sim.set("dmg-01", "Monitoring/Channel9/ChannelState", 1i32),
            Err(StatusCode::BadNodeIdUnknown)
        );

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sub = session
            .create_subscription(
                Duration::from_millis(100),
                100,
                10,
                0,
                0,
                true,
                DataChangeCallback::new(move |dv, item| {
                    let _ = tx.send((item.item_to_monitor().node_id.clone(), dv));
                }),
            )
            .await
            .unwrap();
        let item = |id: NodeId| MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId {
                node_id: id,
                attribute_id: AttributeId::Value as u32,
                ..Default::default()
            },
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                sampling_interval: 100.0,
                queue_size: 10,
                discard_oldest: true,
                ..Default::default()
            },
        };
        let created = session
            .create_monitored_items(
                sub,
                TimestampsToReturn::Both,
                vec![
                    item(state.clone()),
                    item(sim_id(
                        &sim,
                        "Machines/dmg-01/Monitoring/Channel1/FeedOverride",
                    )),
                    item(sim_id(&sim, "Machines/dmg-01/Monitoring/Nowhere")),
                ],
            )
            .await
            .unwrap();
        assert_eq!(created[2].result.status_code, StatusCode::BadNodeIdUnknown);
        assert_eq!(sim.monitored_item_count(), 2);

        let mut wait_for = async |want: Variant| loop {
            let (id, dv) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if id == state && dv.value.as_ref() == Some(&want) {
                assert!(dv.source_timestamp.is_some());
                return;
            }
        };
        wait_for(Variant::Int32(1)).await;
        sim.set("dmg-01", "Monitoring/Channel2/ChannelState", 0i32)
            .unwrap();
        wait_for(Variant::Int32(0)).await;

        session.delete_subscription(sub).await.unwrap();
        assert_eq!(sim.monitored_item_count(), 0);
        session.disconnect().await.unwrap();
        sim.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn username_and_password_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let sim = OpcUaSim::start(OpcUaSimOptions {
            allow_anonymous: false,
            ..options(dir.path())
        })
        .await
        .unwrap();
        let client_pki = dir.path().join("client");
        let user = |pass: &str| IdentityToken::UserName("operator".to_string(), pass.into());
        let none = (SecurityPolicy::None, MessageSecurityMode::None);

        let (session, _event_loop) = connect(&sim, &client_pki, user("s3cret"), none.0, none.1)
            .await
            .unwrap();
        session.disconnect().await.unwrap();

        let refused = connect(&sim, &client_pki, user("wrong"), none.0, none.1).await;
        assert_eq!(
            refused.err(),
            Some(StatusCode::BadIdentityTokenRejected),
            "a wrong password"
        );
        let refused = connect(&sim, &client_pki, IdentityToken::Anonymous, none.0, none.1).await;
        assert!(refused.is_err(), "an anonymous login was accepted");
        sim.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_server_frees_its_port_for_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let client_pki = dir.path().join("client");
        let sim = OpcUaSim::start(options(dir.path())).await.unwrap();
        let port = sim.port();
        let certificate = sim.server_certificate_der();
        let (_session, event_loop) = anonymous(&sim, &client_pki).await;

        let t0 = std::time::Instant::now();
        sim.stop().await;
        assert!(t0.elapsed() < STOP_TIMEOUT, "stop waited for its timeout");
        // The client sees the connection go.
        let ended = tokio::time::timeout(Duration::from_secs(10), event_loop)
            .await
            .unwrap()
            .unwrap();
        assert!(ended.is_bad(), "{ended}");

        let sim = OpcUaSim::start(OpcUaSimOptions {
            port,
            ..options(dir.path())
        })
        .await
        .unwrap();
        assert_eq!(sim.endpoint(), format!("opc.tcp://127.0.0.1:{port}/"));
        assert_eq!(
            sim.server_certificate_der(),
            certificate,
            "the PKI is reused"
        );
        let (session, _event_loop) = anonymous(&sim, &client_pki).await;
        let mode = sim_id(
            &sim,
            "Machines/lathe-04/Monitoring/MachineTool/OperationMode",
        );
        assert_eq!(
            read(&session, &mode, AttributeId::Value).await.value,
            Some(Variant::Int32(1))
        );
        session.disconnect().await.unwrap();
        sim.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secure_endpoints_refuse_an_untrusted_client_until_it_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let client_pki = dir.path().join("client");
        let sim = OpcUaSim::start(OpcUaSimOptions {
            secure_endpoints: true,
            trust_client_certs: false,
            ..options(dir.path())
        })
        .await
        .unwrap();
        let (policy, mode) = SECURE_ENDPOINTS[1];
        let refused = connect(&sim, &client_pki, IdentityToken::Anonymous, policy, mode).await;
        assert_eq!(
            refused.err(),
            Some(StatusCode::BadCertificateUntrusted),
            "an unknown client certificate"
        );
        let rejected = std::fs::read_dir(sim.pki_dir().join("rejected"))
            .unwrap()
            .count();
        assert_eq!(rejected, 1);

        let client_der = std::fs::read(client_pki.join("own/cert.der")).unwrap();
        trust_certificate(sim.pki_dir(), &client_der).unwrap();
        let mode_id = sim_id(
            &sim,
            "Machines/lathe-04/Monitoring/MachineTool/OperationMode",
        );
        for &(policy, mode) in SECURE_ENDPOINTS {
            let user = IdentityToken::UserName("operator".to_string(), "s3cret".into());
            let (session, _event_loop) = connect(&sim, &client_pki, user, policy, mode)
                .await
                .unwrap_or_else(|e| panic!("{policy} {mode}: {e}"));
            let value = read(&session, &mode_id, AttributeId::Value).await;
            assert_eq!(value.value, Some(Variant::Int32(1)), "{policy} {mode}");
            session.disconnect().await.unwrap();
        }
        sim.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shop_floor_serves_its_opcua_machines() {
        let dir = tempfile::tempdir().unwrap();
        let floor = super::super::ShopFloor::start().await.unwrap();
        let sim = floor.opcua().unwrap();
        assert_eq!(floor.opcua_endpoint(), Some(sim.endpoint()));
        let (session, _event_loop) = anonymous(sim, dir.path()).await;
        for &(name, _, channels, _, _) in super::super::DEMO_OPCUA_MACHINES {
            for k in 1..=channels {
                let id = sim_id(
                    sim,
                    &format!("Machines/{name}/Monitoring/Channel{k}/ChannelState"),
                );
                let value = read(&session, &id, AttributeId::Value).await;
                assert!(
                    matches!(value.value, Some(Variant::Int32(0 | 2))),
                    "{name} channel {k}: {value:?}"
                );
            }
        }
        session.disconnect().await.unwrap();
    }
}
