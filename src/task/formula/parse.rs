//! Reading a formula from the positioned YAML tree, checking every key as it goes.

use super::*;

pub(super) struct Parser<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
}

type Entries = [(Node, Node)];

impl<'a> Parser<'a> {
    fn err(&self, at: Option<usize>, field: &str, kind: FormulaErrorKind) -> FormulaError {
        FormulaError {
            path: self.path.to_path_buf(),
            at: at.map(|o| LineCol::of_offset(self.text, o)),
            field: field.to_string(),
            kind: Box::new(kind),
        }
    }

    fn wrong_type(
        &self,
        node: &Node,
        anchor: Option<usize>,
        field: &str,
        expected: &'static str,
    ) -> FormulaError {
        let kind = if node.is_null() {
            FormulaErrorKind::Empty
        } else {
            FormulaErrorKind::WrongType {
                expected,
                found: node.describe(),
            }
        };
        self.err(node.at.or(anchor), field, kind)
    }

    pub(super) fn formula(&self) -> Result<Formula, FormulaError> {
        let root = yaml::parse(self.text).map_err(|e| self.syntax_error(e))?;
        let entries = match &root.kind {
            Kind::Map(entries) => entries,
            Kind::Null => return Err(self.err(None, "", FormulaErrorKind::EmptyFile)),
            _ => {
                return Err(self.err(
                    root.at,
                    "",
                    FormulaErrorKind::WrongType {
                        expected: "a mapping with name, desc, maintainer and actions",
                        found: root.describe(),
                    },
                ));
            }
        };

        let mut name = None;
        let mut namespace = None;
        let mut desc = None;
        let mut maintainer = None;
        let mut input_args = Vec::new();
        let mut environment = BTreeMap::new();
        let mut actions: Option<(&str, &Node, &Node)> = None;

        for (key, value) in entries {
            let key_name = self.key_name(key, None, "")?;
            match key_name.as_str() {
                "name" => name = Some(self.required_text(value, key, "name")?),
                "namespace" => {
                    if !value.is_null() {
                        namespace = Some(self.required_text(value, key, "namespace")?);
                    }
                }
                "desc" => desc = Some(self.required_text(value, key, "desc")?),
                "maintainer" => maintainer = Some(self.required_text(value, key, "maintainer")?),
                "input" => input_args = self.input(value, key)?,
                "environment" => environment = self.environment(value, key)?,
                "actions" | "task" => {
                    if actions.is_some() {
                        return Err(self.err(key.at, "", FormulaErrorKind::ActionsAndTask));
                    }
                    let list_key = if key_name == "task" {
                        "task"
                    } else {
                        "actions"
                    };
                    actions = Some((list_key, key, value));
                }
                _ => {
                    return Err(self.err(
                        key.at,
                        "",
                        FormulaErrorKind::UnknownKey {
                            key: key_name,
                            expected: TOP_LEVEL_KEYS.into(),
                        },
                    ));
                }
            }
        }

        let missing = |key| self.err(root.at, "", FormulaErrorKind::Missing { key });
        let name = name.ok_or_else(|| missing("name"))?;
        let desc = desc.ok_or_else(|| missing("desc"))?;
        let maintainer = maintainer.ok_or_else(|| missing("maintainer"))?;
        let (list_key, key, list) = actions.ok_or_else(|| missing("actions"))?;
        let actions = self.actions(list_key, key, list)?;

        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Formula {
            path: self.path.to_path_buf(),
            dir,
            name,
            namespace,
            desc,
            maintainer,
            input_args,
            environment,
            actions,
        })
    }

    fn syntax_error(&self, e: yaml::SyntaxError) -> FormulaError {
        // A `${var}` left unquoted inside `{...}` or `[...]` is the commonest way to break a
        // formula: `{` ends a plain scalar in flow style, and libyaml's message does not say so.
        let line_text =
            e.at.and_then(|at| self.text.lines().nth(at.line.saturating_sub(1)));
        let hint = match line_text {
            Some(line) if line.contains("${") && e.message.contains("flow") => {
                " (a `${var}` inside `{...}` or `[...]` must be quoted: \"${var}\")"
            }
            _ => "",
        };
        FormulaError {
            path: self.path.to_path_buf(),
            at: e.at,
            field: String::new(),
            kind: Box::new(FormulaErrorKind::Syntax {
                message: e.message,
                hint,
            }),
        }
    }

    /// The text of a mapping key; keys that are lists or mappings are refused.
    fn key_name(
        &self,
        key: &Node,
        anchor: Option<usize>,
        field: &str,
    ) -> Result<String, FormulaError> {
        match &key.kind {
            Kind::Seq(_) | Kind::Map(_) | Kind::Null => Err(self.err(
                key.at.or(anchor),
                field,
                FormulaErrorKind::WrongType {
                    expected: "a plain key",
                    found: key.describe(),
                },
            )),
            _ => Ok(key.scalar_text().unwrap_or_default()),
        }
    }

    /// A non-empty scalar value, as text.
    fn required_text(&self, value: &Node, key: &Node, field: &str) -> Result<String, FormulaError> {
        let text = match &value.kind {
            Kind::Str(_) | Kind::Number(_) | Kind::Bool(_) => {
                value.scalar_text().unwrap_or_default()
            }
            _ => return Err(self.wrong_type(value, key.at, field, "a string")),
        };
        if text.trim().is_empty() {
            return Err(self.err(value.at.or(key.at), field, FormulaErrorKind::Empty));
        }
        Ok(text)
    }

    /// A list of scalars; a single scalar is taken as a one-element list and null as none.
    fn string_list(
        &self,
        value: &Node,
        key: &Node,
        field: &str,
    ) -> Result<Vec<(String, Option<usize>)>, FormulaError> {
        match &value.kind {
            Kind::Null => Ok(Vec::new()),
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let text = self.required_text(item, key, &format!("{field}[{i}]"))?;
                    Ok((text, item.at.or(value.at).or(key.at)))
                })
                .collect(),
            Kind::Map(_) => Err(self.wrong_type(value, key.at, field, "a list of strings")),
            _ => Ok(vec![(
                self.required_text(value, key, field)?,
                value.at.or(key.at),
            )]),
        }
    }

    fn input(&self, value: &Node, key: &Node) -> Result<Vec<String>, FormulaError> {
        let entries = match &value.kind {
            Kind::Null => return Ok(Vec::new()),
            Kind::Map(entries) => entries,
            _ => return Err(self.wrong_type(value, key.at, "input", "a mapping with `args`")),
        };
        let mut args = Vec::new();
        for (k, v) in entries {
            let name = self.key_name(k, key.at, "input")?;
            if name != "args" {
                return Err(self.err(
                    k.at.or(key.at),
                    "input",
                    FormulaErrorKind::UnknownKey {
                        key: name,
                        expected: "args".into(),
                    },
                ));
            }
            for (i, (arg, at)) in self
                .string_list(v, k, "input.args")?
                .into_iter()
                .enumerate()
            {
                if !is_identifier(&arg) {
                    return Err(self.err(
                        at,
                        &format!("input.args[{i}]"),
                        FormulaErrorKind::BadName { value: arg },
                    ));
                }
                args.push(arg);
            }
        }
        Ok(args)
    }

    fn environment(
        &self,
        value: &Node,
        key: &Node,
    ) -> Result<BTreeMap<String, Vec<String>>, FormulaError> {
        let entries = match &value.kind {
            Kind::Null => return Ok(BTreeMap::new()),
            Kind::Map(entries) => entries,
            _ => {
                return Err(self.wrong_type(
                    value,
                    key.at,
                    "environment",
                    "a mapping of package lists (rpm: [...])",
                ));
            }
        };
        let mut env = BTreeMap::new();
        for (k, v) in entries {
            let kind = self.key_name(k, key.at, "environment")?;
            let field = format!("environment.{kind}");
            let packages = self.string_list(v, k, &field)?;
            env.insert(kind, packages.into_iter().map(|(p, _)| p).collect());
        }
        Ok(env)
    }

    fn actions(
        &self,
        list_key: &str,
        key: &Node,
        list: &Node,
    ) -> Result<Vec<Action>, FormulaError> {
        let items = match &list.kind {
            Kind::Seq(items) => items,
            _ => return Err(self.wrong_type(list, key.at, list_key, "a list of actions")),
        };
        if items.is_empty() {
            return Err(self.err(key.at, list_key, FormulaErrorKind::Empty));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.action(list_key, i, item, key.at))
            .collect()
    }

    fn action(
        &self,
        list_key: &str,
        index: usize,
        node: &Node,
        anchor: Option<usize>,
    ) -> Result<Action, FormulaError> {
        let bare_label = format!("{list_key}[{index}]");
        let entries: &Entries = match &node.kind {
            Kind::Map(entries) => entries,
            _ => {
                return Err(self.wrong_type(
                    node,
                    anchor,
                    &bare_label,
                    "a mapping with name and one directive",
                ));
            }
        };
        let at = node.at.or(anchor);
        let name = match node.get("name") {
            Some((k, v)) => self.required_text(v, k, &format!("{bare_label}.name"))?,
            None => {
                return Err(self.err(at, &bare_label, FormulaErrorKind::Missing { key: "name" }));
            }
        };
        let label = format!("{list_key}[{index}] (`{name}`)");

        let mut export = None;
        let mut timeout = None;
        let mut directive: Option<(String, &Node, &Node)> = None;
        for (k, v) in entries {
            let key = self.key_name(k, at, &label)?;
            match key.as_str() {
                "name" => {}
                "export" => {
                    let field = format!("{label}: export");
                    let value = self.required_text(v, k, &field)?;
                    if !is_identifier(&value) {
                        return Err(self.err(
                            v.at.or(k.at),
                            &field,
                            FormulaErrorKind::BadName { value },
                        ));
                    }
                    export = Some(value);
                }
                "timeout" => {
                    let field = format!("{label}: timeout");
                    let secs = match &v.kind {
                        Kind::Number(_) => v.scalar_text().and_then(|t| t.parse::<u64>().ok()),
                        _ => None,
                    };
                    match secs {
                        Some(n) if n > 0 => timeout = Some(std::time::Duration::from_secs(n)),
                        _ => {
                            return Err(self.wrong_type(
                                v,
                                k.at,
                                &field,
                                "a whole number of seconds above 0",
                            ));
                        }
                    }
                }
                d if DIRECTIVES.contains(&d) => {
                    if let Some((first, _, _)) = &directive {
                        return Err(self.err(
                            k.at.or(at),
                            &label,
                            FormulaErrorKind::TwoDirectives {
                                first: first.clone(),
                                second: key,
                            },
                        ));
                    }
                    directive = Some((key, k, v));
                }
                d if FEDORA_DIRECTIVES.contains(&d) => {
                    return Err(self.err(
                        k.at.or(at),
                        &label,
                        FormulaErrorKind::UnsupportedDirective { directive: key },
                    ));
                }
                _ => {
                    return Err(self.err(
                        k.at.or(at),
                        &label,
                        FormulaErrorKind::UnknownDirective { key },
                    ));
                }
            }
        }
        let (keyword, k, v) =
            directive.ok_or_else(|| self.err(at, &label, FormulaErrorKind::NoDirective))?;
        let directive = self.directive(&keyword, k, v, &label)?;
        let line = at.map_or(0, |o| LineCol::of_offset(self.text, o).line);
        Ok(Action {
            name,
            directive,
            export,
            timeout,
            line,
        })
    }

    fn directive(
        &self,
        keyword: &str,
        key: &Node,
        value: &Node,
        label: &str,
    ) -> Result<Directive, FormulaError> {
        let field = format!("{label}: {keyword}");
        match keyword {
            "shell" => {
                let commands = match &value.kind {
                    Kind::Seq(items) => items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let anchor = item.at.or(value.at).or(key.at);
                            self.template(item, anchor, &format!("{field}[{i}]"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Kind::Map(_) => {
                        return Err(self.wrong_type(value, key.at, &field, "a list of commands"));
                    }
                    _ => vec![self.template(value, key.at, &field)?],
                };
                if commands.is_empty() {
                    return Err(self.err(key.at, &field, FormulaErrorKind::Empty));
                }
                Ok(Directive::Shell(commands))
            }
            "python" => {
                let entries =
                    self.directive_map(value, key, &field, "a mapping with file and callable")?;
                let mut file = None;
                let mut callable = None;
                let mut kwargs = BTreeMap::new();
                for (k, v) in entries {
                    let name = self.key_name(k, key.at, &field)?;
                    let sub = format!("{field}.{name}");
                    let t = self.template(v, k.at, &sub)?;
                    match name.as_str() {
                        "file" => file = Some(t),
                        "callable" => callable = Some(t),
                        _ => {
                            kwargs.insert(name, t);
                        }
                    }
                }
                let at = value.at.or(key.at);
                Ok(Directive::Python {
                    file: file.ok_or_else(|| {
                        self.err(at, &field, FormulaErrorKind::Missing { key: "file" })
                    })?,
                    callable: callable.ok_or_else(|| {
                        self.err(at, &field, FormulaErrorKind::Missing { key: "callable" })
                    })?,
                    kwargs,
                })
            }
            "resultsdb" => {
                let (which, t) = self.one_of(
                    value,
                    key,
                    &field,
                    &["results", "file"],
                    "`results` (ResultsYAML text) or `file` (a ResultsYAML file)",
                )?;
                Ok(Directive::ResultsDb(if which == "file" {
                    ResultsSource::File(t)
                } else {
                    ResultsSource::Text(t)
                }))
            }
            "exitcode" => {
                let (which, results) = self.one_of(
                    value,
                    key,
                    &field,
                    &["result_last", "result_worst"],
                    "`result_last` or `result_worst`",
                )?;
                let mode = if which == "result_worst" {
                    ExitMode::Worst
                } else {
                    ExitMode::Last
                };
                Ok(Directive::ExitCode { mode, results })
            }
            _ => {
                let entries =
                    self.directive_map(value, key, &field, "a mapping with result (and msg)")?;
                let mut result = None;
                let mut msg = None;
                for (k, v) in entries {
                    let name = self.key_name(k, key.at, &field)?;
                    let sub = format!("{field}.{name}");
                    match name.as_str() {
                        "result" => result = Some(self.template(v, k.at, &sub)?),
                        "msg" => msg = Some(self.template(v, k.at, &sub)?),
                        _ => {
                            return Err(self.err(
                                k.at.or(key.at),
                                &field,
                                FormulaErrorKind::UnknownKey {
                                    key: name,
                                    expected: "result, msg".into(),
                                },
                            ));
                        }
                    }
                }
                let at = value.at.or(key.at);
                Ok(Directive::Dummy {
                    result: result.ok_or_else(|| {
                        self.err(at, &field, FormulaErrorKind::Missing { key: "result" })
                    })?,
                    msg,
                })
            }
        }
    }

    fn directive_map<'n>(
        &self,
        value: &'n Node,
        key: &Node,
        field: &str,
        expected: &'static str,
    ) -> Result<&'n Entries, FormulaError> {
        match &value.kind {
            Kind::Map(entries) => Ok(entries),
            _ => Err(self.wrong_type(value, key.at, field, expected)),
        }
    }

    /// A directive mapping holding exactly one of `options`, and nothing else.
    fn one_of(
        &self,
        value: &Node,
        key: &Node,
        field: &str,
        options: &[&'static str],
        described: &'static str,
    ) -> Result<(&'static str, Template), FormulaError> {
        let entries = self.directive_map(value, key, field, described)?;
        let mut found: Option<(&'static str, Template)> = None;
        for (k, v) in entries {
            let name = self.key_name(k, key.at, field)?;
            let Some(option) = options.iter().copied().find(|o| *o == name) else {
                return Err(self.err(
                    k.at.or(key.at),
                    field,
                    FormulaErrorKind::UnknownKey {
                        key: name,
                        expected: options.join(", "),
                    },
                ));
            };
            if found.is_some() {
                return Err(self.err(
                    k.at.or(key.at),
                    field,
                    FormulaErrorKind::ExactlyOne { options: described },
                ));
            }
            found = Some((option, self.template(v, k.at, &format!("{field}.{name}"))?));
        }
        found.ok_or_else(|| {
            self.err(
                value.at.or(key.at),
                field,
                FormulaErrorKind::ExactlyOne { options: described },
            )
        })
    }

    /// A scalar value as a template, each variable placed in the file.
    ///
    /// Verbatim scalars map offsets directly; for rewritten ones (escapes, block scalars) the
    /// `${name}` text is searched for from `anchor` onwards, which finds it in all but
    /// contrived cases and otherwise leaves the anchor as the place.
    fn template(
        &self,
        node: &Node,
        anchor: Option<usize>,
        field: &str,
    ) -> Result<Template, FormulaError> {
        let text = match &node.kind {
            Kind::Str(_) | Kind::Number(_) | Kind::Bool(_) => {
                node.scalar_text().unwrap_or_default()
            }
            _ => return Err(self.wrong_type(node, anchor, field, "a string, number or boolean")),
        };
        let exact_base = node.at.filter(|_| node.verbatim);
        let search_from = node.at.or(anchor);
        // The k-th `needle` in the value is taken to be the k-th one in the source after the
        // anchor, so repeated variables each get their own place.
        let place = |offset: usize, needle: &str| -> Option<usize> {
            if let Some(base) = exact_base {
                return Some(base + offset);
            }
            let from = search_from?;
            let nth = text
                .get(..offset)
                .map_or(0, |before| before.matches(needle).count());
            let found = self
                .text
                .get(from..)
                .and_then(|rest| rest.match_indices(needle).nth(nth))
                .map(|(rel, _)| from + rel);
            Some(found.unwrap_or(from))
        };
        let mut template = match Template::parse(&text) {
            Ok(t) => t,
            Err(e) => {
                let at = match &e {
                    VarError::Unterminated { offset } => place(*offset, "${"),
                    VarError::InvalidName { name, offset } => {
                        place(*offset, &format!("${{{name}}}"))
                    }
                    VarError::Unknown { .. } => search_from,
                };
                return Err(self.err(at, field, FormulaErrorKind::Template(e)));
            }
        };
        template.locate(|offset, name| {
            place(offset, &format!("${{{name}}}")).map(|o| LineCol::of_offset(self.text, o))
        });
        Ok(template)
    }
}
