//! `${name}` templates in formula values, and the variables that fill them.
//!
//! Only `${identifier}` is a variable; any other `$` stays literal so that shell commands keep
//! `$HOME`, `$1` and `$$` working. Anything that starts with `${` is taken as an attempt at a
//! variable and must be a valid one, so typos such as `${check output}` fail loudly instead of
//! reaching the shell. `$${` is the escape for a literal `${` (Taskotron's `string.Template`
//! also escaped with `$$`), which is the only way to pass shell forms like `${HOME:-/root}`.

use std::collections::BTreeMap;
use std::fmt;

use super::yaml::{LineCol, one_line};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    #[error("unterminated `${{`: no closing `}}` follows it (write `$${{` for a literal `${{`)")]
    Unterminated {
        /// Byte offset of the `${` in the template text.
        offset: usize,
    },
    #[error(
        "`${{{}}}` is not a valid variable name: use letters, digits and `_`, not starting with a digit (write `$${{` for a literal `${{`)",
        one_line(.name)
    )]
    InvalidName {
        name: String,
        /// Byte offset of the `${` in the template text.
        offset: usize,
    },
    #[error("unknown variable `${{{name}}}`")]
    Unknown { name: String },
}

/// Whether `s` reads the same to a shell in every context (unquoted, in double or single
/// quotes, in a heredoc): no expansion, quoting, globbing, splitting or comment character.
fn is_shell_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c))
        && !s.starts_with(['-', '='])
}

/// Prefix of the shell variables that carry values into `shell` commands.
pub const SHELL_VAR_PREFIX: &str = "FERROTRON_VAR_";

/// Whether `s` can name a variable (and so an `export`).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Var {
        name: String,
        /// Byte offset of the `${` in the template text.
        offset: usize,
        /// Where the `${` sits in the formula file, when the template came from one.
        at: Option<LineCol>,
    },
}

/// A value with `${name}` placeholders, parsed once so that errors surface when the formula is
/// loaded rather than halfway through a run.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// Two templates are the same when their text is; where they came from does not matter.
impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Template {}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, VarError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(dollar) = rest.find('$') {
            let (before, from_dollar) = rest.split_at(dollar);
            literal.push_str(before);
            let start = offset + dollar;
            if let Some(after) = from_dollar.strip_prefix("$${") {
                literal.push_str("${");
                offset = start + 3;
                rest = after;
            } else if let Some(after) = from_dollar.strip_prefix("${") {
                let close = after
                    .find('}')
                    .ok_or(VarError::Unterminated { offset: start })?;
                let name = after.get(..close).unwrap_or_default();
                if !is_identifier(name) {
                    return Err(VarError::InvalidName {
                        name: name.to_string(),
                        offset: start,
                    });
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Var {
                    name: name.to_string(),
                    offset: start,
                    at: None,
                });
                offset = start + 2 + close + 1;
                rest = after.get(close + 1..).unwrap_or_default();
            } else {
                literal.push('$');
                offset = start + 1;
                rest = from_dollar.get(1..).unwrap_or_default();
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template {
            source: s.to_string(),
            pieces,
        })
    }

    /// A template for text that must not be interpreted (already-substituted values).
    pub fn literal(s: &str) -> Template {
        Template {
            source: s.replace("${", "$${"),
            pieces: vec![Piece::Literal(s.to_string())],
        }
    }

    /// The variable names in order of appearance, repeats included.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var { name, .. } => Some(name.as_str()),
            Piece::Literal(_) => None,
        })
    }

    /// Variables with their byte offset in the template text and, when known, their place in
    /// the file the template was read from.
    pub fn variable_places(&self) -> impl Iterator<Item = (&str, usize, Option<LineCol>)> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var { name, offset, at } => Some((name.as_str(), *offset, *at)),
            Piece::Literal(_) => None,
        })
    }

    /// Records where each variable sits in the file; `locate` maps a variable's byte offset in
    /// the template text (and its name) to a place.
    pub(crate) fn locate(&mut self, mut locate: impl FnMut(usize, &str) -> Option<LineCol>) {
        for piece in &mut self.pieces {
            if let Piece::Var { name, offset, at } = piece {
                *at = locate(*offset, name);
            }
        }
    }

    pub fn render(&self, vars: &Vars) -> Result<String, VarError> {
        let mut out = String::with_capacity(self.source.len());
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Var { name, .. } => {
                    let value = vars
                        .get(name)
                        .ok_or_else(|| VarError::Unknown { name: name.clone() })?;
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }

    /// The template as a `/bin/sh` script in which no value is ever interpreted by the shell.
    /// A value made only of characters no shell context treats specially (letters, digits,
    /// `_./:=@%+,-`) is written as it is, as before. Any other value is assigned once, quoted
    /// by [`crate::util::shell_quote`], to a shell variable `FERROTRON_VAR_<name>` on a
    /// first line, and `${name}` becomes `${FERROTRON_VAR_<name>}`. Values come from bus
    /// messages (the item, type, arch) and from earlier actions' output: `echo "${item}"`
    /// with the item `$(reboot)` prints it, where text substitution would have run it. For
    /// such a value, `'${item}'` in single quotes stays the variable's name.
    pub fn render_for_shell(&self, vars: &Vars) -> Result<String, VarError> {
        let mut assigned: Vec<&str> = Vec::new();
        let mut prelude = String::new();
        let mut body = String::with_capacity(self.source.len());
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => body.push_str(text),
                Piece::Var { name, .. } => {
                    let value = vars
                        .get(name)
                        .ok_or_else(|| VarError::Unknown { name: name.clone() })?;
                    if is_shell_word(value) {
                        body.push_str(value);
                        continue;
                    }
                    if !assigned.contains(&name.as_str()) {
                        assigned.push(name);
                        prelude.push_str(&format!(
                            "{SHELL_VAR_PREFIX}{name}={} ",
                            crate::util::shell_quote(value)
                        ));
                    }
                    body.push_str(&format!("${{{SHELL_VAR_PREFIX}{name}}}"));
                }
            }
        }
        if prelude.is_empty() {
            return Ok(body);
        }
        // One assignment-only command: the values are set in this shell, never exported.
        prelude.pop();
        Ok(format!("{prelude}\n{body}"))
    }

    /// The text as written in the formula, placeholders unexpanded.
    pub fn as_source(&self) -> &str {
        &self.source
    }
}

/// Variable values for one run: the builtins (workdir, uuid, the item-type variable, ...) and
/// every exported action result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    pub fn new() -> Vars {
        Vars::default()
    }

    /// Sets `name`, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Vars {
    fn from(map: BTreeMap<String, String>) -> Vars {
        Vars(map)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Vars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Vars {
        Vars(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `script` with /bin/sh and returns its stdout.
    fn sh(script: &str) -> String {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn no_value_reaches_the_shell_as_code() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("pwned");
        let evil = format!(
            "$(touch {m})`touch {m}`'\"; touch {m}; \\ *",
            m = marker.display()
        );
        let mut v = Vars::new();
        v.insert("item", evil.as_str());
        v.insert("arch", "x86_64");
        let t = Template::parse(
            "printf '%s|' \"${item}\" ${arch} \"${arch}\" '${arch}'; printf '%s' \"${item}\"",
        )
        .unwrap();
        let script = t.render_for_shell(&v).unwrap();
        assert_eq!(
            sh(&script),
            format!("{evil}|x86_64|x86_64|x86_64|{evil}"),
            "{script}"
        );
        assert!(!marker.exists(), "the value ran as code: {script}");
        // Plain text substitution, for contrast, runs each part of it.
        for part in [
            format!("$(touch {})", marker.display()),
            format!("`touch {}`", marker.display()),
        ] {
            let mut v = v.clone();
            v.insert("item", part.as_str());
            let script = t.render_for_shell(&v).unwrap();
            sh(&script);
            assert!(!marker.exists(), "the value ran as code: {script}");
            sh(&t.render(&v).unwrap());
            assert!(
                marker.exists(),
                "`{part}` is not hostile enough to show anything"
            );
            std::fs::remove_file(&marker).unwrap();
        }
    }

    proptest! {
        /// Any value, in double quotes, comes out of the shell exactly as it went in.
        #[test]
        fn any_value_survives_the_shell(value in "[^\u{0}]{0,40}") {
            let mut v = Vars::new();
            v.insert("x", value.as_str());
            let script = Template::parse("printf '%s' \"${x}\"").unwrap().render_for_shell(&v).unwrap();
            prop_assert_eq!(sh(&script), value);
        }
    }

    fn vars() -> Vars {
        [("koji_build", "xchat-0.5-1.fc20"), ("workdir", "/tmp/w")]
            .into_iter()
            .collect()
    }

    #[test]
    fn plain_text_has_no_variables() {
        let t = Template::parse("echo hello").unwrap();
        assert_eq!(t.variables().count(), 0);
        assert_eq!(t.render(&Vars::new()).unwrap(), "echo hello");
        assert_eq!(t.as_source(), "echo hello");
    }

    #[test]
    fn variables_are_substituted() {
        let t = Template::parse("cd ${workdir} && rpmlint ${koji_build}.rpm").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["workdir", "koji_build"]);
        assert_eq!(
            t.render(&vars()).unwrap(),
            "cd /tmp/w && rpmlint xchat-0.5-1.fc20.rpm"
        );
        let offsets: Vec<_> = t.variable_places().map(|(_, o, _)| o).collect();
        assert_eq!(offsets, [3, 25]);
    }

    #[test]
    fn other_dollars_are_literal() {
        let t = Template::parse("echo $HOME $1 $$ cost$ $").unwrap();
        assert_eq!(t.variables().count(), 0);
        assert_eq!(t.render(&Vars::new()).unwrap(), "echo $HOME $1 $$ cost$ $");
    }

    #[test]
    fn double_dollar_brace_escapes() {
        let t = Template::parse("echo $${HOME:-/root} ${workdir}").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["workdir"]);
        assert_eq!(t.render(&vars()).unwrap(), "echo ${HOME:-/root} /tmp/w");
    }

    #[test]
    fn literal_round_trips_through_parse() {
        let t = Template::literal("a ${b} $c");
        assert_eq!(t.render(&Vars::new()).unwrap(), "a ${b} $c");
        let again = Template::parse(t.as_source()).unwrap();
        assert_eq!(again.render(&Vars::new()).unwrap(), "a ${b} $c");
    }

    #[test]
    fn unterminated_is_an_error_with_offset() {
        assert_eq!(
            Template::parse("echo ${workdir").unwrap_err(),
            VarError::Unterminated { offset: 5 }
        );
        let msg = Template::parse("${").unwrap_err().to_string();
        assert!(msg.starts_with("unterminated `${`"), "{msg}");
    }

    #[test]
    fn invalid_names_are_errors() {
        for (text, name) in [
            ("${}", ""),
            ("${a b}", "a b"),
            ("${1x}", "1x"),
            ("x${a-b}", "a-b"),
        ] {
            match Template::parse(text) {
                Err(VarError::InvalidName { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_variable_on_render_names_it() {
        let t = Template::parse("${workdir}/${nope}").unwrap();
        let err = t.render(&vars()).unwrap_err();
        assert_eq!(
            err,
            VarError::Unknown {
                name: "nope".into()
            }
        );
        assert_eq!(err.to_string(), "unknown variable `${nope}`");
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("a"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("a.b"));
        assert!(!is_identifier("ä"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Template::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_dollar_soup(s in "[$\\{\\}a_1 é]{0,40}") {
            if let Ok(t) = Template::parse(&s) {
                let all: Vars = t.variables().map(|v| (v, "X")).collect();
                prop_assert!(t.render(&all).is_ok());
                prop_assert_eq!(t.as_source(), s.as_str());
            }
        }

        #[test]
        fn text_without_dollar_renders_to_itself(s in "[^$]{0,60}") {
            let t = Template::parse(&s).unwrap();
            prop_assert_eq!(t.render(&Vars::new()).unwrap(), s);
        }
    }
}
