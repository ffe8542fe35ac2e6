//! A simulated S7 PLC: an S7comm server on loopback that answers like a
//! real CPU.
//!
//! * COTP connect with any TSAPs, then Setup Communication: the PDU size
//!   granted is the smaller of the one asked for and the CPU's own
//!   (240 by default, as an S7-1200 or S7-300).
//! * Read Var: one return code per item: `0x0A` for a DB that does not
//!   exist, `0x05` for a range past the end of an area, `0x03` for a DB
//!   marked as protected (an optimised DB of an S7-1200/1500); a request
//!   or answer larger than the PDU is refused as a whole, as a CPU does.
//! * Every other function (Write Var, PLC control, ...) is refused and
//!   counted, so tests can assert that the agent never sent one.
//! * Fault switches: silence, and refusing every read with error class
//!   0x81 code 0x04 (an S7-1200/1500 with PUT/GET off).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::source::s7::proto::{self, Area, ItemResult, Job};

/// The memory of a demo line PLC: DB 10 of 32 bytes (see [`write_line`]),
/// 16 bytes each of I, Q and M.
pub fn line_memory() -> Memory {
    let mut m = Memory::new(16);
    m.dbs.insert(10, vec![0; 32]);
    m
}

/// Writes a line's state into its memory. The map, as the demo config
/// reads it:
///
/// | address        | type        | meaning                                 |
/// |----------------|-------------|-----------------------------------------|
/// | `DB10.DBW0`    | int         | mode: 0 manual, 1 automatic             |
/// | `DB10.DBX2.0`  | bool        | line running (in production)            |
/// | `DB10.DBD4`    | real        | line speed, strokes per minute          |
/// | `DB10.DBD8`    | dint        | part counter                            |
/// | `DB10.DBB12`   | string(16)  | recipe                                  |
/// | `I0.0`         | bool        | safety guard closed                     |
/// | `Q0.0`         | bool        | main drive on                           |
pub(crate) fn write_line(m: &mut Memory, i: u64, moment: &super::Moment) {
    let mode: i16 = if moment.manual { 0 } else { 1 };
    m.put(Area::Db(10), 0, &mode.to_be_bytes());
    m.put_bit(Area::Db(10), 2, 0, moment.running);
    let speed = if moment.running {
        24.0 + 2.0 * (moment.t * 0.3 + i as f64).sin()
    } else {
        0.0
    };
    m.put(Area::Db(10), 4, &(speed as f32).to_be_bytes());
    let parts = (1000 * i) as i32 + moment.cycles_done as i32;
    m.put(Area::Db(10), 8, &parts.to_be_bytes());
    m.put_string(Area::Db(10), 12, 16, "BRACKET-A");
    m.put_bit(Area::Inputs, 0, 0, true);
    m.put_bit(Area::Outputs, 0, 0, moment.running);
}

/// The memory of a simulated CPU.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub inputs: Vec<u8>,
    pub outputs: Vec<u8>,
    pub flags: Vec<u8>,
    pub dbs: HashMap<u16, Vec<u8>>,
    /// DBs that exist but refuse access (code 0x03).
    pub protected: HashSet<u16>,
}

impl Memory {
    /// I, Q and M of `size` bytes each, no DBs.
    pub fn new(size: usize) -> Memory {
        Memory {
            inputs: vec![0; size],
            outputs: vec![0; size],
            flags: vec![0; size],
            ..Default::default()
        }
    }

    fn area_mut(&mut self, area: Area) -> Option<&mut Vec<u8>> {
        match area {
            Area::Inputs => Some(&mut self.inputs),
            Area::Outputs => Some(&mut self.outputs),
            Area::Flags => Some(&mut self.flags),
            Area::Db(n) => self.dbs.get_mut(&n),
        }
    }

    /// Writes `bytes` at `start` of `area` (the simulation's own writes);
    /// out-of-range writes are cut off.
    pub fn put(&mut self, area: Area, start: usize, bytes: &[u8]) {
        if let Some(mem) = self.area_mut(area) {
            for (i, b) in bytes.iter().enumerate() {
                if let Some(slot) = mem.get_mut(start + i) {
                    *slot = *b;
                }
            }
        }
    }

    /// Sets or clears one bit.
    pub fn put_bit(&mut self, area: Area, byte: usize, bit: u8, on: bool) {
        if let Some(slot) = self.area_mut(area).and_then(|m| m.get_mut(byte)) {
            if on {
                *slot |= 1 << bit;
            } else {
                *slot &= !(1 << bit);
            }
        }
    }

    /// Writes an S7 STRING with room for `max` characters.
    pub fn put_string(&mut self, area: Area, start: usize, max: u8, s: &str) {
        let chars: Vec<u8> = s.bytes().take(usize::from(max)).collect();
        let mut bytes = vec![max, chars.len() as u8];
        bytes.extend_from_slice(&chars);
        bytes.resize(usize::from(max) + 2, 0);
        self.put(area, start, &bytes);
    }

    fn read(&self, area: Area, start: u32, len: u16) -> ItemResult {
        let mem = match area {
            Area::Inputs => &self.inputs,
            Area::Outputs => &self.outputs,
            Area::Flags => &self.flags,
            Area::Db(n) if self.protected.contains(&n) => return ItemResult::Code(0x03),
            Area::Db(n) => match self.dbs.get(&n) {
                Some(db) => db,
                None => return ItemResult::Code(0x0A),
            },
        };
        let (start, end) = (start as usize, start as usize + usize::from(len));
        match mem.get(start..end) {
            Some(b) => ItemResult::Data(b.to_vec()),
            None => ItemResult::Code(0x05),
        }
    }
}

/// What the simulated CPU saw, for assertions.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    /// Read Var requests answered.
    pub reads: AtomicU64,
    /// Items read.
    pub items: AtomicU64,
    /// Requests for any function other than Setup Communication and Read
    /// Var (writes, PLC control): must stay 0 for the agent.
    pub writes: AtomicU64,
}

/// Fault switches, flipped by tests at run time.
#[derive(Debug, Default)]
pub struct Faults {
    /// Swallow every request.
    pub silent: AtomicBool,
    /// Refuse every read with error class 0x81, code 0x04.
    pub put_get_off: AtomicBool,
}

/// A running simulated S7 PLC.
pub struct SimS7 {
    pub addr: SocketAddr,
    pub memory: Arc<Mutex<Memory>>,
    pub counters: Arc<Counters>,
    pub faults: Arc<Faults>,
    stop: watch::Sender<bool>,
}

impl SimS7 {
    /// Starts a CPU with PDU size `pdu` on 127.0.0.1 and an ephemeral port.
    pub async fn start(memory: Memory, pdu: u16) -> std::io::Result<SimS7> {
        Self::start_on(([127, 0, 0, 1], 0).into(), memory, pdu).await
    }

    /// Starts a CPU on a given address (tests restart a PLC on its port).
    pub async fn start_on(addr: SocketAddr, memory: Memory, pdu: u16) -> std::io::Result<SimS7> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let sim = SimS7 {
            addr,
            memory: Arc::new(Mutex::new(memory)),
            counters: Arc::default(),
            faults: Arc::default(),
            stop,
        };
        let cpu = Cpu {
            memory: sim.memory.clone(),
            counters: sim.counters.clone(),
            faults: sim.faults.clone(),
            pdu,
        };
        tokio::spawn(accept(listener, Arc::new(cpu), stop_rx));
        Ok(sim)
    }

    /// Stops listening and drops every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for SimS7 {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Cpu {
    memory: Arc<Mutex<Memory>>,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
    pdu: u16,
}

async fn accept(listener: TcpListener, cpu: Arc<Cpu>, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        cpu.counters.connections.fetch_add(1, Ordering::Relaxed);
        let (cpu, mut stop) = (cpu.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = serve(stream, &cpu) => {}
                _ = stop.changed() => {}
            }
        });
    }
}

async fn frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; proto::TPKT_LEN];
    s.read_exact(&mut head).await.ok()?;
    let len = proto::tpkt_payload_len(head).ok()?;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

async fn serve(mut s: TcpStream, cpu: &Cpu) -> Option<()> {
    let _ = s.set_nodelay(true);
    let cr = frame(&mut s).await?;
    if cr.get(1) != Some(&0xE0) {
        return None;
    }
    s.write_all(&proto::connect_confirm(0x0100, 0x0102))
        .await
        .ok()?;
    let mut pdu = cpu.pdu;
    loop {
        let payload = frame(&mut s).await?;
        if cpu.faults.silent.load(Ordering::Relaxed) {
            continue;
        }
        let (pdu_ref, job) = proto::parse_job(&payload).ok()?;
        let reply = match job {
            Job::Setup { pdu: asked } => {
                pdu = asked.min(cpu.pdu);
                let mut param = vec![0xF0, 0x00, 0x00, 0x01, 0x00, 0x01];
                param.extend_from_slice(&pdu.to_be_bytes());
                proto::ack(pdu_ref, (0, 0), &param, &[])
            }
            Job::Read { items } => read(cpu, pdu, pdu_ref, &items, payload.len()),
            Job::Other { .. } => {
                cpu.counters.writes.fetch_add(1, Ordering::Relaxed);
                proto::ack(pdu_ref, (0x81, 0x04), &[], &[])
            }
        };
        s.write_all(&reply).await.ok()?;
    }
}

fn read(cpu: &Cpu, pdu: u16, pdu_ref: u16, items: &[proto::Item], payload_len: usize) -> Vec<u8> {
    cpu.counters.reads.fetch_add(1, Ordering::Relaxed);
    if cpu.faults.put_get_off.load(Ordering::Relaxed) {
        return proto::ack(pdu_ref, (0x81, 0x04), &[], &[]);
    }
    // The request's S7 PDU: the payload less the COTP data header.
    let request_pdu = payload_len.saturating_sub(3);
    let answer: usize = proto::ANSWER_BASE
        + items
            .iter()
            .map(|it| proto::answer_item_size(usize::from(it.len)))
            .sum::<usize>()
        - items.last().map_or(0, |it| usize::from(it.len) & 1);
    if request_pdu > usize::from(pdu) || answer > usize::from(pdu) || items.len() > 20 {
        return proto::ack(pdu_ref, (0x85, 0x00), &[], &[]);
    }
    cpu.counters
        .items
        .fetch_add(items.len() as u64, Ordering::Relaxed);
    let results: Vec<ItemResult> = {
        let mem = cpu.memory.lock().unwrap_or_else(|e| e.into_inner());
        items
            .iter()
            .map(|it| mem.read(it.area, it.start, it.len))
            .collect()
    };
    proto::ack(
        pdu_ref,
        (0, 0),
        &[0x04, items.len() as u8],
        &proto::read_answer_data(&results),
    )
}
