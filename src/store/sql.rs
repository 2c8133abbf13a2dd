//! A SQL statement built with its binds: numbered placeholders in the text and the values
//! they stand for, kept in step, so that filters from a request are never spliced into SQL.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe};

/// SQL text with numbered placeholders and the values bound to them, built together.
#[derive(Default)]
pub(crate) struct Sql {
    pub text: String,
    binds: Vec<Bind>,
}

#[derive(Clone)]
enum Bind {
    I64(i64),
    Str(String),
}

impl Sql {
    pub(crate) fn new(text: &str) -> Sql {
        Sql {
            text: text.to_string(),
            binds: Vec::new(),
        }
    }

    /// Adds a value and returns its placeholder (`$n`).
    pub(crate) fn arg_str(&mut self, v: &str) -> String {
        self.binds.push(Bind::Str(v.to_string()));
        format!("${}", self.binds.len())
    }

    pub(crate) fn arg_i64(&mut self, v: i64) -> String {
        self.binds.push(Bind::I64(v));
        format!("${}", self.binds.len())
    }

    pub(crate) fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// `(p1, p2, …)` for the values.
    pub(crate) fn list(&mut self, values: &[String]) -> String {
        let ps: Vec<String> = values.iter().map(|v| self.arg_str(v)).collect();
        format!("({})", ps.join(", "))
    }

    pub(crate) fn query(&self) -> Query<'_, Any, AnyArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.text.clone()));
        for b in &self.binds {
            q = match b {
                Bind::I64(v) => q.bind(*v),
                Bind::Str(v) => q.bind(v.clone()),
            };
        }
        q
    }
}

/// `*` wildcards to a LIKE pattern (`%`, `_` and `\` in the input match themselves).
pub fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}
