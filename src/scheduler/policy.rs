//! Pure scheduling decisions: fair share, retry backoff, the circuit breaker. No I/O here,
//! so each is tested alone.

use std::time::{Duration, Instant};

use rand::RngExt;

use crate::store::TaskLoad;

/// Splits `free` slots among tasks with runnable jobs: the best priority first; within a
/// priority, the task with the fewest jobs in flight per unit of weight gets the next slot.
/// Returns (task, slots) with slots > 0, at most `free` in total.
pub fn allocate(
    loads: &[TaskLoad],
    weight: impl Fn(&str) -> u32,
    free: usize,
) -> Vec<(String, usize)> {
    struct Cand {
        task: String,
        queued: u64,
        in_flight: u64,
        granted: u64,
        prio: i32,
        weight: f64,
    }
    let mut cands: Vec<Cand> = loads
        .iter()
        .filter(|l| l.queued > 0)
        .map(|l| Cand {
            task: l.task.clone(),
            queued: l.queued,
            in_flight: l.in_flight,
            granted: 0,
            prio: l.top_priority,
            weight: f64::from(weight(&l.task).max(1)),
        })
        .collect();
    let mut left = free;
    while left > 0 {
        let best = cands
            .iter_mut()
            .filter(|c| c.granted < c.queued)
            .max_by(|a, b| {
                a.prio.cmp(&b.prio).then_with(|| {
                    let sa = (a.in_flight + a.granted) as f64 / a.weight;
                    let sb = (b.in_flight + b.granted) as f64 / b.weight;
                    sb.total_cmp(&sa).then_with(|| b.task.cmp(&a.task))
                })
            });
        let Some(c) = best else { break };
        c.granted += 1;
        left -= 1;
    }
    cands
        .into_iter()
        .filter(|c| c.granted > 0)
        .map(|c| (c.task, c.granted as usize))
        .collect()
}

/// Delay before retry number `attempt` (1 = the first retry): `base · 2^(attempt-1)`, at
/// most `max`, times a random factor in [0.5, 1.5) so that failures that happened together
/// do not retry together.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = exp.min(max.as_secs_f64());
    let jitter: f64 = rand::rng().random_range(0.5..1.5);
    Duration::from_secs_f64((capped * jitter).max(0.0))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, trips: u32 },
    HalfOpen { probing: bool, trips: u32 },
}

/// A circuit breaker per provider: after `threshold` consecutive infrastructure failures
/// no claims for `cooldown`; then one probe job; success closes it, failure reopens it for
/// twice as long (up to 2^10 · cooldown).
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            state: State::Closed { failures: 0 },
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// How many jobs may be claimed now (0 while open or while the probe runs).
    pub fn allowance(&mut self, now: Instant) -> usize {
        match self.state {
            State::Closed { .. } => usize::MAX,
            State::Open { until, trips } if now >= until => {
                self.state = State::HalfOpen {
                    probing: false,
                    trips,
                };
                1
            }
            State::Open { .. } => 0,
            State::HalfOpen { probing: false, .. } => 1,
            State::HalfOpen { probing: true, .. } => 0,
        }
    }

    /// Records that `n` jobs were claimed (a half-open breaker now waits for its probe).
    pub fn claimed(&mut self, n: usize) {
        if n > 0
            && let State::HalfOpen { trips, .. } = self.state
        {
            self.state = State::HalfOpen {
                probing: true,
                trips,
            };
        }
    }

    pub fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A job on the provider ended without a verdict on it (cancelled, lost to another
    /// daemon, or failed on this host's side, e.g. its store): a half-open breaker whose
    /// probe this was lets the next job probe, instead of waiting for a verdict forever.
    pub fn inconclusive(&mut self) {
        if let State::HalfOpen { trips, .. } = self.state {
            self.state = State::HalfOpen {
                probing: false,
                trips,
            };
        }
    }

    /// Returns true when this failure opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                self.state = State::Open {
                    until: now + self.cooldown,
                    trips: 1,
                };
                true
            }
            State::Closed { failures } => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen { trips, .. } | State::Open { trips, .. } => {
                let factor = 2u32.pow(trips.min(10));
                self.state = State::Open {
                    until: now + self.cooldown * factor,
                    trips: trips + 1,
                };
                true
            }
        }
    }

    /// `closed`, `open` or `half-open`, for people (an open breaker whose cool-down is over
    /// says half-open: the next claim is its probe).
    pub fn state_name(&self, now: Instant) -> &'static str {
        match self.state {
            State::Closed { .. } => "closed",
            State::Open { until, .. } if now < until => "open",
            State::Open { .. } | State::HalfOpen { .. } => "half-open",
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(task: &str, queued: u64, in_flight: u64, prio: i32) -> TaskLoad {
        TaskLoad {
            task: task.into(),
            queued,
            in_flight,
            top_priority: prio,
        }
    }

    #[test]
    fn fair_share_between_tasks_and_weights() {
        let loads = [load("a", 100, 0, 0), load("b", 100, 0, 0)];
        let got = allocate(&loads, |_| 1, 10);
        assert_eq!(got, vec![("a".into(), 5), ("b".into(), 5)]);
        // b already runs 4: a catches up first.
        let loads = [load("a", 100, 0, 0), load("b", 100, 4, 0)];
        let got = allocate(&loads, |_| 1, 6);
        assert_eq!(got, vec![("a".into(), 5), ("b".into(), 1)]);
        // Weight 3 against 1: three slots for every one.
        let loads = [load("a", 100, 0, 0), load("b", 100, 0, 0)];
        let got = allocate(&loads, |t| if t == "a" { 3 } else { 1 }, 8);
        assert_eq!(got, vec![("a".into(), 6), ("b".into(), 2)]);
    }

    #[test]
    fn priority_first_and_never_more_than_queued() {
        let loads = [load("low", 100, 0, 0), load("high", 2, 0, 5)];
        let got = allocate(&loads, |_| 1, 5);
        assert_eq!(got, vec![("low".into(), 3), ("high".into(), 2)]);
        assert!(allocate(&[load("a", 0, 3, 0)], |_| 1, 5).is_empty());
        assert!(allocate(&[load("a", 9, 0, 0)], |_| 1, 0).is_empty());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_ceiling() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(60);
        for _ in 0..50 {
            let b1 = backoff(1, base, max).as_secs_f64();
            assert!((5.0..15.0).contains(&b1), "{b1}");
            let b2 = backoff(2, base, max).as_secs_f64();
            assert!((10.0..30.0).contains(&b2), "{b2}");
            let b9 = backoff(9, base, max).as_secs_f64();
            assert!((30.0..90.0).contains(&b9), "{b9}");
        }
    }

    #[test]
    fn a_probe_without_verdict_lets_the_next_job_probe() {
        let t0 = Instant::now();
        let cd = Duration::from_secs(10);
        let mut b = Breaker::new(1, cd);
        assert!(b.failure(t0));
        assert_eq!(b.allowance(t0 + cd), 1);
        b.claimed(1);
        assert_eq!(b.allowance(t0 + cd), 0, "the probe runs");
        // The probe was cancelled (or failed on the store): no verdict, not stuck.
        b.inconclusive();
        assert_eq!(b.allowance(t0 + cd), 1);
        b.claimed(1);
        b.success();
        assert_eq!(b.allowance(t0 + cd), usize::MAX);
        // Inconclusive ends leave a closed or open breaker as it was.
        b.inconclusive();
        assert_eq!(b.allowance(t0 + cd), usize::MAX);
        assert!(b.failure(t0 + cd));
        b.inconclusive();
        assert_eq!(b.allowance(t0 + cd), 0);
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let cd = Duration::from_secs(10);
        let mut b = Breaker::new(3, cd);
        assert_eq!(b.allowance(t0), usize::MAX);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0));
        assert_eq!(b.allowance(t0 + Duration::from_secs(5)), 0);
        // After the cooldown: one probe.
        assert_eq!(b.allowance(t0 + cd), 1);
        b.claimed(1);
        assert_eq!(b.allowance(t0 + cd), 0);
        // The probe fails: open twice as long.
        assert!(b.failure(t0 + cd));
        assert_eq!(b.allowance(t0 + cd + Duration::from_secs(19)), 0);
        assert_eq!(b.allowance(t0 + cd + Duration::from_secs(20)), 1);
        b.claimed(1);
        b.success();
        assert!(!b.is_open());
        assert_eq!(b.allowance(t0 + cd * 3), usize::MAX);
    }
}
