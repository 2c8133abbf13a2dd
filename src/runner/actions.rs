//! Executes the directives of a formula's actions on a session.
//!
//! Directives that only compute (`resultsdb`, `exitcode`, `dummy`) run here in ferrotron;
//! those that run code (`shell`, `python`) go through the session, so they behave the same
//! on this host and in a guest.

use std::collections::BTreeMap;

use crate::guest::{Command, GuestError, Session, Stream, shell_quote, transfer};
use crate::outcome::Outcome;
use crate::results::{self, CheckResult, ResultsContext};
use crate::task::{Action, Directive, ExitMode, ResultsSource, Template, Vars};

use super::event::{Event, LineBuffer};

/// Largest value an action may export (and largest results file read).
const MAX_EXPORT: u64 = 8 * 1024 * 1024;

/// Why an action did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The task's own fault: a command failed, results were malformed.
    #[error("{0}")]
    Task(String),
    /// The machine or ferrotron failed underneath the task.
    #[error(transparent)]
    Guest(GuestError),
}

impl From<GuestError> for ActionError {
    /// A guest that answers past a cap (an export, a results file) is the task's doing: the
    /// task controls the guest. Anything else is the machine's.
    fn from(e: GuestError) -> Self {
        match e {
            GuestError::OverCap(m) => ActionError::Task(m),
            e => ActionError::Guest(e),
        }
    }
}

/// Where the task's files live on the instance, as the task sees them.
#[derive(Debug, Clone)]
pub struct Layout {
    pub workdir: String,
    pub artifactsdir: String,
    /// ferrotron's own scratch space (python return values).
    pub internal: String,
}

impl Layout {
    pub fn under(root: &str) -> Layout {
        let root = root.trim_end_matches('/');
        Layout {
            workdir: format!("{root}/work"),
            artifactsdir: format!("{root}/artifacts"),
            internal: format!("{root}/.ferrotron"),
        }
    }
}

/// What the run accumulates from its actions.
#[derive(Debug, Default)]
pub struct TaskState {
    pub results: Vec<CheckResult>,
    /// Set by the `exitcode` directive.
    pub exit_code: Option<i32>,
}

pub struct ActionContext<'a> {
    pub session: &'a dyn Session,
    pub layout: &'a Layout,
    pub checkname: &'a str,
    pub emit: &'a (dyn Fn(Event) + Send + Sync),
}

/// Runs one action and returns the value it exports.
pub async fn run_action(
    cx: &ActionContext<'_>,
    index: usize,
    action: &Action,
    vars: &Vars,
    state: &mut TaskState,
) -> Result<String, ActionError> {
    let render = |t: &Template| {
        t.render(vars)
            .map_err(|e| ActionError::Task(format!("action `{}`: {e}", action.name)))
    };
    match &action.directive {
        // The export is the stdout of all commands, in order; stderr is only shown.
        Directive::Shell(commands) => {
            let mut exported = Vec::new();
            for command in commands {
                // Shown in errors as written; run with values out of the shell's reach.
                let script = render(command)?;
                let run = command
                    .render_for_shell(vars)
                    .map_err(|e| ActionError::Task(format!("action `{}`: {e}", action.name)))?;
                let (status, stdout) = exec_streamed(cx, &action.name, &run).await?;
                exported.extend_from_slice(&stdout);
                if status != 0 {
                    return Err(ActionError::Task(format!(
                        "command `{}` exited with status {status}",
                        one_line(&script)
                    )));
                }
            }
            Ok(String::from_utf8_lossy(&exported).trim_end().to_string())
        }
        Directive::Python {
            file,
            callable,
            kwargs,
        } => {
            let kwargs: BTreeMap<String, String> = kwargs
                .iter()
                .map(|(k, v)| Ok((k.clone(), render(v)?)))
                .collect::<Result<_, ActionError>>()?;
            let out = format!("{}/export-{index}", cx.layout.internal);
            let script = format!(
                "python3 -c {} {} {} {} {}",
                shell_quote(PYTHON_SHIM),
                shell_quote(&render(file)?),
                shell_quote(&render(callable)?),
                shell_quote(&serde_json::to_string(&kwargs).expect("strings serialise")),
                shell_quote(&out),
            );
            let (status, _) = exec_streamed(cx, &action.name, &script).await?;
            if status != 0 {
                return Err(ActionError::Task(format!(
                    "python {}:{} exited with status {status}",
                    file.as_source(),
                    callable.as_source()
                )));
            }
            let value = transfer::read_file(cx.session, &out, MAX_EXPORT).await?;
            Ok(String::from_utf8_lossy(&value).into_owned())
        }
        Directive::ResultsDb(source) => {
            let (text, origin) = match source {
                ResultsSource::Text(t) => (
                    render(t)?,
                    format!("resultsdb directive of action `{}`", action.name),
                ),
                ResultsSource::File(f) => {
                    let path = absolute(&cx.layout.workdir, &render(f)?);
                    let bytes = transfer::read_file(cx.session, &path, MAX_EXPORT)
                        .await
                        .map_err(|e| ActionError::Task(format!("reading results: {e}")))?;
                    (String::from_utf8_lossy(&bytes).into_owned(), path)
                }
            };
            let parsed = parse(cx, &text, &origin)?;
            (cx.emit)(Event::Notice(format!(
                "action `{}` reported {} result(s)",
                action.name,
                parsed.len()
            )));
            state.results.extend(parsed);
            Ok(text)
        }
        Directive::ExitCode { mode, results } => {
            let text = render(results)?;
            let parsed = parse(
                cx,
                &text,
                &format!("exitcode directive of action `{}`", action.name),
            )?;
            let decisive = match mode {
                ExitMode::Last => results::last(&parsed),
                ExitMode::Worst => results::worst(&parsed),
            };
            let failing = decisive.is_some_and(Outcome::is_failure);
            state.exit_code = Some(i32::from(failing));
            Ok(String::new())
        }
        Directive::Dummy { result, msg } => {
            let result = render(result)?;
            let msg = msg.as_ref().map(render).transpose()?.unwrap_or_default();
            if result == "PASS" || result == "PASSED" {
                Ok(msg)
            } else {
                Err(ActionError::Task(format!(
                    "dummy directive: result {result}{}{msg}",
                    if msg.is_empty() { "" } else { ": " }
                )))
            }
        }
    }
}

fn parse(
    cx: &ActionContext<'_>,
    text: &str,
    origin: &str,
) -> Result<Vec<CheckResult>, ActionError> {
    results::parse_results(
        text,
        &ResultsContext {
            source: origin,
            default_checkname: Some(cx.checkname),
            artifacts_dir: Some(&cx.layout.artifactsdir),
        },
    )
    .map_err(|e| ActionError::Task(e.to_string()))
}

/// Runs a script in the workdir, streaming its output as events; returns the status and
/// (bounded) stdout.
async fn exec_streamed(
    cx: &ActionContext<'_>,
    action: &str,
    script: &str,
) -> Result<(i32, Vec<u8>), GuestError> {
    let mut out_lines = LineBuffer::default();
    let mut err_lines = LineBuffer::default();
    let mut stdout = Vec::new();
    let emit = |stream: Stream, line: String| {
        (cx.emit)(Event::Output {
            action: action.to_string(),
            stream,
            line,
        })
    };
    let cmd = Command::new(script, cx.layout.workdir.clone());
    let status = cx
        .session
        .exec(&cmd, &mut |stream, chunk| {
            match stream {
                Stream::Stdout => {
                    if (stdout.len() as u64) < MAX_EXPORT {
                        stdout.extend_from_slice(chunk);
                    }
                    out_lines.push(chunk, |l| emit(stream, l));
                }
                Stream::Stderr => err_lines.push(chunk, |l| emit(stream, l)),
            }
            Ok(())
        })
        .await;
    out_lines.finish(|l| emit(Stream::Stdout, l));
    err_lines.finish(|l| emit(Stream::Stderr, l));
    Ok((status?, stdout))
}

fn absolute(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", base.trim_end_matches('/'))
    }
}

fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.len() < s.trim_end().len() {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// Imports the task's file, calls the callable with the keyword arguments and writes its
/// return value where ferrotron reads it back. Strings are exported as they are; anything
/// else as JSON, so a callable may return a ResultsYAML string or a plain value.
const PYTHON_SHIM: &str = r#"
import importlib.util, json, os, sys
path, func, kwargs, out = sys.argv[1:5]
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
spec = importlib.util.spec_from_file_location("ferrotron_task", path)
if spec is None:
    sys.exit("ferrotron: cannot load python file %s" % path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
value = getattr(module, func)(**json.loads(kwargs))
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "w") as f:
    f.write("" if value is None else value if isinstance(value, str) else json.dumps(value))
"#;
