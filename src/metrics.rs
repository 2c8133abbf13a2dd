//! The daemon's counters, gauges and histograms, and their Prometheus text form.
//!
//! A leaf module: the bus, the scheduler and the HTTP server update it; nothing here calls
//! out. Label sets are small and fixed by the code (states, outcomes, phase kinds, providers),
//! never taken from message content.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the duration histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Everything `/metrics` shows that is not read from the store at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages_received: AtomicU64,
    pub messages_duplicate: AtomicU64,
    pub messages_unmatched: AtomicU64,
    pub messages_rejected: AtomicU64,
    pub jobs_created: AtomicU64,
    pub results_published: AtomicU64,
    pub results_publish_failed: AtomicU64,
    pub reaped_leaks: AtomicU64,
    pub recovered_jobs: AtomicU64,
    pub bus_reconnects: AtomicU64,
    /// Messages waiting in the AMQP queue at the last look.
    pub bus_queue_ready: AtomicI64,
    /// Seconds between a message's `sent-at` and its receipt, last message (milliseconds).
    pub bus_lag_ms: AtomicI64,
    /// Instances this daemon holds, per provider.
    live: Mutex<BTreeMap<String, i64>>,
    runs: Mutex<BTreeMap<String, u64>>,
    phases: Mutex<BTreeMap<String, Histogram>>,
    claim_latency: Mutex<Histogram>,
    breaker_open: Mutex<BTreeMap<String, bool>>,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn inc(&self, c: impl Fn(&Metrics) -> &AtomicU64) {
        inc(c(self));
    }

    pub fn run_ended(&self, state: &str) {
        *self
            .runs
            .lock()
            .expect("metrics")
            .entry(state.into())
            .or_default() += 1;
    }

    /// Phases are grouped by kind: every `action NAME` counts as `action`.
    pub fn phase(&self, name: &str, d: Duration) {
        let kind = if name.starts_with("action ") {
            "action"
        } else {
            name
        };
        self.phases
            .lock()
            .expect("metrics")
            .entry(kind.into())
            .or_default()
            .observe(d.as_secs_f64());
    }

    pub fn claim_latency(&self, d: Duration) {
        self.claim_latency
            .lock()
            .expect("metrics")
            .observe(d.as_secs_f64());
    }

    pub fn live_instances(&self, provider: &str, delta: i64) {
        *self
            .live
            .lock()
            .expect("metrics")
            .entry(provider.into())
            .or_default() += delta;
    }

    pub fn breaker(&self, provider: &str, open: bool) {
        self.breaker_open
            .lock()
            .expect("metrics")
            .insert(provider.into(), open);
    }

    /// First claims recorded (one per job that reached a runner).
    pub fn claims_total(&self) -> u64 {
        self.claim_latency.lock().expect("metrics").count
    }

    pub fn runs_total(&self) -> u64 {
        self.runs.lock().expect("metrics").values().sum()
    }

    /// The Prometheus text exposition; `queue` is the job count per state, read by the
    /// caller from the store.
    pub fn render(&self, queue: &[(String, u64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP ferrotron_queue_jobs Jobs in the queue by state.\n# TYPE ferrotron_queue_jobs gauge"
        );
        for (state, n) in queue {
            let _ = writeln!(out, "ferrotron_queue_jobs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ferrotron_runs_total Runs ended by this daemon, by outcome.\n# TYPE ferrotron_runs_total counter"
        );
        for (state, n) in self.runs.lock().expect("metrics").iter() {
            let _ = writeln!(out, "ferrotron_runs_total{{outcome=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ferrotron_live_instances Instances this daemon holds.\n# TYPE ferrotron_live_instances gauge"
        );
        for (p, n) in self.live.lock().expect("metrics").iter() {
            let _ = writeln!(out, "ferrotron_live_instances{{provider=\"{p}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ferrotron_provider_breaker_open 1 while a provider's circuit breaker stops claims.\n# TYPE ferrotron_provider_breaker_open gauge"
        );
        for (p, open) in self.breaker_open.lock().expect("metrics").iter() {
            let _ = writeln!(
                out,
                "ferrotron_provider_breaker_open{{provider=\"{p}\"}} {}",
                u8::from(*open)
            );
        }
        let hist = |out: &mut String, name: &str, labels: &str, h: &Histogram| {
            let sep = if labels.is_empty() { "" } else { "," };
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
            let l = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{name}_sum{l} {}\n{name}_count{l} {}", h.sum, h.count);
        };
        let _ = writeln!(
            out,
            "# HELP ferrotron_phase_duration_seconds Duration of run phases.\n# TYPE ferrotron_phase_duration_seconds histogram"
        );
        for (phase, h) in self.phases.lock().expect("metrics").iter() {
            hist(
                &mut out,
                "ferrotron_phase_duration_seconds",
                &format!("phase=\"{phase}\""),
                h,
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferrotron_claim_latency_seconds From a message's receipt to its job's first claim.\n# TYPE ferrotron_claim_latency_seconds histogram"
        );
        hist(
            &mut out,
            "ferrotron_claim_latency_seconds",
            "",
            &self.claim_latency.lock().expect("metrics"),
        );
        for (name, help, c) in [
            (
                "ferrotron_messages_received_total",
                "Bus messages received (AMQP and HTTP).",
                &self.messages_received,
            ),
            (
                "ferrotron_messages_duplicate_total",
                "Messages whose id was seen before.",
                &self.messages_duplicate,
            ),
            (
                "ferrotron_messages_unmatched_total",
                "Messages no rule matched.",
                &self.messages_unmatched,
            ),
            (
                "ferrotron_messages_rejected_total",
                "Malformed or oversized messages.",
                &self.messages_rejected,
            ),
            (
                "ferrotron_jobs_created_total",
                "Jobs created from messages.",
                &self.jobs_created,
            ),
            (
                "ferrotron_results_published_total",
                "Result messages published.",
                &self.results_published,
            ),
            (
                "ferrotron_results_publish_failed_total",
                "Result messages that could not be published.",
                &self.results_publish_failed,
            ),
            (
                "ferrotron_reaped_leaks_total",
                "Leaked instances destroyed by the reaper.",
                &self.reaped_leaks,
            ),
            (
                "ferrotron_recovered_jobs_total",
                "Jobs taken over after their daemon lost its lease.",
                &self.recovered_jobs,
            ),
            (
                "ferrotron_bus_reconnects_total",
                "Reconnections to the AMQP broker.",
                &self.bus_reconnects,
            ),
        ] {
            counter(&mut out, name, help, c.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP ferrotron_bus_queue_ready Messages waiting in the AMQP queue (consumer lag).\n# TYPE ferrotron_bus_queue_ready gauge\nferrotron_bus_queue_ready {}",
            self.bus_queue_ready.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ferrotron_bus_lag_seconds Sent-at to receipt of the last message.\n# TYPE ferrotron_bus_lag_seconds gauge\nferrotron_bus_lag_seconds {}",
            self.bus_lag_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc(|m| &m.messages_received);
        m.run_ended("finished");
        m.phase("action lint", Duration::from_millis(30));
        m.phase("clone", Duration::from_secs(2));
        m.live_instances("sim", 3);
        let t = m.render(&[("queued".into(), 5)]);
        assert!(
            t.contains("ferrotron_queue_jobs{state=\"queued\"} 5"),
            "{t}"
        );
        assert!(t.contains("ferrotron_runs_total{outcome=\"finished\"} 1"));
        assert!(
            t.contains("ferrotron_phase_duration_seconds_bucket{phase=\"action\",le=\"0.05\"} 1")
        );
        assert!(t.contains("ferrotron_phase_duration_seconds_bucket{phase=\"clone\",le=\"1\"} 0"));
        assert!(t.contains("ferrotron_live_instances{provider=\"sim\"} 3"));
        assert!(t.contains("ferrotron_messages_received_total 1"));
        assert!(t.contains("ferrotron_claim_latency_seconds_count 0"));
    }
}
