//! A raw-frame Modbus RTU slave, for tests and the throughput example.
//!
//! tokio-modbus's server gives no control below the frame; this one works
//! on bytes, so it can corrupt a CRC, stay silent for one unit, answer
//! another with exceptions, emulate the wire time of a given baud rate,
//! and log every exchange with timestamps taken on the slave's side: when
//! a request started and ended, when the answer was written, and whether
//! any byte arrived while it was answering (frames interleaving on the
//! wire).
//!
//! [`SocatPty`] makes the serial line: a pair of connected ptys from
//! `socat`, one end for the slave and one for the agent.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Bank;
use crate::config::SerialConfig;

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// One request as the slave saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub unit: u8,
    pub function: u8,
    /// The request's first bytes arrived.
    pub request_start: Instant,
    /// The request was complete.
    pub request_end: Instant,
    /// The answer's write began (the whole frame is one write); `None`
    /// when the slave stayed silent.
    pub response_end: Option<Instant>,
    /// The request's CRC was right.
    pub crc_ok: bool,
    /// Bytes that arrived after this request and before its answer was
    /// written: another frame interleaving with this exchange.
    pub overlapping_bytes: usize,
}

/// How a unit behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers from its bank.
    Answer,
    /// Answers every request with this exception code.
    Exception(u8),
}

#[derive(Default)]
struct State {
    units: HashMap<u8, (Bank, Behaviour)>,
    /// Per unit: how many of its next answers get a corrupted CRC.
    corrupt: HashMap<u8, u32>,
    log: Vec<Exchange>,
}

/// What the test or benchmark holds on to.
pub struct RawSlave {
    state: Arc<Mutex<State>>,
    /// Extra delay before every answer (a slow device).
    delay_us: Arc<AtomicU64>,
    /// Write requests received (the agent must never send one).
    pub writes: Arc<AtomicU64>,
    exchanges: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawSlave {
    /// Serves `stream` (a pty end opened as a serial port, or a TCP stream
    /// for RTU over TCP). With `line_rate`, every answer is held back for
    /// the time the request and the answer would take on a real wire at
    /// those settings plus the 3.5-character silence that ends a request,
    /// since a pty delivers bytes at once whatever the baud rate.
    pub fn start<S>(stream: S, line_rate: Option<SerialConfig>) -> RawSlave
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(Mutex::new(State::default()));
        let delay_us = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let (count_tx, exchanges) = watch::channel(0usize);
        let task = tokio::spawn(serve(
            stream,
            state.clone(),
            delay_us.clone(),
            writes.clone(),
            line_rate,
            count_tx,
        ));
        RawSlave {
            state,
            delay_us,
            writes,
            exchanges,
            task,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) a unit. Units never added stay silent.
    pub fn set_unit(&self, unit: u8, bank: Bank, behaviour: Behaviour) {
        self.state().units.insert(unit, (bank, behaviour));
    }

    /// Corrupts the CRC of the next `n` answers of `unit`.
    pub fn corrupt_next(&self, unit: u8, n: u32) {
        self.state().corrupt.insert(unit, n);
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Every exchange so far.
    pub fn log(&self) -> Vec<Exchange> {
        self.state().log.clone()
    }

    /// Waits until at least `n` exchanges happened (or `limit` passed).
    pub async fn wait_for_exchanges(&self, n: usize, limit: Duration) -> bool {
        let mut rx = self.exchanges.clone();
        tokio::time::timeout(limit, rx.wait_for(|&c| c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for RawSlave {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Length of a request frame from its first bytes, `None` until known.
fn request_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let fc = *buf.get(1)?;
    Some(match fc {
        0x01..=0x06 => Ok(8),
        0x0F | 0x10 => return buf.get(6).map(|&n| Ok(9 + usize::from(n))),
        0x16 => Ok(10),
        0x17 => return buf.get(10).map(|&n| Ok(13 + usize::from(n))),
        _ => Err(()),
    })
}

/// The answer PDU (function code onwards) to a read, or an exception.
fn answer(bank: &Bank, behaviour: Behaviour, fc: u8, start: u16, count: u16) -> Vec<u8> {
    if let Behaviour::Exception(code) = behaviour {
        return vec![fc | 0x80, code];
    }
    let (s, e) = (usize::from(start), usize::from(start) + usize::from(count));
    let bits = |v: &[bool]| -> Option<Vec<u8>> {
        let v = v.get(s..e)?;
        let mut out = vec![0u8; v.len().div_ceil(8)];
        for (i, &b) in v.iter().enumerate() {
            if b {
                out[i / 8] |= 1 << (i % 8);
            }
        }
        Some(out)
    };
    let words = |v: &[u16]| -> Option<Vec<u8>> {
        Some(v.get(s..e)?.iter().flat_map(|w| w.to_be_bytes()).collect())
    };
    let data = match fc {
        0x01 => bits(&bank.coils),
        0x02 => bits(&bank.discrete),
        0x03 => words(&bank.holding),
        0x04 => words(&bank.input),
        // Read-only agent: refuse anything else, like the TCP simulator.
        _ => return vec![fc | 0x80, 0x01],
    };
    match data {
        Some(d) if count > 0 => {
            let mut out = vec![fc, d.len() as u8];
            out.extend(d);
            out
        }
        _ => vec![fc | 0x80, 0x02],
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "the simulated RTU slave's frame loop (test and demo code); not split yet"
)]
async fn serve<S>(
    mut stream: S,
    state: Arc<Mutex<State>>,
    delay_us: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    line_rate: Option<SerialConfig>,
    count_tx: watch::Sender<usize>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    // When the first bytes of the frame now in `buf` arrived.
    let mut started: Option<Instant> = None;
    loop {
        // Complete a frame.
        let len = loop {
            match request_len(&buf) {
                Some(Ok(n)) if buf.len() >= n => break Some(n),
                Some(Err(())) => break None,
                _ => {}
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if buf.is_empty() {
                        started = Some(Instant::now());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        let Some(len) = len else {
            // Not a request we know: drop everything, as a slave resyncs
            // on the next silence.
            buf.clear();
            continue;
        };
        let request_end = Instant::now();
        let request_start = started.unwrap_or(request_end);
        let frame: Vec<u8> = buf.drain(..len).collect();
        let mut overlapping = buf.len();
        started = if buf.is_empty() {
            None
        } else {
            Some(request_end)
        };
        let (unit, fc) = (frame[0], frame[1]);
        let crc_ok =
            crc16(&frame[..len - 2]) == u16::from_le_bytes([frame[len - 2], frame[len - 1]]);
        if matches!(fc, 0x05 | 0x06 | 0x0F | 0x10 | 0x16 | 0x17) {
            writes.fetch_add(1, Ordering::Relaxed);
        }
        let start = u16::from_be_bytes([frame[2], frame[3]]);
        let count = u16::from_be_bytes([frame[4], frame[5]]);
        // Decide the answer; a slave ignores frames with a bad CRC and
        // frames for other units.
        let reply = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let pdu = if crc_ok {
                st.units
                    .get(&unit)
                    .map(|(bank, b)| answer(bank, *b, fc, start, count))
            } else {
                None
            };
            pdu.map(|pdu| {
                let mut adu = vec![unit];
                adu.extend(pdu);
                let crc = crc16(&adu);
                adu.extend(crc.to_le_bytes());
                if let Some(n) = st.corrupt.get_mut(&unit).filter(|n| **n > 0) {
                    *n -= 1;
                    // Flip a data bit: the CRC no longer matches.
                    let i = adu.len() - 3;
                    adu[i] ^= 0x10;
                }
                adu
            })
        };
        let mut response_end = None;
        if let Some(adu) = reply {
            let mut wait = Duration::from_micros(delay_us.load(Ordering::Relaxed));
            if let Some(line) = line_rate {
                let chars = (frame.len() + adu.len()) as u32;
                wait += line.char_time() * chars + line.inter_frame_gap();
            }
            // While "busy", any byte arriving is another frame on the wire.
            // tokio's timers tick in whole milliseconds, so the last
            // millisecond is waited out by yielding, to emulate a wire
            // time closely.
            let deadline = Instant::now() + wait;
            let coarse = deadline.checked_sub(Duration::from_millis(1));
            loop {
                let got = match coarse.filter(|c| Instant::now() < *c) {
                    Some(c) => tokio::select! {
                        _ = tokio::time::sleep_until(c) => None,
                        r = stream.read(&mut chunk) => Some(r),
                    },
                    None if Instant::now() < deadline => {
                        let r = read_now(&mut stream, &mut chunk).await;
                        if r.is_none() {
                            tokio::task::yield_now().await;
                        }
                        r
                    }
                    None => break,
                };
                match got {
                    None => {}
                    Some(Ok(0) | Err(_)) => return,
                    Some(Ok(n)) => {
                        overlapping += n;
                        if buf.is_empty() {
                            started = Some(Instant::now());
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            // Stamped before the write: the master cannot have the last
            // byte earlier, so the silence measured from here is never
            // more than the master really kept. A stamp after the write
            // would also count any time this task waited to be scheduled
            // again, and read short under load.
            let writing = Instant::now();
            if stream.write_all(&adu).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            response_end = Some(writing);
        }
        let n = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.log.push(Exchange {
                unit,
                function: fc,
                request_start,
                request_end,
                response_end,
                crc_ok,
                overlapping_bytes: overlapping,
            });
            st.log.len()
        };
        let _ = count_tx.send(n);
    }
}

/// One read attempt that never waits: `None` when nothing is waiting.
async fn read_now<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| {
        let mut rb = tokio::io::ReadBuf::new(buf);
        match std::pin::Pin::new(&mut *r).poll_read(cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Some(Ok(rb.filled().len()))),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Some(Err(e))),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        }
    })
    .await
}

/// Two connected ptys made by socat: whatever is written to one end can be
/// read from the other, like two devices on one serial cable. Killed on drop.
pub struct SocatPty {
    /// One end (give it to the slave).
    pub a: PathBuf,
    /// The other end (give it to the agent).
    pub b: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SocatPty {
    /// `Err` with `NotFound` when socat is not installed.
    pub fn start() -> io::Result<SocatPty> {
        let bin = find_in_path("socat")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "socat is not installed"))?;
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        #[allow(clippy::zombie_processes)] // killed and waited for in Drop
        let child = std::process::Command::new(bin)
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut pty = SocatPty {
            a,
            b,
            child,
            _dir: dir,
        };
        // socat creates both links once its ptys are open.
        for _ in 0..1000 {
            if pty.a.exists() && pty.b.exists() {
                return Ok(pty);
            }
            if let Ok(Some(status)) = pty.child.try_wait() {
                return Err(io::Error::other(format!("socat exited: {status}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = pty.child.kill();
        Err(io::Error::other("socat made no ptys within 5s"))
    }

    /// The agent's end, as text for a config.
    pub fn agent_end(&self) -> String {
        self.b.display().to_string()
    }
}

impl Drop for SocatPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_a_known_frame() {
        // Read holding registers 0..2 of unit 1: 01 03 00 00 00 02 C4 0B.
        assert_eq!(
            crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x02]).to_le_bytes(),
            [0xC4, 0x0B]
        );
    }
}
