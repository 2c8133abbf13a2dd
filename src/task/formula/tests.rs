use super::*;
use crate::task::Vars;
use proptest::prelude::*;

const BUILTIN: &[&str] = &[
    "workdir",
    "artifactsdir",
    "uuid",
    "arch",
    "jobid",
    "koji_build",
];

/// The example from shared/reference/formats.md, verbatim.
const FORMATS_EXAMPLE: &str = r#"name: python-versions            # required
namespace: dist                  # optional
desc: check each RPM for Python deps   # required
maintainer: someone              # required
input:
  args: [koji_build, arch]       # which variables the task expects
environment:
  rpm: [python3-dnf]             # packages the guest needs (install before actions)
actions:
  - name: run the check
    python: {file: check.py, callable: run, workdir: "${workdir}", build: "${koji_build}"}
    export: check_output         # the action's return value becomes ${check_output}
  - name: report
    resultsdb: {results: "${check_output}"}
"#;

fn parse(text: &str) -> Result<Formula, FormulaError> {
    Formula::parse(text, Path::new("tasks/rpmlint/runtask.yml"))
}

fn err(text: &str) -> FormulaError {
    match parse(text) {
        Ok(f) => panic!("expected an error, parsed {f:#?}"),
        Err(e) => e,
    }
}

fn at(line: usize, column: usize) -> Option<LineCol> {
    Some(LineCol { line, column })
}

fn t(s: &str) -> Template {
    Template::parse(s).unwrap()
}

/// A minimal valid header, so each test shows only the actions it is about.
fn with_actions(actions: &str) -> String {
    format!("name: rpmlint\ndesc: run rpmlint\nmaintainer: someone\nactions:\n{actions}")
}

#[test]
fn formats_md_example_parses() {
    let f = parse(FORMATS_EXAMPLE).unwrap();
    assert_eq!(f.path, Path::new("tasks/rpmlint/runtask.yml"));
    assert_eq!(f.dir, Path::new("tasks/rpmlint"));
    assert_eq!(f.name, "python-versions");
    assert_eq!(f.namespace.as_deref(), Some("dist"));
    assert_eq!(f.checkname(), "dist.python-versions");
    assert_eq!(f.desc, "check each RPM for Python deps");
    assert_eq!(f.maintainer, "someone");
    assert_eq!(f.input_args, ["koji_build", "arch"]);
    assert_eq!(f.environment.get("rpm").unwrap(), &["python3-dnf"]);
    assert_eq!(f.actions.len(), 2);

    let run = &f.actions[0];
    assert_eq!(run.name, "run the check");
    assert_eq!(run.export.as_deref(), Some("check_output"));
    assert_eq!(run.line, 10);
    let Directive::Python {
        file,
        callable,
        kwargs,
    } = &run.directive
    else {
        panic!("{:?}", run.directive);
    };
    assert_eq!(file.as_source(), "check.py");
    assert_eq!(callable.as_source(), "run");
    assert_eq!(kwargs.keys().collect::<Vec<_>>(), ["build", "workdir"]);
    let vars: Vars = [("workdir", "/w"), ("koji_build", "xchat-1-1.fc40")]
        .into_iter()
        .collect();
    assert_eq!(kwargs["build"].render(&vars).unwrap(), "xchat-1-1.fc40");

    let report = &f.actions[1];
    assert_eq!(report.line, 13);
    assert_eq!(report.export, None);
    assert_eq!(
        report.directive,
        Directive::ResultsDb(ResultsSource::Text(t("${check_output}")))
    );
    f.check_variables(BUILTIN).unwrap();
}

#[test]
fn no_namespace_checkname_is_name() {
    let f = parse(&with_actions("  - name: a\n    shell: [true]\n")).unwrap();
    assert_eq!(f.namespace, None);
    assert_eq!(f.checkname(), "rpmlint");
    assert_eq!(f.dir, Path::new("tasks/rpmlint"));
    assert!(f.input_args.is_empty());
    assert!(f.environment.is_empty());
    let bare = Formula::parse(
        &with_actions("  - {name: a, shell: x}\n"),
        Path::new("runtask.yml"),
    );
    assert_eq!(bare.unwrap().dir, Path::new("."));
}

#[test]
fn task_is_a_synonym_of_actions() {
    let text = "name: n\ndesc: d\nmaintainer: m\ntask:\n  - name: say\n    shell: echo hi\n";
    let f = parse(text).unwrap();
    assert_eq!(f.actions[0].directive, Directive::Shell(vec![t("echo hi")]));
    assert_eq!(f.actions[0].line, 5);
}

#[test]
fn task_and_actions_together_is_an_error() {
    let e = err(&format!(
        "{}task:\n  - {{name: b, shell: y}}\n",
        with_actions("  - {name: a, shell: x}\n")
    ));
    assert!(matches!(*e.kind, FormulaErrorKind::ActionsAndTask), "{e}");
    assert_eq!(e.at, at(6, 1));
}

#[test]
fn every_directive() {
    let text = with_actions(
        r#"  - name: one command
    shell: make check
  - name: commands
    shell:
      - cd ${workdir}
      - ./run --arch=${arch} 2>&1 | tee $HOME/log
  - name: python
    python:
      file: check.py
      callable: run
      count: 3
      ratio: 1.5
      verbose: true
      workdir: ${workdir}
    export: out
  - name: results text
    resultsdb:
      results: ${out}
  - name: results file
    resultsdb: {file: "${artifactsdir}/results.yml"}
  - name: last
    exitcode: {result_last: "${out}"}
  - name: worst
    exitcode:
      result_worst: ${out}
  - name: dummy
    dummy: {result: PASS}
  - name: dummy with msg
    dummy: {result: FAIL, msg: "it failed on ${arch}"}
"#,
    );
    let f = parse(&text).unwrap();
    let d: Vec<&Directive> = f.actions.iter().map(|a| &a.directive).collect();
    assert_eq!(d[0], &Directive::Shell(vec![t("make check")]));
    assert_eq!(
        d[1],
        &Directive::Shell(vec![
            t("cd ${workdir}"),
            t("./run --arch=${arch} 2>&1 | tee $HOME/log")
        ])
    );
    let kwargs: BTreeMap<String, Template> = [
        ("count", "3"),
        ("ratio", "1.5"),
        ("verbose", "true"),
        ("workdir", "${workdir}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), t(v)))
    .collect();
    assert_eq!(
        d[2],
        &Directive::Python {
            file: t("check.py"),
            callable: t("run"),
            kwargs
        }
    );
    assert_eq!(f.actions[2].export.as_deref(), Some("out"));
    assert_eq!(
        d[3],
        &Directive::ResultsDb(ResultsSource::Text(t("${out}")))
    );
    assert_eq!(
        d[4],
        &Directive::ResultsDb(ResultsSource::File(t("${artifactsdir}/results.yml")))
    );
    assert_eq!(
        d[5],
        &Directive::ExitCode {
            mode: ExitMode::Last,
            results: t("${out}")
        }
    );
    assert_eq!(
        d[6],
        &Directive::ExitCode {
            mode: ExitMode::Worst,
            results: t("${out}")
        }
    );
    assert_eq!(
        d[7],
        &Directive::Dummy {
            result: t("PASS"),
            msg: None
        }
    );
    assert_eq!(
        d[8],
        &Directive::Dummy {
            result: t("FAIL"),
            msg: Some(t("it failed on ${arch}"))
        }
    );
    let keywords: Vec<_> = d.iter().map(|d| d.keyword()).collect();
    assert_eq!(
        keywords,
        [
            "shell",
            "shell",
            "python",
            "resultsdb",
            "resultsdb",
            "exitcode",
            "exitcode",
            "dummy",
            "dummy"
        ]
    );
    f.check_variables(BUILTIN).unwrap();
}

#[test]
fn templates_name_their_fields() {
    let f = parse(&with_actions(
            "  - name: p\n    python: {file: f.py, callable: c, x: \"${a}\"}\n  - name: s\n    shell: [a, b]\n",
        ))
        .unwrap();
    let fields: Vec<String> = f
        .actions
        .iter()
        .flat_map(|a| a.directive.templates())
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        [
            "python.file",
            "python.callable",
            "python.x",
            "shell[0]",
            "shell[1]"
        ]
    );
}

#[test]
fn bad_indentation_is_a_syntax_error_with_place() {
    let text =
        "name: n\ndesc: d\nmaintainer: m\nactions:\n  - name: a\n    shell: [x]\n   export: y\n";
    let e = err(text);
    let FormulaErrorKind::Syntax { message, .. } = &*e.kind else {
        panic!("{e}");
    };
    assert!(!message.is_empty());
    assert_eq!(e.at.map(|a| a.line), Some(7), "{e}");
    let shown = e.to_string();
    assert!(shown.starts_with("tasks/rpmlint/runtask.yml:7:"), "{shown}");
    assert!(!shown.contains('\n'));
}

#[test]
fn unquoted_variable_in_flow_mapping_gets_a_hint() {
    let e = err(&with_actions(
        "  - name: a\n    python: {file: f.py, callable: c, w: ${workdir}}\n",
    ));
    assert!(matches!(*e.kind, FormulaErrorKind::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("must be quoted"), "{e}");
    assert_eq!(e.at.map(|a| a.line), Some(6));
}

#[test]
fn block_context_errors_get_no_flow_hint() {
    let e = err(&with_actions("  - name: a\n    shell: echo ${x}: y\n"));
    assert!(
        matches!(*e.kind, FormulaErrorKind::Syntax { hint: "", .. }),
        "{e}"
    );
    assert_eq!(e.at.map(|a| a.line), Some(6));
}

#[test]
fn unknown_directive_names_action_and_place() {
    let text =
        with_actions("  - name: fetch\n    shell: [x]\n  - name: report\n    frobnicate: {x: 1}\n");
    let e = err(&text);
    assert!(
        matches!(&*e.kind, FormulaErrorKind::UnknownDirective { key } if key == "frobnicate"),
        "{e}"
    );
    assert_eq!(e.field, "actions[1] (`report`)");
    assert_eq!(e.at, at(8, 5));
    assert_eq!(
        e.to_string(),
        "tasks/rpmlint/runtask.yml:8:5: actions[1] (`report`): unknown directive `frobnicate` \
             (expected one of shell, python, resultsdb, exitcode, dummy; an action may also have `name`, `export` and `timeout`)"
    );
}

#[test]
fn fedora_directive_is_explained() {
    // taskotron-python-versions' runtask.yml, as published.
    let text = "name: python-versions\nnamespace: dist\ndesc: |\n  Download and check.\nmaintainer: churchyard\n\ninput:\n    args:\n        - koji_build\n\nenvironment:\n    rpm:\n        - rpm-python\n        - python2-dnf\n\nactions:\n    - name: download rpms from koji\n      koji:\n        action: download\n        koji_build: ${koji_build}\n        arch: ['all']\n        src: True\n";
    let e = err(text);
    assert!(
        matches!(&*e.kind, FormulaErrorKind::UnsupportedDirective { directive } if directive == "koji"),
        "{e}"
    );
    assert_eq!(e.at, at(18, 7));
    assert_eq!(e.field, "actions[0] (`download rpms from koji`)");
    let shown = e.to_string();
    assert!(
        shown
            .contains("directive `koji` is not supported: koji, bodhi, distgit, createrepo, xunit"),
        "{shown}"
    );
    assert!(
        shown.contains("shell, python, resultsdb, exitcode, dummy"),
        "{shown}"
    );
}

#[test]
fn unknown_variable_in_shell_command() {
    let f = parse(&with_actions(
        "  - name: build\n    shell:\n      - echo ok\n      - make -C ${workdri} all\n",
    ))
    .unwrap();
    let e = f.check_variables(BUILTIN).unwrap_err();
    let FormulaErrorKind::UnknownVariable {
        name,
        action,
        known,
        exported_by,
    } = &*e.kind
    else {
        panic!("{e}");
    };
    assert_eq!(name, "workdri");
    assert_eq!(*action, 0);
    assert!(known.contains(&"workdir".to_string()));
    assert_eq!(*exported_by, None);
    assert_eq!(e.field, "actions[0] (`build`): shell[1]");
    assert_eq!(e.at, at(8, 17));
    let shown = e.to_string();
    assert!(
            shown.starts_with("tasks/rpmlint/runtask.yml:8:17: actions[0] (`build`): shell[1]: unknown variable `${workdri}` (known here: arch, artifactsdir,"),
            "{shown}"
        );
}

#[test]
fn unknown_variable_in_python_kwargs() {
    let f = parse(&with_actions(
            "  - name: check\n    python:\n      file: check.py\n      callable: run\n      build: ${koji_build}\n      update: \"${bodhi_update}\"\n",
        ))
        .unwrap();
    let e = f.check_variables(BUILTIN).unwrap_err();
    assert!(
        matches!(&*e.kind, FormulaErrorKind::UnknownVariable { name, .. } if name == "bodhi_update"),
        "{e}"
    );
    assert_eq!(e.field, "actions[0] (`check`): python.update");
    assert_eq!(e.at, at(10, 16));
    // With the variable provided the same formula is fine.
    f.check_variables(&["koji_build", "bodhi_update"]).unwrap();
}

#[test]
fn variable_used_before_its_export() {
    let f = parse(&with_actions(
            "  - name: report\n    resultsdb:\n      results: ${output}\n  - name: check\n    python: {file: c.py, callable: run}\n    export: output\n",
        ))
        .unwrap();
    let e = f.check_variables(BUILTIN).unwrap_err();
    let FormulaErrorKind::UnknownVariable {
        name,
        action,
        exported_by,
        ..
    } = &*e.kind
    else {
        panic!("{e}");
    };
    assert_eq!(name, "output");
    assert_eq!(*action, 0);
    assert_eq!(exported_by.as_ref(), Some(&(1, "check".to_string())));
    assert_eq!(e.at, at(7, 16));
    assert!(
        e.to_string()
            .ends_with("it is exported only later, by actions[1] (`check`))"),
        "{e}"
    );
}

#[test]
fn export_is_visible_to_later_actions_only() {
    let f = parse(&with_actions(
            "  - name: check\n    python: {file: c.py, callable: run}\n    export: output\n  - name: report\n    resultsdb: {results: \"${output}\"}\n",
        ))
        .unwrap();
    f.check_variables(&[]).unwrap();
    let own = parse(&with_actions(
        "  - name: check\n    shell: [\"echo ${output}\"]\n    export: output\n",
    ))
    .unwrap();
    assert!(
        own.check_variables(&[]).is_err(),
        "an action cannot use its own export"
    );
}

#[test]
fn first_unknown_variable_is_the_first_in_the_file() {
    let f = parse(&with_actions(
        "  - name: p\n    python:\n      file: ${zzz}.py\n      callable: run\n      aaa: ${aaa}\n",
    ))
    .unwrap();
    let e = f.check_variables(&[]).unwrap_err();
    assert!(
        matches!(&*e.kind, FormulaErrorKind::UnknownVariable { name, .. } if name == "zzz"),
        "{e}"
    );
    assert_eq!(e.at, at(7, 13));
}

#[test]
fn variables_in_block_and_escaped_scalars_are_placed() {
    let f = parse(&with_actions(
            "  - name: s\n    shell:\n      - |\n        set -e\n        echo ${one} ${one} ${two}\n      - \"tab\\there ${three}\"\n",
        ))
        .unwrap();
    let places: Vec<(String, Option<LineCol>)> = f.actions[0]
        .directive
        .templates()
        .into_iter()
        .flat_map(|(_, t)| {
            t.variable_places()
                .map(|(n, _, a)| (n.to_string(), a))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        places,
        [
            ("one".into(), at(9, 14)),
            ("one".into(), at(9, 21)),
            ("two".into(), at(9, 28)),
            ("three".into(), at(10, 20)),
        ]
    );
}

#[test]
fn missing_required_keys() {
    for (missing, text) in [
        (
            "name",
            "desc: d\nmaintainer: m\nactions: [{name: a, shell: x}]\n",
        ),
        (
            "desc",
            "name: n\nmaintainer: m\nactions: [{name: a, shell: x}]\n",
        ),
        (
            "maintainer",
            "name: n\ndesc: d\nactions: [{name: a, shell: x}]\n",
        ),
        ("actions", "name: n\ndesc: d\nmaintainer: m\n"),
    ] {
        let e = err(text);
        assert!(
            matches!(&*e.kind, FormulaErrorKind::Missing { key } if *key == missing),
            "{missing}: {e}"
        );
        assert_eq!(e.at, at(1, 1));
        assert!(
            e.to_string()
                .contains(&format!("missing required key `{missing}`")),
            "{e}"
        );
    }
}

#[test]
fn required_key_without_value_is_empty() {
    let e = err("name: n\ndesc:\nmaintainer: m\nactions: [{name: a, shell: x}]\n");
    assert!(matches!(*e.kind, FormulaErrorKind::Empty), "{e}");
    assert_eq!(e.field, "desc");
    assert_eq!(e.at, at(2, 1));
}

#[test]
fn action_without_name() {
    let e = err(&with_actions("  - name: a\n    shell: x\n  - shell: y\n"));
    assert!(
        matches!(&*e.kind, FormulaErrorKind::Missing { key } if *key == "name"),
        "{e}"
    );
    assert_eq!(e.field, "actions[1]");
    assert_eq!(e.at, at(7, 5));
}

#[test]
fn two_directives_point_at_the_second() {
    let e = err(&with_actions(
        "  - name: both\n    shell: [make]\n    dummy: {result: PASS}\n",
    ));
    assert!(
        matches!(&*e.kind, FormulaErrorKind::TwoDirectives { first, second } if first == "shell" && second == "dummy"),
        "{e}"
    );
    assert_eq!(e.at, at(7, 5));
    assert_eq!(e.field, "actions[0] (`both`)");
}

#[test]
fn zero_directives() {
    let e = err(&with_actions("  - name: nothing\n    export: x\n"));
    assert!(matches!(*e.kind, FormulaErrorKind::NoDirective), "{e}");
    assert_eq!(e.at, at(5, 5));
}

#[test]
fn unterminated_variable_is_placed() {
    let e = err(&with_actions(
        "  - name: s\n    shell:\n      - echo ${workdir\n",
    ));
    assert!(
        matches!(
            *e.kind,
            FormulaErrorKind::Template(VarError::Unterminated { offset: 5 })
        ),
        "{e}"
    );
    assert_eq!(e.field, "actions[0] (`s`): shell[0]");
    assert_eq!(e.at, at(7, 14));
    assert!(e.to_string().contains("unterminated `${`"), "{e}");

    let e = err(&with_actions(
        "  - name: s\n    shell: |\n      echo ok\n      echo ${x} ${y\n",
    ));
    assert!(
        matches!(
            *e.kind,
            FormulaErrorKind::Template(VarError::Unterminated { .. })
        ),
        "{e}"
    );
    assert_eq!(e.at, at(8, 17));
}

#[test]
fn invalid_variable_name_is_placed() {
    let e = err(&with_actions(
        "  - name: s\n    dummy: {result: \"${a b}\"}\n",
    ));
    assert!(
        matches!(&*e.kind, FormulaErrorKind::Template(VarError::InvalidName { name, .. }) if name == "a b"),
        "{e}"
    );
    assert_eq!(e.at, at(6, 22));
}

#[test]
fn export_must_be_an_identifier() {
    let e = err(&with_actions(
        "  - name: s\n    shell: [x]\n    export: check-output\n",
    ));
    assert!(
        matches!(&*e.kind, FormulaErrorKind::BadName { value } if value == "check-output"),
        "{e}"
    );
    assert_eq!(e.field, "actions[0] (`s`): export");
    assert_eq!(e.at, at(7, 13));
}

#[test]
fn unknown_top_level_key_lists_accepted_keys() {
    let e = err(&format!(
        "{}schedule: daily\n",
        with_actions("  - {name: a, shell: x}\n")
    ));
    assert!(
        matches!(&*e.kind, FormulaErrorKind::UnknownKey { key, .. } if key == "schedule"),
        "{e}"
    );
    assert_eq!(e.at, at(6, 1));
    assert!(
        e.to_string()
            .contains("expected name, namespace, desc, maintainer, input, environment, actions"),
        "{e}"
    );
}

#[test]
fn directive_argument_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "  - name: p\n    python: {callable: run}\n",
            "missing required key `file`",
        ),
        (
            "  - name: p\n    python: {file: x.py}\n",
            "missing required key `callable`",
        ),
        (
            "  - name: p\n    python: {file: x.py, callable: run, opts: {a: 1}}\n",
            "expected a string, number or boolean, found a mapping",
        ),
        (
            "  - name: p\n    python: run.py\n",
            "expected a mapping with file and callable, found a string",
        ),
        (
            "  - name: r\n    resultsdb: {}\n",
            "needs exactly one of `results`",
        ),
        (
            "  - name: r\n    resultsdb: {results: a, file: b}\n",
            "needs exactly one of `results`",
        ),
        (
            "  - name: r\n    resultsdb: {result: a}\n",
            "unknown key `result` (expected results, file)",
        ),
        (
            "  - name: e\n    exitcode: {result_first: a}\n",
            "unknown key `result_first` (expected result_last, result_worst)",
        ),
        (
            "  - name: d\n    dummy: {msg: hi}\n",
            "missing required key `result`",
        ),
        (
            "  - name: d\n    dummy: {result: PASS, extra: 1}\n",
            "unknown key `extra` (expected result, msg)",
        ),
        ("  - name: s\n    shell: []\n", "must not be empty"),
        ("  - name: s\n    shell:\n", "must not be empty"),
        (
            "  - name: s\n    shell: [[nested]]\n",
            "expected a string, number or boolean, found a list",
        ),
        (
            "  - just a string\n",
            "expected a mapping with name and one directive, found a string",
        ),
    ];
    for (actions, expected) in cases {
        let e = err(&with_actions(actions));
        let shown = e.to_string();
        assert!(shown.contains(expected), "{actions:?}: {shown}");
        assert!(e.at.is_some_and(|a| a.line >= 5), "{actions:?}: {shown}");
        assert!(!shown.contains('\n'));
    }
}

#[test]
fn structural_errors() {
    let e = err("");
    assert!(matches!(*e.kind, FormulaErrorKind::EmptyFile), "{e}");
    assert_eq!(
        e.to_string().split(':').next(),
        Some("tasks/rpmlint/runtask.yml")
    );

    let e = err("- a\n- b\n");
    assert!(
        matches!(
            *e.kind,
            FormulaErrorKind::WrongType {
                found: "a list",
                ..
            }
        ),
        "{e}"
    );

    let e = err("name: n\ndesc: d\nmaintainer: m\nactions: []\n");
    assert!(matches!(*e.kind, FormulaErrorKind::Empty), "{e}");
    assert_eq!(e.at, at(4, 1));

    let e = err("name: n\ndesc: d\nmaintainer: m\nactions: {a: 1}\n");
    assert!(
        matches!(
            *e.kind,
            FormulaErrorKind::WrongType {
                found: "a mapping",
                ..
            }
        ),
        "{e}"
    );

    let e = err("name: n\nname: m\n");
    assert!(
        matches!(&*e.kind, FormulaErrorKind::Syntax { message, .. } if message == "duplicate key `name`"),
        "{e}"
    );
    assert_eq!(e.at, at(2, 1));

    let e = err(&format!(
        "input:\n  args: [koji build]\n{}",
        with_actions("  - {name: a, shell: x}\n")
    ));
    assert!(
        matches!(&*e.kind, FormulaErrorKind::BadName { value } if value == "koji build"),
        "{e}"
    );
    assert_eq!(e.field, "input.args[0]");
    assert_eq!(e.at, at(2, 10));
}

#[test]
fn environment_lists() {
    let f = parse(&format!(
        "environment:\n  rpm: [a, b]\n  deb: c\n  pip:\n{}",
        with_actions("  - {name: a, shell: x}\n")
    ))
    .unwrap();
    assert_eq!(f.environment["rpm"], ["a", "b"]);
    assert_eq!(f.environment["deb"], ["c"]);
    assert!(f.environment["pip"].is_empty());
}

#[test]
fn load_from_directory_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runtask.yml");
    std::fs::write(&file, FORMATS_EXAMPLE).unwrap();
    let from_dir = Formula::load(dir.path()).unwrap();
    assert_eq!(from_dir.path, file);
    assert_eq!(from_dir.dir, dir.path());
    let from_file = Formula::load(&file).unwrap();
    assert_eq!(from_dir, from_file);

    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("runtask.yaml"), FORMATS_EXAMPLE).unwrap();
    assert_eq!(Formula::load(other.path()).unwrap().name, "python-versions");

    let empty = tempfile::tempdir().unwrap();
    let e = Formula::load(empty.path()).unwrap_err();
    assert!(matches!(*e.kind, FormulaErrorKind::Read(_)), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&empty.path().join("runtask.yml").display().to_string()),
        "{shown}"
    );
    assert!(shown.contains("cannot read the task formula"), "{shown}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn parse_never_panics_on_text(s in "\\PC{0,200}") {
        if let Ok(f) = parse(&s) {
            let _ = f.check_variables(BUILTIN);
        }
    }

    #[test]
    fn parse_never_panics_on_yamlish(text in crate::task::yaml::strategies::text_from(crate::task::yaml::strategies::value())) {
        match parse(&text) {
            Ok(f) => { let _ = f.check_variables(BUILTIN); }
            Err(e) => prop_assert!(!e.to_string().contains('\n'), "{}", e),
        }
    }

    #[test]
    fn parse_never_panics_on_formula_shaped_input(
        actions in prop::collection::vec(crate::task::yaml::strategies::value(), 1..4),
        mutate in any::<bool>(),
    ) {
        let mut root = serde_norway::Mapping::new();
        for (k, v) in [("name", "n"), ("desc", "d"), ("maintainer", "m")] {
            root.insert(k.into(), v.into());
        }
        root.insert("actions".into(), serde_norway::Value::Sequence(actions));
        let mut text = serde_norway::to_string(&root).unwrap_or_default();
        if mutate {
            text = text.replacen("  ", " ", 1);
        }
        match parse(&text) {
            Ok(f) => { let _ = f.check_variables(BUILTIN); }
            Err(e) => prop_assert!(!e.to_string().contains('\n'), "{}", e),
        }
    }
}

#[test]
fn action_timeouts_are_whole_seconds() {
    let ok =
        "name: n\ndesc: d\nmaintainer: m\nactions:\n  - name: a\n    shell: [x]\n    timeout: 30\n";
    let f = Formula::parse(ok, Path::new("t.yml")).unwrap();
    assert_eq!(
        f.actions[0].timeout,
        Some(std::time::Duration::from_secs(30))
    );
    for bad in ["0", "-1", "soon", "1.5"] {
        let text = format!(
            "name: n\ndesc: d\nmaintainer: m\nactions:\n  - name: a\n    shell: [x]\n    timeout: {bad}\n"
        );
        let e = Formula::parse(&text, Path::new("t.yml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.yml:7:") && e.contains("timeout"),
            "{bad}: {e}"
        );
    }
}
