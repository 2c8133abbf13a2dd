//! What a farm daemon in this process lets the web layer see and do beyond the store: its
//! providers' live state, stopping a job it runs now, and the settings a rerun needs.
//!
//! `ferrotron serve` gives the web layer an implementation; `ferrotron web` (a read-only
//! viewer of a store) has none, so its pages show the queue as the store has it and offer no
//! farm controls. The web layer never learns which backend a provider is beyond its kind.

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

/// One provider as the daemon sees it now.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub name: String,
    pub pool: String,
    /// The backend's name (`libvirt`, `openstack`, `sim`, …).
    pub kind: String,
    /// Most instances this daemon runs on it at once (the config's `max_instances`).
    pub max_instances: usize,
    /// Jobs this daemon runs on it now.
    pub in_flight: usize,
    /// `closed`, `open` (no claims until the cool-down ends) or `half-open` (one probe).
    pub breaker: String,
    /// What the backend itself reports (its quota, and instances of other daemons counted).
    pub capacity: Option<BackendCapacity>,
    /// Why the backend could not say.
    pub capacity_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BackendCapacity {
    pub max_instances: usize,
    pub in_use: usize,
}

impl ProviderStatus {
    /// Room for another claim now, as the dispatcher computes it.
    pub fn has_room(&self) -> bool {
        let backend = self.capacity.is_none_or(|c| c.in_use < c.max_instances);
        self.in_flight < self.max_instances && backend
    }
}

/// Where a rerun goes: the pool, priority and attempts a task's jobs get.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    pub pool: String,
    pub priority: i32,
    pub max_attempts: u32,
}

#[async_trait]
pub trait FarmControl: Send + Sync {
    /// The daemon's id (shown on the farm page).
    fn daemon_id(&self) -> String;
    /// Every provider with its live state, in the config's order.
    async fn providers(&self) -> Vec<ProviderStatus>;
    /// Stops the job with this uuid if this process runs it now (its instance is destroyed,
    /// its run ends `cancelled`). False when it does not run it.
    fn cancel_running(&self, job: Uuid) -> bool;
    /// A configured task's job settings; `None` when this daemon does not run the task.
    fn task_settings(&self, task: &str) -> Option<TaskSettings>;
    /// Wakes the dispatcher (a job was just queued).
    fn wake(&self);
}
