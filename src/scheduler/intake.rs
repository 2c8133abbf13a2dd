//! Messages in, queued jobs out: the trigger rules applied and the result committed to the
//! store in one transaction (with the message id, for de-duplication). Sources acknowledge a
//! message only after [`Intake::handle`] answered `Ok`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::bus::{HandleError, Handled, Message, MessageHandler, Rejected};
use crate::metrics::Metrics;
use crate::store::{Enqueued, NewJob, Store};
use crate::trigger::{JobSpec, RuleSet};

/// What intake needs to know of a task.
#[derive(Debug, Clone)]
pub struct TaskDefaults {
    pub pool: String,
    pub priority: i32,
    pub max_attempts: u32,
}

pub struct Intake {
    pub rules: RuleSet,
    pub tasks: BTreeMap<String, TaskDefaults>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Woken after jobs were committed, so the dispatcher claims without waiting for its poll.
    pub wake: Arc<Notify>,
    /// Most jobs one message may create (`bus.max_jobs_per_message`).
    pub max_jobs: usize,
}

impl Intake {
    /// The store's form of the jobs `specs` describe.
    pub fn new_jobs(&self, specs: &[JobSpec]) -> Vec<NewJob> {
        specs
            .iter()
            .filter_map(|s| {
                let Some(t) = self.tasks.get(&s.task) else {
                    // compile() checked every task name against the config: unreachable.
                    tracing::error!(task = %s.task, "rule names an unknown task; job dropped");
                    return None;
                };
                Some(NewJob {
                    rule: s.rule.clone(),
                    task: s.task.clone(),
                    item: s.item.clone(),
                    item_type: s.item_type.clone(),
                    arch: s.arch.clone(),
                    pool: t.pool.clone(),
                    priority: s.priority.unwrap_or(t.priority),
                    max_attempts: t.max_attempts,
                })
            })
            .collect()
    }
}

#[async_trait]
impl MessageHandler for Intake {
    async fn handle(&self, msg: &Message) -> Result<Handled, HandleError> {
        self.metrics
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let eval = self.rules.evaluate(&msg.topic, &msg.body);
        for why in &eval.skipped {
            tracing::warn!(topic = %msg.topic, id = ?msg.id, "{why}");
        }
        let jobs = self.new_jobs(&eval.jobs);
        if jobs.len() > self.max_jobs {
            // Rules × tasks × arches can multiply: one message must not flood the queue.
            self.metrics
                .messages_rejected
                .fetch_add(1, Ordering::Relaxed);
            let why = format!(
                "message {:?} on {} would create {} jobs, more than bus.max_jobs_per_message \
                 ({}): none created",
                msg.id,
                msg.topic,
                jobs.len(),
                self.max_jobs
            );
            tracing::warn!("{why}");
            return Err(HandleError::Refused(why));
        }
        let outcome = self
            .store
            .enqueue(msg.id.as_deref(), &msg.topic, msg.received_at, &jobs)
            .await
            .map_err(|e| HandleError::Retry(e.to_string()))?;
        match outcome {
            Enqueued::Duplicate => {
                self.metrics
                    .messages_duplicate
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(topic = %msg.topic, id = ?msg.id, "duplicate message id: nothing to do");
                Ok(Handled {
                    duplicate: true,
                    jobs: Vec::new(),
                })
            }
            Enqueued::Jobs(uuids) => {
                if uuids.is_empty() {
                    self.metrics
                        .messages_unmatched
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %msg.topic, id = ?msg.id, "no rule matched");
                } else {
                    self.metrics
                        .jobs_created
                        .fetch_add(uuids.len() as u64, Ordering::Relaxed);
                    tracing::info!(topic = %msg.topic, id = ?msg.id, jobs = uuids.len(), "jobs queued");
                    self.wake.notify_one();
                }
                Ok(Handled {
                    duplicate: false,
                    jobs: uuids,
                })
            }
        }
    }

    fn rejected(&self, source: &str, why: &Rejected) {
        self.metrics
            .messages_rejected
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{source}: message rejected (acknowledged and dropped): {why}");
    }
}
