//! Modbus TCP devices.
//!
//! Every request is wrapped in a timeout. After a timeout or a transport
//! error the connection is dropped and rebuilt, because a late reply on the
//! old socket could otherwise be matched to the next request. A Modbus
//! exception, by contrast, is a valid answer: the connection stays up and
//! the affected tags get `exception:<code>`.

pub mod decode;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_modbus::client::Context;
use tokio_modbus::{ExceptionCode, Slave};

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::{DeviceConfig, TagConfig};
use crate::loglimit::LogLimiter;
use crate::reading::{BadReason, Quality, Reading, Value};
use decode::{decode_registers, scaled};
use plan::{Area, Block, Span};

/// The raw answer to one block read.
enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Why a block read gave no data.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Timeout,
    Exception(u8),
    Transport,
}

/// One Modbus TCP device and its connection.
pub struct ModbusDevice {
    cfg: Arc<DeviceConfig>,
    spans: Vec<Span>,
    /// The current request plan; blocks the device refused get split.
    plan: Vec<Block>,
    conn: Option<Context>,
    /// Earliest time of the next connect attempt while backing off.
    next_connect: Instant,
    backoff: Backoff,
    log: LogLimiter,
    clock: Arc<dyn Clock>,
    /// Requests sent in the last cycle, for logs and tests.
    last_requests: usize,
}

fn exception_code(e: ExceptionCode) -> u8 {
    u8::from(e)
}

impl ModbusDevice {
    pub fn new(cfg: Arc<DeviceConfig>, clock: Arc<dyn Clock>) -> Self {
        let spans: Vec<Span> = cfg
            .tags
            .iter()
            .map(|t| Span {
                area: t.area,
                address: t.address,
                len: t.span(),
            })
            .collect();
        let plan = plan::plan(&spans, cfg.max_gap, cfg.coalesce);
        tracing::info!(device = %cfg.id, tags = cfg.tags.len(), requests = plan.len(), "Poll plan built");
        ModbusDevice {
            spans,
            plan,
            conn: None,
            next_connect: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            log: LogLimiter::new(Duration::from_secs(60)),
            clock,
            last_requests: 0,
            cfg,
        }
    }

    /// Requests per cycle under the current plan.
    pub fn plan_len(&self) -> usize {
        self.plan.len()
    }

    /// Requests actually sent in the last cycle (including retries).
    pub fn last_requests(&self) -> usize {
        self.last_requests
    }

    async fn connect(&mut self) -> Result<(), String> {
        let addr = self.cfg.address.clone();
        let unit = self.cfg.unit_id;
        let attempt = async move {
            let stream = TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tokio_modbus::client::tcp::attach_slave(stream, Slave(unit)))
        };
        match timeout(self.cfg.timeout, attempt).await {
            Ok(Ok(ctx)) => {
                self.conn = Some(ctx);
                if self.backoff.failures() > 0 {
                    tracing::info!(device = %self.cfg.id, address = %self.cfg.address, "Device reconnected");
                }
                self.log.clear("connect");
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }

    async fn request(&mut self, block: &Block) -> Result<Data, Failure> {
        let Some(ctx) = self.conn.as_mut() else {
            return Err(Failure::Transport);
        };
        self.last_requests += 1;
        let (start, count) = (block.start, block.count);
        let fut = read_raw(ctx, block.area, start, count);
        match timeout(self.cfg.timeout, fut).await {
            Ok(Ok(Ok(data))) => Ok(data),
            Ok(Ok(Err(exc))) => Err(Failure::Exception(exception_code(exc))),
            Ok(Err(e)) => {
                self.warn("transport", &format!("Request failed: {e}"));
                self.conn = None;
                Err(Failure::Transport)
            }
            Err(_) => {
                self.warn("timeout", "Request timed out");
                self.conn = None;
                Err(Failure::Timeout)
            }
        }
    }

    /// Reads one block, reconnecting and retrying after link failures.
    /// After the last attempt fails, the device backs off: until then,
    /// every block of every cycle is reported `disconnected` at once, so a
    /// dead device costs its timeout only once per backoff step.
    async fn read_block(&mut self, block: &Block) -> Result<Data, Failure> {
        if self.conn.is_none() && Instant::now() < self.next_connect {
            return Err(Failure::Transport);
        }
        let mut last = Failure::Transport;
        for _ in 0..=self.cfg.retries {
            if self.conn.is_none() {
                if let Err(why) = self.connect().await {
                    self.warn("connect", &format!("Connect failed: {why}"));
                    last = Failure::Transport;
                    continue;
                }
            }
            match self.request(block).await {
                Ok(d) => {
                    self.backoff.reset();
                    return Ok(d);
                }
                Err(f @ Failure::Exception(_)) => {
                    self.backoff.reset();
                    return Err(f);
                }
                Err(f) => last = f,
            }
        }
        self.conn = None;
        self.next_connect = Instant::now() + self.backoff.next_delay();
        Err(last)
    }

    fn warn(&mut self, kind: &str, msg: &str) {
        if let Some(suppressed) = self.log.check(kind) {
            tracing::warn!(device = %self.cfg.id, address = %self.cfg.address, suppressed, "{msg}");
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
            let tag = &self.cfg.tags[i];
            let decoded = match result {
                Ok(data) => self.decode_tag(tag, block, data),
                Err(Failure::Timeout) => Err(BadReason::Timeout),
                Err(Failure::Exception(c)) => Err(BadReason::Exception(*c)),
                Err(Failure::Transport) => Err(BadReason::Disconnected),
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
}

impl super::Source for ModbusDevice {
    fn id(&self) -> &str {
        &self.cfg.id
    }

    fn interval(&self) -> Duration {
        // Real time between polls: shorter under the demo's compressed clock.
        self.clock.to_real(self.cfg.poll_interval)
    }

    async fn poll_once(&mut self) -> Vec<Reading> {
        self.last_requests = 0;
        // Indexed by tag, so readings come out in config order whatever
        // order the plan reads the areas in.
        let mut out: Vec<Option<Reading>> = vec![None; self.cfg.tags.len()];
        let mut i = 0;
        while i < self.plan.len() {
            let block = self.plan[i].clone();
            let result = self.read_block(&block).await;
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
                Ok(_) => {}
                Err(Failure::Timeout | Failure::Transport) => {}
            }
            self.push_block(&block, &result, &mut out);
            i += 1;
        }
        let out: Vec<Reading> = out.into_iter().flatten().collect();
        tracing::debug!(device = %self.cfg.id, requests = self.last_requests, readings = out.len(), "Poll cycle done");
        out
    }
}

/// One read request through `Client::call`, matching the response
/// ourselves: tokio-modbus's `Reader` helpers assert on the answer's
/// length, and a PLC that answers short must cost a `decode` quality, not
/// a panic. Only read function codes are ever built here.
async fn read_raw(
    ctx: &mut Context,
    area: Area,
    start: u16,
    count: u16,
) -> tokio_modbus::Result<Data> {
    use tokio_modbus::client::Client;
    use tokio_modbus::{Request, Response};
    let request = match area {
        Area::Coil => Request::ReadCoils(start, count),
        Area::DiscreteInput => Request::ReadDiscreteInputs(start, count),
        Area::InputRegister => Request::ReadInputRegisters(start, count),
        Area::HoldingRegister => Request::ReadHoldingRegisters(start, count),
    };
    Ok(ctx.call(request).await?.map(|response| match response {
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => Data::Bits(bits),
        Response::ReadInputRegisters(words) | Response::ReadHoldingRegisters(words) => {
            Data::Words(words)
        }
        // call() rejects a response of another function; an empty answer
        // decodes as "too short" for every tag.
        _ => Data::Words(Vec::new()),
    }))
}
