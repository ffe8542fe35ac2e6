//! Register images to typed values.
//!
//! Word/byte order names follow the common PLC convention for a 32-bit value
//! whose big-endian bytes are A B C D:
//!
//! | order  | registers on the wire | meaning                                  |
//! |--------|-----------------------|------------------------------------------|
//! | `ABCD` | `AB CD`               | big-endian (Modbus spec default)         |
//! | `CDAB` | `CD AB`               | word-swapped (many PLCs, "little-endian words") |
//! | `BADC` | `BA DC`               | byte-swapped inside each register        |
//! | `DCBA` | `DC BA`               | fully little-endian                      |
//!
//! 64-bit values generalise the same way (`CDAB` reverses all four words).
//! 16-bit values only see the byte swap (`BADC`/`DCBA`).

use crate::reading::Value;

/// Data types a tag may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// ASCII/UTF-8 text of this many bytes, two per register.
    String(u16),
}

impl DataType {
    /// Parses the config spelling: `u16`, `f32`, `string(12)`, ...
    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            _ => {
                let len = s.strip_prefix("string(")?.strip_suffix(')')?;
                let len: u16 = len.trim().parse().ok()?;
                if len == 0 || len > 250 {
                    return None;
                }
                DataType::String(len)
            }
        })
    }

    /// Registers this type occupies (1 for bool: a bit or a whole register).
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(len) => len.div_ceil(2),
        }
    }

    pub fn name(self) -> String {
        match self {
            DataType::Bool => "bool".into(),
            DataType::U16 => "u16".into(),
            DataType::I16 => "i16".into(),
            DataType::U32 => "u32".into(),
            DataType::I32 => "i32".into(),
            DataType::U64 => "u64".into(),
            DataType::I64 => "i64".into(),
            DataType::F32 => "f32".into(),
            DataType::F64 => "f64".into(),
            DataType::String(n) => format!("string({n})"),
        }
    }
}

/// Word and byte order of multi-register values; see the module note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum WordOrder {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl WordOrder {
    pub const ALL: [WordOrder; 4] = [
        WordOrder::ABCD,
        WordOrder::CDAB,
        WordOrder::BADC,
        WordOrder::DCBA,
    ];

    fn swaps_words(self) -> bool {
        matches!(self, WordOrder::CDAB | WordOrder::DCBA)
    }
    fn swaps_bytes(self) -> bool {
        matches!(self, WordOrder::BADC | WordOrder::DCBA)
    }
}

/// Why a register image did not give a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("needed {needed} registers, got {got}")]
    Short { needed: usize, got: usize },
    #[error("float is NaN or infinite")]
    NotFinite,
    #[error("text is not valid UTF-8")]
    NotUtf8,
}

/// Puts the registers' bytes into big-endian order (A B C D ...).
fn big_endian_bytes(regs: &[u16], order: WordOrder, out: &mut [u8]) {
    let n = regs.len();
    for i in 0..n {
        let word = if order.swaps_words() {
            regs[n - 1 - i]
        } else {
            regs[i]
        };
        let word = if order.swaps_bytes() {
            word.swap_bytes()
        } else {
            word
        };
        out[2 * i..2 * i + 2].copy_from_slice(&word.to_be_bytes());
    }
}

/// Decodes a register image. `bit` selects one bit (0 = LSB) of the first
/// register for `Bool`; without it a `Bool` register is "non-zero".
pub fn decode_registers(
    regs: &[u16],
    ty: DataType,
    order: WordOrder,
    bit: Option<u8>,
) -> Result<Value, DecodeError> {
    let needed = usize::from(ty.registers());
    if regs.len() < needed {
        return Err(DecodeError::Short {
            needed,
            got: regs.len(),
        });
    }
    let regs = &regs[..needed];
    let mut buf = [0u8; 8];
    Ok(match ty {
        DataType::Bool => {
            let word = if order.swaps_bytes() {
                regs[0].swap_bytes()
            } else {
                regs[0]
            };
            Value::Bool(match bit {
                Some(b) => (word >> b) & 1 == 1,
                None => word != 0,
            })
        }
        DataType::U16 | DataType::I16 => {
            big_endian_bytes(regs, order, &mut buf[..2]);
            let raw = u16::from_be_bytes([buf[0], buf[1]]);
            if ty == DataType::U16 {
                Value::Int(i64::from(raw))
            } else {
                Value::Int(i64::from(raw as i16))
            }
        }
        DataType::U32 | DataType::I32 | DataType::F32 => {
            big_endian_bytes(regs, order, &mut buf[..4]);
            let b = [buf[0], buf[1], buf[2], buf[3]];
            match ty {
                DataType::U32 => Value::Int(i64::from(u32::from_be_bytes(b))),
                DataType::I32 => Value::Int(i64::from(i32::from_be_bytes(b))),
                _ => finite(f64::from(f32::from_be_bytes(b)))?,
            }
        }
        DataType::U64 | DataType::I64 | DataType::F64 => {
            big_endian_bytes(regs, order, &mut buf);
            match ty {
                DataType::U64 => Value::UInt(u64::from_be_bytes(buf)),
                DataType::I64 => Value::Int(i64::from_be_bytes(buf)),
                _ => finite(f64::from_be_bytes(buf))?,
            }
        }
        DataType::String(len) => {
            // Text is stored first character first; only the byte order
            // inside a register varies between devices.
            let mut bytes = Vec::with_capacity(usize::from(len) + 1);
            for &r in regs {
                let r = if order.swaps_bytes() {
                    r.swap_bytes()
                } else {
                    r
                };
                bytes.extend_from_slice(&r.to_be_bytes());
            }
            bytes.truncate(usize::from(len));
            while matches!(bytes.last(), Some(0) | Some(b' ')) {
                bytes.pop();
            }
            Value::Str(String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?)
        }
    })
}

fn finite(x: f64) -> Result<Value, DecodeError> {
    if x.is_finite() {
        Ok(Value::Float(x))
    } else {
        Err(DecodeError::NotFinite)
    }
}

/// Applies `value * scale + offset` when either is set; integers become
/// floats only then, so counters stay exact by default.
pub fn apply_scale(v: Value, scale: f64, offset: f64) -> Value {
    if scale == 1.0 && offset == 0.0 {
        return v;
    }
    match v.as_f64() {
        Some(x) if !matches!(v, Value::Bool(_)) => Value::Float(x * scale + offset),
        _ => v,
    }
}

/// [`apply_scale`], refusing a result JSON cannot carry (a huge raw value
/// times a scale can overflow to infinity).
pub fn scaled(v: Value, scale: f64, offset: f64) -> Result<Value, DecodeError> {
    match apply_scale(v, scale, offset) {
        Value::Float(x) if !x.is_finite() => Err(DecodeError::NotFinite),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 23.5f32 = 0x41BC0000: A=41 B=BC C=00 D=00.
    const F23_5: [(WordOrder, [u16; 2]); 4] = [
        (WordOrder::ABCD, [0x41BC, 0x0000]),
        (WordOrder::CDAB, [0x0000, 0x41BC]),
        (WordOrder::BADC, [0xBC41, 0x0000]),
        (WordOrder::DCBA, [0x0000, 0xBC41]),
    ];

    #[test]
    fn float_23_5_in_every_order() {
        for (order, regs) in F23_5 {
            assert_eq!(
                decode_registers(&regs, DataType::F32, order, None),
                Ok(Value::Float(23.5)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn integers_and_signs() {
        assert_eq!(
            decode_registers(&[0xFFFF], DataType::I16, WordOrder::ABCD, None),
            Ok(Value::Int(-1))
        );
        assert_eq!(
            decode_registers(&[0xFFFF], DataType::U16, WordOrder::ABCD, None),
            Ok(Value::Int(65535))
        );
        assert_eq!(
            decode_registers(&[0x3412], DataType::U16, WordOrder::BADC, None),
            Ok(Value::Int(0x1234))
        );
        // 0x12345678 word-swapped
        assert_eq!(
            decode_registers(&[0x5678, 0x1234], DataType::U32, WordOrder::CDAB, None),
            Ok(Value::Int(0x1234_5678))
        );
        assert_eq!(
            decode_registers(&[0xFFFF, 0xFFFE], DataType::I32, WordOrder::ABCD, None),
            Ok(Value::Int(-2))
        );
        // 0x0102030405060708 fully little-endian: registers 0x0807 0x0605 0x0403 0x0201
        assert_eq!(
            decode_registers(
                &[0x0807, 0x0605, 0x0403, 0x0201],
                DataType::U64,
                WordOrder::DCBA,
                None
            ),
            Ok(Value::UInt(0x0102_0304_0506_0708))
        );
        assert_eq!(
            decode_registers(
                &[0x4037, 0x8000, 0, 0],
                DataType::F64,
                WordOrder::ABCD,
                None
            ),
            Ok(Value::Float(23.5))
        );
    }

    #[test]
    fn bits_strings_and_errors() {
        assert_eq!(
            decode_registers(&[0b100], DataType::Bool, WordOrder::ABCD, Some(2)),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            decode_registers(&[0b100], DataType::Bool, WordOrder::ABCD, Some(1)),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            decode_registers(
                &[0x4142, 0x4300],
                DataType::String(4),
                WordOrder::ABCD,
                None
            ),
            Ok(Value::Str("ABC".into()))
        );
        assert_eq!(
            decode_registers(
                &[0x4241, 0x0043],
                DataType::String(4),
                WordOrder::BADC,
                None
            ),
            Ok(Value::Str("ABC".into()))
        );
        assert_eq!(
            decode_registers(&[0x7FC0, 0], DataType::F32, WordOrder::ABCD, None),
            Err(DecodeError::NotFinite)
        );
        assert_eq!(
            decode_registers(&[1], DataType::U32, WordOrder::ABCD, None),
            Err(DecodeError::Short { needed: 2, got: 1 })
        );
        assert_eq!(
            decode_registers(&[0xFF00], DataType::String(2), WordOrder::ABCD, None),
            Err(DecodeError::NotUtf8)
        );
    }

    #[test]
    fn scaling_to_infinity_is_a_decode_error() {
        assert_eq!(
            scaled(Value::UInt(u64::MAX), 1e300, 0.0),
            Err(DecodeError::NotFinite)
        );
        assert_eq!(scaled(Value::Int(2), 0.5, 0.0), Ok(Value::Float(1.0)));
    }

    #[test]
    fn scaling_keeps_integers_unless_asked() {
        assert_eq!(apply_scale(Value::Int(5), 1.0, 0.0), Value::Int(5));
        assert_eq!(apply_scale(Value::Int(5), 0.1, 1.0), Value::Float(1.5));
        assert_eq!(apply_scale(Value::Bool(true), 2.0, 0.0), Value::Bool(true));
    }
}
