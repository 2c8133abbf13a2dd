//! Drains the store's outbox onto the bus: ResultsDB's `result.new` for every stored result
//! (the body is the result as `GET /api/v2.0/results/ID` serves it, which is what ResultsDB
//! publishes and Greenwave reads) and ferrotron's run message for every run.
//!
//! A row leaves the outbox only once the broker confirmed it; a failed publish is retried
//! with exponential backoff. Rows outlive the process: a daemon killed between the commit and
//! the publish sends them when it (or another daemon on the same database) starts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::bus::amqp::{Publisher, fedora_properties, nvr_package};
use crate::config::AmqpConfig;
use crate::metrics::Metrics;
use crate::store::{OutboxEntry, OutboxKind, Store};

/// Rows claimed per round.
const BATCH: usize = 100;
/// How long a claim keeps other publishers off a row.
const LEASE: Duration = Duration::from_secs(60);
/// How often the outbox is looked at when nothing in this process wrote to it (rows from
/// other processes on the same database).
const POLL: Duration = Duration::from_secs(1);

pub struct Announcer {
    pub store: Store,
    pub cfg: AmqpConfig,
    /// Base of the `href`s in ResultsDB bodies (the farm's public URL).
    pub public_url: String,
    /// This daemon's id: claims are `ID/RANDOM`, so a restart frees its previous life's.
    pub daemon_id: String,
    pub metrics: Arc<Metrics>,
}

/// What goes on the wire for one row; `None`: nothing to send any more (the result is gone).
struct Wire {
    topic: String,
    body: Vec<u8>,
    packages: Vec<String>,
}

/// The retry delay after `attempts` failures: 1 s doubling, at most 5 min.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(8)).min(Duration::from_secs(300))
}

impl Announcer {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let prefix = format!("{}/", self.daemon_id);
        let token = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        if let Err(e) = self.store.release_outbox_claims(&prefix).await {
            tracing::warn!("outbox: {e}");
        }
        let mut publisher = Publisher::new(self.cfg.clone());
        let mut failures = 0u32;
        // After stop: what is due gets a few seconds to go out (the rest waits in the store).
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            let batch = match self.store.claim_outbox(&token, LEASE, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("outbox: {e}");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                if deadline.is_some() {
                    break;
                }
                tokio::select! {
                    _ = self.store.outbox_wait(POLL) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut failed = false;
            for entry in &batch {
                if failed || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
                match self.send(&mut publisher, entry).await {
                    Ok(()) => {
                        failures = 0;
                        if let Err(e) = self.store.outbox_sent(entry.id).await {
                            tracing::warn!("outbox: {e}");
                        }
                    }
                    Err(e) => {
                        failed = true;
                        failures += 1;
                        self.metrics
                            .results_publish_failed
                            .fetch_add(1, Ordering::Relaxed);
                        let delay = backoff(entry.attempts);
                        tracing::warn!(
                            "outbox message {} ({:?}, attempt {}): {e}; retrying in {}s",
                            entry.message_id,
                            entry.kind,
                            entry.attempts + 1,
                            delay.as_secs()
                        );
                        if let Err(e) = self.store.outbox_retry(entry.id, delay, &e).await {
                            tracing::warn!("outbox: {e}");
                        }
                    }
                }
            }
            // Whatever this round did not get to goes back for the next.
            if let Err(e) = self.store.release_outbox_claims(&token).await {
                tracing::warn!("outbox: {e}");
            }
            if failed {
                if deadline.is_some() {
                    break;
                }
                let pause = backoff(failures.saturating_sub(1)).min(Duration::from_secs(30));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        publisher.close().await;
    }

    async fn send(&self, publisher: &mut Publisher, entry: &OutboxEntry) -> Result<(), String> {
        let Some(wire) = self.wire(entry).await? else {
            return Ok(());
        };
        let props = fedora_properties(&entry.message_id, OffsetDateTime::now_utc(), &wire.packages);
        publisher
            .send(&wire.topic, &wire.body, props)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics
            .results_published
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(topic = %wire.topic, id = %entry.message_id, "published");
        Ok(())
    }

    async fn wire(&self, entry: &OutboxEntry) -> Result<Option<Wire>, String> {
        match entry.kind {
            OutboxKind::Result => {
                if !self.cfg.publish_resultsdb {
                    return Ok(None);
                }
                let id: i64 = entry
                    .payload
                    .parse()
                    .map_err(|_| format!("bad result id `{}`", entry.payload))?;
                let Some(r) = self.store.result(id).await.map_err(|e| e.to_string())? else {
                    tracing::warn!("outbox: result {id} no longer exists; not announced");
                    return Ok(None);
                };
                let package = match (r.data.get("type"), r.data.get("item")) {
                    (Some(t), Some(items)) if t.iter().any(|t| t == "koji_build") => {
                        items.iter().filter_map(|i| nvr_package(i)).collect()
                    }
                    _ => Vec::new(),
                };
                let body = crate::web::resultsdb::result_json(&r, &self.public_url);
                Ok(Some(Wire {
                    topic: self.cfg.topic(&self.cfg.resultsdb_topic),
                    body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
                    packages: package,
                }))
            }
            OutboxKind::Run => {
                if !self.cfg.publish_results {
                    return Ok(None);
                }
                let body: Value = serde_json::from_str(&entry.payload)
                    .map_err(|e| format!("unreadable run message: {e}"))?;
                let packages = match (body["type"].as_str(), body["item"].as_str()) {
                    (Some("koji_build"), Some(item)) => nvr_package(item).into_iter().collect(),
                    _ => Vec::new(),
                };
                Ok(Some(Wire {
                    topic: self.cfg.topic(&self.cfg.result_topic),
                    body: entry.payload.clone().into_bytes(),
                    packages,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stops_at_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(256));
        assert!(backoff(9) <= Duration::from_secs(300));
    }
}
