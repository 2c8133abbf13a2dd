//! Maintenance: recovering jobs whose daemon lost its lease, reaping leaked instances,
//! forgetting old message ids.

use super::*;

impl Scheduler {
    pub(super) async fn maintenance_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.reap_interval_s.max(1));
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            self.recover(None).await;
            self.reap().await;
            let horizon = OffsetDateTime::now_utc() - self.dedup_horizon;
            if let Err(e) = self.store.prune_seen_messages(horizon).await {
                tracing::warn!("pruning seen message ids: {e}");
            }
        }
    }

    /// Takes over claimed jobs whose lease ran out (and, with `previous_self`, every claim of
    /// this daemon's previous life): the job ends as its run ended, or, if the run was cut
    /// short, it is requeued (bounded attempts) and the run marked crashed. Each takeover is
    /// one transaction that also revokes the old claim's token.
    pub async fn recover(&self, previous_self: Option<&str>) -> usize {
        let jobs =
            match tokio::time::timeout(STORE_CALL, self.store.orphaned_jobs(previous_self)).await {
                Ok(Ok(j)) => j,
                Ok(Err(e)) => {
                    tracing::warn!("looking for orphaned jobs: {e}");
                    return 0;
                }
                Err(_) => {
                    tracing::warn!("looking for orphaned jobs: the store did not answer");
                    return 0;
                }
            };
        let mut recovered = 0;
        for job in jobs {
            if previous_self.is_none()
                && job.claimed_by.as_deref() == Some(self.daemon_id.as_str())
                && self
                    .running
                    .lock()
                    .expect("running lock")
                    .contains_key(&job.id)
            {
                continue; // ours and running: the heartbeat is late, not dead
            }
            let owner = job.claimed_by.clone().unwrap_or_default();
            let why = format!("daemon {owner} stopped renewing its lease during the run");
            let decide = |cur: &Job, run_state: Option<(RunState, Option<String>)>| match run_state
            {
                Some((s @ (RunState::Finished | RunState::Failed), error)) => JobEnd::Done {
                    state: s,
                    outcome: None,
                    error,
                },
                _ if cur.attempts < cur.max_attempts => JobEnd::Requeue {
                    not_before: OffsetDateTime::now_utc(),
                    error: Some(format!("{why}; requeued")),
                    free_attempt: false,
                },
                _ => JobEnd::Done {
                    state: RunState::Crashed,
                    outcome: None,
                    error: Some(format!(
                        "{why} (attempt {} of {})",
                        cur.attempts, cur.max_attempts
                    )),
                },
            };
            let took = tokio::time::timeout(
                STORE_CALL,
                self.store
                    .recover_job(&job, previous_self, decide, exit::INFRA, &why),
            )
            .await;
            match took {
                Ok(Ok(Some(done))) => {
                    recovered += 1;
                    self.metrics.recovered_jobs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job = %job.uuid, run = ?job.current_run(), "recovered an orphaned job: {:?}", done.end);
                    if done.run_closed {
                        self.metrics.run_ended("crashed");
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(job = %job.uuid, "recovering: {e}"),
                Err(_) => tracing::warn!(job = %job.uuid, "recovering: the store did not answer"),
            }
        }
        if recovered > 0 {
            self.wake.notify_one();
        }
        recovered
    }

    /// Destroys instances of this farm whose run is not live. Returns how many.
    pub async fn reap(&self) -> usize {
        let mut reaped = 0;
        let mut seen = HashSet::new();
        for slot in &self.providers {
            let mut findings = match reaper::survey(slot.provider.as_ref(), &self.store, None).await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(provider = %slot.name, "reaper: listing instances: {e}");
                    continue;
                }
            };
            // A run this daemon is still ending may have just kept its instance for a hold.
            let ending: HashSet<Uuid> = self
                .running
                .lock()
                .expect("running lock")
                .values()
                .map(|r| r.run)
                .collect();
            for f in &mut findings {
                if f.verdict == Verdict::Leaked
                    && f.instance
                        .meta
                        .as_ref()
                        .is_some_and(|m| ending.contains(&m.run_uuid))
                {
                    f.verdict = Verdict::Live;
                }
                let ours = f
                    .instance
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.owner.starts_with(&self.farm_prefix));
                if f.verdict == Verdict::Leaked && !ours {
                    f.verdict = Verdict::Foreign;
                }
                if f.verdict == Verdict::Leaked && !seen.insert(f.instance.id.clone()) {
                    f.verdict = Verdict::Foreign; // another slot on the same backend had it
                }
            }
            reaper::reap(slot.provider.as_ref(), &mut findings, false).await;
            for f in findings.iter().filter(|f| f.verdict == Verdict::Leaked) {
                match &f.error {
                    None => {
                        reaped += 1;
                        self.metrics.reaped_leaks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(provider = %slot.name, instance = %f.instance.id, "reaped a leaked instance");
                    }
                    Some(e) => {
                        tracing::warn!(provider = %slot.name, instance = %f.instance.id, "reaping: {e}")
                    }
                }
            }
        }
        reaped
    }
}
