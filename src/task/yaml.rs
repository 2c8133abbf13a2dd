//! A YAML tree that remembers where its scalars sit in the source text.
//!
//! serde_norway reports line and column only for errors it raises itself, and `Value` keeps no
//! positions, yet the formula and ResultsYAML checks happen after parsing and must still point a
//! person at the offending text. serde_norway hands scalars that appear verbatim in the input
//! to the visitor as slices of that input, so their byte offset can be recovered from the
//! pointer; containers take the position of their first child. Scalars that were rewritten
//! (escapes, folding, block scalars) and numbers have no position of their own: callers fall
//! back to the nearest enclosing key.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Visitor};

/// A 1-based line and column, columns counted in characters as libyaml counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for LineCol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl LineCol {
    /// Where byte `offset` of `text` lies; offsets past the end or inside a character clamp to
    /// the character before, so a bad offset still names a plausible place instead of panicking.
    pub(crate) fn of_offset(text: &str, offset: usize) -> LineCol {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let before = text.get(..end).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before.get(line_start..).unwrap_or_default().chars().count() + 1;
        LineCol { line, column }
    }
}

/// `s` with line breaks and other control characters escaped, so that a message quoting user
/// text (a key, an action name, a path) still fits on one terminal line.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    /// Numbers keep the text YAML would print for them, which is all anything here needs.
    Number(String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    /// Byte offset in the source. For a `Str` it is exact: the string's bytes appear there
    /// unchanged. For a container it is its first child's position.
    pub at: Option<usize>,
    /// Whether `at` points at this scalar's own text (so offsets inside it map to the source).
    pub verbatim: bool,
}

impl Node {
    fn new(kind: Kind, at: Option<usize>) -> Node {
        Node {
            kind,
            at,
            verbatim: false,
        }
    }

    /// A short noun for messages: "a mapping", "a list", ...
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// The text of a string, number or boolean, as YAML shows it; `None` for null and
    /// containers.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.kind {
            Kind::Str(s) | Kind::Number(s) => Some(s.clone()),
            Kind::Bool(b) => Some(b.to_string()),
            Kind::Null | Kind::Seq(_) | Kind::Map(_) => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }

    /// The value under string key `key` of a mapping, with the key node.
    pub fn get(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.kind, Kind::Str(s) if s == key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }
}

/// A YAML syntax error (or a construct this tree refuses) with serde_norway's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub at: Option<LineCol>,
}

/// Parses one YAML document. A duplicate key is reported here, at the second occurrence,
/// because both the formula and ResultsYAML would otherwise silently use one of the two.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let de = serde_norway::Deserializer::from_str(text);
    let node = NodeSeed { base: text }
        .deserialize(de)
        .map_err(|e| SyntaxError {
            message: strip_location(&e.to_string()),
            at: e.location().map(|l| LineCol {
                line: l.line(),
                column: l.column(),
            }),
        })?;
    check_duplicates(text, &node)?;
    Ok(node)
}

/// serde_norway and libyaml put " at line L column C" after the problem (and sometimes a
/// second one after a context such as "while parsing a block mapping"). The problem's position
/// is reported separately, so only that first one is cut; the context keeps its own.
fn strip_location(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or_default();
    let Some(start) = first_line.find(" at line ") else {
        return first_line.to_string();
    };
    let rest = first_line
        .get(start + " at line ".len()..)
        .unwrap_or_default();
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = match rest.strip_prefix(" column ") {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    format!("{}{}", first_line.get(..start).unwrap_or_default(), rest)
}

fn check_duplicates(text: &str, node: &Node) -> Result<(), SyntaxError> {
    match &node.kind {
        Kind::Map(entries) => {
            // Scalar keys go through a set so a huge mapping stays linear; container keys are
            // rare enough to compare pairwise.
            let mut seen = HashSet::new();
            for (i, (key, value)) in entries.iter().enumerate() {
                let duplicate = match scalar_key(key) {
                    Some(k) => !seen.insert(k),
                    None => entries.iter().take(i).any(|(k, _)| k.kind == key.kind),
                };
                if duplicate {
                    let shown = key.scalar_text().unwrap_or_else(|| key.describe().into());
                    return Err(SyntaxError {
                        message: format!("duplicate key `{shown}`"),
                        at: key.at.map(|off| LineCol::of_offset(text, off)),
                    });
                }
                check_duplicates(text, value)?;
            }
            Ok(())
        }
        Kind::Seq(items) => items.iter().try_for_each(|n| check_duplicates(text, n)),
        _ => Ok(()),
    }
}

/// A hashable identity for scalar keys; `"1"` and `1` are different keys in YAML.
fn scalar_key(key: &Node) -> Option<(u8, &str)> {
    match &key.kind {
        Kind::Null => Some((0, "")),
        Kind::Bool(true) => Some((1, "true")),
        Kind::Bool(false) => Some((1, "false")),
        Kind::Number(n) => Some((2, n)),
        Kind::Str(s) => Some((3, s)),
        Kind::Seq(_) | Kind::Map(_) => None,
    }
}

#[derive(Clone, Copy)]
struct NodeSeed<'de> {
    base: &'de str,
}

impl<'de> NodeSeed<'de> {
    /// The offset of `s` in the source if `s` is a slice of it.
    fn offset_of(&self, s: &str) -> Option<usize> {
        let start = (s.as_ptr() as usize).checked_sub(self.base.as_ptr() as usize)?;
        let end = start.checked_add(s.len())?;
        (end <= self.base.len()).then_some(start)
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'de> {
    type Value = Node;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'de> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::new(Kind::Null, None))
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::new(Kind::Null, None))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::new(Kind::Bool(v), None))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::new(Kind::Number(v.to_string()), None))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::new(Kind::Number(v.to_string()), None))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::new(Kind::Number(v.to_string()), None))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(Node::new(Kind::Number(v.to_string()), None))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        // Print floats the way serde_norway writes them back (1.0, .inf, .nan), not Rust's way.
        let text = serde_norway::to_string(&v)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| format!("{v:?}"));
        Ok(Node::new(Kind::Number(text), None))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node, E> {
        let at = self.offset_of(v);
        Ok(Node {
            kind: Kind::Str(v.to_string()),
            at,
            verbatim: at.is_some(),
        })
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::new(Kind::Str(v.to_string()), None))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::new(Kind::Str(v), None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        let at = items.iter().find_map(|n| n.at);
        Ok(Node::new(Kind::Seq(items), at))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            entries.push((key, value));
        }
        let at = entries.iter().find_map(|(k, v)| k.at.or(v.at));
        Ok(Node::new(Kind::Map(entries), at))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        // Local tags (`!foo`) have no meaning in either format; refusing them here lets
        // serde_norway attach the tag's position to the error.
        let (tag, _rest): (String, _) = data.variant()?;
        Err(de::Error::custom(format!(
            "YAML tag `!{tag}` is not supported here"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_quoted_strings_know_their_offset() {
        let text = "a: hello\nb: 'quoted'\nc: \"esc\\n\"\n";
        let node = parse(text).unwrap();
        let (ka, va) = node.get("a").unwrap();
        assert_eq!(ka.at, Some(0));
        assert_eq!(va.at, Some(3));
        assert!(va.verbatim);
        let (_, vb) = node.get("b").unwrap();
        assert_eq!(
            LineCol::of_offset(text, vb.at.unwrap()),
            LineCol { line: 2, column: 5 }
        );
        let (_, vc) = node.get("c").unwrap();
        assert_eq!(
            vc.at, None,
            "escaped strings are rewritten, so have no exact place"
        );
        assert_eq!(node.at, Some(0));
    }

    #[test]
    fn numbers_keep_yaml_text() {
        let node = parse("a: 1.0\nb: 0x10\nc: .inf\nd: -3\ne: true").unwrap();
        let text = |k| node.get(k).unwrap().1.scalar_text().unwrap();
        assert_eq!(text("a"), "1.0");
        assert_eq!(text("b"), "16");
        assert_eq!(text("c"), ".inf");
        assert_eq!(text("d"), "-3");
        assert_eq!(text("e"), "true");
    }

    #[test]
    fn duplicate_key_is_reported_at_second_occurrence() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.message, "duplicate key `a`");
        assert_eq!(err.at, Some(LineCol { line: 3, column: 1 }));
    }

    #[test]
    fn syntax_error_has_position_and_one_line() {
        let err = parse("a:\n  - b\n c: d\n").unwrap_err();
        assert!(err.at.is_some());
        assert!(!err.message.contains('\n'));
        assert!(!err.message.contains(" at line "));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let err = parse(&"[".repeat(1_000)).unwrap_err();
        assert!(err.message.contains("recursion limit"), "{}", err.message);
    }

    #[test]
    fn wide_mappings_stay_fast() {
        let text: String = (0..50_000).map(|i| format!("k{i}: v\n")).collect();
        let node = parse(&text).unwrap();
        assert!(matches!(node.kind, Kind::Map(ref e) if e.len() == 50_000));
        let err = parse(&format!("{text}k7: again\n")).unwrap_err();
        assert_eq!(err.message, "duplicate key `k7`");
        assert_eq!(
            err.at,
            Some(LineCol {
                line: 50_001,
                column: 1
            })
        );
    }

    #[test]
    fn keys_of_different_types_are_different() {
        assert!(parse("1: a\n'1': b\ntrue: c\n'true': d\n").is_ok());
    }

    #[test]
    fn tags_are_refused_with_position() {
        let err = parse("a: !foo bar\n").unwrap_err();
        assert!(err.message.contains("`!foo`"), "{}", err.message);
        assert_eq!(err.at.map(|l| l.line), Some(1));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(
            LineCol::of_offset("ä: b", 4),
            LineCol { line: 1, column: 4 }
        );
        assert_eq!(
            LineCol::of_offset("x\ny", 2),
            LineCol { line: 2, column: 1 }
        );
        assert_eq!(LineCol::of_offset("x", 99), LineCol { line: 1, column: 2 });
    }
}

/// Generators of YAML-ish text for the parsers' no-panic properties.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;
    use serde_norway::{Mapping, Value};

    const WORDS: &[&str] = &[
        "name",
        "namespace",
        "desc",
        "maintainer",
        "input",
        "args",
        "environment",
        "rpm",
        "actions",
        "task",
        "shell",
        "python",
        "file",
        "callable",
        "resultsdb",
        "results",
        "exitcode",
        "result_last",
        "result_worst",
        "dummy",
        "result",
        "msg",
        "export",
        "koji",
        "item",
        "type",
        "checkname",
        "outcome",
        "note",
        "artifact",
        "_internal",
        "arch",
        "a:b",
        "PASSED",
        "FAILED",
        "NEEDS_INSPECTION",
        "PASS",
        "${workdir}",
        "${",
        "${x",
        "${ x }",
        "$${y}",
        "/tmp/a/b",
        "../x",
        "/",
        "",
        " ",
        "x\ny",
        "ä",
    ];

    fn word() -> impl Strategy<Value = String> {
        prop::sample::select(WORDS).prop_map(str::to_string)
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            any::<f64>().prop_map(|n| Value::Number(n.into())),
            word().prop_map(Value::String),
            "\\PC{0,12}".prop_map(Value::String),
        ]
    }

    /// Arbitrary trees whose keys and strings come mostly from the formats' vocabulary, so
    /// that generated documents reach deep into the parsers instead of failing at the root.
    pub fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Sequence),
                prop::collection::vec((word(), inner), 0..6).prop_map(|entries| {
                    let mut map = Mapping::new();
                    for (k, v) in entries {
                        map.insert(Value::String(k), v);
                    }
                    Value::Mapping(map)
                }),
            ]
        })
    }

    /// YAML text of a generated tree, optionally with one character inserted or removed to
    /// produce near-miss syntax.
    pub fn text_from(root: impl Strategy<Value = Value>) -> impl Strategy<Value = String> {
        (
            root,
            any::<prop::sample::Index>(),
            prop::option::of(prop::sample::select(
                &[
                    ":", "-", "{", "}", "[", "]", "'", "\"", " ", "\n", "\t", "${", "&a", "*a",
                    "!x", "? ", "#", "|",
                ][..],
            )),
            any::<bool>(),
        )
            .prop_map(|(value, index, insert, delete)| {
                let text = serde_norway::to_string(&value).unwrap_or_default();
                let chars: Vec<char> = text.chars().collect();
                let at = if chars.is_empty() {
                    0
                } else {
                    index.index(chars.len())
                };
                let mut out: String = chars.iter().take(at).collect();
                match insert {
                    Some(s) => {
                        out.push_str(s);
                        out.extend(chars.iter().skip(at));
                    }
                    None if delete => out.extend(chars.iter().skip(at + 1)),
                    None => out.extend(chars.iter().skip(at)),
                }
                out
            })
    }
}
