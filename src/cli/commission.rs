//! `scan` and `probe`: commissioning a bus without guessing unit ids or
//! byte orders. Both only read (function codes 01-04), like the agent.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::config::{
    self, DeviceConfig, DeviceProtocol, ModbusConfig, Parity, Protocol, SerialConfig,
};
use crate::source::modbus::commission::{
    choose, parse_area, parse_units, scan as scan_units, snippet, table, Answer, Expect,
    PROBE_TYPES,
};
use crate::source::modbus::decode::WordOrder;
use crate::source::modbus::plan::Block;
use crate::source::modbus::{AnyLink, Data, Link};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ParityArg {
    #[value(name = "N")]
    N,
    #[value(name = "E")]
    E,
    #[value(name = "O")]
    O,
}

/// How to reach the bus or device, when not taken from a config.
#[derive(Args, Debug)]
pub struct ConnArgs {
    /// Serial port of an RS-485 bus (Modbus RTU); prefer the stable
    /// /dev/serial/by-id/... name over /dev/ttyUSB0.
    #[arg(long, conflicts_with = "host")]
    pub port: Option<String>,
    /// A Modbus TCP device or gateway, HOST[:PORT] (port 502 if left out).
    #[arg(long)]
    pub host: Option<String>,
    /// With --host: the server forwards raw RTU frames (a serial device server).
    #[arg(long, requires = "host")]
    pub rtu_over_tcp: bool,
    /// Line speed of --port.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Parity of --port: N, E or O.
    #[arg(long, value_enum, ignore_case = true, default_value_t = ParityArg::N)]
    pub parity: ParityArg,
    /// Stop bits of --port: 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub stop_bits: u8,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Unit ids to try: 1-247, 1,7,42 or 1-10,42.
    #[arg(long, default_value = "1-247")]
    pub units: String,
    /// How long to wait for each unit; the scan takes at most this long per unit id.
    #[arg(long, default_value = "100ms")]
    pub timeout: String,
    /// Area to read from each unit: holding, input, coil or discrete. A
    /// unit that answers with an exception is listed too: it is there.
    #[arg(long, default_value = "holding")]
    pub area: String,
    /// 0-based address to read from each unit.
    #[arg(long, default_value_t = 0)]
    pub address: u16,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Config file; needed only with --device.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Take the connection and unit id from this device of --config.
    #[arg(long, requires = "config", conflicts_with_all = ["port", "host"])]
    pub device: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Unit id (default 1, or the device's).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=255))]
    pub unit: Option<u8>,
    /// holding, input, coil or discrete; for S7: DB10, M, I, Q or V.
    #[arg(long)]
    pub area: String,
    /// 0-based address of the first register (40101 in a manual is holding
    /// 100); for S7 the first byte.
    #[arg(long)]
    pub address: u16,
    /// S7 PLC (with --host, port 102): the CPU's rack.
    #[arg(long, requires = "slot", conflicts_with_all = ["port", "local_tsap", "remote_tsap"])]
    pub rack: Option<u8>,
    /// S7 PLC: the CPU's slot (S7-300: 2, S7-1200/1500: 1).
    #[arg(long, requires = "rack")]
    pub slot: Option<u8>,
    /// S7 PLC: local TSAP, e.g. 01.00 (instead of --rack/--slot).
    #[arg(long, requires = "remote_tsap", conflicts_with = "port")]
    pub local_tsap: Option<String>,
    /// S7 PLC: remote TSAP, e.g. 03.00.
    #[arg(long, requires = "local_tsap")]
    pub remote_tsap: Option<String>,
    /// Registers (or bits; for S7 bytes) to read, 1..=125.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=125))]
    pub count: u16,
    /// The value the HMI or manual shows; marks the combination that gives it.
    #[arg(long, allow_hyphen_values = true)]
    pub expect: Option<String>,
    /// How long to wait for the answer (default 1s, or the device's timeout).
    #[arg(long)]
    pub timeout: Option<String>,
}

/// Progress goes to stderr only when a person is watching both streams;
/// piped or redirected output stays clean.
fn progress_wanted() -> bool {
    std::io::stderr().is_terminal() && std::io::stdout().is_terminal()
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// A device description built from flags, so `scan` and `probe` use the
/// same links as `run`.
fn conn_device(c: &ConnArgs, unit: u8, timeout: Duration) -> Result<DeviceConfig, String> {
    let modbus = ModbusConfig {
        unit_id: unit,
        ..ModbusConfig::default()
    };
    let (protocol, address, serial) = match (&c.port, &c.host) {
        (Some(port), None) => (
            Protocol::ModbusRtu,
            port.clone(),
            Some(SerialConfig {
                baud: c.baud,
                parity: match c.parity {
                    ParityArg::N => Parity::N,
                    ParityArg::E => Parity::E,
                    ParityArg::O => Parity::O,
                },
                data_bits: 8,
                stop_bits: c.stop_bits,
            }),
        ),
        (None, Some(host)) => {
            let address = if host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                host.clone()
            } else {
                format!("{host}:502")
            };
            let protocol = if c.rtu_over_tcp {
                Protocol::ModbusRtuOverTcp
            } else {
                Protocol::ModbusTcp
            };
            (protocol, address, None)
        }
        _ => return Err(
            "say where the bus is: --port /dev/serial/by-id/... (RTU) or --host HOST[:PORT] (TCP)"
                .into(),
        ),
    };
    if serial.is_some() && !(300..=4_000_000).contains(&c.baud) {
        return Err(format!(
            "--baud {} is not a serial line speed; e.g. 9600 or 19200",
            c.baud
        ));
    }
    let protocol = match (protocol, serial) {
        (_, Some(serial)) => DeviceProtocol::Rtu { serial, modbus },
        (Protocol::ModbusRtuOverTcp, None) => DeviceProtocol::RtuOverTcp(modbus),
        _ => DeviceProtocol::ModbusTcp(modbus),
    };
    Ok(DeviceConfig {
        id: "cli".into(),
        address,
        poll_interval: Duration::from_secs(1),
        timeout,
        retries: 0,
        protocol,
    })
}

fn describe_link(d: &DeviceConfig) -> String {
    match d.serial() {
        Some(line) => format!("{} at {}", d.address, line.describe()),
        None => format!("{} ({})", d.address, d.protocol.name()),
    }
}

fn parse_timeout(flag: &str, s: &str) -> Result<Duration, ExitCode> {
    match config::parse_duration(s) {
        Some(d) if d >= Duration::from_millis(10) => Ok(d),
        _ => Err(usage(&format!(
            "{flag} {s:?}: write a duration of at least 10ms, e.g. 100ms or 1s"
        ))),
    }
}

pub async fn scan(a: ScanArgs) -> anyhow::Result<ExitCode> {
    let units = match parse_units(&a.units) {
        Ok(u) => u,
        Err(e) => return Ok(usage(&format!("--units {:?}: {e}", a.units))),
    };
    let timeout = match parse_timeout("--timeout", &a.timeout) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let Some(area) = parse_area(&a.area) else {
        return Ok(usage(&format!(
            "--area {:?}: use holding, input, coil or discrete",
            a.area
        )));
    };
    let dev = match conn_device(&a.conn, 1, timeout) {
        Ok(d) => d,
        Err(e) => return Ok(usage(&e)),
    };
    let mut link = AnyLink::for_device(&dev);
    let gap = match &link {
        AnyLink::Bus(b) => b.gap(),
        AnyLink::Tcp(_) => Duration::ZERO,
    };
    let bound = (timeout + gap + Duration::from_millis(5)) * units.len() as u32;
    println!(
        "Scanning {} for {} unit id(s), {} {} each, {} per id: at most {:.0}s",
        describe_link(&dev),
        units.len(),
        area.name(),
        a.address,
        humantime(timeout),
        bound.as_secs_f64().ceil()
    );
    let block = Block {
        area,
        start: a.address,
        count: 1,
        tags: Vec::new(),
    };
    let show = progress_wanted();
    let t0 = Instant::now();
    let result = scan_units(&mut link, &units, &block, timeout, |done, total, found| {
        if show {
            eprint!("\r  {done}/{total} unit ids tried, {found} answered ");
        }
    })
    .await;
    if show {
        eprint!("\r\x1b[2K");
    }
    let found = match result {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for f in &found {
        let what = match &f.answer {
            Answer::Data(Data::Words(w)) => format!(
                "{} {} = 0x{:04X}",
                area.name(),
                a.address,
                w.first().copied().unwrap_or(0)
            ),
            Answer::Data(Data::Bits(b)) => format!(
                "{} {} = {}",
                area.name(),
                a.address,
                u8::from(b.first().copied().unwrap_or(false))
            ),
            Answer::Exception(c) => {
                format!("exception {c} ({}): the unit is there", exception_name(*c))
            }
            Answer::Garbled(why) => format!(
                "garbled answer ({why}): check baud rate and parity, or two units share this id"
            ),
        };
        println!(
            "unit {:>3}  {:>8.1} ms  {what}",
            f.unit,
            f.elapsed.as_secs_f64() * 1000.0
        );
    }
    let ids: Vec<String> = found.iter().map(|f| f.unit.to_string()).collect();
    println!(
        "{} of {} unit id(s) answered in {:.1}s{}{}",
        found.len(),
        units.len(),
        t0.elapsed().as_secs_f64(),
        if ids.is_empty() { "" } else { ": " },
        ids.join(", ")
    );
    if found.is_empty() {
        println!(
            "No unit answered: check wiring (A/B swapped?), baud rate, parity and termination."
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target failed to respond",
        _ => "other",
    }
}

fn humantime(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "a CLI command read top to bottom: check the options, open the link, read, print; not split yet"
)]
pub async fn probe(a: ProbeArgs) -> anyhow::Result<ExitCode> {
    if u32::from(a.address) + u32::from(a.count) > 65536 {
        return Ok(usage(&format!(
            "--address {} --count {} runs beyond 65535",
            a.address, a.count
        )));
    }
    let expect = match &a.expect {
        Some(s) => match Expect::parse(s) {
            Some(e) => Some(e),
            None => return Ok(usage(&format!("--expect {s:?}: write a number, e.g. 23.5"))),
        },
        None => None,
    };
    let timeout = match &a.timeout {
        Some(t) => match parse_timeout("--timeout", t) {
            Ok(t) => Some(t),
            Err(code) => return Ok(code),
        },
        None => None,
    };
    let s7_flags = a.rack.is_some() || a.local_tsap.is_some();
    let mut dev = match (&a.device, &a.config) {
        (Some(id), Some(path)) => {
            let c = match super::load_config(path) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let Some(d) = c.devices.iter().find(|d| &*d.id == id) else {
                let ids: Vec<&str> = c.devices.iter().map(|d| &*d.id).collect();
                return Ok(usage(&format!(
                    "{}: no device {id:?}; devices are: {}",
                    path.display(),
                    ids.join(", ")
                )));
            };
            let mut d = (**d).clone();
            d.retries = 0;
            if let Some(t) = timeout {
                d.timeout = t;
            }
            d
        }
        _ if s7_flags => {
            conn_device(&a.conn, 1, Duration::from_secs(1)).unwrap_or_else(|_| blank_device())
        }
        _ => match conn_device(&a.conn, 1, timeout.unwrap_or(Duration::from_secs(1))) {
            Ok(d) => d,
            Err(e) => return Ok(usage(&e)),
        },
    };
    if s7_flags || dev.s7().is_some() {
        return probe_s7(&a, &dev, expect, timeout).await;
    }
    let Some(area) = parse_area(&a.area) else {
        return Ok(usage(&format!(
            "--area {:?}: use holding, input, coil or discrete (or, for an S7 PLC, DB<n>, M, I, Q or V with --rack/--slot)",
            a.area
        )));
    };
    if let (Some(u), Some(m)) = (a.unit, dev.modbus_mut()) {
        m.unit_id = u;
    }
    let dev = Arc::new(dev);
    let unit = dev.modbus().map_or(0, |m| m.unit_id);
    let mut link = AnyLink::for_device(&dev);
    if let Err(why) = link.ensure(dev.timeout).await {
        eprintln!("error: cannot reach {}: {why}", describe_link(&dev));
        return Ok(ExitCode::FAILURE);
    }
    let block = Block {
        area,
        start: a.address,
        count: a.count,
        tags: Vec::new(),
    };
    let t0 = Instant::now();
    let data = match link.read(unit, &block, dev.timeout).await {
        Ok(d) => d,
        Err(f) => {
            eprintln!("error: unit {} at {}: {f}", unit, describe_link(&dev));
            return Ok(ExitCode::FAILURE);
        }
    };
    let end = u32::from(a.address) + u32::from(a.count) - 1;
    println!(
        "{} {}..={} of unit {} at {} ({:.1} ms)",
        area.name(),
        a.address,
        end,
        unit,
        describe_link(&dev),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let regs = match data {
        Data::Bits(bits) => {
            for (i, b) in bits.iter().take(usize::from(a.count)).enumerate() {
                println!("  {:>5}  {}", usize::from(a.address) + i, u8::from(*b));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Data::Words(w) => w,
    };
    println!(
        "  {:>7}  {:<6}  {:>6}  {:>6}",
        "address", "hex", "u16", "i16"
    );
    for (i, r) in regs.iter().enumerate() {
        println!(
            "  {:>7}  0x{r:04X}  {:>6}  {:>6}",
            usize::from(a.address) + i,
            r,
            *r as i16
        );
    }
    let cells = table(&regs, expect);
    println!();
    println!("Decoded from {} {}:", area.name(), a.address);
    let mut header = format!("  {:<5}", "type");
    for o in WordOrder::ALL {
        header.push_str(&format!("  {:<24}", format!("{o:?}")));
    }
    println!("{}", header.trim_end());
    for ty in PROBE_TYPES {
        let mut line = format!("  {:<5}", ty.name());
        for c in cells.iter().filter(|c| c.ty == ty) {
            let marked = if expect.is_some() {
                c.matches
            } else {
                c.plausible
            };
            let text = format!("{}{}", c.text(), if marked { " *" } else { "" });
            line.push_str(&format!("  {text:<24}"));
        }
        println!("{}", line.trim_end());
    }
    let marked = cells
        .iter()
        .filter(|c| {
            if expect.is_some() {
                c.matches
            } else {
                c.plausible
            }
        })
        .count();
    match (&a.expect, expect) {
        (Some(text), Some(e)) => println!("  * gives {text} (within ±{})", trim_float(e.tolerance)),
        _ => println!("  * plausible float: finite, normal, 1e-3 <= |x| <= 1e7"),
    }
    println!();
    match choose(&cells, expect) {
        Some(c) => {
            println!(
                "Suggested: {} {:?} = {}{}",
                c.ty.name(),
                c.order,
                c.text(),
                if marked > 1 {
                    format!(" ({marked} combinations are marked: this is the smallest type in the most usual order; confirm with --expect and a second reading)")
                } else {
                    String::new()
                }
            );
            println!();
            print!("{}", snippet(area, a.address, c));
            Ok(ExitCode::SUCCESS)
        }
        None if expect.is_some() => {
            println!(
                "No type or order gives {}: check the address (0-based: 40101 is holding 100), the area, the unit id, and any scaling (values ×10 or ×100 are common).",
                a.expect.as_deref().unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
        None => {
            println!("No plausible float here. If the value is an integer or scaled, run again with --expect and the value the HMI shows.");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A stand-in for an S7 probe given by flags alone: only its timeout is
/// used, and having no S7 settings it sends `probe_s7` to the flags.
fn blank_device() -> DeviceConfig {
    DeviceConfig {
        id: "cli".into(),
        address: String::new(),
        poll_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        retries: 0,
        protocol: DeviceProtocol::ModbusTcp(ModbusConfig::default()),
    }
}

/// `probe` of an S7 PLC: from flags, or from an S7 device of the config.
async fn probe_s7(
    a: &ProbeArgs,
    dev: &DeviceConfig,
    expect: Option<Expect>,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    use crate::source::s7::{client::Connection, commission as s7c, config as s7cfg, proto};
    let Some(area) = s7c::parse_area(&a.area) else {
        return Ok(usage(&format!(
            "--area {:?}: for an S7 PLC use DB<n> (e.g. DB10), M, I, Q or V",
            a.area
        )));
    };
    let timeout = timeout.unwrap_or(dev.timeout);
    let (address, local, remote) = match (dev.s7(), a.rack, a.slot, &a.local_tsap, &a.remote_tsap) {
        (_, Some(rack), Some(slot), _, _) => {
            (s7_host(a)?, s7cfg::DEFAULT_LOCAL_TSAP, s7cfg::rack_slot_tsap(rack & 7, slot & 31))
        }
        (_, _, _, Some(l), Some(r)) => match (s7cfg::parse_tsap(l), s7cfg::parse_tsap(r)) {
            (Some(l), Some(r)) => (s7_host(a)?, l, r),
            _ => return Ok(usage("--local-tsap/--remote-tsap: write each as two hex bytes, e.g. 01.00 and 03.00")),
        },
        (Some(s7), ..) => (dev.address.clone(), s7.local_tsap, s7.remote_tsap),
        _ => return Ok(usage("an S7 probe needs --host with --rack/--slot or --local-tsap/--remote-tsap, or --device of an S7 device")),
    };
    let mut conn =
        match Connection::open(&address, local, remote, s7cfg::DEFAULT_PDU, timeout).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot reach the S7 PLC at {address}: {e}");
                return Ok(ExitCode::FAILURE);
            }
        };
    let item = proto::Item {
        area,
        start: u32::from(a.address),
        len: a.count,
    };
    let t0 = Instant::now();
    let bytes = match conn.read(&[item], timeout).await {
        Ok(mut r) => match r.pop() {
            Some(proto::ItemResult::Data(b)) => b,
            Some(proto::ItemResult::Code(rc)) => {
                let (status, what) = crate::source::s7::item_status(rc);
                eprintln!("error: {status} (return code 0x{rc:02X}): {what}");
                return Ok(ExitCode::FAILURE);
            }
            None => anyhow::bail!("empty answer"),
        },
        Err(e) => {
            eprintln!("error: reading from {address}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "{} bytes {}..={} of the S7 PLC at {address} (PDU {}, {:.1} ms)",
        area.describe(),
        a.address,
        u32::from(a.address) + u32::from(a.count) - 1,
        conn.pdu(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    println!("  {:>6}  {:<23}  bits 7..0", "byte", "hex");
    print!("{}", s7c::hex_dump(&bytes, u32::from(a.address)));
    let cells = s7c::table(&bytes, u32::from(a.address), expect);
    println!();
    let mut header = format!("  {:>6}", "offset");
    for ty in s7c::PROBE_TYPES
        .iter()
        .filter(|t| **t != crate::source::s7::address::S7Type::Bool)
    {
        header += &format!("  {:<16}", ty.name());
    }
    println!("{}", header.trim_end());
    for off in 0..bytes.len() as u32 {
        let offset = u32::from(a.address) + off;
        let mut line = format!("  {offset:>6}");
        for c in cells.iter().filter(|c| c.offset == offset) {
            let text = format!("{}{}", c.value, if c.marked { " *" } else { "" });
            line += &format!("  {text:<16}");
        }
        println!("{}", line.trim_end());
    }
    match (&a.expect, expect) {
        (Some(text), Some(e)) => println!("  * gives {text} (within ±{})", trim_float(e.tolerance)),
        _ => println!("  * plausible real: finite, normal, 1e-3 <= |x| <= 1e7"),
    }
    println!();
    match s7c::choose(&cells) {
        Some(c) => {
            println!(
                "Suggested: {} {} = {}",
                s7c::address_of(area, c.offset, c.ty),
                c.ty.name(),
                c.value
            );
            println!();
            print!("{}", s7c::snippet(area, c));
            Ok(ExitCode::SUCCESS)
        }
        None if expect.is_some() => {
            println!(
                "No offset and type give {}: check the DB number and offset, and any scaling (values ×10 or ×100 are common).",
                a.expect.as_deref().unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `--host` for S7, port 102 unless given.
fn s7_host(a: &ProbeArgs) -> anyhow::Result<String> {
    let Some(host) = &a.conn.host else {
        anyhow::bail!("an S7 probe needs --host HOST[:PORT] (port 102 if left out)");
    };
    Ok(
        if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.clone()
        } else {
            format!("{host}:102")
        },
    )
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.10}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `read --device` of an S7 device: one poll cycle, the plan's requests
/// against the fewest the PDU allows, and what to change for refused tags.
pub async fn read_s7(dev: &Arc<crate::config::DeviceConfig>) -> anyhow::Result<ExitCode> {
    use crate::source::s7::{item_status, S7Poller};
    let Some(mut poller) = S7Poller::new(dev.clone(), Arc::new(crate::clock::SystemClock)) else {
        anyhow::bail!("{}: not an S7 device", dev.id);
    };
    let readings = poller.poll().await;
    let plan = poller
        .plan_stats()
        .map(|(pdu, requests, min)| {
            format!("PDU {pdu}, requests per cycle: {requests} (the fewest the PDU allows: {min})")
        })
        .unwrap_or_else(|| "not connected".into());
    println!("{} (s7 {}): {plan}", dev.id, dev.address);
    println!(
        "{:<24} {:<16} {:<11} {:>14} {:<8} quality",
        "tag", "address", "type", "value", "unit"
    );
    let tags = dev.s7().map(|s| s.tags.as_slice()).unwrap_or_default();
    let mut advice: Vec<&str> = Vec::new();
    for (r, t) in readings.iter().zip(tags) {
        let value = r
            .value
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let quality = match &r.quality {
            crate::reading::Quality::Good => "good".to_string(),
            crate::reading::Quality::Bad(why) => {
                if let crate::reading::BadReason::Status(name) = why {
                    for rc in [0x0A, 0x05, 0x03] {
                        let (status, what) = item_status(rc);
                        if status == *name && !advice.contains(&what) {
                            advice.push(what);
                        }
                    }
                }
                format!("bad ({why})")
            }
        };
        println!(
            "{:<24} {:<16} {:<11} {:>14} {:<8} {}",
            t.name,
            t.text,
            t.ty.name(),
            value,
            t.unit.as_deref().unwrap_or(""),
            quality
        );
    }
    for what in advice {
        println!("note: {what}");
    }
    let bad = readings.iter().filter(|r| !r.quality.is_good()).count();
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
