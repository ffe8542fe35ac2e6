//! Signal rules: tiny boolean expressions over a device's tags.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | cmp
//! cmp     := operand (("=="|"!="|"<"|"<="|">"|">=") operand
//!                    | "in" "[" literal ("," literal)* "]")?
//! operand := number | "true" | "false" | "string" | tag | "(" expr ")"
//! ```
//!
//! Rules are parsed and type-checked once, at config load, so a typo in a
//! tag name is a `check` error and never a silent "false" at 3 a.m. There
//! are no loops, calls or I/O: evaluation is a walk over a small tree.

use std::collections::HashMap;
use std::fmt;

use crate::reading::Value;

/// The type of a tag or sub-expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Bool,
    Num,
    Str,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Bool => "bool",
            Type::Num => "number",
            Type::Str => "string",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Bool(bool),
    Num(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Lit),
    /// Index into [`Expr::tags`].
    Tag(usize),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<Lit>),
}

/// A parsed, type-checked boolean rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// The source text, kept for messages and for the evidence trail.
    pub text: String,
    /// Tag names the rule reads, in first-use order.
    pub tags: Vec<String>,
    root: Node,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {pos} of {text:?})")]
pub struct ParseError {
    pub text: String,
    pub pos: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let err = |pos: usize, message: String| ParseError {
        text: text.to_string(),
        pos,
        message,
    };
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit()
            || (c == b'-'
                && b.get(i + 1).is_some_and(u8::is_ascii_digit)
                && !matches!(out.last(), Some((_, Tok::Num(_) | Tok::Ident(_)))))
        {
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n: f64 = text[start..i]
                .parse()
                .map_err(|_| err(start, format!("{:?} is not a number", &text[start..i])))?;
            out.push((start, Tok::Num(n)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((start, Tok::Ident(text[start..i].to_string())));
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            if i >= b.len() {
                return Err(err(start, "unterminated string".into()));
            }
            out.push((start, Tok::Str(text[start + 1..i].to_string())));
            i += 1;
        } else {
            let two = text.get(i..i + 2).unwrap_or("");
            let op: &'static str = match two {
                "==" => "==",
                "!=" => "!=",
                "<=" => "<=",
                ">=" => ">=",
                "&&" => "&&",
                "||" => "||",
                _ => match c {
                    b'<' => "<",
                    b'>' => ">",
                    b'!' => "!",
                    b'(' => "(",
                    b')' => ")",
                    b'[' => "[",
                    b']' => "]",
                    b',' => ",",
                    b'=' => return Err(err(start, "use == to compare".into())),
                    _ => {
                        return Err(err(
                            start,
                            format!("unexpected character {:?}", char::from(c)),
                        ))
                    }
                },
            };
            i += op.len();
            out.push((start, Tok::Op(op)));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(usize, Tok)>,
    at: usize,
    /// Tag name → type, from the device's config.
    types: &'a dyn Fn(&str) -> Option<Type>,
    tags: Vec<String>,
    depth: usize,
}

impl Parser<'_> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        let pos = self.toks.get(self.at).map_or(self.text.len(), |t| t.0);
        Err(ParseError {
            text: self.text.to_string(),
            pos,
            message: message.into(),
        })
    }

    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.at), Some((_, Tok::Op(o))) if *o == op)
    }

    fn peek_ident(&self, word: &str) -> bool {
        matches!(self.toks.get(self.at), Some((_, Tok::Ident(w))) if w == word)
    }

    fn expect(&mut self, op: &str) -> Result<(), ParseError> {
        if self.peek_op(op) {
            self.at += 1;
            Ok(())
        } else {
            self.err(format!("expected {op:?}"))
        }
    }

    fn or(&mut self) -> Result<(Node, Type), ParseError> {
        let mut left = self.and()?;
        while self.peek_op("||") {
            self.at += 1;
            let right = self.and()?;
            self.both_bool(&left, &right, "||")?;
            left = (Node::Or(Box::new(left.0), Box::new(right.0)), Type::Bool);
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<(Node, Type), ParseError> {
        let mut left = self.unary()?;
        while self.peek_op("&&") {
            self.at += 1;
            let right = self.unary()?;
            self.both_bool(&left, &right, "&&")?;
            left = (Node::And(Box::new(left.0), Box::new(right.0)), Type::Bool);
        }
        Ok(left)
    }

    fn both_bool(&self, l: &(Node, Type), r: &(Node, Type), op: &str) -> Result<(), ParseError> {
        if l.1 != Type::Bool || r.1 != Type::Bool {
            return self.err(format!("{op} needs true/false on both sides, got {} and {}; compare numbers first, e.g. mode == 1", l.1, r.1));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<(Node, Type), ParseError> {
        self.depth += 1;
        if self.depth > 64 {
            return self.err("expression is nested too deeply");
        }
        let r = if self.peek_op("!") {
            self.at += 1;
            let (n, t) = self.unary()?;
            if t != Type::Bool {
                return self.err(format!("! needs true/false, got a {t}"));
            }
            Ok((Node::Not(Box::new(n)), Type::Bool))
        } else {
            self.cmp()
        };
        self.depth -= 1;
        r
    }

    fn cmp(&mut self) -> Result<(Node, Type), ParseError> {
        let left = self.operand()?;
        let op = match self.toks.get(self.at) {
            Some((_, Tok::Op("=="))) => CmpOp::Eq,
            Some((_, Tok::Op("!="))) => CmpOp::Ne,
            Some((_, Tok::Op("<"))) => CmpOp::Lt,
            Some((_, Tok::Op("<="))) => CmpOp::Le,
            Some((_, Tok::Op(">"))) => CmpOp::Gt,
            Some((_, Tok::Op(">="))) => CmpOp::Ge,
            _ if self.peek_ident("in") => {
                self.at += 1;
                self.expect("[")?;
                let mut items = Vec::new();
                loop {
                    let lit = match self.toks.get(self.at) {
                        Some((_, Tok::Num(n))) => Lit::Num(*n),
                        Some((_, Tok::Str(s))) => Lit::Str(s.clone()),
                        Some((_, Tok::Ident(w))) if w == "true" || w == "false" => {
                            Lit::Bool(w == "true")
                        }
                        _ => return self.err("expected a literal in the list"),
                    };
                    if lit_type(&lit) != left.1 {
                        return self.err(format!(
                            "list item is a {}, but the left side is a {}",
                            lit_type(&lit),
                            left.1
                        ));
                    }
                    self.at += 1;
                    items.push(lit);
                    if self.peek_op(",") {
                        self.at += 1;
                    } else {
                        break;
                    }
                }
                self.expect("]")?;
                return Ok((Node::In(Box::new(left.0), items), Type::Bool));
            }
            _ => return Ok(left),
        };
        self.at += 1;
        let right = self.operand()?;
        if left.1 != right.1 {
            return self.err(format!("cannot compare a {} with a {}", left.1, right.1));
        }
        if left.1 != Type::Num && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return self.err(format!("<, <=, >, >= need numbers, got {}", left.1));
        }
        Ok((
            Node::Cmp(op, Box::new(left.0), Box::new(right.0)),
            Type::Bool,
        ))
    }

    fn operand(&mut self) -> Result<(Node, Type), ParseError> {
        let Some((_, tok)) = self.toks.get(self.at).cloned() else {
            return self.err("expression ends too early");
        };
        self.at += 1;
        match tok {
            Tok::Num(n) => Ok((Node::Lit(Lit::Num(n)), Type::Num)),
            Tok::Str(s) => Ok((Node::Lit(Lit::Str(s)), Type::Str)),
            Tok::Ident(w) if w == "true" || w == "false" => {
                Ok((Node::Lit(Lit::Bool(w == "true")), Type::Bool))
            }
            Tok::Ident(w) => {
                let Some(ty) = (self.types)(&w) else {
                    self.at -= 1;
                    return self.err(format!(
                        "unknown tag {w:?}; it must be a tag of the equipment's device"
                    ));
                };
                let idx = match self.tags.iter().position(|t| *t == w) {
                    Some(i) => i,
                    None => {
                        self.tags.push(w);
                        self.tags.len() - 1
                    }
                };
                Ok((Node::Tag(idx), ty))
            }
            Tok::Op("(") => {
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Op(o) => {
                self.at -= 1;
                self.err(format!("unexpected {o:?}"))
            }
        }
    }
}

fn lit_type(l: &Lit) -> Type {
    match l {
        Lit::Bool(_) => Type::Bool,
        Lit::Num(_) => Type::Num,
        Lit::Str(_) => Type::Str,
    }
}

impl Expr {
    /// Parses `text`; `types` gives the type of each tag the rule may use.
    pub fn parse(text: &str, types: &dyn Fn(&str) -> Option<Type>) -> Result<Expr, ParseError> {
        let toks = lex(text)?;
        let mut p = Parser {
            text,
            toks,
            at: 0,
            types,
            tags: Vec::new(),
            depth: 0,
        };
        let (root, ty) = p.or()?;
        if p.at < p.toks.len() {
            return p.err("unexpected text after the expression");
        }
        if ty != Type::Bool {
            return Err(ParseError {
                text: text.to_string(),
                pos: 0,
                message: format!(
                    "a rule must be true/false, but this is a {ty}; e.g. write `{text} != 0`"
                ),
            });
        }
        Ok(Expr {
            text: text.to_string(),
            tags: p.tags,
            root,
        })
    }

    /// Evaluates against current values. `None` when a tag it reads has no
    /// good value: the rule's answer is then unknown, not false.
    pub fn eval(&self, values: &HashMap<&str, &Value>) -> Option<bool> {
        let vals: Vec<Option<&Value>> = self
            .tags
            .iter()
            .map(|t| values.get(t.as_str()).copied())
            .collect();
        match eval(&self.root, &vals)? {
            Lit::Bool(b) => Some(b),
            _ => None,
        }
    }
}

fn to_lit(v: &Value) -> Lit {
    match v {
        Value::Bool(b) => Lit::Bool(*b),
        Value::Str(s) => Lit::Str(s.clone()),
        other => Lit::Num(other.as_f64().unwrap_or(f64::NAN)),
    }
}

fn eval(n: &Node, vals: &[Option<&Value>]) -> Option<Lit> {
    Some(match n {
        Node::Lit(l) => l.clone(),
        Node::Tag(i) => to_lit(vals.get(*i).copied().flatten()?),
        Node::Not(a) => Lit::Bool(!as_bool(eval(a, vals)?)?),
        // Short-circuit only on a known value, so "unknown && false" is false
        // and "unknown || true" is true, as a plant engineer would expect.
        Node::And(a, b) => match (
            eval(a, vals).and_then(as_bool),
            eval(b, vals).and_then(as_bool),
        ) {
            (Some(false), _) | (_, Some(false)) => Lit::Bool(false),
            (Some(true), Some(true)) => Lit::Bool(true),
            _ => return None,
        },
        Node::Or(a, b) => match (
            eval(a, vals).and_then(as_bool),
            eval(b, vals).and_then(as_bool),
        ) {
            (Some(true), _) | (_, Some(true)) => Lit::Bool(true),
            (Some(false), Some(false)) => Lit::Bool(false),
            _ => return None,
        },
        Node::Cmp(op, a, b) => {
            let (a, b) = (eval(a, vals)?, eval(b, vals)?);
            Lit::Bool(match (a, b) {
                (Lit::Num(x), Lit::Num(y)) => match op {
                    CmpOp::Eq => x == y,
                    CmpOp::Ne => x != y,
                    CmpOp::Lt => x < y,
                    CmpOp::Le => x <= y,
                    CmpOp::Gt => x > y,
                    CmpOp::Ge => x >= y,
                },
                (x, y) => match op {
                    CmpOp::Eq => x == y,
                    CmpOp::Ne => x != y,
                    _ => return None,
                },
            })
        }
        Node::In(a, items) => {
            let a = eval(a, vals)?;
            Lit::Bool(items.contains(&a))
        }
    })
}

fn as_bool(l: Lit) -> Option<bool> {
    match l {
        Lit::Bool(b) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(name: &str) -> Option<Type> {
        match name {
            "mode" | "exec" | "speed" => Some(Type::Num),
            "door" => Some(Type::Bool),
            "state" => Some(Type::Str),
            _ => None,
        }
    }

    fn eval_with(text: &str, vals: &[(&str, Value)]) -> Option<bool> {
        let e = Expr::parse(text, &types).unwrap();
        let map: HashMap<&str, &Value> = vals.iter().map(|(k, v)| (*k, v)).collect();
        e.eval(&map)
    }

    #[test]
    fn evaluates_comparisons_logic_and_lists() {
        let v = [
            ("mode", Value::Int(1)),
            ("exec", Value::Int(3)),
            ("door", Value::Bool(false)),
            ("speed", Value::Float(1200.5)),
        ];
        assert_eq!(eval_with("mode == 1 && exec in [1, 3]", &v), Some(true));
        assert_eq!(
            eval_with("mode == 1 && !door && speed > 1000", &v),
            Some(true)
        );
        assert_eq!(
            eval_with("(mode == 0 || exec == 2) && true", &v),
            Some(false)
        );
        assert_eq!(eval_with("speed >= -5", &v), Some(true));
        assert_eq!(
            eval_with(
                "state == \"ACTIVE\"",
                &[("state", Value::Str("ACTIVE".into()))]
            ),
            Some(true)
        );
        assert_eq!(
            eval_with(
                "state in [\"A\", \"B\"]",
                &[("state", Value::Str("C".into()))]
            ),
            Some(false)
        );
    }

    #[test]
    fn missing_values_are_unknown_unless_the_answer_is_certain() {
        let v = [("mode", Value::Int(0))];
        assert_eq!(eval_with("exec == 1", &v), None);
        assert_eq!(eval_with("mode == 1 && exec == 1", &v), Some(false));
        assert_eq!(eval_with("mode == 0 || exec == 1", &v), Some(true));
        assert_eq!(eval_with("mode == 0 && exec == 1", &v), None);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = |t: &str| Expr::parse(t, &types).unwrap_err().message;
        assert!(e("modee == 1").contains("unknown tag \"modee\""));
        assert!(e("mode").contains("must be true/false"));
        assert!(e("mode == door").contains("cannot compare a number with a bool"));
        assert!(e("mode && door").contains("&& needs true/false"));
        assert!(e("mode = 1").contains("use =="));
        assert!(e("mode == 1 )").contains("unexpected"));
        assert!(e("mode in [1, \"x\"]").contains("list item is a string"));
        assert!(e("state > \"a\"").contains("need numbers"));
        assert!(
            e(&"!".repeat(100)).contains("nested too deeply")
                || e(&"!".repeat(100)).contains("ends too early")
        );
        assert!(
            e(&format!("{}mode == 1{}", "(".repeat(200), ")".repeat(200)))
                .contains("nested too deeply")
        );
    }
}
