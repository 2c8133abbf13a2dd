//! Control of a running scheduler from outside its loops: the providers' live state (for
//! the farm and jobs pages), and cancelling a job it runs — at once when the request reaches
//! this process, within a heartbeat when it was recorded in the store by another process.

use std::sync::atomic::Ordering;
use std::time::Instant;

use uuid::Uuid;

use super::{CancelReason, Scheduler};
use crate::provider::Capacity;

/// One provider slot as it is now.
#[derive(Debug, Clone)]
pub struct SlotStatus {
    pub name: String,
    pub pool: String,
    pub kind: &'static str,
    pub max_instances: usize,
    pub in_flight: usize,
    /// `closed`, `open`, `half-open`.
    pub breaker: &'static str,
    /// The backend's own answer (quota, other daemons' instances), or why there is none.
    pub capacity: Result<Capacity, String>,
}

impl Scheduler {
    /// Every provider slot, in the config's order, with the backend's capacity answer.
    pub async fn slot_status(&self) -> Vec<SlotStatus> {
        let mut out = Vec::with_capacity(self.providers.len());
        for slot in &self.providers {
            let breaker = slot
                .breaker
                .lock()
                .expect("breaker")
                .state_name(Instant::now());
            out.push(SlotStatus {
                name: slot.name.clone(),
                pool: slot.pool.clone(),
                kind: slot.provider.kind(),
                max_instances: slot.max_instances,
                in_flight: slot.in_flight.load(Ordering::SeqCst),
                breaker,
                capacity: slot.provider.capacity().await.map_err(|e| e.to_string()),
            });
        }
        out
    }

    /// Stops the job with this uuid (or whose current run has this uuid) if this daemon
    /// runs it: the runner destroys its instance and the job ends `cancelled`.
    pub fn cancel_job(&self, uuid: Uuid) -> bool {
        let mut running = self.running.lock().expect("running lock");
        let mut found = false;
        for r in running.values_mut() {
            if (r.job == uuid || r.run == uuid) && r.reason.is_none() {
                tracing::info!(job = %r.job, run = %r.run, "cancel requested: stopping the run");
                r.reason = Some(CancelReason::Requested);
                let _ = r.cancel.send(true);
                found = true;
            }
        }
        found
    }

    /// Acts on cancel requests recorded in the store for runs this daemon runs (a request
    /// made through another process: `ferrotron web`, another daemon's API).
    pub(super) async fn act_on_cancel_requests(&self) {
        let runs: Vec<Uuid> = {
            let running = self.running.lock().expect("running lock");
            running
                .values()
                .filter(|r| r.reason.is_none())
                .map(|r| r.run)
                .collect()
        };
        match self.store.cancel_requested_among(&runs).await {
            Ok(asked) => {
                for run in asked {
                    self.cancel_job(run);
                }
            }
            Err(e) => tracing::warn!("reading cancel requests: {e}"),
        }
    }

    /// Whether this daemon runs the task (it has its formula).
    pub fn runs_task(&self, task: &str) -> bool {
        self.tasks.contains_key(task)
    }

    /// Wakes the dispatcher: a job was queued outside the intake.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}
