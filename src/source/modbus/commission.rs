//! Commissioning helpers behind `scan` and `probe`: which unit ids answer
//! on a bus, and what a register image means in every type and order, so
//! nobody has to guess a device's byte order.

use std::time::{Duration, Instant};

use super::decode::{decode_registers, DataType, DecodeError, WordOrder};
use super::plan::{Area, Block};
use super::{Data, Failure, Link};
use crate::reading::Value;

/// What a unit said to the scan's read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The registers or bits asked for.
    Data(Data),
    /// A Modbus exception: the unit is there, it just does not map the
    /// address (or is busy).
    Exception(u8),
    /// A frame came back but was broken: typically a wrong baud rate or
    /// parity, or two units sharing an id.
    Garbled(String),
}

/// A unit id that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub unit: u8,
    /// From sending the request to having the answer.
    pub elapsed: Duration,
    pub answer: Answer,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot reach {endpoint}: {why}")]
    Link {
        endpoint: String,
        why: super::ConnectError,
    },
}

/// Exceptions with which a TCP gateway says "no device behind me answers
/// to this id": 0x0A gateway path unavailable, 0x0B target failed to respond.
fn is_gateway_miss(code: u8) -> bool {
    code == 0x0A || code == 0x0B
}

/// A unit-id list that `scan --units` cannot use.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitsError {
    #[error("{0:?} is not a unit id; use 1..=247")]
    NotAUnit(String),
    #[error("{0:?} runs backwards; write e.g. 1-247")]
    Backwards(String),
    #[error("no unit ids given; write e.g. 1-247 or 1,7,42")]
    Empty,
}

/// Parses "1-247", "1,7,42" or "1-10,42" into unit ids (1..=247 each).
pub fn parse_units(s: &str) -> Result<Vec<u8>, UnitsError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |x: &str| match x.parse::<u8>() {
            Ok(u @ 1..=247) => Ok(u),
            _ => Err(UnitsError::NotAUnit(x.to_string())),
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(UnitsError::Backwards(part.to_string()));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(UnitsError::Empty);
    }
    Ok(out)
}

/// Asks every unit in `units` for `block` and lists those that answered.
/// Takes at most `units.len() * timeout` plus the line gaps. `progress`
/// is called after each unit with (units done, units total, found so far).
pub async fn scan<L: Link>(
    link: &mut L,
    units: &[u8],
    block: &Block,
    timeout: Duration,
    mut progress: impl FnMut(usize, usize, usize),
) -> Result<Vec<Found>, ScanError> {
    let mut found = Vec::new();
    for (n, &unit) in units.iter().enumerate() {
        if let Err(why) = link.ensure(timeout).await {
            return Err(ScanError::Link {
                endpoint: link.endpoint().to_string(),
                why,
            });
        }
        let t0 = Instant::now();
        let result = link.read(unit, block, timeout).await;
        let elapsed = t0.elapsed();
        let answer = match result {
            Ok(d) => Some(Answer::Data(d)),
            Err(Failure::Exception(c)) if is_gateway_miss(c) => None,
            Err(Failure::Exception(c)) => Some(Answer::Exception(c)),
            Err(Failure::Decode(why)) => Some(Answer::Garbled(why)),
            Err(Failure::Timeout | Failure::Disconnected(_)) => None,
        };
        if let Some(answer) = answer {
            found.push(Found {
                unit,
                elapsed,
                answer,
            });
        }
        progress(n + 1, units.len(), found.len());
    }
    Ok(found)
}

/// The types `probe` tries, in the order it prints them.
pub const PROBE_TYPES: [DataType; 8] = [
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::F32,
    DataType::U64,
    DataType::I64,
    DataType::F64,
];

/// The value an engineer expects (from the HMI or the manual), with the
/// precision it was written with: "23.5" matches 23.45 ..= 23.55.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expect {
    pub value: f64,
    pub tolerance: f64,
}

impl Expect {
    pub fn parse(s: &str) -> Option<Expect> {
        let s = s.trim();
        let value: f64 = s.parse().ok().filter(|v: &f64| v.is_finite())?;
        let tolerance = if s.contains(['e', 'E']) {
            value.abs() * 1e-6
        } else {
            let decimals = s.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
            0.5 * 10f64.powi(-decimals)
        };
        Some(Expect { value, tolerance })
    }

    pub fn matches(&self, x: f64) -> bool {
        (x - self.value).abs() <= self.tolerance * (1.0 + 1e-9)
    }

    fn is_integral(&self) -> bool {
        self.value.fract() == 0.0
    }
}

/// A float a device could plausibly hold: finite, normal, and of a
/// magnitude a process value has (1e-3 ..= 1e7).
pub fn plausible_float(x: f64) -> bool {
    x.is_normal() && (1e-3..=1e7).contains(&x.abs())
}

/// One type in one order.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub ty: DataType,
    pub order: WordOrder,
    /// `Short` when the registers read are too few for the type.
    pub value: Result<Value, DecodeError>,
    /// A float that passes [`plausible_float`].
    pub plausible: bool,
    /// Equals the expected value, if one was given.
    pub matches: bool,
}

impl Cell {
    /// The value as printed: f32 in its own shortest form.
    pub fn text(&self) -> String {
        match &self.value {
            Ok(Value::Float(x)) => {
                let x = *x;
                if x != 0.0 && (x.abs() < 1e-4 || x.abs() >= 1e9) {
                    if self.ty == DataType::F32 {
                        format!("{:.4e}", x as f32)
                    } else {
                        format!("{x:.6e}")
                    }
                } else if self.ty == DataType::F32 {
                    format!("{}", x as f32)
                } else {
                    format!("{x}")
                }
            }
            Ok(v) => v.to_string(),
            Err(DecodeError::NotFinite) => "NaN/inf".into(),
            Err(_) => "-".into(),
        }
    }
}

/// Decodes the start of `regs` as every probe type in all four orders.
pub fn table(regs: &[u16], expect: Option<Expect>) -> Vec<Cell> {
    let mut cells = Vec::new();
    for ty in PROBE_TYPES {
        for order in WordOrder::ALL {
            let value = decode_registers(regs, ty, order, None);
            let x = value.as_ref().ok().and_then(Value::as_f64);
            let is_float = matches!(ty, DataType::F32 | DataType::F64);
            let plausible = is_float && x.is_some_and(plausible_float);
            let matches = match (expect, &value) {
                (Some(e), Ok(Value::UInt(u))) => e.matches(*u as f64),
                (Some(e), Ok(Value::Int(i))) => e.matches(*i as f64),
                (Some(e), Ok(Value::Float(f))) => e.matches(*f),
                _ => false,
            };
            cells.push(Cell {
                ty,
                order,
                value,
                plausible,
                matches,
            });
        }
    }
    cells
}

/// The combination to suggest: with an expected value, the matching one
/// that claims least (fewest registers, unsigned before signed; floats
/// first for a fractional value); without one, the first plausible float.
/// Within a type, ABCD (the standard) before CDAB, BADC, DCBA.
pub fn choose(cells: &[Cell], expect: Option<Expect>) -> Option<&Cell> {
    let type_rank = |ty: DataType| -> usize {
        let order: &[DataType] = match expect {
            Some(e) if e.is_integral() => &PROBE_TYPES,
            _ => &[
                DataType::F32,
                DataType::F64,
                DataType::U16,
                DataType::I16,
                DataType::U32,
                DataType::I32,
                DataType::U64,
                DataType::I64,
            ],
        };
        order.iter().position(|&t| t == ty).unwrap_or(usize::MAX)
    };
    let order_rank = |o: WordOrder| WordOrder::ALL.iter().position(|&x| x == o);
    cells
        .iter()
        .filter(|c| {
            if expect.is_some() {
                c.matches
            } else {
                c.plausible
            }
        })
        .min_by_key(|c| (type_rank(c.ty), order_rank(c.order)))
}

/// A `[[devices.tags]]` block for the chosen combination, ready to paste.
pub fn snippet(area: Area, address: u16, cell: &Cell) -> String {
    let prefix = match area {
        Area::HoldingRegister => "hr",
        Area::InputRegister => "ir",
        Area::Coil => "coil",
        Area::DiscreteInput => "di",
    };
    format!(
        "[[devices.tags]]\nname = \"{prefix}_{address}\"          # give it a meaningful name\narea = \"{}\"\naddress = {address}\ntype = \"{}\"\norder = \"{:?}\"\n",
        area.name(),
        cell.ty.name(),
        cell.order
    )
}

/// Parses the area names `scan` and `probe` accept.
pub fn parse_area(s: &str) -> Option<Area> {
    Some(match s {
        "holding" | "holding_register" | "hr" => Area::HoldingRegister,
        "input" | "input_register" | "ir" => Area::InputRegister,
        "coil" | "coils" => Area::Coil,
        "discrete" | "discrete_input" | "di" => Area::DiscreteInput,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(cells: &[Cell], ty: DataType, order: WordOrder) -> &Cell {
        cells
            .iter()
            .find(|c| c.ty == ty && c.order == order)
            .expect("every type and order is in the table")
    }

    #[test]
    fn classic_23_5_stored_cdab() {
        let regs = [0x0000, 0x41BC];
        let e = Expect::parse("23.5");
        let cells = table(&regs, e);
        assert_eq!(cells.len(), 32);
        let c = cell(&cells, DataType::F32, WordOrder::CDAB);
        assert_eq!(c.value, Ok(Value::Float(23.5)));
        assert!(c.matches && c.plausible);
        // The other orders give tiny denormals or a small negative number.
        assert_eq!(
            cell(&cells, DataType::F32, WordOrder::ABCD).text(),
            "2.3581e-41"
        );
        assert!(!cell(&cells, DataType::F32, WordOrder::ABCD).plausible);
        assert!(!cell(&cells, DataType::F32, WordOrder::BADC).plausible);
        let dcba = cell(&cells, DataType::F32, WordOrder::DCBA);
        assert_eq!(dcba.text(), "-0.011779785");
        assert!(!dcba.matches);
        // Integers of two registers; 64-bit types need four.
        assert_eq!(
            cell(&cells, DataType::U32, WordOrder::CDAB).value,
            Ok(Value::Int(0x41BC_0000))
        );
        assert_eq!(
            cell(&cells, DataType::U32, WordOrder::ABCD).value,
            Ok(Value::Int(0x41BC))
        );
        assert_eq!(
            cell(&cells, DataType::U16, WordOrder::ABCD).value,
            Ok(Value::Int(0))
        );
        assert_eq!(cell(&cells, DataType::F64, WordOrder::ABCD).text(), "-");
        assert_eq!(cells.iter().filter(|c| c.matches).count(), 1);
        let chosen = choose(&cells, e).expect("a match");
        assert_eq!((chosen.ty, chosen.order), (DataType::F32, WordOrder::CDAB));
        let s = snippet(Area::HoldingRegister, 100, chosen);
        assert!(
            s.contains("address = 100\ntype = \"f32\"\norder = \"CDAB\"\n"),
            "{s}"
        );
        assert!(s.starts_with("[[devices.tags]]\n"));
        // Pasted into a config, the snippet parses as a tag.
        let parsed: toml::Table = toml::from_str(&s).expect("snippet is TOML");
        assert!(parsed.contains_key("devices"));

        // Without --expect: both plausible floats are marked, and the
        // first in order preference (CDAB before DCBA) is suggested.
        let cells = table(&regs, None);
        let marked: Vec<_> = cells
            .iter()
            .filter(|c| c.plausible)
            .map(|c| (c.ty, c.order))
            .collect();
        assert_eq!(
            marked,
            [
                (DataType::F32, WordOrder::CDAB),
                (DataType::F32, WordOrder::DCBA)
            ]
        );
        let chosen = choose(&cells, None).expect("a plausible float");
        assert_eq!((chosen.ty, chosen.order), (DataType::F32, WordOrder::CDAB));
    }

    #[test]
    fn every_order_of_23_5_and_of_a_64_bit_value() {
        for (regs, order) in [
            ([0x41BC, 0x0000], WordOrder::ABCD),
            ([0xBC41, 0x0000], WordOrder::BADC),
            ([0x0000, 0xBC41], WordOrder::DCBA),
        ] {
            let e = Expect::parse("23.5");
            let cells = table(&regs, e);
            let chosen = choose(&cells, e).expect("a match");
            assert_eq!((chosen.ty, chosen.order), (DataType::F32, order));
        }
        // f64 23.5 = 0x4037_8000_0000_0000, stored CDAB (words reversed).
        let regs = [0x0000, 0x0000, 0x8000, 0x4037];
        let e = Expect::parse("23.5");
        let cells = table(&regs, e);
        let chosen = choose(&cells, e).expect("a match");
        assert_eq!((chosen.ty, chosen.order), (DataType::F64, WordOrder::CDAB));
        // u64 0x0102030405060708 ABCD, i16 and i32 negatives.
        let cells = table(&[0x0102, 0x0304, 0x0506, 0x0708], None);
        assert_eq!(
            cell(&cells, DataType::U64, WordOrder::ABCD).value,
            Ok(Value::UInt(0x0102_0304_0506_0708))
        );
        let cells = table(&[0xFFFE, 0xFFFF], None);
        assert_eq!(
            cell(&cells, DataType::I16, WordOrder::ABCD).value,
            Ok(Value::Int(-2))
        );
        assert_eq!(
            cell(&cells, DataType::I32, WordOrder::CDAB).value,
            Ok(Value::Int(-2))
        );
        assert_eq!(
            cell(&cells, DataType::I32, WordOrder::ABCD).value,
            Ok(Value::Int(-65537))
        );
    }

    #[test]
    fn integers_prefer_the_smallest_type_and_the_standard_order() {
        // 1234 in the first register: u16 (either word order, 16-bit values
        // only see the byte swap) and u32/i32 CDAB all read 1234.
        let regs = [0x04D2, 0x0000];
        let e = Expect::parse("1234");
        let cells = table(&regs, e);
        let matching: Vec<_> = cells
            .iter()
            .filter(|c| c.matches)
            .map(|c| (c.ty, c.order))
            .collect();
        assert!(matching.contains(&(DataType::U32, WordOrder::CDAB)));
        let chosen = choose(&cells, e).expect("a match");
        assert_eq!((chosen.ty, chosen.order), (DataType::U16, WordOrder::ABCD));
    }

    #[test]
    fn expected_values_match_to_the_precision_written() {
        let e = Expect::parse("23.5").unwrap();
        assert!(e.matches(23.47) && e.matches(23.549) && !e.matches(23.56));
        let e = Expect::parse("1234").unwrap();
        assert!(e.matches(1234.0) && !e.matches(1235.0));
        assert!(Expect::parse("NaN").is_none());
        assert!(Expect::parse("abc").is_none());
    }

    #[test]
    fn plausible_means_finite_normal_and_process_sized() {
        assert!(plausible_float(23.5) && plausible_float(-0.002) && plausible_float(9.9e6));
        assert!(!plausible_float(0.0) && !plausible_float(f64::NAN) && !plausible_float(1e-40));
        assert!(!plausible_float(2e7) && !plausible_float(f64::INFINITY));
        // NaN in a register image is shown, not an error.
        let cells = table(&[0x7FC0, 0x0000], None);
        assert_eq!(
            cell(&cells, DataType::F32, WordOrder::ABCD).text(),
            "NaN/inf"
        );
    }

    #[test]
    fn unit_lists() {
        assert_eq!(parse_units("1-3,7, 42").unwrap(), vec![1, 2, 3, 7, 42]);
        assert_eq!(parse_units("1-247").unwrap().len(), 247);
        assert!(parse_units("0-5").is_err());
        assert!(parse_units("9-3").is_err());
        assert!(parse_units("248").is_err());
        assert!(parse_units("").is_err());
    }
}
