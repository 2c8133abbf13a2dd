//! The layering rules of ARCHITECTURE.md, held: every `crate::…` and `super::…` path in
//! src/ is resolved to the module it names, and a path that a rule forbids fails the test
//! with its file, line and the rule.
//!
//! The rules live in one place, the fenced `layering` block of ARCHITECTURE.md; this test
//! parses that block, so the document cannot drift from what is checked.

use std::path::{Path, PathBuf};

/// One row: files in `from` (a module path; `*` is every module, minus `except`) never
/// name a path under any of `never`.
#[derive(Debug)]
struct Rule {
    from: Vec<String>,
    except: Vec<String>,
    never: Vec<Vec<String>>,
    text: String,
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn starts_with(path: &[String], prefix: &[String]) -> bool {
    path.len() >= prefix.len() && path[..prefix.len()] == *prefix
}

fn rules(doc: &str) -> Vec<Rule> {
    let start = doc
        .find("```layering\n")
        .expect("ARCHITECTURE.md has a ```layering block");
    let body = &doc[start + "```layering\n".len()..];
    let body = &body[..body.find("```").expect("the layering block is closed")];
    let mut out = Vec::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (from, never) = line
            .split_once("never depends on")
            .unwrap_or_else(|| panic!("layering rule without `never depends on`: {line}"));
        let (from, except) = match from.split_once(" except ") {
            Some((f, e)) => (f, segments(e.trim())),
            None => (from, Vec::new()),
        };
        let from = from.trim();
        let never: Vec<Vec<String>> = never
            .split(',')
            .map(|t| segments(t.trim()))
            .filter(|t| !t.is_empty())
            .collect();
        assert!(
            !never.is_empty(),
            "layering rule with nothing after it: {line}"
        );
        out.push(Rule {
            from: if from == "*" {
                Vec::new()
            } else {
                segments(from)
            },
            except,
            never,
            text: line.to_string(),
        });
    }
    assert!(out.len() >= 10, "the layering block looks truncated");
    out
}

/// The module path of a source file: src/image/source.rs is image::source, src/web/mod.rs
/// is web.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// Drops `//` comments (doc comments name paths that are not dependencies).
fn code_of(line: &str) -> &str {
    let mut in_str = false;
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// Every path a line names, starting at `crate::` or `super::`, resolved against `module`;
/// groups expand: `a::{self, b, c::{d, e}}` gives `a`, `a::b`, `a::c::d`, `a::c::e`.
fn paths_in(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let b = line.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if i > 0 && ident(b[i - 1]) {
            i += 1;
            continue;
        }
        // Bytes, not `&line[i..]`: `i` may be inside a multi-byte character.
        let rest = &b[i..];
        let (mut base, mut j) = if rest.starts_with(b"crate::") {
            (Vec::new(), i + "crate::".len())
        } else if rest.starts_with(b"super::") {
            (module.to_vec(), i)
        } else {
            i += 1;
            continue;
        };
        while b[j..].starts_with(b"super::") {
            base.pop();
            j += "super::".len();
        }
        j = tree(line, j, base, &mut out);
        i = j.max(i + 1);
    }
    out
}

/// Parses one use-tree at `j` below `prefix`, pushing each path it names; returns the end.
fn tree(line: &str, mut j: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let b = line.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    loop {
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'{' {
            j += 1;
            loop {
                while j < b.len() && (b[j] == b' ' || b[j] == b',') {
                    j += 1;
                }
                if j >= b.len() {
                    return j;
                }
                if b[j] == b'}' {
                    return j + 1;
                }
                let before = j;
                j = tree(line, j, prefix.clone(), out);
                // Skip a rename (`x as y`) up to the next separator.
                while j < b.len() && b[j] != b',' && b[j] != b'}' {
                    j += 1;
                }
                if j == before {
                    j += 1;
                }
            }
        }
        let s = j;
        while j < b.len() && ident(b[j]) {
            j += 1;
        }
        let seg = &line[s..j];
        if !seg.is_empty() && seg != "self" {
            prefix.push(seg.to_string());
        }
        if b[j..].starts_with(b"::") {
            j += 2;
            continue;
        }
        if !prefix.is_empty() {
            out.push(prefix);
        }
        return j;
    }
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn applies(rule: &Rule, module: &[String]) -> bool {
    if rule.from.is_empty() {
        rule.except.is_empty() || !starts_with(module, &rule.except)
    } else {
        starts_with(module, &rule.from)
    }
}

fn forbidden<'r>(rule: &'r Rule, module: &[String], path: &[String]) -> Option<&'r [String]> {
    rule.never
        .iter()
        .find(|n| {
            if n.len() == 1 && n[0] == "*" {
                // Any other top-level module but the shared leaf `util`.
                !path.is_empty()
                    && module.first() != path.first()
                    && path.first().is_none_or(|p| p != "util")
            } else {
                starts_with(path, n) && !starts_with(module, n)
            }
        })
        .map(Vec::as_slice)
}

fn violations(root: &Path) -> (Vec<String>, usize) {
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let rules = rules(&doc);
    let src = root.join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut found = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("read");
        for (n, line) in text.lines().enumerate() {
            for path in paths_in(code_of(line), &module) {
                checked += 1;
                for rule in rules.iter().filter(|r| applies(r, &module)) {
                    if let Some(n_) = forbidden(rule, &module, &path) {
                        found.push(format!(
                            "{}:{}: `{}` names `{}`, but ARCHITECTURE.md says: {} (matched `{}`)",
                            file.strip_prefix(root).unwrap_or(file).display(),
                            n + 1,
                            module.join("::"),
                            path.join("::"),
                            rule.text,
                            n_.join("::")
                        ));
                    }
                }
            }
        }
    }
    (found, checked)
}

#[test]
fn src_follows_the_layering_rules_of_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (found, checked) = violations(root);
    assert!(
        checked > 200,
        "only {checked} paths found: is the scanner broken?"
    );
    assert!(
        found.is_empty(),
        "{} layering violations:\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The checker itself: a break of each kind of rule is reported with file and line.
#[test]
fn the_checker_finds_breaks() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("ARCHITECTURE.md"),
        "x\n```layering\n# comment\nguest never depends on provider\n\
         * except provider never depends on provider::libvirt\n\
         image::source never depends on image::build\noutcome never depends on *\n\
         a never depends on b\na never depends on b\na never depends on b\na never depends on b\n\
         a never depends on b\na never depends on b\n```\n",
    )
    .unwrap();
    let src = d.path().join("src");
    for dir in ["guest", "image", "provider", "cli"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    let w = |p: &str, t: &str| std::fs::write(src.join(p), t).unwrap();
    w(
        "guest/ssh.rs",
        "use crate::provider::SshTarget;\n// crate::provider::x is fine here\n",
    );
    w("image/source.rs", "use super::build::Ctl;\n");
    w("provider/spec.rs", "use super::libvirt::LibvirtProvider;\n");
    w(
        "cli/run.rs",
        "use crate::provider::{self, Spec, libvirt::Network};\n",
    );
    w(
        "outcome.rs",
        "fn f() { crate::store::x(); }\nfn g() { crate::util::shell_quote(\"\"); }\n",
    );
    let (found, _) = violations(d.path());
    let all = found.join("\n");
    assert!(
        all.contains("src/guest/ssh.rs:1: `guest::ssh` names `provider::SshTarget`"),
        "{all}"
    );
    assert!(all.contains("src/image/source.rs:1:"), "{all}");
    assert!(
        all.contains("src/cli/run.rs:1: `cli::run` names `provider::libvirt::Network`"),
        "{all}"
    );
    assert!(all.contains("src/outcome.rs:1:"), "{all}");
    assert!(
        !all.contains("src/outcome.rs:2:"),
        "any module may use util: {all}"
    );
    assert!(
        !all.contains("provider/spec.rs"),
        "a module may name its own parts: {all}"
    );
    assert_eq!(found.len(), 4, "{all}");
}
