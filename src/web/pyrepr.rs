//! Data values as ResultsDB stores them. ResultsDB (Python) keeps a string value as it is and
//! stores `str(value)` of anything else: `True`, `None`, `1.5`, `1e+16`, `{'a': [1, 'x']}`.
//! A POSTed `data` is deserialized straight into [`PyValue`] so that nested objects keep the
//! order their keys were sent in, as Python's `dict` does.

use std::fmt::{self, Write as _};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One JSON value with the text ResultsDB stores for it.
#[derive(Debug, Clone, PartialEq)]
pub struct PyValue {
    /// Python's `repr()` (how it appears inside a list or dict).
    pub repr: String,
    /// The string itself, when the value was a string.
    pub text: Option<String>,
    /// The elements, when the value was a list.
    pub items: Option<Vec<PyValue>>,
}

impl PyValue {
    /// Python's `str()`: a string as it is, anything else as its `repr()`.
    pub fn str(&self) -> &str {
        self.text.as_deref().unwrap_or(&self.repr)
    }

    fn other(repr: String) -> PyValue {
        PyValue {
            repr,
            text: None,
            items: None,
        }
    }
}

impl<'de> Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PyValue, D::Error> {
        d.deserialize_any(PyVisitor)
    }
}

struct PyVisitor;

impl<'de> Visitor<'de> for PyVisitor {
    type Value = PyValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<PyValue, E> {
        Ok(PyValue::other(if v { "True" } else { "False" }.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<PyValue, E> {
        Ok(PyValue::other(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<PyValue, E> {
        Ok(PyValue::other(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<PyValue, E> {
        Ok(PyValue::other(float_repr(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<PyValue, E> {
        Ok(PyValue {
            repr: str_repr(v),
            text: Some(v.to_string()),
            items: None,
        })
    }

    fn visit_unit<E>(self) -> Result<PyValue, E> {
        Ok(PyValue::other("None".into()))
    }

    fn visit_none<E>(self) -> Result<PyValue, E> {
        Ok(PyValue::other("None".into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PyValue, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<PyValue>()? {
            items.push(v);
        }
        let reprs: Vec<&str> = items.iter().map(|v| v.repr.as_str()).collect();
        Ok(PyValue {
            repr: format!("[{}]", reprs.join(", ")),
            text: None,
            items: Some(items),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PyValue, A::Error> {
        // A repeated key keeps its first place and its last value, as in Python's json.
        let mut entries: Vec<(String, String)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, PyValue>()? {
            match entries.iter_mut().find(|(seen, _)| *seen == k) {
                Some(e) => e.1 = v.repr,
                None => entries.push((k, v.repr)),
            }
        }
        let parts: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}: {v}", str_repr(k)))
            .collect();
        Ok(PyValue::other(format!("{{{}}}", parts.join(", "))))
    }
}

/// The `data` object of a POST body, key by key in the order sent (None: absent or null).
/// Errors when `data` is there but not an object.
pub fn data_of(body: &[u8]) -> Result<Option<Vec<(String, PyValue)>>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        data: Option<Entries>,
    }
    struct Entries(Vec<(String, PyValue)>);
    impl<'de> Deserialize<'de> for Entries {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Entries;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                    let mut out: Vec<(String, PyValue)> = Vec::new();
                    while let Some((k, v)) = map.next_entry::<String, PyValue>()? {
                        match out.iter_mut().find(|(seen, _)| *seen == k) {
                            Some(e) => e.1 = v,
                            None => out.push((k, v)),
                        }
                    }
                    Ok(Entries(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    let b: Body = serde_json::from_slice(body)?;
    Ok(b.data.map(|e| e.0))
}

/// Python's `repr()` of a float: the shortest digits that read back, in fixed notation for
/// exponents from -4 to 15 (`0.0001`, `1000000000000000.0`), else `1e+16`, `1.5e-07`.
pub fn float_repr(v: f64) -> String {
    if !v.is_finite() {
        // Not reachable from JSON; Python's spelling all the same.
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `-1.5e-7`, `1e16`, `0e0`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    let mut out = String::from(sign);
    if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

/// Python's `repr()` of a str: single quotes unless the text has a `'` and no `"`; escapes
/// for backslash, the quote, `\t \n \r`, and characters Python does not print.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !printable(c) => {
                let n = u32::from(c);
                let _ = if n < 0x100 {
                    write!(out, "\\x{n:02x}")
                } else if n < 0x10000 {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable()` for one character: false for controls, separators other
/// than the space, format characters and private use. (Unassigned code points, which Python
/// also escapes, are printed as they are: telling them apart needs Unicode's tables.)
fn printable(c: char) -> bool {
    let n = u32::from(c);
    !(c.is_control()
        || matches!(n,
            0xA0 | 0xAD | 0x1680 | 0x2000..=0x200F | 0x2028..=0x202F | 0x205F..=0x2064
            | 0x2066..=0x206F | 0x3000 | 0xFEFF | 0xFFF9..=0xFFFB | 0x600..=0x605 | 0x61C
            | 0x6DD | 0x70F | 0x180E | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF
            | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(json: &str) -> String {
        serde_json::from_str::<PyValue>(json)
            .unwrap()
            .str()
            .to_string()
    }

    /// Each expected text is what Python 3 prints for `str(json.loads(<json>))`.
    #[test]
    fn values_read_as_python_prints_them() {
        for (json, want) in [
            (r#""as is""#, "as is"),
            ("true", "True"),
            ("false", "False"),
            ("null", "None"),
            ("3", "3"),
            ("-12", "-12"),
            ("18446744073709551615", "18446744073709551615"),
            ("1.5", "1.5"),
            ("1.0", "1.0"),
            ("-0.0", "-0.0"),
            ("100.0", "100.0"),
            ("1e3", "1000.0"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
            ("1.5e16", "1.5e+16"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1.5e-7", "1.5e-07"),
            ("123.456", "123.456"),
            ("0.1", "0.1"),
            ("1e300", "1e+300"),
            (
                r#"{"b": 1, "a": [true, null, "x"], "c": {"d": 1.5}}"#,
                "{'b': 1, 'a': [True, None, 'x'], 'c': {'d': 1.5}}",
            ),
            (r#"{"k": "it's"}"#, r#"{'k': "it's"}"#),
            (r#"["it's \"q\""]"#, r#"['it\'s "q"']"#),
            (
                r#"["a\\b\n\t\u0001\u00e9\u00a0"]"#,
                r"['a\\b\n\t\x01é\xa0']",
            ),
            ("[]", "[]"),
            ("{}", "{}"),
            ("[[1, 2], []]", "[[1, 2], []]"),
        ] {
            assert_eq!(py(json), want, "{json}");
        }
    }

    #[test]
    fn data_keeps_the_order_sent_and_refuses_non_objects() {
        let d = data_of(br#"{"outcome": "PASSED", "data": {"z": {"y": 1, "x": 2}, "a": "b"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(d[0].0, "z");
        assert_eq!(d[0].1.str(), "{'y': 1, 'x': 2}");
        assert_eq!(d[1].1.str(), "b");
        assert_eq!(data_of(br#"{"data": null}"#).unwrap(), None);
        assert_eq!(data_of(br#"{"outcome": "x"}"#).unwrap(), None);
        assert!(data_of(br#"{"data": [1]}"#).is_err());
    }
}
