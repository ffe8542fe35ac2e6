//! A simulated shop floor: Modbus TCP servers on loopback that behave like
//! CNC lathes, mills and a manual station, an S7 line PLC ([`s7`]), and an
//! OPC UA server with machine tools in the OPC 40501 shape ([`opcua`]). `demo` runs the agent
//! against it, and the tests use its fault switches (exceptions, silence,
//! delays).
//!
//! # Register map of a simulated machine (unit 1, 0-based addresses)
//!
//! | area / address     | type            | meaning                                      |
//! |--------------------|-----------------|----------------------------------------------|
//! | holding 0          | u16             | ControllerMode: 0 MANUAL, 1 AUTOMATIC, 2 SEMI_AUTOMATIC, 3 EDIT |
//! | holding 1          | u16             | Execution: 0 READY, 1 ACTIVE, 2 INTERRUPTED, 3 STOPPED |
//! | holding 2..=3      | f32 ABCD        | spindle speed, rpm                           |
//! | holding 4..=5      | u32 CDAB        | part counter                                 |
//! | holding 6          | u16             | alarm code (0 = none)                        |
//! | holding 10..=17    | string(16)      | program name                                 |
//! | input 0            | i16, ×0.1       | spindle motor temperature, °C                |
//! | coil 0             | bool            | cycle running                                |
//!
//! The manual station has the same map with mode fixed at MANUAL, a
//! spindle only while an operator works, and no program.

use std::collections::HashMap;
use std::future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};

use crate::clock::Clock;
use crate::config::SerialConfig;

#[cfg(feature = "opcua-sim")]
pub mod opcua;
pub mod rtu;
pub mod s7;

/// The four data areas of one unit.
#[derive(Debug, Clone)]
pub struct Bank {
    pub coils: Vec<bool>,
    pub discrete: Vec<bool>,
    pub input: Vec<u16>,
    pub holding: Vec<u16>,
}

impl Bank {
    pub fn new(size: usize) -> Bank {
        Bank {
            coils: vec![false; size],
            discrete: vec![false; size],
            input: vec![0; size],
            holding: vec![0; size],
        }
    }

    pub fn set_f32(&mut self, addr: usize, v: f32) {
        let b = v.to_be_bytes();
        self.holding[addr] = u16::from_be_bytes([b[0], b[1]]);
        self.holding[addr + 1] = u16::from_be_bytes([b[2], b[3]]);
    }

    /// Stores a u32 word-swapped (CDAB), as many PLCs do.
    pub fn set_u32_cdab(&mut self, addr: usize, v: u32) {
        self.holding[addr] = (v & 0xFFFF) as u16;
        self.holding[addr + 1] = (v >> 16) as u16;
    }

    pub fn set_string(&mut self, addr: usize, len: usize, s: &str) {
        let mut bytes = s.as_bytes().to_vec();
        bytes.resize(len, 0);
        for (i, pair) in bytes.chunks(2).enumerate() {
            self.holding[addr + i] = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        }
    }
}

/// Fault switches for a simulated device, flipped by tests at runtime.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer every request with this exception code.
    pub exception: Mutex<Option<u8>>,
    /// Registers/bits at or above this address are unmapped:
    /// reads touching them get IllegalDataAddress.
    pub mapped_below: Mutex<Option<u16>>,
    /// Never answer (the request is swallowed).
    pub silent: AtomicBool,
    /// Delay before answering, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Answer every request to this unit with this exception code.
    pub unit_exception: Mutex<HashMap<u8, u8>>,
}

/// Request counters, so tests can assert what went over the wire.
#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

/// One simulated Modbus TCP server (any number of units behind one port).
pub struct SimDevice {
    pub addr: SocketAddr,
    pub units: Arc<HashMap<u8, Arc<Mutex<Bank>>>>,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl SimDevice {
    /// Starts a server on 127.0.0.1 with an ephemeral port.
    pub async fn start(units: HashMap<u8, Arc<Mutex<Bank>>>) -> std::io::Result<SimDevice> {
        Self::start_on(([127, 0, 0, 1], 0).into(), units).await
    }

    /// Starts a server on a given address (tests restart a device on its old port).
    pub async fn start_on(
        addr: SocketAddr,
        units: HashMap<u8, Arc<Mutex<Bank>>>,
    ) -> std::io::Result<SimDevice> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (service, units, faults, counters) = SimService::new(units, false);
        let server = Server::new(listener);
        let task = tokio::spawn(async move {
            let on_connected = |stream, socket_addr| {
                let service = service.clone();
                async move {
                    accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone())))
                }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
        Ok(SimDevice {
            addr,
            units,
            faults,
            counters,
            task,
        })
    }

    /// Starts a serial device server on 127.0.0.1 that speaks raw RTU
    /// frames over TCP (tokio-modbus's RTU-over-TCP server). As on a real
    /// bus, units not in `units` never answer.
    pub async fn start_rtu_over_tcp(
        units: HashMap<u8, Arc<Mutex<Bank>>>,
    ) -> std::io::Result<SimDevice> {
        use tokio_modbus::server::rtu_over_tcp::{accept_tcp_connection, Server};
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (service, units, faults, counters) = SimService::new(units, true);
        let server = Server::new(listener);
        let task = tokio::spawn(async move {
            let on_connected = |stream, socket_addr| {
                let service = service.clone();
                async move {
                    accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone())))
                }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
        Ok(SimDevice {
            addr,
            units,
            faults,
            counters,
            task,
        })
    }

    /// The bank of unit `id`.
    pub fn bank(&self, id: u8) -> Arc<Mutex<Bank>> {
        self.units
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::new(Mutex::new(Bank::new(0))))
    }

    /// Stops listening and drops every connection.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A simulated RS-485 bus: tokio-modbus's RTU server on a serial port (a
/// pty in the tests), answering for every unit in `units`; any other unit
/// id stays silent, as on a real bus.
pub struct SimSerial {
    pub units: Arc<HashMap<u8, Arc<Mutex<Bank>>>>,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl SimSerial {
    pub fn start(
        path: &str,
        line: &SerialConfig,
        units: HashMap<u8, Arc<Mutex<Bank>>>,
    ) -> std::io::Result<SimSerial> {
        let port = crate::source::modbus::rtu::open_serial(path, line)?;
        let (service, units, faults, counters) = SimService::new(units, true);
        let server = tokio_modbus::server::rtu::Server::new(port);
        let task = tokio::spawn(async move {
            let _ = server.serve_forever(service).await;
        });
        Ok(SimSerial {
            units,
            faults,
            counters,
            task,
        })
    }
}

impl Drop for SimSerial {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type SimParts = (
    Arc<SimService>,
    Arc<HashMap<u8, Arc<Mutex<Bank>>>>,
    Arc<Faults>,
    Arc<Counters>,
);

struct SimService {
    units: Arc<HashMap<u8, Arc<Mutex<Bank>>>>,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
    /// On an RTU bus an absent unit is silent; a TCP gateway answers for it
    /// with exception 0x0B instead.
    rtu: bool,
}

impl SimService {
    fn new(units: HashMap<u8, Arc<Mutex<Bank>>>, rtu: bool) -> SimParts {
        let units = Arc::new(units);
        let faults = Arc::new(Faults::default());
        let counters = Arc::new(Counters::default());
        let service = Arc::new(SimService {
            units: units.clone(),
            faults: faults.clone(),
            counters: counters.clone(),
            rtu,
        });
        (service, units, faults, counters)
    }
}

fn slice<T: Clone>(
    data: &[T],
    addr: u16,
    cnt: u16,
    mapped_below: Option<u16>,
) -> Result<Vec<T>, ExceptionCode> {
    let (start, end) = (usize::from(addr), usize::from(addr) + usize::from(cnt));
    if cnt == 0 || end > data.len() || mapped_below.is_some_and(|m| end > usize::from(m)) {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(data[start..end].to_vec())
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::pin::Pin<
        Box<dyn future::Future<Output = Result<Self::Response, Self::Exception>> + Send>,
    >;

    fn call(&self, req: Self::Request) -> Self::Future {
        let units = self.units.clone();
        let faults = self.faults.clone();
        let counters = self.counters.clone();
        let rtu = self.rtu;
        Box::pin(async move {
            let is_read = matches!(
                req.request,
                Request::ReadCoils(..)
                    | Request::ReadDiscreteInputs(..)
                    | Request::ReadInputRegisters(..)
                    | Request::ReadHoldingRegisters(..)
            );
            if is_read {
                counters.reads.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.writes.fetch_add(1, Ordering::Relaxed);
            }
            if faults.silent.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let delay = faults.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let Some(bank) = units.get(&req.slave) else {
                if rtu {
                    return Ok(None);
                }
                return Err(ExceptionCode::GatewayTargetDevice);
            };
            if let Some(code) = *faults.exception.lock().unwrap_or_else(|e| e.into_inner()) {
                return Err(ExceptionCode::new(code));
            }
            let unit_exception = faults
                .unit_exception
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&req.slave)
                .copied();
            if let Some(code) = unit_exception {
                return Err(ExceptionCode::new(code));
            }
            let mapped = *faults
                .mapped_below
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let bank = bank.lock().unwrap_or_else(|e| e.into_inner());
            let resp = match req.request {
                Request::ReadCoils(a, n) => Response::ReadCoils(slice(&bank.coils, a, n, mapped)?),
                Request::ReadDiscreteInputs(a, n) => {
                    Response::ReadDiscreteInputs(slice(&bank.discrete, a, n, mapped)?)
                }
                Request::ReadInputRegisters(a, n) => {
                    Response::ReadInputRegisters(slice(&bank.input, a, n, mapped)?)
                }
                Request::ReadHoldingRegisters(a, n) => {
                    Response::ReadHoldingRegisters(slice(&bank.holding, a, n, mapped)?)
                }
                // The agent never writes; the simulator refuses to pretend.
                _ => return Err(ExceptionCode::IllegalFunction),
            };
            Ok(Some(resp))
        })
    }
}

// ---------------------------------------------------------------------------
// The shop floor.

/// What a simulated machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineKind {
    Lathe,
    Mill,
    Manual,
}

/// Operator override of a machine's controller mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeOverride {
    /// Follow the machine's own schedule.
    Auto,
    /// Forced to MANUAL (an operator jogging the axes).
    Manual,
}

/// The machines of the demo plant: (device id, kind, cycle seconds, idle seconds).
pub const DEMO_MACHINES: &[(&str, MachineKind, u64, u64)] = &[
    ("lathe-01", MachineKind::Lathe, 40, 8),
    ("lathe-02", MachineKind::Lathe, 55, 15),
    ("mill-01", MachineKind::Mill, 90, 20),
    ("mill-02", MachineKind::Mill, 70, 30),
    ("mill-03", MachineKind::Mill, 120, 10),
    ("lathe-03", MachineKind::Lathe, 35, 25),
    ("bench-01", MachineKind::Manual, 60, 60),
];

/// The S7 line PLCs of the demo plant: (device id, cycle seconds, idle
/// seconds). Each is a simulated S7-1200 ([`s7`]) whose DB 10 follows the
/// same schedule as the machines; see [`s7::write_line`] for its map.
pub const DEMO_S7_LINES: &[(&str, u64, u64)] = &[("press-line", 30, 10)];

/// The OPC UA machines of the demo plant, all on one server: (machine
/// name, kind, CNC channels, cycle seconds, idle seconds).
pub const DEMO_OPCUA_MACHINES: &[(&str, MachineKind, u8, u64, u64)] = &[
    ("dmg-01", MachineKind::Mill, 2, 80, 15),
    ("lathe-04", MachineKind::Lathe, 1, 45, 12),
];

pub struct SimMachine {
    pub id: String,
    pub kind: MachineKind,
    pub device: SimDevice,
    pub mode: Arc<Mutex<ModeOverride>>,
    cycle_s: u64,
    idle_s: u64,
}

/// A simulated S7 line PLC of the plant.
pub struct SimLine {
    pub id: String,
    pub plc: s7::SimS7,
    pub mode: Arc<Mutex<ModeOverride>>,
    cycle_s: u64,
    idle_s: u64,
}

/// The simulated plant and the task that moves it along.
pub struct ShopFloor {
    pub machines: Vec<SimMachine>,
    /// The S7 line PLCs ([`DEMO_S7_LINES`]); empty on floors started with
    /// [`ShopFloor::start_with`].
    pub lines: Vec<SimLine>,
    /// The OPC UA server of the [`DEMO_OPCUA_MACHINES`]; `None` on floors
    /// started with [`ShopFloor::start_with`].
    #[cfg(feature = "opcua-sim")]
    opcua: Option<opcua::OpcUaSim>,
    /// Holds the OPC UA server's PKI directory (its certificate and key)
    /// for as long as the floor runs.
    #[cfg(feature = "opcua-sim")]
    _pki: Option<tempfile::TempDir>,
    ticker: tokio::task::JoinHandle<()>,
}

impl ShopFloor {
    /// Starts every demo machine: each Modbus machine on its own loopback
    /// port, the OPC UA machines on one OPC UA server.
    pub async fn start() -> std::io::Result<ShopFloor> {
        #[allow(unused_mut)]
        let mut floor = Self::start_inner(DEMO_MACHINES, DEMO_S7_LINES, None).await?;
        #[cfg(feature = "opcua-sim")]
        floor.start_opcua(None).await?;
        Ok(floor)
    }

    /// Starts the given Modbus machines only: (device id, kind, cycle
    /// seconds, idle seconds).
    pub async fn start_with(list: &[(&str, MachineKind, u64, u64)]) -> std::io::Result<ShopFloor> {
        Self::start_inner(list, &[], None).await
    }

    /// Starts the given Modbus machines and S7 line PLCs: (device id,
    /// cycle seconds, idle seconds).
    pub async fn start_with_lines(
        list: &[(&str, MachineKind, u64, u64)],
        lines: &[(&str, u64, u64)],
    ) -> std::io::Result<ShopFloor> {
        Self::start_inner(list, lines, None).await
    }

    /// Starts the demo machines on a plant day that follows `clock` (a
    /// time-compressed clock for `demo --speed`): shifts from about 07:30 to
    /// 22:30 in `offset`, cycles in minutes instead of seconds, a manual
    /// set-up every morning on lathe-02 and every noon on dmg-01, a daily
    /// stop of mill-02's controller, mill-01 down every fourth day and
    /// lathe-03 run by hand every third day, so the daily figures move.
    pub async fn start_plant_day(
        clock: Arc<dyn Clock>,
        offset: time::UtcOffset,
    ) -> std::io::Result<ShopFloor> {
        let day = PlantDay { clock, offset };
        #[allow(unused_mut)]
        let mut floor = Self::start_inner(DEMO_MACHINES, DEMO_S7_LINES, Some(day.clone())).await?;
        #[cfg(feature = "opcua-sim")]
        floor.start_opcua(Some(day)).await?;
        Ok(floor)
    }

    /// Starts the given Modbus machines on a plant day that follows
    /// `clock` (see [`ShopFloor::start_plant_day`]; the same ids behave
    /// the same way on every floor).
    pub async fn start_plant_day_with(
        list: &[(&str, MachineKind, u64, u64)],
        clock: Arc<dyn Clock>,
        offset: time::UtcOffset,
    ) -> std::io::Result<ShopFloor> {
        Self::start_inner(list, &[], Some(PlantDay { clock, offset })).await
    }

    #[cfg(feature = "opcua-sim")]
    async fn start_opcua(&mut self, day: Option<PlantDay>) -> std::io::Result<()> {
        let pki = tempfile::Builder::new().prefix("zgsz-sim-pki-").tempdir()?;
        let machines = DEMO_OPCUA_MACHINES
            .iter()
            .map(
                |&(name, kind, channels, cycle_s, idle_s)| opcua::MachineSpec {
                    name: name.to_string(),
                    kind,
                    channels,
                    cycle_s,
                    idle_s,
                },
            )
            .collect();
        let sim = opcua::OpcUaSim::start(opcua::OpcUaSimOptions {
            port: 0,
            pki_dir: pki.path().to_path_buf(),
            trust_client_certs: true,
            allow_anonymous: true,
            users: vec![("operator".to_string(), "operator".to_string())],
            user_certificates: Vec::new(),
            secure_endpoints: true,
            machines,
            plant_day: day,
        })
        .await?;
        self.opcua = Some(sim);
        self._pki = Some(pki);
        Ok(())
    }

    async fn start_inner(
        list: &[(&str, MachineKind, u64, u64)],
        line_list: &[(&str, u64, u64)],
        day: Option<PlantDay>,
    ) -> std::io::Result<ShopFloor> {
        let mut lines = Vec::new();
        for &(id, cycle_s, idle_s) in line_list {
            lines.push(SimLine {
                id: id.to_string(),
                plc: s7::SimS7::start(s7::line_memory(), 240).await?,
                mode: Arc::new(Mutex::new(ModeOverride::Auto)),
                cycle_s,
                idle_s,
            });
        }
        let line_snapshot: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    (list.len() + i) as u64,
                    l.id.clone(),
                    l.cycle_s,
                    l.idle_s,
                    l.plc.memory.clone(),
                    l.mode.clone(),
                    l.plc.faults.clone(),
                )
            })
            .collect();
        let mut machines = Vec::new();
        for &(id, kind, cycle_s, idle_s) in list {
            let bank = Arc::new(Mutex::new(Bank::new(64)));
            let device = SimDevice::start(HashMap::from([(1u8, bank)])).await?;
            machines.push(SimMachine {
                id: id.to_string(),
                kind,
                device,
                mode: Arc::new(Mutex::new(ModeOverride::Auto)),
                cycle_s,
                idle_s,
            });
        }
        let snapshot: Vec<_> = machines
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    i as u64,
                    m.id.clone(),
                    m.kind,
                    m.cycle_s,
                    m.idle_s,
                    m.device.bank(1),
                    m.mode.clone(),
                    m.device.faults.clone(),
                )
            })
            .collect();
        let started = tokio::time::Instant::now();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64();
                for (i, id, kind, cycle_s, idle_s, bank, mode, faults) in &snapshot {
                    let forced = *mode.lock().unwrap_or_else(|e| e.into_inner());
                    let moment = match &day {
                        Some(day) => {
                            plant_day(id, *i, *kind, *cycle_s, *idle_s, forced, day.local_ms())
                        }
                        None => schedule(*i, *kind, *cycle_s, *idle_s, forced, t),
                    };
                    write_bank(
                        &mut bank.lock().unwrap_or_else(|e| e.into_inner()),
                        *i,
                        *kind,
                        &moment,
                    );
                    if day.is_some() {
                        faults.silent.store(moment.down, Ordering::Relaxed);
                    }
                }
                for (i, id, cycle_s, idle_s, memory, mode, faults) in &line_snapshot {
                    let forced = *mode.lock().unwrap_or_else(|e| e.into_inner());
                    let kind = MachineKind::Mill;
                    let moment = match &day {
                        Some(day) => {
                            plant_day(id, *i, kind, *cycle_s, *idle_s, forced, day.local_ms())
                        }
                        None => schedule(*i, kind, *cycle_s, *idle_s, forced, t),
                    };
                    s7::write_line(
                        &mut memory.lock().unwrap_or_else(|e| e.into_inner()),
                        *i,
                        &moment,
                    );
                    if day.is_some() {
                        faults.silent.store(moment.down, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(ShopFloor {
            machines,
            lines,
            #[cfg(feature = "opcua-sim")]
            opcua: None,
            #[cfg(feature = "opcua-sim")]
            _pki: None,
            ticker,
        })
    }

    /// Where each machine listens, by device id.
    pub fn addresses(&self) -> HashMap<String, SocketAddr> {
        self.machines
            .iter()
            .map(|m| (m.id.clone(), m.device.addr))
            .chain(self.lines.iter().map(|l| (l.id.clone(), l.plc.addr)))
            .collect()
    }

    /// The OPC UA server's endpoint URL, when the floor has one.
    pub fn opcua_endpoint(&self) -> Option<String> {
        #[cfg(feature = "opcua-sim")]
        return self.opcua.as_ref().map(|s| s.endpoint());
        #[cfg(not(feature = "opcua-sim"))]
        None
    }

    /// The OPC UA server, for its certificate and its test switches.
    #[cfg(feature = "opcua-sim")]
    pub fn opcua(&self) -> Option<&opcua::OpcUaSim> {
        self.opcua.as_ref()
    }

    pub fn machine(&self, id: &str) -> Option<&SimMachine> {
        self.machines.iter().find(|m| m.id == id)
    }

    /// Forces a machine or line into MANUAL (or back to its schedule).
    pub fn set_mode(&self, id: &str, mode: ModeOverride) {
        if let Some(m) = self.machine(id) {
            *m.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        }
        if let Some(l) = self.lines.iter().find(|l| l.id == id) {
            *l.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        }
    }
}

impl Drop for ShopFloor {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Where a machine is in its schedule at one moment. Computed once per
/// tick and written out by each kind of simulated controller (the Modbus
/// bank here, the OPC UA address space in [`opcua`]), so both follow the
/// same plant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moment {
    /// A cycle (or, on a manual station, an operator's job) is under way.
    pub running: bool,
    /// The controller is in manual mode.
    pub manual: bool,
    /// Cycles finished so far: drives the part counters.
    pub cycles_done: u32,
    /// Schedule time (seconds; minutes on the plant day): drives the slow
    /// wobble of speeds, overrides and temperatures.
    pub t: f64,
    /// The controller is switched off and answers nothing.
    pub down: bool,
}

/// Where one machine is at time `t` seconds: idle for `idle_s`, then a
/// cycle of `cycle_s`, repeating; phase-shifted by its index `i`.
pub(crate) fn schedule(
    i: u64,
    kind: MachineKind,
    cycle_s: u64,
    idle_s: u64,
    forced: ModeOverride,
    t: f64,
) -> Moment {
    let period = (cycle_s + idle_s) as f64;
    let shifted = t + (i * 13) as f64;
    let phase = shifted % period;
    Moment {
        running: phase >= idle_s as f64,
        manual: kind == MachineKind::Manual || forced == ModeOverride::Manual,
        cycles_done: (shifted / period).floor() as u32,
        t,
        down: false,
    }
}

/// The clock a plant day follows and the plant's offset from UTC.
#[derive(Clone)]
pub struct PlantDay {
    pub clock: Arc<dyn Clock>,
    pub offset: time::UtcOffset,
}

impl PlantDay {
    /// Local time as ms since the epoch shifted by the plant's UTC offset.
    pub(crate) fn local_ms(&self) -> i64 {
        self.clock.now_ms() + i64::from(self.offset.whole_seconds()) * 1000
    }
}

/// Where machine `id` (index `i`) is on the plant day at local time
/// `local_ms` (ms since the epoch, shifted by the plant's UTC offset).
pub(crate) fn plant_day(
    id: &str,
    i: u64,
    kind: MachineKind,
    cycle_s: u64,
    idle_s: u64,
    forced: ModeOverride,
    local_ms: i64,
) -> Moment {
    const H: f64 = 3_600_000.0;
    let day = local_ms.div_euclid(86_400_000);
    let hour = local_ms.rem_euclid(86_400_000) as f64 / H;
    let down = match id {
        "mill-02" => (13.0..15.0).contains(&hour),
        "mill-01" => day % 4 == 1,
        _ => false,
    };
    let in_shift = hour >= 7.5 + 0.1 * i as f64 && hour < 22.5 - 0.2 * i as f64;
    // Cycles and pauses last minutes instead of seconds.
    let t = (local_ms as f64 / 1000.0) / 60.0;
    let period = (cycle_s + idle_s) as f64;
    let shifted = t + (i * 13) as f64;
    let cycles_done = (shifted / period).floor() as u32;
    let running = in_shift && shifted % period >= idle_s as f64;
    let manual = kind == MachineKind::Manual
        || forced == ModeOverride::Manual
        || (id == "lathe-02" && (8.0..10.0).contains(&hour))
        || (id == "lathe-03" && day % 3 == 0)
        || (id == "dmg-01" && (12.0..13.0).contains(&hour));
    Moment {
        running,
        manual,
        cycles_done,
        t,
        down,
    }
}

/// The program a machine of this kind runs; a manual station runs none.
pub(crate) fn program_name(kind: MachineKind) -> &'static str {
    match kind {
        MachineKind::Lathe => "O1001 SHAFT",
        MachineKind::Mill => "O2040 HOUSING",
        MachineKind::Manual => "",
    }
}

fn write_bank(bank: &mut Bank, i: u64, kind: MachineKind, m: &Moment) {
    let Moment {
        running,
        manual,
        cycles_done,
        t,
        ..
    } = *m;
    let mode = if manual { 0 } else { 1 };
    let execution = if running { 1 } else { 0 };
    let base_rpm = match kind {
        MachineKind::Lathe => 1800.0,
        MachineKind::Mill => 6000.0,
        MachineKind::Manual => 450.0,
    };
    let rpm = if running {
        base_rpm + 50.0 * ((t * 0.7 + i as f64).sin())
    } else {
        0.0
    };
    bank.holding[0] = mode;
    bank.holding[1] = execution;
    bank.set_f32(2, rpm as f32);
    bank.set_u32_cdab(4, 1000 * i as u32 + cycles_done);
    bank.holding[6] = 0;
    bank.set_string(10, 16, program_name(kind));
    let temp = 35.0 + if running { 12.0 } else { 0.0 } + (t * 0.05 + i as f64).sin() * 2.0;
    bank.input[0] = ((temp * 10.0) as i16) as u16;
    bank.coils[0] = running;
}
