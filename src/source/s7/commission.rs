//! `probe` for S7: one byte range of a DB (or M, I, Q) in hex, bits and as
//! every type at every offset, with `--expect` marking where a value the
//! HMI shows sits, and a tag snippet for the config.

use crate::reading::Value;
use crate::source::modbus::commission::{plausible_float, Expect};

use super::address::{S7Type, Width};
use super::decode_raw;
use super::proto::Area;

/// The numeric types tried at every offset, smallest first.
pub const PROBE_TYPES: [S7Type; 8] = [
    S7Type::Byte,
    S7Type::Word,
    S7Type::Int,
    S7Type::Dword,
    S7Type::Dint,
    S7Type::Real,
    S7Type::Lreal,
    S7Type::Bool,
];

/// Parses `--area` for S7: `DB10`, `M`, `I` (`E`), `Q` (`A`), `V`.
pub fn parse_area(s: &str) -> Option<Area> {
    let s = s.trim().to_ascii_uppercase();
    Some(match s.as_str() {
        "M" => Area::Flags,
        "I" | "E" => Area::Inputs,
        "Q" | "A" => Area::Outputs,
        "V" => Area::Db(1),
        _ => {
            let n: u16 = s.strip_prefix("DB")?.parse().ok()?;
            if n == 0 {
                return None;
            }
            Area::Db(n)
        }
    })
}

/// The address of `ty` at byte `offset` of `area`, in STEP 7 notation.
pub fn address_of(area: Area, offset: u32, ty: S7Type) -> String {
    let letter = match ty.size() {
        2 => "W",
        4 if ty != S7Type::Lreal => "D",
        _ => "B",
    };
    match area {
        Area::Db(n) => format!("DB{n}.DB{letter}{offset}"),
        other => format!("{}{letter}{offset}", other.describe()),
    }
}

/// One value in the table: at a byte offset, as a type.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub offset: u32,
    pub ty: S7Type,
    pub value: Value,
    pub marked: bool,
}

/// Every numeric type at every offset that has room for it. A cell is
/// marked when it equals `expect`, or (without one) when it is a
/// plausible `real`/`lreal`.
pub fn table(bytes: &[u8], start: u32, expect: Option<Expect>) -> Vec<Cell> {
    let mut out = Vec::new();
    for i in 0..bytes.len() {
        for ty in PROBE_TYPES.iter().copied().filter(|t| *t != S7Type::Bool) {
            let Ok(value) = decode_raw(ty, Width::Byte, &bytes[i..]) else {
                continue;
            };
            let x = value.as_f64().unwrap_or(f64::NAN);
            let marked = match expect {
                Some(e) => e.matches(x),
                None => matches!(ty, S7Type::Real | S7Type::Lreal) && plausible_float(x),
            };
            out.push(Cell {
                offset: start + i as u32,
                ty,
                value,
                marked,
            });
        }
    }
    out
}

/// The marked cell to suggest: the first offset, then the smallest type.
pub fn choose(cells: &[Cell]) -> Option<&Cell> {
    cells.iter().find(|c| c.marked)
}

/// A `[[devices.tags]]` block for a cell.
pub fn snippet(area: Area, cell: &Cell) -> String {
    format!(
        "[[devices.tags]]\nname = \"signal_{}\"\naddress = \"{}\"\ntype = \"{}\"\n",
        cell.offset,
        address_of(area, cell.offset, cell.ty),
        cell.ty.name()
    )
}

/// The hex dump: 8 bytes a row, with each byte's bits 7..0.
pub fn hex_dump(bytes: &[u8], start: u32) -> String {
    let mut s = String::new();
    for (row, chunk) in bytes.chunks(8).enumerate() {
        let at = start + (row * 8) as u32;
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02X}")).collect();
        let bits: Vec<String> = chunk.iter().map(|b| format!("{b:08b}")).collect();
        s += &format!("  {at:>6}  {:<23}  {}\n", hex.join(" "), bits.join(" "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_marks_the_offset_and_type_that_hold_the_value() {
        let mut bytes = vec![0u8; 12];
        bytes[4..8].copy_from_slice(&1500.5f32.to_be_bytes());
        bytes[8..10].copy_from_slice(&(-7i16).to_be_bytes());
        let cells = table(&bytes, 10, Expect::parse("1500.5"));
        let c = choose(&cells).unwrap();
        assert_eq!((c.offset, c.ty), (14, S7Type::Real));
        assert_eq!(address_of(Area::Db(3), 14, S7Type::Real), "DB3.DBD14");
        let cells = table(&bytes, 0, Expect::parse("-7"));
        let c = choose(&cells).unwrap();
        assert_eq!((c.offset, c.ty), (8, S7Type::Int));
        assert!(snippet(Area::Flags, c).contains("address = \"MW8\""));
        assert_eq!(parse_area("db20"), Some(Area::Db(20)));
        assert_eq!(parse_area("E"), Some(Area::Inputs));
        assert_eq!(parse_area("DB0"), None);
    }
}
