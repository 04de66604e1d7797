//! A small JSON writer for the results file (one object per line).
//!
//! Written by hand rather than pulling in serde_json: the bench only ever
//! writes flat objects of strings and numbers. Strings are escaped per
//! RFC 8259 (quote, backslash and every control character); numbers that
//! JSON cannot carry (NaN, infinities) become `null`.

use std::fmt::Write as _;

/// Appends `text` as a JSON string literal, quotes included.
pub fn push_string(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            // The other control characters, and DEL and the two Unicode line
            // separators, which some JSON-in-JavaScript readers choke on.
            c if (c as u32) < 0x20 || c == '\u{7F}' || c == '\u{2028}' || c == '\u{2029}' => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A value in a results object.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    U64(u64),
    F64(f64),
    Str(String),
    List(Vec<Value>),
    Object(Object),
}

impl Value {
    pub fn write(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::U64(n) => {
                let _ = write!(out, "{n}");
            }
            // Three decimals: rates and percentages need no more, and
            // Rust's `{}` for f64 never uses an exponent JSON would refuse.
            Value::F64(x) if x.is_finite() => {
                let _ = write!(out, "{x:.3}");
            }
            Value::F64(_) => out.push_str("null"),
            Value::Str(s) => push_string(out, s),
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Value::Object(object) => object.write(out),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::U64(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::U64(n as u64)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::F64(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// An object whose keys keep their insertion order (readable diffs between
/// runs). Keys are written escaped like any string.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object {
    fields: Vec<(String, Value)>,
}

impl Object {
    pub fn new() -> Object {
        Object::default()
    }

    /// Adds a field (a repeated key replaces the earlier value in place).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Object {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key.to_string(), value)),
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn fields(&self) -> &[(String, Value)] {
        &self.fields
    }

    pub fn write(&self, out: &mut String) {
        out.push('{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_string(out, key);
            out.push(':');
            value.write(out);
        }
        out.push('}');
    }

    /// The object as one line of JSON.
    pub fn to_line(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(text: &str) -> String {
        let mut out = String::new();
        push_string(&mut out, text);
        out
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(
            string("\u{0}\u{1f}\u{7f}\u{8}\u{c}"),
            r#""\u0000\u001f\u007f\b\f""#
        );
        assert_eq!(string("\u{2028}"), r#""\u2028""#);
        // Non-ASCII text passes through as UTF-8.
        assert_eq!(string("héllo → 世界"), "\"héllo → 世界\"");
        // A flag string with shell quoting survives.
        assert_eq!(
            string(r#"--durability buffered --log-level "warn""#),
            r#""--durability buffered --log-level \"warn\"""#
        );
    }

    #[test]
    fn objects_nest_and_keep_order() {
        let mut inner = Object::new();
        inner.set("p50", 12u64).set("ratio", 0.5f64);
        let mut o = Object::new();
        o.set("scenario", "chat")
            .set("ok", true)
            .set("nothing", Option::<u64>::None)
            .set("nan", f64::NAN)
            .set("inf", f64::INFINITY)
            .set("latency_us", Value::Object(inner))
            .set("errors", Value::List(vec!["a\"b".into(), Value::U64(3)]))
            .set("we\"ird", 1u64);
        assert_eq!(
            o.to_line(),
            r#"{"scenario":"chat","ok":true,"nothing":null,"nan":null,"inf":null,"latency_us":{"p50":12,"ratio":0.500},"errors":["a\"b",3],"we\"ird":1}"#
        );
        o.set("ok", false);
        assert!(o.to_line().starts_with(r#"{"scenario":"chat","ok":false,"#));
    }

    #[test]
    fn large_floats_have_no_exponent() {
        let mut out = String::new();
        Value::F64(1e21).write(&mut out);
        assert_eq!(out, "1000000000000000000000.000");
    }
}
