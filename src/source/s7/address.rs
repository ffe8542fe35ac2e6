//! Tag addresses in the notation of STEP 7 / TIA Portal and the S7-200
//! SMART, and the S7 data types.
//!
//! | form                                   | area           | width |
//! |----------------------------------------|----------------|-------|
//! | `DB10.DBX0.1`, `DB10.DBB2`, `DB10.DBW2`, `DB10.DBD4` | data block 10 | bit, byte, word, double word |
//! | `M10.0`, `MB10`, `MW10`, `MD10`        | bit memory     | bit, byte, word, double word |
//! | `I0.0`, `IB0`, `IW0`, `ID0` (German `E`) | inputs       | as above |
//! | `Q0.0`, `QB0`, `QW0`, `QD0` (German `A`) | outputs      | as above |
//! | `V100.0`, `VB100`, `VW100`, `VD100`    | V memory = DB 1 (S7-200 SMART) | as above |
//!
//! Letters are case-insensitive; spaces are ignored (`DB10.DBW 2`).

use super::proto::Area;

/// How much of the area an address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Bit(u8),
    Byte,
    Word,
    Dword,
}

/// A parsed address: area, start byte, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub area: Area,
    pub byte: u32,
    pub width: Width,
}

/// The accepted forms, for error messages.
pub const FORMS: &str = "DB10.DBX0.1, DB10.DBB2, DB10.DBW2, DB10.DBD4; M10.0, MB10, MW10, MD10; I0.0, IB0, IW0, ID0 (or E0.0, EB0, ...); Q0.0, QB0, QW0, QD0 (or A0.0, AB0, ...); V100.0, VB100, VW100, VD100 (S7-200 SMART V memory, which is DB1)";

/// The highest byte offset an address may name (S7comm carries bit
/// addresses in 24 bits).
pub const MAX_BYTE: u32 = (1 << 21) - 1;

/// Parses an address; `None` when it has none of the accepted [`FORMS`].
pub fn parse(text: &str) -> Option<Address> {
    let s: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if let Some(rest) = s.strip_prefix("DB") {
        let (db, rest) = rest.split_once('.')?;
        let db: u16 = number(db)?.try_into().ok()?;
        if db == 0 {
            return None;
        }
        let rest = rest.strip_prefix("DB")?;
        return width_and_offset(Area::Db(db), rest, true);
    }
    let (area, rest) = match s.chars().next()? {
        'M' => (Area::Flags, &s[1..]),
        'I' | 'E' => (Area::Inputs, &s[1..]),
        'Q' | 'A' => (Area::Outputs, &s[1..]),
        'V' => (Area::Db(1), &s[1..]),
        _ => return None,
    };
    width_and_offset(area, rest, false)
}

/// `X0.1`, `B2`, `W2`, `D4` (`X` required in a DB, absent elsewhere:
/// `M10.0`).
fn width_and_offset(area: Area, rest: &str, in_db: bool) -> Option<Address> {
    let (letter, tail) = match rest.chars().next()? {
        c @ ('X' | 'B' | 'W' | 'D') => (Some(c), &rest[1..]),
        _ => (None, rest),
    };
    let width = match (letter, tail.split_once('.')) {
        (Some('X'), Some((byte, bit))) if in_db => (byte, bit_of(bit)?),
        (None, Some((byte, bit))) if !in_db => (byte, bit_of(bit)?),
        (Some('B'), None) => (tail, Width::Byte),
        (Some('W'), None) => (tail, Width::Word),
        (Some('D'), None) => (tail, Width::Dword),
        _ => return None,
    };
    let byte = number(width.0)?;
    if byte > MAX_BYTE {
        return None;
    }
    Some(Address {
        area,
        byte,
        width: width.1,
    })
}

fn bit_of(s: &str) -> Option<Width> {
    match s.parse::<u8>() {
        Ok(b) if b <= 7 && s.len() == 1 => Some(Width::Bit(b)),
        _ => None,
    }
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 7 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The S7 data types a tag may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S7Type {
    Bool,
    Byte,
    Word,
    Int,
    Dword,
    Dint,
    Real,
    Lreal,
    /// An S7 STRING of at most this many characters: a maximum-length
    /// byte, an actual-length byte, then the characters.
    String(u8),
}

/// The type names, for error messages.
pub const TYPES: &str = "bool, byte, word, int, dword, dint, real, lreal, string (254 characters) or string(N) with N in 1..=254";

impl S7Type {
    pub fn parse(s: &str) -> Option<S7Type> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "bool" => S7Type::Bool,
            "byte" => S7Type::Byte,
            "word" => S7Type::Word,
            "int" => S7Type::Int,
            "dword" => S7Type::Dword,
            "dint" => S7Type::Dint,
            "real" => S7Type::Real,
            "lreal" => S7Type::Lreal,
            "string" => S7Type::String(254),
            other => {
                let n = other.strip_prefix("string(")?.strip_suffix(')')?;
                match n.trim().parse::<u8>() {
                    Ok(n @ 1..=254) => S7Type::String(n),
                    _ => return None,
                }
            }
        })
    }

    /// The type an address means when no type is given.
    pub fn default_for(width: Width) -> S7Type {
        match width {
            Width::Bit(_) => S7Type::Bool,
            Width::Byte => S7Type::Byte,
            Width::Word => S7Type::Word,
            Width::Dword => S7Type::Dword,
        }
    }

    /// Bytes read for a tag of this type.
    pub fn size(self) -> u16 {
        match self {
            S7Type::Bool | S7Type::Byte => 1,
            S7Type::Word | S7Type::Int => 2,
            S7Type::Dword | S7Type::Dint | S7Type::Real => 4,
            S7Type::Lreal => 8,
            S7Type::String(n) => u16::from(n) + 2,
        }
    }

    pub fn name(self) -> String {
        match self {
            S7Type::Bool => "bool".into(),
            S7Type::Byte => "byte".into(),
            S7Type::Word => "word".into(),
            S7Type::Int => "int".into(),
            S7Type::Dword => "dword".into(),
            S7Type::Dint => "dint".into(),
            S7Type::Real => "real".into(),
            S7Type::Lreal => "lreal".into(),
            S7Type::String(n) => format!("string({n})"),
        }
    }

    /// Whether an address of `width` can hold this type: a bool needs a
    /// bit address; byte, word and double-word types their own width;
    /// lreal and string start at any byte address.
    pub fn fits(self, width: Width) -> Result<(), WrongWidth> {
        let ok = match self {
            S7Type::Bool => matches!(width, Width::Bit(_)),
            S7Type::Byte => width == Width::Byte,
            S7Type::Word | S7Type::Int => width == Width::Word,
            S7Type::Dword | S7Type::Dint | S7Type::Real => width == Width::Dword,
            S7Type::Lreal | S7Type::String(_) => !matches!(width, Width::Bit(_)),
        };
        if ok {
            return Ok(());
        }
        let want = match self {
            S7Type::Bool => "a bit address (DB10.DBX0.1, M10.0)",
            S7Type::Byte => "a byte address (DB10.DBB2, MB10)",
            S7Type::Word | S7Type::Int => "a word address (DB10.DBW2, MW10)",
            S7Type::Dword | S7Type::Dint | S7Type::Real => {
                "a double-word address (DB10.DBD4, MD10)"
            }
            S7Type::Lreal | S7Type::String(_) => "a byte address of its first byte (DB10.DBB20)",
        };
        Err(WrongWidth {
            ty: self.name(),
            want,
        })
    }
}

/// A type read from an address of the wrong width.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {ty} needs {want}")]
pub struct WrongWidth {
    /// The type's name, as the config writes it.
    pub ty: String,
    /// The kind of address it needs, with examples.
    pub want: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(area: Area, byte: u32, width: Width) -> Option<Address> {
        Some(Address { area, byte, width })
    }

    #[test]
    fn every_accepted_form_parses() {
        assert_eq!(parse("DB10.DBX0.1"), a(Area::Db(10), 0, Width::Bit(1)));
        assert_eq!(parse("DB10.DBB2"), a(Area::Db(10), 2, Width::Byte));
        assert_eq!(parse("db10.dbw 2"), a(Area::Db(10), 2, Width::Word));
        assert_eq!(parse("DB10.DBD4"), a(Area::Db(10), 4, Width::Dword));
        assert_eq!(parse("M10.0"), a(Area::Flags, 10, Width::Bit(0)));
        assert_eq!(parse("MB10"), a(Area::Flags, 10, Width::Byte));
        assert_eq!(parse("MW10"), a(Area::Flags, 10, Width::Word));
        assert_eq!(parse("MD10"), a(Area::Flags, 10, Width::Dword));
        assert_eq!(parse("I0.7"), a(Area::Inputs, 0, Width::Bit(7)));
        assert_eq!(parse("E1.2"), a(Area::Inputs, 1, Width::Bit(2)));
        assert_eq!(parse("IB0"), a(Area::Inputs, 0, Width::Byte));
        assert_eq!(parse("EW4"), a(Area::Inputs, 4, Width::Word));
        assert_eq!(parse("Q0.0"), a(Area::Outputs, 0, Width::Bit(0)));
        assert_eq!(parse("QW0"), a(Area::Outputs, 0, Width::Word));
        assert_eq!(parse("AB3"), a(Area::Outputs, 3, Width::Byte));
        assert_eq!(parse("VB100"), a(Area::Db(1), 100, Width::Byte));
        assert_eq!(parse("VW100"), a(Area::Db(1), 100, Width::Word));
        assert_eq!(parse("VD100"), a(Area::Db(1), 100, Width::Dword));
        assert_eq!(parse("V100.3"), a(Area::Db(1), 100, Width::Bit(3)));
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "DB10",
            "DB0.DBW2",
            "DB10.DBW",
            "DB10.DBX0",
            "DB10.DBX0.8",
            "DB10.DBW2.1",
            "DB10.W2",
            "DB70000.DBW2",
            "M10",
            "MX10.0",
            "M10.10",
            "MW-1",
            "MW1.5",
            "T5",
            "X0.0",
            "DB1.DBW99999999",
            "MW2097152",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn types_must_fit_their_address() {
        assert!(S7Type::Real.fits(Width::Dword).is_ok());
        assert!(S7Type::Real.fits(Width::Word).is_err());
        assert!(S7Type::Bool.fits(Width::Byte).is_err());
        assert!(S7Type::String(20).fits(Width::Byte).is_ok());
        assert!(S7Type::Lreal.fits(Width::Bit(0)).is_err());
        assert_eq!(S7Type::parse("string"), Some(S7Type::String(254)));
        assert_eq!(S7Type::parse("string(16)"), Some(S7Type::String(16)));
        assert_eq!(S7Type::parse("string(255)"), None);
        assert_eq!(S7Type::String(16).size(), 18);
    }
}
