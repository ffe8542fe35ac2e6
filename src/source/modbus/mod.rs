//! Modbus devices: the request logic shared by every transport, and the
//! Modbus TCP transport.
//!
//! A device's poll cycle is the same whatever carries it ([`Poller`]): walk
//! the coalesced plan, split a merged read the device refuses with
//! exception 2 or 3, decode, and give every tag a quality. The transport is
//! a [`Link`]: a TCP connection of the device's own ([`TcpLink`]), or a bus
//! shared by several units ([`rtu::BusLink`], serial RTU or RTU over TCP).
//!
//! Every request is wrapped in a timeout. After a timeout or a broken answer
//! the link makes sure a late reply can never be matched to the next
//! request: TCP drops the connection, a bus drains the line and restarts its
//! framing. A Modbus exception, by contrast, is a valid answer: the link
//! stays up and the affected tags get `exception:<code>`.

pub mod commission;
pub mod config;
pub mod decode;
pub mod plan;
pub mod rtu;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_modbus::client::Context;
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::{DeviceConfig, DeviceProtocol, ModbusConfig, TagConfig};
use crate::loglimit::LogLimiter;
use crate::reading::{BadReason, Quality, Reading, Value};
use decode::{decode_registers, scaled};
use plan::{Area, Block, Span};

/// The raw answer to one block read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Why a block read gave no data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// The unit answered with this Modbus exception code.
    #[error("Modbus exception {0}")]
    Exception(u8),
    /// No connection: refused, reset, port missing, or backing off.
    #[error("link down: {0}")]
    Disconnected(String),
    /// An answer arrived but was not a valid reply to our request (bad
    /// CRC, wrong unit or function, truncated frame).
    #[error("broken answer: {0}")]
    Decode(String),
}

impl Failure {
    fn reason(&self) -> BadReason {
        match self {
            Failure::Timeout => BadReason::Timeout,
            Failure::Exception(c) => BadReason::Exception(*c),
            Failure::Disconnected(_) => BadReason::Disconnected,
            Failure::Decode(_) => BadReason::Decode,
        }
    }
}

/// Why a link could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not finish within the device's timeout.
    #[error("connect timed out")]
    Timeout,
    /// Refused, reset or unreachable.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The serial port `port` would not open with its line settings.
    #[error("cannot open {port}: {source}")]
    Serial {
        port: String,
        source: std::io::Error,
    },
}

/// What carries requests to a unit.
pub trait Link: Send {
    /// Where the link goes (host:port or serial port), for messages.
    fn endpoint(&self) -> &str;
    /// Connects (or opens the port) unless already up. `Ok(true)` means a
    /// new connection was made just now.
    fn ensure(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, ConnectError>> + Send;
    /// One block read from `unit`. On any failure other than an exception,
    /// the link resets itself so that a late reply cannot answer the next
    /// request.
    fn read(
        &mut self,
        unit: u8,
        block: &Block,
        timeout: Duration,
    ) -> impl Future<Output = Result<Data, Failure>> + Send;
}

/// Sends one block read on a tokio-modbus context, as unit `unit`.
///
/// Goes through `Client::call` and matches the response here: the `Reader`
/// helpers assert on the answer's length, and a PLC that answers short
/// must cost a `decode` quality, not a panic. Only read function codes are
/// ever built here (the agent is read-only by design).
async fn read_on(ctx: &mut Context, unit: u8, block: &Block) -> Result<Data, Failure> {
    use tokio_modbus::client::Client;
    use tokio_modbus::{Request, Response};
    ctx.set_slave(Slave(unit));
    let (start, count) = (block.start, block.count);
    let request = match block.area {
        Area::Coil => Request::ReadCoils(start, count),
        Area::DiscreteInput => Request::ReadDiscreteInputs(start, count),
        Area::InputRegister => Request::ReadInputRegisters(start, count),
        Area::HoldingRegister => Request::ReadHoldingRegisters(start, count),
    };
    let answer = ctx.call(request).await.map(|r| {
        r.map(|response| match response {
            Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => Data::Bits(bits),
            Response::ReadInputRegisters(words) | Response::ReadHoldingRegisters(words) => {
                Data::Words(words)
            }
            // call() rejects a response to another function; an empty
            // answer decodes as "too short" for every tag.
            _ => Data::Words(Vec::new()),
        })
    });
    match answer {
        Ok(Ok(data)) => matches_request(data, count),
        Ok(Err(exc)) => Err(Failure::Exception(exception_code(exc))),
        Err(e) => Err(classify(e)),
    }
}

/// Checks an answer's size against the request, as a strict master does.
///
/// Registers must be exactly `count`; bits come packed in bytes, so exactly
/// `ceil(count / 8)` bytes, of which the padding is dropped. Anything else,
/// more as well as fewer, is a broken answer: a converter that mixes up two
/// answers of different sizes must never turn into invented values.
fn matches_request(data: Data, count: u16) -> Result<Data, Failure> {
    let count = usize::from(count);
    match data {
        Data::Words(words) if words.len() == count => Ok(Data::Words(words)),
        Data::Words(words) => Err(Failure::Decode(format!(
            "asked for {count} registers, the answer holds {}",
            words.len()
        ))),
        Data::Bits(mut bits) if bits.len() == count.div_ceil(8) * 8 => {
            bits.truncate(count);
            Ok(Data::Bits(bits))
        }
        Data::Bits(bits) => Err(Failure::Decode(format!(
            "asked for {count} bits ({} bytes), the answer holds {} bytes",
            count.div_ceil(8),
            bits.len() / 8
        ))),
    }
}

/// A frame that failed its CRC or could not be parsed surfaces from
/// tokio-modbus as an `InvalidData` transport error or a protocol error:
/// that is a broken answer (`decode`), not a broken link.
fn classify(e: tokio_modbus::Error) -> Failure {
    match e {
        tokio_modbus::Error::Protocol(p) => Failure::Decode(p.to_string()),
        tokio_modbus::Error::Transport(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Failure::Decode(io.to_string())
        }
        tokio_modbus::Error::Transport(io) => Failure::Disconnected(io.to_string()),
    }
}

fn exception_code(e: ExceptionCode) -> u8 {
    u8::from(e)
}

/// A Modbus TCP connection of one device.
pub struct TcpLink {
    /// `host:port`, resolved at every connect so DNS changes apply.
    address: String,
    conn: Option<Context>,
}

impl TcpLink {
    pub fn new(address: &str) -> TcpLink {
        TcpLink {
            address: address.to_string(),
            conn: None,
        }
    }
}

impl Link for TcpLink {
    fn endpoint(&self) -> &str {
        &self.address
    }

    async fn ensure(&mut self, limit: Duration) -> Result<bool, ConnectError> {
        if self.conn.is_some() {
            return Ok(false);
        }
        let addr = self.address.clone();
        let attempt = async move {
            let stream = TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tokio_modbus::client::tcp::attach(stream))
        };
        match timeout(limit, attempt).await {
            Ok(Ok(ctx)) => {
                self.conn = Some(ctx);
                Ok(true)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn read(&mut self, unit: u8, block: &Block, limit: Duration) -> Result<Data, Failure> {
        let Some(ctx) = self.conn.as_mut() else {
            return Err(Failure::Disconnected("not connected".into()));
        };
        let result = match timeout(limit, read_on(ctx, unit, block)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        if matches!(
            result,
            Err(Failure::Timeout | Failure::Decode(_) | Failure::Disconnected(_))
        ) {
            // A late reply on this socket could answer the next request.
            self.conn = None;
        }
        result
    }
}

/// The per-unit half of a device: its plan, retries, backoff and qualities.
/// Shared by every transport.
pub struct Poller {
    cfg: Arc<DeviceConfig>,
    spans: Vec<Span>,
    /// The current request plan; blocks the device refused get split.
    plan: Vec<Block>,
    /// Until then the unit is not asked at all (after its retries failed):
    /// its tags are reported `disconnected` at once, so a dead unit costs
    /// its timeout only once per backoff step.
    resume_at: Instant,
    backoff: Backoff,
    log: LogLimiter,
    clock: Arc<dyn Clock>,
    /// Requests sent in the last cycle, for logs and tests.
    last_requests: usize,
    /// The device's Modbus settings (unit id and tags), taken out of `cfg`.
    modbus: ModbusConfig,
}

impl Poller {
    /// A device of another protocol has no Modbus settings and so no tags:
    /// its poller reads nothing (`source::spawn_lane` never builds one).
    pub fn new(cfg: Arc<DeviceConfig>, clock: Arc<dyn Clock>) -> Poller {
        let modbus = cfg.modbus().cloned().unwrap_or_default();
        let spans: Vec<Span> = modbus
            .tags
            .iter()
            .map(|t| Span {
                area: t.area,
                address: t.address,
                len: t.span(),
            })
            .collect();
        let plan = plan::plan(&spans, modbus.max_gap, modbus.coalesce);
        tracing::info!(device = %cfg.id, tags = modbus.tags.len(), requests = plan.len(), "Poll plan built");
        Poller {
            spans,
            plan,
            resume_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            log: LogLimiter::new(Duration::from_secs(60)),
            clock,
            last_requests: 0,
            modbus,
            cfg,
        }
    }

    pub fn config(&self) -> &Arc<DeviceConfig> {
        &self.cfg
    }

    /// Requests per cycle under the current plan.
    pub fn plan_len(&self) -> usize {
        self.plan.len()
    }

    /// Requests actually sent in the last cycle (including retries).
    pub fn last_requests(&self) -> usize {
        self.last_requests
    }

    /// Reads one block, retrying after link failures. After the last
    /// attempt fails, the unit backs off (250 ms doubling to 30 s).
    async fn read_block<L: Link>(&mut self, link: &mut L, block: &Block) -> Result<Data, Failure> {
        if Instant::now() < self.resume_at {
            return Err(Failure::Disconnected("backing off".into()));
        }
        let mut last = Failure::Disconnected("not tried".into());
        for _ in 0..=self.cfg.retries {
            match link.ensure(self.cfg.timeout).await {
                Ok(fresh) => {
                    if fresh && self.backoff.failures() > 0 {
                        tracing::info!(device = %self.cfg.id, address = %link.endpoint(), "Device reconnected");
                    }
                    self.log.clear("connect");
                }
                Err(why) => {
                    self.warn(link, "connect", &format!("Connect failed: {why}"));
                    last = Failure::Disconnected(why.to_string());
                    continue;
                }
            }
            self.last_requests += 1;
            match link
                .read(self.modbus.unit_id, block, self.cfg.timeout)
                .await
            {
                Ok(d) => {
                    self.backoff.reset();
                    return Ok(d);
                }
                Err(f @ Failure::Exception(_)) => {
                    self.backoff.reset();
                    return Err(f);
                }
                Err(f) => {
                    let kind = match f {
                        Failure::Timeout => "timeout",
                        Failure::Decode(_) => "decode",
                        _ => "transport",
                    };
                    let msg = match &f {
                        Failure::Timeout => "Request timed out".to_string(),
                        other => format!("Request failed: {other}"),
                    };
                    self.warn(link, kind, &msg);
                    last = f;
                }
            }
        }
        self.resume_at = Instant::now() + self.backoff.next_delay();
        Err(last)
    }

    fn warn<L: Link>(&mut self, link: &L, kind: &str, msg: &str) {
        if let Some(suppressed) = self.log.check(kind) {
            tracing::warn!(device = %self.cfg.id, address = %link.endpoint(), unit = self.modbus.unit_id, suppressed, "{msg}");
        }
    }

    fn decode_tag(&self, tag: &TagConfig, block: &Block, data: &Data) -> Result<Value, BadReason> {
        let offset = usize::from(tag.address - block.start);
        let len = usize::from(tag.span());
        let v = match data {
            Data::Bits(bits) => match bits.get(offset) {
                Some(&b) => Value::Bool(b),
                None => return Err(BadReason::Decode),
            },
            Data::Words(words) => {
                let regs = words.get(offset..offset + len).ok_or(BadReason::Decode)?;
                decode_registers(regs, tag.ty, tag.order, tag.bit).map_err(|_| BadReason::Decode)?
            }
        };
        scaled(v, tag.scale, tag.offset).map_err(|_| BadReason::Decode)
    }

    fn push_block(
        &self,
        block: &Block,
        result: &Result<Data, Failure>,
        out: &mut [Option<Reading>],
    ) {
        let ts = self.clock.now_ms();
        for &i in &block.tags {
            let tag = &self.modbus.tags[i];
            let decoded = match result {
                Ok(data) => self.decode_tag(tag, block, data),
                Err(f) => Err(f.reason()),
            };
            let (value, quality) = match decoded {
                Ok(v) => (Some(v), Quality::Good),
                Err(r) => (None, Quality::Bad(r)),
            };
            out[i] = Some(Reading {
                device: self.cfg.id.clone(),
                tag: tag.name.clone(),
                value,
                quality,
                ts,
            });
        }
    }

    /// One poll cycle over `link`: a reading for every tag, good or bad,
    /// in config order.
    pub async fn poll<L: Link>(&mut self, link: &mut L) -> Vec<Reading> {
        self.last_requests = 0;
        // Indexed by tag, so readings come out in config order whatever
        // order the plan reads the areas in.
        let mut out: Vec<Option<Reading>> = vec![None; self.modbus.tags.len()];
        let mut i = 0;
        while i < self.plan.len() {
            let block = self.plan[i].clone();
            let result = self.read_block(link, &block).await;
            match result {
                // A merged read touched an address the device does not map:
                // fall back to one request per tag for this block, for good.
                Err(Failure::Exception(code))
                    if (code == 2 || code == 3) && block.tags.len() > 1 =>
                {
                    let parts = plan::split(&block, &self.spans);
                    tracing::info!(
                        device = %self.cfg.id, area = block.area.name(), start = block.start, count = block.count,
                        exception = code, requests = parts.len(),
                        "Device refused a merged read; reading these tags one by one from now on"
                    );
                    self.plan.splice(i..=i, parts);
                    continue;
                }
                Err(Failure::Exception(code)) => {
                    if let Some(suppressed) =
                        self.log
                            .check(&format!("exception:{}:{}", block.area.name(), block.start))
                    {
                        tracing::warn!(
                            device = %self.cfg.id, area = block.area.name(), start = block.start, count = block.count,
                            exception = code, suppressed, "Device answered with a Modbus exception"
                        );
                    }
                }
                Ok(_) | Err(_) => {}
            }
            self.push_block(&block, &result, &mut out);
            i += 1;
        }
        let out: Vec<Reading> = out.into_iter().flatten().collect();
        tracing::debug!(device = %self.cfg.id, requests = self.last_requests, readings = out.len(), "Poll cycle done");
        out
    }
}

/// Either kind of link, for commands that take the kind from flags or from
/// a device's config (`read`, `scan`, `probe`).
pub enum AnyLink {
    Tcp(TcpLink),
    Bus(rtu::BusLink),
}

impl AnyLink {
    /// The link a device's protocol calls for.
    pub fn for_device(cfg: &DeviceConfig) -> AnyLink {
        match cfg.protocol {
            // OPC UA and S7 devices never get here (`read` dispatches them
            // first).
            DeviceProtocol::ModbusTcp(_) | DeviceProtocol::OpcUa(_) | DeviceProtocol::S7(_) => {
                AnyLink::Tcp(TcpLink::new(&cfg.address))
            }
            DeviceProtocol::Rtu { .. } | DeviceProtocol::RtuOverTcp(_) => {
                AnyLink::Bus(rtu::BusLink::new(rtu::Endpoint::of(cfg)))
            }
        }
    }
}

impl Link for AnyLink {
    fn endpoint(&self) -> &str {
        match self {
            AnyLink::Tcp(l) => l.endpoint(),
            AnyLink::Bus(l) => l.endpoint(),
        }
    }

    async fn ensure(&mut self, timeout: Duration) -> Result<bool, ConnectError> {
        match self {
            AnyLink::Tcp(l) => l.ensure(timeout).await,
            AnyLink::Bus(l) => l.ensure(timeout).await,
        }
    }

    async fn read(&mut self, unit: u8, block: &Block, timeout: Duration) -> Result<Data, Failure> {
        match self {
            AnyLink::Tcp(l) => l.read(unit, block, timeout).await,
            AnyLink::Bus(l) => l.read(unit, block, timeout).await,
        }
    }
}

/// One Modbus TCP device and its connection: a [`Poller`] on a [`TcpLink`].
pub struct ModbusDevice {
    poller: Poller,
    link: TcpLink,
}

impl ModbusDevice {
    pub fn new(cfg: Arc<DeviceConfig>, clock: Arc<dyn Clock>) -> Self {
        debug_assert!(matches!(cfg.protocol, DeviceProtocol::ModbusTcp(_)));
        ModbusDevice {
            link: TcpLink::new(&cfg.address),
            poller: Poller::new(cfg, clock),
        }
    }

    /// Requests per cycle under the current plan.
    pub fn plan_len(&self) -> usize {
        self.poller.plan_len()
    }

    /// Requests actually sent in the last cycle (including retries).
    pub fn last_requests(&self) -> usize {
        self.poller.last_requests()
    }
}

impl super::Source for ModbusDevice {
    fn id(&self) -> &str {
        &self.poller.cfg.id
    }

    fn interval(&self) -> Duration {
        // Real time between polls: shorter under the demo's compressed clock.
        self.poller.clock.to_real(self.poller.cfg.poll_interval)
    }

    async fn poll_once(&mut self) -> Vec<Reading> {
        self.poller.poll(&mut self.link).await
    }
}
