//! Heartbeat: renewing the leases of held jobs, flushing their phase states, stopping runs
//! whose claim was lost.

use super::*;

impl Scheduler {
    pub(super) async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_states(STORE_CALL).await;
            let _ = tokio::time::timeout(STORE_CALL, self.act_on_cancel_requests()).await;
            let _ = tokio::time::timeout(STORE_CALL, self.refresh_pending_holds()).await;
            match tokio::time::timeout(
                STORE_CALL,
                self.store.renew_daemon(&self.daemon_id, &self.instance),
            )
            .await
            {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    let why = format!(
                        "daemon id `{}` was taken over by another process (it found this one silent for longer than a lease and recovered its jobs): stopping",
                        self.daemon_id
                    );
                    tracing::error!("{why}");
                    self.stopping.store(true, Ordering::SeqCst);
                    let _ = self.stop.send(true);
                    self.fatal.send_replace(Some(why));
                }
                Ok(Err(e)) => tracing::warn!("renewing the daemon id: {e}"),
                Err(_) => tracing::warn!("renewing the daemon id: the store did not answer"),
            }
            // Exactly the claims this daemon still works on, ending ones included.
            let asked = Instant::now();
            let fences: Vec<Fence> = self
                .running
                .lock()
                .expect("running lock")
                .values()
                .map(|r| r.fence.clone())
                .collect();
            if fences.is_empty() {
                continue;
            }
            let held: HashSet<Fence> = match tokio::time::timeout(
                STORE_CALL,
                self.store
                    .heartbeat(&self.daemon_id, &fences, self.cfg.lease()),
            )
            .await
            {
                Ok(Ok(held)) => held.into_iter().collect(),
                Ok(Err(e)) => {
                    tracing::warn!("renewing leases: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::warn!("renewing leases: the store did not answer");
                    continue;
                }
            };
            let mut running = self.running.lock().expect("running lock");
            for (id, r) in running.iter_mut() {
                // A job launched after the renewal began was claimed after it, or while
                // it ran: its absence from the answer proves nothing.
                if !held.contains(&r.fence)
                    && r.reason != Some(CancelReason::LostLease)
                    && r.launched < asked
                {
                    tracing::warn!(job_id = id, "lost the claim on a running job: stopping it");
                    r.reason = Some(CancelReason::LostLease);
                    let _ = r.cancel.send(true);
                }
            }
        }
    }

    pub(super) async fn flush_states(&self, limit: Duration) {
        let batch: Vec<(Fence, RunState)> = {
            let mut running = self.running.lock().expect("running lock");
            running
                .values_mut()
                .filter(|r| r.dirty)
                .map(|r| {
                    r.dirty = false;
                    (r.fence.clone(), r.state)
                })
                .collect()
        };
        match tokio::time::timeout(limit, self.store.set_job_states(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("recording job states: {e}"),
            Err(_) => tracing::warn!("recording job states: the store did not answer"),
        }
    }
}
