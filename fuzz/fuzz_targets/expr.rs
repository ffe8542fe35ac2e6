//! Signal rules: parsing arbitrary text never panics (nor overflows the
//! stack), and a parsed rule evaluates without panicking.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use zgsz_agent::expr::{Expr, Type};
use zgsz_agent::reading::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let types = |t: &str| match t {
        "a" | "b" => Some(Type::Num),
        "c" => Some(Type::Bool),
        "d" => Some(Type::Str),
        _ => None,
    };
    if let Ok(e) = Expr::parse(text, &types) {
        let (a, b, c, d) = (Value::Int(1), Value::Float(f64::NAN), Value::Bool(true), Value::Str("x".into()));
        let vals: HashMap<&str, &Value> = HashMap::from([("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
        let _ = e.eval(&vals);
        let _ = e.eval(&HashMap::new());
    }
});
