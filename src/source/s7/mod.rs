//! Siemens S7 PLCs over S7comm (ISO-on-TCP, port 102), read-only.
//!
//! A device task owns one connection ([`client::Connection`]). At connect it
//! negotiates the PDU size and builds the request plan for it
//! ([`plan`]): the tags merged into byte ranges, the ranges cut into items,
//! the items packed into the fewest Read Var requests the PDU allows. A poll
//! cycle sends those requests one after the other.
//!
//! Qualities:
//! * an item the PLC answers with a return code other than success gives
//!   its tags `BadS7...` statuses ([`item_status`]), with a warning that
//!   says what to change on the PLC; the connection stays up;
//! * a timeout, a broken answer (`decode`) or a lost link drops the
//!   connection (a late reply must never answer the next request); after
//!   `retries` more tries the device backs off (250 ms doubling to 30 s)
//!   and its tags are `disconnected` until then, so a dead PLC costs its
//!   timeout only once per backoff step and only in its own task.
//!
//! The agent sends only the COTP connection request, Setup Communication
//! and Read Var ([`proto`] has no other request).

pub mod address;
pub mod client;
pub mod commission;
pub mod config;
pub mod plan;
pub mod proto;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::DeviceConfig;
use crate::loglimit::LogLimiter;
use crate::reading::{BadReason, Quality, Reading, Value};
use address::S7Type;
use client::{Connection, LinkError};
use config::{S7Device, S7Tag};
use proto::{FrameError, ItemResult};

/// The quality of an item the PLC answered with return code `rc`, and
/// what to do about it.
pub fn item_status(rc: u8) -> (&'static str, &'static str) {
    match rc {
        0x0A => ("BadS7ObjectDoesNotExist", "the PLC has no such object: check that the DB exists in the PLC program and was downloaded, and the DB number in the address"),
        0x05 => ("BadS7AddressOutOfRange", "the address is beyond the end of the DB or area: check the offset against the DB's size; on an S7-1200/1500 the DB must have \"Optimized block access\" switched off, or it has no offsets at all (docs/s7.md)"),
        0x03 => ("BadS7AccessDenied", "the PLC refused access: on an S7-1200/1500 tick \"Permit access with PUT/GET communication\" in the CPU's Protection & Security settings and switch off \"Optimized block access\" in the DB's attributes, then download (docs/s7.md)"),
        0x01 => ("BadS7HardwareFault", "the PLC reports a hardware fault for this address"),
        0x06 | 0x07 => ("BadS7DataTypeNotSupported", "the PLC does not support reading this area with this type"),
        _ => ("BadS7ItemRefused", "the PLC refused this item with an unlisted return code"),
    }
}

/// The quality of a request the PLC refused as a whole (S7 header error).
fn refused_status(class: u8, code: u8) -> (&'static str, &'static str) {
    match (class, code) {
        // An S7-1200/1500 with PUT/GET off answers every read like this.
        (0x81, 0x04) => item_status(0x03),
        _ => (
            "BadS7RequestRefused",
            "the PLC refused the read request as a whole",
        ),
    }
}

/// The outcome of one item of the plan in the last cycle.
type Piece = Result<Vec<u8>, BadReason>;

/// One S7 PLC and its connection.
pub struct S7Poller {
    cfg: Arc<DeviceConfig>,
    s7: Arc<S7Device>,
    conn: Option<Connection>,
    /// Tags never merged with others (the PLC refused their merged range).
    solo: Vec<bool>,
    /// The plan for the PDU it was built for.
    plan: Option<(u16, plan::Plan)>,
    /// Until then the PLC is not asked at all (after its retries failed).
    resume_at: Instant,
    backoff: Backoff,
    log: LogLimiter,
    clock: Arc<dyn Clock>,
    /// Requests sent in the last cycle, for logs, tests and the benchmark.
    last_requests: usize,
    /// Whether the last connect was the first after failures (to log a
    /// reconnect once).
    was_down: bool,
}

impl S7Poller {
    /// `None` unless `cfg` is an S7 device.
    pub fn new(cfg: Arc<DeviceConfig>, clock: Arc<dyn Clock>) -> Option<S7Poller> {
        let s7 = cfg.s7()?.clone();
        Some(S7Poller::with(cfg, s7, clock))
    }

    /// The poller of `cfg`, whose S7 settings are `s7`.
    pub fn with(cfg: Arc<DeviceConfig>, s7: Arc<S7Device>, clock: Arc<dyn Clock>) -> S7Poller {
        S7Poller {
            solo: vec![!s7.coalesce; s7.tags.len()],
            s7,
            cfg,
            conn: None,
            plan: None,
            resume_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            log: LogLimiter::new(Duration::from_secs(60)),
            clock,
            last_requests: 0,
            was_down: false,
        }
    }

    /// Requests sent in the last cycle (including retries).
    pub fn last_requests(&self) -> usize {
        self.last_requests
    }

    /// The current plan's requests per cycle and the fewest its items
    /// could take at the negotiated PDU; `None` before the first connect.
    pub fn plan_stats(&self) -> Option<(u16, usize, usize)> {
        self.plan
            .as_ref()
            .map(|(pdu, p)| (*pdu, p.requests.len(), plan::lower_bound(&p.items, *pdu)))
    }

    fn warn(&mut self, kind: &str, msg: &str) {
        if let Some(suppressed) = self.log.check(kind) {
            tracing::warn!(device = %self.cfg.id, address = %self.cfg.address, suppressed, "{msg}");
        }
    }

    /// Connects unless connected; builds the plan for the granted PDU.
    async fn ensure(&mut self) -> Result<(), LinkError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let (s7, cfg) = (self.s7.clone(), self.cfg.clone());
        let conn = Connection::open(
            &cfg.address,
            s7.local_tsap,
            s7.remote_tsap,
            s7.pdu_size,
            self.cfg.timeout,
        )
        .await?;
        let pdu = conn.pdu();
        if self.plan.as_ref().map(|(p, _)| *p) != Some(pdu) {
            self.rebuild(pdu);
        }
        if self.was_down {
            tracing::info!(device = %cfg.id, address = %cfg.address, pdu, "PLC reconnected");
        }
        self.was_down = false;
        self.log.clear("connect");
        self.conn = Some(conn);
        Ok(())
    }

    fn rebuild(&mut self, pdu: u16) {
        let spans: Vec<plan::Span> = self
            .s7
            .tags
            .iter()
            .zip(&self.solo)
            .map(|(t, &solo)| plan::Span {
                area: t.address.area,
                start: t.address.byte,
                len: t.len(),
                solo,
            })
            .collect();
        let p = plan::plan(&spans, self.s7.max_gap, pdu);
        tracing::info!(
            device = %self.cfg.id, pdu, tags = spans.len(), requests = p.requests.len(),
            "Poll plan built"
        );
        self.plan = Some((pdu, p));
    }

    /// Sends one request of the plan, retrying after link failures.
    async fn request(&mut self, items: &[proto::Item]) -> Result<Vec<ItemResult>, BadReason> {
        let mut last = BadReason::Disconnected;
        for _ in 0..=self.cfg.retries {
            if Instant::now() < self.resume_at {
                return Err(BadReason::Disconnected);
            }
            if let Err(e) = self.ensure().await {
                self.warn("connect", &format!("Connect failed: {e}"));
                last = reason(&e);
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            self.last_requests += 1;
            match conn.read(items, self.cfg.timeout).await {
                Ok(results) => {
                    self.backoff.reset();
                    return Ok(results);
                }
                Err(LinkError::Frame(FrameError::Refused { class, code })) => {
                    self.backoff.reset();
                    let (status, what) = refused_status(class, code);
                    self.warn(
                        "refused",
                        &format!("PLC refused a read (error class 0x{class:02X}, code 0x{code:02X}): {what}"),
                    );
                    return Err(BadReason::Status(status));
                }
                Err(e) => {
                    // A late reply on this connection could answer the
                    // next request.
                    self.conn = None;
                    self.warn(kind(&e), &format!("Request failed: {e}"));
                    last = reason(&e);
                }
            }
        }
        self.was_down = true;
        self.resume_at = Instant::now() + self.backoff.next_delay();
        Err(last)
    }

    /// One poll cycle: a reading for every tag, in config order.
    pub async fn poll(&mut self) -> Vec<Reading> {
        self.last_requests = 0;
        let pieces = self.read_all().await;
        let ts = self.clock.now_ms();
        let Some((_, plan)) = &self.plan else {
            // Never connected yet: every tag shares the connect failure.
            let why = pieces.first().and_then(|p| p.clone().err());
            let why = why.unwrap_or(BadReason::Disconnected);
            return self.all_bad(why, ts);
        };
        let mut out: Vec<Option<Reading>> = vec![None; self.s7.tags.len()];
        for range in &plan.ranges {
            for &ti in &range.tags {
                let tag = &self.s7.tags[ti];
                let decoded = tag_bytes(tag, range, plan, &pieces).and_then(|b| decode(tag, &b));
                out[ti] = Some(reading(&self.cfg.id, tag, decoded, ts));
            }
        }
        out.into_iter().flatten().collect()
    }

    /// Reads every item of the plan; splits a merged range the PLC refused
    /// as out of range and reads again (once).
    async fn read_all(&mut self) -> Vec<Piece> {
        for attempt in 0..2 {
            if self.plan.is_none() {
                if let Err(e) = self.first_connect().await {
                    return vec![Err(e)];
                }
            }
            let Some((pdu, plan)) = self.plan.clone() else {
                return vec![Err(BadReason::Disconnected)];
            };
            let mut pieces: Vec<Piece> = vec![Err(BadReason::Disconnected); plan.items.len()];
            for req in &plan.requests {
                let items: Vec<proto::Item> = req.items.iter().map(|&i| plan.items[i]).collect();
                match self.request(&items).await {
                    Ok(results) => {
                        for (&i, r) in req.items.iter().zip(results) {
                            pieces[i] = match r {
                                ItemResult::Data(b) => Ok(b),
                                ItemResult::Code(rc) => Err(self.item_refused(&plan, i, rc)),
                            };
                        }
                    }
                    Err(why) => {
                        for &i in &req.items {
                            pieces[i] = Err(why.clone());
                        }
                    }
                }
            }
            if attempt == 0 && self.split_refused(&plan, &pieces) {
                self.rebuild(pdu);
                continue;
            }
            return pieces;
        }
        Vec::new()
    }

    async fn first_connect(&mut self) -> Result<(), BadReason> {
        if Instant::now() < self.resume_at {
            return Err(BadReason::Disconnected);
        }
        match self.ensure().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.warn("connect", &format!("Connect failed: {e}"));
                self.was_down = true;
                self.resume_at = Instant::now() + self.backoff.next_delay();
                Err(reason(&e))
            }
        }
    }

    fn item_refused(&mut self, plan: &plan::Plan, item: usize, rc: u8) -> BadReason {
        let (status, what) = item_status(rc);
        let it = plan.items[item];
        let merged = plan
            .ranges
            .iter()
            .any(|r| r.pieces.contains(&item) && r.tags.len() > 1);
        if !(rc == 0x05 && merged) {
            let key = format!("item:{}:{}", it.area.describe(), it.start);
            if let Some(suppressed) = self.log.check(&key) {
                tracing::warn!(
                    device = %self.cfg.id, area = %it.area.describe(), start = it.start, len = it.len,
                    return_code = rc, suppressed, "PLC refused an item: {what}"
                );
            }
        }
        BadReason::Status(status)
    }

    /// Marks the tags of merged ranges the PLC refused as out of range as
    /// solo; true when the plan must be rebuilt.
    fn split_refused(&mut self, plan: &plan::Plan, pieces: &[Piece]) -> bool {
        let mut changed = false;
        for r in &plan.ranges {
            let refused = r
                .pieces
                .iter()
                .any(|&i| pieces[i] == Err(BadReason::Status(item_status(0x05).0)));
            if refused && r.tags.len() > 1 {
                tracing::info!(
                    device = %self.cfg.id, area = %r.area.describe(), start = r.start, len = r.len,
                    "PLC refused a merged read; reading these tags one by one from now on"
                );
                for &t in &r.tags {
                    self.solo[t] = true;
                }
                changed = true;
            }
        }
        changed
    }

    fn all_bad(&self, why: BadReason, ts: i64) -> Vec<Reading> {
        self.s7
            .tags
            .iter()
            .map(|t| reading(&self.cfg.id, t, Err(why.clone()), ts))
            .collect()
    }
}

fn kind(e: &LinkError) -> &'static str {
    match e {
        LinkError::Timeout => "timeout",
        LinkError::Frame(_) => "decode",
        LinkError::Io(_) => "transport",
    }
}

fn reason(e: &LinkError) -> BadReason {
    match e {
        LinkError::Timeout => BadReason::Timeout,
        LinkError::Frame(FrameError::Refused { class, code }) => {
            BadReason::Status(refused_status(*class, *code).0)
        }
        LinkError::Frame(_) => BadReason::Decode,
        LinkError::Io(_) => BadReason::Disconnected,
    }
}

fn reading(device: &Arc<str>, tag: &S7Tag, decoded: Result<Value, BadReason>, ts: i64) -> Reading {
    let (value, quality) = match decoded {
        Ok(v) => (Some(v), Quality::Good),
        Err(r) => (None, Quality::Bad(r)),
    };
    Reading {
        device: device.clone(),
        tag: tag.name.clone(),
        value,
        quality,
        ts,
    }
}

/// A tag's bytes, gathered from the pieces of its range.
fn tag_bytes(
    tag: &S7Tag,
    range: &plan::Range,
    plan: &plan::Plan,
    pieces: &[Piece],
) -> Result<Vec<u8>, BadReason> {
    let start = tag.address.byte;
    let end = start + u32::from(tag.len());
    let mut out = Vec::with_capacity(usize::from(tag.len()));
    for &pi in &range.pieces {
        let it = plan.items[pi];
        let (a, b) = (it.start, it.start + u32::from(it.len));
        if b <= start || a >= end {
            continue;
        }
        let bytes = pieces.get(pi).cloned().unwrap_or(Err(BadReason::Decode))?;
        let from = (start.max(a) - a) as usize;
        let to = (end.min(b) - a) as usize;
        out.extend_from_slice(bytes.get(from..to).ok_or(BadReason::Decode)?);
    }
    if out.len() != usize::from(tag.len()) {
        return Err(BadReason::Decode);
    }
    Ok(out)
}

/// Decodes a tag's bytes (big-endian, as S7 stores everything) and scales.
pub fn decode(tag: &S7Tag, b: &[u8]) -> Result<Value, BadReason> {
    let v = decode_raw(tag.ty, tag.address.width, b)?;
    crate::source::modbus::decode::scaled(v, tag.scale, tag.offset).map_err(|_| BadReason::Decode)
}

/// Decodes without scaling; also used by `probe`.
pub fn decode_raw(ty: S7Type, width: address::Width, b: &[u8]) -> Result<Value, BadReason> {
    let need = usize::from(ty.size());
    let b = b.get(..need).ok_or(BadReason::Decode)?;
    let be2 = |b: &[u8]| [b[0], b[1]];
    let be4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    Ok(match ty {
        S7Type::Bool => match width {
            address::Width::Bit(bit) => Value::Bool((b[0] >> bit) & 1 == 1),
            _ => Value::Bool(b[0] != 0),
        },
        S7Type::Byte => Value::Int(i64::from(b[0])),
        S7Type::Word => Value::Int(i64::from(u16::from_be_bytes(be2(b)))),
        S7Type::Int => Value::Int(i64::from(i16::from_be_bytes(be2(b)))),
        S7Type::Dword => Value::Int(i64::from(u32::from_be_bytes(be4(b)))),
        S7Type::Dint => Value::Int(i64::from(i32::from_be_bytes(be4(b)))),
        S7Type::Real => finite(f64::from(f32::from_be_bytes(be4(b))))?,
        S7Type::Lreal => {
            let mut x = [0u8; 8];
            x.copy_from_slice(b);
            finite(f64::from_be_bytes(x))?
        }
        S7Type::String(n) => {
            let (max, actual) = (b[0], b[1]);
            // The actual length may not exceed the declared maximum nor the
            // bytes read.
            if actual > max || actual > n {
                return Err(BadReason::Decode);
            }
            let chars = &b[2..2 + usize::from(actual)];
            Value::Str(match std::str::from_utf8(chars) {
                Ok(s) => s.to_string(),
                // S7 strings are single-byte characters; outside UTF-8
                // read them as Latin-1.
                Err(_) => chars.iter().map(|&c| char::from(c)).collect(),
            })
        }
    })
}

fn finite(x: f64) -> Result<Value, BadReason> {
    if x.is_finite() {
        Ok(Value::Float(x))
    } else {
        Err(BadReason::Decode)
    }
}

/// An S7 device's poll task.
pub struct S7Source {
    poller: S7Poller,
}

impl S7Source {
    /// `None` unless `cfg` is an S7 device.
    pub fn new(cfg: Arc<DeviceConfig>, clock: Arc<dyn Clock>) -> Option<S7Source> {
        S7Poller::new(cfg, clock).map(|poller| S7Source { poller })
    }

    /// The task of `cfg`, whose S7 settings are `s7`.
    pub fn with(cfg: Arc<DeviceConfig>, s7: Arc<S7Device>, clock: Arc<dyn Clock>) -> S7Source {
        S7Source {
            poller: S7Poller::with(cfg, s7, clock),
        }
    }

    pub fn poller(&self) -> &S7Poller {
        &self.poller
    }
}

impl super::Source for S7Source {
    fn id(&self) -> &str {
        &self.poller.cfg.id
    }

    fn interval(&self) -> Duration {
        self.poller.clock.to_real(self.poller.cfg.poll_interval)
    }

    async fn poll_once(&mut self) -> Vec<Reading> {
        self.poller.poll().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use address::Width;

    #[test]
    fn values_decode_big_endian() {
        let d = |ty, w, b: &[u8]| decode_raw(ty, w, b);
        assert_eq!(
            d(S7Type::Bool, Width::Bit(3), &[0b1000]),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            d(S7Type::Bool, Width::Bit(2), &[0b1000]),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            d(S7Type::Int, Width::Word, &[0xFF, 0xFE]),
            Ok(Value::Int(-2))
        );
        assert_eq!(
            d(S7Type::Word, Width::Word, &[0xFF, 0xFE]),
            Ok(Value::Int(65534))
        );
        assert_eq!(
            d(S7Type::Dint, Width::Dword, &[0xFF; 4]),
            Ok(Value::Int(-1))
        );
        assert_eq!(
            d(S7Type::Real, Width::Dword, &23.5f32.to_be_bytes()),
            Ok(Value::Float(23.5))
        );
        assert_eq!(
            d(S7Type::Lreal, Width::Byte, &(-1.25f64).to_be_bytes()),
            Ok(Value::Float(-1.25))
        );
        assert_eq!(
            d(
                S7Type::String(6),
                Width::Byte,
                &[6, 3, b'a', b'b', b'c', 0, 0, 0]
            ),
            Ok(Value::Str("abc".into()))
        );
        assert_eq!(
            d(S7Type::String(6), Width::Byte, &[6, 7, 0, 0, 0, 0, 0, 0]),
            Err(BadReason::Decode)
        );
        assert_eq!(
            d(S7Type::Real, Width::Dword, &f32::NAN.to_be_bytes()),
            Err(BadReason::Decode)
        );
        assert_eq!(
            d(S7Type::Dword, Width::Dword, &[1, 2]),
            Err(BadReason::Decode)
        );
    }
}
