//! Modbus RTU buses: a serial port (RS-485), or a serial device server
//! that forwards raw RTU frames over TCP.
//!
//! # One lane per bus
//!
//! RTU has no transaction ids: on a shared line, an answer is only known to
//! belong to a request because nothing else was said in between. So every
//! unit on one port (or one device server) is polled by a single task, a
//! *lane*, that sends one request, waits for its answer or its timeout, and
//! only then sends the next. Each unit keeps its own poll interval,
//! timeout, retries and backoff ([`Poller`]); the lane always serves the
//! unit that is due first, and schedules start staggered across the
//! interval, so units do not all fire at t=0.
//!
//! A dead unit costs its timeout (times `retries + 1`), then backs off
//! (250 ms doubling to 30 s): while it backs off, its cycles report
//! `disconnected` without touching the line, so the live units keep their
//! rate.
//!
//! # Line discipline
//!
//! * Before each request the lane keeps the inter-frame gap after the end
//!   of the previous exchange: 3.5 character times at the configured line
//!   settings, fixed at 1.75 ms above 19200 baud. (Over TCP the device
//!   server times its own line, so there is no gap to keep.)
//! * Bytes already waiting before a request (a late answer) are discarded.
//! * After a timeout or a broken frame (bad CRC, wrong unit), the lane
//!   waits for the line to fall silent, discards what arrived, and restarts
//!   its framing; the port stays open. A port or connection that fails
//!   outright is closed and reopened on the next request.
//!
//! The agent only ever sends read function codes (01-04) here as anywhere.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_modbus::client::Context;

use super::plan::Block;
use super::{read_on, ConnectError, Data, Failure, Link, Poller};
use crate::clock::Clock;
use crate::config::{DeviceConfig, DeviceProtocol, Parity, SerialConfig};
use crate::reading::Reading;

/// Anything a bus can run over: a serial port or a TCP stream.
trait Port: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Port for T {}

/// An open port that the lane and its current Modbus framing share.
///
/// tokio-modbus's client owns its transport, and its framing cannot be
/// trusted after a broken frame; a fresh client on the same open port is.
/// Only one task ever uses a bus, so the lock is never contended.
#[derive(Clone)]
struct SharedPort {
    port: Arc<Mutex<Box<dyn Port>>>,
    /// Bytes received so far: a timeout with bytes received is a garbled
    /// answer (bad CRC, wrong line settings), not a silent unit.
    received: Arc<AtomicU64>,
}

impl SharedPort {
    fn new(port: Box<dyn Port>) -> SharedPort {
        SharedPort {
            port: Arc::new(Mutex::new(port)),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn with<R>(&self, f: impl FnOnce(Pin<&mut dyn Port>) -> R) -> R {
        let mut guard = self.port.lock().unwrap_or_else(|e| e.into_inner());
        f(Pin::new(&mut **guard))
    }
}

impl AsyncRead for SharedPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = self.with(|p| p.poll_read(cx, buf));
        let n = buf.filled().len().saturating_sub(before);
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for SharedPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|p| p.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.with(|p| p.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.with(|p| p.poll_shutdown(cx))
    }
}

/// One read attempt that never waits: `None` when nothing is waiting.
async fn read_now<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(rb.filled().len()))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Ready(None),
        }
    })
    .await
}

/// Where a bus is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A serial port and its line settings.
    Serial { path: String, line: SerialConfig },
    /// A serial device server forwarding raw RTU frames, `host:port`.
    Tcp { address: String },
}

impl Endpoint {
    /// The bus of a modbus-rtu or modbus-rtu-over-tcp device.
    pub fn of(cfg: &DeviceConfig) -> Endpoint {
        match &cfg.protocol {
            DeviceProtocol::Rtu { serial, .. } => Endpoint::Serial {
                path: cfg.address.clone(),
                line: *serial,
            },
            _ => Endpoint::Tcp {
                address: cfg.address.clone(),
            },
        }
    }
}

/// Opens a serial port with the given line settings, no flow control.
pub fn open_serial(path: &str, line: &SerialConfig) -> io::Result<tokio_serial::SerialStream> {
    let parity = match line.parity {
        Parity::N => tokio_serial::Parity::None,
        Parity::E => tokio_serial::Parity::Even,
        Parity::O => tokio_serial::Parity::Odd,
    };
    let stop_bits = if line.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let builder = tokio_serial::new(path, line.baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None);
    tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)
}

/// The line of one bus, shared by all its units.
pub struct BusLink {
    endpoint: Endpoint,
    /// Port path or address, for messages.
    name: String,
    port: Option<SharedPort>,
    /// The current framing on `port`; rebuilt after a broken exchange.
    ctx: Option<Context>,
    /// Silence to keep between the end of one exchange and the next request.
    gap: Duration,
    /// When the last exchange ended (answer received or given up on).
    last_activity: Option<Instant>,
    /// Bytes thrown away as stale, for tests and logs.
    discarded: u64,
}

impl BusLink {
    pub fn new(endpoint: Endpoint) -> BusLink {
        let (name, gap) = match &endpoint {
            Endpoint::Serial { path, line } => (path.clone(), line.inter_frame_gap()),
            Endpoint::Tcp { address } => (address.clone(), Duration::ZERO),
        };
        BusLink {
            endpoint,
            name,
            port: None,
            ctx: None,
            gap,
            last_activity: None,
            discarded: 0,
        }
    }

    /// The silence kept between exchanges.
    pub fn gap(&self) -> Duration {
        self.gap
    }

    /// Stale bytes discarded so far.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    fn attach(&mut self) {
        if let Some(port) = &self.port {
            self.ctx = Some(tokio_modbus::client::rtu::attach(port.clone()));
        }
    }

    fn close(&mut self) {
        self.ctx = None;
        self.port = None;
        self.last_activity = None;
    }

    /// Reads and discards whatever arrives until the line has been silent
    /// for `quiet` (with `quiet` zero: only what is already waiting), for
    /// at most `limit`.
    async fn drain(&mut self, quiet: Duration, limit: Duration) {
        let Some(mut port) = self.port.clone() else {
            return;
        };
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 256];
        loop {
            let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
            let got = if wait.is_zero() {
                // Only what is already there: poll once, never wait for a
                // timer tick (tokio's timers have 1 ms granularity).
                match read_now(&mut port, &mut buf).await {
                    Some(r) => Ok(r),
                    None => return,
                }
            } else {
                timeout(wait, port.read(&mut buf)).await
            };
            match got {
                Ok(Ok(n)) if n > 0 => {
                    self.discarded += n as u64;
                    tracing::debug!(bus = %self.name, bytes = n, "Discarded stale bytes");
                    if Instant::now() >= deadline {
                        return;
                    }
                }
                Ok(Ok(_)) => return,
                Ok(Err(_)) => {
                    self.close();
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl Link for BusLink {
    fn endpoint(&self) -> &str {
        &self.name
    }

    async fn ensure(&mut self, limit: Duration) -> Result<bool, ConnectError> {
        if self.port.is_some() {
            if self.ctx.is_none() {
                self.attach();
            }
            return Ok(false);
        }
        let port: Box<dyn Port> = match &self.endpoint {
            Endpoint::Serial { path, line } => match open_serial(path, line) {
                Ok(s) => Box::new(s),
                Err(source) => {
                    return Err(ConnectError::Serial {
                        port: path.clone(),
                        source,
                    })
                }
            },
            Endpoint::Tcp { address } => {
                let attempt = async {
                    let s = TcpStream::connect(address.as_str()).await?;
                    s.set_nodelay(true)?;
                    Ok::<_, io::Error>(s)
                };
                match timeout(limit, attempt).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(ConnectError::Timeout),
                }
            }
        };
        self.port = Some(SharedPort::new(port));
        self.attach();
        self.last_activity = None;
        Ok(true)
    }

    async fn read(&mut self, unit: u8, block: &Block, limit: Duration) -> Result<Data, Failure> {
        if self.port.is_none() {
            return Err(Failure::Disconnected("not connected".into()));
        }
        if let Some(t) = self.last_activity {
            if Instant::now() < t + self.gap {
                sleep_until(t + self.gap).await;
            }
        }
        // A late answer to an earlier request must not pass for this one.
        self.drain(Duration::ZERO, limit).await;
        if self.ctx.is_none() {
            self.attach();
        }
        let (Some(ctx), Some(port)) = (self.ctx.as_mut(), self.port.as_ref()) else {
            return Err(Failure::Disconnected("not connected".into()));
        };
        let before = port.received();
        let result = match timeout(limit, read_on(ctx, unit, block)).await {
            Ok(r) => r,
            // Bytes came but never made a valid frame: a broken answer.
            Err(_) if port.received() > before => Err(Failure::Decode(format!(
                "{} byte(s) arrived but no valid answer (bad CRC or wrong line settings?)",
                port.received() - before
            ))),
            Err(_) => Err(Failure::Timeout),
        };
        match &result {
            Ok(_) | Err(Failure::Exception(_)) => {}
            Err(Failure::Timeout | Failure::Decode(_)) => {
                // Let whatever is still on the line arrive and drop it, then
                // start framing afresh: the port itself is fine.
                self.ctx = None;
                let quiet = self.gap.max(Duration::from_millis(5));
                self.drain(quiet, limit).await;
            }
            Err(Failure::Disconnected(_)) => self.close(),
        }
        if self.port.is_some() {
            self.last_activity = Some(Instant::now());
        }
        result
    }
}

/// The units on one bus and their line.
pub struct Bus {
    link: BusLink,
    units: Vec<Poller>,
}

impl Bus {
    /// The bus of one lane: `head` and the units that share its line.
    pub fn new(
        head: &Arc<DeviceConfig>,
        rest: &[Arc<DeviceConfig>],
        clock: &Arc<dyn Clock>,
    ) -> Bus {
        Bus {
            link: BusLink::new(Endpoint::of(head)),
            units: std::iter::once(head)
                .chain(rest)
                .map(|d| Poller::new(d.clone(), clock.clone()))
                .collect(),
        }
    }

    /// Groups every modbus-rtu and modbus-rtu-over-tcp device by the bus it
    /// is on, in config order. The config check made sure the devices of a
    /// bus agree on its line settings.
    pub fn group(devices: &[Arc<DeviceConfig>], clock: &Arc<dyn Clock>) -> Vec<Bus> {
        let mut buses: Vec<(String, Bus)> = Vec::new();
        for d in devices {
            let Some(key) = d.bus_key() else {
                continue;
            };
            let poller = Poller::new(d.clone(), clock.clone());
            match buses.iter_mut().find(|(k, _)| *k == key) {
                Some((_, bus)) => bus.units.push(poller),
                None => buses.push((
                    key,
                    Bus {
                        link: BusLink::new(Endpoint::of(d)),
                        units: vec![poller],
                    },
                )),
            }
        }
        buses.into_iter().map(|(_, b)| b).collect()
    }

    pub fn name(&self) -> &str {
        self.link.endpoint()
    }

    pub fn units(&self) -> usize {
        self.units.len()
    }

    /// Polls the units, each on its own interval, one request at a time,
    /// until `shutdown` turns true or the buffer goes away. Sends one
    /// `Vec<Reading>` per unit per cycle.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<Vec<Reading>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let n = self.units.len().max(1) as f64;
        let phase = fastrand::f64();
        let start = Instant::now();
        // Spread the first polls over each unit's interval.
        let mut due: Vec<Instant> = self
            .units
            .iter()
            .enumerate()
            .map(|(i, u)| start + u.config().poll_interval.mul_f64((i as f64 + phase) / n))
            .collect();
        tracing::info!(bus = %self.link.endpoint(), units = self.units.len(), gap_us = self.link.gap().as_micros() as u64, "Bus lane started");
        while let Some((i, next)) = due.iter().copied().enumerate().min_by_key(|&(_, d)| d) {
            tokio::select! {
                _ = sleep_until(next) => {}
                _ = shutdown.changed() => break,
            }
            let readings = tokio::select! {
                r = self.units[i].poll(&mut self.link) => r,
                _ = shutdown.changed() => break,
            };
            // No catch-up bursts: a unit that fell behind is served once,
            // then keeps its interval from now.
            due[i] = (next + self.units[i].config().poll_interval).max(Instant::now());
            if readings.is_empty() {
                continue;
            }
            tokio::select! {
                sent = tx.send(readings) => if sent.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        tracing::debug!(bus = %self.link.endpoint(), "Bus lane stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inter_frame_gap_follows_the_line_settings() {
        let at = |baud, parity, stop_bits| SerialConfig {
            baud,
            parity,
            data_bits: 8,
            stop_bits,
        };
        // 8N1: 10 bits a character; 3.5 characters at 9600 baud = 3.646 ms.
        let g = at(9600, Parity::N, 1).inter_frame_gap();
        assert!(
            (g.as_secs_f64() - 3.5 * 10.0 / 9600.0).abs() < 1e-8,
            "{g:?}"
        );
        // 8E1: 11 bits.
        let g = at(9600, Parity::E, 1).inter_frame_gap();
        assert!(
            (g.as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-8,
            "{g:?}"
        );
        assert_eq!(at(19200, Parity::N, 2).bits_per_char(), 11);
        // Above 19200 baud the spec fixes 1.75 ms.
        assert_eq!(
            at(115200, Parity::N, 1).inter_frame_gap(),
            Duration::from_micros(1750)
        );
        assert_eq!(
            at(38400, Parity::E, 1).inter_frame_gap(),
            Duration::from_micros(1750)
        );
    }
}
