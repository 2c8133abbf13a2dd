//! What every build step is handed: where to report (the terminal and the build log see
//! the same lines) and when to stop (a cancel signal or the build's deadline).

use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::ImageError;
use crate::guest::Stream;
use crate::runner::EventSink;
use crate::runner::event::Event;

/// Stops a build: a cancel signal (SIGINT/SIGTERM) or its deadline.
#[derive(Clone)]
pub struct Stop {
    cancel: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
    limit: Duration,
}

impl Stop {
    pub fn new(cancel: watch::Receiver<bool>, limit: Duration) -> Stop {
        Stop {
            cancel,
            deadline: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    /// Resolves once the build must stop, with the reason.
    pub async fn stopped(&self) -> ImageError {
        let mut c = self.cancel.clone();
        tokio::select! {
            r = c.wait_for(|v| *v) => match r {
                Ok(_) => ImageError::Cancelled,
                // Nobody can cancel any more: only the deadline is left.
                Err(_) => {
                    tokio::time::sleep_until(self.deadline).await;
                    ImageError::TimedOut(self.limit)
                }
            },
            _ = tokio::time::sleep_until(self.deadline) => ImageError::TimedOut(self.limit),
        }
    }

    /// Runs `fut` unless the build is stopped first (then `fut` is dropped).
    pub async fn guard<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ImageError>>,
    ) -> Result<T, ImageError> {
        tokio::select! {
            r = fut => r,
            e = self.stopped() => Err(e),
        }
    }
}

/// What a build step needs to report: the terminal (sink) and the build log see the same
/// lines.
pub struct Ctl {
    sink: EventSink,
    log: Mutex<Option<std::fs::File>>,
    pub stop: Stop,
}

impl Ctl {
    /// Reports to `sink` and, when given, the build log `log`.
    pub fn new(sink: EventSink, log: Option<std::fs::File>, stop: Stop) -> Ctl {
        Ctl {
            sink,
            log: Mutex::new(log),
            stop,
        }
    }

    pub fn emit(&self, e: Event) {
        if let Some(line) = e.line()
            && let Ok(mut log) = self.log.lock()
            && let Some(f) = log.as_mut()
        {
            let _ = writeln!(f, "{line}");
        }
        (self.sink)(&e);
    }

    pub fn note(&self, msg: impl Into<String>) {
        self.emit(Event::Notice(msg.into()));
    }

    pub fn output(&self, what: &str, stream: Stream, line: String) {
        self.emit(Event::Output {
            action: what.to_string(),
            stream,
            line,
        });
    }

    #[cfg(test)]
    pub fn for_test() -> (Ctl, std::sync::Arc<Mutex<Vec<String>>>) {
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        (
            Ctl {
                sink: std::sync::Arc::new(move |e: &Event| l.lock().unwrap().extend(e.line())),
                log: Mutex::new(None),
                stop: Stop::new(rx, Duration::from_secs(600)),
            },
            lines,
        )
    }
}
