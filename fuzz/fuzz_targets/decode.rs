//! Register images of any length, any type and order: a value or an error,
//! never a panic, and never a non-finite float.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zgsz_agent::reading::Value;
use zgsz_agent::source::modbus::decode::{decode_registers, scaled, DataType, WordOrder};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let types = ["bool", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"];
    let ty = match data[0] as usize % (types.len() + 1) {
        i if i < types.len() => DataType::parse(types[i]).unwrap(),
        _ => DataType::String(u16::from(data[1]) % 250 + 1),
    };
    let order = WordOrder::ALL[data[1] as usize % 4];
    let bit = (data[2] & 0x10 != 0).then_some(data[2] & 0x0F);
    let regs: Vec<u16> = data[3..].chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
    if let Ok(v) = decode_registers(&regs, ty, order, bit) {
        if let Value::Float(x) = v {
            assert!(x.is_finite());
        }
        if let Ok(Value::Float(x)) = scaled(v, 1e300, 1e300) {
            assert!(x.is_finite());
        }
    }
});
