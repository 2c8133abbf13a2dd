//! The daemon's side of [`crate::web::farm::FarmControl`]: the web layer sees the
//! scheduler's providers and may stop jobs it runs, without knowing the scheduler.

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::scheduler::Scheduler;
use crate::scheduler::intake::Intake;
use crate::web::farm::{BackendCapacity, FarmControl, ProviderStatus, TaskSettings};

pub struct DaemonControl {
    pub scheduler: Arc<Scheduler>,
    pub intake: Arc<Intake>,
}

#[async_trait]
impl FarmControl for DaemonControl {
    fn daemon_id(&self) -> String {
        self.scheduler.daemon_id().to_string()
    }

    async fn providers(&self) -> Vec<ProviderStatus> {
        self.scheduler
            .slot_status()
            .await
            .into_iter()
            .map(|s| {
                let (capacity, capacity_error) = match s.capacity {
                    Ok(c) => (
                        Some(BackendCapacity {
                            max_instances: c.max_instances,
                            in_use: c.in_use,
                        }),
                        None,
                    ),
                    Err(e) => (None, Some(e)),
                };
                ProviderStatus {
                    name: s.name,
                    pool: s.pool,
                    kind: s.kind.to_string(),
                    max_instances: s.max_instances,
                    in_flight: s.in_flight,
                    breaker: s.breaker.to_string(),
                    capacity,
                    capacity_error,
                }
            })
            .collect()
    }

    fn cancel_running(&self, job: Uuid) -> bool {
        self.scheduler.cancel_job(job)
    }

    fn task_settings(&self, task: &str) -> Option<TaskSettings> {
        if !self.scheduler.runs_task(task) {
            return None;
        }
        self.intake.tasks.get(task).map(|t| TaskSettings {
            pool: t.pool.clone(),
            priority: t.priority,
            max_attempts: t.max_attempts,
        })
    }

    fn wake(&self) {
        self.scheduler.wake();
    }
}
