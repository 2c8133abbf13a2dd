//! Dispatch: claiming what fits (capacity, breaker, fair share, free disk) and launching
//! each claimed job as a task of its own.

use super::*;

impl Scheduler {
    pub(super) async fn dispatch_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let poll = Duration::from_millis(self.cfg.poll_ms.max(1));
        while !self.stopping.load(Ordering::SeqCst) {
            let claimed = match self.dispatch_round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("claiming jobs: {e}");
                    0
                }
            };
            if claimed == 0 {
                tokio::select! {
                    _ = self.wake.notified() => {
                        // Messages come in bursts: gather a few before the next round, so
                        // that one round claims many instead of many rounds claiming one.
                        tokio::time::sleep(poll.min(Duration::from_millis(5))).await;
                    }
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.changed() => {}
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// One pass over the providers; returns how many jobs were claimed.
    pub(super) async fn dispatch_round(self: &Arc<Self>) -> Result<usize, String> {
        if !self.disk_has_room() {
            return Ok(0);
        }
        let mut claimed = 0;
        let mut loads: HashMap<String, Vec<TaskLoad>> = HashMap::new();
        for slot in &self.providers {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let allowance = slot
                .breaker
                .lock()
                .expect("breaker")
                .allowance(Instant::now());
            let mine = slot.in_flight.load(Ordering::SeqCst);
            let mut free = slot
                .max_instances
                .saturating_sub(mine)
                .min(allowance)
                .min(self.cfg.claim_batch);
            if free == 0 {
                continue;
            }
            if !loads.contains_key(&slot.pool) {
                let mut l = tokio::time::timeout(STORE_CALL, self.store.task_loads(&slot.pool))
                    .await
                    .map_err(|_| "the store did not answer".to_string())?
                    .map_err(|e| e.to_string())?;
                // Jobs of tasks this daemon does not know are left for a daemon that does.
                l.retain(|t| self.tasks.contains_key(&t.task));
                loads.insert(slot.pool.clone(), l);
            }
            let pool_loads = loads.get_mut(&slot.pool).expect("just inserted");
            if pool_loads.iter().all(|l| l.queued == 0) {
                continue;
            }
            // The provider's own count sees instances of other daemons on the same host.
            match slot.provider.capacity().await {
                Ok(cap) => free = free.min(cap.max_instances.saturating_sub(cap.in_use)),
                Err(e) => tracing::warn!(provider = %slot.name, "capacity: {e}"),
            }
            let grants = policy::allocate(
                pool_loads,
                |t| self.tasks.get(t).map_or(1, |s| s.weight),
                free,
            );
            for (task, n) in grants {
                let jobs = self
                    .store
                    .claim(
                        &slot.pool,
                        &task,
                        &slot.name,
                        &self.daemon_id,
                        n,
                        self.cfg.lease(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                slot.breaker.lock().expect("breaker").claimed(jobs.len());
                if let Some(l) = pool_loads.iter_mut().find(|l| l.task == task) {
                    l.queued = l.queued.saturating_sub(jobs.len() as u64);
                    l.in_flight += jobs.len() as u64;
                }
                claimed += jobs.len();
                for job in jobs {
                    self.launch(slot.clone(), job);
                }
            }
        }
        Ok(claimed)
    }

    /// Whether the data directory has `scheduler.min_free_mib` free. A run started on a full
    /// disk fails in seconds, and its retries with it, burning every attempt of the job on
    /// a condition that an operator clears in minutes: the jobs wait in the queue instead.
    pub(super) fn disk_has_room(&self) -> bool {
        let want = self.cfg.min_free_mib << 20;
        if want == 0 {
            return true;
        }
        let free = match crate::util::free_bytes(&self.data_dir) {
            Ok(f) => f,
            Err(e) => {
                // Not knowing is no reason to stop the farm; the runs will say what is wrong.
                tracing::debug!(dir = %self.data_dir.display(), "free space: {e}");
                return true;
            }
        };
        let low = free < want;
        if self.disk_low.swap(low, Ordering::SeqCst) != low {
            if low {
                tracing::warn!(
                    dir = %self.data_dir.display(),
                    free_mib = free >> 20,
                    min_free_mib = self.cfg.min_free_mib,
                    "data directory is short of space: no new job is claimed until it has \
                     scheduler.min_free_mib free"
                );
            } else {
                tracing::info!(
                    dir = %self.data_dir.display(),
                    free_mib = free >> 20,
                    "data directory has room again: claiming jobs"
                );
            }
        }
        !low
    }

    pub(super) fn launch(self: &Arc<Self>, slot: Arc<ProviderSlot>, job: Job) {
        let Some(fence) = job.fence() else {
            tracing::error!(job = %job.uuid, "claimed job without a lease token: left to run out");
            return;
        };
        let held = InFlight::take(&slot);
        self.active.fetch_add(1, Ordering::SeqCst);
        if job.attempts == 1
            && let Some(at) = job.claimed_at
        {
            let d = at - job.received_at;
            self.metrics
                .claim_latency(Duration::try_from(d).unwrap_or_default());
        }
        let (tx, rx) = watch::channel(false);
        self.running.lock().expect("running lock").insert(
            job.id,
            Running {
                launched: Instant::now(),
                job: job.uuid,
                run: job.current_run().unwrap_or_default(),
                fence: fence.clone(),
                cancel: tx,
                reason: None,
                state: RunState::Provisioning,
                dirty: false,
            },
        );
        let me = self.clone();
        tokio::spawn(async move {
            me.run_job(slot, held, job, fence, rx).await;
        });
    }
}
