//! What a run reports while it goes, and the one text form of it.
//!
//! The terminal, the run log and (later) the live web view all print [`Event::line`], so a
//! person sees the same lines locally as production stores.

use std::time::Duration;

use crate::guest::Stream;
use crate::store::RunState;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// ferrotron speaking: what it does, warnings, how to reach a kept machine.
    Notice(String),
    PhaseStarted {
        name: String,
    },
    PhaseFinished {
        name: String,
        duration: Duration,
        ok: bool,
    },
    /// One line of a task's output, without its line ending.
    Output {
        action: String,
        stream: Stream,
        line: String,
    },
    /// The run entered `state` (as its record now says). For listeners such as the
    /// scheduler's job state; not a line of the log.
    State(RunState),
    /// The run now holds (`held`) or no longer holds instance `id`; not a line of the log.
    Instance {
        id: String,
        held: bool,
    },
}

impl Event {
    /// The event's one text form, for the terminal, the run log and live views; `None` for
    /// events that are for programs only.
    pub fn line(&self) -> Option<String> {
        Some(match self {
            Event::Notice(msg) => format!("ferrotron: {msg}"),
            Event::PhaseStarted { name } => format!("ferrotron: {name} ..."),
            Event::PhaseFinished { name, duration, ok } => format!(
                "ferrotron: {name} {} in {}",
                if *ok { "done" } else { "FAILED" },
                human_duration(*duration)
            ),
            Event::Output { action, line, .. } => format!("[{action}] {line}"),
            Event::State(_) | Event::Instance { .. } => return None,
        })
    }
}

pub use crate::util::human_duration;

/// Turns output chunks into whole lines. Bytes that are not UTF-8 are shown lossily rather
/// than dropped: a log with a replacement character beats a log with a hole.
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

/// Longest line kept whole; longer ones are split so one runaway line cannot eat memory.
const MAX_LINE: usize = 64 * 1024;

impl LineBuffer {
    pub fn push(&mut self, chunk: &[u8], mut emit: impl FnMut(String)) {
        // `pending` never holds a newline between calls: only the new bytes are searched,
        // so a line written one byte at a time costs linear time, not quadratic.
        let mut from = self.pending.len();
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self.pending[from..].iter().position(|&b| b == b'\n') {
            let end = from + pos;
            emit(decode(&self.pending[start..end]));
            start = end + 1;
            from = start;
        }
        self.pending.drain(..start);
        while self.pending.len() > MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            emit(decode(&self.pending));
            self.pending = rest;
        }
    }

    pub fn finish(&mut self, mut emit: impl FnMut(String)) {
        if !self.pending.is_empty() {
            emit(decode(&self.pending));
            self.pending.clear();
        }
    }
}

/// Lossy UTF-8 with control characters made visible (`\x1b`): guest output reaches the
/// operator's terminal and the log, and an escape sequence from the guest must not drive
/// either terminal (retitle it, rewrite earlier lines, answer back). Tabs stay.
fn decode(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.strip_suffix('\r').unwrap_or(&s);
    if !s.chars().any(is_unsafe) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// C0 controls but tab, DEL, and the C1 controls (U+0080–U+009F; `\u{9b}` is a CSI).
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        let mut b = LineBuffer::default();
        let mut got = Vec::new();
        b.push(b"hel", |l| got.push(l));
        b.push(b"lo\r\nwor", |l| got.push(l));
        b.push(b"ld\n\xffx", |l| got.push(l));
        b.finish(|l| got.push(l));
        assert_eq!(got, ["hello", "world", "\u{fffd}x"]);
    }

    #[test]
    fn escape_sequences_are_made_visible() {
        let mut b = LineBuffer::default();
        let mut got = Vec::new();
        b.push(
            b"\x1b]0;owned\x07red \x1b[31mtext\tok\r\n\xc2\x9b2J\x7f\n",
            |l| got.push(l),
        );
        assert_eq!(
            got,
            ["\\x1b]0;owned\\x07red \\x1b[31mtext\tok", "\\x9b2J\\x7f"]
        );
        assert!(got.iter().all(|l| !l.chars().any(is_unsafe)));
    }

    #[test]
    fn one_byte_writes_cost_linear_time() {
        let mut b = LineBuffer::default();
        let mut lines = 0;
        let t0 = std::time::Instant::now();
        for _ in 0..16 {
            for _ in 0..MAX_LINE {
                b.push(b"y", |_| lines += 1);
            }
        }
        b.push(b"\n", |_| lines += 1);
        assert_eq!(lines, 16);
        assert!(b.pending.is_empty());
        // Quadratic scanning takes minutes here; linear takes milliseconds.
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn runaway_lines_are_split() {
        let mut b = LineBuffer::default();
        let mut got = Vec::new();
        b.push(&vec![b'a'; MAX_LINE * 2 + 5], |l| got.push(l.len()));
        b.finish(|l| got.push(l.len()));
        assert_eq!(got, [MAX_LINE, MAX_LINE, 5]);
    }

    #[test]
    fn event_lines() {
        let e = Event::Output {
            action: "lint".into(),
            stream: Stream::Stderr,
            line: "x".into(),
        };
        assert_eq!(e.line().as_deref(), Some("[lint] x"));
        assert_eq!(human_duration(Duration::from_millis(4210)), "4.21s");
        assert_eq!(human_duration(Duration::from_secs(187)), "3m07s");
    }
}
