//! One job: its run under the claim, handing a failed run's instance to a hold, deciding
//! how the job ends (finished, retried with backoff, crashed) and writing that durably.

use super::*;

impl Scheduler {
    pub(super) async fn run_job(
        self: Arc<Self>,
        slot: Arc<ProviderSlot>,
        held: Arc<InFlight>,
        job: Job,
        fence: Fence,
        cancel: watch::Receiver<bool>,
    ) {
        // Drawn by the claim; never missing on a claimed job.
        let run = job.current_run().unwrap_or_default();
        // Every write the runner makes about this run carries the claim.
        let store = self.store.fenced(fence.clone());
        let result = match self.tasks.get(&job.task) {
            Some(task) => {
                let req = RunRequest {
                    uuid: run,
                    formula: task.formula.clone(),
                    item: job.item.clone(),
                    item_type: job.item_type.clone(),
                    arch: job.arch.clone(),
                    jobid: job.uuid.to_string(),
                    owner: self.instance_owner.clone(),
                    // A rerun repeats its run's image; other jobs take the provider's.
                    image: job.image.clone().unwrap_or_else(|| slot.image.clone()),
                    task_timeout: task.timeout,
                    spawn_attempts: task.spawn_attempts.max(1),
                    artifacts_cap: task.artifacts_cap,
                    limits: task.limits,
                    keep_instance: false,
                    keep_if_failed: self
                        .pending_holds
                        .lock()
                        .expect("holds lock")
                        .contains(&job.task),
                    links: Some(crate::runner::RunLinks {
                        page: format!("{}/runs/{run}", self.public_url),
                        artifacts: format!("{}/runs/{run}/artifacts", self.public_url),
                    }),
                };
                let runner = Runner {
                    provider: slot.provider.clone(),
                    store: store.clone(),
                    data_dir: self.data_dir.clone(),
                    sink: self.sink(job.id, &slot.name),
                    cleanup_slot: Some(held.clone()),
                };
                match guarded(async move { runner.run(req, cancel).await }).await {
                    Ok(r) => r,
                    Err(why) => {
                        // Close the run so that the reaper may destroy its instance.
                        let _ = self
                            .store
                            .finish_run(run, RunState::Crashed, Some(exit::INFRA), Some(&why))
                            .await;
                        Err(RunnerError::Panicked(why))
                    }
                }
            }
            // Not claimed by dispatch (it claims only tasks it knows); kept for safety.
            None => Err(RunnerError::Invalid(format!(
                "task `{}` is not configured in this daemon",
                job.task
            ))),
        };
        if let Ok(report) = &result
            && let Some(kept) = &report.kept_instance
        {
            self.hand_to_hold(&slot, &job.task, run, kept, report.kept_login.as_deref())
                .await;
        }
        // Capacity comes back once the run's instances are gone (see `Runner::cleanup_slot`).
        drop(held);

        // A run whose end the store missed is recorded before the job may end.
        let recorded = match result {
            Err(RunnerError::Unrecorded {
                report,
                completion,
                source,
            }) => {
                if source.is_fenced() {
                    Recorded::Lost
                } else {
                    tracing::warn!(job = %job.uuid, run = %run, "recording the end of the run: {source}; retrying until the store answers");
                    match self
                        .durably(&job, "recording the end of the run", || {
                            store.complete_run(&completion)
                        })
                        .await
                    {
                        Ok(()) => Recorded::Yes(Box::new(Ok(*report))),
                        Err(GaveUp::Lost) => Recorded::Lost,
                        Err(GaveUp::Refused(e) | GaveUp::Stopping(e)) => Recorded::Abandoned(e),
                    }
                }
            }
            Err(RunnerError::Store(e)) if e.is_fenced() => Recorded::Lost,
            other => Recorded::Yes(Box::new(other)),
        };
        let reason = self
            .running
            .lock()
            .expect("running lock")
            .get(&job.id)
            .and_then(|r| r.reason);
        match recorded {
            Recorded::Yes(_) | Recorded::Lost if reason == Some(CancelReason::LostLease) => {
                // The daemon that took the job over closes this run and tells the bus.
                tracing::warn!(job = %job.uuid, "job was taken over by another daemon; run {run} stopped");
                slot.breaker.lock().expect("breaker").inconclusive();
            }
            Recorded::Lost => {
                tracing::warn!(job = %job.uuid, "job was taken over by another daemon; nothing recorded for run {run}");
                slot.breaker.lock().expect("breaker").inconclusive();
            }
            Recorded::Abandoned(e) => {
                tracing::error!(job = %job.uuid, run = %run, "the end of the run could not be recorded ({e}); the job is left to its lease, and the daemon that recovers it marks the run crashed");
                slot.breaker.lock().expect("breaker").inconclusive();
            }
            Recorded::Yes(result) => {
                let (end, summary) = self.decide(&slot, &job, run, &result, reason);
                // The run message is committed with the job's end (the store's outbox), so
                // it goes out exactly when the end is recorded, even across a restart.
                let body = summary.as_ref().and_then(|s| serde_json::to_string(s).ok());
                if self.end_durably(&job, &fence, &end, body.as_deref()).await
                    && let Some(summary) = summary
                {
                    self.metrics.run_ended(&summary.state);
                }
            }
        }
        // Only now: until here the heartbeat kept the claim alive and recovery left it alone.
        self.running.lock().expect("running lock").remove(&job.id);
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_waiters();
        self.wake.notify_one();
    }

    /// A failing run kept its instance because a hold was pending on its task: the hold
    /// takes it (its login and expiry recorded, the reaper leaves it alone until then), or,
    /// when no hold is left for it (another run took it first, or it was released), the
    /// instance is destroyed now.
    pub(super) async fn hand_to_hold(
        &self,
        slot: &ProviderSlot,
        task: &str,
        run: Uuid,
        kept: &crate::provider::Instance,
        login: Option<&str>,
    ) {
        let login = login.unwrap_or("(no login recorded)");
        let taken = match self.store.pending_hold(task).await {
            Ok(Some(h)) => match self.store.take_hold(h.id, run, login).await {
                Ok(true) => Some(h),
                Ok(false) => None,
                Err(e) => {
                    tracing::warn!(run = %run, "taking hold {}: {e}", h.id);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(run = %run, "reading the holds of {task}: {e}");
                None
            }
        };
        match taken {
            Some(h) => {
                self.pending_holds.lock().expect("holds lock").remove(task);
                tracing::info!(run = %run, instance = %kept.id, hold = h.id, "held for {}: log in with: {login}", crate::util::human_duration(Duration::from_secs(h.hold_s)));
            }
            None => {
                if let Err(e) = slot.provider.delete(&kept.id).await {
                    tracing::warn!(run = %run, instance = %kept.id, "destroying an instance no hold took: {e}; the reaper will remove it");
                }
            }
        }
    }

    /// Which tasks have a hold waiting for a failing run, for the runs that start next.
    pub(super) async fn refresh_pending_holds(&self) {
        match self.store.holds(true).await {
            Ok(holds) => {
                *self.pending_holds.lock().expect("holds lock") = holds
                    .into_iter()
                    .filter(|h| h.run_uuid.is_none())
                    .map(|h| h.task)
                    .collect();
            }
            Err(e) => tracing::debug!("reading holds: {e}"),
        }
    }

    /// How the job ends after this attempt, and what to tell the bus.
    pub(super) fn decide(
        &self,
        slot: &ProviderSlot,
        job: &Job,
        run: Uuid,
        result: &Result<RunReport, RunnerError>,
        reason: Option<CancelReason>,
    ) -> (JobEnd, Option<RunSummary>) {
        let retry = |error: String| -> JobEnd {
            if job.attempts < job.max_attempts {
                let delay = policy::backoff(
                    job.attempts,
                    Duration::from_secs_f64(self.cfg.backoff_base_s.max(0.0)),
                    Duration::from_secs_f64(self.cfg.backoff_max_s.max(0.0)),
                );
                JobEnd::Requeue {
                    not_before: OffsetDateTime::now_utc() + delay,
                    error: Some(error),
                    free_attempt: false,
                }
            } else {
                JobEnd::Done {
                    state: RunState::Crashed,
                    outcome: None,
                    error: Some(format!(
                        "{error} (attempt {} of {})",
                        job.attempts, job.max_attempts
                    )),
                }
            }
        };
        let report = match result {
            Ok(r) => r,
            Err(RunnerError::Invalid(m)) => {
                slot.breaker.lock().expect("breaker").inconclusive();
                return (
                    JobEnd::Done {
                        state: RunState::Failed,
                        outcome: None,
                        error: Some(m.clone()),
                    },
                    None,
                );
            }
            Err(e) => {
                // This host's trouble (store, keys, disk), not the provider's: a probe that
                // ends here says nothing about the provider.
                slot.breaker.lock().expect("breaker").inconclusive();
                return (retry(format!("ferrotron could not run the job: {e}")), None);
            }
        };
        for p in &report.phases {
            self.metrics
                .phase(&p.name, Duration::from_secs_f64(p.duration_ms / 1000.0));
        }
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for r in &report.results {
            *outcomes.entry(r.outcome.as_str().to_string()).or_default() += 1;
        }
        let counts = if outcomes.is_empty() {
            "no results".to_string()
        } else {
            outcomes
                .iter()
                .map(|(o, n)| format!("{n} {o}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let summary_line = match &report.error {
            Some(e) => format!("{}: {e}", report.state),
            None => counts.clone(),
        };
        let end = match report.state {
            RunState::Finished => {
                slot.breaker.lock().expect("breaker").success();
                self.metrics.breaker(&slot.name, false);
                JobEnd::Done {
                    state: RunState::Finished,
                    outcome: Some(counts),
                    error: None,
                }
            }
            RunState::Failed => {
                // The instance worked; the task did not.
                slot.breaker.lock().expect("breaker").success();
                self.metrics.breaker(&slot.name, false);
                JobEnd::Done {
                    state: RunState::Failed,
                    outcome: Some(counts),
                    error: report.error.clone(),
                }
            }
            RunState::Cancelled if reason == Some(CancelReason::Shutdown) => {
                slot.breaker.lock().expect("breaker").inconclusive();
                JobEnd::Requeue {
                    not_before: OffsetDateTime::now_utc(),
                    error: Some("requeued: the daemon shut down during the run".into()),
                    free_attempt: true,
                }
            }
            RunState::Cancelled => {
                slot.breaker.lock().expect("breaker").inconclusive();
                JobEnd::Done {
                    state: RunState::Cancelled,
                    outcome: None,
                    error: if reason == Some(CancelReason::Requested) {
                        Some("cancelled on request".into())
                    } else {
                        report.error.clone()
                    },
                }
            }
            _ => {
                let opened = slot
                    .breaker
                    .lock()
                    .expect("breaker")
                    .failure(Instant::now());
                if opened {
                    self.metrics.breaker(&slot.name, true);
                    tracing::warn!(
                        provider = %slot.name,
                        "provider keeps failing: circuit breaker open, no new claims for a while"
                    );
                }
                retry(report.error.clone().unwrap_or_else(|| "crashed".into()))
            }
        };
        let final_attempt = matches!(end, JobEnd::Done { .. });
        let summary = RunSummary {
            run,
            job: job.uuid,
            task: job.task.clone(),
            item: job.item.clone(),
            item_type: job.item_type.clone(),
            arch: job.arch.clone(),
            state: report.state.as_str().to_string(),
            summary: summary_line,
            outcomes,
            exit_code: Some(report.exit_code),
            attempt: job.attempts,
            final_attempt,
            url: format!("{}/runs/{run}", self.public_url),
            daemon: self.daemon_id.clone(),
        };
        (end, Some(summary))
    }

    /// Ends the job in the store, retrying while the store is away. True: it ended here
    /// (and only then may the run be announced).
    pub(super) async fn end_durably(
        &self,
        job: &Job,
        fence: &Fence,
        end: &JobEnd,
        announce: Option<&str>,
    ) -> bool {
        match self
            .durably(job, "recording the end of the job", || {
                self.store.end_job_announcing(fence, end, announce)
            })
            .await
        {
            Ok(true) => true,
            Ok(false) | Err(GaveUp::Lost) => {
                tracing::warn!(job = %job.uuid, "job was taken over by another daemon before it ended here");
                false
            }
            Err(GaveUp::Refused(e)) => {
                tracing::error!(job = %job.uuid, "the store refused the end of the job ({e}); it is left to its lease");
                false
            }
            Err(GaveUp::Stopping(e)) => {
                tracing::warn!(job = %job.uuid, "stopping while the store is away ({e}): the end of the job is left to its lease and the next daemon's recovery");
                false
            }
        }
    }

    /// Runs `op` until it succeeds, trying again while the store is unreachable: 0.2 s,
    /// doubling up to 30 s, jittered, each try bounded by [`STORE_CALL`]. Gives up when the
    /// write is refused (not an outage), when the claim on the job is lost, or once the
    /// daemon is stopping and the store stayed away for `final_write_grace_s` more.
    pub(super) async fn durably<T, F, Fut>(
        &self,
        job: &Job,
        what: &str,
        mut op: F,
    ) -> Result<T, GaveUp>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(200);
        let mut stopping_since: Option<Instant> = None;
        let mut stop = self.stop.subscribe();
        let mut failures = 0u32;
        loop {
            // A stopping daemon gives each try less time: its shutdown is bounded.
            let limit = if self.stopping.load(Ordering::SeqCst) {
                STORE_CALL_STOPPING
            } else {
                STORE_CALL
            };
            let err = match tokio::time::timeout(limit, op()).await {
                Ok(Ok(v)) => {
                    if failures > 0 {
                        tracing::info!(job = %job.uuid, "{what}: done after {failures} failed tries");
                    }
                    return Ok(v);
                }
                Ok(Err(e)) if e.is_fenced() => return Err(GaveUp::Lost),
                Ok(Err(e)) if !e.is_transient() => return Err(GaveUp::Refused(e.to_string())),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("the store did not answer within {} s", limit.as_secs()),
            };
            failures += 1;
            if self.claim_lost(job.id) {
                return Err(GaveUp::Lost);
            }
            if self.stopping.load(Ordering::SeqCst) {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.cfg.final_write_grace() {
                    return Err(GaveUp::Stopping(err));
                }
            }
            tracing::warn!(job = %job.uuid, "{what}: {err}; trying again in {:.1} s", wait.as_secs_f64());
            tokio::select! {
                _ = tokio::time::sleep(jittered(wait)) => {}
                // A shutdown starts the bounded part at once.
                _ = stop.changed() => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// Whether the heartbeat found the claim on `job_id` taken over.
    pub(super) fn claim_lost(&self, job_id: i64) -> bool {
        self.running
            .lock()
            .expect("running lock")
            .get(&job_id)
            .is_some_and(|r| r.reason == Some(CancelReason::LostLease))
    }

    /// The runner's event sink for one job: the run's state → the job's, instance gauge.
    pub(super) fn sink(self: &Arc<Self>, job_id: i64, provider: &str) -> crate::runner::EventSink {
        let me = Arc::downgrade(self);
        let provider = provider.to_string();
        let kill_at = std::env::var(FAULT_KILL_AT).ok().filter(|p| !p.is_empty());
        Arc::new(move |e: &Event| {
            if let (Some(at), Event::PhaseStarted { name }) = (&kill_at, e)
                && (name == at || name.strip_prefix("action ").is_some() && at == "action")
            {
                // Fault injection (tests/faults.rs): the daemon dies here like a crash would,
                // with no chance to clean up anything.
                tracing::error!("{FAULT_KILL_AT}={at}: killing this daemon with SIGKILL");
                // SAFETY: kill(2) on this very process.
                unsafe { libc::kill(std::process::id() as i32, libc::SIGKILL) };
            }
            let Some(me) = me.upgrade() else { return };
            let state = match e {
                Event::State(s) => Some(*s),
                Event::Instance { held, .. } => {
                    me.metrics
                        .live_instances(&provider, if *held { 1 } else { -1 });
                    None
                }
                _ => None,
            };
            if let Some(s) = state
                && let Some(r) = me.running.lock().expect("running lock").get_mut(&job_id)
                && r.state != s
            {
                r.state = s;
                r.dirty = true;
            }
        })
    }
}
